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
import stat
import tempfile
import time

META_FILE = "lockstep.json"
STORE_LOCK = ".lockstep.lock"
# Beside each venv in the store (never inside it): its manifest, and a marker while it is built.
MANIFEST_SUFFIX = ".manifest.json"
BUILDING_SUFFIX = ".building"


def file_digest(path, digest):
    """``digest`` (a hashlib object) over the file's bytes, read in blocks; its hex digest."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path):
    return file_digest(path, hashlib.sha256())


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
    """Another run held the store lock for longer than we may wait; the message names it
    (``holder``: who holds it, as the kernel says)."""

    def __init__(self, message, holder=None):
        super(LockTimeout, self).__init__(message)
        self.holder = holder


class UnsafeStore(Exception):
    """A store, lock file or manifest that others could write or swap: refused, with the path."""


def trusted_uid(uid):
    """Root, or whoever runs us (a test, a rootless lab): nobody else may own what we trust."""
    return uid == 0 or uid == os.geteuid()


def _mode(st):
    return "%04o" % stat.S_IMODE(st.st_mode)


def dir_problems(directory, strict=True):
    """Why ``directory`` (its real path) and every directory above it cannot be trusted, as
    OpenSSH checks a key's path: each must be owned by root (or us) and not writable by group
    or others. ``strict`` is for the directory itself; above it a sticky directory (/tmp)
    is accepted: others cannot rename or delete what they do not own there.
    Returns ``[{"path", "reason"}]`` ([] = safe)."""
    problems = []
    real = os.path.realpath(directory)
    current, first = real, True
    while True:
        try:
            st = os.stat(current)
        except OSError as exc:
            problems.append({"path": current, "reason": "cannot be checked: %s" % (exc.strerror or exc)})
            break
        if not stat.S_ISDIR(st.st_mode):
            problems.append({"path": current, "reason": "not a directory"})
        elif not trusted_uid(st.st_uid):
            problems.append({"path": current, "reason": "owned by uid %d, not root" % st.st_uid})
        elif st.st_mode & 0o022 and (strict and first or not st.st_mode & stat.S_ISVTX):
            problems.append({"path": current, "reason": "writable by %s (mode %s)" % (
                "others" if st.st_mode & 0o002 else "its group", _mode(st))})
        parent = os.path.dirname(current)
        if parent == current:
            break
        current, first = parent, False
    return problems


def file_problems(path, st=None):
    """Why the file at ``path`` (not followed) cannot be trusted: not a regular file, owned by
    someone else, writable by group or others, or hard-linked elsewhere."""
    try:
        st = st or os.lstat(path)
    except OSError as exc:
        return [{"path": path, "reason": "cannot be checked: %s" % (exc.strerror or exc)}]
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return [{"path": path, "reason": "%s" % kind}]
    problems = []
    if not trusted_uid(st.st_uid):
        problems.append({"path": path, "reason": "owned by uid %d, not root" % st.st_uid})
    if st.st_mode & 0o022:
        problems.append({"path": path, "reason": "writable by %s (mode %s)" % (
            "others" if st.st_mode & 0o002 else "its group", _mode(st))})
    if st.st_nlink > 1:
        problems.append({"path": path, "reason": "has %d hard links (another name could change it)" % st.st_nlink})
    return problems


def describe_problems(problems):
    return "; ".join("%s: %s" % (p["path"], p["reason"]) for p in problems)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _lock_key(st):
    """How /proc/locks and fdinfo name a file: ``MAJ:MIN:INODE`` (hex, hex, decimal)."""
    return "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def _flock_pids(lines, key):
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:123 0 EOF"; waiters carry "->" and are not holders.
        if "->" in fields or "FLOCK" not in fields or key not in fields:
            continue
        try:
            pids.append(int(fields[fields.index(key) - 1]))
        except (ValueError, IndexError):
            continue
    return pids


def lock_holders(fd, proc="/proc"):
    """Pids that hold a flock on the file open at ``fd`` now, as the kernel says: /proc/locks
    names the pid that took it; when that one is gone (its fd lives on in a child), the
    processes whose fdinfo shows the lock. [] when the kernel does not tell (no /proc)."""
    key = _lock_key(os.fstat(fd))
    try:
        with open(os.path.join(proc, "locks")) as handle:
            pids = _flock_pids(handle.read().splitlines(), key)
    except (IOError, OSError):
        return []
    if pids and all(_pid_alive(pid) for pid in pids):
        return sorted(set(pids))
    found = set()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        fdinfo = os.path.join(proc, name, "fdinfo")
        try:
            entries = os.listdir(fdinfo)
        except OSError:
            continue
        for entry in entries:
            try:
                with open(os.path.join(fdinfo, entry)) as handle:
                    text = handle.read()
            except (IOError, OSError):
                continue
            if "lock:" in text and _flock_pids([line.partition("lock:")[2] for line in text.splitlines()
                                                if line.startswith("lock:")], key):
                found.add(int(name))
    return sorted(found)


def process_name(pid, proc="/proc"):
    """``comm`` and uid of a process (never its command line: it may hold secrets)."""
    try:
        with open(os.path.join(proc, str(pid), "comm")) as handle:
            comm = handle.read().strip()
        with open(os.path.join(proc, str(pid), "status")) as handle:
            uid = next((line.split()[1] for line in handle if line.startswith("Uid:")), "?")
    except (IOError, OSError):
        return None
    return "%s, uid %s" % (comm, uid)


def describe_holder(text, now, holders=None):
    """Who holds the lock. ``holders``: the pids the kernel names (lock_holders); the note the
    holder wrote into the lock file (``text``) only describes it when it is one of them."""
    try:
        holder = json.loads(text)
        pid, host = int(holder["pid"]), str(holder["host"])
    except (ValueError, TypeError, KeyError):
        holder, pid, host = None, None, None
    local = host == socket.gethostname()
    if holders and not (local and pid in holders):
        named = ", ".join("pid %d (%s)" % (p, process_name(p) or "gone") for p in holders)
        earlier = ""
        if holder is not None:
            earlier = "; the note in the lock file is from an earlier holder, pid %d on %s, doing: %s" % (
                pid, host, holder.get("doing", "?"))
        return "%s on %s, which left no note of what it is doing%s" % (named, socket.gethostname(), earlier)
    if holder is None:
        return "a process that did not say who it is (lock file: %r)" % (text or "")[:80]
    alive = ""
    if local and not _pid_alive(pid):
        # flock dies with its process: a dead pid here means its fd lives on in a child.
        alive = " (no longer running: a process it started still holds the lock)"
    since = holder.get("since")
    age = " for %ds" % max(0, now - since) if isinstance(since, (int, float)) else ""
    return "pid %d on %s%s, since %s%s, doing: %s" % (
        pid, host, alive, holder.get("started", "?"), age, holder.get("doing", "?"))


class _Holder(object):
    """This run's entry in the lock file: pid, host, start time and what it is doing. Written
    only while the flock is held, so the note is the holder's as long as it holds it."""

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


def open_lock(store):
    """The store's lock file, opened as OpenSSH opens its own files: never through a symlink,
    only a regular file owned by root (or us) with one link, in a directory nobody else can
    write. Raises UnsafeStore naming the path and why."""
    problems = dir_problems(store)
    if problems:
        raise UnsafeStore("refusing the lock in %s: %s" % (store, describe_problems(problems)))
    path = os.path.join(store, STORE_LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStore("refusing the lock file %s: it is a symlink (to %s); remove it"
                              % (path, os.readlink(path)))
        problems = file_problems(path) if os.path.lexists(path) else []
        if problems:
            raise UnsafeStore("refusing the lock file %s: %s; remove it" % (path, describe_problems(problems)))
        raise UnsafeStore("cannot open the lock file %s: %s" % (path, exc.strerror or exc))
    problems = file_problems(path, os.fstat(fd))
    if problems:
        os.close(fd)
        raise UnsafeStore("refusing the lock file %s: %s; remove it" % (path, describe_problems(problems)))
    return fd


@contextlib.contextmanager
def store_lock(store, timeout=600, doing="sync", clock=time.time, sleep=time.sleep):
    """Serialize runs on one host (two playbooks, a run and a rollback) for plan, build,
    validate and flip. Waits at most ``timeout`` seconds, then raises LockTimeout naming the
    holder the kernel names. flock(2) is released by the kernel when its holder dies, so a
    killed run never blocks the next one. Yields a holder whose ``doing()`` updates the note.
    Raises UnsafeStore for a lock file or store that others could write or swap."""
    fd = open_lock(store)
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
                holder = describe_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"), now, lock_holders(fd))
                raise LockTimeout("the venv store %s is locked by %s; waited %ds (venv_lock_timeout): try again "
                                  "when it is done" % (store, holder, timeout), holder)
            sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 1.0)
        holder = _Holder(fd, doing, clock)
        try:
            yield holder
        finally:
            holder.doing("released")
    finally:
        os.close(fd)


def secure_store(store, check=False):
    """Create ``store`` (0755), or make it safe to build in: a store directory of ours that
    group or others can write is repaired (``chmod go-w``) and reported, since every venv and
    manifest in it is then checked for its owner before it is trusted (venv_problems). A
    store owned by someone else, or a directory above it that others can write (not sticky),
    is not ours to change: UnsafeStore. Returns the repairs made (sentences); with ``check``
    the repairs it would make, changing nothing."""
    if not check:
        try:
            os.makedirs(store, 0o755)
        except OSError:
            if not os.path.isdir(store):
                raise
    real = os.path.realpath(store)
    if not os.path.isdir(real):
        existing = os.path.dirname(real)
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        problems = dir_problems(existing, strict=False)
        if problems:
            raise UnsafeStore("refusing to create the venv store %s: %s" % (store, describe_problems(problems)))
        return []
    repairs = []
    st = os.stat(real)
    if trusted_uid(st.st_uid) and st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode) & ~0o022
        if not check:
            os.chmod(real, mode)
        repairs.append("the venv store %s was writable by %s (mode %s): %s %04o; venvs and manifests in it that "
                       "are not root's are not trusted" % (real, "others" if st.st_mode & 0o002 else "its group",
                                                           _mode(st), "would make it" if check else "made it", mode))
    problems = [p for p in dir_problems(real) if not (repairs and p["path"] == real)]
    if problems:
        raise UnsafeStore("refusing the venv store %s: %s (fix the owner or mode, or choose another venv_store_dir)"
                          % (store, describe_problems(problems)))
    return repairs


def venv_problems(venv):
    """Why a venv directory of the store and its manifest cannot be trusted as ours: the
    directory (not followed) must be root's and not writable by group or others, the manifest
    a regular root file nobody else can write. [] when both are."""
    real = os.path.realpath(venv)
    problems = []
    try:
        st = os.lstat(real)
    except OSError as exc:
        return [{"path": real, "reason": "cannot be checked: %s" % (exc.strerror or exc)}]
    if not trusted_uid(st.st_uid):
        problems.append({"path": real, "reason": "owned by uid %d, not root" % st.st_uid})
    if st.st_mode & 0o022:
        problems.append({"path": real, "reason": "writable by %s (mode %s)" % (
            "others" if st.st_mode & 0o002 else "its group", _mode(st))})
    location = real + MANIFEST_SUFFIX
    if os.path.lexists(location):
        problems += file_problems(location)
    return problems


def audit(venv_path, venv_real):
    """Host side of the drift check: ``[{"path", "reason"}]`` for everything that would let
    someone other than root swap the live venv or rewrite what it is checked against: the
    store directory (group/others may not write it) and the directories above it, the
    directories above ``venv_path`` (the symlink), the live venv directory, its manifest
    and the store's lock file. [] = safe."""
    store = os.path.dirname(os.path.realpath(venv_real))
    found = dir_problems(store)
    if os.path.islink(venv_path):
        found += dir_problems(os.path.dirname(os.path.abspath(venv_path)), strict=False)
        st = os.lstat(venv_path)
        if not trusted_uid(st.st_uid):
            found.append({"path": venv_path, "reason": "symlink owned by uid %d, not root" % st.st_uid})
    found += venv_problems(venv_real)
    lock = os.path.join(store, STORE_LOCK)
    if os.path.lexists(lock):
        found += file_problems(lock)
    unique, seen = [], set()
    for problem in found:
        key = (problem["path"], problem["reason"])
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def harden_tree(root):
    """Before a venv is sealed: nothing in it stays writable by group or others (a umask of 0
    or a wheel's own modes), so the manifest records a venv only root can change."""
    for directory, dirs, files in os.walk(root):
        for name in [""] + dirs + files if directory == root else dirs + files:
            path = os.path.join(directory, name) if name else directory
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)


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


def recorded_links(store, names=None):
    """Every venv_path (and its rollback link) the venvs in ``store`` were built for."""
    links = set()
    for name in names if names is not None else os.listdir(store):
        meta = read_meta(os.path.join(store, name)) if not name.startswith(".") else None
        if meta and isinstance(meta.get("path"), str):
            links.update([meta["path"], meta.get("previous") or meta["path"] + ".previous"])
    return sorted(link for link in links if isinstance(link, str) and os.path.isabs(link))


def sibling_links(path):
    """Symlinks beside ``path`` (other venv_paths of a host usually live together): one that
    an older layout shared a venv directory with is recorded nowhere else."""
    parent = os.path.dirname(path)
    try:
        return [os.path.join(parent, name) for name in os.listdir(parent) if os.path.islink(os.path.join(parent, name))]
    except OSError:
        return []


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
    # Whatever any venv_path synced into this store (or its rollback link) points to now is
    # live, whoever built it: an older layout let two paths share one directory.
    protect.update(os.path.realpath(t) for t in live_targets(recorded_links(store, names) + sibling_links(path)))
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
