# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Launch one MPI job across the cluster: pick the members the controller reached,
run the launch once on the launching host, and judge it per host against each host's own
env_drift result."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster_smoke import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import smoke_verdict

MODULE = "lockstep.cluster.cluster_smoke"


def checked(result):
    """An env_drift result the host really produced (not unreachable, not failed)."""
    return bool(result) and result.get("status") in ("ok", "drift")


def describe_members(names, hostvars):
    out = []
    for name in names:
        hv = hostvars.get(name) or {}
        address = str(hv.get("cluster_address") or name)
        aliases = [a for a in (address, name, hv.get("ansible_host")) if a]
        out.append({"host": name, "name": address, "aliases": list(dict.fromkeys(str(a) for a in aliases))})
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        hostvars = task_vars.get("hostvars", {})
        members = describe_members(args["members"], hostvars)
        results = {}
        for m in members:
            if not args["result_var"]:  # nothing to compare with: launch on every member
                results[m["host"]] = {"status": "ok"}
                continue
            value = (hostvars.get(m["host"]) or {}).get(args["result_var"])
            value = self._templar.template(value) if value is not None else None
            results[m["host"]] = value if checked(value) else None
        launch_host = self._task.delegate_to or task_vars.get("inventory_hostname")
        module_args = dict(self._task.args, hosts=[m["name"] for m in members if results[m["host"]]])
        if not module_args["hosts"]:
            smoke = {"failed": True, "msg": "no member was checked: nothing to launch on"}
        else:
            smoke = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            for key in ("invocation", "_ansible_no_log", "changed"):
                smoke.pop(key, None)
        verdict = smoke_verdict(members, results, smoke, launch_host)
        # The verdict is the outcome; the reports (drift_report) decide whether it fails the play.
        result.update(changed=False, passed=verdict["passed"], verdict=verdict, smoke=smoke)
        outcome = "passed" if verdict["passed"] else "FAILED"
        result["msg"] = "cluster smoke %s: %s" % (outcome, "; ".join(verdict["problems"]) or "every host ran its rank")
        return result
