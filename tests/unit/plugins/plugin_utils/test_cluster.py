"""What every cluster member must hold, computed on the controller (plugin_utils/cluster.py):
members from hostvars, hostfile syntax per flavor, pinned known_hosts, the cluster key pair."""

import os
import stat
import subprocess

import pytest

from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster as cc

ED = "AAAAC3NzaC1lZDI1NTE5AAAAIPMtzzceoT92UYFfm8Dz7MRg/pDFhw4jtjeA1nY+MIgj"


def facts(blob=ED):
    return {"ssh_host_key_ed25519_public": blob, "ssh_host_key_ed25519_public_keytype": "ssh-ed25519",
            "ssh_host_key_rsa_public": "AAAAB3rsa", "ssh_host_key_rsa_public_keytype": "ssh-rsa",
            "distribution": "Debian"}


def hostvars(**per_host):
    return dict((name, dict({"ansible_facts": facts(), "ansible_host": "10.0.0.%d" % i}, **extra))
                for i, (name, extra) in enumerate(sorted(per_host.items()), start=10))


def test_members_carry_names_addresses_keys_and_slots():
    hv = hostvars(a={}, b={"cluster_address": "b-ib", "cluster_slots_per_host": 4})
    found, left_out = cc.members(["a", "b"], hv, default_slots=2)
    assert left_out == []
    assert [(m["name"], m["slots"]) for m in found] == [("a", 2), ("b-ib", 4)]
    assert found[1]["aliases"] == ["b-ib", "b", "10.0.0.11"]
    assert found[0]["host_keys"] == [("ssh-ed25519", ED), ("ssh-rsa", "AAAAB3rsa")]


def test_hosts_without_facts_are_left_out_and_named():
    hv = hostvars(a={}, b={})
    hv["c"] = {"ansible_host": "10.0.0.99"}
    found, left_out = cc.members(["a", "b", "c"], hv)
    assert [m["name"] for m in found] == ["a", "b"] and left_out == ["c"]


def test_a_reached_host_without_host_keys_is_an_error_in_a_cluster():
    hv = hostvars(a={}, b={})
    hv["b"]["ansible_facts"] = {"distribution": "Debian"}
    with pytest.raises(cc.ClusterConfigError, match="no SSH host key in the facts of b"):
        cc.members(["a", "b"], hv)
    # Alone, nobody needs to pin it.
    assert len(cc.members(["b"], hv)[0]) == 1


@pytest.mark.parametrize("bad, words", [
    ({"cluster_slots_per_host": 0}, "positive integer"),
    ({"cluster_slots_per_host": "many"}, "positive integer"),
    ({"cluster_address": "a b"}, "cannot be a host name"),
])
def test_bad_member_settings_name_the_host(bad, words):
    with pytest.raises(cc.ClusterConfigError, match="^a: .*" + words):
        cc.members(["a"], hostvars(a=bad))


def test_uneven_ranks_per_host_from_cluster_slots():
    # cluster_slots (one host) over cluster_slots_per_host (a group), over the task's default.
    hv = hostvars(a={}, b={"cluster_slots": 4, "cluster_slots_per_host": 2}, c={"cluster_slots_per_host": 2},
                  d={"cluster_slots": "3"})
    found, dummy = cc.members(["a", "b", "c", "d"], hv, default_slots=1)
    assert cc.hostfile("c", "openmpi", found).splitlines()[1:] == ["a slots=1", "b slots=4", "c slots=2", "d slots=3"]
    assert cc.hostfile("c", "mpich", found).splitlines()[1:] == ["a:1", "b:4", "c:2", "d:3"]


@pytest.mark.parametrize("bad", [0, -1, "two", 2.5, True])
def test_bad_cluster_slots_names_the_host_and_the_variable(bad):
    with pytest.raises(cc.ClusterConfigError, match=r"^b: cluster_slots must be a positive integer"):
        cc.members(["a", "b"], hostvars(a={}, b={"cluster_slots": bad, "cluster_slots_per_host": 2}))


def test_two_members_on_one_address_are_refused():
    with pytest.raises(cc.ClusterConfigError, match="a and b both use the cluster address x"):
        cc.members(["a", "b"], hostvars(a={"cluster_address": "x"}, b={"cluster_address": "x"}))


def test_hostfile_syntax_follows_the_flavor():
    found, dummy = cc.members(["a", "b"], hostvars(a={}, b={"cluster_slots_per_host": 2}))
    assert cc.hostfile("c", "openmpi", found).splitlines()[1:] == ["a slots=1", "b slots=2"]
    assert cc.hostfile("c", "mpich", found).splitlines()[1:] == ["a:1", "b:2"]
    with pytest.raises(cc.ClusterConfigError, match="no hostfile syntax"):
        cc.hostfile("c", "impi", found)


def test_known_hosts_pins_every_key_under_every_name():
    found, dummy = cc.members(["a"], hostvars(a={"cluster_address": "a-ib"}))
    lines = cc.known_hosts_block(found).splitlines()
    assert lines[0].startswith(cc.BEGIN) and lines[-1] == cc.END
    assert lines[1:-1] == ["a-ib,a,10.0.0.10 ssh-ed25519 " + ED, "a-ib,a,10.0.0.10 ssh-rsa AAAAB3rsa"]


def test_ssh_config_never_prompts_and_never_trusts_an_unknown_key():
    found, dummy = cc.members(["a", "b"], hostvars(a={}, b={}))
    text = cc.ssh_config_block(found, ".ssh/id_lockstep")
    assert "Host a 10.0.0.10 b 10.0.0.11\n" in text
    assert "BatchMode yes" in text and "StrictHostKeyChecking yes" in text
    assert "IdentityFile ~/.ssh/id_lockstep" in text
    assert "StrictHostKeyChecking no" not in text
    assert "IdentityFile" not in cc.ssh_config_block(found, None)


def test_key_pair_is_made_once_in_openssh_format(tmp_path):
    key_dir = str(tmp_path / "keys")
    private, public, created = cc.ensure_key_pair(key_dir, "lab")
    assert created and stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700
    assert public.startswith("ssh-ed25519 ") and public.endswith(" lockstep-cluster-lab")
    derived = subprocess.run(["ssh-keygen", "-y", "-f", private], check=True, capture_output=True, text=True).stdout
    assert derived.split()[:2] == public.split()[:2]
    again = cc.ensure_key_pair(key_dir, "lab")
    assert again == (private, public, False)


def test_check_mode_generates_no_key(tmp_path):
    private, public, created = cc.ensure_key_pair(str(tmp_path / "keys"), "lab", create=False)
    assert created and public is None and not os.path.exists(str(tmp_path / "keys"))


def test_cluster_name_must_be_a_file_name(tmp_path):
    with pytest.raises(cc.ClusterConfigError, match="cluster_name"):
        cc.ensure_key_pair(str(tmp_path), "../evil")


NOBODY = 65534


# The cluster key pair and its directory: refused with the path, never pushed (issue 17).

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
