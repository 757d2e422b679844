# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: a lock-synced venv store behind an atomic ``current`` symlink (stdlib only).

Layout (``store`` and ``path`` are role options)::

    <store>/<stem>-<key12>/      one venv per (lockfile sha256, Python, mpi4py mode, MPI env)
        lockstep.lock.txt        the exact lockfile it was synced from
        lockstep.env             KEY=VALUE MPI environment (module_utils.venv_env)
        lockstep.json            metadata; written LAST = the venv is complete and validated
    <path>           -> <store>/<stem>-<key12>   ("current"; flipped with rename(2))
    <path>.previous  -> the venv that was current before the last flip (rollback target)

A venv is never modified once it has been current: a new lockfile, Python or MPI environment
builds a new directory, syncs it with ``uv pip sync --require-hashes``, validates it, and only
then flips ``current``. Anything that fails before the flip leaves ``current`` untouched.
The lockfile itself is parsed on the controller; here only uv reads it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import shutil
import time

from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs, venv_env
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import (
    canonical_name,
    guess_site_packages,
    installed_distributions,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_runner import (
    SyncError,
    classify_failure,
    parse_uv_json,
)

LOCKFILE_COPY = "lockstep.lock.txt"
UV_CONFIG_FILE = "lockstep.uv.toml"
# Bumped when the layout or the key recipe changes, so old venvs are rebuilt, not reused.
FORMAT = 1

# Run by the new venv's interpreter before the flip. mpi4py is loaded without MPI_Init:
# enough to catch a libmpi the wheel cannot load (the libmpi.so.12 trap).
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
                no_binary=None, env=None):
    """The identity of a venv: everything that changes what is in it or how it must run.

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


class VenvStore(object):
    """Plan and apply a sync of ``path`` to a lockfile (see the module docstring)."""

    def __init__(self, runner, path, store, python, python_version, lockfile_sha256, lockfile_name=None, env=None,
                 mpi4py_mode="binary", build_variables=None, validate_imports=None, keep=2, previous=None,
                 clock=time.time, verify_files=True, expected=None):
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
        # {name: version} the controller derived from the lockfile for this Python (or None).
        self.expected = dict((canonical_name(k), v) for k, v in (expected or {}).items()) if expected else None
        self.stem = lock_stem(self.lockfile_name)
        self.key = compute_key(lockfile_sha256, python, python_version, mpi4py_mode, self.build_variables,
                               runner.no_binary, self.env)
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

    def complete(self, venv):
        """Built by us for this key and this lockfile, and its lockfile copy is intact."""
        meta = store_fs.read_meta(venv)
        if not meta or meta.get("key") != self.key or not store_fs.is_venv(venv):
            return False
        try:
            return store_fs.sha256_file(os.path.join(venv, LOCKFILE_COPY)) == self.lockfile_sha256
        except (IOError, OSError):
            return False

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
        """uv-style changes for distributions whose files differ from their RECORD."""
        return [{"name": canonical_name(dist["name"]), "version": dist["version"], "action": "tampered",
                 "files": [finding["path"] for finding in dist["tampered"]]}
                for dist in installed_distributions(guess_site_packages(venv), verify_files=True,
                                                    rehash_all=rehash_all)
                if dist["tampered"]]

    def packages(self, venv):
        if not venv or not os.path.isdir(venv) or not self.uv.available():
            return {}
        return self.uv.list_packages(os.path.join(venv, "bin", "python")) or {}

    # -- plan (read-only) -----------------------------------------------------------------

    def plan(self):
        """What a sync would do: ``{action: none|flip|build, current, target, drift, changes}``."""
        state, current = self.check_inputs()
        current = current if state == "link" else None
        plan = {"current": current, "target": self.target, "key": self.key, "changes": [], "drift": False}
        if current and self.complete(current):
            in_sync, changes = self.check_sync(current)
            if in_sync:
                # uv does not re-hash installed files: an edited file needs our own check.
                changes = self.tampered(current) if self.verify_files else []
            if not changes:
                plan.update(action="none", target=current)
                return plan
            # Someone changed the live venv: build a fresh one beside it, never repair it.
            plan.update(action="build", drift=True, changes=changes)
            if os.path.realpath(self.target) == current:
                plan["target"] = "%s-%d" % (self.target, int(self.clock()))
            return plan
        if os.path.isdir(self.target) and self.complete(self.target) and self.check_sync(self.target)[0]:
            plan["action"] = "flip"  # e.g. back to a venv kept for rollback
            return plan
        plan["action"] = "build"
        return plan

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
            return venv_env.read(os.path.join(venv, venv_env.ENV_FILE))
        except (IOError, OSError, ValueError):
            return {}

    # -- apply ------------------------------------------------------------------------------

    def sync(self, lockfile):
        """Plan again under the store lock, then build (if needed), validate and flip.

        ``lockfile``: the lockfile on this host (sha256 checked). Returns the plan with
        ``built``, ``sync_changes``, ``pruned``. Raises SyncError before the flip on any failure.
        """
        if not os.path.isdir(self.store):
            os.makedirs(self.store, 0o755)
        with store_fs.store_lock(self.store):
            plan = self.plan()
            plan.update(built=False, sync_changes=[], pruned=[])
            if plan["action"] == "none":
                return plan
            if plan["action"] == "build":
                self._drop_from_cache(plan["changes"])
                plan["sync_changes"] = self.build(plan["target"], lockfile)
                plan["built"] = True
            self.flip(plan["target"], plan["current"])
            plan["pruned"] = store_fs.prune(self.store, self.path, self.stem, [plan["target"], plan["current"]],
                                            self.keep)
        return plan

    def _drop_from_cache(self, changes):
        names = sorted(set(c["name"] for c in changes if c.get("action") == "tampered"))
        if not names:
            return
        result = self.uv.cache_clean(names)
        if result.rc != 0:
            raise SyncError("cannot drop the tampered packages %s from the uv cache: %s"
                            % (", ".join(names), result.err.strip()), "cache", result.err)

    def build(self, target, lockfile):
        if os.path.lexists(self.path) and os.path.realpath(target) == os.path.realpath(self.path):
            # plan() never targets the live venv; refuse rather than mutate it.
            raise SyncError("internal error: refusing to rebuild the active venv %s" % target, "internal")
        if store_fs.sha256_file(lockfile) != self.lockfile_sha256:
            raise SyncError("the lockfile copied to the host (%s) does not have the controller's sha256 %s"
                            % (lockfile, self.lockfile_sha256), "input")
        if os.path.lexists(target):
            store_fs.remove_tree(target)  # an interrupted earlier build, or a stale kept venv
        try:
            changes = self._build(target, lockfile)
            if self.verify_files:
                # A poisoned cache gives a fresh venv with edited files: purge, build once more.
                # Every file of a new venv is new, so ctimes say nothing: read them all.
                poisoned = self.tampered(target, rehash_all=True)
                if poisoned:
                    self._drop_from_cache(poisoned)
                    store_fs.remove_tree(target)
                    changes = self._build(target, lockfile)
                    still = self.tampered(target, rehash_all=True)
                    if still:
                        raise SyncError("a freshly built venv has files that differ from their RECORD (%s); the "
                                        "packages themselves are bad" % ", ".join(
                                            "%s: %s" % (c["name"], " ".join(c["files"])) for c in still), "tampered")
            self._write_meta(target)
            return changes
        except BaseException:
            # SyncError, a crash, or the module being killed by a timeout (SIGTERM ->
            # SystemExit): the half-built venv goes, `current` was never touched.
            shutil.rmtree(target, ignore_errors=True)
            raise

    def _build(self, target, lockfile):
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
        result = self.uv.sync(os.path.join(target, "bin", "python"), copy, config_file=config_path)
        report = parse_uv_json(result.out)
        if result.rc != 0 or report is None:
            kind, message = classify_failure(result, self.uv.offline, self.uv.cache_dir, self.lockfile_name,
                                             self.python_version, self.uv.timeout)
            raise SyncError(message, kind, result.err)
        try:
            store_fs.write_atomic(os.path.join(target, venv_env.ENV_FILE), venv_env.render(self.env))
        except ValueError as exc:
            raise SyncError(str(exc), "input")
        venv_env.install_activate_hook(target)
        self.validate(target)
        return report.get("changes") or []

    def _write_meta(self, target):
        meta = {
            "format": FORMAT, "key": self.key, "path": self.path, "lock_sha256": self.lockfile_sha256,
            "lock_name": self.lockfile_name, "python": self.python, "python_version": self.python_version,
            "mpi4py_mode": self.mpi4py_mode, "build_variables": self.build_variables, "uv": self.uv.version(),
            "created": self.clock(),
        }
        # Written last: a venv without it is incomplete and is never flipped to or reused.
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
        if not imports:
            return
        env, _env_file = venv_env.venv_environment(target, self.uv.env())
        result = self.uv.run([os.path.join(target, "bin", "python"), "-c", VALIDATE_SCRIPT] + imports, env)
        report = None
        for line in (result.out or "").splitlines():
            if line.startswith("LOCKSTEP-VALIDATE "):
                report = json.loads(line[len("LOCKSTEP-VALIDATE "):])
        if result.rc != 0 or report is None or report.get("errors"):
            errors = (report or {}).get("errors") or {"python": (result.err or result.out or "").strip()[-800:]}
            raise SyncError("the new venv failed validation, the active venv was left as it was: %s"
                            % "; ".join("%s: %s" % item for item in sorted(errors.items())), "validate")

    def flip(self, target, previous):
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        if previous and os.path.realpath(previous) != os.path.realpath(target):
            store_fs.flip_link(self.previous_link, previous)
        store_fs.flip_link(self.path, target)


def rollback(path, previous_link=None, check_mode=False):
    """Swap ``current`` and ``previous``. Returns (old_current, new_current). Raises SyncError."""
    path = path.rstrip("/") or path
    previous_link = previous_link or path + ".previous"
    state, current = store_fs.inspect_path(path)
    if state not in ("link", "dangling"):
        raise SyncError("venv_path %s is not a lockstep venv symlink (%s): nothing to roll back" % (path, state),
                        "rollback")
    if not os.path.islink(previous_link):
        raise SyncError("no previous venv recorded at %s: nothing to roll back to" % previous_link, "rollback")
    target = os.path.realpath(previous_link)
    if not store_fs.is_venv(target) or store_fs.read_meta(target) is None:
        raise SyncError("the previous venv %s is missing or incomplete: cannot roll back" % target, "rollback")
    if check_mode:
        return current, target
    with store_fs.store_lock(os.path.dirname(target)):
        store_fs.flip_link(path, target)
        if current and os.path.isdir(current):
            store_fs.flip_link(previous_link, current)
    return current, target
