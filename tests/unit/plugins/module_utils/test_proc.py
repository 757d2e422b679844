"""Host side: the one subprocess runner (module_utils/proc.py)."""

import os
import sys
import time

from ansible_collections.lockstep.cluster.plugins.module_utils import proc


def test_output_and_status():
    result = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.rc, result.out, result.err, result.timed_out) == (3, "out\n", "err\n", False)
    assert proc.describe(result, "sh") == "sh exited 3"


def test_a_missing_program_is_rc_127_with_the_reason(tmp_path):
    result = proc.run([str(tmp_path / "missing")])
    assert result.rc == 127 and "cannot run" in result.err
    assert proc.describe(result, "x").startswith("cannot run")


def test_a_signal_is_named():
    result = proc.run(["sh", "-c", "kill -9 $$"])
    assert result.rc == -9
    assert proc.describe(result, "uv") == "uv was killed by SIGKILL"


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    start = time.time()
    result = proc.run(["sh", "-c", "sleep 30 & echo $! > %s; wait" % marker], timeout=1)
    assert result.timed_out and result.rc is None and time.time() - start < 10
    assert "timed out after 1s" in proc.describe(result, "mpiexec", 1)
    child = int(marker.read_text())
    time.sleep(0.2)
    # The grandchild (like an mpiexec rank) is gone too, not orphaned.
    assert not os.path.exists("/proc/%d" % child) or open("/proc/%d/stat" % child).read().split()[2] == "Z"


def test_timeout_kills_a_child_that_left_the_group_but_not_the_session():
    # As Open MPI's mpiexec does with its ssh clients (setpgid): the child holds the output
    # pipes; killing the group alone left it running and run() waiting on the pipes for good.
    child = ("import os, sys, time; os.setpgid(0, 0); print(os.getpid(), flush=True); "
             "time.sleep(60)")
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', %r]); time.sleep(60)" % child
    start = time.time()
    result = proc.run([sys.executable, "-c", script], timeout=1, grace=1)
    assert result.timed_out and time.time() - start < 8
    pid = int(result.out.split()[0])
    time.sleep(0.2)
    assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def test_first_line_and_find_executable(tmp_path):
    tool = tmp_path / "uv"
    tool.write_text("#!/bin/sh\necho 'uv 0.13.9 (abc 2025-01-01)'\n")
    tool.chmod(0o755)
    assert proc.first_line(proc.run([str(tool), "--version"])) == "uv 0.13.9 (abc 2025-01-01)"
    assert proc.first_line(proc.run([str(tmp_path / "missing")])) is None
    (tmp_path / "plain").write_text("")
    assert proc.find_executable(["plain", "uv"], [str(tmp_path)]) == str(tool)
    assert proc.find_executable(["uv"], proc.path_dirs({"PATH": "/nonexistent:%s" % tmp_path})) == str(tool)
    assert proc.find_executable(["nope"], [str(tmp_path)]) is None
