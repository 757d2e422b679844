# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A venv's store (stdlib only): its name and key, its environment file, whether it may be
trusted, and the store itself behind an atomic ``current`` symlink.

Layout (``store`` and ``path`` are role options)::

    <store>/<stem>-<key12>/      one venv per (lockfile sha256, Python, mpi4py mode, MPI env, path)
        lockstep.lock.txt        the exact lockfile it was synced from
        lockstep.env             KEY=VALUE MPI environment (read_env_file, render_env_file)
        lockstep.json            metadata of a built and validated venv
    <store>/<stem>-<key12>.manifest.json   every entry of the venv (module_utils.manifest);
                             written LAST, outside the venv = the venv is complete
    <store>/<stem>-<key12>.building        only while it is built (who for; see store_fs.prune)
    <path>           -> <store>/<stem>-<key12>   ("current"; flipped with rename(2))
    <path>.previous  -> the venv that was current before the last flip (rollback target)

A venv is never modified once it has been current: a new lockfile, Python or MPI environment
builds a new directory, syncs it with ``uv pip sync --require-hashes``, validates it, and only
then flips ``current``. Anything that fails before the flip leaves ``current`` untouched.
The lockfile itself is parsed on the controller; here only uv reads it. One store lock is held
from the plan to the flip and prune (store_fs.store_lock).

``lockstep.env`` is what ``bin/activate`` can export without a shell parser: ``KEY=VALUE``
lines, ``#`` comments and blank lines; values are literal (no quotes, no ``$VAR`` expansion),
so the validator, the sync's import check and an activated shell all see the same values.

Bytecode: every module is compiled when the venv is built, and a ``.pth`` that sorts first sets
``sys.dont_write_bytecode`` for every run of the venv's Python (root, ``-O``, a benchmark
without the activate hook): compiled, imports stay fast; guarded, nothing Python does later
adds a file the manifest would report.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import hashlib
import json
import os
import re
import shutil
import time

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, manifest, mpi, proc, store_fs
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import canonical_name, guess_site_packages
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import family
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import classify_failure, parse_uv_json, SyncError


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


def render_env_file(env):
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


def parse_env_file(text, origin=ENV_FILE):
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


def read_env_file(path):
    """``parse_env_file`` of the file at ``path``; {} when there is none (IOError for other failures)."""
    try:
        with open(path) as handle:
            return parse_env_file(handle.read(), path)
    except (IOError, OSError):
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
            env.update(parse_env_file(handle.read(), env_file))
        if env.get("MPI_BIN"):
            env["PATH"] = env["MPI_BIN"] + os.pathsep + env["PATH"]
    for key, value in (extra or {}).items():
        env[str(key)] = "" if value is None else str(value)
    return env, env_file


# Bumped when the layout or the key recipe changes, so old venvs are rebuilt, not reused.
# 2: the manifest in the store, compiled bytecode and the no-bytecode guard.
# 3: keyed by venv_path too; manifest format 2 (owners, portable hashes); reproducible bytecode.
FORMAT = 3


def lock_stem(lockfile_name):
    """``lockfiles/smoke-cpu.txt`` -> ``smoke-cpu`` (safe for a directory name)."""
    base = os.path.basename(lockfile_name or "lock")
    for suffix in (".txt", ".toml", ".lock", ".in"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "lock"
    return base[:48]


def compute_key(lockfile_sha256, python_path, python_version, mpi4py_mode="binary", build_variables=None,
                no_binary=None, env=None, venv_path=None):
    """The identity of a venv: everything that changes what is in it or how it must run, and
    the ``venv_path`` it is built for: two paths synced from one lock in one store get two
    directories, so neither flips, prunes nor repairs the other's venv.

    The Python patch level is left out on purpose: a distro point release updates the
    interpreter under the venv in place and must not force a rebuild.
    """
    recipe = {
        "format": FORMAT,
        "lock": lockfile_sha256,
        "python": [python_path, ".".join(str(python_version).split(".")[:2])],
        "mpi4py": mpi4py_mode,
        "build_variables": build_variables or {},
        "no_binary": sorted(no_binary or []),
        "env": env or {},
        "venv_path": venv_path,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def _toml_string(value):
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


def render_uv_config(build_variables):
    """uv.toml with ``extra-build-variables``: uv keys its build cache on them, so an sdist
    built against one MPI is never reused for another (plain env vars are not keyed)."""
    if not build_variables:
        return None
    parts = []
    for package in sorted(build_variables):
        inner = ", ".join("%s = %s" % (var, _toml_string(val)) for var, val in sorted(build_variables[package].items()))
        parts.append("%s = { %s }" % (_toml_string(package), inner))
    return "[pip]\nextra-build-variables = { %s }\n" % ", ".join(parts)


# Findings that are not in any package's RECORD are grouped under this name.
UNOWNED = "(venv)"

# Run by a venv's interpreter before it goes live (and before a rollback to it). mpi4py is
# loaded without MPI_Init: enough to catch a libmpi the wheel cannot load.
VALIDATE_SCRIPT = r'''
import importlib, json, sys
out = {"python": sys.version.split()[0], "prefix": sys.prefix, "imports": {}}
for name in sys.argv[1:]:
    try:
        if name.split(".")[0] == "mpi4py":
            import mpi4py
            mpi4py.rc.initialize = mpi4py.rc.finalize = False
            from mpi4py import MPI
            out["imports"][name] = MPI.Get_library_version().strip("\x00 \n").splitlines()[0]
        else:
            module = importlib.import_module(name)
            out["imports"][name] = getattr(module, "__version__", "ok")
    except BaseException as exc:
        out["imports"][name] = None
        out.setdefault("errors", {})[name] = "%s: %s" % (type(exc).__name__, exc)
print("LOCKSTEP-VALIDATE " + json.dumps(out))
'''


def import_errors(run, venv, imports, base_env):
    """``{module: error}`` for the ``imports`` that fail in ``venv`` with its environment
    (mpi4py without MPI_Init); {} when all load. ``run(argv, env)`` runs a command."""
    if not imports:
        return {}
    env, _env_file = venv_environment(venv, base_env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = run([os.path.join(venv, "bin", "python"), "-c", VALIDATE_SCRIPT] + list(imports), env)
    report = None
    for line in (result.out or "").splitlines():
        if line.startswith("LOCKSTEP-VALIDATE "):
            report = json.loads(line[len("LOCKSTEP-VALIDATE "):])
    if result.rc != 0 or report is None or report.get("errors"):
        return (report or {}).get("errors") or {"python": (result.err or result.out or "").strip()[-800:]}
    return {}


def sealed_findings(venv, rehash_all=False):
    """The venv against its manifest: findings (``[]`` = exactly as sealed); a manifest that
    cannot be used is one finding naming it, and so is a venv or manifest that is not root's
    or that others can write (store_fs.venv_problems)."""
    unsafe = store_fs.venv_problems(venv)
    if unsafe:
        return [{"path": p["path"], "reason": "not trusted: %s" % p["reason"]} for p in unsafe]
    try:
        data = manifest.load(manifest.location(venv))
    except manifest.ManifestError as exc:
        return [{"path": os.path.basename(manifest.location(venv)), "reason": str(exc)}]
    return manifest.verify(os.path.realpath(venv), data, rehash_all)["findings"]


def group_findings(venv, findings):
    """Manifest findings as uv-style ``tampered`` changes, one per owning distribution:
    ``{name, version, action, files, findings}``; files of no package under UNOWNED."""
    venv = os.path.realpath(venv)
    sites = distributions.guess_site_packages(venv)
    manifest.attribute(findings, venv, sites)
    versions = {}
    for site in sites:
        for path in glob.glob(os.path.join(site, "*.dist-info")):
            name, version = manifest.dist_of(path)
            versions[distributions.canonical_name(name)] = version
    groups = {}
    for finding in findings:
        owner = finding.get("owner")
        key = (owner, versions.get(owner, "")) if owner else (UNOWNED, "")
        entry = dict((k, v) for k, v in finding.items() if k not in ("owner", "record_path"))
        if owner and finding.get("record_path"):
            entry["path"] = finding["record_path"]
        groups.setdefault(key, []).append(entry)
    return [{"name": name, "version": version, "action": "tampered", "files": [f["path"] for f in items],
             "findings": items} for (name, version), items in sorted(groups.items())]


def describe_findings(findings, limit=10):
    text = ", ".join("%s (%s)" % (f["path"], f["reason"]) for f in findings[:limit])
    return text + (" and %d more" % (len(findings) - limit) if len(findings) > limit else "")


def mpi_reasons(venv, base_env, timeout):
    """Why ``venv``'s mpi4py does not fit the host's MPI as it is now ([] when it does, or
    when the venv has no mpi4py): the launcher on PATH, the libmpi mpi4py loads and the
    flavor the venv was built for (its lockstep.env) must agree."""
    sites = distributions.guess_site_packages(venv)
    if not any(glob.glob(os.path.join(site, "mpi4py-*.dist-info")) for site in sites):
        return []
    env, _env_file = venv_environment(venv, base_env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    python = os.path.join(venv, "bin", "python")
    py_facts, raw, error = mpi.probe(python, env, timeout, with_mpi=True)
    if not py_facts:
        return ["its Python does not run: %s" % error]
    params = {"launcher": None, "timeout": timeout, "smoke_test": False}
    facts = mpi.mpi_facts(raw or {"error": error}, [venv], [], env, python, params)
    reasons = []
    built_for = env.get("LOCKSTEP_MPI_FLAVOR")
    launcher = facts["launcher"]
    if not launcher.get("path"):
        reasons.append("no MPI launcher (mpiexec/mpirun) on the host's PATH to run it with")
    elif built_for and launcher.get("flavor") and family(built_for) != family(launcher["flavor"]):
        reasons.append("it was built for %s but the host's launcher %s is now %s (MPI flavor switched since)"
                       % (built_for, launcher["path"], launcher["flavor"]))
    if facts["verdict"] != "compatible":
        reasons.extend("mpi: %s" % r for r in facts["reasons"] if r not in reasons)
    return reasons


def verify_target(venv, base_env, timeout=60):
    """Everything that must hold before ``venv`` may go live again ([] when it may)."""
    meta = store_fs.read_meta(venv)
    if not store_fs.is_venv(venv) or meta is None:
        return ["it is missing or incomplete (no pyvenv.cfg or lockstep.json)"]
    findings = sealed_findings(venv)
    if findings:
        return ["it differs from its manifest: %s" % describe_findings(findings)]
    reasons = []
    imports = [i for i in meta.get("validate_imports") or [] if i.split(".")[0] != "mpi4py"]
    errors = import_errors(lambda argv, env: proc.run(argv, env, timeout), venv, imports, base_env)
    reasons.extend("import %s fails: %s" % item for item in sorted(errors.items()))
    return reasons + mpi_reasons(venv, base_env, timeout)


def rollback(path, previous_link=None, check_mode=False, lock_timeout=600, timeout=60, base_env=None):
    """Swap ``current`` and ``previous`` once the previous venv is verified (manifest,
    imports, MPI as the host is now). Returns (old_current, new_current). Raises SyncError."""
    path = path.rstrip("/") or path
    previous_link = previous_link or path + ".previous"
    base_env = dict(os.environ if base_env is None else base_env)
    state, current = store_fs.inspect_path(path)
    if state not in ("link", "dangling"):
        raise SyncError("venv_path %s is not a lockstep venv symlink (%s): nothing to roll back" % (path, state),
                        "rollback")
    if not os.path.islink(previous_link):
        raise SyncError("no previous venv recorded at %s: nothing to roll back to" % previous_link, "rollback")
    target = os.path.realpath(previous_link)

    def checked():
        reasons = verify_target(target, base_env, timeout)
        if reasons:
            raise SyncError("refusing to roll back %s to %s: %s; %s is left as it is (re-run site.yml to build a "
                            "venv for this host)" % (path, target, "; ".join(reasons), path), "rollback")

    if check_mode:
        checked()
        return current, target
    try:
        with store_fs.store_lock(os.path.dirname(target), lock_timeout, "rollback %s to %s" % (path, target)):
            if os.path.realpath(previous_link) != target or os.path.realpath(path) != current:
                raise SyncError("%s or %s changed while the rollback waited for the store lock: run it again"
                                % (path, previous_link), "rollback")
            checked()
            store_fs.flip_link(path, target)
            if current and os.path.isdir(current):
                store_fs.flip_link(previous_link, current)
    except store_fs.LockTimeout as exc:
        raise SyncError(str(exc), "locked")
    except store_fs.UnsafeStore as exc:
        raise SyncError(str(exc), "unsafe-store")
    return current, target


LOCKFILE_COPY = "lockstep.lock.txt"
UV_CONFIG_FILE = "lockstep.uv.toml"
# Sorts before any other .pth (site.py reads them in name order), so nothing imported by a
# later .pth writes bytecode either.
NO_BYTECODE_PTH = "00-lockstep-no-bytecode.pth"
NO_BYTECODE = ("# lockstep.cluster: the venv is sealed by its manifest; its bytecode was compiled when it was "
               "built.\nimport sys; sys.dont_write_bytecode = True\n")


class VenvStore(object):
    """Plan and apply a sync of ``path`` to a lockfile (see the module docstring)."""

    def __init__(self, runner, path, store, python, python_version, lockfile_sha256, lockfile_name=None, env=None,
                 mpi4py_mode="binary", build_variables=None, validate_imports=None, keep=2, previous=None,
                 clock=time.time, verify_files=True, expected=None, lock_timeout=600):
        self.uv = runner
        self.path = path.rstrip("/") or path
        self.store = store
        self.python = python
        self.python_version = python_version
        self.lockfile_sha256 = lockfile_sha256
        self.lockfile_name = lockfile_name or "the lock"
        self.env = dict((str(k), "" if v is None else str(v)) for k, v in (env or {}).items())
        self.mpi4py_mode = mpi4py_mode
        self.build_variables = build_variables or {}
        self.validate_imports = list(validate_imports or [])
        self.keep = max(int(keep), 1)
        self.previous_link = previous or (self.path + ".previous")
        self.clock = clock
        self.verify_files = verify_files
        self.lock_timeout = lock_timeout
        # {name: version} the controller derived from the lockfile for this Python (or None).
        self.expected = dict((canonical_name(k), v) for k, v in (expected or {}).items()) if expected else None
        self.stem = lock_stem(self.lockfile_name)
        # What the last build fetched again and what it took from uv's cache (see build).
        self.cache_check = None
        self.key = compute_key(lockfile_sha256, python, python_version, mpi4py_mode, self.build_variables,
                               runner.no_binary, self.env, self.path)
        self.target = os.path.join(store, "%s-%s" % (self.stem, self.key[:12]))

    # -- inputs and state -----------------------------------------------------------------

    def check_inputs(self):
        state, target = store_fs.inspect_path(self.path)
        if not os.path.isabs(self.path) or not os.path.isabs(self.store):
            raise SyncError("venv_path %s and venv_store_dir %s must be absolute paths" % (self.path, self.store),
                            "input")
        if state == "not-venv":
            what = "a symlink to %s, which is not a venv" % target if os.path.islink(self.path) else \
                "not a venv (no pyvenv.cfg)"
            raise SyncError("venv_path %s exists and is %s: refusing to replace it; move it away or choose "
                            "another venv_path" % (self.path, what), "not-venv")
        if state == "venv-dir":
            raise SyncError("venv_path %s is a plain venv directory, not the symlink lockstep flips "
                            "atomically: move it away (e.g. to %s.old) and re-run; it is left untouched"
                            % (self.path, self.path), "not-venv")
        if os.path.realpath(self.store).startswith(os.path.realpath(self.path) + os.sep):
            raise SyncError("venv_store_dir %s must not be inside venv_path %s" % (self.store, self.path), "input")
        return state, target

    def ours(self, venv):
        """Built for this key (the plain target, or a repair of it beside the original)."""
        meta = store_fs.read_meta(venv) or {}
        return os.path.realpath(self.target) == os.path.realpath(venv) or meta.get("key") == self.key

    def defects(self, venv):
        """Why a venv of this key cannot be trusted as a whole ([] when it can): metadata,
        its lockfile copy, its manifest."""
        unsafe = store_fs.venv_problems(venv)
        if unsafe:
            # Someone else could have written it (a store that was writable by others).
            return [{"path": p["path"], "reason": "not trusted: %s" % p["reason"]} for p in unsafe]
        meta = store_fs.read_meta(venv)
        if not meta or meta.get("key") != self.key or not store_fs.is_venv(venv):
            return [{"path": store_fs.META_FILE, "reason": "missing, unreadable or of another key"}]
        try:
            if store_fs.sha256_file(os.path.join(venv, LOCKFILE_COPY)) != self.lockfile_sha256:
                return [{"path": LOCKFILE_COPY, "reason": "modified"}]
        except (IOError, OSError):
            return [{"path": LOCKFILE_COPY, "reason": "missing"}]
        try:
            manifest.load(manifest.location(venv))
        except manifest.ManifestError as exc:
            return [{"path": os.path.basename(manifest.location(venv)), "reason": str(exc)}]
        return []

    def complete(self, venv):
        """Built by us for this key and this lockfile, sealed by its manifest."""
        return not self.defects(venv)

    def check_sync(self, venv, lockfile=None):
        """uv's own answer: ``(in_sync, changes)`` for ``venv`` against its lockfile copy."""
        result = self.uv.sync(os.path.join(venv, "bin", "python"), lockfile or os.path.join(venv, LOCKFILE_COPY),
                              check=True, config_file=self._config_file(venv))
        report = parse_uv_json(result.out)
        if result.rc in (0, 1) and report is not None:
            return result.rc == 0 and not report.get("changes"), report.get("changes") or []
        kind, message = classify_failure(result, self.uv.offline, self.uv.cache_dir, self.lockfile_name,
                                         self.python_version, self.uv.timeout)
        raise SyncError(message, kind, result.err)

    def _config_file(self, venv):
        path = os.path.join(venv, UV_CONFIG_FILE)
        return path if os.path.isfile(path) else None

    def tampered(self, venv, rehash_all=False):
        """uv-style ``tampered`` changes: the live tree against the venv's manifest, grouped by
        the distribution whose RECORD lists the file (UNOWNED for the rest: a new ``.pth``,
        ``__pycache__`` entry, ``bin/`` script...)."""
        return group_findings(venv, sealed_findings(venv, rehash_all))

    def packages(self, venv):
        if not venv or not os.path.isdir(venv) or not self.uv.available():
            return {}
        return self.uv.list_packages(os.path.join(venv, "bin", "python")) or {}

    # -- plan (read-only) -----------------------------------------------------------------

    def plan(self):
        """What a sync would do: ``{action: none|flip|build, current, target, drift, changes}``."""
        state, current = self.check_inputs()
        current = current if state == "link" else None
        try:
            repairs = store_fs.secure_store(self.store, check=True)
        except store_fs.UnsafeStore as exc:
            raise SyncError(str(exc), "unsafe-store")
        plan = {"current": current, "target": self.target, "key": self.key, "changes": [], "drift": False,
                "repairs": repairs}
        if current and self.ours(current):
            # The manifest first: uv does not re-hash installed files nor look beyond dist-info,
            # and its check runs the venv's Python, which a tampered .pth would hijack.
            defects = self.defects(current)
            if defects:
                changes = group_findings(current, defects)
            else:
                changes = self.tampered(current) if self.verify_files else []
            if not changes and not self.verify_files:
                # A tree equal to its manifest is the tree sealed after uv's own check for this
                # key: uv is asked again only when the files were not checked.
                changes = self.check_sync(current)[1]
            if not changes:
                plan.update(action="none", target=current)
                return plan
            # Someone changed the live venv: build a fresh one beside it, never repair it.
            plan.update(action="build", drift=True, changes=changes, target=self._fresh_target(current))
            return plan
        if os.path.isdir(self.target) and self.complete(self.target) \
                and not (self.verify_files and self.tampered(self.target)) and self.check_sync(self.target)[0]:
            plan["action"] = "flip"  # e.g. back to a venv kept for rollback, as it was sealed
            return plan
        plan["action"] = "build"
        if os.path.realpath(self.target) in store_fs.live_targets([self.path, self.previous_link]):
            plan["target"] = self._fresh_target(current)  # the rollback target, changed: keep it as found
        return plan

    def _fresh_target(self, current):
        """A directory beside ``self.target`` that is neither live nor in use."""
        candidate, number = self.target, int(self.clock())
        while os.path.realpath(candidate) == os.path.realpath(current) or os.path.lexists(candidate):
            candidate = "%s-%d" % (self.target, number)
            number += 1
        return candidate

    def describe(self, plan):
        """What the controller needs for changes and diffs: package sets and environments."""
        out = {"before": self.packages(plan["current"]), "before_env": self._env_of(plan["current"]),
               "after_env": self.env}
        if plan["action"] == "flip":
            out["after"] = self.packages(plan["target"])
        elif plan["action"] == "none":
            out["after"] = out["before"]
        return out

    def _env_of(self, venv):
        if not venv:
            return {}
        try:
            return read_env_file(os.path.join(venv, ENV_FILE))
        except (IOError, OSError, ValueError):
            return {}

    # -- apply ------------------------------------------------------------------------------

    def sync(self, lockfile):
        """Plan again under the store lock, then build (if needed), validate, flip and prune,
        all under that lock. ``lockfile``: the lockfile on this host (sha256 checked).

        Returns the plan with ``built``, ``sync_changes``, ``pruned``. Raises SyncError before
        the flip on any failure (``locked`` when another run held the store for too long).
        """
        try:
            repairs = store_fs.secure_store(self.store)
            with store_fs.store_lock(self.store, self.lock_timeout,
                                     "plan %s for %s" % (self.path, self.lockfile_name)) as holder:
                plan = self._sync_locked(lockfile, holder)
        except store_fs.LockTimeout as exc:
            raise SyncError(str(exc), "locked")
        except store_fs.UnsafeStore as exc:
            raise SyncError(str(exc), "unsafe-store")
        plan["repairs"] = repairs
        return plan

    def _sync_locked(self, lockfile, holder):
        plan = self.plan()
        plan.update(built=False, sync_changes=[], pruned=[])
        if plan["action"] == "none":
            return plan
        if plan["action"] == "build":
            holder.doing("build %s from %s for %s" % (plan["target"], self.lockfile_name, self.path))
            self._drop_from_cache(plan["changes"])
            plan["sync_changes"] = self.build(plan["target"], lockfile)
            plan["built"] = True
            plan["cache_check"] = self.cache_check
        holder.doing("flip %s to %s" % (self.path, plan["target"]))
        # What is live now, not what the plan saw: if anything flipped it meanwhile (a store
        # lock that does not hold, e.g. on a file system without flock), that venv is the one
        # being replaced, and it must neither be lost nor mistaken.
        live = store_fs.live_targets([self.path])
        replaced = dict(plan, current=live[0] if live else None,
                        drift=plan["drift"] and live == [plan["current"]])
        previous = self._next_previous(replaced)
        self.flip(plan["target"], previous)
        plan["previous_kept"] = previous
        holder.doing("prune %s" % self.store)
        protect = [plan["target"], previous] + store_fs.live_targets([self.path, self.previous_link])
        plan["pruned"] = store_fs.prune(self.store, self.path, self.stem, protect, self.keep)
        return plan

    def _next_previous(self, plan):
        """The rollback target after the flip: the venv that was live, unless someone changed
        it (drift, or findings against its manifest when another lock replaces it) — then the
        rollback target stays the one before, if that is still as sealed. Never a wrong one."""
        current, target = plan["current"], os.path.realpath(plan["target"])
        kept = os.path.realpath(self.previous_link) if os.path.islink(self.previous_link) else None

        def trusted(venv):
            return store_fs.is_venv(venv) and not (self.verify_files and sealed_findings(venv))

        if current and os.path.realpath(current) != target and not plan["drift"] and trusted(current):
            return current
        if kept and kept not in (target, current) and store_fs.is_venv(kept) and not sealed_findings(kept):
            return kept
        return None

    def _drop_from_cache(self, changes):
        names = sorted(set(c["name"] for c in changes if c.get("action") == "tampered" and c["name"] != UNOWNED))
        if names:
            self._clean_cache(names, "tampered packages ")

    def _clean_cache(self, names, what=""):
        """Drop ``names`` (every entry when empty) from uv's cache."""
        result = self.uv.cache_clean(names)
        if result.rc != 0:
            raise SyncError("cannot drop the %s%s from the uv cache: %s"
                            % (what, ", ".join(names) or "whole cache", result.err.strip()), "cache", result.err)

    def build(self, target, lockfile):
        if os.path.realpath(target) in store_fs.live_targets([self.path, self.previous_link]):
            # plan() never targets a live venv or the rollback target; refuse rather than mutate it.
            raise SyncError("internal error: refusing to rebuild %s, which %s or %s points to"
                            % (target, self.path, self.previous_link), "internal")
        if store_fs.sha256_file(lockfile) != self.lockfile_sha256:
            raise SyncError("the lockfile copied to the host (%s) does not have the controller's sha256 %s"
                            % (lockfile, self.lockfile_sha256), "input")
        if os.path.lexists(target):
            store_fs.remove_venv(target)  # an interrupted earlier build, or a stale kept venv
        store_fs.mark_building(target, self.path)
        try:
            references = self.references(exclude=target)
            refresh = self._to_refresh(references)
            changes = self._build(target, lockfile, refresh)
            sealed, bad = self._seal(target)
            differ = self._differ(sealed, references)
            if bad or differ:
                # A poisoned cache gives a fresh venv with edited files (RECORD edited too: only
                # the copy sealed earlier on this host tells): purge, build once more from files
                # uv checks against the lock's hashes.
                if differ and not self._can_refetch():
                    raise SyncError("the uv cache's copy of %s differs from the copy sealed in %s, and with "
                                    "venv_offline and no find-links there is nothing to fetch it again from: clean "
                                    "the cache (uv cache clean %s) and run with network access"
                                    % (", ".join(sorted(differ)), ", ".join(sorted(set(differ.values()))),
                                       " ".join(sorted(n.split("==")[0] for n in differ))), "cache")
                names = [n.split("==")[0] for n in differ]
                self._drop_from_cache(group_findings(target, [{"path": p, "reason": "modified"} for p in bad])
                                      + [{"name": n, "action": "tampered"} for n in names])
                store_fs.remove_tree(target)
                changes = self._build(target, lockfile, True if refresh is True else sorted(set(refresh) | set(names)))
                sealed, bad = self._seal(target)
                if bad:
                    raise SyncError("a freshly built venv has files that differ from their RECORD (%s); the "
                                    "packages themselves are bad" % ", ".join(bad[:20]), "tampered")
            self.cache_check = {"refreshed": "all" if refresh is True else sorted(refresh),
                                "trusted": len(references), "replaced": sorted(differ)}
            if refresh or differ:
                # A refetched package leaves its old copy behind, unreachable: without this
                # the cache grows by the whole lock on every such build.
                self.uv.run([self.uv.uv, "cache", "prune"] + self.uv.common())
            # The manifest is written last: from now on the venv is complete.
            manifest.write(manifest.location(target), sealed)
            os.unlink(target + store_fs.BUILDING_SUFFIX)
            return changes
        except BaseException:
            # SyncError, a crash, or the module being killed by a timeout (SIGTERM ->
            # SystemExit): the half-built venv goes, `current` was never touched.
            store_fs.remove_venv(target)
            raise

    # -- the uv cache is not trusted blindly ---------------------------------------------------

    def references(self, exclude=None):
        """``{"name==version": (digest, venv)}``: each package as sealed in a complete venv of
        this store for the same Python (store_fs.venv_problems: root's, nobody else can write
        it). A package got there fetched afresh or equal to an earlier such copy, so it is
        what its hash-checked wheel holds."""
        found = {}
        try:
            names = sorted(os.listdir(self.store))
        except OSError:
            return found
        for name in names:
            venv = os.path.join(self.store, name)
            meta = store_fs.read_meta(venv) if not name.startswith(".") and os.path.isdir(venv) else None
            if not meta or os.path.realpath(venv) == os.path.realpath(exclude or "") or meta.get("format") != FORMAT \
                    or meta.get("python") != self.python or store_fs.build_in_progress(venv) \
                    or os.path.exists(venv + store_fs.BUILDING_SUFFIX) or store_fs.venv_problems(venv):
                continue
            try:
                sealed = manifest.load(manifest.location(venv))
            except manifest.ManifestError:
                continue
            for package, digest in manifest.package_digests(sealed).items():
                found.setdefault(package, (digest, venv))
        return found

    def _can_refetch(self):
        return not self.uv.offline or bool(self.uv.find_links)

    def _to_refresh(self, references):
        """What the build fetches again instead of taking from uv's cache: every package no
        venv of this store holds yet (all of them without the controller's package set)."""
        if not self._can_refetch():
            return []
        if self.expected is None:
            return True
        fresh = sorted(n for n, v in self.expected.items() if "%s==%s" % (n, v) not in references)
        return True if len(fresh) == len(self.expected) else fresh

    def _differ(self, sealed, references):
        """``{"name==version": venv}`` for packages whose files differ from the copy sealed in ``venv``."""
        return dict((package, references[package][1]) for package, digest in manifest.package_digests(sealed).items()
                    if package in references and references[package][0] != digest)

    def _seal(self, target):
        """lockstep.json, then the manifest of the whole tree, and the RECORD check done
        with the manifest's hashes (each file read once). Returns (manifest, RECORD mismatches)."""
        self._write_meta(target)
        store_fs.harden_tree(target)
        sealed = manifest.build(os.path.realpath(target), clock=self.clock)
        sealed["content_digest"] = manifest.content_digest(sealed)  # computed once, read by every probe
        return sealed, manifest.record_mismatches(sealed, guess_site_packages(os.path.realpath(target)))

    def _build(self, target, lockfile, refresh=None):
        result = self.uv.create_venv(target, self.python)
        if result.rc != 0:
            raise SyncError("cannot create a venv with Python %s: %s" % (self.python, (result.err or result.out).strip()),
                            "venv", result.err)
        copy = os.path.join(target, LOCKFILE_COPY)
        shutil.copyfile(lockfile, copy)
        config = render_uv_config(self.build_variables)
        config_path = None
        if config:
            config_path = os.path.join(target, UV_CONFIG_FILE)
            store_fs.write_atomic(config_path, config)
        if refresh and self.uv.offline:
            # uv refuses --refresh offline: drop the entries, uv unpacks the local files again.
            self._clean_cache([] if refresh is True else refresh)
            refresh = None
        result = self.uv.sync(os.path.join(target, "bin", "python"), copy, config_file=config_path, refresh=refresh)
        report = parse_uv_json(result.out)
        if result.rc != 0 or report is None:
            kind, message = classify_failure(result, self.uv.offline, self.uv.cache_dir, self.lockfile_name,
                                             self.python_version, self.uv.timeout)
            raise SyncError(message, kind, result.err)
        try:
            store_fs.write_atomic(os.path.join(target, ENV_FILE), render_env_file(self.env))
        except ValueError as exc:
            raise SyncError(str(exc), "input")
        install_activate_hook(target)
        self._compile(target)
        self.validate(target)
        return report.get("changes") or []

    def _compile(self, target):
        """Compile every module now (imports stay fast without writing), then guard the venv
        against any later bytecode write (see the module docstring)."""
        sites = guess_site_packages(target)
        # Reproducible: the source's hash instead of its mtime in each header, and the stable
        # venv_path instead of the store directory as the recorded file name (import puts the
        # real one back), so two hosts with the same lock compile the same bytes (content_digest).
        # Unchecked: the manifest, not Python, notices an edited source.
        real = os.path.realpath(target)
        sites = [os.path.realpath(site) for site in sites]
        # -f: a .pth that imports at startup (setuptools' distutils hack) made the venv's Python
        # write a timestamp pyc during the install, which compileall would otherwise keep.
        result = self.uv.run([os.path.join(real, "bin", "python"), "-m", "compileall", "-q", "-f", "-j", "0",
                              "--invalidation-mode", "unchecked-hash", "-s", real, "-p", self.path] + sites,
                             dict(self.uv.env(), PYTHONHASHSEED="0"))
        # rc 1: some file is not valid Python (test data, templates); importing it fails anyway.
        if result.rc not in (0, 1):
            raise SyncError("compiling the bytecode of the new venv failed (%s): %s"
                            % (proc.describe(result, "compileall", self.uv.timeout), proc.tail(result.err)), "validate")
        for site in sites:
            store_fs.write_atomic(os.path.join(site, NO_BYTECODE_PTH), NO_BYTECODE)

    def _write_meta(self, target):
        meta = {
            "format": FORMAT, "key": self.key, "path": self.path, "previous": self.previous_link,
            "lock_sha256": self.lockfile_sha256,
            "lock_name": self.lockfile_name, "python": self.python, "python_version": self.python_version,
            "mpi4py_mode": self.mpi4py_mode, "build_variables": self.build_variables, "uv": self.uv.version(),
            "validate_imports": self.validate_imports, "created": self.clock(),
        }
        store_fs.write_atomic(os.path.join(target, store_fs.META_FILE),
                              json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def validate(self, target):
        """uv agrees the venv is the lockfile, the controller's package set agrees, and the
        imports (mpi4py whenever it is locked) load with the venv's environment."""
        in_sync, changes = self.check_sync(target)
        if not in_sync:
            raise SyncError("the new venv %s does not match %s after the sync (uv reports %s)"
                            % (target, self.lockfile_name, changes), "validate")
        if self.expected is not None:
            installed = self.packages(target)
            if installed != self.expected:
                diff = sorted("%s: %s installed, %s locked" % (n, installed.get(n, "none"), self.expected.get(n, "none"))
                              for n in set(installed) | set(self.expected) if installed.get(n) != self.expected.get(n))
                raise SyncError("the new venv %s is not what %s locks for this Python: %s"
                                % (target, self.lockfile_name, "; ".join(diff)), "validate")
        imports = list(self.validate_imports)
        if "mpi4py" in (self.expected or {}) and not any(i.split(".")[0] == "mpi4py" for i in imports):
            imports.insert(0, "mpi4py")
        errors = import_errors(self.uv.run, target, imports, self.uv.env())
        if errors:
            raise SyncError("the new venv failed validation, the active venv was left as it was: %s"
                            % "; ".join("%s: %s" % item for item in sorted(errors.items())), "validate")

    def flip(self, target, previous):
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        if previous and os.path.realpath(previous) != os.path.realpath(target):
            store_fs.flip_link(self.previous_link, previous)
        elif os.path.islink(self.previous_link):
            # Nothing trustworthy to roll back to: no link is better than a wrong one.
            os.unlink(self.previous_link)
        store_fs.flip_link(self.path, target)
