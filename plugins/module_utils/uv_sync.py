# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: a lock-synced venv store with an atomic ``current`` symlink (stdlib only).

Layout (``store`` and ``path`` are role options)::

    <store>/<stem>-<key12>/      one venv per (lock sha256, Python, mpi4py mode, MPI env)
        lockstep.lock.txt        the exact lock it was synced from
        lockstep.env             KEY=VALUE MPI environment (read by activate + the validator)
        lockstep.json            metadata; written LAST = the venv is complete and validated
    <path>           -> <store>/<stem>-<key12>   ("current"; flipped with rename(2))
    <path>.previous  -> the venv that was current before the last flip (rollback target)

A venv is never modified once it has been current: a new lock, Python or MPI environment
builds a new directory, syncs it with ``uv pip sync --require-hashes``, validates it, and only
then flips ``current``. Anything that fails before the flip leaves ``current`` untouched.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible_collections.lockstep.cluster.plugins.module_utils.inventory import (
    guess_site_packages,
    installed_distributions,
)

META_FILE = "lockstep.json"
LOCK_FILE = "lockstep.lock.txt"
ENV_FILE = "lockstep.env"
UV_CONFIG_FILE = "lockstep.uv.toml"
STORE_LOCK = ".lockstep.lock"
HOOK_BEGIN = "# >>> lockstep.cluster: MPI environment >>>"
HOOK_END = "# <<< lockstep.cluster: MPI environment <<<"
# Bumped when the layout or the key recipe changes, so old venvs are rebuilt, not reused.
FORMAT = 1

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

# Validation run by the new venv's interpreter before the flip. mpi4py is loaded without
# MPI_Init: that is enough to catch a libmpi the wheel cannot load (libmpi.so.12 trap).
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

_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;\\]+)\s*(?:;\s*([^\\#]+?))?\s*\\?\s*$")
_PYVER_RE = re.compile(r"[Pp]ython[ _]?(?:version )?\(?([0-9]+\.[0-9]+(?:\.[0-9]+)?)\)? does not satisfy "
                       r"Python\s*([<>=!~][^\s,]+)")
_NETWORK_MARKERS = (
    "error sending request", "failed to fetch", "dns error", "connection refused", "tcp connect error",
    "network is unreachable", "timed out", "could not connect", "connect error", "name or service not known",
    "temporary failure in name resolution", "certificate", "tls handshake")
_OFFLINE_MARKERS = ("network was disabled", "not found in the cache", "network connectivity is disabled")
_HASH_MARKERS = ("hash mismatch", "hashes do not match", "expected hashes", "hash-checking mode", "--require-hashes")


class SyncError(Exception):
    """A failure with one user-facing message; ``current`` is untouched when it is raised."""

    def __init__(self, message, kind="error", detail=None):
        super(SyncError, self).__init__(message)
        self.message = message
        self.kind = kind
        self.detail = detail


# ---------------------------------------------------------------- pure helpers

def sha256_text(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_name(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_stem(lock_name):
    """``lockfiles/smoke-cpu.txt`` -> ``smoke-cpu`` (safe for a directory name)."""
    base = os.path.basename(lock_name or "lock")
    for suffix in (".txt", ".lock", ".in"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "lock"
    return base[:48]


def compute_key(lock_sha256, python_path, python_version, mpi4py_mode="binary", build_variables=None,
                no_binary=None, env=None):
    """The identity of a venv: everything that changes what is in it or how it must run.

    The Python patch level is left out on purpose: a distro point release updates the
    interpreter under the venv in place and must not force a rebuild.
    """
    minor = ".".join(str(python_version).split(".")[:2])
    recipe = {
        "format": FORMAT,
        "lock": lock_sha256,
        "python": [python_path, minor],
        "mpi4py": mpi4py_mode,
        "build_variables": build_variables or {},
        "no_binary": sorted(no_binary or []),
        "env": env or {},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def lock_requirements(text):
    """``[(name, version, marker)]`` of a hash-pinned lock (check-mode prediction only)."""
    out = []
    logical = text.replace("\\\r\n", " ").replace("\\\n", " ")
    for raw in logical.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line or line.startswith("-"):
            continue
        line = re.sub(r"\s--hash[=\s]\S+", "", " " + line).strip()
        match = _NAME_RE.match(line)
        if match:
            out.append((canonical_name(match.group(1)), match.group(3), (match.group(4) or "").strip() or None))
    return out


_MARKER_TOKEN = re.compile(r"""\s*(?:(?P<open>\()|(?P<close>\))|(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)"""
                           r"""|(?P<bool>and|or)\b|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<str>'[^']*'|"[^"]*"))""")


def _version_tuple(text):
    parts = []
    for piece in re.split(r"[.+-]", text):
        match = re.match(r"\d+", piece)
        parts.append(int(match.group(0)) if match else 0)
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _compare(left, op, right, versions):
    if op in ("in", "not in"):
        return (left in right) == (op == "in")
    if versions:
        a, b = _version_tuple(left), _version_tuple(right)
        if op == "~=":
            prefix = _version_tuple(right)[:-1] or b
            return a >= b and a[:len(prefix)] == prefix
    else:
        a, b = left, right
    return {"==": a == b, "===": left == right, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
            ">=": a >= b, "~=": a >= b}[op]


def evaluate_marker(marker, env):
    """Evaluate a PEP 508 marker against ``env`` (stdlib only, for check-mode predictions on a
    host without ``packaging``). Returns None when it cannot tell."""
    tokens = []
    pos = 0
    text = marker.strip()
    while pos < len(text):
        match = _MARKER_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            return None
        tokens.append(match.groupdict())
        pos = match.end()
    index = [0]

    def peek():
        return tokens[index[0]] if index[0] < len(tokens) else None

    def take():
        index[0] += 1
        return tokens[index[0] - 1]

    def value(token):
        if token["name"]:
            if token["name"] not in env:
                raise KeyError(token["name"])
            return env[token["name"]], token["name"] in ("python_version", "python_full_version",
                                                         "implementation_version", "platform_release")
        if token["str"]:
            return token["str"][1:-1], False
        raise ValueError(token)

    def atom():
        token = take()
        if token["open"]:
            result = expr()
            take()
            return result
        left, left_version = value(token)
        op = " ".join((take()["op"] or "").split())
        if not op:
            raise ValueError(token)
        right, right_version = value(take())
        return _compare(left, op, right, left_version or right_version)

    def conjunction():
        result = atom()
        while peek() and peek()["bool"] == "and":
            take()
            result = atom() and result
        return result

    def expr():
        result = conjunction()
        while peek() and peek()["bool"] == "or":
            take()
            result = conjunction() or result
        return result

    try:
        result = expr()
    except (KeyError, ValueError, IndexError, TypeError):
        return None
    return bool(result) if index[0] == len(tokens) else None


def marker_environment(python_version, platform_machine="x86_64"):
    minor = ".".join(python_version.split(".")[:2])
    return {"python_version": minor, "python_full_version": python_version, "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_machine": platform_machine}


def parse_uv_json(stdout):
    """The JSON report of ``uv pip sync --output-format json`` (dict), or None."""
    text = (stdout or "").strip()
    if not text:
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        data = json.loads(text[start:])
    except ValueError:
        return None
    return data if isinstance(data, dict) and "changes" in data else None


def summarize_changes(changes):
    """uv's change list -> ``(installed, removed)`` lists of ``name==version`` strings.

    An upgrade shows up as one ``uninstalled`` and one ``installed`` entry for a name.
    """
    installed, removed = [], []
    for change in changes or []:
        item = "%s==%s" % (canonical_name(change.get("name", "?")), change.get("version", "?"))
        action = change.get("action", "")
        if action in ("installed", "reinstalled"):
            installed.append(item)
        if action in ("uninstalled", "reinstalled"):
            removed.append(item)
    return sorted(installed), sorted(removed)


def package_diff(before, after):
    """Diff of two ``{name: version}`` maps -> list of uv-style change dicts."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is not None:
            changes.append({"name": name, "version": old, "action": "uninstalled"})
        if new is not None:
            changes.append({"name": name, "version": new, "action": "installed"})
    return changes


def render_diff(before_pkgs, after_pkgs, before_env=None, after_env=None, before_path=None, after_path=None):
    """Ansible ``diff`` dict: the package set (and MPI environment) before and after."""
    def block(path, pkgs, env):
        lines = ["# venv: %s" % (path or "(none)")]
        lines.extend("%s==%s" % (name, pkgs[name]) for name in sorted(pkgs))
        if env:
            lines.append("# lockstep.env")
            lines.extend("%s=%s" % (k, env[k]) for k in sorted(env))
        return "\n".join(lines) + "\n"
    return {
        "before_header": before_path or "(no venv)",
        "after_header": after_path or "(no venv)",
        "before": block(before_path, before_pkgs, before_env),
        "after": block(after_path, after_pkgs, after_env),
    }


def render_env_file(env):
    """``lockstep.env``: ``KEY=VALUE`` lines, sorted, no quotes, no ``export``."""
    lines = ["# Written by lockstep.cluster (roles/pyenv). KEY=VALUE, read by bin/activate and the validator."]
    for key in sorted(env):
        value = "" if env[key] is None else str(env[key])
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
            raise SyncError("invalid environment variable name %r for lockstep.env" % (key,), "input")
        if "\n" in value:
            raise SyncError("environment value for %s contains a newline" % key, "input")
        lines.append("%s=%s" % (key, value))
    return "\n".join(lines) + "\n"


def parse_env_file(text):
    env = {}
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        env[key.strip()] = value
    return env


def toml_string(value):
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


def render_uv_config(build_variables):
    """uv.toml with ``extra-build-variables``: uv keys its build cache on them, so an sdist
    built against one MPI is never reused for another (plain env vars are not keyed)."""
    if not build_variables:
        return None
    parts = []
    for package in sorted(build_variables):
        inner = ", ".join("%s = %s" % (var, toml_string(val))
                          for var, val in sorted(build_variables[package].items()))
        parts.append("%s = { %s }" % (toml_string(package), inner))
    return "[pip]\nextra-build-variables = { %s }\n" % ", ".join(parts)


def classify_failure(stderr, offline=False, cache_dir=None, lock_name="the lock", python_version=None):
    """One clear message for a failed ``uv pip sync`` (kind, message)."""
    text = stderr or ""
    low = text.lower()
    tail = "\n".join(line for line in text.strip().splitlines()[-12:])
    match = _PYVER_RE.search(text)
    if match or "requires-python" in low or "requires python" in low:
        found = match.group(1) if match else (python_version or "?")
        need = match.group(2) if match else "a newer version"
        return ("python", "%s needs Python %s but the venv Python is %s; install a newer Python on "
                "the host and point pyenv_python at it (uv output: %s)" % (lock_name, need, found, tail))
    if any(marker in low for marker in _OFFLINE_MARKERS):
        return ("offline", "offline and the uv cache (%s) does not hold every package of %s: run once with "
                "network access, or provide a wheelhouse with pyenv_find_links (uv output: %s)"
                % (cache_dir or "default cache", lock_name, tail))
    if any(marker in low for marker in _HASH_MARKERS):
        return ("hash", "a downloaded file does not match the hashes in %s (corrupt mirror, tampered "
                "wheel or wrong index): nothing was changed (uv output: %s)" % (lock_name, tail))
    if any(marker in low for marker in _NETWORK_MARKERS):
        return ("network", "cannot download packages for %s and the uv cache (%s) does not have them: no "
                "network, proxy or CA bundle problem (pyenv_ca_bundle)? (uv output: %s)"
                % (lock_name, cache_dir or "default cache", tail))
    return ("uv", "uv pip sync of %s failed: %s" % (lock_name, tail))


# ---------------------------------------------------------------- filesystem

def is_venv(path):
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def read_meta(venv):
    try:
        with open(os.path.join(venv, META_FILE)) as handle:
            meta = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def inspect_path(path):
    """State of the stable path: ('absent'|'link'|'dangling'|'venv-dir'|'not-venv', target)."""
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not os.path.exists(target):
            return "dangling", target
        if is_venv(target):
            return "link", target
        return "not-venv", target
    if not os.path.exists(path):
        return "absent", None
    if os.path.isdir(path) and is_venv(path):
        return "venv-dir", path
    return "not-venv", path


def write_atomic(path, text, mode=0o644):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def flip_link(link, target):
    """Point ``link`` at ``target`` atomically (symlink beside it, then rename(2) over it)."""
    tmp = "%s.tmp-%d" % (link, os.getpid())
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)
    fsync_dir(os.path.dirname(link) or ".")


def fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def install_activate_hook(venv):
    activate = os.path.join(venv, "bin", "activate")
    if not os.path.isfile(activate):
        return False
    with open(activate) as handle:
        text = handle.read()
    if HOOK_BEGIN in text:
        return False
    with open(activate, "a") as handle:
        handle.write(ACTIVATE_HOOK)
    return True


@contextlib.contextmanager
def store_lock(store):
    """Serialize concurrent runs on one host (two playbooks, or a run and a rollback)."""
    fd = os.open(os.path.join(store, STORE_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def prune(store, path, stem, protect, keep):
    """Delete old venvs of ``path`` in ``store``; the newest ``keep`` (counting ``protect``,
    i.e. current and previous) stay.

    Only directories this code created for this ``path`` are touched: a lockstep.json that
    names ``path``, or an incomplete ``<stem>-<12 hex>[-N]`` left by an interrupted build.
    """
    protect = set(os.path.realpath(p) for p in protect if p)
    pattern = re.compile(r"^%s-[0-9a-f]{12}(-\d+)?$" % re.escape(stem))
    candidates = []
    for name in os.listdir(store):
        full = os.path.join(store, name)
        if not os.path.isdir(full) or os.path.islink(full) or name.startswith("."):
            continue
        meta = read_meta(full)
        if meta is not None:
            if meta.get("path") != path:
                continue
        elif not pattern.match(name):
            continue
        created = (meta or {}).get("created") or os.path.getmtime(full)
        candidates.append((created, meta is not None, full))
    candidates.sort(reverse=True)
    removed = []
    kept = len([c for c in candidates if os.path.realpath(c[2]) in protect])
    for _created, complete, full in candidates:
        if os.path.realpath(full) in protect:
            continue
        if complete and kept < keep:
            kept += 1
            continue
        remove_tree(full)
        removed.append(full)
    return removed


# ---------------------------------------------------------------- uv runner

class UvRunner(object):
    """Builds and runs uv commands with the role's options."""

    def __init__(self, uv, index_url=None, extra_index_urls=None, find_links=None, offline=False,
                 ca_bundle=None, cache_dir=None, no_binary=None, timeout=None, base_env=None, run=None,
                 link_mode=None):
        self.uv = uv
        self.index_url = index_url or None
        self.extra_index_urls = list(extra_index_urls or [])
        self.find_links = list(find_links or [])
        self.offline = bool(offline)
        self.ca_bundle = ca_bundle or None
        self.cache_dir = cache_dir or None
        self.no_binary = list(no_binary or [])
        self.link_mode = link_mode or None
        self.timeout = timeout
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._run = run or _subprocess_run
        self.commands = []

    def env(self):
        env = dict(self.base_env)
        # Never let an active venv/conda env or a managed-Python download sneak in.
        for key in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "UV_PYTHON", "UV_SYSTEM_PYTHON"):
            env.pop(key, None)
        env["UV_PYTHON_DOWNLOADS"] = "never"
        env["UV_NO_PROGRESS"] = "1"
        if self.ca_bundle:
            env["SSL_CERT_FILE"] = self.ca_bundle
        return env

    def common(self):
        args = []
        if self.cache_dir:
            args += ["--cache-dir", self.cache_dir]
        if self.offline:
            args.append("--offline")
        return args

    def index_args(self):
        args = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        for name in self.no_binary:
            args += ["--no-binary", name]
        return args

    def run(self, argv, env=None):
        start = time.time()
        result = self._run(argv, env or self.env(), self.timeout)
        self.commands.append({"argv": list(argv), "rc": result[0], "seconds": round(time.time() - start, 3)})
        return result

    def version(self):
        rc, out, err = self.run([self.uv, "--version"])
        return out.strip() if rc == 0 else None

    def create_venv(self, venv, python):
        argv = [self.uv, "venv", "--no-config", "--python", python, "--python-preference", "only-system",
                "--no-python-downloads", "--quiet"] + self.common() + [venv]
        return self.run(argv)

    def sync(self, python, lock_path, check=False, dry_run=False, config_file=None):
        argv = [self.uv, "pip", "sync", "--require-hashes", "--python", python, "--output-format", "json"]
        if config_file:
            argv += ["--config-file", config_file]
        if check:
            argv.append("--check")
        if dry_run:
            argv.append("--dry-run")
        if self.link_mode:
            argv += ["--link-mode", self.link_mode]
        argv += self.common() + self.index_args() + [lock_path]
        return self.run(argv)

    def cache_clean(self, names):
        """Drop ``names`` from uv's cache: uv never re-verifies cached files, and with
        hardlinks an edit in a venv is an edit of the cache."""
        return self.run([self.uv, "cache", "clean"] + list(names) + self.common())

    def list_packages(self, python):
        argv = [self.uv, "pip", "list", "--python", python, "--format", "json", "--offline"]
        if self.cache_dir:
            argv += ["--cache-dir", self.cache_dir]
        rc, out, err = self.run(argv)
        if rc != 0:
            return None
        try:
            rows = json.loads(out or "[]")
        except ValueError:
            return None
        return dict((canonical_name(row["name"]), row["version"]) for row in rows)


def _subprocess_run(argv, env, timeout):
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                universal_newlines=True)
    except OSError as exc:
        return 127, "", "cannot run %s: %s" % (argv[0], exc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return 124, out, (err or "") + "\ntimed out after %ss" % timeout
    return proc.returncode, out, err


# ---------------------------------------------------------------- the sync

class VenvStore(object):
    """Plan and apply a sync of ``path`` to a lock (see module docstring)."""

    def __init__(self, runner, path, store, python, python_version, lock_text, lock_name=None, lock_sha256=None,
                 env=None, mpi4py_mode="binary", build_variables=None, validate_imports=None, keep=2,
                 previous=None, clock=time.time, verify_files=False):
        self.uv = runner
        self.verify_files = verify_files
        self.path = path.rstrip("/") or path
        self.store = store
        self.python = python
        self.python_version = python_version
        self.lock_text = lock_text
        self.lock_name = lock_name or "the lock"
        self.lock_sha256 = lock_sha256 or sha256_text(lock_text)
        self.env = dict((str(k), "" if v is None else str(v)) for k, v in (env or {}).items())
        self.mpi4py_mode = mpi4py_mode
        self.build_variables = build_variables or {}
        self.validate_imports = list(validate_imports or [])
        self.keep = max(int(keep), 1)
        self.previous_link = previous or (self.path + ".previous")
        self.clock = clock
        self.stem = lock_stem(self.lock_name)
        no_binary = list(runner.no_binary)
        self.key = compute_key(self.lock_sha256, python, python_version, mpi4py_mode, self.build_variables,
                               no_binary, self.env)
        self.target = os.path.join(store, "%s-%s" % (self.stem, self.key[:12]))
        self.warnings = []

    # -- inputs -------------------------------------------------------------------------

    def check_inputs(self):
        state, target = inspect_path(self.path)
        if state == "not-venv":
            what = "a symlink to %s, which is not a venv" % target if os.path.islink(self.path) else \
                "not a venv (no pyvenv.cfg)"
            raise SyncError("pyenv_path %s exists and is %s: refusing to replace it; move it away or choose "
                            "another pyenv_path" % (self.path, what), "not-venv")
        if state == "venv-dir":
            raise SyncError("pyenv_path %s is a plain venv directory, not the symlink lockstep flips "
                            "atomically: move it away (e.g. to %s.old) and re-run; it is left untouched"
                            % (self.path, self.path), "not-venv")
        if os.path.realpath(self.store).startswith(os.path.realpath(self.path) + os.sep):
            raise SyncError("pyenv_store_dir %s must not be inside pyenv_path %s" % (self.store, self.path), "input")
        if self.mpi4py_mode not in ("binary", "source"):
            raise SyncError("mpi4py mode must be binary or source, not %r" % self.mpi4py_mode, "input")
        return state, target

    # -- state of a venv ----------------------------------------------------------------

    def complete(self, venv):
        meta = read_meta(venv)
        return bool(meta and meta.get("key") == self.key and is_venv(venv))

    def check_sync(self, venv, lock_path):
        """uv's own answer: (in_sync, changes) for ``venv`` against ``lock_path``."""
        python = os.path.join(venv, "bin", "python")
        config = self._config_file(venv)
        rc, out, err = self.uv.sync(python, lock_path, check=True, config_file=config)
        report = parse_uv_json(out)
        if rc in (0, 1) and report is not None:
            return rc == 0 and not report.get("changes"), report.get("changes") or []
        kind, message = classify_failure(err, self.uv.offline, self.uv.cache_dir, self.lock_name,
                                         self.python_version)
        raise SyncError(message, kind, err)

    def _config_file(self, venv):
        path = os.path.join(venv, UV_CONFIG_FILE)
        return path if os.path.isfile(path) else None

    # -- plan ---------------------------------------------------------------------------

    def plan(self):
        """Decide what to do, read-only. Returns a dict (action, target, current, changes...)."""
        state, current = self.check_inputs()
        current = current if state == "link" else None
        plan = {"current": current, "target": self.target, "key": self.key, "changes": [], "drift": False}
        with self._lock_file() as lock_path:
            if current and self.complete(current):
                in_sync, changes = self.check_sync(current, lock_path)
                if in_sync:
                    # uv does not re-hash installed files: an edited file needs our own check.
                    changes = self.tampered(current) if self.verify_files else []
                if not changes:
                    plan["action"] = "none"
                    plan["target"] = current
                    return plan
                # Someone changed the live venv: build a fresh one beside it, never repair it.
                plan["drift"] = True
                plan["changes"] = changes
                plan["target"] = self._fresh_name() if os.path.realpath(self.target) == current else self.target
                plan["action"] = "build"
                return plan
            if os.path.isdir(self.target) and self.complete(self.target):
                in_sync, changes = self.check_sync(self.target, lock_path)
                if in_sync:
                    plan["action"] = "flip"  # e.g. back to a venv kept for rollback
                    return plan
            plan["action"] = "build"
            return plan

    def tampered(self, venv, rehash_all=False):
        """uv-style changes for distributions whose files differ from their RECORD. By default
        only files whose inode changed after install are read (see module_utils.inventory)."""
        return [{"name": canonical_name(dist["name"]), "version": dist["version"], "action": "tampered",
                 "files": [finding["path"] for finding in dist["tampered"]]}
                for dist in installed_distributions(guess_site_packages(venv), verify_files=True, rehash_all=rehash_all)
                if dist["tampered"]]

    def _drop_from_cache(self, changes):
        names = sorted(set(c["name"] for c in changes if c.get("action") == "tampered"))
        if not names:
            return
        rc, _out, err = self.uv.cache_clean(names)
        if rc != 0:
            raise SyncError("cannot drop the tampered packages %s from the uv cache: %s"
                            % (", ".join(names), err.strip()), "cache", err)

    def _fresh_name(self):
        return "%s-%d" % (self.target, int(self.clock()))

    @contextlib.contextmanager
    def _lock_file(self):
        """The lock text in a temp file (check mode must not write into the store)."""
        fd, tmp = tempfile.mkstemp(prefix="lockstep-lock-", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.lock_text)
            yield tmp
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # -- predictions (check mode) -------------------------------------------------------

    def packages(self, venv):
        if not venv or not os.path.isdir(venv):
            return {}
        return self.uv.list_packages(os.path.join(venv, "bin", "python")) or {}

    def predict(self, plan):
        """(before_pkgs, after_pkgs) for check/diff mode without touching the store."""
        before = self.packages(plan["current"])
        if plan["action"] == "none":
            return before, before
        if plan["action"] == "flip":
            return before, self.packages(plan["target"])
        if plan["current"]:
            with self._lock_file() as lock_path:
                _in_sync, changes = self.check_sync(plan["current"], lock_path)
            after = dict(before)
            for change in changes:
                name = canonical_name(change.get("name", ""))
                if change.get("action") == "uninstalled" and after.get(name) == change.get("version"):
                    after.pop(name, None)
            for change in changes:
                if change.get("action") in ("installed", "reinstalled"):
                    after[canonical_name(change["name"])] = change.get("version")
            return before, after
        return before, self._predict_fresh()

    def _predict_fresh(self):
        """Packages a fresh venv would get: a dry run in a throwaway venv (exact, markers
        evaluated by uv), else every ``name==version`` of the lock."""
        if self.uv.uv and os.access(self.uv.uv, os.X_OK):
            scratch = tempfile.mkdtemp(prefix="lockstep-predict-")
            try:
                venv = os.path.join(scratch, "venv")
                rc, _out, _err = self.uv.create_venv(venv, self.python)
                if rc == 0:
                    with self._lock_file() as lock_path:
                        rc, out, _err = self.uv.sync(os.path.join(venv, "bin", "python"), lock_path, dry_run=True)
                    report = parse_uv_json(out)
                    if rc == 0 and report is not None:
                        installed, _removed = summarize_changes(report.get("changes"))
                        return dict(item.split("==", 1) for item in installed)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        env = marker_environment(self.python_version, os.uname()[4])
        out = {}
        for name, version, marker in lock_requirements(self.lock_text):
            applies = True if marker is None else evaluate_marker(marker, env)
            if applies is None:
                out[name] = "%s ; %s" % (version, marker)  # cannot tell: show the condition
            elif applies:
                out[name] = version
        return out

    # -- apply --------------------------------------------------------------------------

    def apply(self, plan):
        """Build (if needed), validate, flip. Returns a result dict. Raises SyncError before
        the flip on any failure, after removing the half-built venv."""
        if not os.path.isdir(self.store):
            os.makedirs(self.store, 0o755)
        with store_lock(self.store):
            before = self.packages(plan["current"])
            before_env = self._env_of(plan["current"])
            target = plan["target"]
            sync_changes = []
            if plan["action"] == "build":
                self._drop_from_cache(plan["changes"])
                sync_changes = self.build(target)
                if self.verify_files:
                    # A poisoned cache gives a fresh venv with edited files: purge, build once more.
                    # Every file of a new venv is new, so ctimes say nothing: read them all.
                    poisoned = self.tampered(target, rehash_all=True)
                    if poisoned:
                        self._drop_from_cache(poisoned)
                        sync_changes = self.build(target)
                        still = self.tampered(target, rehash_all=True)
                        if still:
                            remove_tree(target)
                            raise SyncError("a freshly built venv has files that differ from their RECORD (%s); "
                                            "the packages themselves are bad" % ", ".join(
                                                "%s: %s" % (c["name"], " ".join(c["files"])) for c in still),
                                            "tampered")
            after = self.packages(target)
            previous = plan["current"]
            self.flip(target, previous)
            removed = prune(self.store, self.path, self.stem, [target, previous], self.keep)
        return {
            "venv": target,
            "previous": previous,
            "built": plan["action"] == "build",
            "sync_changes": sync_changes,
            "changes": package_diff(before, after),
            "before": before,
            "after": after,
            "before_env": before_env,
            "pruned": removed,
        }

    def _env_of(self, venv):
        if not venv:
            return {}
        try:
            with open(os.path.join(venv, ENV_FILE)) as handle:
                return parse_env_file(handle.read())
        except (IOError, OSError):
            return {}

    def build(self, target):
        if os.path.lexists(self.path) and os.path.realpath(target) == os.path.realpath(self.path):
            # plan() never targets the live venv; refuse rather than mutate it.
            raise SyncError("internal error: refusing to rebuild the active venv %s" % target, "internal")
        if os.path.lexists(target):
            remove_tree(target)  # an interrupted earlier build, or a stale kept venv
        try:
            return self._build(target)
        except BaseException:
            # SyncError, a crash, or the module being killed by a timeout (SIGTERM ->
            # SystemExit): the half-built venv goes, `current` was never touched.
            remove_tree_quiet(target)
            raise

    def _build(self, target):
        rc, out, err = self.uv.create_venv(target, self.python)
        if rc != 0:
            raise SyncError("cannot create a venv with Python %s: %s" % (self.python, (err or out).strip()),
                            "venv", err)
        lock_path = os.path.join(target, LOCK_FILE)
        write_atomic(lock_path, self.lock_text)
        config = render_uv_config(self.build_variables)
        config_path = None
        if config:
            config_path = os.path.join(target, UV_CONFIG_FILE)
            write_atomic(config_path, config)
        python = os.path.join(target, "bin", "python")
        rc, out, err = self.uv.sync(python, lock_path, config_file=config_path)
        report = parse_uv_json(out)
        if rc != 0 or report is None:
            kind, message = classify_failure(err, self.uv.offline, self.uv.cache_dir, self.lock_name,
                                             self.python_version)
            raise SyncError(message, kind, err)
        write_atomic(os.path.join(target, ENV_FILE), render_env_file(self.env))
        install_activate_hook(target)
        self.validate(target, lock_path)
        meta = {
            "format": FORMAT,
            "key": self.key,
            "path": self.path,
            "lock_sha256": self.lock_sha256,
            "lock_name": self.lock_name,
            "python": self.python,
            "python_version": self.python_version,
            "mpi4py_mode": self.mpi4py_mode,
            "build_variables": self.build_variables,
            "uv": self.uv.version(),
            "created": self.clock(),
        }
        # Written last: a venv without it is incomplete and is never flipped to or reused.
        write_atomic(os.path.join(target, META_FILE), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return report.get("changes") or []

    def validate(self, target, lock_path):
        in_sync, changes = self.check_sync(target, lock_path)
        if not in_sync:
            raise SyncError("the new venv %s does not match %s after the sync (uv reports %s)"
                            % (target, self.lock_name, changes), "validate")
        imports = list(self.validate_imports)
        names = set(name for name, _v, _m in lock_requirements(self.lock_text))
        if "mpi4py" in names and not any(i.split(".")[0] == "mpi4py" for i in imports):
            imports.insert(0, "mpi4py")
        if not imports:
            return
        env = self.uv.env()
        env.update(self.env)
        env["VIRTUAL_ENV"] = target
        env["PATH"] = os.path.join(target, "bin") + os.pathsep + env.get("PATH", "")
        if env.get("MPI_BIN"):
            env["PATH"] = env["MPI_BIN"] + os.pathsep + env["PATH"]
        rc, out, err = self.uv.run([os.path.join(target, "bin", "python"), "-c", VALIDATE_SCRIPT] + imports, env)
        report = None
        for line in (out or "").splitlines():
            if line.startswith("LOCKSTEP-VALIDATE "):
                report = json.loads(line[len("LOCKSTEP-VALIDATE "):])
        if rc != 0 or report is None or report.get("errors"):
            errors = (report or {}).get("errors") or {"python": (err or out or "").strip()[-800:]}
            raise SyncError("the new venv failed validation, the active venv was left as it was: %s"
                            % "; ".join("%s: %s" % item for item in sorted(errors.items())), "validate")

    def flip(self, target, previous):
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        if previous and os.path.realpath(previous) != os.path.realpath(target):
            flip_link(self.previous_link, previous)
        flip_link(self.path, target)


def remove_tree_quiet(path):
    try:
        remove_tree(path)
    except OSError:
        pass


def rollback(path, previous_link=None):
    """Swap ``current`` and ``previous``. Returns (old_current, new_current). Raises SyncError."""
    previous_link = previous_link or path.rstrip("/") + ".previous"
    state, current = inspect_path(path)
    if state not in ("link", "dangling"):
        raise SyncError("pyenv_path %s is not a lockstep venv symlink (%s): nothing to roll back" % (path, state),
                        "rollback")
    if not os.path.islink(previous_link):
        raise SyncError("no previous venv recorded at %s: nothing to roll back to" % previous_link, "rollback")
    target = os.path.realpath(previous_link)
    if not is_venv(target) or read_meta(target) is None:
        raise SyncError("the previous venv %s is missing or incomplete: cannot roll back" % target, "rollback")
    store = os.path.dirname(target)
    with store_lock(store):
        flip_link(path, target)
        if current and os.path.isdir(current):
            flip_link(previous_link, current)
    return current, target
