"""plugins/action/cluster_smoke.py with a stubbed host: every member runs the task, the action
elects the launching host by plugin_utils.validate.elect, and only that host costs a module run."""

import os
from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.action.cluster_smoke import ActionModule, MODULE

ARGS = {"members": ["n1", "n2", "n3"], "venv": "/opt/lockstep/venv"}


def probe(flavor):
    return {"changed": False, "validate": {"mpi": {"launcher": {"flavor": flavor, "version": "1"}}}}


def hostvars(*flavors):
    out = {}
    for i, flavor in enumerate(flavors, 1):
        out["n%d" % i] = {"_validate_probe": probe(flavor) if flavor else {"unreachable": True},
                          "cluster_address": "10.0.0.%d" % i}
    return out


def run_on(me, hv, args=None):
    calls = []

    def execute(module_name=None, module_args=None, task_vars=None, **_kw):
        calls.append((module_name, dict(module_args)))
        return {"expected_ranks": len(module_args["hosts"]), "returncode": 0}

    task = MagicMock()
    task.args = dict(ARGS if args is None else args)
    task.async_val = 0
    task.check_mode = False
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path.side_effect = os.path.join
    templar = MagicMock()
    templar.template.side_effect = lambda value: value
    action = ActionModule(task, connection, MagicMock(), MagicMock(), templar, MagicMock())
    action._execute_module = execute
    return action.run(task_vars={"hostvars": hv, "inventory_hostname": me}), calls


def test_only_the_elected_host_launches_the_others_cost_no_round_trip():
    hv = hostvars("mpich", "openmpi", "openmpi")
    results = dict((me, run_on(me, hv)) for me in ("n1", "n2", "n3"))
    assert [me for me, (res, calls) in results.items() if calls] == ["n2"]
    launched, calls = results["n2"]
    assert launched["launched"] and launched["launch_host"] == "n2" and calls[0][0] == MODULE
    # Every member the controller checked gets a rank, by the name the hostfile gives it.
    assert calls[0][1]["hosts"] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [m["aliases"] for m in launched["members"]][0] == ["10.0.0.1", "n1"]
    skipped, none = results["n1"]
    assert skipped["skipped"] and skipped["msg"] == "launched from n2" and none == []


def test_members_the_controller_could_not_check_get_no_rank():
    launched, calls = run_on("n2", hostvars(None, "openmpi", "openmpi"))
    assert launched["launch_host"] == "n2" and calls[0][1]["hosts"] == ["10.0.0.2", "10.0.0.3"]


def test_nothing_checked_nothing_launched_and_it_says_why():
    hv = hostvars(None, None, None)
    results = [run_on(me, hv) for me in ("n1", "n2", "n3")]
    assert all(not calls and res["skipped"] for res, calls in results)
    assert results[0][0]["msg"] == "no member was checked: nothing to launch on"


def test_bad_shared_dirs_fail_on_every_member_before_anyone_launches():
    hv = hostvars("openmpi", "openmpi", "openmpi")
    for me in ("n1", "n2", "n3"):
        with pytest.raises(AnsibleActionFail, match="shared_dirs: data is not an absolute path"):
            run_on(me, hv, dict(ARGS, shared_dirs=["/mnt/ok", "data"]))
        with pytest.raises(AnsibleActionFail, match="shared_min_free: 'lots' is not a size"):
            run_on(me, hv, dict(ARGS, shared_dirs=["/mnt/ok"], shared_min_free="lots"))


def test_shared_dirs_reach_the_launching_hosts_module():
    launched, calls = run_on("n1", hostvars("openmpi", "openmpi", "openmpi"),
                             dict(ARGS, shared_dirs=["/mnt/data"], shared_min_free="2G"))
    assert launched["launched"] and calls[0][1]["shared_dirs"] == ["/mnt/data"]
    assert calls[0][1]["shared_min_free"] == "2G"


def test_a_machine_listed_twice_votes_and_launches_once_under_its_first_name():
    # n3 is n2 again (another inventory name, the same ansible_host and SSH host key): one
    # launch across n1 and n2, and n3 marked with both names for the verdict.
    hv = hostvars("mpich", "openmpi", "openmpi")
    for name, key in (("n1", "AAAAC3NzaC1lZDI1NTE5AAAAIOne"), ("n2", "AAAAC3NzaC1lZDI1NTE5AAAAITwo"),
                      ("n3", "AAAAC3NzaC1lZDI1NTE5AAAAITwo")):
        hv[name]["ansible_facts"] = {"ssh_host_key_ed25519_public": key, "machine_id": "same-image"}
    hv["n3"]["ansible_host"] = hv["n2"]["ansible_host"] = "node-2"
    launched, calls = run_on("n1", hv)
    # Without n3's vote the families tie one to one: the first host's (mpich, n1) is elected.
    assert launched["election"] == {"host": "n1", "family": "mpich", "counts": {"mpich": 1, "openmpi": 1}}
    assert calls[0][1]["hosts"] == ["10.0.0.1", "10.0.0.2"]
    marked = dict((m["host"], m.get("same_as")) for m in launched["members"])
    assert marked == {"n1": None, "n2": None, "n3": "n2"}
    assert launched["members"][2]["same_by"].startswith("same SSH host key ed25519 SHA256:")
