"""plugins/action/venv.py with a stubbed host: how many module
runs a converged, a changing and a check-mode sync cost, and what is refused before the host
is asked anything."""

from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader

from ansible_collections.lockstep.cluster.plugins.action.venv import ActionModule
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe
from ansible_collections.lockstep.cluster.plugins.plugin_utils.venv import prepare

from helpers import lock_text

MARKERS_311 = {"implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix",
               "platform_machine": "x86_64", "platform_python_implementation": "CPython",
               "platform_release": "6.1", "platform_system": "Linux", "platform_version": "#1",
               "python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux"}
LOCK = lock_text([("alpha", "1.0", "a" * 64), ("beta", "2.0", "b" * 64)],
                 flags="--universal --python-version 3.11 --generate-hashes") + \
    "gamma==3.0 ; python_version >= '3.12' \\\n    --hash=sha256:%s\n" % ("c" * 64)


def plan(action="none", **extra):
    result = {"changed": False, "stage": "plan", "action": action, "venv": "/s/v-1", "previous": "/s/v-0",
              "key": "k", "drift": False, "tampered": [], "missing_packages": [], "package_manager": "apt",
              "python": {"executable": "/usr/bin/python3", "version": "3.11.2", "marker_environment": MARKERS_311},
              "commands": []}
    result.update(extra)
    return result


class Host(object):
    """Stands in for the host: records every module run and answers from a script."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []
        self.pushed = []

    def execute(self, module_name=None, module_args=None, task_vars=None, **_kwargs):
        self.calls.append((module_name, dict(module_args)))
        return self.answers.pop(0)


def action(tmp_path, host, check_mode=False, diff=False, **args):
    lockfile = tmp_path / "lock.txt"
    lockfile.write_text(args.pop("text", LOCK))
    task = MagicMock()
    task.args = dict({"lockfile": str(lockfile), "uv": "/usr/local/bin/uv", "path": "/opt/venv",
                      "store": "/opt/venvs"}, **args)
    task.async_val = 0
    task.check_mode = check_mode
    task.diff = diff
    task.get_search_path.return_value = [str(tmp_path)]
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path = lambda *parts: "/".join(parts)
    loader = DataLoader()
    loader.set_basedir(str(tmp_path))
    plugin = ActionModule(task, connection, MagicMock(), loader, MagicMock(), MagicMock())
    plugin._execute_module = host.execute

    def make_tmp():
        connection._shell.tmpdir = "/tmp/ansible-tmp-1"
        return connection._shell.tmpdir

    plugin._make_tmp_path = make_tmp
    plugin._transfer_file = lambda src, dest: host.pushed.append((src, dest))
    plugin._fixup_perms2 = lambda paths: None
    plugin._remove_tmp_path = lambda path: host.pushed.append(("removed", path))
    return plugin


def test_converged_host_costs_one_module_run_and_no_push(tmp_path):
    host = Host(plan("none"))
    result = action(tmp_path, host).run(task_vars={})
    assert result["changed"] is False and result["changes"] == []
    assert len(host.calls) == 1 and host.calls[0][1]["stage"] == "plan"
    assert host.pushed == []
    # The lock reaches the host as its sha256, never as content.
    assert "lock_content" not in host.calls[0][1] and len(host.calls[0][1]["lockfile_sha256"]) == 64


def test_a_change_pushes_the_lock_file_once_and_applies(tmp_path):
    applied = plan("build", stage="apply", changed=True, before={"alpha": "0.9"}, after={"alpha": "1.0", "beta": "2.0"},
                   built=True, pruned=[])
    host = Host(plan("build", before={"alpha": "0.9"}), applied)
    result = action(tmp_path, host, diff=True).run(task_vars={})
    assert [c[1]["stage"] for c in host.calls] == ["plan", "apply"]
    apply_args = host.calls[1][1]
    assert apply_args["remote_lockfile"] == "/tmp/ansible-tmp-1/lockfile.txt"
    assert host.pushed[0] == (str(tmp_path / "lock.txt"), "/tmp/ansible-tmp-1/lockfile.txt")
    assert host.pushed[-1] == ("removed", "/tmp/ansible-tmp-1")
    # The package set for this host's Python, from packaging: gamma's marker does not hold on 3.11.
    assert apply_args["expected"] == {"alpha": "1.0", "beta": "2.0"}
    assert result["changed"] is True
    assert {"name": "alpha", "version": "0.9", "action": "uninstalled"} in result["changes"]
    assert "beta==2.0" in result["diff"]["after"]


def test_check_mode_predicts_from_the_lock_and_never_pushes(tmp_path):
    host = Host(plan("build", before={}))
    result = action(tmp_path, host, check_mode=True, diff=True).run(task_vars={})
    assert len(host.calls) == 1 and host.pushed == []
    assert result["changed"] is True
    assert sorted((c["name"], c["version"], c["action"]) for c in result["changes"]) == [
        ("alpha", "1.0", "installed"), ("beta", "2.0", "installed")]


def test_markers_follow_the_hosts_python(tmp_path):
    markers = dict(MARKERS_311, python_version="3.13", python_full_version="3.13.5")
    host = Host(plan("build", before={}, python={"executable": "/usr/bin/python3", "version": "3.13.5",
                                                 "marker_environment": markers}))
    result = action(tmp_path, host, check_mode=True).run(task_vars={})
    assert ("gamma", "3.0", "installed") in [(c["name"], c["version"], c["action"]) for c in result["changes"]]


def test_policy_violations_are_refused_before_the_host_is_asked(tmp_path):
    host = Host()
    with pytest.raises(AnsibleActionFail) as err:
        action(tmp_path, host, text="torch==2.13.0 \\\n    --hash=sha256:%s\nsix==1.0\n" % ("d" * 64)).run(task_vars={})
    assert "torch" in str(err.value) and "six: no --hash" in str(err.value)
    assert host.calls == []


def test_a_lock_for_another_python_is_refused_before_anything_changes(tmp_path):
    text = lock_text([("alpha", "1.0", "a" * 64)], flags="--python-version 3.12 --generate-hashes")
    host = Host(plan("build", before={}))
    with pytest.raises(AnsibleActionFail) as err:
        action(tmp_path, host, text=text).run(task_vars={})
    assert "serves Python ==3.12.*" in str(err.value) and "3.11.2" in str(err.value)
    assert [c[1]["stage"] for c in host.calls] == ["plan"] and host.pushed == []


def test_missing_packages_are_installed_by_the_distributions_module(tmp_path):
    host = Host(plan("build", before={}, missing_packages=["gcc"]),
                {"changed": True},
                plan("build", stage="apply", changed=True, before={}, after={"alpha": "1.0", "beta": "2.0"}))
    result = action(tmp_path, host, packages=["gcc", "python3-dev"]).run(task_vars={})
    assert [c[0] for c in host.calls] == ["lockstep.cluster.venv", "ansible.builtin.apt", "lockstep.cluster.venv"]
    assert host.calls[1][1]["name"] == ["gcc"] and host.calls[1][1]["update_cache"] is True
    assert result["changed"] is True


@pytest.mark.parametrize("internal", ["stage", "expected", "remote_lockfile", "lockfile_sha256"])
def test_internal_options_cannot_be_set_by_a_task(tmp_path, internal):
    with pytest.raises(AnsibleActionFail) as err:
        action(tmp_path, Host(), **{internal: "x" if internal != "expected" else {"a": "1"}}).run(task_vars={})
    assert internal in str(err.value)


def test_a_failed_plan_is_returned_as_the_hosts_error(tmp_path):
    host = Host({"failed": True, "msg": "cannot run the venv base Python 'python9'", "kind": "python"})
    result = action(tmp_path, host).run(task_vars={})
    assert result["failed"] is True and "python9" in result["msg"]
    assert len(host.calls) == 1


def probed(plugin, answer):
    """task_vars with this run's probe answer to exactly what ``plugin`` will ask (the lock's
    sha256 worked out on the controller as the probe's action plugin does)."""
    params, error = settings("venv", plugin._task.args)
    assert error is None, error
    prepared = prepare(plugin, params, {})
    asked, error = settings("venv", dict(plugin._task.args, **prepared["module_overrides"]))
    return {"ansible_facts": {probe.FACT: {"run": probe.run_id(), "sections": {
        "venv": {"digest": digest("venv", asked), "result": answer}}}}}


def test_this_runs_probe_answers_a_converged_venv_without_a_round_trip(tmp_path):
    host = Host()
    plugin = action(tmp_path, host)
    result = plugin.run(task_vars=probed(plugin, plan("none")))
    assert host.calls == [] and host.pushed == [] and result["changed"] is False
    assert result["ansible_facts"]["venv_current"] == "/s/v-1" and probe.CHANGED not in result["ansible_facts"]


def test_a_probe_that_saw_drift_goes_straight_to_the_apply(tmp_path):
    applied = plan("build", stage="apply", changed=True, after={"alpha": "1.0", "beta": "2.0"}, built=True, pruned=[])
    host = Host(applied)
    plugin = action(tmp_path, host)
    result = plugin.run(task_vars=probed(plugin, plan("build", before={"alpha": "0.9"})))
    assert [c[1]["stage"] for c in host.calls] == ["apply"] and result["changed"]
    assert result["ansible_facts"][probe.CHANGED]["roles"] == ["venv"]


def test_another_lock_than_the_probe_asked_about_is_asked_again(tmp_path):
    host = Host(plan("none"))
    plugin = action(tmp_path, host)
    task_vars = probed(plugin, plan("none"))
    (tmp_path / "lock.txt").write_text(LOCK.replace("gamma==3.0", "gamma==3.1"))
    plugin.run(task_vars=task_vars)
    assert [c[1]["stage"] for c in host.calls] == ["plan"]


@pytest.mark.parametrize("rc, signal_name", [(137, "SIGKILL"), (143, "SIGTERM"), (-9, "SIGKILL")])
def test_a_module_killed_on_the_host_is_named_killed(tmp_path, rc, signal_name):
    dead = {"failed": True, "rc": rc, "module_stdout": "", "module_stderr": "Killed",
            "msg": "Module result deserialization failed: No start of json char found"}
    host = Host(plan("build"), dead)
    result = action(tmp_path, host).run(task_vars={})
    assert result["failed"] and result["kind"] == "killed" and result["signal"] == signal_name
    assert result["msg"].startswith("lockstep.cluster.venv was killed by %s on the host while it built a new venv "
                                    "for /opt/venv" % signal_name)
    assert result["msg"].endswith("/opt/venv still points at a complete, sealed venv (the flip is one rename) and "
                                  "the next run removes any half-built one in /opt/venvs")
    assert "deserialization" not in result["msg"]
