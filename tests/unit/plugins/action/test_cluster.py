"""plugins/action/cluster.py with a stubbed host: a
converged host costs one module run, the key travels only when the host's copy differs and
never in module arguments, a missing user is created with ansible.builtin.user, check mode
only looks."""

from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.action.cluster import ActionModule
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe

ED = "AAAAC3NzaC1lZDI1NTE5AAAAIPMtzzceoT92UYFfm8Dz7MRg/pDFhw4jtjeA1nY+MIgj"
USER = {"name": "bench", "exists": True, "uid": 1000, "gid": 1000, "group": "bench", "home": "/home/bench"}


def hostvars():
    facts = {"ssh_host_key_ed25519_public": ED, "ssh_host_key_ed25519_public_keytype": "ssh-ed25519"}
    return {"lab-1": {"ansible_facts": facts, "ansible_host": "10.0.0.10"},
            "lab-2": {"ansible_facts": facts, "ansible_host": "10.0.0.11"}}


class Host(object):
    """Answers module runs like the host would; `state` maps a file kind to its plan action."""

    def __init__(self, user=None, differs=()):
        self.user = dict(user or USER)
        self.differs = set(differs)
        self.calls = []
        self.pushed = []

    def execute(self, module_name=None, module_args=None, task_vars=None, **_kwargs):
        self.calls.append((module_name, dict(module_args)))
        if module_name == "ansible.builtin.user":
            self.user = dict(USER)
            return {"changed": True}
        if module_args["stage"] == "plan":
            if not self.user["exists"]:
                return {"user": self.user, "files": [], "directories": []}
            files = [{"path": f["path"], "kind": f["kind"],
                      "action": "update" if f["path"] in self.differs else "none",
                      "reasons": ["content"] if f["path"] in self.differs else []}
                     for f in module_args["files"]]
            return {"user": self.user, "files": files, "directories": []}
        return {"changed": True, "user": self.user, "files": [], "directories": []}


def action(tmp_path, host, check_mode=False, **args):
    task = MagicMock()
    task.args = dict({"hosts": ["lab-1", "lab-2"], "name": "lab", "key_dir": str(tmp_path / "keys"),
                      "flavor": "openmpi"}, **args)
    task.async_val = 0
    task.check_mode = check_mode
    task.diff = False
    connection = MagicMock()
    connection._shell.tmpdir = None
    connection._shell.join_path = lambda *parts: "/".join(parts)
    plugin = ActionModule(task, connection, MagicMock(), MagicMock(), MagicMock(), MagicMock())
    plugin._execute_module = host.execute

    def make_tmp():
        connection._shell.tmpdir = "/tmp/ansible-tmp-1"
        return connection._shell.tmpdir

    plugin._make_tmp_path = make_tmp
    plugin._transfer_file = lambda src, dest: host.pushed.append((src, dest))
    plugin._fixup_perms2 = lambda paths: None
    plugin._remove_tmp_path = lambda path: None
    return plugin


def run(plugin):
    return plugin.run(task_vars={"hostvars": hostvars(), "inventory_hostname": "lab-1"})


def test_converged_host_costs_one_module_run(tmp_path):
    host = Host()
    result = run(action(tmp_path, host))
    assert result["changed"] is False and result["changes"] == []
    assert [c[1]["stage"] for c in host.calls] == ["plan"] and host.pushed == []
    assert result["members"] == ["lab-1", "lab-2"]


def test_private_key_is_never_in_module_arguments(tmp_path):
    host = Host(differs=[".ssh/id_lockstep"])
    run(action(tmp_path, host))
    private = (tmp_path / "keys" / "lab_ed25519").read_text()
    body = private.splitlines()[1]
    assert all(body not in repr(args) for dummy, args in host.calls)
    assert [c[1]["stage"] for c in host.calls] == ["plan", "apply"]
    assert host.pushed == [(str(tmp_path / "keys" / "lab_ed25519"), "/tmp/ansible-tmp-1/cluster-key")]
    assert host.calls[1][1]["private_key_src"] == "/tmp/ansible-tmp-1/cluster-key"


def test_a_public_file_change_pushes_no_key(tmp_path):
    host = Host(differs=[".ssh/known_hosts"])
    result = run(action(tmp_path, host))
    assert result["changed"] and result["changes"] == ["update .ssh/known_hosts (content)"]
    assert host.pushed == [] and "private_key_src" not in host.calls[1][1]


def test_missing_user_is_created_with_the_user_module_then_everything_written(tmp_path):
    host = Host(user={"name": "bench", "exists": False})
    result = run(action(tmp_path, host))
    assert [c[0] for c in host.calls] == ["lockstep.cluster.cluster", "ansible.builtin.user",
                                          "lockstep.cluster.cluster"]
    assert host.calls[1][1] == {"name": "bench", "shell": "/bin/bash", "create_home": True, "state": "present"}
    assert result["changes"][0] == "create user bench" and host.pushed


def test_missing_user_without_manage_user_fails_clearly(tmp_path):
    with pytest.raises(AnsibleActionFail, match="user bench does not exist on lab-1 and cluster_manage_user is off"):
        run(action(tmp_path, Host(user={"name": "bench", "exists": False}), manage_user=False))


def test_check_mode_only_plans_and_makes_no_key(tmp_path):
    host = Host(user={"name": "bench", "exists": False})
    result = run(action(tmp_path, host, check_mode=True))
    assert result["changed"] and [c[0] for c in host.calls] == ["lockstep.cluster.cluster"]
    assert not (tmp_path / "keys").exists()


def test_without_key_handling_no_key_and_no_authorized_keys(tmp_path):
    host = Host()
    run(action(tmp_path, host, manage_keys=False, manage_known_hosts=False))
    paths = [f["path"] for f in host.calls[0][1]["files"]]
    assert paths == ["/etc/lockstep/hostfile", "/etc/lockstep/cluster.json"]
    assert not (tmp_path / "keys").exists()


def test_root_gets_the_open_mpi_run_as_root_switch(tmp_path):
    host = Host(user=dict(USER, name="root", uid=0, gid=0, home="/root"))
    run(action(tmp_path, host, user="root"))
    bashrc = [f for f in host.calls[0][1]["files"] if f["path"] == ".bashrc"]
    assert bashrc and "OMPI_ALLOW_RUN_AS_ROOT=1" in bashrc[0]["content"] and bashrc[0]["top"]


def test_internal_options_are_refused(tmp_path):
    with pytest.raises(AnsibleActionFail, match="set by the action plugin"):
        run(action(tmp_path, Host(), files=[]))


def test_a_host_without_facts_cannot_join(tmp_path):
    plugin = action(tmp_path, Host(), hosts=["lab-1", "lab-2", "lab-3"])
    result = plugin.run(task_vars={"hostvars": hostvars(), "inventory_hostname": "lab-1"})
    assert result["left_out"] == ["lab-3"] and "lab-3" in result["warnings"][0]
    with pytest.raises(AnsibleActionFail, match="lab-3 is not a member with facts"):
        plugin.run(task_vars={"hostvars": hostvars(), "inventory_hostname": "lab-3"})


def snapshot_of(specs, user=None, differs=()):
    """What the probe would report of a member holding exactly ``specs`` (but ``differs``)."""
    user = dict(user or USER)
    files, dirs = {}, {}
    for spec in specs:
        owner = (user["uid"], user["gid"]) if spec.get("owner") == "user" else (0, 0)
        state = {"exists": True, "symlink": False, "mode": int(spec.get("mode") or "0644", 8),
                 "uid": owner[0], "gid": owner[1]}
        key = {"file": "text", "block": "block", "secret": "sha256"}[spec["kind"]]
        state[key] = spec.get("content", spec.get("sha256"))
        if spec["path"] in differs:
            state[key] = "someone else's"
        files[spec["path"]] = state
        directory = "/home/bench/.ssh" if spec.get("home") else spec["path"].rsplit("/", 1)[0]
        dirs[directory] = {"exists": True, "ok": True}
    return {"user": user, "files": files, "directories": dirs, "stale_users": []}


def probed(plugin, snapshot):
    params, error = settings("cluster", plugin._task.args)
    assert error is None, error
    return {probe.FACT: {"run": probe.run_id(), "sections": {
        "cluster": {"digest": digest("cluster", params), "snapshot": snapshot}}}}


def run_probed(plugin, snapshot):
    facts = probed(plugin, snapshot)
    vars_ = hostvars()
    vars_["lab-1"]["ansible_facts"].update(facts)
    return plugin.run(task_vars={"hostvars": vars_, "inventory_hostname": "lab-1", "ansible_facts": facts})


def test_this_runs_probe_snapshot_is_compared_here_without_a_round_trip(tmp_path):
    first = Host()
    run(action(tmp_path, first))
    specs = first.calls[0][1]["files"]
    host = Host()
    result = run_probed(action(tmp_path, host), snapshot_of(specs))
    assert host.calls == [] and result["changed"] is False and result["changes"] == []


def test_a_difference_in_the_snapshot_is_written_with_one_module_run(tmp_path):
    first = Host()
    run(action(tmp_path, first))
    specs = first.calls[0][1]["files"]
    host = Host()
    result = run_probed(action(tmp_path, host), snapshot_of(specs, differs=["/etc/lockstep/hostfile"]))
    assert [c[1].get("stage") for c in host.calls] == ["apply"] and result["changed"]
    assert result["changes"] == ["update /etc/lockstep/hostfile (content)"]
    assert result["ansible_facts"][probe.CHANGED]["roles"] == ["cluster"]


def test_an_earlier_cluster_user_is_named_and_cleaned(tmp_path):
    first = Host()
    run(action(tmp_path, first))
    snapshot = dict(snapshot_of(first.calls[0][1]["files"]), stale_users=["olduser"])
    host = Host()
    result = run_probed(action(tmp_path, host), snapshot)
    assert "take the cluster key and blocks back from olduser (an earlier cluster user)" in result["changes"]
    assert host.calls[-1][1]["stale_users"] == ["olduser"]


def test_a_truncated_private_key_is_never_pushed(tmp_path):
    host = Host(differs=[".ssh/id_lockstep"])
    run(action(tmp_path, host))  # makes the pair, pushes it once
    private = str(tmp_path / "keys" / "lab_ed25519")
    data = open(private, "rb").read()
    with open(private, "wb") as handle:
        handle.write(data[:100])
    host = Host(differs=[".ssh/id_lockstep"])
    with pytest.raises(AnsibleActionFail) as err:
        run(action(tmp_path, host))
    assert "cluster lab: the cluster private key %s cannot be used: it does not parse" % private in str(err.value)
    assert host.calls == [] and host.pushed == []
