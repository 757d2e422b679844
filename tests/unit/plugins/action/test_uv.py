"""plugins/action/uv.py with a stubbed ``_execute_module``: how many host round trips
each situation costs, and that check mode installs and pushes nothing."""

import hashlib
import os
from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader

from ansible_collections.lockstep.cluster.plugins.action.uv import ActionModule, MODULE
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe

HASH = "a" * 64


class Host(object):
    """Scripted module results, in order; every call is recorded."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **_kw):
        self.calls.append((module_name, dict(module_args or {})))
        return dict(self.results.pop(0))

    def modules(self):
        return [name for name, _args in self.calls]


def make_action(args, host, tmp_path, check_mode=False, diff=False):
    task = MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = check_mode
    task.diff = diff
    task.get_search_path.return_value = [str(tmp_path)]
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path.side_effect = os.path.join
    loader = DataLoader()
    loader.set_basedir(str(tmp_path))
    action = ActionModule(task, connection, MagicMock(), loader, MagicMock(), MagicMock())
    action._execute_module = host

    def make_tmp():
        connection._shell.tmpdir = "/remote/tmp"
        return "/remote/tmp"
    action._make_tmp_path = MagicMock(side_effect=make_tmp)
    action._transfer_file = MagicMock()
    action._fixup_perms2 = MagicMock()
    action._remove_tmp_path = MagicMock()
    return action


def venv_args(**over):
    args = {"version": "0.13.9", "requirement_hashes": [HASH], "packages": ["python3-venv"]}
    args.update(over)
    return args


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "uv.tar.gz"
    path.write_bytes(b"pretend this is a release archive")
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


CONVERGED = {"changed": False, "install": None, "links": [], "missing_packages": [], "needs": [],
             "msg": "uv 0.13.9 at /opt/lockstep/uv/0.13.9 is intact and linked from /usr/local/bin"}
NOT_INSTALLED = {"changed": True, "install": "not installed", "links": ["uv", "uvx"], "missing_packages": [],
                 "needs": [], "package_manager": "apt", "diff": {"before": "b\n", "after": "a\n"}}


def test_a_converged_host_costs_one_module_run(tmp_path, archive):
    host = Host(CONVERGED)
    # Even with a controller archive that does not match: it is only looked at for an install.
    args = {"version": "0.13.9", "method": "archive", "archive_src": archive[0], "archive_sha256": "b" * 64}
    result = make_action(args, host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE]
    assert result["changed"] is False and "needs" not in result
    assert host.calls[0][1] == args  # the task's arguments, nothing added


@pytest.mark.parametrize("args, message", [
    ({"version": "0.13.9"}, "no sha256 known for the uv 0.13.9 wheels"),
    ({"version": "0.13.9", "method": "archive", "archive_sha256": HASH}, "no download location is built in"),
    (venv_args(remote_archive="/tmp/x"), "remote_archive is set by the action plugin"),
    (venv_args(method="zip"), "value of method must be one of: venv, archive"),
])
def test_bad_input_fails_on_the_controller_without_a_round_trip(tmp_path, args, message):
    host = Host()
    with pytest.raises(AnsibleActionFail, match=message.replace("(", r"\(")):
        make_action(args, host, tmp_path).run(task_vars={})
    assert host.calls == []


def test_check_mode_predicts_and_installs_nothing(tmp_path):
    first = dict(NOT_INSTALLED, missing_packages=["python3-venv"], msg="would install python3-venv; install uv 0.13.9")
    host = Host(first)
    action = make_action(venv_args(), host, tmp_path, check_mode=True, diff=True)
    result = action.run(task_vars={})
    assert host.modules() == [MODULE]  # no apt, no second run
    assert result["changed"] and result["packages"] == {"changed": True, "msg": "would install python3-venv"}
    assert result["diff"] == first["diff"]
    action._transfer_file.assert_not_called()


def test_check_mode_checks_the_controller_archive(tmp_path, archive):
    host = Host(NOT_INSTALLED)
    args = {"version": "0.13.9", "method": "archive", "archive_src": archive[0], "archive_sha256": "b" * 64}
    action = make_action(args, host, tmp_path, check_mode=True)
    with pytest.raises(AnsibleActionFail, match="has sha256 %s, not archive_sha256 %s" % (archive[1], "b" * 64)):
        action.run(task_vars={})
    action._transfer_file.assert_not_called()


def test_work_the_module_can_do_alone_is_one_round_trip(tmp_path):
    host = Host(dict(NOT_INSTALLED, msg="installed uv 0.13.9; linked uv, uvx into /usr/local/bin"))
    result = make_action(venv_args(), host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE] and result["changed"]


def test_missing_packages_are_installed_then_the_module_runs_again(tmp_path):
    first = dict(NOT_INSTALLED, changed=False, missing_packages=["python3-venv"], needs=["packages"])
    second = dict(NOT_INSTALLED, diff={"before": "later\n", "after": "later\n"}, msg="installed uv 0.13.9")
    host = Host(first, {"changed": True}, second)
    result = make_action(venv_args(), host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.apt", MODULE]
    assert host.calls[1][1]["name"] == ["python3-venv"] and host.calls[1][1]["state"] == "present"
    assert result["changed"] and result["msg"] == "installed python3-venv; installed uv 0.13.9"
    assert result["missing_packages"] == ["python3-venv"]
    assert result["diff"] == first["diff"]  # the first look is the whole change


def test_only_packages_missing_is_still_a_change(tmp_path):
    first = dict(CONVERGED, missing_packages=["python3-venv"], package_manager="apt", needs=["packages"])
    host = Host(first, {"changed": True}, dict(CONVERGED))
    result = make_action(venv_args(), host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.apt", MODULE]
    assert result["changed"] is True and result["msg"] == "installed python3-venv"


def test_a_failed_package_install_stops_before_the_second_run(tmp_path):
    first = dict(NOT_INSTALLED, missing_packages=["python3-venv"], needs=["packages"])
    host = Host(first, {"failed": True, "msg": "No package matching 'python3-venv'"})
    result = make_action(venv_args(), host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE, "ansible.builtin.apt"]
    assert result["failed"] and result["msg"] == "cannot install python3-venv: No package matching 'python3-venv'"


def test_packages_still_missing_after_the_install_fail(tmp_path):
    first = dict(NOT_INSTALLED, missing_packages=["python3-venv"], needs=["packages"])
    again = dict(first, changed=False)
    result = make_action(venv_args(), Host(first, {"changed": True}, again), tmp_path).run(task_vars={})
    assert result["failed"] and result["msg"] == "python3-venv still missing after the package install"


def test_the_archive_is_checked_and_pushed_only_when_needed(tmp_path, archive):
    src, sha = archive
    first = dict(NOT_INSTALLED, changed=False, needs=["archive"])
    host = Host(first, dict(NOT_INSTALLED, msg="installed uv 0.13.9"))
    args = {"version": "0.13.9", "method": "archive", "archive_src": src, "archive_sha256": "sha256:" + sha}
    action = make_action(args, host, tmp_path)
    result = action.run(task_vars={})
    assert host.modules() == [MODULE, MODULE] and result["changed"]
    action._transfer_file.assert_called_once_with(src, "/remote/tmp/uv.tar.gz")
    assert "remote_archive" not in host.calls[0][1]
    assert host.calls[1][1]["remote_archive"] == "/remote/tmp/uv.tar.gz"
    action._remove_tmp_path.assert_called_once_with("/remote/tmp")


def test_a_wrong_controller_archive_is_never_pushed(tmp_path, archive):
    host = Host(dict(NOT_INSTALLED, changed=False, needs=["archive"]))
    args = {"version": "0.13.9", "method": "archive", "archive_src": archive[0], "archive_sha256": "c" * 64}
    action = make_action(args, host, tmp_path)
    with pytest.raises(AnsibleActionFail, match="not archive_sha256"):
        action.run(task_vars={})
    assert host.modules() == [MODULE]
    action._transfer_file.assert_not_called()


def test_a_missing_controller_archive(tmp_path):
    host = Host(dict(NOT_INSTALLED, changed=False, needs=["archive"]))
    args = {"version": "0.13.9", "method": "archive", "archive_src": "nope.tar.gz", "archive_sha256": HASH}
    with pytest.raises(AnsibleActionFail, match="archive_src nope.tar.gz not found on the controller"):
        make_action(args, host, tmp_path).run(task_vars={})


def test_a_failing_module_is_returned_as_is(tmp_path):
    host = Host({"failed": True, "msg": "pip could not install uv==0.13.9: pip exited 1", "needs": []})
    result = make_action(venv_args(), host, tmp_path).run(task_vars={})
    assert host.modules() == [MODULE] and result["failed"] and result["msg"].startswith("pip could not")


def probed(args, result):
    """task_vars holding this run's probe answer for ``args``."""
    params, error = settings("uv", args)
    assert error is None
    return {"ansible_facts": {probe.FACT: {"run": probe.run_id(), "sections": {
        "uv": {"digest": digest("uv", params), "result": result}}}}}


CONVERGED = {"changed": False, "uv": "/usr/local/bin/uv", "version": "0.13.9", "needs": [], "missing_packages": []}


def test_this_runs_probe_answers_a_converged_host_without_a_round_trip(tmp_path):
    host = Host()
    result = make_action(venv_args(), host, tmp_path).run(task_vars=probed(venv_args(), CONVERGED))
    assert host.calls == [] and result["changed"] is False
    assert result["ansible_facts"] == {"uv_executable": "/usr/local/bin/uv"}


def test_check_mode_predicts_from_the_probe_and_a_real_run_applies(tmp_path):
    would = dict(CONVERGED, changed=True, install="bin/uv modified", msg="would rebuild uv 0.13.9")
    host = Host()
    predicted = make_action(venv_args(), host, tmp_path, check_mode=True).run(task_vars=probed(venv_args(), would))
    assert host.calls == [] and predicted["changed"] and predicted["msg"] == "would rebuild uv 0.13.9"
    host = Host(dict(would, msg="rebuilt uv 0.13.9"))
    done = make_action(venv_args(), host, tmp_path).run(task_vars=probed(venv_args(), would))
    assert host.modules() == [MODULE] and done["changed"]
    # Later roles and the audit must ask this host again.
    assert done["ansible_facts"][probe.CHANGED]["roles"] == ["uv"]


def test_an_answer_to_other_options_is_not_reused(tmp_path):
    host = Host(CONVERGED)
    make_action(venv_args(version="0.13.8"), host, tmp_path).run(task_vars=probed(venv_args(), CONVERGED))
    assert host.modules() == [MODULE]
