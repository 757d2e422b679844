"""Host side of the cluster smoke test (module_utils/cluster_smoke.py): hostfiles in both
syntaxes, the launch command per flavor, rank reports grouped per host, the rank script itself
(run for real against a stand-in mpi4py), a timed-out launch stopped with SIGTERM first, and the
shared-storage check (STORAGE_SCRIPT) run for real by several "ranks" (threads) over real
directories, with an allgather that behaves like MPI's (everyone waits for everyone). Per-host
storage is a directory per rank at the rank's own path; a host that sees the shared storage
read-only or full is a view of it (a symlink) whose writes fail as the kernel would fail them."""

import base64
import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import proc
from ansible_collections.lockstep.cluster.plugins.module_utils import cluster_smoke as cs


def test_hostfile_in_either_syntax():
    text = "# header\nlab-1 slots=1\nlab-2 slots=2  # comment\n\nlab-3:4\n10.0.0.9\n"
    assert [n for n, dummy in cs.parse_hostfile(text)] == ["lab-1", "lab-2", "lab-3", "10.0.0.9"]
    assert cs.parse_hostfile(text)[1] == ("lab-2", "lab-2 slots=2  # comment")


def test_openmpi_command_one_rank_per_node_batchmode_and_forwarded_env():
    argv = cs.launch_command("/usr/bin/mpiexec", "openmpi", "/h", 3, "/v/bin/python", "tok", "/etc/m.json",
                             ["PATH", "MPI4PY_LIBMPI"], as_root=False)
    assert argv[:9] == ["/usr/bin/mpiexec", "--hostfile", "/h", "-n", "3", "--map-by", "node", "--mca", "plm_rsh_args"]
    assert argv[9] == "-o BatchMode=yes"
    assert "--allow-run-as-root" not in argv
    assert argv[10:14] == ["-x", "PATH", "-x", "MPI4PY_LIBMPI"]
    assert argv[14:16] == ["/v/bin/python", "-c"] and argv[-2:] == ["tok", "/etc/m.json"]
    assert "--allow-run-as-root" in cs.launch_command("m", "openmpi", "/h", 1, "p", "t", "f", [], as_root=True)


def test_mpich_command():
    argv = cs.launch_command("/usr/bin/mpiexec", "mpich", "/h", 2, "/v/bin/python", "tok", "/m", ["PATH"], as_root=True)
    assert argv[:10] == ["/usr/bin/mpiexec", "-f", "/h", "-launcher", "ssh", "-n", "2", "-ppn", "1", "/v/bin/python"]
    assert "-x" not in argv and "--allow-run-as-root" not in argv


def test_forwarded_variables_skip_openmpi_own():
    env = {"PATH": "/v/bin", "VIRTUAL_ENV": "/v", "OMPI_ALLOW_RUN_AS_ROOT": "1", "MPI4PY_LIBMPI": "x", "HOME": "/h"}
    assert cs.forwarded(env, {"OMPI_ALLOW_RUN_AS_ROOT", "MPI4PY_LIBMPI"}, {}) == ["PATH", "VIRTUAL_ENV", "MPI4PY_LIBMPI"]


def test_rank_reports_are_grouped_per_host_even_with_equal_pids():
    lines = [
        cs.TAG + json.dumps({"phase": "id", "pid": 7, "hostname": "a"}),
        cs.TAG + json.dumps({"phase": "id", "pid": 7, "hostname": "b"}),
        "Hello from the launcher",
        cs.TAG + json.dumps({"phase": "init", "pid": 7, "hostname": "b", "rank": 1, "size": 2}),
        cs.TAG + "{not json",
    ]
    ranks, other = cs.parse_ranks("\n".join(lines))
    assert [sorted(r) for r in ranks] == [["id"], ["id", "init"]]
    assert ranks[1]["init"]["rank"] == 1
    assert other == ["Hello from the launcher", cs.TAG + "{not json"]


FAKE_MPI4PY = {
    "__init__.py": "__version__ = '9.9.9'\nclass _RC(object):\n    pass\nrc = _RC()\n",
    "MPI.py": textwrap.dedent("""\
        SUM = 'sum'
        def Get_library_version():
            return 'Open MPI v4.1.4, package: Debian OpenMPI\\x00'
        def Init():
            pass
        def Finalize():
            pass
        class _Comm(object):
            def Get_rank(self):
                return 0
            def Get_size(self):
                return 1
            def allreduce(self, value, op=None):
                return value
            def sendrecv(self, value, dest=None, source=None):
                return value
            def allgather(self, value):
                return [value]
        COMM_WORLD = _Comm()
        """),
}


def run_rank_script(tmp_path, with_mpi4py):
    path = tmp_path / "site"
    (path / "mpi4py").mkdir(parents=True)
    if with_mpi4py:
        for name, text in FAKE_MPI4PY.items():
            (path / "mpi4py" / name).write_text(text)
    member = tmp_path / "cluster.json"
    member.write_text(json.dumps({"host": "lab-9"}))
    env = dict(os.environ, PYTHONPATH=str(path), OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
    done = subprocess.run([sys.executable, "-c", cs.RANK_SCRIPT, "lockstep-smoke-t", str(member)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return done, cs.parse_ranks(done.stdout)[0]


def test_rank_script_reports_identity_then_collectives(tmp_path):
    done, ranks = run_rank_script(tmp_path, True)
    assert done.returncode == 0, done.stderr
    ident, init, final = ranks[0]["id"], ranks[0]["init"], ranks[0]["done"]
    assert ident["member"] == "lab-9" and ident["token"] == "lockstep-smoke-t"
    assert ident["mpi4py"] == "9.9.9" and ident["library_version"].startswith("Open MPI v4.1.4")
    assert ident["launched_by"] == "openmpi" and ident["env_rank"] == 0
    assert ident["prefix"] == os.path.realpath(sys.prefix) and len(ident["packages_sha256"]) == 64
    assert (init["rank"], init["size"]) == (0, 1)
    assert (final["allreduce"], final["ring_from"]) == (0, 0)


def test_rank_script_reports_an_import_error_and_exits_3(tmp_path):
    done, ranks = run_rank_script(tmp_path, False)
    assert done.returncode == 3
    assert "import_error" in ranks[0]["id"] and "init" not in ranks[0]


def test_timeout_sends_sigterm_first_then_sigkill(tmp_path):
    marker = tmp_path / "got-term"
    script = ("import signal, sys, time\n"
              "def term(*a):\n    open(%r, 'w').write('term')\n    sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term)\nprint('up', flush=True)\ntime.sleep(60)\n" % str(marker))
    start = time.time()
    result = proc.run([sys.executable, "-c", script], timeout=2, grace=5)
    assert result.timed_out and result.rc is None and marker.read_text() == "term"
    assert time.time() - start < 6


def test_a_group_ignoring_sigterm_is_killed_after_the_grace():
    # The child and a grandchild both ignore SIGTERM: only the group's SIGKILL ends them.
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    script = ("import subprocess, sys, signal, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "child = subprocess.Popen([sys.executable, '-c', %r])\n"
              "print(child.pid, flush=True)\ntime.sleep(60)\n" % ignore)
    start = time.time()
    result = proc.run([sys.executable, "-c", script], timeout=1, grace=1)
    assert result.timed_out and 1.9 < time.time() - start < 10
    grandchild = int(result.out.split()[0])
    time.sleep(0.2)
    try:
        with open("/proc/%d/stat" % grandchild) as handle:
            state = handle.read().split(")")[-1].split()[0]
    except IOError:
        state = "gone"
    assert state in ("gone", "Z")


FAKE_LAUNCHER = """#!%(python)s
# Stands in for Open MPI's mpiexec on one host: --version, or one local rank of the command.
import os, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("mpiexec (OpenRTE) 4.1.4")
    sys.exit(0)
if os.environ.get("FAKE_HANG"):
    time.sleep(120)
at = args.index("-c")
os.environ.update(OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
os.execv(args[at - 1], args[at - 1:])
"""


def fake_cluster(tmp_path):
    """A venv whose python is this interpreter, a stand-in mpi4py and launcher, a one-host hostfile."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, str(venv / "bin" / "python"))
    launcher = tmp_path / "mpiexec"
    launcher.write_text(FAKE_LAUNCHER % {"python": sys.executable})
    launcher.chmod(0o755)
    site = tmp_path / "site" / "mpi4py"
    site.mkdir(parents=True)
    for name, text in FAKE_MPI4PY.items():
        (site / name).write_text(text)
    etc = tmp_path / "etc"
    etc.mkdir()
    # A name that resolves here: every hostfile name is resolved before the launch.
    (etc / "hostfile").write_text("# one host\nlocalhost slots=1\n")
    (etc / "cluster.json").write_text(json.dumps({"host": "me", "name": "localhost"}))
    import pwd
    return {"venv": str(venv), "user": pwd.getpwuid(os.geteuid()).pw_name, "hostfile": str(etc / "hostfile"),
            "hosts": ["localhost"], "launcher": str(launcher), "env_file": None, "preflight": True, "ssh_timeout": 5,
            "timeout": 30, "grace": 2, "environment": {"PYTHONPATH": str(tmp_path / "site")}}


def test_run_launches_the_venv_python_and_collects_the_ranks(tmp_path):
    out = cs.run(fake_cluster(tmp_path), dict(os.environ))
    assert out["launcher"]["flavor"] == "openmpi" and out["launched_hosts"] == ["localhost"]
    # The launching host needs no SSH to itself.
    assert out["preflight"] == {} and out["returncode"] == 0 and out["expected_ranks"] == 1
    assert [sorted(r) for r in out["ranks"]] == [["done", "id", "init"]]
    assert out["ranks"][0]["id"]["member"] == "me"
    assert "--hostfile" in out["command"] and "-x" in out["command"] and "PYTHONPATH" in out["command"]
    assert out["total_seconds"] >= out["seconds"]
    # The happy path pays for no diagnosis: no sweep, no TCP check.
    assert out["unresolved"] == {} and "inbound" not in out and "stragglers" not in out


def test_run_names_hosts_missing_from_the_hostfile_and_a_missing_venv(tmp_path):
    params = dict(fake_cluster(tmp_path), hosts=["localhost", "ghost"])
    assert cs.run(params, dict(os.environ))["not_in_hostfile"] == ["ghost"]
    params = dict(fake_cluster(tmp_path / "x"), venv=str(tmp_path / "nowhere"))
    out = cs.run(params, dict(os.environ))
    assert out["stage"] == "venv" and "nowhere/bin/python" in out["error"]


def test_run_stops_a_hanging_launch_and_sweeps_its_ranks(tmp_path):
    params = dict(fake_cluster(tmp_path), timeout=2, grace=1, environment={"FAKE_HANG": "1"})
    start = time.time()
    out = cs.run(params, dict(os.environ))
    assert out["timed_out"] and out["returncode"] is None and time.time() - start < 20
    assert out["stragglers"] == {}  # the group was killed: nothing of this launch is left


def test_stragglers_are_found_by_the_launch_token_and_killed_by_pid():
    import pwd
    user = pwd.getpwuid(os.geteuid())
    token = "lockstep-smoke-%d" % os.getpid()
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "lockstep-smoke-other"],
                             start_new_session=True)
    try:
        time.sleep(0.3)
        found = cs.stragglers(["me"], user, dict(os.environ), token, 5, me="me")
        assert found == {"me": [rank.pid]}
        assert rank.wait(timeout=10) == -9
        assert other.poll() is None  # another launch's process is left alone
    finally:
        for proc_ in (rank, other):
            if proc_.poll() is None:
                proc_.kill()
                proc_.wait()


def test_a_name_that_does_not_resolve_is_named_and_the_others_still_launch(tmp_path):
    params = fake_cluster(tmp_path)
    with open(params["hostfile"], "a") as handle:
        handle.write("Lab_1.invalid slots=1\n")  # .invalid never resolves (RFC 6761)
    params["hosts"] = ["localhost", "Lab_1.invalid"]
    out = cs.run(params, dict(os.environ))
    assert list(out["unresolved"]) == ["Lab_1.invalid"] and out["unresolved"]["Lab_1.invalid"].startswith("[Errno")
    assert out["resolved"]["localhost"]["addresses"]
    # Left out before any SSH to it; the launch ran across the rest with a hostfile of its own.
    assert out["preflight"] == {} and out["launched_hosts"] == ["localhost"]
    assert out["returncode"] == 0 and out["expected_ranks"] == 1 and len(out["ranks"]) == 1
    assert out["command"][out["command"].index("--hostfile") + 1] != params["hostfile"]


DAEMON = "#!%s\nimport time\ntime.sleep(60)\n"


def test_stragglers_take_the_daemons_this_launcher_started_and_leave_the_others():
    # orted carries no token: it is this launch's when it started since the launch began and
    # names this launcher (its call-back address). An older one and another launcher's stay.
    import pwd
    import tempfile
    user = pwd.getpwuid(os.geteuid())
    where = tempfile.mkdtemp()
    orted = os.path.join(where, "orted")
    with open(orted, "w") as handle:
        handle.write(DAEMON % sys.executable)
    os.chmod(orted, 0o755)

    def start(uri):
        return subprocess.Popen([orted, "-mca", "orte_hnp_uri", uri], start_new_session=True)

    old = start("1.0;tcp://10.9.8.7:4242")
    time.sleep(3.3)
    began = time.time()
    ours, theirs = start("2.0;tcp://10.9.8.7:4343"), start("3.0;tcp://10.1.1.1:4444")
    near = start("4.0;tcp://10.9.8.70:4545")  # another launcher whose address only begins like ours
    # The daemon's own ssh starting the next host's daemon (Open MPI's tree spawn): not named orted.
    spawn = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "lab-3",
                              "/usr/bin/orted -mca orte_hnp_uri 2.0;tcp://10.9.8.7:4343"], start_new_session=True)
    try:
        time.sleep(0.3)
        found = cs.stragglers(["me"], user, dict(os.environ), "lockstep-smoke-none", 5, me="me", started=began,
                              launcher_ids=["launcher-9.test", "10.9.8.7"])
        assert found == {"me": sorted([ours.pid, spawn.pid])}
        assert ours.wait(timeout=10) == -9 and spawn.wait(timeout=10) == -9
        assert old.poll() is None and theirs.poll() is None and near.poll() is None
    finally:
        for child in (old, ours, theirs, spawn, near):
            if child.poll() is None:
                child.kill()
                child.wait()


FAKE_SSH = """#!/bin/sh
# Stands in for ssh: runs the remote command here (the host is ignored), or with FAKE_SSH_PORT
# answers as a listener on that port would.
for last; do :; done
if [ -n "$FAKE_SSH_PORT" ]; then echo "$FAKE_SSH_PORT"; exit 0; fi
exec sh -c "$last"
"""


def fake_ssh(tmp_path, port=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]))
    if port:
        env["FAKE_SSH_PORT"] = str(port)
    return env


def me_user():
    import pwd
    return pwd.getpwuid(os.geteuid())


def test_inbound_check_listens_over_ssh_and_connects_both_ways(tmp_path):
    found = cs.inbound(["localhost", "127.0.0.1"], "localhost", me_user(), fake_ssh(tmp_path), 5, sys.executable)
    assert found["127.0.0.1"]["ok"] is True and found["127.0.0.1"]["from"] == "localhost"
    assert found["127.0.0.1"]["port"] > 0 and "error" not in found["127.0.0.1"]
    # This host's own inbound TCP, tried from the first other host that could be reached.
    assert found["localhost"]["ok"] is True and found["localhost"]["from"] == "127.0.0.1"


def test_inbound_check_names_a_refused_port():
    closed = socket_port()
    entry = cs.inbound_remote("127.0.0.1", "lab-1", me_user(), fake_ssh_env(closed), 5, sys.executable, limit=2)
    assert entry["ok"] is False
    assert entry["error"] == "TCP to 127.0.0.1:%d from lab-1 was refused" % closed


def test_inbound_check_names_a_port_whose_connections_time_out():
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = []
    try:
        for dummy in range(3):  # fill the accept queue: later SYNs are dropped, as a firewall would
            client = socket.socket()
            client.settimeout(0.5)
            try:
                client.connect(("127.0.0.1", port))
            except OSError:
                pass
            held.append(client)
        entry = cs.inbound_remote("127.0.0.1", "lab-1", me_user(), fake_ssh_env(port), 5, sys.executable, limit=1)
        assert entry["ok"] is False
        assert entry["error"] == "TCP to 127.0.0.1:%d from lab-1 timed out after 1s" % port
    finally:
        for client in held:
            client.close()
        server.close()


def test_inbound_check_without_a_listener_says_why_and_blames_nobody(tmp_path):
    env = fake_ssh(tmp_path)
    (tmp_path / "bin" / "ssh").write_text("#!/bin/sh\necho 'ssh: connect to host x port 22: No route to host' >&2\n"
                                          "exit 255\n")
    entry = cs.inbound_remote("x", "lab-1", me_user(), env, 5, sys.executable)
    assert entry["ok"] is None and entry["error"] == "no listener started on x: ssh: connect to host x port 22: " \
                                                     "No route to host"


def socket_port():
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def fake_ssh_env(port):
    import tempfile
    import pathlib
    return fake_ssh(pathlib.Path(tempfile.mkdtemp()), port)


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


# -- issue 17: what the rank's environment adds to the venv's Python ------------------------

def test_rank_script_names_modules_variables_their_startup_file_and_customize_files_outside_the_venv(tmp_path):
    # A shadow numpy and a sitecustomize.py on PYTHONPATH, exported from ~/.bashrc: every
    # rank reports where numpy and mpi4py came from, the variable and the line that set it.
    shadow = tmp_path / "shadow"
    (shadow / "numpy").mkdir(parents=True)
    (shadow / "numpy" / "__init__.py").write_text("__version__ = 'shadow'\n")
    (shadow / "sitecustomize.py").write_text("# runs at every start\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# comment PYTHONPATH=/nowhere\nexport PYTHONPATH=%s\n[ -z \"$PS1\" ] && return\n"
                                  % shadow)
    site = tmp_path / "site"
    (site / "mpi4py").mkdir(parents=True)
    for name, text in FAKE_MPI4PY.items():
        (site / "mpi4py" / name).write_text(text)
    member = tmp_path / "cluster.json"
    member.write_text(json.dumps({"host": "lab-9"}))
    env = dict(os.environ, PYTHONPATH="%s:%s" % (shadow, site), HOME=str(home), LD_PRELOAD="",
               OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
    done = subprocess.run([sys.executable, "-c", cs.RANK_SCRIPT, "lockstep-smoke-t", str(member)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    runtime = cs.parse_ranks(done.stdout)[0][0]["id"]["runtime"]
    assert runtime["modules"] == {"numpy": str(shadow / "numpy" / "__init__.py"),
                                  "mpi4py": str(site / "mpi4py" / "__init__.py"),
                                  "mpi4py.MPI": str(site / "mpi4py" / "MPI.py")}
    assert runtime["env"]["PYTHONPATH"] == "%s:%s" % (shadow, site) and "LD_PRELOAD" not in runtime["env"]
    # The comment line is not a source; the export is, shown under ~ as the user sees it.
    assert runtime["sources"]["PYTHONPATH"] == ["~/.bashrc:2"]
    assert {"path": str(shadow / "sitecustomize.py"), "realpath": str(shadow / "sitecustomize.py"),
            "sha256": hashlib.sha256(b"# runs at every start\n").hexdigest()} in runtime["customize"]
    assert runtime["foreign"]["sitecustomize"] == str(shadow / "sitecustomize.py")
    assert runtime["base"]["prefix"] == sys.base_prefix


def test_pam_environment_reads_key_value_lines_as_pam_env_does(tmp_path):
    path = tmp_path / "environment"
    path.write_text('# comment\nPYTHONPATH="/opt/shadow"\nexport LD_PRELOAD=/lib/x.so\nnot a line\n1BAD=x\n'
                    "PYTHONHOME='/opt/py'\n")
    assert cs.pam_environment(str(path)) == {"PYTHONPATH": "/opt/shadow", "LD_PRELOAD": "/lib/x.so",
                                             "PYTHONHOME": "/opt/py"}
    assert cs.pam_environment(str(tmp_path / "none")) == {}


def test_login_command_reads_etc_environment_then_bashrc_as_sshd_and_the_forwarded_variables_win(tmp_path):
    import pwd
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PYTHONPATH=/from/bashrc LD_LIBRARY_PATH=/from/bashrc\n"
                                  "case $- in *i*) ;; *) return;; esac\nexport PYTHONSTARTUP=/interactive-only\n")
    pam = tmp_path / "environment"
    pam.write_text("PYTHONUSERBASE=/from/pam\n")
    me = pwd.getpwuid(os.geteuid())
    user = pwd.struct_passwd((me.pw_name, "x", me.pw_uid, me.pw_gid, "", str(home), "/bin/bash"))
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    argv, env = cs.login_command(user, [sys.executable, "-c", show], {"LD_LIBRARY_PATH": "/venv/lib"}, str(pam))
    assert argv[:4] == ["/bin/bash", "-c", 'exec "$@"', "lockstep-login"]
    result = proc.run(argv, env, 30)
    assert result.rc == 0, result.err
    seen = json.loads(result.out)
    assert seen["PYTHONPATH"] == "/from/bashrc" and seen["PYTHONUSERBASE"] == "/from/pam"
    assert seen["LD_LIBRARY_PATH"] == "/venv/lib"  # what the launcher forwards overrides the login's
    assert "PYTHONSTARTUP" not in seen and "SSH_CLIENT" not in seen and seen["HOME"] == str(home)


def test_run_reports_what_the_launch_sets_itself_and_each_ranks_runtime(tmp_path):
    params = fake_cluster(tmp_path)
    out = cs.run(params, dict(os.environ))
    assert out["returncode"] == 0, out["stderr_tail"]
    # PYTHONPATH is the launch's own here (environment): the verdict does not blame it; nor the
    # library directories Open MPI adds for a launcher started by its absolute path.
    prefix = os.path.dirname(str(tmp_path))
    assert out["rank_env_expected"] == {"PYTHONPATH": str(tmp_path / "site"),
                                        "LD_LIBRARY_PATH": "%s/lib:%s/lib64" % (prefix, prefix)}
    runtime = out["ranks"][0]["id"]["runtime"]
    assert runtime["modules"]["mpi4py"] == str(tmp_path / "site" / "mpi4py" / "__init__.py")
    assert runtime["env"]["PYTHONPATH"] == str(tmp_path / "site")


def test_the_launch_env_keeps_the_env_files_library_path_and_adds_open_mpis_prefix_only():
    env = {"LD_LIBRARY_PATH": "/v/lib", "PYTHONPATH": "", "PATH": "/v/bin"}
    openmpi = {"flavor": "openmpi", "path": "/usr/bin/mpiexec", "realpath": "/usr/bin/orterun"}
    assert cs.launch_env(env, openmpi) == {"LD_LIBRARY_PATH": "/v/lib:/usr/lib:/usr/lib64"}
    assert cs.launch_env({}, {"flavor": "mpich", "path": "/usr/bin/mpiexec"}) == {}
