# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe a host once: every question asked (its sections) answered in one module run; the
controller judges the answers later (plugin_utils.validate), where ``packaging`` lives."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.probe import ARGUMENT_SPEC

MODULE = "lockstep.cluster.probe"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        answer = self._execute_module(module_name=MODULE, module_args=self._task.args, task_vars=task_vars)
        for key in ("invocation", "_ansible_no_log"):
            answer.pop(key, None)
        result.update(answer)
        result["changed"] = False
        if not (result.get("failed") or result.get("unreachable")):
            errors = ["%s: %s" % (name, section["error"]) for name, section in sorted(answer.items())
                      if isinstance(section, dict) and section.get("error")]
            result["msg"] = "; ".join(errors) or "probed: %s" % ", ".join(sorted(k for k in args if args[k]))
        return result
