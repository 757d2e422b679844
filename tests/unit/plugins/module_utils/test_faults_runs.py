"""Fault suite, part 2: runs that overlap, die or roll back, with the real uv (issue 10.4,
10.5, 10.8). Every refusal names its cause and leaves the live venv byte-identical."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest, store_fs, venv_store
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError

from helpers import (
    FAKE_INIT,
    FAKE_MPI,
    HYDRA_LAUNCHER,
    installed,
    lock_of,
    make_store,
    make_wheel,
    OMPI_LAUNCHER,
    REPO,
    snapshot,
    sync,
    UV,
    wheelhouse,
)

COLLECTIONS = os.path.join(REPO, ".collections")
# Holds the store lock as a sync would, in another process, until killed.
HOLDER = """
import sys, time
from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs
with store_fs.store_lock(sys.argv[1], 5, "build /opt/x for an operator's test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def house(tmp_path):
    return wheelhouse(tmp_path)


def slow_uv(tmp_path, seconds):
    """uv whose real sync (not --check) first sleeps; writes its pid for the test to kill."""
    wrapper = tmp_path / ("uv-slow-%s" % seconds)
    wrapper.write_text(textwrap.dedent("""\
        #!/bin/sh
        case " $* " in
          *" pip sync "*" --check "*) exec %(uv)s "$@" ;;
          *" pip sync "*) echo $$ > %(pidfile)s; sleep %(seconds)s; exec %(uv)s "$@" ;;
          *) exec %(uv)s "$@" ;;
        esac
        """ % {"uv": UV, "seconds": seconds, "pidfile": tmp_path / "uv.pid"}))
    wrapper.chmod(0o755)
    return str(wrapper)


def hold_lock(store_dir, seconds):
    os.makedirs(store_dir, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, store_dir, str(seconds)], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=COLLECTIONS), universal_newlines=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def in_child(store, queue):
    try:
        queue.put(("ok", store.sync(store.lockfile)))
    except SyncError as exc:
        queue.put(("error", exc.message))


# ---------------------------------------------------------------- the store lock


def test_a_held_lock_times_out_naming_the_holder_and_nothing_changes(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    holder = hold_lock(good.store, 60)
    try:
        other = make_store(house, lock_of(house, ("alpha", "2.0")), lock_timeout=1)
        start = time.time()
        with pytest.raises(SyncError) as err:
            sync(other)
        assert 1 <= time.time() - start < 10
    finally:
        holder.kill()
        holder.wait()
    assert err.value.kind == "locked"
    message = err.value.message
    assert "is locked by pid %d on %s" % (holder.pid, socket.gethostname()) in message
    assert "doing: build /opt/x for an operator's test" in message and "waited 1s" in message
    assert snapshot(good.path) == before
    assert not any(n.endswith(store_fs.BUILDING_SUFFIX) for n in os.listdir(good.store))


def test_a_dead_holder_never_blocks(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=2)
    os.makedirs(store.store)
    holder = hold_lock(store.store, 60)
    holder.kill()  # SIGKILL: its flock goes with it, its note stays in the lock file
    holder.wait()
    note = json.loads(open(os.path.join(store.store, store_fs.STORE_LOCK)).read())
    assert note["pid"] == holder.pid
    start = time.time()
    sync(store)
    assert time.time() - start < 10 and installed(store.path) == {"alpha": "1.0"}
    assert json.loads(open(os.path.join(store.store, store_fs.STORE_LOCK)).read())["doing"] == "released"


def test_lock_waits_for_the_holder_then_proceeds(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=30)
    holder = hold_lock(os.path.join(str(house["tmp"]), "opt", "venvs"), 2)
    start = time.time()
    sync(store)
    holder.wait()
    assert time.time() - start >= 1.5 and installed(store.path) == {"alpha": "1.0"}


# ---------------------------------------------------------------- concurrent runs


def test_two_runs_with_two_locks_at_once(house, tmp_path):
    # Issue 10.4: both report success, and the later one must not delete the venv the other
    # had just made live; `previous` must be the other one.
    first = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 3))
    second = make_store(house, lock_of(house, ("alpha", "2.0")), uv=slow_uv(tmp_path, 0))
    queue = multiprocessing.get_context("fork").Queue()
    one = multiprocessing.get_context("fork").Process(target=in_child, args=(first, queue))
    one.start()
    deadline = time.time() + 30
    while not os.path.exists(first.target + store_fs.BUILDING_SUFFIX) and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(first.target + store_fs.BUILDING_SUFFIX)  # the first one is inside the lock
    assert second.plan()["action"] == "build"  # plan (unlocked, read-only) still sees nothing live
    two = multiprocessing.get_context("fork").Process(target=in_child, args=(second, queue))
    two.start()
    results = [queue.get(timeout=120), queue.get(timeout=120)]
    one.join()
    two.join()
    assert [r[0] for r in results] == ["ok", "ok"], results
    current, previous = os.path.realpath(first.path), os.path.realpath(first.path + ".previous")
    assert {current, previous} == {first.target, second.target}
    assert current == second.target  # the second waited, re-planned and built after the first
    assert installed(first.target) == {"alpha": "1.0"} and installed(second.target) == {"alpha": "2.0"}
    assert not venv_store.sealed_findings(first.target) and not venv_store.sealed_findings(second.target)


def test_two_runs_with_the_same_lock_at_once(house, tmp_path):
    # Issue 10.4: the second one used to fail with "refusing to rebuild the active venv".
    first = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 2))
    second = make_store(house, first.lock_text)
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=in_child, args=(s, queue)) for s in (first, second)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _proc in procs]
    for proc in procs:
        proc.join()
    assert sorted(r[0] for r in results) == ["ok", "ok"], results
    assert sorted(r[1]["action"] for r in results) == ["build", "none"], results
    assert os.path.realpath(first.path) == first.target and not os.path.lexists(first.path + ".previous")


def test_killed_module_leaves_a_partial_venv_that_a_run_with_another_lock_removes(house, tmp_path):
    # Issue 10.8: the partial venv was only ever recognised by a run of the same lock.
    killed = make_store(house, lock_of(house, ("alpha", "1.0")), name="one.txt", uv=slow_uv(tmp_path, 60))
    child = multiprocessing.get_context("fork").Process(target=in_child, args=(killed, multiprocessing.Queue()))
    child.start()
    pidfile = tmp_path / "uv.pid"
    deadline = time.time() + 30
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # as a task timeout kills the module: no cleanup runs
    child.join()
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert os.path.isdir(killed.target) and os.path.exists(killed.target + store_fs.BUILDING_SUFFIX)
    other = make_store(house, lock_of(house, ("beta", "1.0")), name="two.txt")
    applied = sync(other)
    assert killed.target in applied["pruned"]
    assert sorted(os.listdir(other.store)) == sorted([
        store_fs.STORE_LOCK, os.path.basename(other.target), os.path.basename(other.target) + ".manifest.json"])


# ---------------------------------------------------------------- repairs and rollback


def _tamper(venv):
    site = [os.path.join(root, "site-packages") for root, dirs, _f in os.walk(venv) if "site-packages" in dirs][0]
    with open(os.path.join(site, "zz-evil.pth"), "w") as handle:
        handle.write("/tmp/evil\n")
    return os.path.relpath(os.path.join(site, "zz-evil.pth"), venv)


def test_repair_keeps_the_clean_previous_and_rollback_goes_there(house):
    # Issue 10.5: after a repair `.previous` was the tampered venv (the clean one pruned).
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    current = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(current)
    assert os.path.realpath(current.path + ".previous") == clean.target
    _tamper(current.target)
    repaired = sync(current)
    assert repaired["drift"] and repaired["previous_kept"] == clean.target
    assert os.path.realpath(current.path + ".previous") == clean.target
    assert current.target in repaired["pruned"]  # keep=2: the fresh one and the clean one
    old, new = venv_store.rollback(current.path)
    assert new == clean.target and installed(current.path) == {"alpha": "1.0"}


def test_rollback_refuses_a_tampered_previous_in_check_mode_too(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    rel = _tamper(clean.target)
    before = snapshot(later.path)
    for check_mode in (True, False):
        with pytest.raises(SyncError) as err:
            venv_store.rollback(later.path, check_mode=check_mode)
        assert err.value.kind == "rollback"
        assert "refusing to roll back %s to %s: it differs from its manifest: %s (new)" % (
            later.path, clean.target, rel) in err.value.message
        assert snapshot(later.path) == before


def test_rollback_refuses_a_previous_without_its_manifest(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    os.unlink(manifest.location(clean.target))
    before = snapshot(later.path)
    with pytest.raises(SyncError) as err:
        venv_store.rollback(later.path)
    assert "no manifest at %s" % manifest.location(clean.target) in err.value.message
    assert snapshot(later.path) == before


def test_rollback_refuses_when_an_import_fails_on_the_host_now(house, tmp_path):
    needed = tmp_path / "needed-by-hostdep"
    needed.write_text("")
    make_wheel(house["dir"], "hostdep", "1.0", body="import os\nassert os.path.exists(%r), 'host file gone'\n"
               % str(needed))
    sha = __import__("hashlib").sha256(open(os.path.join(house["dir"], "hostdep-1.0-py3-none-any.whl"), "rb")
                                       .read()).hexdigest()
    house["sha"][("hostdep", "1.0")] = sha
    first = make_store(house, lock_of(house, ("hostdep", "1.0")), validate_imports=["hostdep"])
    sync(first)
    sync(make_store(house, lock_of(house, ("alpha", "1.0"))))
    needed.unlink()
    with pytest.raises(SyncError) as err:
        venv_store.rollback(first.path)
    assert "import hostdep fails: AssertionError: host file gone" in err.value.message


def test_a_lock_timeout_on_rollback_names_the_holder(house):
    sync(make_store(house, lock_of(house, ("alpha", "1.0"))))
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    before = snapshot(later.path)
    holder = hold_lock(later.store, 60)
    try:
        with pytest.raises(SyncError) as err:
            venv_store.rollback(later.path, lock_timeout=1)
    finally:
        holder.kill()
        holder.wait()
    assert err.value.kind == "locked" and "pid %d" % holder.pid in err.value.message
    assert snapshot(later.path) == before


def test_flip_back_to_a_kept_venv_that_was_tampered_builds_fresh(house):
    first = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(first)
    sync(make_store(house, lock_of(house, ("alpha", "2.0"))))
    _tamper(first.target)
    plan = first.plan()
    assert plan["action"] == "build"  # not "flip" to the kept, tampered venv
    sync(first)
    assert not venv_store.sealed_findings(first.path)


def _launcher(directory, text):
    directory.mkdir()
    path = directory / "mpiexec"
    path.write_text(text)
    path.chmod(0o755)
    return str(directory)


@pytest.mark.parametrize("launcher, refused", [("openmpi", False), ("mpich", True), ("none", True)])
def test_rollback_checks_the_previous_venv_mpi_against_the_host_now(house, tmp_path, launcher, refused):
    # Issue 10.5: after an MPI flavor switch, rollback paired an Open MPI venv with the MPICH
    # launcher, silently. A fake mpi4py loads a fake libmpi; the launchers are fakes too.
    libmpi = str(tmp_path / "libmpi.so.40")
    libz = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1", "/lib/libz.so.1")
                if os.path.exists(p))
    __import__("shutil").copy(libz, libmpi)
    house["sha"][("mpi4py", "4.1.2")] = make_wheel(house["dir"], "mpi4py", "4.1.2", body=FAKE_INIT,
                                                   extra_files={"mpi4py/MPI.py": FAKE_MPI})[1]
    built_for = make_store(house, lock_of(house, ("mpi4py", "4.1.2")), validate_imports=["mpi4py"],
                           env={"FAKE_LIBMPI": libmpi, "LOCKSTEP_MPI_FLAVOR": "openmpi", "MPI4PY_MPIABI": "openmpi"})
    sync(built_for)
    later = make_store(house, lock_of(house, ("alpha", "1.0")), env={"LOCKSTEP_MPI_FLAVOR": "mpich"})
    sync(later)
    bindir = {"openmpi": lambda: _launcher(tmp_path / "ompi", OMPI_LAUNCHER),
              "mpich": lambda: _launcher(tmp_path / "hydra", HYDRA_LAUNCHER),
              "none": lambda: str(tmp_path)}[launcher]()
    env = {"PATH": bindir}  # nothing else: a host MPI must not answer for the fakes
    before = snapshot(later.path)
    if not refused:
        assert venv_store.rollback(later.path, base_env=env)[1] == built_for.target
        return
    with pytest.raises(SyncError) as err:
        venv_store.rollback(later.path, base_env=env)
    assert snapshot(later.path) == before
    if launcher == "mpich":
        assert "it was built for openmpi but the host's launcher %s/mpiexec is now mpich (MPI flavor switched " \
               "since)" % bindir in err.value.message
        assert "mpi: launcher %s/mpiexec is mpich but mpi4py loaded openmpi" % bindir in err.value.message
    else:
        assert "no MPI launcher (mpiexec/mpirun) on the host's PATH to run it with" in err.value.message


def test_a_new_lock_does_not_make_a_tampered_live_venv_the_rollback_target(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    second = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(second)
    _tamper(second.target)  # live, tampered, then replaced by a third lock
    third = make_store(house, lock_of(house, ("beta", "1.0")))
    applied = sync(third)
    assert applied["previous_kept"] == clean.target
    assert os.path.realpath(third.path + ".previous") == clean.target


def test_store_dir_created_by_another_run_at_the_same_moment(house, monkeypatch):
    # Two first runs on a fresh host: both see no store, the other one creates it first.
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    real_makedirs = os.makedirs

    def raced(path, mode=0o777, exist_ok=False):
        real_makedirs(path, mode)
        raise FileExistsError(17, "File exists", path)

    monkeypatch.setattr(os, "makedirs", raced)
    sync(store)
    assert installed(store.path) == {"alpha": "1.0"}


class _NoLock(object):
    """A store lock that does not hold (a file system without working flock)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def doing(self, what):
        pass


def test_without_a_working_lock_a_live_venv_is_still_never_deleted_nor_lost(house, tmp_path, monkeypatch):
    # Issue 10.4's symptom: the later run deleted the venv the other had just made live and
    # left `.previous` wrong. Even if the lock did not serialize them, the flip takes what is
    # live at that moment as the venv it replaces, and prune spares everything live.
    monkeypatch.setattr(store_fs, "store_lock", _NoLock)
    base = make_store(house, lock_of(house, ("beta", "1.0")))
    sync(base)
    slow = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 3))
    fast = make_store(house, lock_of(house, ("alpha", "2.0")))
    queue = multiprocessing.get_context("fork").Queue()
    first = multiprocessing.get_context("fork").Process(target=in_child, args=(slow, queue))
    first.start()
    deadline = time.time() + 30
    while not (tmp_path / "uv.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sync(fast)["action"] == "build"  # flips while the slow one is still building
    outcome = queue.get(timeout=120)
    assert outcome[0] == "ok", outcome
    first.join()
    assert os.path.realpath(base.path) == slow.target
    assert os.path.realpath(base.path + ".previous") == fast.target  # not `base`, which it planned against
    assert installed(fast.target) == {"alpha": "2.0"}
