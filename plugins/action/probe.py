# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe a host once: parse the lock here (``packaging`` lives on
the controller), run the module once on the host for raw facts, compare here."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.plugin_utils import deps
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import evaluate
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import read_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import LockError


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        try:
            deps.require()
        except RuntimeError as exc:
            raise AnsibleActionFail(str(exc))
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        path, lock = read_lock(self, args["lockfile"])

        facts = self._execute_module(
            module_name="lockstep.cluster.probe", module_args=self._task.args, task_vars=task_vars
        )
        if facts.get("failed") or facts.get("unreachable"):
            result.update(facts)
            return result
        for key in ("invocation", "_ansible_no_log", "changed"):
            facts.pop(key, None)

        try:
            report = evaluate(lock, facts, ignore=args["ignore_packages"], uv_version=args["uv_version"],
                              smoke_test=args["smoke_test"])
        except LockError as exc:  # markers that cannot be evaluated, or two pins apply
            raise AnsibleActionFail("lock does not fit this host: %s" % to_native(exc))
        result.update(facts)
        result.update(report)
        result["lock"] = {"path": path, "sha256": lock.sha256, "entries": len(lock.entries)}
        result["drifted"] = report["status"] == "drift"
        result["changed"] = False
        if result["drifted"] and args["fail_on_drift"]:
            result["failed"] = True
            result["msg"] = "drift from %s: %s" % (os.path.basename(path), "; ".join(report["problems"]))
        else:
            result["msg"] = "%s: %s" % (report["status"], "; ".join(report["problems"]) or "matches the lock")
        return result
