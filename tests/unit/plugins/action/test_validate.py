"""plugins/action/validate.py: run once on the controller, every host's registered probe judged,
the reports written, and the run failed here (and only here) with each host and its cause in
the task's own message."""

import copy
import json
import os
from unittest.mock import MagicMock

import pytest

from ansible_collections.lockstep.cluster.plugins.action.validate import ActionModule

from helpers import ENV_311, host_facts

DISTS = [{"name": "numpy", "version": "1.26.4", "tampered": []}]
MPI = {"mpi4py_version": None, "verdict": "unknown", "reasons": ["mpi4py is not installed in the venv"],
       "raw": {"import_error": "No module named 'mpi4py'"}, "library": {}, "launcher": {}, "smoke": None}


def hostvars(**override):
    good = {"changed": False, "validate": host_facts(copy.deepcopy(DISTS), env=ENV_311, mpi=copy.deepcopy(MPI))}
    hv = {"n1": {"_validate_probe": copy.deepcopy(good)}, "n2": {"_validate_probe": copy.deepcopy(good)}}
    for host, probe in override.items():
        hv[host] = {"_validate_probe": probe}
    return hv


def run(tmp_path, hv, **args):
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==1.26.4\n")
    task = MagicMock()
    task.args = dict({"hosts": sorted(hv), "lockfile": str(lock), "dest": str(tmp_path / "reports"), "run_id": "r",
                      "cluster_smoke": False}, **args)
    task.async_val = 0
    task.check_mode = False
    templar = MagicMock()
    templar.template.side_effect = lambda value: value
    action = ActionModule(task, MagicMock(), MagicMock(), MagicMock(), templar, MagicMock())
    return action.run(task_vars={"hostvars": hv})


def test_clean_hosts_pass_and_the_reports_are_written(tmp_path):
    result = run(tmp_path, hostvars(), fail_on_drift=True)
    assert not result.get("failed") and result["statuses"] == {"n1": "ok", "n2": "ok"}
    assert os.path.isfile(os.path.join(result["directory"], "summary.md"))


@pytest.mark.parametrize("fail_on_drift", [True, False])
def test_drift_fails_the_run_here_only_when_asked_and_names_the_host_and_cause(tmp_path, fail_on_drift):
    bad = {"changed": False, "validate": host_facts([{"name": "numpy", "version": "2.0.0", "tampered": []}],
                                                    env=ENV_311, mpi=copy.deepcopy(MPI))}
    result = run(tmp_path, hostvars(n2=bad, n3={"unreachable": True, "msg": "ssh: connect to host n3: refused"}),
                 fail_on_drift=fail_on_drift)
    assert bool(result.get("failed")) is fail_on_drift
    assert result["drifted_hosts"] == ["n2"] and result["unreachable_hosts"] == ["n3"]
    if fail_on_drift:
        assert "- n2: drift: version numpy: 2.0.0 installed, 1.26.4 locked" in result["msg"]
        assert "- n3: unreachable: ssh: connect to host n3: refused" in result["msg"]
    with open(os.path.join(result["directory"], "cluster.json")) as handle:
        assert json.load(handle)["failed_hosts"] == ["n2"]


def test_a_cluster_launch_that_was_asked_for_and_never_ran_fails(tmp_path):
    hv = hostvars()
    for host in hv:
        hv[host]["_validate_cluster"] = {"skipped": True, "msg": "launched from n9"}
    result = run(tmp_path, hv, cluster_smoke=True, fail_on_drift=True)
    assert result["failed"] and "cluster smoke test not run: launched from n9" in result["msg"]
