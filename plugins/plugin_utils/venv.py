# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's part of a venv sync: the task result (package changes, tampered files, the
``--diff`` text), and with a wheelhouse the controller wheelhouse itself — every artifact a lock
needs for the hosts' platforms and Pythons, fetched once, sha256-checked against the lock,
picked per host by wheel tags, pushed only where a host lacks it — and the mpi4py wheel built
once per (distro release, MPI, Python) on one host for every other host of the combination.

Layout of the wheelhouse directory::

    files/<filename>                      fetched artifacts (hash-checked against the lock)
    pylock/pylock.<lock sha256[:16]>.toml uv's file URLs + hashes for a requirements lock
    built/<name>/<group>/<tag>/           a wheel built on one host + provenance.json

URLs come from the lock itself (a pylock) or from ``uv pip compile <lock> --no-deps --format
pylock.toml``; ``packaging.pylock.Pylock.select`` picks the file for a host.

Trust in a built wheel: its hash is not in the lock. The sdist it was built from is (checked on
the controller and again on the builder), the build requirements are pinned by hash (``uv build
--build-constraints --require-hashes``), the controller records the wheel's sha256 with its
provenance (sdist sha256, builder host, combination, build time) next to it, and the hosts get a
requirements rendering of the lock whose mpi4py line carries exactly the recorded hashes, so uv
installs that wheel or nothing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from urllib.parse import unquote, urlsplit

from ansible.errors import AnsibleActionFail
from ansible.module_utils.urls import open_url

from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import sha256_file
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import local_version_pins
from ansible_collections.lockstep.cluster.plugins.plugin_utils import remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import (
    canonicalize_name,
    check_policy,
    compatible_tags,
    cpython_tags,
    format_violations,
    generic_tags,
    load_lock,
    Pylock,
    PylockSelectError,
    PylockValidationError,
    read_lock,
    render_requirements,
)


_PASSED = ("action", "venv", "previous", "key", "drift", "python", "commands", "built", "pruned", "sync_changes",
           "missing_packages", "msg", "reclaimed", "warnings", "repairs", "cache_check")


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


def render_diff(before, after, before_env, after_env, before_path, after_path, tampered=()):
    """Ansible ``diff`` dict: package set, edited files and MPI environment, before and after."""
    def block(path, pkgs, env, edits):
        lines = ["# venv: %s" % (path or "(none)")]
        lines.extend("%s==%s" % (name, pkgs[name]) for name in sorted(pkgs))
        for change in edits:
            who = "%s==%s" % (change["name"], change["version"]) if change.get("version") else change["name"]
            lines.append("# tampered %s: %s" % (who, " ".join(change["files"])))
        if env:
            lines.append("# lockstep.env")
            lines.extend("%s=%s" % (key, env[key]) for key in sorted(env))
        return "\n".join(lines) + "\n"

    return {
        "before_header": before_path or "(no venv)",
        "after_header": after_path or "(no venv)",
        "before": block(before_path, before, before_env, tampered),
        "after": block(after_path, after, after_env, ()),
    }


def outcome(res, want_diff, predicted):
    """The task result from the module's plan (``predicted``) or apply result."""
    out = dict((key, res[key]) for key in _PASSED if key in res)
    before = res.get("before") or {}
    after = res.get("after", before) or {}
    tampered = res.get("tampered") or []
    changed = res.get("action", "none") != "none"
    out["changed"] = changed or bool(res.get("repairs"))
    out["changes"] = (package_diff(before, after) + list(tampered)) if changed else []
    if want_diff and changed:
        out["diff"] = render_diff(before, after, res.get("before_env") or {}, res.get("after_env") or {},
                                  res.get("previous"), res.get("venv"), tampered)
    if "msg" not in out:
        verb = "would" if predicted else "did"
        out["msg"] = {"none": "the venv is the lock", "flip": "%s flip to a kept venv" % verb,
                      "build": "%s build a new venv" % verb}.get(res.get("action"), res.get("action"))
        if res.get("repairs"):
            out["msg"] += "; " + "; ".join(res["repairs"])
    return out


__all__ = ["WheelhouseError", "built_wheels", "fetch", "host_tags", "record_built", "select_files", "source_pylock"]

_CHUNK = 1 << 20
_SAFE_RE = re.compile(r"[^A-Za-z0-9._+-]+")


class WheelhouseError(Exception):
    """One message; never carries a credential (callers redact uv's output too)."""


def _linux_platforms(machine, glibc):
    """Platform tags of a glibc Linux host, best first. packaging enumerates these only for the
    interpreter it runs in (it reads the controller's own glibc), so the same rule is spelled
    out here for a remote one: manylinux_2_N down to 2_5 (x86) or 2_17, the legacy aliases,
    then linux_<arch> (a locally built wheel)."""
    arch = machine.replace("-", "_").replace(".", "_").replace(" ", "_")
    out = []
    if glibc:
        major, minor = (int(part) for part in glibc.split(".")[:2])
        floor = 5 if arch in ("x86_64", "i686") else 17
        for current in range(minor, floor - 1, -1):
            out.append("manylinux_%d_%d_%s" % (major, current, arch))
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(current) if major == 2 else None
            if legacy and (legacy == "manylinux2014" or arch in ("x86_64", "i686")):
                out.append("%s_%s" % (legacy, arch))
    out.append("linux_%s" % arch)
    return out


def host_tags(facts):
    """Wheel tags a host's Python accepts, most preferred first (``packaging.tags``).

    ``facts``: what the host module reports (``implementation``, ``version`` "3.11", ``abi``
    "cp311", ``machine``, ``glibc`` "2.36" or None, ``system``).
    """
    version = tuple(int(part) for part in facts["version"].split(".")[:2])
    if facts.get("system", "linux").lower() != "linux":
        raise WheelhouseError("the wheelhouse serves Linux hosts; this one is %s" % facts.get("system"))
    platforms = _linux_platforms(facts["machine"], facts.get("glibc"))
    if facts.get("implementation", "cpython") == "cpython":
        tags = list(cpython_tags(version, abis=[facts["abi"]], platforms=platforms))
        interpreter = "cp%d%d" % version
    else:
        interpreter = facts.get("interpreter") or facts["abi"]
        tags = list(generic_tags(interpreter, [facts["abi"]], platforms))
    return tags + list(compatible_tags(version, interpreter, platforms))


def _compile_flags(lock):
    """Always universal: a lock resolved for one platform (``--python-platform
    x86_64-manylinux_2_28``) would list only that platform's wheels, and a host with a newer
    glibc could then only get an sdist (pydftracer ships manylinux_2_31 wheels only). The
    lock's Python floor is kept; the pins are the lock's (``--no-deps``)."""
    flags = ["--universal"]
    version = lock.header_option("--python-version")
    if version:
        flags += ["--python-version", version]
    return flags


def _listing_hint(stderr):
    """Why uv could not list a lock's files: a local-version pin (torch==X+cpu) needs a
    source besides the index; anything else is most likely an unreachable index."""
    pins = local_version_pins(stderr)
    if pins:
        return ("%s is a local-version build the index does not serve: name a controller directory or URL "
                "holding its file in venv_wheelhouse_find_links" % ", ".join(pins))
    return "index or find-links unreachable?"


def source_pylock(lock, directory, uv, find_links=(), index_url=None, extra_index_urls=(), timeout=600):
    """A ``Pylock`` with every file URL and hash of ``lock``: the lock itself when it is a
    pylock, else uv's view of the pinned set (cached per lock sha256)."""
    if lock.pylock is not None:
        return lock.pylock
    cache = os.path.join(directory, "pylock")
    os.makedirs(cache, exist_ok=True)
    recipe = json.dumps([lock.sha256, _compile_flags(lock), list(find_links or ())])
    path = os.path.join(cache, "pylock.%s.toml" % hashlib.sha256(recipe.encode("utf-8")).hexdigest()[:16])
    if not os.path.isfile(path):
        part = os.path.join(cache, "pylock.part%d.toml" % os.getpid())
        argv = [uv, "pip", "compile", "--no-config", "--no-deps", "--quiet", "--no-progress", "--format", "pylock.toml",
                "--no-header", "-o", part] + _compile_flags(lock)
        for link in find_links or ():
            argv += ["--find-links", link]
        env = dict(os.environ, **remote.uv_index_env(index_url, extra_index_urls))
        secrets = remote.secrets_of([index_url] + list(extra_index_urls or ()))
        try:
            done = subprocess.run(argv + [lock.path], env=env, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WheelhouseError("cannot run %s to list the files of %s: %s" % (uv, lock.path, exc))
        if done.returncode != 0:
            raise WheelhouseError("uv could not list the files of %s (%s): %s"
                                  % (lock.path, _listing_hint(done.stderr),
                                     remote.redact(done.stderr.strip()[-1500:], secrets)))
        os.replace(part, path)
    with open(path, "rb") as handle:
        try:
            return Pylock.from_dict(tomllib.load(handle))
        except (PylockValidationError, tomllib.TOMLDecodeError) as exc:
            raise WheelhouseError("uv's file list %s is not a valid pylock: %s" % (path, exc))


def _filename(dist):
    if dist.name:
        return dist.name
    where = dist.url or str(dist.path)
    return unquote(urlsplit(where).path.rsplit("/", 1)[-1]) if dist.url else os.path.basename(where)


def select_files(pylock, lock, environment, tags, prefer_sdist=()):
    """``{filename: {name, version, url, path, sha256s, kind}}`` a host needs: one file per
    package (``Pylock.select``: markers for the host, best wheel by tag, else the sdist).

    ``sha256s`` are the lock's hashes for the package; a file must have one of them.
    """
    entries = lock.for_environment(environment)
    prefer = set(canonicalize_name(n) for n in prefer_sdist)
    try:
        chosen = list(pylock.select(environment=environment, tags=tags,
                                    prefer_sdist_predicate=lambda name: canonicalize_name(name) in prefer))
    except PylockSelectError as exc:
        raise WheelhouseError("%s has no file for this host: %s" % (lock.path, exc))
    out = {}
    for package, dist in chosen:
        name = canonicalize_name(package.name)
        entry = entries.get(name)
        if entry is None:
            continue  # not in the lock for this host (uv's view is the same set)
        if not (dist.url or dist.path) or not getattr(dist, "hashes", None):
            raise WheelhouseError("%s==%s: the selected file has no URL/path or hash" % (name, package.version))
        sha256s = set(h.split(":", 1)[1] for h in entry.hashes if h.startswith("sha256:"))
        if dist.hashes.get("sha256") not in sha256s:
            raise WheelhouseError("%s==%s: %s has sha256 %s, which %s does not pin"
                                  % (name, package.version, _filename(dist), dist.hashes.get("sha256"), lock.path))
        path = dist.path
        if path is not None and not os.path.isabs(str(path)) and lock.pylock is not None:
            path = os.path.join(os.path.dirname(os.path.abspath(lock.path)), str(path))
        out[_filename(dist)] = {"name": name, "version": str(package.version), "url": dist.url,
                                "path": str(path) if path else None, "sha256s": sorted(sha256s),
                                "kind": "sdist" if dist is package.sdist else "wheel"}
    missing = sorted(set(entries) - set(f["name"] for f in out.values()))
    if missing:
        raise WheelhouseError("no file of %s for this host: %s" % (lock.path, ", ".join(missing)))
    return out


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(url, part, index_urls, timeout):
    header = remote.auth_header(url, index_urls)
    response = open_url(remote.strip_userinfo(url), headers={"Authorization": header} if header else None,
                        timeout=timeout, http_agent="lockstep.cluster-wheelhouse")
    try:
        with open(part, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    finally:
        response.close()


def fetch(directory, filename, spec, index_urls=(), timeout=120):
    """The controller copy of ``filename`` (downloaded or copied once, sha256-checked);
    returns ``(path, sha256, fetched)``. Concurrent hosts wait for one download."""
    files = os.path.join(directory, "files")
    os.makedirs(files, exist_ok=True)
    if "/" in filename or filename.startswith("."):
        raise WheelhouseError("refusing the file name %r" % filename)
    target = os.path.join(files, filename)
    with _locked(os.path.join(files, ".%s.lock" % filename)):
        if os.path.isfile(target):
            digest = sha256_file(target)
            if digest in spec["sha256s"]:
                return target, digest, False
            os.unlink(target)  # not what the lock pins (corrupt or replaced): fetch again
        part = "%s.part%d" % (target, os.getpid())
        source = spec.get("path") or spec["url"]
        shown = remote.redact(remote.strip_userinfo(source), remote.secrets_of(index_urls))
        try:
            if spec.get("path") or urlsplit(spec["url"]).scheme == "file":
                shutil.copyfile(spec.get("path") or unquote(urlsplit(spec["url"]).path), part)
            else:
                _download(spec["url"], part, index_urls, timeout)
            digest = sha256_file(part)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # urllib, ssl and ansible's url errors
            with contextlib.suppress(OSError):
                os.unlink(part)
            reason = remote.redact(str(getattr(exc, "reason", None) or exc), remote.secrets_of(index_urls))
            raise WheelhouseError("cannot fetch %s for %s==%s: %s" % (shown, spec["name"], spec["version"], reason))
        if digest not in spec["sha256s"]:
            os.unlink(part)
            raise WheelhouseError("%s from %s has sha256 %s, not one the lock pins for %s==%s: refused"
                                  % (filename, shown, digest, spec["name"], spec["version"]))
        os.replace(part, target)
        return target, digest, True


def _group_dir(directory, name, group):
    return os.path.join(directory, "built", canonicalize_name(name), _SAFE_RE.sub("-", group))


def built_wheels(directory, name, group):
    """Provenance of every wheel of ``name`` built for ``group`` (distro release + MPI), one per
    Python tag, whose file is still there with the recorded sha256 (checked by size+mtime)."""
    base = _group_dir(directory, name, group)
    out = []
    if not os.path.isdir(base):
        return out
    for tag in sorted(os.listdir(base)):
        meta_path = os.path.join(base, tag, "provenance.json")
        try:
            with open(meta_path) as handle:
                meta = json.load(handle)
            st = os.stat(os.path.join(base, tag, meta["filename"]))
        except (OSError, ValueError, KeyError):
            continue
        if (st.st_size, int(st.st_mtime)) != (meta.get("size"), meta.get("mtime")):
            continue
        meta["path"] = os.path.join(base, tag, meta["filename"])
        out.append(meta)
    return out


def build_lock(directory, name, group, tag):
    """The file lock one (group, Python) build holds: other hosts of the combination wait."""
    base = os.path.join(_group_dir(directory, name, group), _SAFE_RE.sub("-", tag))
    os.makedirs(base, exist_ok=True)
    return _locked(os.path.join(base, ".build.lock"))


def record_built(directory, name, group, tag, filename, data, provenance):
    """Store a wheel a host built (``data``: its bytes) with its provenance; returns the meta."""
    if "/" in filename or not filename.endswith(".whl"):
        raise WheelhouseError("refusing the built file name %r" % filename)
    base = os.path.join(_group_dir(directory, name, group), _SAFE_RE.sub("-", tag))
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, filename)
    with open(path + ".part", "wb") as handle:
        handle.write(data)
    os.replace(path + ".part", path)
    st = os.stat(path)
    meta = dict(provenance, filename=filename, sha256=hashlib.sha256(data).hexdigest(), size=st.st_size,
                mtime=int(st.st_mtime), group=group, tag=tag, recorded=time.time())
    with open(os.path.join(base, "provenance.json.part"), "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
    os.replace(os.path.join(base, "provenance.json.part"), os.path.join(base, "provenance.json"))
    meta["path"] = path
    return meta


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
        built = built_wheels(self.cache, BUILT, self.group)
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
            tags = host_tags(state["platform"])
            pylock = source_pylock(self.lock, self.cache, find_uv(), self.args["wheelhouse_find_links"],
                                   self.args["index_url"], self.args["extra_index_urls"])
            self._tags = tags
            self._files = select_files(pylock, self.lock, plan["python"]["marker_environment"], tags,
                                       prefer_sdist=[BUILT] if self.source else ())
        return self._files

    def _have_built(self, plan):
        tag = self._tag(plan)
        return next((m for m in built_wheels(self.cache, BUILT, self.group) if m["tag"] == tag), None)

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
            local, digest, fetched = fetch(self.cache, name, spec, self.index_urls)
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
            local, _digest, fetched = fetch(self.cache, name, spec, self.index_urls)
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
        with build_lock(self.cache, BUILT, self.group, tag):
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
            env = dict(os.environ, **remote.uv_index_env(self.args["index_url"], self.args["extra_index_urls"]))
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise AnsibleActionFail("cannot resolve the build requirements %s: %s"
                                        % (requires, remote.redact(done.stderr[-1500:],
                                                                   remote.secrets_of(self.index_urls))))
        lock = load_lock(path)
        files = select_files(lock.pylock, lock, plan["python"]["marker_environment"], self._tags)
        return lock, files

    def _build(self, plan, sdist_name, sdist, have, module_args, tag):
        local, digest = fetch(self.cache, sdist_name, sdist, self.index_urls)[:2]
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
        return record_built(self.cache, BUILT, self.group, tag, built["filename"], data, {
            "builder": self.host, "sdist": sdist_name, "sdist_sha256": digest, "build_seconds": built["seconds"],
            "build_variables": build["env"], "python": plan["wheelhouse"]["platform"]})


def sync_lock(lock, overrides=None):
    """``(text or None, sha256)`` the host syncs: the lock file itself, or its requirements
    rendering (always for a pylock: one host code path, no index URL needed on the host; and
    whenever a built wheel's hash replaces the lock's)."""
    if lock.format == "requirements" and not overrides:
        return None, lock.sha256
    text = render_requirements(lock, overrides, title=os.path.basename(lock.path))
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare(action, args, task_vars):
    """The controller's part before any host is asked, shared by the venv role's action and the
    probe (so both ask the host the same thing): the lock found, parsed and policed, the
    wheelhouse's choices, and the sha256 of what the host will sync."""
    path, lock = read_lock(action, args["lockfile"])
    violations = check_policy(lock, cpu_only=args["cpu_only"])
    if violations:
        raise AnsibleActionFail(format_violations(violations))
    airgap = Airgap(action, args, lock, task_vars) if args["wheelhouse"] else None
    text, sha = sync_lock(lock, airgap.built_overrides() if airgap else {})
    overrides = {"lockfile": path, "lockfile_sha256": sha}
    if airgap:
        overrides.update(airgap.module_overrides())
    return {"path": path, "lock": lock, "airgap": airgap, "text": text, "module_overrides": overrides}
