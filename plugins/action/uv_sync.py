# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of lockstep.cluster.uv_sync: find, parse and police the lock here, ask the
host once what a sync would do, and only then push the lock and apply."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.venv_sync import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils import remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils.locate import read_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lockfile import LockError
from ansible_collections.lockstep.cluster.plugins.plugin_utils.policy import (
    check_policy,
    format_violations,
    python_version_reason,
)
from ansible_collections.lockstep.cluster.plugins.plugin_utils.venv_diff import outcome

MODULE = "lockstep.cluster.uv_sync"
_INTERNAL = ("stage", "lockfile_sha256", "remote_lockfile", "expected")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the lock is pushed only when a build needs it
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        given = [name for name in _INTERNAL if self._task.args.get(name) is not None]
        if given:
            raise AnsibleActionFail("%s are set by the action plugin, not by a task" % ", ".join(given))
        path, lock = read_lock(self, args["lockfile"])
        violations = check_policy(lock, cpu_only=args["cpu_only"])
        if violations:
            raise AnsibleActionFail(format_violations(violations))
        result["lock"] = {"path": path, "sha256": lock.sha256, "entries": len(lock.entries)}

        module_args = dict(self._task.args, lockfile=path, lockfile_sha256=lock.sha256, stage="plan")
        plan = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        if plan.get("failed") or plan.get("unreachable"):
            result.update(plan)
            return result
        markers = plan["python"]["marker_environment"]
        reason = python_version_reason(lock, markers["python_full_version"])
        if reason:
            raise AnsibleActionFail("%s:%d: python: %s (venv_python %s)"
                                    % (path, lock.header_line, reason, plan["python"]["executable"]))
        try:
            expected = dict((name, entry.version) for name, entry in lock.for_environment(markers).items())
        except LockError as exc:
            raise AnsibleActionFail("the lock does not fit this host: %s" % exc)
        if plan["action"] == "none" or self._task.check_mode:
            if plan["action"] == "build":
                plan["after"] = expected  # what uv pip sync makes of a fresh venv
            result.update(outcome(plan, self._task.diff, predicted=self._task.check_mode))
            if plan.get("missing_packages") and plan["action"] != "none":
                result["packages"] = remote.install_packages(self, task_vars, plan["package_manager"],
                                                             plan["missing_packages"])
            return result

        try:
            if plan.get("missing_packages"):
                installed = remote.install_packages(self, task_vars, plan["package_manager"], plan["missing_packages"])
                result["packages"] = installed
                if installed.get("failed"):
                    result.update(failed=True, msg="cannot install %s: %s"
                                  % (", ".join(plan["missing_packages"]), installed.get("msg")))
                    return result
            module_args.update(stage="apply", remote_lockfile=remote.push_file(self, path, "lockfile.txt"),
                               expected=expected)
            applied = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        finally:
            remote.cleanup(self)
        if applied.get("failed") or applied.get("unreachable"):
            result.update(applied)
            return result
        result.update(outcome(applied, self._task.diff, predicted=False))
        return result
