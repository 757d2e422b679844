"""plugins/action/probe.py with a stubbed host: one module run answers every section and is kept
as facts for the run; asked again in the same run it answers from them (no round trip) unless a
role changed the host since or other options are asked."""

import os
from unittest.mock import MagicMock

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.action.probe import ActionModule, MODULE
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe

UV = {"version": "0.13.9", "requirement_hashes": ["a" * 64]}
VALIDATE = {"venv": "/opt/lockstep/venv"}


class Host(object):
    def __init__(self):
        self.calls = []

    def __call__(self, module_name=None, module_args=None, task_vars=None, **_kw):
        self.calls.append((module_name, dict(module_args)))
        out = {"facts": {"os_family": "Debian", "ssh_host_key_ed25519_public": "AAAA"}}
        for name in ("uv", "validate"):
            if module_args.get(name) is not None:
                out[name] = {"digest": "x", "result": {"changed": False}} if name == "uv" else {"venv": {}}
        if "uv" in out:
            out["uv"]["digest"] = digest("uv", settings("uv", module_args["uv"])[0])
        return out


def run(args, task_vars, host):
    task = MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = False
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path.side_effect = os.path.join
    action = ActionModule(task, connection, MagicMock(), MagicMock(), MagicMock(), MagicMock())
    action._execute_module = host
    action._templar.template.side_effect = lambda value: value
    return action.run(task_vars=task_vars)


def test_one_module_run_kept_as_facts_then_reused_in_the_same_run():
    host = Host()
    first = run({"uv": UV, "validate": VALIDATE, "keep": True}, {}, host)
    assert [m for m, dummy in host.calls] == [MODULE] and first["changed"] is False
    facts = first["ansible_facts"]
    assert facts["os_family"] == "Debian" and facts["ssh_host_key_ed25519_public"] == "AAAA"
    assert facts[probe.FACT]["run"] == probe.run_id() and facts[probe.CHANGED] == {"run": probe.run_id(), "roles": []}
    again = run({"uv": UV, "validate": VALIDATE}, {"ansible_facts": facts}, host)
    assert len(host.calls) == 1 and again["reused"] and again["validate"] == first["validate"]


def test_after_a_change_or_with_other_options_the_host_is_asked_again():
    host = Host()
    facts = run({"uv": UV, "validate": VALIDATE, "keep": True}, {}, host)["ansible_facts"]
    run({"uv": UV, "validate": VALIDATE}, {"ansible_facts": dict(facts, **probe.changed_fact({}, "venv"))}, host)
    run({"uv": dict(UV, version="0.13.8"), "validate": VALIDATE}, {"ansible_facts": facts}, host)
    run({"uv": UV, "validate": dict(VALIDATE, verify_all_files=True)}, {"ansible_facts": facts}, host)
    assert len(host.calls) == 4


def test_without_keep_nothing_is_kept_and_nothing_is_reused_later():
    host = Host()
    facts = run({"uv": UV, "validate": VALIDATE}, {}, host)["ansible_facts"]
    assert probe.FACT not in facts and facts["os_family"] == "Debian"
    run({"uv": UV, "validate": VALIDATE}, {"ansible_facts": facts}, host)
    assert len(host.calls) == 2


def test_bad_role_arguments_fail_before_the_host_is_asked_and_name_the_role_and_variable():
    host = Host()
    with pytest.raises(AnsibleActionFail) as failed:
        run({"uv": UV, "role_arguments": ["uv", "venv"]}, {"venv_keep": "banana"}, host)
    assert str(failed.value).startswith("Validation of the roles' arguments failed:\nrole venv: argument 'venv_keep'")
    assert host.calls == []
    # Good ones pass, and the option is not sent to the host.
    run({"uv": UV, "role_arguments": ["venv"]}, {"venv_keep": 2}, host)
    assert len(host.calls) == 1 and "role_arguments" not in host.calls[0][1]
