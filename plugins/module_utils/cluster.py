# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cluster member's files: are they exactly what the
controller computed (content, owner, mode), and write them when asked (stdlib only).

Three kinds of file: ``file`` (the whole content is ours: the hostfile), ``block`` (one managed
block in a file others also write: authorized_keys, known_hosts, ssh config, .bashrc) and
``secret`` (the private key: only its sha256 travels in the module arguments; the content
comes as a pushed file). Files under the user's home are written as that user would own
them, through a temp file and rename(2), never through a symlink.
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
)

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


def plan_file(spec, user):
    """What writing this file would change: ``{"path", "action", "reasons", "before", "after"}``
    with action ``none``, ``create`` or ``update`` (content, owner or mode)."""
    path = resolve(spec, user)
    current = read_current(path)
    entry = {"path": path, "kind": spec["kind"], "action": "none", "reasons": []}
    if current["symlink"]:
        entry.update(action="update", reasons=["is a symlink or not a regular file"])
        return entry
    if spec["kind"] == "secret":
        same = current["exists"] and hashlib.sha256(current["data"]).hexdigest() == spec["sha256"]
        if not same:
            entry["reasons"].append("content")
    else:
        try:
            after = wanted_text(spec, current)
        except AccessError as exc:
            raise AccessError("%s: %s" % (path, exc))
        if not current["exists"] or current["text"] != after:
            entry["reasons"].append("content")
            entry["before"], entry["after"] = current["text"] or "", after
    if current["exists"]:
        uid, gid = owner_ids(spec, user)
        if (current["uid"], current["gid"]) != (uid, gid):
            entry["reasons"].append("owner")
        if current["mode"] != wanted_mode(spec, current):
            entry["reasons"].append("mode")
    if not current["exists"]:
        entry["action"] = "create"
    elif entry["reasons"]:
        entry["action"] = "update"
    return entry


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


def plan(params):
    user = user_info(params["user"])
    result = {"user": user, "files": [], "directories": []}
    if not user["exists"]:
        return result
    for path, uid, mode in directories(params["files"], user):
        if os.path.isdir(os.path.dirname(path)):
            change = check_directory(path, uid, mode, create=False)
            if change:
                result["directories"].append(change)
        else:
            result["directories"].append("create %s" % path)
    for spec in params["files"]:
        if os.path.isdir(os.path.dirname(resolve(spec, user))):
            result["files"].append(plan_file(spec, user))
        else:
            entry = {"path": resolve(spec, user), "kind": spec["kind"], "action": "create", "reasons": ["content"]}
            if spec["kind"] != "secret":
                entry.update(before="", after=wanted_text(spec, ABSENT))
            result["files"].append(entry)
    return result


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
    return {"user": user, "files": written, "directories": changed_dirs}


def _read_secret(src, sha256, path):
    if not src:
        raise AccessError("%s differs and no private_key_src was given" % path)
    with open(src, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise AccessError("the pushed key does not have the expected sha256")
    return data
