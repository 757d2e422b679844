# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: what lockstep.cluster.venv does for one host with a wheelhouse — pick the
host's files from the lock by its wheel tags, fetch them once into the controller wheelhouse,
push only those the host lacks, and with ``mpi4py_mode=source`` have one host per (distro
release, MPI, Python) build the mpi4py wheel that every other host of the combination installs.

Trust in a built wheel: its hash is not in the lock. The sdist it was built from is (checked on
the controller and again on the builder), the build requirements are pinned by hash (``uv build
--build-constraints --require-hashes``), the controller records the wheel's sha256 with its
provenance (sdist sha256, builder host, combination, build time) next to it, and the hosts get a
requirements rendering of the lock whose mpi4py line carries exactly the recorded hashes, so uv
installs that wheel or nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
import tomllib

from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.plugin_utils import credentials, remote, wheelhouse
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import load_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.pylock import render_requirements

MODULE = "lockstep.cluster.venv"
BUILT = "mpi4py"


def find_uv(explicit=None):
    """uv on the controller: the option, the one beside this Python (the controller venv), PATH."""
    import sys

    candidates = [explicit, os.path.join(os.path.dirname(sys.executable), "uv"), shutil.which("uv")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise AnsibleActionFail("the wheelhouse needs uv on the controller (pip install uv, or set wheelhouse_uv)")


def build_requires(sdist):
    """``[build-system].requires`` of an sdist's pyproject.toml (PEP 517's default without one)."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "pyproject.toml" and member.isfile():
                data = tomllib.loads(archive.extractfile(member).read().decode("utf-8"))
                return list(data.get("build-system", {}).get("requires", ["setuptools>=40.8.0"]))
    return ["setuptools>=40.8.0"]


class Airgap(object):
    """One host's wheelhouse work inside one uv_sync task."""

    def __init__(self, action, args, lock, task_vars):
        self.action = action
        self.args = args
        self.lock = lock
        self.cache = os.path.abspath(os.path.expanduser(args["wheelhouse_cache"] or "~/.cache/lockstep/wheelhouse"))
        self.group = args["build_group"] or "default"
        self.source = args["mpi4py_mode"] == "source"
        self.task_vars = task_vars
        self.host = task_vars.get("inventory_hostname", "?")
        self.index_urls = [u for u in [args["index_url"]] + list(args["extra_index_urls"]) if u]
        self.report = {}
        self._files = None
        self._local = {}

    # -- before the plan ----------------------------------------------------------------------

    def built_overrides(self):
        """mpi4py hashes of the wheels built for this host's group (every Python of it): the
        sync lock a converged host was built from, so the plan alone can say "nothing to do"."""
        if not self.source:
            return {}
        built = wheelhouse.built_wheels(self.cache, BUILT, self.group)
        return {BUILT: ["sha256:%s" % meta["sha256"] for meta in built]} if built else {}

    def module_overrides(self):
        # The built wheel replaces the source build on the hosts: no --no-binary there.
        return {"no_binary": [n for n in self.args["no_binary"] if n != BUILT]} if self.source else {}

    # -- after the plan -----------------------------------------------------------------------

    def _tag(self, plan):
        facts = plan["wheelhouse"]["platform"]
        return "%s-%s" % (facts["abi"], facts["machine"])

    def _selection(self, plan):
        if self._files is None:
            state = plan["wheelhouse"]
            tags = wheelhouse.host_tags(state["platform"])
            pylock = wheelhouse.source_pylock(self.lock, self.cache, find_uv(), self.args["wheelhouse_find_links"],
                                              self.args["index_url"], self.args["extra_index_urls"])
            self._tags = tags
            self._files = wheelhouse.select_files(pylock, self.lock, plan["python"]["marker_environment"], tags,
                                                  prefer_sdist=[BUILT] if self.source else ())
        return self._files

    def _have_built(self, plan):
        tag = self._tag(plan)
        return next((m for m in wheelhouse.built_wheels(self.cache, BUILT, self.group) if m["tag"] == tag), None)

    def builds_here(self, plan):
        """Would this host build (so it needs a compiler)? The build lock decides for real."""
        return self.source and BUILT in self.lock.for_environment(plan["python"]["marker_environment"]) \
            and self._have_built(plan) is None

    def predict(self, plan):
        files = self._selection(plan)
        have = plan["wheelhouse"]["files"]
        return {"push": sorted(n for n, spec in files.items() if have.get(n) not in spec["sha256s"]),
                "build": bool(self.builds_here(plan))}

    def prepare(self, plan, module_args):
        """Fetch and push what the host lacks; returns ``(incoming, overrides)`` for apply."""
        files = dict(self._selection(plan))
        have = dict(plan["wheelhouse"]["files"])
        overrides = {}
        self.report = {"dir": plan["wheelhouse"]["dir"], "fetched": [], "pushed": [], "pushed_bytes": 0}
        if self.source and any(spec["name"] == BUILT for spec in files.values()):
            files = self._use_built(plan, files, have, module_args)
            overrides = self.built_overrides()
        files.update(self._sdist_build_deps(plan, files))
        start = time.time()
        incoming = self._push(files, have)
        self.report.update(files=len(files),
                           push_seconds=round(time.time() - start - self.report.get("fetch_seconds", 0), 3))
        self.selected = sorted(files)
        return incoming, overrides

    def _push(self, files, have):
        incoming = {}
        for name, spec in sorted(files.items()):
            if have.get(name) in spec["sha256s"]:
                continue
            start = time.time()
            local, digest, fetched = wheelhouse.fetch(self.cache, name, spec, self.index_urls)
            self.report["fetch_seconds"] = round(self.report.get("fetch_seconds", 0) + time.time() - start, 3)
            self._local[name] = local
            if fetched:
                self.report["fetched"].append(name)
            incoming[name] = {"src": remote.push_file(self.action, local, name), "sha256": digest}
            self.report["pushed"].append(name)
            self.report["pushed_bytes"] += os.path.getsize(local)
        return incoming

    def _sdist_build_deps(self, plan, files):
        """What uv needs to build the lock's sdist-only packages on a host with no index (an
        sdist-only pin such as antlr4-python3-runtime): their build requirements, resolved
        and hash-checked on the controller like mpi4py's."""
        extra = {}
        for name, spec in sorted(files.items()):
            if spec["kind"] != "sdist":
                continue
            local, _digest, fetched = wheelhouse.fetch(self.cache, name, spec, self.index_urls)
            if fetched:
                self.report["fetched"].append(name)
            requires = build_requires(local) + list((self.args["build_requires"] or {}).get(spec["name"]) or [])
            extra.update(self._build_deps(requires, plan)[1])
        return extra

    def _use_built(self, plan, files, have, module_args):
        sdist_name = next(n for n, spec in files.items() if spec["name"] == BUILT)
        sdist = files.pop(sdist_name)
        if sdist["kind"] != "sdist":
            raise AnsibleActionFail("mpi4py_mode=source: the lock has no mpi4py sdist to build from")
        tag = self._tag(plan)
        with wheelhouse.build_lock(self.cache, BUILT, self.group, tag):
            meta = self._have_built(plan)
            if meta is None:
                meta = self._build(plan, sdist_name, sdist, have, module_args, tag)
                self.report["built"] = {"builder": self.host, "seconds": meta["build_seconds"]}
        keys = ("filename", "sha256", "builder", "group", "tag", "sdist_sha256", "build_seconds")
        self.report["mpi4py_wheel"] = dict((k, meta[k]) for k in keys)
        files[meta["filename"]] = {"name": BUILT, "version": sdist["version"], "url": None, "path": meta["path"],
                                   "sha256s": [meta["sha256"]], "kind": "built"}
        return files

    def _build_deps(self, requires, plan):
        """Build requirements, resolved on the controller for the host's Python and pinned by hash."""
        version = plan["wheelhouse"]["platform"]["version"]
        key = hashlib.sha256(("%s|%s" % (sorted(requires), version)).encode()).hexdigest()[:16]
        directory = os.path.join(self.cache, "pylock")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "pylock.build-%s.toml" % key)
        if not os.path.isfile(path):
            source = os.path.join(directory, "build-%s.in" % key)
            with open(source, "w") as handle:
                handle.write("\n".join(requires) + "\n")
            argv = [find_uv(), "pip", "compile", "--no-config", "--quiet", "--no-progress", "--universal",
                    "--python-version", version, "--format", "pylock.toml", "-o", path, source]
            env = dict(os.environ, **credentials.uv_index_env(self.args["index_url"], self.args["extra_index_urls"]))
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise AnsibleActionFail("cannot resolve the build requirements %s: %s"
                                        % (requires, credentials.redact(done.stderr[-1500:],
                                                                        credentials.secrets_of(self.index_urls))))
        lock = load_lock(path)
        files = wheelhouse.select_files(lock.pylock, lock, plan["python"]["marker_environment"], self._tags)
        return lock, files

    def _build(self, plan, sdist_name, sdist, have, module_args, tag):
        local, digest = wheelhouse.fetch(self.cache, sdist_name, sdist, self.index_urls)[:2]
        extra = list((self.args["build_requires"] or {}).get(BUILT) or [])
        deps_lock, deps = self._build_deps(build_requires(local) + extra, plan)
        deps[sdist_name] = sdist
        incoming = self._push(deps, have)
        build = {"sdist": sdist_name, "sdist_sha256": digest, "constraints": render_requirements(deps_lock),
                 "env": dict(self.args["build_variables"].get(BUILT) or {})}
        args = dict(module_args, stage="build", wheelhouse_incoming=incoming, build=build)
        done = self.action._execute_module(module_name=MODULE, module_args=args, task_vars=self.task_vars)
        if done.get("failed") or done.get("unreachable"):
            raise AnsibleActionFail("building mpi4py on %s failed: %s" % (self.host, done.get("msg")))
        built = done["build"]
        slurp = self.action._execute_module(module_name="ansible.builtin.slurp", module_args={"src": built["wheel"]},
                                            task_vars=self.task_vars)
        if slurp.get("failed"):
            raise AnsibleActionFail("cannot collect %s from %s: %s" % (built["wheel"], self.host, slurp.get("msg")))
        data = base64.b64decode(slurp["content"])
        if hashlib.sha256(data).hexdigest() != built["sha256"]:
            raise AnsibleActionFail("the wheel collected from %s does not have the sha256 it reported" % self.host)
        have[built["filename"]] = built["sha256"]
        return wheelhouse.record_built(self.cache, BUILT, self.group, tag, built["filename"], data, {
            "builder": self.host, "sdist": sdist_name, "sdist_sha256": digest, "build_seconds": built["seconds"],
            "build_variables": build["env"], "python": plan["wheelhouse"]["platform"]})
