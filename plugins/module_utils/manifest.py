# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A venv's manifest: every entry of the venv tree, owned by the tool (stdlib only).

Written when a venv is built, before it goes live, beside it in the store
(``<store>/<venv>.manifest.json``: outside the venv, root's, not writable by whoever can write
the venv). The validator and the sync's converged check compare the live tree with it: new,
missing and changed entries anywhere (site-packages, ``bin/``, ``.pth``, ``__pycache__``).

A wheel's RECORD is the wheel's own claim, checked once at build time (``record_mismatches``);
after that only the manifest is trusted.

Fast path: a file is re-hashed unless its inode, size, mode, mtime AND ctime are exactly as
recorded. ctime cannot be set back by a process that can write the venv (only a clock change
can), so an edit always moves it, ``touch -r`` included; a RECORD's time plays no part.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import csv
import errno
import hashlib
import importlib.util
import json
import multiprocessing
import os
import stat
import time

from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import canonical_name, guess_site_packages
from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import MANIFEST_SUFFIX

# 2: each entry's owner and group (uid, gid).
FORMAT = 2
# Files read by each forked worker; below PARALLEL_MIN a fork costs more than it saves.
PARALLEL_MIN = 2000
WORKERS = min(8, os.cpu_count() or 1)
# A report names at most this many entries (a dropped tree could add thousands).
MAX_FINDINGS = 500
_CHUNK = 1 << 20
_KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "link"))
# Stands for the venv's own real path in a portable hash (script shebangs, activate).
PLACEHOLDER = b"<venv>"


class ManifestError(Exception):
    """The manifest cannot be used (missing, unreadable, another format), with the reason."""


def location(venv):
    """Where the manifest of ``venv`` (any path to it) lives: beside its real directory."""
    return os.path.realpath(venv).rstrip(os.sep) + MANIFEST_SUFFIX


def _kind(mode):
    for test, name in _KINDS:
        if test(mode):
            return name
    return "other"


def walk(root):
    """Yield ``(relative path, os.stat_result)`` for every entry under ``root``, one lstat each
    (symlinks not followed); a subdirectory that vanishes or cannot be read is passed over."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except (IOError, OSError):
            if not rel:
                raise
            continue  # gone or unreadable: its recorded entries show up as missing
        with entries:
            for entry in entries:
                path = rel + "/" + entry.name if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
                yield path, st


def scan(root):
    """``{relative path: os.stat_result}`` of every entry under ``root`` (symlinks not followed)."""
    return dict(walk(root))


def digest_file(path, needle=None):
    """hex sha256 of a file, or None when it cannot be read. With ``needle`` (bytes):
    ``(sha256, portable)``, where ``portable`` is the sha256 of the content with every
    ``needle`` replaced by PLACEHOLDER, or None when the file does not contain it."""
    digest = hashlib.sha256()
    found, tail = False, b""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (IOError, OSError):
        return (None, None) if needle else None
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            if needle and not found:
                found = needle in chunk or needle in tail + chunk[:len(needle)]
                tail = chunk[-len(needle):]
        portable = None
        if found:
            # Rare (scripts, activate): read it again whole, it is small.
            os.lseek(fd, 0, os.SEEK_SET)
            data = b"".join(iter(lambda: os.read(fd, _CHUNK), b""))
            portable = hashlib.sha256(data.replace(needle, PLACEHOLDER)).hexdigest()
    except (IOError, OSError):
        return (None, None) if needle else None
    finally:
        os.close(fd)
    return (digest.hexdigest(), portable) if needle else digest.hexdigest()


def _digest_batch(job):
    paths, needle = job
    return [digest_file(p, needle) for p in paths]


def digest_many(paths, workers=WORKERS, needle=None):
    """sha256 of each path (with ``needle``: ``(sha256, portable)``, see digest_file), in
    order; forked workers for big trees (threads would serialize on the GIL for the many
    small files of a venv)."""
    if workers <= 1 or len(paths) < PARALLEL_MIN:
        return _digest_batch((paths, needle))
    size = -(-len(paths) // (workers * 4))  # a few batches per worker evens out big files
    batches = [(paths[i:i + size], needle) for i in range(0, len(paths), size)]
    try:
        pool = multiprocessing.get_context("fork").Pool(workers)
    except (OSError, ValueError):
        return _digest_batch((paths, needle))
    try:
        return [d for batch in pool.map(_digest_batch, batches) for d in batch]
    finally:
        pool.close()
        pool.join()


def _row(st, content, owner, portable=None):
    """[kind, mode, size, sha256 | link target | None, ino, mtime_ns, ctime_ns, distribution, uid, gid,
    portable sha256 | None] (``portable``: see digest_file; None when the file does not name the venv)"""
    kind = _kind(st.st_mode)
    return [kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0, content,
            st.st_ino, st.st_mtime_ns, st.st_ctime_ns, owner, st.st_uid, st.st_gid, portable]


def is_bytecode(rel):
    """A ``__pycache__`` directory or a file in one: a cache Python can always do without."""
    parts = rel.split("/")
    return parts[-1] == "__pycache__" or (len(parts) > 1 and parts[-2] == "__pycache__")


def _owner_map(root, site_packages):
    """venv-relative path -> canonical name of the distribution whose RECORD lists it. A
    directory inside site-packages belongs to the one distribution that owns files under it
    (a package dir, a dist-info dir), to none when several do."""
    owned, dirs = {}, {}
    sites = [os.path.relpath(os.path.realpath(site), root) for site in site_packages]
    for dist_dir, rel, _algo, _value in record_rows(site_packages, root):
        if rel is None or rel in owned:
            continue
        owner = owned[rel] = canonical_name(dist_of(dist_dir)[0])
        site = next((s for s in sites if rel.startswith(s + "/")), None)
        parent = os.path.dirname(rel)
        while site and parent != site:
            dirs[parent] = owner if dirs.get(parent, owner) == owner else None
            parent = os.path.dirname(parent)
    for directory, owner in dirs.items():
        if owner:
            owned.setdefault(directory, owner)
    return owned


def build(root, site_packages=None, workers=WORKERS, clock=time.time):
    """The manifest of the tree at ``root``: every file hashed, every entry's metadata and
    the distribution it belongs to (from RECORD, as the wheels claim it at build time)."""
    stats = scan(root)
    files = sorted(p for p, st in stats.items() if stat.S_ISREG(st.st_mode))
    needle = os.fsencode(root)
    digests = dict(zip(files, digest_many([os.path.join(root, p) for p in files], workers, needle)))
    owned = _owner_map(root, guess_site_packages(root) if site_packages is None else site_packages)
    entries = {}
    for rel, st in stats.items():
        content = portable = None
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(os.path.join(root, rel))
        elif stat.S_ISREG(st.st_mode):
            content, portable = digests[rel]
            if content is None:
                raise ManifestError("cannot read %s while writing the manifest" % os.path.join(root, rel))
        owner = owned.get(rel)
        if owner is None and rel.endswith(".pyc") and is_bytecode(rel):
            try:
                owner = owned.get(os.path.relpath(importlib.util.source_from_cache(os.path.join(root, rel)), root))
            except ValueError:
                owner = None
        entries[rel] = _row(st, content, owner, portable)
    return {"format": FORMAT, "root": root, "created": clock(), "entries": entries}


def per_host(rel):
    """Entries whose content is legitimately per host, left out of content_digest:
    ``lockstep.json`` (build time, key, paths), ``pyvenv.cfg`` (the base interpreter's
    directory and patch level: compared by the gate as the Python version) and each wheel's
    RECORD (uv rewrites the rows of generated scripts, whose own content is digested) and
    ``uv_cache.json`` (uv's install time of a wheel from a local file or find-links)."""
    parts = rel.split("/")
    if rel in ("lockstep.json", "pyvenv.cfg"):
        return True
    return parts[-1] in ("RECORD", "direct_url.json", "uv_cache.json") and len(parts) > 1 \
        and parts[-2].endswith(".dist-info")


def _material(root, rel, row):
    """What one entry contributes to a content digest: its content, the venv's own path in it
    replaced by PLACEHOLDER; a symlink out of the venv (``bin/python``: the base
    interpreter, per host) only as a link."""
    kind, content = row[0], row[3]
    if kind == "file":
        content = (row[10] if len(row) > 10 and row[10] else content)
    elif kind == "link":
        target = os.path.normpath(os.path.join(root, os.path.dirname(rel), content))
        if not (target == root or target.startswith(root + "/")):
            content = "(outside the venv)"
        else:
            content = content.replace(root, PLACEHOLDER.decode())
    return "%s\0%s\0%s\n" % (rel, kind, content if kind != "dir" else "")


def content_digest(manifest, bytecode=True):
    """The venv's bytes as two hosts with the same lock must have them: sha256 over every
    entry's path, kind and content (see per_host and _material), and the same per owning
    distribution (``by_package``; files of none under ``(venv)``) so a differing host can be
    narrowed to packages. ``bytecode`` False leaves ``__pycache__`` out (compiled per venv).
    Reads no file: the manifest holds the hashes (verify() says whether the tree still does)."""
    root, entries = manifest["root"], manifest["entries"]
    total, packages, counted = hashlib.sha256(), {}, 0
    for rel in sorted(entries):
        row = entries[rel]
        if per_host(rel) or (not bytecode and is_bytecode(rel)):
            continue
        line = _material(root, rel, row).encode("utf-8", "surrogateescape")
        total.update(line)
        packages.setdefault(row[7] or "(venv)", hashlib.sha256()).update(line)
        counted += 1
    return {"sha256": total.hexdigest(), "entries": counted,
            "by_package": dict((name, digest.hexdigest()) for name, digest in sorted(packages.items()))}


def package_digests(manifest):
    """``{"name==version": sha256}`` of each installed distribution's files as they came from
    its wheel (content_digest without bytecode, which the build compiles itself): what two
    builds from the same wheel on one host must share, wherever the venv lives."""
    versions = {}
    for rel, row in manifest["entries"].items():
        if row[0] == "dir" and rel.endswith(".dist-info") and "/site-packages/" in "/" + rel:
            name, version = dist_of(rel)
            versions[canonical_name(name)] = version
    digests = content_digest(manifest, bytecode=False)["by_package"]
    return dict(("%s==%s" % (name, versions[name]), digest) for name, digest in digests.items() if name in versions)


def write(path, manifest):
    """Atomically, root's 0644 (readable by the validator run as any user)."""
    store_fs.write_atomic(path, json.dumps(manifest, separators=(",", ":"), sort_keys=True), 0o644)


def load(path):
    """The manifest at ``path``; ManifestError naming why it cannot be used."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (IOError, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ENOENT:
            raise ManifestError("no manifest at %s" % path)
        raise ManifestError("cannot read the manifest %s: %s" % (path, exc))
    except ValueError as exc:
        raise ManifestError("the manifest %s is not valid JSON: %s" % (path, exc))
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] < FORMAT:
        raise ManifestError("the manifest %s is of format %d, written by an older lockstep.cluster (it does not "
                            "record owners): re-run site.yml to build a venv sealed with format %d"
                            % (path, data["format"], FORMAT))
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise ManifestError("the manifest %s is not a lockstep manifest of format %d" % (path, FORMAT))
    return data


def unsafe_entries(manifest):
    """Entries sealed writable by group or others (never, since builds harden the tree): an
    entry anyone could change between two checks. ``[venv-relative path]``."""
    return sorted(rel for rel, row in manifest["entries"].items() if row[0] != "link" and row[1] & 0o022)


def verify(root, manifest, rehash_all=False, workers=WORKERS):
    """Compare the tree at ``root`` with ``manifest``.

    Returns ``{"findings": [...], "files": n, "rehashed": n, "truncated": n, "bytecode_missing": n}``;
    each finding is ``{"path", "reason"}`` (new | missing | modified | type | mode | owner (uid:gid) |
    link | unreadable | moved), with ``owner`` when the manifest knows the file's distribution. Missing
    bytecode is counted, not reported: without it Python compiles the verified source.

    One walk, one lstat per entry. An entry whose inode, ctime, mtime and size are as recorded
    is unchanged: a write, chmod, rename over it or retargeted link all move ctime or give a
    new inode. Anything else is compared in full (files re-hashed, in forked workers).
    """
    recorded = manifest["entries"]
    findings, jobs, seen = [], [], set()
    files = 0
    if manifest.get("root") and os.path.realpath(root) != manifest["root"]:
        # Another venv's tree and manifest renamed into place (a store others could write).
        findings.append({"path": ".", "reason": "moved", "expected": manifest["root"],
                         "actual": os.path.realpath(root)})
    for path, st in walk(root):
        row = recorded.get(path)
        if row is None:
            findings.append({"path": path, "reason": "new", "type": _kind(st.st_mode)})
            continue
        seen.add(path)
        is_file = row[0] == "file"
        files += is_file
        if st.st_ino == row[4] and st.st_ctime_ns == row[6] and st.st_mtime_ns == row[5] \
                and (not is_file or st.st_size == row[2]):
            if rehash_all and is_file:
                jobs.append((path, row))
            continue
        _compare(root, path, st, row, findings, jobs)
    bytecode_missing = 0
    if len(seen) != len(recorded):
        for rel in sorted(set(recorded) - seen):
            if is_bytecode(rel):
                bytecode_missing += 1
            else:
                findings.append(_finding(rel, "missing", recorded[rel]))
    digests = digest_many([os.path.join(root, rel) for rel, _row in jobs], workers)
    for (rel, row), actual in zip(jobs, digests):
        if actual is None:
            findings.append(_finding(rel, "unreadable", row))
        elif actual != row[3]:
            findings.append(_finding(rel, "modified", row, expected="sha256:" + row[3], actual="sha256:" + actual))
    findings.sort(key=lambda f: f["path"])
    return {"findings": findings[:MAX_FINDINGS], "truncated": max(0, len(findings) - MAX_FINDINGS),
            "files": files, "rehashed": len(jobs), "bytecode_missing": bytecode_missing}


def _compare(root, rel, st, row, findings, jobs):
    """The slow path for an entry whose inode or times moved: type, mode, link target, size;
    a file of the same size is queued for re-hashing."""
    kind, mode, size, content = row[:4]
    actual_kind = _kind(st.st_mode)
    if actual_kind != kind:
        findings.append(_finding(rel, "type", row, expected=kind, actual=actual_kind))
        return
    if stat.S_IMODE(st.st_mode) != mode:
        findings.append(_finding(rel, "mode", row, expected="%04o" % mode, actual="%04o" % stat.S_IMODE(st.st_mode)))
    if (st.st_uid, st.st_gid) != tuple(row[8:10]):
        # chown moves ctime: installed files handed to the benchmark user are tampering.
        findings.append(_finding(rel, "owner", row, expected="%d:%d" % tuple(row[8:10]),
                                 actual="%d:%d" % (st.st_uid, st.st_gid)))
    if kind == "link":
        target = os.readlink(os.path.join(root, rel))
        if target != content:
            findings.append(_finding(rel, "link", row, expected=content, actual=target))
    elif kind == "file":
        if st.st_size != size:
            findings.append(_finding(rel, "modified", row, size={"expected": size, "actual": st.st_size}))
        else:
            jobs.append((rel, row))


def _finding(rel, reason, row, **details):
    finding = dict(details, path=rel, reason=reason)
    if len(row) > 7 and row[7]:
        finding["owner"] = row[7]
    return finding


def _b64(digest_hex):
    return base64.urlsafe_b64encode(bytes.fromhex(digest_hex)).decode("ascii").rstrip("=")


def record_rows(site_packages, root):
    """Every RECORD row under ``site_packages`` as ``(dist dir, venv-relative path, algorithm,
    b64 digest)`` (algorithm None for rows without a hash, path None for a dist-info without
    a RECORD); RECORD is parsed as text: cheap and exact."""
    rows = []
    for site in [os.path.realpath(s) for s in site_packages]:
        try:
            names = sorted(os.listdir(site))
        except (IOError, OSError):
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            try:
                with open(os.path.join(site, name, "RECORD")) as handle:
                    text = handle.read()
            except (IOError, OSError):
                rows.append((os.path.join(site, name), None, None, None))
                continue
            for row in csv.reader(text.splitlines()):
                if not row or not row[0]:
                    continue
                algo, sep, value = (row[1] if len(row) > 1 else "").partition("=")
                rel = os.path.relpath(os.path.normpath(os.path.join(site, row[0])), root)
                rows.append((os.path.join(site, name), rel, algo if sep else None, value))
    return rows


def record_mismatches(manifest, site_packages):
    """Build time: files whose content differs from what their wheel's RECORD claims (or that
    RECORD lists and the venv lacks), from the manifest's hashes: ``[venv-relative path]``.
    A dist-info without a RECORD is a mismatch too (nothing could be verified)."""
    root, entries = manifest["root"], manifest["entries"]
    bad = []
    for dist_dir, rel, algo, value in record_rows(site_packages, root):
        if rel is None:
            bad.append(os.path.relpath(os.path.join(dist_dir, "RECORD"), root))
            continue
        if algo is None:
            continue
        row = entries.get(rel)
        if row is None or row[0] != "file":
            bad.append(rel)
        elif algo == "sha256":
            if _b64(row[3]) != value:
                bad.append(rel)
        elif algo in hashlib.algorithms_guaranteed:
            digest = hashlib.new(algo)
            with open(os.path.join(root, rel), "rb") as handle:
                digest.update(handle.read())
            if base64.urlsafe_b64encode(digest.digest()).decode("ascii").rstrip("=") != value:
                bad.append(rel)
        else:
            bad.append(rel)  # an algorithm nobody can check is no claim at all
    return sorted(set(bad))


def dist_of(dist_dir):
    """``.../tqdm-4.70.1.dist-info`` -> ("tqdm", "4.70.1") (names are escaped with ``_``)."""
    name, _sep, version = os.path.basename(dist_dir)[:-len(".dist-info")].rpartition("-")
    return name, version


def attribute(findings, root, site_packages):
    """Give each finding its ``owner`` (canonical distribution name: the manifest's, else the
    RECORD that lists it now, else for bytecode the owner of its source) and, under a
    site-packages dir, ``record_path`` (the path as RECORD writes it). Reads RECORDs only
    when a finding needs it."""
    sites = [os.path.realpath(site) for site in site_packages]
    unknown = [f for f in findings if not f.get("owner")]
    owned = _owner_map(root, sites) if unknown else {}
    for finding in unknown:
        rel = finding["path"]
        owner = owned.get(rel)
        if owner is None and rel.endswith(".pyc") and is_bytecode(rel):
            try:
                owner = owned.get(os.path.relpath(importlib.util.source_from_cache(os.path.join(root, rel)), root))
            except ValueError:
                owner = None
        if owner:
            finding["owner"] = owner
    for finding in findings:
        full = os.path.join(root, finding["path"])
        for site in sites:
            if full.startswith(site + os.sep):
                finding["record_path"] = os.path.relpath(full, site)
                break
    return findings
