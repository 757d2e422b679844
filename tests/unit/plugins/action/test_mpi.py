"""plugins/action/mpi.py with a stubbed ``_execute_module``: a converged host costs one
module run, missing packages cost an install and a second run, check mode installs nothing."""

import os
from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.action.mpi import ActionModule, MODULE
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe

RUNTIME = {"flavor": "mpich", "version": "4.0.2", "consistent": True, "env": {"MPI4PY_MPIABI": "mpich"}}
ARGS = {"flavor": "mpich", "packages": ["mpich", "libmpich-dev"], "alternatives": ["mpi", "mpirun"]}


class Host(object):
    def __init__(self, *results):
        self.results = list(results)
        self.calls = []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **_kw):
        self.calls.append((module_name, dict(module_args or {})))
        return dict(self.results.pop(0))

    def modules(self):
        return [name for name, _args in self.calls]


def make_action(host, args=None, check_mode=False):
    task = MagicMock()
    task.args = dict(ARGS if args is None else args)
    task.async_val = 0
    task.check_mode = check_mode
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path.side_effect = os.path.join
    action = ActionModule(task, connection, MagicMock(), MagicMock(), MagicMock(), MagicMock())
    action._execute_module = host
    action._transfer_file = MagicMock()
    return action


def test_a_converged_host_costs_one_module_run():
    host = Host({"changed": False, "missing_packages": [], "needs": [], "runtime": RUNTIME})
    result = make_action(host).run(task_vars={})
    assert host.modules() == [MODULE] and result["changed"] is False and result["runtime"] == RUNTIME
    assert "needs" not in result and host.calls[0][1] == ARGS


def test_a_switch_without_new_packages_is_still_one_run():
    host = Host({"changed": True, "missing_packages": [], "needs": [], "runtime": RUNTIME, "alternatives": [{}]})
    assert make_action(host).run(task_vars={})["changed"] and host.modules() == [MODULE]


def test_check_mode_predicts_the_install_and_runs_nothing_else():
    first = {"changed": True, "missing_packages": ["libmpich-dev"], "package_manager": "apt", "needs": [],
             "runtime": dict(RUNTIME, consistent=False)}
    host = Host(first)
    result = make_action(host, check_mode=True).run(task_vars={})
    assert host.modules() == [MODULE]
    assert result["changed"] and result["packages"] == {"changed": True, "msg": "would install libmpich-dev"}
    assert "failed" not in result


def test_missing_packages_are_installed_then_the_module_runs_again():
    first = {"changed": False, "missing_packages": ["mpich", "libmpich-dev"], "package_manager": "apt",
             "needs": ["packages"], "diff": {"before": "packages missing: mpich, libmpich-dev\n",
                                             "after": "packages installed: mpich, libmpich-dev\n"}}
    second = {"changed": True, "missing_packages": [], "needs": [], "runtime": RUNTIME, "msg": "mpich 4.0.2 selected",
              "diff": {"before": "mpi: a (auto)\n", "after": "mpi: b (manual)\n"}}
    host = Host(first, {"changed": True}, second)
    result = make_action(host).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.apt", MODULE]
    assert host.calls[1][1]["name"] == ["mpich", "libmpich-dev"]
    assert host.calls[2][1] == ARGS
    assert result["changed"] and result["runtime"] == RUNTIME
    assert result["msg"] == "installed mpich, libmpich-dev; mpich 4.0.2 selected"
    assert result["missing_packages"] == ["mpich", "libmpich-dev"]
    assert result["diff"] == {"before": "packages missing: mpich, libmpich-dev\nmpi: a (auto)\n",
                              "after": "packages installed: mpich, libmpich-dev\nmpi: b (manual)\n"}


def test_a_failed_install_stops_before_the_second_run():
    first = {"changed": False, "missing_packages": ["mpich"], "package_manager": "dnf", "needs": ["packages"]}
    host = Host(first, {"failed": True, "msg": "No package mpich available."})
    result = make_action(host).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.dnf"]
    assert result["failed"] and result["msg"] == "cannot install mpich: No package mpich available."


def test_packages_still_missing_after_the_install_fail():
    first = {"changed": False, "missing_packages": ["mpich"], "package_manager": None, "needs": ["packages"]}
    host = Host(first, {"changed": True}, dict(first))
    result = make_action(host).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.package", MODULE]
    assert result["failed"] and result["msg"] == "mpich still missing after the package install"


def test_a_failed_selection_is_returned_with_the_runtime():
    host = Host({"failed": True, "msg": "mpich is not consistently selected: mpiexec is openmpi, not mpich",
                 "runtime": dict(RUNTIME, consistent=False), "needs": []})
    result = make_action(host).run(task_vars={})
    assert host.modules() == [MODULE] and result["failed"] and result["runtime"]["consistent"] is False


def test_bad_arguments_fail_without_a_round_trip():
    host = Host()
    with pytest.raises(AnsibleActionFail, match="value of flavor must be one of: openmpi, mpich"):
        make_action(host, dict(ARGS, flavor="intel")).run(task_vars={})
    assert host.calls == []


def probed(args, result):
    params, error = settings("mpi", args)
    assert error is None, error
    return {"ansible_facts": {probe.FACT: {"run": probe.run_id(), "sections": {
        "mpi": {"digest": digest("mpi", params), "result": result}}}}}


def test_this_runs_probe_answers_a_converged_host_and_exposes_the_runtime():
    host = Host()
    result = make_action(host).run(task_vars=probed(ARGS, {"changed": False, "runtime": RUNTIME}))
    assert host.calls == [] and result["changed"] is False
    assert result["ansible_facts"] == {"mpi_runtime": RUNTIME}


def test_a_switch_the_probe_saw_is_applied_with_one_run_and_marks_the_host():
    would = {"changed": True, "missing_packages": [], "runtime": RUNTIME, "alternatives": [{}]}
    host = Host(dict(would, needs=[]))
    result = make_action(host).run(task_vars=probed(ARGS, would))
    assert host.modules() == [MODULE] and result["changed"]
    assert result["ansible_facts"][probe.CHANGED]["roles"] == ["mpi"]
