"""roles/uv end to end on this machine (connection local, into a temp dir): the real
lockstep.cluster.uv with method venv, the real python3 -m venv and pip with this
machine's pip configuration (its index or proxy and CA bundle), the role's hash table.

Install, converge, then the broken-uv case: bin/uv replaced by a failing script is found by
its RECORD hash, predicted in check mode without a write, and rebuilt.
"""

import os
import subprocess

from helpers import BASE_PYTHON, play_role, task_results

VERSION = "0.13.9"


def play(tmp_path, check=False, all_tasks=False):
    variables = {"uv_version": VERSION, "uv_install_root": str(tmp_path / "root"), "uv_bin_dir": str(tmp_path / "bin"),
                 "uv_python": BASE_PYTHON}
    stats, results = task_results(play_role(tmp_path, "uv", variables, check=check, python=BASE_PYTHON))
    # Task names carry the role's prefix ("lockstep.cluster.uv : Install uv ...").
    tasks = dict((name.split(" : ")[-1], res) for name, res in results)
    result = (stats, tasks["Install uv %s" % VERSION])
    return result + (tasks,) if all_tasks else result


def tree(path):
    out = []
    for root, dirs, files in os.walk(str(path)):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            st = os.lstat(full)
            out.append((full, st.st_size, st.st_mtime_ns, os.readlink(full) if os.path.islink(full) else None))
    return sorted(out)


def uv_version(tmp_path):
    return subprocess.run([str(tmp_path / "bin" / "uv"), "--version"], stdout=subprocess.PIPE, check=False,
                          universal_newlines=True).stdout.split()[:2]


def test_install_converge_and_rebuild_a_broken_uv(tmp_path):
    stats, task, tasks = play(tmp_path, all_tasks=True)
    assert stats["failures"] == 0, task
    assert stats["changed"] == 1 and task["install"] == "not installed"
    assert uv_version(tmp_path) == ["uv", VERSION]
    assert task["ansible_facts"]["uv_executable"] == str(tmp_path / "bin" / "uv")

    stats, task = play(tmp_path)
    assert stats["changed"] == 0 and stats["failures"] == 0, task

    (tmp_path / "root" / VERSION / "bin" / "uv").write_text("#!/bin/sh\nexit 1\n")
    broken = tree(tmp_path / "root") + tree(tmp_path / "bin")
    stats, task = play(tmp_path, check=True)
    assert stats["changed"] == 1 and stats["failures"] == 0, task
    assert task["msg"].startswith("would rebuild uv %s at %s: bin/uv modified" % (VERSION, tmp_path / "root" / VERSION))
    assert tree(tmp_path / "root") + tree(tmp_path / "bin") == broken  # check mode wrote nothing

    stats, task = play(tmp_path)
    assert stats["changed"] == 1 and stats["failures"] == 0, task
    assert task["install"] == "bin/uv modified (sha256 differs from the uv wheel's RECORD)"
    assert uv_version(tmp_path) == ["uv", VERSION]
