"""Host side of cluster_setup (module_utils/cluster_access.py) on a real file system: what a plan
finds, what apply writes (content, owner, mode), managed blocks beside the user's own lines,
the secret compared by hash only, and never a write through a symlink."""

import hashlib
import os
import stat

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import cluster as ca

BLOCK = "# BEGIN lockstep.cluster (managed)\nHost a b\n    BatchMode yes\n# END lockstep.cluster\n"
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    user = {"name": "bench", "exists": True, "uid": os.getuid(), "gid": os.getgid(), "group": "g", "home": str(home)}
    monkeypatch.setattr(ca, "user_info", lambda name: dict(user) if name == "bench" else {"name": name, "exists": False})
    return home


def specs(tmp_path, secret=SECRET):
    return [
        {"path": str(tmp_path / "etc" / "hostfile"), "kind": "file", "content": "a slots=1\n", "owner": "root",
         "mode": "0644"},
        {"path": ".ssh/id_lockstep", "kind": "secret", "sha256": hashlib.sha256(secret).hexdigest(), "home": True,
         "owner": "user", "mode": "0600"},
        {"path": ".ssh/config", "kind": "block", "content": BLOCK, "home": True, "owner": "user", "mode": "0600",
         "top": True},
        {"path": ".ssh/known_hosts", "kind": "block", "content": BLOCK, "home": True, "owner": "user", "mode": "0644"},
    ]


def params(tmp_path, src=None, **extra):
    return dict({"user": "bench", "files": specs(tmp_path), "private_key_src": src}, **extra)


def push(tmp_path, data=SECRET):
    path = tmp_path / "pushed"
    path.write_bytes(data)
    return str(path)


def actions(result):
    return dict((os.path.basename(f["path"]), f["action"]) for f in result["files"])


def test_plan_on_a_bare_host_creates_everything_and_writes_nothing(tmp_path, home):
    result = ca.plan(params(tmp_path))
    assert set(actions(result).values()) == {"create"}
    assert "create %s/.ssh" % home in result["directories"]
    assert not (home / ".ssh").exists() and not (tmp_path / "etc").exists()


def test_apply_writes_content_modes_and_then_plans_nothing(tmp_path, home):
    ca.apply(params(tmp_path, push(tmp_path)))
    assert stat.S_IMODE(os.stat(str(home / ".ssh")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(home / ".ssh" / "id_lockstep")).st_mode) == 0o600
    assert (home / ".ssh" / "id_lockstep").read_bytes() == SECRET
    assert (tmp_path / "etc" / "hostfile").read_text() == "a slots=1\n"
    assert stat.S_IMODE(os.stat(str(tmp_path / "etc")).st_mode) == 0o755
    again = ca.plan(params(tmp_path))
    assert set(actions(again).values()) == {"none"} and again["directories"] == []


def test_blocks_keep_the_users_own_lines(tmp_path, home):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").write_text("Host *\n    ServerAliveInterval 30\n")
    (home / ".ssh" / "known_hosts").write_text("other ssh-ed25519 AAAA")  # no final newline
    ca.apply(params(tmp_path, push(tmp_path)))
    assert (home / ".ssh" / "config").read_text() == BLOCK + "Host *\n    ServerAliveInterval 30\n"
    assert (home / ".ssh" / "known_hosts").read_text() == "other ssh-ed25519 AAAA\n" + BLOCK
    # A changed block is replaced where it is, not moved.
    new_block = BLOCK.replace("Host a b", "Host a b c")
    files = specs(tmp_path)
    files[3]["content"] = new_block
    planned = ca.plan({"user": "bench", "files": files})
    assert actions(planned)["known_hosts"] == "update"
    ca.apply({"user": "bench", "files": files, "private_key_src": None})
    assert (home / ".ssh" / "known_hosts").read_text() == "other ssh-ed25519 AAAA\n" + new_block


def test_mode_and_owner_drift_is_found(tmp_path, home):
    ca.apply(params(tmp_path, push(tmp_path)))
    os.chmod(str(home / ".ssh" / "config"), 0o664)
    planned = ca.plan(params(tmp_path))
    entry = next(f for f in planned["files"] if f["path"].endswith("config"))
    assert entry["action"] == "update" and entry["reasons"] == ["mode"]


def test_secret_is_compared_by_hash_and_never_returned(tmp_path, home):
    ca.apply(params(tmp_path, push(tmp_path)))
    (home / ".ssh" / "id_lockstep").write_bytes(b"someone else's key\n")
    planned = ca.plan(params(tmp_path))
    entry = next(f for f in planned["files"] if f["kind"] == "secret")
    assert entry["action"] == "update" and "before" not in entry and "after" not in entry
    assert SECRET.decode() not in repr(planned)


def test_pushed_key_with_the_wrong_hash_is_refused(tmp_path, home):
    with pytest.raises(ca.AccessError, match="expected sha256"):
        ca.apply(params(tmp_path, push(tmp_path, b"tampered in transit")))


def test_a_symlinked_ssh_dir_is_never_written_through(tmp_path, home):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(str(target), str(home / ".ssh"))
    with pytest.raises(ca.AccessError, match="symlink"):
        ca.apply(params(tmp_path, push(tmp_path)))
    assert os.listdir(str(target)) == []


def test_a_symlinked_file_is_replaced_not_followed(tmp_path, home):
    (home / ".ssh").mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(str(victim), str(home / ".ssh" / "config"))
    planned = ca.plan(params(tmp_path))
    assert actions(planned)["config"] == "update"
    ca.apply(params(tmp_path, push(tmp_path)))
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(str(home / ".ssh" / "config"))


def test_an_unterminated_block_is_an_error_not_data_loss(tmp_path, home):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").write_text("# BEGIN lockstep.cluster\nHost x\n")
    with pytest.raises(ca.AccessError, match="never ends"):
        ca.plan(params(tmp_path))


def test_missing_user(tmp_path, home):
    assert ca.plan(dict(params(tmp_path), user="nobody-here"))["user"]["exists"] is False
    with pytest.raises(ca.AccessError, match="does not exist"):
        ca.apply(dict(params(tmp_path), user="nobody-here"))


def test_the_probe_snapshot_carries_only_what_is_ours_and_plans_like_the_host(tmp_path, home):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").write_text("Host *\n    IdentityAgent /run/secret-agent\n")
    snap = ca.snapshot_of(specs(tmp_path), "bench")
    assert "secret-agent" not in repr(snap)  # the user's own lines never leave the host
    assert snap["files"][".ssh/config"]["block"] is None
    assert [e["action"] for e in ca.plan_from(specs(tmp_path), snap)["files"]] == \
        [e["action"] for e in ca.plan(params(tmp_path))["files"]]
    ca.apply(params(tmp_path, push(tmp_path)))
    snap = ca.snapshot_of(specs(tmp_path), "bench")
    assert snap["files"][".ssh/config"]["block"] == BLOCK
    assert snap["files"][".ssh/id_lockstep"]["sha256"] == hashlib.sha256(SECRET).hexdigest()
    assert "fake" not in repr(snap)  # the key itself never travels
    assert set(e["action"] for e in ca.plan_from(specs(tmp_path), snap)["files"]) == {"none"}


class Entry(object):
    def __init__(self, name, home):
        self.pw_name, self.pw_dir = name, home


def test_an_earlier_cluster_user_is_found_and_cleaned_keeping_its_own_lines(tmp_path, home, monkeypatch):
    old = tmp_path / "old"
    (old / ".ssh").mkdir(parents=True)
    (old / ".ssh" / "id_lockstep").write_bytes(SECRET)
    (old / ".ssh" / "authorized_keys").write_text("ssh-ed25519 MINE me@laptop\n" + BLOCK)
    (old / ".ssh" / "config").write_text(BLOCK + "Host *\n    ServerAliveInterval 30\n")
    plain = tmp_path / "plain"
    (plain / ".ssh").mkdir(parents=True)
    (plain / ".ssh" / "authorized_keys").write_text("ssh-ed25519 OTHER x@y\n")
    entries = [Entry("bench", str(home)), Entry("olduser", str(old)), Entry("plain", str(plain))]
    monkeypatch.setattr(ca.pwd, "getpwall", lambda: entries)
    monkeypatch.setattr(ca.pwd, "getpwnam", lambda name: next(e for e in entries if e.pw_name == name))
    assert ca.holders("bench") == ["olduser"]
    done = ca.clean_user("olduser")
    assert sorted(os.path.basename(p) for p in done) == ["authorized_keys", "config", "id_lockstep"]
    assert not (old / ".ssh" / "id_lockstep").exists()
    assert (old / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 MINE me@laptop\n"
    assert (old / ".ssh" / "config").read_text() == "Host *\n    ServerAliveInterval 30\n"
    assert ca.holders("bench") == [] and (plain / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 OTHER x@y\n"
