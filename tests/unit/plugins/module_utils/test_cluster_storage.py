"""The shared-storage check of the cluster smoke test (module_utils/cluster_smoke.py,
STORAGE_SCRIPT): the rank-side code run for real by several "ranks" (threads) over real
directories, with an allgather that behaves like MPI's (everyone waits for everyone). Per-host
storage is a directory per rank at the rank's own path; a host that sees the shared storage
read-only or full is a view of it (a symlink) whose writes fail as the kernel would fail them."""

import base64
import errno
import json
import os
import pickle
import threading
import time

import pytest
from plugins.module_utils.test_cluster_smoke import fake_cluster

from ansible_collections.lockstep.cluster.plugins.module_utils import cluster_smoke as cs

TOKEN = "lockstep-smoke-0123456789abcdef"


class World(object):
    """What MPI gives the ranks: an allgather that returns only when every rank called it."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)
        self.calls = [0] * size

    def comm(self, rank):
        world = self

        class Comm(object):
            def allgather(self, value):
                world.calls[rank] += 1
                world.slots[rank] = pickle.dumps(value)
                world.barrier.wait()
                out = [pickle.loads(v) for v in world.slots]
                world.barrier.wait()
                return out
        return Comm()


class FaultyOs(object):
    """``os`` for the script, except that creating or writing a file under a path holding one
    of ``faults``' keys fails with that errno, and statvfs of a path holding ``hang`` blocks."""

    def __init__(self, faults, hang=None, hang_s=0):
        self.faults, self.hang, self.hang_s = faults, hang, hang_s

    def __getattr__(self, name):
        return getattr(os, name)

    def _fault(self, path):
        for part, code in self.faults.items():
            if part in str(path):
                raise OSError(code, os.strerror(code))

    def open(self, path, flags, mode=0o777):
        if flags & os.O_CREAT:
            self._fault(path)
        return os.open(path, flags, mode)

    def statvfs(self, path):
        if self.hang and self.hang in str(path):
            time.sleep(self.hang_s)
        return os.statvfs(path)


def run_ranks(dirs_per_rank, timeout=5, faults=None, hang=None, hang_s=0):
    """Every rank runs shared_storage() with its own list of paths (the same directories,
    index by index, as each host names them); returns (reports by rank, the world, seconds)."""
    size = len(dirs_per_rank)
    world = World(size)
    reports, errors = {}, []
    namespace = {"say": lambda doc: reports.__setitem__(doc["rank"], doc)}
    exec(cs.STORAGE_SCRIPT, namespace)  # pylint: disable=exec-used
    if faults or hang:
        namespace["_os"] = FaultyOs(faults or {}, hang, hang_s)

    def rank_main(rank):
        try:
            namespace["shared_storage"](world.comm(rank), rank, size,
                                        {"dirs": dirs_per_rank[rank], "timeout": timeout}, TOKEN)
        except Exception as exc:  # a rank that raises would leave the others in a collective
            errors.append((rank, exc))
            world.barrier.abort()

    start = time.time()
    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return reports, world, time.time() - start


def facts(reports, index):
    return [reports[r]["dirs"][index] for r in sorted(reports)]


def leftovers(*paths):
    return [n for p in paths if os.path.isdir(p) for n in os.listdir(p) if n.startswith(".lockstep-")]


def test_one_shared_directory_one_round_every_rank_sees_rank_0s_file(tmp_path):
    shared = str(tmp_path / "shared")
    os.mkdir(shared)
    reports, world, dummy = run_ranks([[shared]] * 3)
    for fact in facts(reports, 0):
        assert fact["exists"] and fact["writable"] and fact["seen"] == 0 and fact["read"] == "seen"
        assert fact["writers"] == [0] and fact["free"] > 0 and fact["size"] >= fact["free"]
        assert fact["fstype"] and fact["source"] and fact["mountpoint"] and not fact["hung"]
    # One round: the writable table, the secret (the barrier before reading), the reads.
    assert world.calls == [3, 3, 3]
    assert leftovers(shared) == []  # the probe files and the token file are gone


def test_per_host_directories_at_one_path_are_told_apart_round_by_round(tmp_path):
    local = [str(tmp_path / ("host%d" % r) / "local") for r in range(3)]
    for path in local:
        os.makedirs(path)
    reports, dummy, dummy = run_ranks([[p] for p in local])
    assert [f["seen"] for f in facts(reports, 0)] == [0, 1, 2]
    assert [f["writers"] for f in facts(reports, 0)] == [[0, 1, 2]] * 3
    assert leftovers(*local) == []


def test_the_odd_host_gets_a_round_of_its_own_and_the_others_stay_together(tmp_path):
    shared, odd = str(tmp_path / "shared"), str(tmp_path / "odd")
    os.mkdir(shared)
    os.mkdir(odd)
    reports, dummy, dummy = run_ranks([[odd], [shared], [shared]])
    assert [f["seen"] for f in facts(reports, 0)] == [0, 1, 1]


def test_a_read_only_view_still_sees_the_shared_file_and_says_why_it_cannot_write(tmp_path):
    shared = str(tmp_path / "shared")
    os.mkdir(shared)
    os.symlink(shared, str(tmp_path / "ro-view"))
    reports, dummy, dummy = run_ranks([[shared], [shared], [str(tmp_path / "ro-view")]],
                                      faults={"ro-view": errno.EROFS})
    ro = facts(reports, 0)[2]
    assert ro["writable"] is False and ro["write_error"] == "Read-only file system" and ro["seen"] == 0
    assert ro["realpath"] == shared


def test_a_writer_that_cannot_write_its_file_hands_the_round_to_the_next_rank(tmp_path):
    shared = str(tmp_path / "shared")
    os.mkdir(shared)
    os.symlink(shared, str(tmp_path / "quota-view"))
    # Rank 0's small probe file fits, its token file does not (a quota, a full filesystem).
    reports, world, dummy = run_ranks([[str(tmp_path / "quota-view")], [shared], [shared]],
                                      faults={"quota-view/.lockstep-shared": errno.EDQUOT})
    assert [f["seen"] for f in facts(reports, 0)] == [1, 1, 1]
    assert facts(reports, 0)[0]["write_error"] == "Disk quota exceeded"
    assert [f["writers"] for f in facts(reports, 0)] == [[1]] * 3 and world.calls == [5, 5, 5]


def test_read_only_everywhere_writes_nothing_and_every_rank_finishes(tmp_path):
    shared = str(tmp_path / "ro-everywhere")
    os.mkdir(shared)
    reports, world, dummy = run_ranks([[shared]] * 3, faults={"ro-everywhere": errno.EROFS})
    assert [(f["writable"], f["seen"], f["writers"]) for f in facts(reports, 0)] == [(False, None, [])] * 3
    assert world.calls == [1, 1, 1]  # nobody could write: no round


def test_a_full_directory_fails_the_write_with_enospc(tmp_path):
    shared = str(tmp_path / "full")
    os.mkdir(shared)
    reports, dummy, dummy = run_ranks([[shared]] * 2, faults={"full": errno.ENOSPC})
    assert [f["write_error"] for f in facts(reports, 0)] == ["No space left on device"] * 2


def test_a_file_by_the_token_name_with_other_content_is_no_proof(tmp_path):
    # Host 2's own directory already holds a file by the name rank 0 writes (a copy, a stale
    # one): reading it is not seeing rank 0's file, and host 2 cannot write its own there.
    local = [str(tmp_path / ("host%d" % r)) for r in range(3)]
    for path in local:
        os.mkdir(path)
    with open(os.path.join(local[2], ".lockstep-shared-%s-0" % TOKEN), "w") as handle:
        handle.write("%s %s" % (TOKEN, "0" * 32))
    reports, dummy, dummy = run_ranks([[local[0]], [local[0]], [local[2]]])
    odd = facts(reports, 0)[2]
    assert odd["read"] == "differs" and odd["seen"] is None and odd["write_error"] == "File exists"
    assert [f["seen"] for f in facts(reports, 0)] == [0, 0, None]


def test_a_missing_directory_on_one_host_does_not_stop_the_others(tmp_path):
    shared = str(tmp_path / "shared")
    os.mkdir(shared)
    missing = str(tmp_path / "nowhere")
    reports, dummy, dummy = run_ranks([[shared], [missing], [shared]])
    gone = facts(reports, 0)[1]
    assert gone["exists"] is False and gone["error"] == "does not exist" and gone["read"] == "absent"
    assert gone["seen"] is None and "writable" not in gone
    assert [f["seen"] for f in facts(reports, 0)] == [0, None, 0]


def test_a_hung_directory_is_reported_and_every_rank_still_reaches_every_collective(tmp_path):
    shared = str(tmp_path / "shared")
    os.mkdir(shared)
    os.symlink(shared, str(tmp_path / "hang-view"))
    other = str(tmp_path / "other")
    os.mkdir(other)
    reports, world, seconds = run_ranks([[shared, other], [str(tmp_path / "hang-view"), other], [shared, other]],
                                        timeout=1, hang="hang-view", hang_s=4)
    hung = facts(reports, 0)[1]
    assert hung["hung"] and hung["error"].startswith("the check did not finish in 1s") and hung["seen"] is None
    assert [f["seen"] for f in facts(reports, 0)] == [0, None, 0]
    # The other directory is checked normally, on every rank, the hung one included.
    assert [f["seen"] for f in facts(reports, 1)] == [0, 0, 0]
    assert world.calls == [3, 3, 3] and seconds < 4


def test_mountinfo_names_the_longest_mount_and_unescapes_spaces():
    namespace = {}
    exec(cs.STORAGE_SCRIPT, namespace)  # pylint: disable=exec-used
    assert namespace["storage_unescape"]("/mnt/with\\040space") == "/mnt/with space"
    root = namespace["storage_mount"]("/")
    assert root["mountpoint"] == "/" and root["fstype"]
    proc = namespace["storage_mount"]("/proc/self")
    assert proc["mountpoint"] == "/proc" and proc["fstype"] == "proc"


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("4096", 4096), ("4096B", 4096), ("500M", 500 << 20), ("1.5 GiB", 3 << 29), ("2t", 2 << 40),
    ("8Mi", 8 << 20), ("1KB", 1024),
])
def test_sizes(text, expected):
    assert cs.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-1G", "5X", "1 0G", "4iB"])
def test_sizes_that_are_none_are_named(text):
    with pytest.raises(ValueError, match="is not a size"):
        cs.parse_size(text)


def test_the_plan_wants_absolute_paths_and_keeps_their_order_once():
    assert cs.storage_plan({"shared_dirs": []}) is None
    plan = cs.storage_plan({"shared_dirs": ["/b", "/a", "/b"], "shared_min_free": "1G", "shared_timeout": 5})
    assert plan == {"dirs": ["/b", "/a"], "min_free": 1 << 30, "timeout": 5}
    with pytest.raises(ValueError, match="data is not an absolute path"):
        cs.storage_plan({"shared_dirs": ["data"]})
    with pytest.raises(ValueError, match="shared_min_free: 'lots' is not a size"):
        cs.storage_plan({"shared_dirs": ["/d"], "shared_min_free": "lots"})
    with pytest.raises(ValueError, match="shared_timeout"):
        cs.storage_plan({"shared_dirs": ["/d"], "shared_timeout": 0})


def test_the_launch_hands_the_plan_to_every_rank_and_the_rank_script_reports_the_storage(tmp_path):
    shared = tmp_path / "da ta 'x'"  # one argument to every rank, whatever the path holds
    shared.mkdir()
    params = dict(fake_cluster(tmp_path), shared_dirs=[str(shared), str(tmp_path / "nowhere")],
                  shared_min_free="1M", shared_timeout=5)
    out = cs.run(params, dict(os.environ))
    assert out["returncode"] == 0, out["stderr_tail"]
    assert out["storage"] == {"dirs": [str(shared), str(tmp_path / "nowhere")], "min_free": 1 << 20, "timeout": 5}
    assert json.loads(base64.urlsafe_b64decode(out["command"][-1])) == {
        "dirs": [str(shared), str(tmp_path / "nowhere")], "timeout": 5}
    assert "<rank script>" in out["command"] and cs.RANK_SCRIPT not in out["command"]
    storage = out["ranks"][0]["storage"]
    assert [d["seen"] for d in storage["dirs"]] == [0, None]
    assert storage["dirs"][1]["error"] == "does not exist"
    assert leftovers(str(shared)) == []


def test_without_shared_dirs_the_ranks_get_no_plan_and_report_no_storage(tmp_path):
    out = cs.run(fake_cluster(tmp_path), dict(os.environ))
    assert out["returncode"] == 0 and "storage" not in out
    assert out["command"][-1].endswith("cluster.json") and "storage" not in out["ranks"][0]
