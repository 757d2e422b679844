"""Host side of the cluster smoke test (module_utils/cluster_smoke.py): hostfiles in both
syntaxes, the launch command per flavor, rank reports grouped per host, the rank script itself
(run for real against a stand-in mpi4py), and a timed-out launch stopped with SIGTERM first."""

import json
import os
import subprocess
import sys
import textwrap
import time

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
    (etc / "hostfile").write_text("# one host\nme slots=1\n")
    (etc / "cluster.json").write_text(json.dumps({"host": "me", "name": "me"}))
    import pwd
    return {"venv": str(venv), "user": pwd.getpwuid(os.geteuid()).pw_name, "hostfile": str(etc / "hostfile"),
            "hosts": ["me"], "launcher": str(launcher), "env_file": None, "preflight": True, "ssh_timeout": 5,
            "timeout": 30, "grace": 2, "environment": {"PYTHONPATH": str(tmp_path / "site")}}


def test_run_launches_the_venv_python_and_collects_the_ranks(tmp_path):
    out = cs.run(fake_cluster(tmp_path), dict(os.environ))
    assert out["launcher"]["flavor"] == "openmpi" and out["launched_hosts"] == ["me"]
    # The launching host needs no SSH to itself.
    assert out["preflight"] == {} and out["returncode"] == 0 and out["expected_ranks"] == 1
    assert [sorted(r) for r in out["ranks"]] == [["done", "id", "init"]]
    assert out["ranks"][0]["id"]["member"] == "me"
    assert "--hostfile" in out["command"] and "-x" in out["command"] and "PYTHONPATH" in out["command"]
    assert out["total_seconds"] >= out["seconds"]


def test_run_names_hosts_missing_from_the_hostfile_and_a_missing_venv(tmp_path):
    params = dict(fake_cluster(tmp_path), hosts=["me", "ghost"])
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
