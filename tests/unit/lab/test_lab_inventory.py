"""inventories/lab: the lock the lab syncs and audits (make demo/drift LOCK=smoke|mlperf)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ansible_env, REPO

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
WANTED = "{{ {'lock': venv_lockfile | basename, 'wheelhouse': venv_wheelhouse_dir, " \
         "'find_links': venv_wheelhouse_find_links, 'imports': venv_validate_imports} }}"


def lab_vars(tmp_path, *extra, **env):
    """What the lab's group_vars give lab-1 (debug runs on the controller: no container needed)."""
    argv = [ANSIBLE, "lab-1", "-i", os.path.join(REPO, "inventories", "lab"), "-m", "ansible.builtin.debug",
            "-a", "msg=%s" % WANTED] + list(extra)
    run = subprocess.run(argv, cwd=str(tmp_path), env=ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                                                  ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", **env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["lab-1"]["msg"]


def test_smoke_is_the_default_and_needs_no_wheelhouse(tmp_path):
    assert lab_vars(tmp_path) == {"lock": "smoke-cpu.txt", "wheelhouse": "", "find_links": [], "imports": []}


@pytest.mark.parametrize("wheels, expected", [(None, "/opt/wheels"), ("/srv/torch-cpu", "/srv/torch-cpu")])
def test_mlperf_takes_torch_from_the_controller_wheelhouse(tmp_path, monkeypatch, wheels, expected):
    monkeypatch.delenv("LOCKSTEP_WHEELS", raising=False)
    env = {} if wheels is None else {"LOCKSTEP_WHEELS": wheels}
    got = lab_vars(tmp_path, "-e", "lab_lock=mlperf", **env)
    assert got == {"lock": "mlperf-storage-cpu.txt", "wheelhouse": "/opt/lockstep/wheelhouse", "find_links": [expected],
                   "imports": ["dlio_benchmark", "torch", "tensorflow"]}
