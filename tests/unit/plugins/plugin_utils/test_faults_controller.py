"""Fault suite, controller side (issue 17): what the controller trusts before it pushes or
reports — the cluster key pair and its directory, reports/latest, a lock's own source lines,
and a module killed on the host. Each refusal names the path; nothing is pushed or lost."""

import os
import sys

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster_config as cc
from ansible_collections.lockstep.cluster.plugins.plugin_utils import remote, report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lockfile import parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.policy import check_policy, format_violations

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "action"))
from test_cluster_setup import Host as ClusterHost, action as cluster_action, run as cluster_run  # noqa: E402
from test_uv_sync import Host as SyncHost, action as sync_action, plan as sync_plan  # noqa: E402

from test_report import GOOD, result as host_result  # noqa: E402

NOBODY = 65534


# ---------------------------------------------------------------- the cluster key pair

def pair(tmp_path):
    key_dir = str(tmp_path / "keys")
    private, public, created = cc.ensure_key_pair(key_dir, "lab")
    assert created
    return key_dir, private, private + ".pub", public


@pytest.mark.parametrize("where", ["key_dir", "parent"])
def test_a_key_dir_others_can_write_is_refused(tmp_path, where):
    # Issue 17: another local user could swap the pair, and site.yml installed it everywhere.
    key_dir, private, public_path, _line = pair(tmp_path)
    writable = key_dir if where == "key_dir" else str(tmp_path)
    os.chmod(writable, 0o777)
    try:
        with pytest.raises(cc.ClusterConfigError) as err:
            cc.ensure_key_pair(key_dir, "lab")
        assert "refusing cluster_key_dir %s: %s: writable by others (mode 0777) (others could swap the cluster key " \
               "pair)" % (key_dir, writable) == str(err.value)
        os.chmod(writable, 0o1777)  # sticky: only the key directory itself must be strictly ours
        if where == "parent":
            assert cc.ensure_key_pair(key_dir, "lab")[0] == private
        else:
            with pytest.raises(cc.ClusterConfigError):
                cc.ensure_key_pair(key_dir, "lab")
    finally:
        os.chmod(writable, 0o700)


def test_a_key_dir_owned_by_another_user_is_refused_before_any_key_is_made(tmp_path):
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    os.chown(str(key_dir), NOBODY, NOBODY)
    with pytest.raises(cc.ClusterConfigError, match="%s: owned by uid %d, not root" % (key_dir, NOBODY)):
        cc.ensure_key_pair(str(key_dir), "lab")
    assert os.listdir(str(key_dir)) == []


@pytest.mark.parametrize("damage, message", [
    ("truncate", "the cluster private key {private} cannot be used: it does not parse (truncated or corrupt?); it "
                 "was not pushed to any host. Remove {private} and {private}.pub to make a new pair"),
    ("other-public", "the cluster key pair does not match: {public} is not the public half of {private}; it was not "
                     "pushed to any host. Remove both to make a new pair"),
    ("mode", "refusing the cluster key pair: {private}: readable by group or others (mode 0644; OpenSSH refuses it)"),
    ("symlink", "refusing the cluster key pair: {private}: a symlink"),
])
def test_a_damaged_key_pair_is_refused_with_its_path(tmp_path, damage, message):
    key_dir, private, public, line = pair(tmp_path)
    data = open(private, "rb").read()
    if damage == "truncate":
        with open(private, "wb") as handle:
            handle.write(data[:len(data) // 2])
    elif damage == "other-public":
        other = cc.ensure_key_pair(str(tmp_path / "other"), "lab")[1]
        with open(public, "w") as handle:
            handle.write(other + "\n")
    elif damage == "mode":
        os.chmod(private, 0o644)
    else:
        os.rename(private, private + ".real")
        os.symlink(private + ".real", private)
    with pytest.raises(cc.ClusterConfigError) as err:
        cc.ensure_key_pair(key_dir, "lab")
    assert str(err.value) == message.format(private=private, public=public)
    assert line.split()[1] not in str(err.value) and "PRIVATE KEY" not in str(err.value)


def test_a_truncated_private_key_is_never_pushed(tmp_path):
    host = ClusterHost(differs=[".ssh/id_lockstep"])
    cluster_run(cluster_action(tmp_path, host))  # makes the pair, pushes it once
    private = str(tmp_path / "keys" / "lab_ed25519")
    data = open(private, "rb").read()
    with open(private, "wb") as handle:
        handle.write(data[:100])
    host = ClusterHost(differs=[".ssh/id_lockstep"])
    with pytest.raises(AnsibleActionFail) as err:
        cluster_run(cluster_action(tmp_path, host))
    assert "cluster lab: the cluster private key %s cannot be used: it does not parse" % private in str(err.value)
    assert host.calls == [] and host.pushed == []


# ---------------------------------------------------------------- reports/latest

@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_latest_that_is_not_a_symlink_fails_loudly_and_stays(tmp_path, kind):
    # Issue 17: it was silently left stale.
    latest = tmp_path / "latest"
    if kind == "directory":
        latest.mkdir()
        (latest / "summary.md").write_text("someone's copy\n")
    else:
        latest.write_text("someone's note\n")
    results = {"n1": host_result(list(GOOD))}
    with pytest.raises(report.ReportError) as err:
        report.write(str(tmp_path), "run-2", ["n1"], results)
    assert str(err.value) == (
        "%s is a %s, not the symlink to the newest run: it was left as it is and is now stale (this run's reports "
        "are in %s); move it away so the next run can point it at the newest reports"
        % (latest, kind, tmp_path / "run-2"))
    assert os.path.isfile(str(tmp_path / "run-2" / "summary.md"))  # this run's reports are all there
    assert not os.path.islink(str(latest))
    kept = (latest / "summary.md") if kind == "directory" else latest
    assert kept.read_text().startswith("someone's")
    os.rename(str(latest), str(tmp_path / "moved"))
    report.write(str(tmp_path), "run-3", ["n1"], results)
    assert os.readlink(str(latest)) == "run-3"


# ---------------------------------------------------------------- a host that left the play

KILLED = {"failed": True, "kind": "killed", "rc": 137,
          "msg": "lockstep.cluster.uv_sync was killed by SIGKILL on the host while it built a new venv for /opt/venv"}


def test_a_host_whose_build_was_killed_is_reported_as_such_not_unreachable():
    earlier = report.earlier_failure("the venv role (uv_sync)", KILLED)
    built = report.build("r1", ["n1", "n2", "n3"], {"n1": host_result(list(GOOD)), "n2": earlier, "n3": None})
    rows = dict((r["host"], r) for r in built["rows"])
    statuses = built["statuses"]
    assert statuses["n2"] == "error" and statuses["n3"] == "unreachable"
    assert "- n2 (error): site.yml failed on this host before the check, in the venv role (uv_sync): " \
           "lockstep.cluster.uv_sync was killed by SIGKILL on the host while it built a new venv for /opt/venv" \
           in built["summary_md"]
    assert rows["n2"]["message"].startswith("site.yml failed on this host before the check")
    assert report.earlier_failure("x", {"changed": True}) is None
    assert report.earlier_failure("x", {"unreachable": True, "msg": "ssh: connect timed out"}) == {
        "unreachable": True, "msg": "unreachable during x: ssh: connect timed out"}


@pytest.mark.parametrize("rc, signal_name", [(137, "SIGKILL"), (143, "SIGTERM"), (-9, "SIGKILL")])
def test_a_module_killed_on_the_host_is_named_killed(tmp_path, rc, signal_name):
    dead = {"failed": True, "rc": rc, "module_stdout": "", "module_stderr": "Killed",
            "msg": "Module result deserialization failed: No start of json char found"}
    host = SyncHost(sync_plan("build"), dead)
    result = sync_action(tmp_path, host).run(task_vars={})
    assert result["failed"] and result["kind"] == "killed" and result["signal"] == signal_name
    assert result["msg"].startswith("lockstep.cluster.uv_sync was killed by %s on the host while it built a new venv "
                                    "for /opt/venv" % signal_name)
    assert result["msg"].endswith("/opt/venv still points at a complete, sealed venv (the flip is one rename) and "
                                  "the next run removes any half-built one in /opt/venvs")
    assert "deserialization" not in result["msg"]


def test_other_failures_are_left_as_the_module_said():
    own = {"failed": True, "kind": "hash", "rc": 1, "msg": "a downloaded file does not match"}
    assert remote.killed(own, "m", "did", "after") is own
    plain = {"failed": True, "rc": 2, "msg": "MODULE FAILURE"}
    assert remote.killed(plain, "m", "did", "after") is plain


# ---------------------------------------------------------------- a lock that names its own source

HASH = "--hash=sha256:" + "a" * 64


@pytest.mark.parametrize("line, option", [
    ("--index-url https://index.example/simple", "--index-url"),
    ("-i https://index.example/simple", "--index-url"),
    ("--extra-index-url https://index.example/extra", "--extra-index-url"),
    ("--find-links wheels", "--find-links"),
    ("--trusted-host index.example", "--trusted-host"),
    ("--no-index", "--no-index"),
])
def test_a_lock_with_its_own_source_lines_is_refused_with_file_and_line(line, option):
    # Issue 17: uv failed later with an error that blamed the network.
    text = "# header\n%s\nalpha==1.0 \\\n    %s\n" % (line, HASH)
    violations = check_policy(parse_lock(text, "locks/site.txt"))
    assert [(v.line, v.name, v.code) for v in violations] == [(2, option, "source")]
    assert format_violations(violations).splitlines()[1].startswith(
        "  locks/site.txt:2: %s: a lock must not choose where packages come from" % option)


def test_a_lock_without_source_lines_passes():
    assert check_policy(parse_lock("alpha==1.0 \\\n    %s\n" % HASH, "ok.txt")) == []
