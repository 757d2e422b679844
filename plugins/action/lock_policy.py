# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a lock against the policy (pinned, hashed, CPU-only) where it lives: on the controller."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import (
    check_policy,
    find_lock,
    format_violations,
    load_lock,
    LockError,
    require,
)

ARGUMENT_SPEC = {
    "lockfile": {"type": "path", "required": True, "aliases": ["path"]},
    "cpu_only": {"type": "bool", "default": True},
    "python_version": {"type": "str"},
}


def evaluate(path, cpu_only=True, python_version=None):
    """The task result for the lockfile at ``path`` (what the action returns, minus plumbing)."""
    try:
        lock = load_lock(path)
        python_specifier = lock.python_specifier
        violations = check_policy(lock, cpu_only=cpu_only, python_version=python_version)
    except (LockError, ValueError) as exc:
        return {"failed": True, "changed": False, "path": path, "msg": str(exc)}
    result = {
        "changed": False,
        "path": path,
        "entries": len(lock.entries),
        "sha256": lock.sha256,
        "python_specifier": python_specifier,
        "violations": [
            {"path": v.path, "line": v.line, "name": v.name, "code": v.code, "message": v.message}
            for v in violations
        ],
    }
    if violations:
        result["failed"] = True
        result["msg"] = format_violations(violations)
    return result


class ActionModule(ActionBase):
    """Validate a lockfile with ``plugin_utils.policy``; never touches the target."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            require()
        except RuntimeError as exc:
            raise AnsibleActionFail(str(exc))
        del tmp  # tmp no longer has any effect

        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        result.update(evaluate(find_lock(self, args["lockfile"]), args["cpu_only"], args["python_version"]))
        return result
