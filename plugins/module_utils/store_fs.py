# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: the venv store on disk — atomic writes and link flips, the store lock, pruning.

Stdlib only. A venv directory is complete when its ``lockstep.json`` exists (written last).
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
import tempfile

META_FILE = "lockstep.json"
STORE_LOCK = ".lockstep.lock"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
