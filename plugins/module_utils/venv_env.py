# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A venv's environment file ``lockstep.env``: one writer, one reader (stdlib only).

The format is what ``bin/activate`` can export without a shell parser: ``KEY=VALUE`` lines,
``#`` comments and blank lines; values are literal (no quotes, no ``$VAR`` expansion), so the
validator, the sync's import check and an activated shell all see the same values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

ENV_FILE = "lockstep.env"
HOOK_BEGIN = "# >>> lockstep.cluster: MPI environment >>>"
HOOK_END = "# <<< lockstep.cluster: MPI environment <<<"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Appended to bin/activate (sh/bash/zsh): export every KEY=VALUE of lockstep.env, and put an
# RHEL-style MPI_BIN (MPI off PATH there) in front of PATH. `deactivate` does not undo it.
ACTIVATE_HOOK = r'''
%(begin)s
# Exported for a benchmark user: the same variables the validator and site.yml use.
if [ -r "${VIRTUAL_ENV}/lockstep.env" ]; then
    while IFS= read -r _lockstep_line || [ -n "${_lockstep_line}" ]; do
        case "${_lockstep_line}" in
            ''|'#'*) ;;
            *=*) export "${_lockstep_line}" ;;
        esac
    done < "${VIRTUAL_ENV}/lockstep.env"
    unset _lockstep_line
    if [ -n "${MPI_BIN:-}" ]; then
        PATH="${MPI_BIN}:${PATH}"
        export PATH
    fi
fi
%(end)s
''' % {"begin": HOOK_BEGIN, "end": HOOK_END}


class EnvFileError(ValueError):
    """A variable that cannot be written, or a line that cannot be read, with its place."""


def render(env):
    """``lockstep.env`` text for ``env``: sorted ``KEY=VALUE`` lines."""
    lines = ["# Written by lockstep.cluster. KEY=VALUE, literal values; read by bin/activate and the validator."]
    for key in sorted(env):
        value = "" if env[key] is None else str(env[key])
        if not _NAME.match(str(key)):
            raise EnvFileError("invalid environment variable name %r for %s" % (key, ENV_FILE))
        if "\n" in value or "\r" in value:
            raise EnvFileError("the value of %s contains a line break" % key)
        lines.append("%s=%s" % (key, value))
    return "\n".join(lines) + "\n"


def parse(text, origin=ENV_FILE):
    """The variables of an environment file; a line that is not ``KEY=VALUE`` is an error."""
    env = {}
    # Lines end at "\n" only, as for the shell's `read` (str.splitlines also splits at \f, \x1c...).
    for number, raw in enumerate((text or "").split("\n"), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        key, sep, value = raw.partition("=")
        if not sep or not _NAME.match(key):
            raise EnvFileError("%s:%d: not a KEY=VALUE line: %r" % (origin, number, raw[:80]))
        env[key] = value
    return env


def read(path):
    """``parse`` of the file at ``path``; {} when there is none (IOError for other failures)."""
    try:
        with open(path) as handle:
            return parse(handle.read(), path)
    except (IOError, OSError) as exc:
        if not os.path.exists(path):
            return {}
        raise


def install_activate_hook(venv):
    """Append the hook to ``bin/activate`` once. True when it was added."""
    activate = os.path.join(venv, "bin", "activate")
    if not os.path.isfile(activate):
        return False
    with open(activate) as handle:
        if HOOK_BEGIN in handle.read():
            return False
    with open(activate, "a") as handle:
        handle.write(ACTIVATE_HOOK)
    return True


def venv_environment(venv, base, env_file=None, extra=None):
    """The environment a job in the activated venv sees: ``base``, then VIRTUAL_ENV/PATH as
    ``activate`` sets them, then the env file (``<venv>/lockstep.env`` when present), then
    ``extra``. Returns ``(env, env_file_used)``; a named env_file that is missing raises IOError.
    """
    env = dict(base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = venv
    env["PATH"] = os.pathsep.join([os.path.join(venv, "bin")] + [p for p in [env.get("PATH")] if p])
    if env_file is None:
        default = os.path.join(venv, ENV_FILE)
        env_file = default if os.path.isfile(default) else None
    if env_file is not None:
        with open(env_file) as handle:
            env.update(parse(handle.read(), env_file))
        if env.get("MPI_BIN"):
            env["PATH"] = env["MPI_BIN"] + os.pathsep + env["PATH"]
    for key, value in (extra or {}).items():
        env[str(key)] = "" if value is None else str(value)
    return env, env_file
