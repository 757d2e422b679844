# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lock-synced venv store behind an atomic ``current`` symlink (stdlib only).

Layout (``store`` and ``path`` are role options)::

    <store>/<stem>-<key12>/      one venv per (lockfile sha256, Python, mpi4py mode, MPI env)
        lockstep.lock.txt        the exact lockfile it was synced from
        lockstep.env             KEY=VALUE MPI environment (module_utils.venv_env)
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

Bytecode: every module is compiled when the venv is built, and a ``.pth`` that sorts first sets
``sys.dont_write_bytecode`` for every run of the venv's Python (root, ``-O``, a benchmark
without the activate hook): compiled, imports stay fast; guarded, nothing Python does later
adds a file the manifest would report.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import time

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest, proc, store_fs, venv_env
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_key import (
    FORMAT,
    compute_key,
    lock_stem,
    render_uv_config,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import (
    canonical_name,
    guess_site_packages,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_trust import (
    UNOWNED,
    group_findings,
    import_errors,
    sealed_findings,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_runner import (
    SyncError,
    classify_failure,
    parse_uv_json,
)

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
            if not changes:
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
            return venv_env.read(os.path.join(venv, venv_env.ENV_FILE))
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
            store_fs.write_atomic(os.path.join(target, venv_env.ENV_FILE), venv_env.render(self.env))
        except ValueError as exc:
            raise SyncError(str(exc), "input")
        venv_env.install_activate_hook(target)
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
        result = self.uv.run([os.path.join(real, "bin", "python"), "-m", "compileall", "-q", "-j", "0",
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
