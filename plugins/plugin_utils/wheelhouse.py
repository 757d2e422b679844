# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the controller wheelhouse — every artifact a lock needs for the hosts'
platforms and Pythons, fetched once, sha256-checked against the lock, picked per host by wheel
tags, and the mpi4py wheels built once per (distro release, MPI, Python).

Layout of the wheelhouse directory::

    files/<filename>                      fetched artifacts (hash-checked against the lock)
    pylock/pylock.<lock sha256[:16]>.toml uv's file URLs + hashes for a requirements lock
    built/<name>/<group>/<tag>/           a wheel built on one host + provenance.json

URLs come from the lock itself (a pylock) or from ``uv pip compile <lock> --no-deps --format
pylock.toml``; ``packaging.pylock.Pylock.select`` picks the file for a host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from urllib.parse import unquote, urlsplit

from ansible.module_utils.urls import open_url

from ansible_collections.lockstep.cluster.plugins.plugin_utils.deps import (
    Pylock,
    PylockSelectError,
    PylockValidationError,
    canonicalize_name,
    compatible_tags,
    cpython_tags,
    generic_tags,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import sha256_file
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_runner import local_version_pins
from ansible_collections.lockstep.cluster.plugins.plugin_utils import credentials

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
        env = dict(os.environ, **credentials.uv_index_env(index_url, extra_index_urls))
        secrets = credentials.secrets_of([index_url] + list(extra_index_urls or ()))
        try:
            done = subprocess.run(argv + [lock.path], env=env, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WheelhouseError("cannot run %s to list the files of %s: %s" % (uv, lock.path, exc))
        if done.returncode != 0:
            raise WheelhouseError("uv could not list the files of %s (%s): %s"
                                  % (lock.path, _listing_hint(done.stderr),
                                     credentials.redact(done.stderr.strip()[-1500:], secrets)))
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
    header = credentials.auth_header(url, index_urls)
    response = open_url(credentials.strip_userinfo(url), headers={"Authorization": header} if header else None,
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
        shown = credentials.redact(credentials.strip_userinfo(source), credentials.secrets_of(index_urls))
        try:
            if spec.get("path") or urlsplit(spec["url"]).scheme == "file":
                shutil.copyfile(spec.get("path") or unquote(urlsplit(spec["url"]).path), part)
            else:
                _download(spec["url"], part, index_urls, timeout)
            digest = sha256_file(part)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # urllib, ssl and ansible's url errors
            with contextlib.suppress(OSError):
                os.unlink(part)
            reason = credentials.redact(str(getattr(exc, "reason", None) or exc), credentials.secrets_of(index_urls))
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
