# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The venv store on disk: atomic writes and link flips, the store lock, pruning.

Stdlib only. A venv directory is complete when its manifest (``<venv>.manifest.json`` beside
it, module_utils.manifest) exists: it is written last, after ``lockstep.json``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time

META_FILE = "lockstep.json"
STORE_LOCK = ".lockstep.lock"
# Beside each venv in the store (never inside it): its manifest, and a marker while it is built.
MANIFEST_SUFFIX = ".manifest.json"
BUILDING_SUFFIX = ".building"


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


def write_atomic(path, data, mode=0o644, owner=None):
    """Write ``data`` (text or bytes) to ``path`` by rename(2): readers see the old file or the
    whole new one, never a part. ``owner`` is ``(uid, gid)`` when not the caller's."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)
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


class LockTimeout(Exception):
    """Another run held the store lock for longer than we may wait; the message names it."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def describe_holder(text, now):
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        holder = json.loads(text)
        pid, host = int(holder["pid"]), str(holder["host"])
    except (ValueError, TypeError, KeyError):
        return "a process that did not say who it is (lock file: %r)" % (text or "")[:80]
    alive = ""
    if host == socket.gethostname() and not _pid_alive(pid):
        # flock dies with its process: a dead pid here means its fd lives on in a child.
        alive = " (no longer running: a process it started still holds the lock)"
    since = holder.get("since")
    age = " for %ds" % max(0, now - since) if isinstance(since, (int, float)) else ""
    return "pid %d on %s%s, since %s%s, doing: %s" % (
        pid, host, alive, holder.get("started", "?"), age, holder.get("doing", "?"))


class _Holder(object):
    """This run's entry in the lock file: pid, host, start time and what it is doing."""

    def __init__(self, fd, doing, clock):
        self.fd = fd
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "since": clock(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(clock())), "doing": doing}
        self.doing(doing)

    def doing(self, what):
        self.info["doing"] = what
        data = json.dumps(self.info, sort_keys=True).encode("utf-8")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


@contextlib.contextmanager
def store_lock(store, timeout=600, doing="sync", clock=time.time, sleep=time.sleep):
    """Serialize runs on one host (two playbooks, a run and a rollback) for plan, build,
    validate and flip. Waits at most ``timeout`` seconds, then raises LockTimeout naming the
    holder. flock(2) is released by the kernel when its holder dies, so a killed run never
    blocks the next one. Yields a holder whose ``doing()`` updates the lock file."""
    path = os.path.join(store, STORE_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = clock() + max(0, timeout)
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            now = clock()
            if now >= deadline:
                with open(path) as handle:
                    text = handle.read(4096)
                raise LockTimeout("the venv store %s is locked by %s; waited %ds (venv_lock_timeout): try again "
                                  "when it is done" % (store, describe_holder(text, now), timeout))
            sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 1.0)
        holder = _Holder(fd, doing, clock)
        try:
            yield holder
        finally:
            holder.doing("released")
    finally:
        os.close(fd)


def remove_tree(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def remove_venv(venv):
    """A venv and what the store keeps beside it (manifest, build marker); the venv first,
    so an interruption never leaves a venv without its manifest."""
    remove_tree(venv)
    for suffix in (MANIFEST_SUFFIX, BUILDING_SUFFIX):
        with contextlib.suppress(OSError):
            os.unlink(venv + suffix)


def mark_building(venv, path):
    """Before a build: ``<venv>.building`` names the venv_path it is for, so a build that is
    killed is recognised and removed by the next run, whatever lock that run syncs."""
    write_atomic(venv + BUILDING_SUFFIX, json.dumps({"path": path, "pid": os.getpid(), "host": socket.gethostname()})
                 + "\n")


def build_in_progress(venv):
    """The build of ``venv`` is still running (its builder lives): never prune it, even if
    the store lock did not keep us apart."""
    try:
        with open(venv + BUILDING_SUFFIX) as handle:
            marker = json.load(handle)
        return marker.get("host") == socket.gethostname() and _pid_alive(int(marker["pid"]))
    except (IOError, OSError, ValueError, KeyError, TypeError):
        return False


def live_targets(links):
    """Real directories the given symlinks point to now (current, previous)."""
    return [os.path.realpath(link) for link in links if link and os.path.islink(link)]


def prune(store, path, stem, protect, keep):
    """Delete old venvs of ``path`` in ``store``; the newest ``keep`` complete ones (counting
    ``protect``, i.e. current and previous) stay. Call it under the store lock.

    Only what this code created is touched: a venv whose lockstep.json names ``path``, an
    unfinished build (``<venv>.building`` beside it: no build runs while we hold the lock, so
    it was killed, whatever lock it was for; one whose builder still runs is left alone), an incomplete ``<stem>-<12 hex>[-N]`` of an
    older layout, and manifests or markers whose venv is gone.
    """
    protect = set(os.path.realpath(p) for p in protect if p)
    pattern = re.compile(r"^%s-[0-9a-f]{12}(-\d+)?$" % re.escape(stem))
    candidates = []
    names = os.listdir(store)
    for name in names:
        full = os.path.join(store, name)
        if not os.path.isdir(full) or os.path.islink(full) or name.startswith("."):
            continue
        meta = read_meta(full)
        building = os.path.exists(full + BUILDING_SUFFIX)
        if building:
            if build_in_progress(full):
                continue
            meta = None
        elif meta is not None:
            if meta.get("path") != path:
                continue
        elif not pattern.match(name):
            continue
        complete = meta is not None and os.path.isfile(full + MANIFEST_SUFFIX)
        created = (meta or {}).get("created") or os.path.getmtime(full)
        candidates.append((created, complete, full))
    candidates.sort(reverse=True)
    removed = []
    kept = len([c for c in candidates if os.path.realpath(c[2]) in protect])
    for _created, complete, full in candidates:
        if os.path.realpath(full) in protect:
            continue
        if complete and kept < keep:
            kept += 1
            continue
        remove_venv(full)
        removed.append(full)
    for name in names:
        for suffix in (MANIFEST_SUFFIX, BUILDING_SUFFIX):
            if name.endswith(suffix) and not os.path.isdir(os.path.join(store, name[:-len(suffix)])):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(store, name))
    return removed
