# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cluster member's files: what they are now (a snapshot the probe takes too), whether they
are exactly what the controller computed (content, owner, mode), and writing them (stdlib only).

Three kinds of file: ``file`` (the whole content is ours: the hostfile), ``block`` (one managed
block in a file others also write: authorized_keys, known_hosts, ssh config, .bashrc) and
``secret`` (the private key: only its sha256 travels in the module arguments; the content
comes as a pushed file). Files under the user's home are written as that user would own
them, through a temp file and rename(2), never through a symlink. A snapshot carries only what
is ours (a block, never the rest of the user's file; a key's sha256, never the key), so the
controller compares without reading anyone's dotfiles. Users other than the cluster user
that still hold the cluster key or its blocks (a previous ``cluster_user``) are found and
cleaned.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import hashlib
import os
import pwd
import stat

from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    user=dict(type="str", default="bench"),
    name=dict(type="str", required=True),
    key_dir=dict(type="path", required=True),
    hostfile=dict(type="path", default="/etc/lockstep/hostfile"),
    flavor=dict(type="str", choices=["openmpi", "mpich"], required=True),
    slots=dict(type="int", default=1),
    manage_user=dict(type="bool", default=True),
    manage_keys=dict(type="bool", default=True),
    manage_known_hosts=dict(type="bool", default=True),
    user_shell=dict(type="str", default="/bin/bash"),
    # Set by the action plugin.
    stage=dict(type="str", choices=["plan", "apply"], default="plan"),
    files=dict(type="list", elements="dict"),
    private_key_src=dict(type="path"),
    stale_users=dict(type="list", elements="str"),
)

SSH_DIR = ".ssh"
KEY_NAME = "id_lockstep"

# Which member this host is, written beside the hostfile (the cluster smoke's ranks read it).
MEMBER_FILE = "cluster.json"
BEGIN = "# BEGIN lockstep.cluster"
END = "# END lockstep.cluster"


class AccessError(Exception):
    """A file that cannot safely be managed (a symlinked ~/.ssh, a missing user...)."""


def user_info(name):
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return {"name": name, "exists": False}
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return {"name": name, "exists": True, "uid": entry.pw_uid, "gid": entry.pw_gid, "group": group,
            "home": entry.pw_dir}


def resolve(spec, user):
    """Absolute path of a file spec: ``home``-relative paths under the user's home."""
    if spec.get("home"):
        return os.path.join(user["home"], spec["path"])
    return spec["path"]


def owner_ids(spec, user):
    if spec.get("owner") == "user":
        return user["uid"], user["gid"]
    return 0, 0


def member_file(hostfile):
    """``cluster.json`` beside the hostfile."""
    return os.path.join(os.path.dirname(hostfile), MEMBER_FILE)


def layout(params):
    """The files a member holds for these settings, without their content (the controller adds
    it): ``path`` (relative to the user's home when ``home``), ``kind``, ``owner``, ``mode``, ``top``."""
    specs = [
        {"path": params["hostfile"], "kind": "file", "owner": "root", "mode": "0644"},
        {"path": member_file(params["hostfile"]), "kind": "file", "owner": "root", "mode": "0644"},
    ]
    home = {"home": True, "owner": "user"}
    if params["manage_keys"]:
        specs += [
            dict(home, path="%s/%s" % (SSH_DIR, KEY_NAME), kind="secret", mode="0600"),
            dict(home, path="%s/%s.pub" % (SSH_DIR, KEY_NAME), kind="file", mode="0644"),
            dict(home, path="%s/authorized_keys" % SSH_DIR, kind="block", mode="0600"),
        ]
    if params["manage_known_hosts"]:
        specs.append(dict(home, path="%s/known_hosts" % SSH_DIR, kind="block", mode="0644"))
    if params["manage_keys"] or params["manage_known_hosts"]:
        specs.append(dict(home, path="%s/config" % SSH_DIR, kind="block", top=True, mode="0600"))
    if params["user"] == "root":
        specs.append(dict(home, path=".bashrc", kind="block", top=True))
    return specs


def find_block(text):
    """The managed block of ``text`` (BEGIN through END, newline included), or None; raises
    AccessError for a block that begins and never ends."""
    lines = (text or "").splitlines(True)
    start = next((i for i, line in enumerate(lines) if line.startswith(BEGIN)), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(END)), None)
    if end is None:
        raise AccessError("managed block begins but never ends")
    return "".join(lines[start:end + 1])


def state(spec, user):
    """One file as the comparison needs it: exists, symlink, mode, owner, and per kind its whole
    text (``file``), its managed block (``block``) or its sha256 (``secret``)."""
    current = read_current(resolve(spec, user))
    out = dict((k, current[k]) for k in ("exists", "symlink", "mode", "uid", "gid"))
    if current["exists"] and not current["symlink"]:
        if spec["kind"] == "file":
            out["text"] = current["text"]
        elif spec["kind"] == "block":
            try:
                out["block"] = find_block(current["text"])
            except AccessError as exc:
                out["error"] = str(exc)
        else:
            out["sha256"] = hashlib.sha256(current["data"]).hexdigest()
    return out


def holders(user_name):
    """Users other than ``user_name`` whose home still holds the cluster key or its
    authorized_keys block (what an earlier ``cluster_user`` was given)."""
    found = []
    for entry in pwd.getpwall():
        if entry.pw_name == user_name or not entry.pw_dir or not os.path.isdir(entry.pw_dir):
            continue
        ssh = os.path.join(entry.pw_dir, SSH_DIR)
        if os.path.lexists(os.path.join(ssh, KEY_NAME)):
            found.append(entry.pw_name)
            continue
        current = read_current(os.path.join(ssh, "authorized_keys"))
        if current.get("text") and BEGIN in current["text"]:
            found.append(entry.pw_name)
    return sorted(set(found))


def snapshot(params):
    """What the member holds now for these settings (read-only; the probe's cluster section)."""
    return snapshot_of(layout(params), params["user"])


def snapshot_of(specs, user_name):
    """The state of ``specs``' files and directories, and the earlier cluster users."""
    user = user_info(user_name)
    out = {"user": user, "files": {}, "directories": {}, "stale_users": holders(user_name)}
    if not user["exists"]:
        return out
    for path, uid, mode in directories(specs, user):
        try:
            info = os.lstat(path)
            out["directories"][path] = {"exists": True, "ok": not stat.S_ISLNK(info.st_mode)
                                        and stat.S_ISDIR(info.st_mode) and info.st_uid == uid
                                        and stat.S_IMODE(info.st_mode) == mode}
        except OSError:
            out["directories"][path] = {"exists": False, "ok": False}
    for spec in specs:
        out["files"][spec["path"]] = state(spec, user)
    return out


ABSENT = {"exists": False, "text": None, "mode": None, "uid": None, "gid": None, "symlink": False}


def read_current(path):
    """``{"exists", "text", "mode", "uid", "gid", "symlink"}``; a symlink is never followed."""
    try:
        info = os.lstat(path)
    except OSError:
        return dict(ABSENT)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        return {"exists": True, "text": None, "mode": None, "uid": None, "gid": None, "symlink": True}
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    return {"exists": True, "data": data, "text": data.decode("utf-8", "replace"), "mode": stat.S_IMODE(info.st_mode),
            "uid": info.st_uid, "gid": info.st_gid, "symlink": False}


def merge_block(text, block, top=False):
    """``text`` with its managed block replaced by ``block`` (in place), or ``block`` added
    (first when ``top``, else last). Lines outside the block are kept as they are."""
    lines = (text or "").splitlines(True)
    start = next((i for i, line in enumerate(lines) if line.startswith(BEGIN)), None)
    if start is not None:
        end = next((i for i in range(start, len(lines)) if lines[i].startswith(END)), None)
        if end is not None:
            return "".join(lines[:start]) + block + "".join(lines[end + 1:])
        # A begin marker without its end: drop from the marker on would lose the user's lines.
        raise AccessError("managed block begins but never ends")
    if top:
        return block + "".join(lines)
    body = "".join(lines)
    if body and not body.endswith("\n"):
        body += "\n"
    return body + block


def wanted_text(spec, current):
    if spec["kind"] == "file":
        return spec["content"]
    if spec["kind"] == "block":
        return merge_block(current["text"] if current["exists"] else "", spec["content"], spec.get("top", False))
    return None  # secret: compared by hash


def wanted_mode(spec, current):
    if spec.get("mode"):
        return int(str(spec["mode"]), 8)
    return current["mode"] if current["exists"] and current["mode"] is not None else 0o644


def compare(spec, st, user):
    """What writing this file would change, from its state (a snapshot's or read now):
    ``{"path", "kind", "action", "reasons", "before", "after"}`` with action ``none``, ``create``
    or ``update`` (content, owner or mode). Blocks compare and show only the managed block."""
    path = resolve(spec, user)
    entry = {"path": path, "kind": spec["kind"], "action": "none", "reasons": []}
    if st.get("error"):
        raise AccessError("%s: %s" % (path, st["error"]))
    if st["symlink"]:
        entry.update(action="update", reasons=["is a symlink or not a regular file"])
        return entry
    if spec["kind"] == "secret":
        if not (st["exists"] and st.get("sha256") == spec["sha256"]):
            entry["reasons"].append("content")
    else:
        now = st.get("text" if spec["kind"] == "file" else "block") if st["exists"] else None
        if now != spec["content"]:
            entry["reasons"].append("content")
            entry["before"], entry["after"] = now or "", spec["content"]
    if st["exists"]:
        uid, gid = owner_ids(spec, user)
        if (st["uid"], st["gid"]) != (uid, gid):
            entry["reasons"].append("owner")
        if st["mode"] != wanted_mode(spec, st):
            entry["reasons"].append("mode")
    if not st["exists"]:
        entry["action"] = "create"
    elif entry["reasons"]:
        entry["action"] = "update"
    return entry


def plan_file(spec, user):
    return compare(spec, state(spec, user), user)


def check_directory(path, uid, mode, create):
    """A directory we write into: never a symlink; created (or fixed) with ``mode`` and owner
    ``uid`` when ``create``. Returns what is (or would be) changed, or None."""
    try:
        info = os.lstat(path)
    except OSError:
        if create:
            os.mkdir(path, mode)
            os.chown(path, uid, -1 if uid == 0 else _gid_of(uid))
            os.chmod(path, mode)
        return "create %s" % path
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise AccessError("%s is a symlink or not a directory: refusing to write through it" % path)
    if info.st_uid != uid or stat.S_IMODE(info.st_mode) != mode:
        if create:
            os.chown(path, uid, -1 if uid == 0 else _gid_of(uid))
            os.chmod(path, mode)
        return "fix owner/mode of %s" % path
    return None


def _gid_of(uid):
    return pwd.getpwuid(uid).pw_gid


def directories(files, user):
    """Directories the files live in: ``(path, uid, mode)``, parents first (~/.ssh is 0700)."""
    out = []
    for spec in files:
        path = os.path.dirname(resolve(spec, user))
        if spec.get("home"):
            if path == user["home"].rstrip("/"):
                continue
            entry = (path, user["uid"], 0o700)
        else:
            entry = (path, 0, 0o755)
        if entry not in out:
            out.append(entry)
    return sorted(out, key=lambda e: e[0].count("/"))


def plan_from(specs, snap):
    """The plan of ``specs`` (with content) against a snapshot: on the host, or on the
    controller against the probe's snapshot (no host round trip)."""
    user = snap["user"]
    result = {"user": user, "files": [], "directories": [], "stale_users": list(snap.get("stale_users") or [])}
    if not user["exists"]:
        return result
    for path, dummy_uid, dummy_mode in directories(specs, user):
        found = snap["directories"].get(path) or {"exists": False, "ok": False}
        if not found["ok"]:
            result["directories"].append(("fix owner/mode of %s" if found["exists"] else "create %s") % path)
    for spec in specs:
        result["files"].append(compare(spec, snap["files"].get(spec["path"]) or dict(ABSENT), user))
    return result


def plan(params):
    return plan_from(params["files"], snapshot_of(params["files"], params["user"]))


def remove_block(path):
    """The managed block taken out of ``path`` (owner and mode kept); True when it was there."""
    current = read_current(path)
    if not current["exists"] or current["symlink"] or BEGIN not in (current["text"] or ""):
        return False
    found = find_block(current["text"])
    store_fs.write_atomic(path, current["text"].replace(found, "", 1).encode("utf-8"), current["mode"],
                          owner=(current["uid"], current["gid"]))
    return True


def clean_user(name):
    """What an earlier cluster user was given, taken back: the cluster key pair and the managed
    blocks of its ssh files and .bashrc. Returns the paths changed."""
    try:
        home = pwd.getpwnam(name).pw_dir
    except KeyError:
        return []
    done = []
    for rel in ("%s/%s" % (SSH_DIR, KEY_NAME), "%s/%s.pub" % (SSH_DIR, KEY_NAME)):
        path = os.path.join(home, rel)
        if os.path.lexists(path):
            os.unlink(path)
            done.append(path)
    for rel in ("%s/authorized_keys" % SSH_DIR, "%s/known_hosts" % SSH_DIR, "%s/config" % SSH_DIR, ".bashrc"):
        path = os.path.join(home, rel)
        if remove_block(path):
            done.append(path)
    return done


def apply(params):
    """Write every file that differs; the secret's content comes from ``private_key_src``."""
    user = user_info(params["user"])
    if not user["exists"]:
        raise AccessError("user %s does not exist" % params["user"])
    changed_dirs = [c for c in (check_directory(p, u, m, create=True) for p, u, m in directories(params["files"], user)) if c]
    written = []
    for spec in params["files"]:
        entry = plan_file(spec, user)
        if entry["action"] == "none":
            continue
        path = entry["path"]
        current = read_current(path)
        uid, gid = owner_ids(spec, user)
        if spec["kind"] == "secret":
            data = _read_secret(params.get("private_key_src"), spec["sha256"], path)
        else:
            data = wanted_text(spec, current).encode("utf-8")
        store_fs.write_atomic(path, data, wanted_mode(spec, current), owner=(uid, gid))
        written.append(entry)
    cleaned = dict((name, clean_user(name)) for name in params.get("stale_users") or () if name != params["user"])
    return {"user": user, "files": written, "directories": changed_dirs, "cleaned": cleaned}


def _read_secret(src, sha256, path):
    if not src:
        raise AccessError("%s differs and no private_key_src was given" % path)
    with open(src, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise AccessError("the pushed key does not have the expected sha256")
    return data
