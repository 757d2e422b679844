# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the task result of a venv sync — package changes, tampered files and the
``--diff`` text, from the package sets and environments the host module reported."""

from __future__ import annotations

_PASSED = ("action", "venv", "previous", "key", "drift", "python", "commands", "built", "pruned", "sync_changes",
           "missing_packages", "msg", "repairs", "cache_check")


def package_diff(before, after):
    """Diff of two ``{name: version}`` maps -> list of uv-style change dicts."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is not None:
            changes.append({"name": name, "version": old, "action": "uninstalled"})
        if new is not None:
            changes.append({"name": name, "version": new, "action": "installed"})
    return changes


def render_diff(before, after, before_env, after_env, before_path, after_path, tampered=()):
    """Ansible ``diff`` dict: package set, edited files and MPI environment, before and after."""
    def block(path, pkgs, env, edits):
        lines = ["# venv: %s" % (path or "(none)")]
        lines.extend("%s==%s" % (name, pkgs[name]) for name in sorted(pkgs))
        for change in edits:
            who = "%s==%s" % (change["name"], change["version"]) if change.get("version") else change["name"]
            lines.append("# tampered %s: %s" % (who, " ".join(change["files"])))
        if env:
            lines.append("# lockstep.env")
            lines.extend("%s=%s" % (key, env[key]) for key in sorted(env))
        return "\n".join(lines) + "\n"

    return {
        "before_header": before_path or "(no venv)",
        "after_header": after_path or "(no venv)",
        "before": block(before_path, before, before_env, tampered),
        "after": block(after_path, after, after_env, ()),
    }


def outcome(res, want_diff, predicted):
    """The task result from the module's plan (``predicted``) or apply result."""
    out = dict((key, res[key]) for key in _PASSED if key in res)
    before = res.get("before") or {}
    after = res.get("after", before) or {}
    tampered = res.get("tampered") or []
    changed = res.get("action", "none") != "none"
    out["changed"] = changed or bool(res.get("repairs"))
    out["changes"] = (package_diff(before, after) + list(tampered)) if changed else []
    if want_diff and changed:
        out["diff"] = render_diff(before, after, res.get("before_env") or {}, res.get("after_env") or {},
                                  res.get("previous"), res.get("venv"), tampered)
    if "msg" not in out:
        verb = "would" if predicted else "did"
        out["msg"] = {"none": "the venv is the lock", "flip": "%s flip to a kept venv" % verb,
                      "build": "%s build a new venv" % verb}.get(res.get("action"), res.get("action"))
        if res.get("repairs"):
            out["msg"] += "; " + "; ".join(res["repairs"])
    return out
