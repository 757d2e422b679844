"""plugins/plugin_utils/probe.py: when a role may reuse this run's probe answer instead of asking
its host (same run, same options, nothing changed since), and the change mark."""

import os

from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe

UV = {"version": "0.13.9", "requirement_hashes": ["a" * 64]}


def answer(run=None, **sections):
    found = {}
    for name, given in sections.items():
        params, error = settings(name, given)
        assert error is None, error
        found[name] = {"digest": digest(name, params), "result": {"changed": False}}
    return {probe.FACT: {"run": run or probe.run_id(), "sections": found}}


def test_the_run_is_this_playbook_process():
    assert probe.run_id() == probe.run_id()
    assert probe.run_id().startswith("%d-" % os.getppid())


def test_same_options_reuse_the_answer_and_spelled_defaults_do_not_matter():
    facts = {"ansible_facts": answer(uv=UV)}
    assert probe.section(facts, "uv", dict(UV, method="venv", install_root="/opt/lockstep/uv")) is not None
    assert probe.section(facts, "uv", dict(UV, version="0.13.8")) is None
    # Options the host is not asked about (set per apply, or controller-only) do not count.
    assert probe.section(facts, "uv", dict(UV, remote_archive="/tmp/x")) is not None


def test_an_answer_from_another_run_or_after_a_change_is_never_reused():
    assert probe.section({"ansible_facts": answer(run="1-2", uv=UV)}, "uv", UV) is None
    facts = {"ansible_facts": dict(answer(uv=UV), **probe.changed_fact({}, "mpi"))}
    assert probe.section(facts, "uv", UV) is None and probe.current(facts) is None
    assert probe.changed_since(facts) == ["mpi"]


def test_changes_accumulate_and_an_old_mark_is_ignored():
    first = {"ansible_facts": probe.changed_fact({}, "uv")}
    assert probe.changed_fact(first, "venv")[probe.CHANGED]["roles"] == ["uv", "venv"]
    old = {"ansible_facts": {probe.CHANGED: {"run": "1-2", "roles": ["uv"]}}}
    assert probe.changed_since(old) == []


def test_a_section_with_an_error_is_not_an_answer():
    facts = {"ansible_facts": {probe.FACT: {"run": probe.run_id(), "sections": {"uv": {"error": "boom"}}}}}
    assert probe.section(facts, "uv", UV) is None


def test_facts_may_come_as_plain_variables_too():
    assert probe.section(answer(uv=UV), "uv", UV) is not None


def test_the_roles_arguments_are_checked_as_each_role_would_with_its_name():
    rendered = []

    def template(value):
        rendered.append(value)
        return dict((k, "{{ x }}" != v and v or 3) for k, v in value.items())

    assert probe.role_argument_errors(["uv", "mpi", "venv"], {"venv_keep": 2}, template) == []
    errors = probe.role_argument_errors(["uv", "venv"], {"venv_keep": "banana", "uv_version": "0.13.9"}, template)
    assert len(errors) == 1 and errors[0].startswith("role venv: argument 'venv_keep' is of type str")
    # Variables are rendered before the check (a template that renders to an int passes).
    assert probe.role_argument_errors(["venv"], {"venv_keep": "{{ x }}"}, template) == []
    assert {"venv_keep": "{{ x }}"} in rendered
    # Only the role's own variables are looked at.
    assert probe.role_argument_errors(["mpi"], {"venv_keep": "banana"}, template) == []


def test_every_role_has_a_main_spec_the_probe_can_read():
    for role in sorted(os.listdir(probe.ROLES)):
        if os.path.isfile(os.path.join(probe.ROLES, role, "meta", "argument_specs.yml")):
            assert probe.role_spec(role), role
