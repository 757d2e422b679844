# Controller side: an action plugin, run inside ansible-playbook.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of lockstep.cluster.drift_report: cluster drift reports, written on the controller from every host's env_drift result."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.plugin_utils import deps
from ansible_collections.lockstep.cluster.plugins.plugin_utils import report

ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    result_var=dict(type="str", default="_validate_result"),
    dest=dict(type="path", required=True),
    run_id=dict(type="str", required=True),
    fail_on_drift=dict(type="bool", default=False),
    cluster_var=dict(type="str", default="_validate_cluster"),
    # What a host registered while provisioned: why it left the play before the check.
    earlier_vars=dict(type="dict", default={"_venv_sync": "the venv role (uv_sync)"}),
)


def cluster_problems(cluster):
    """One line per disagreeing field and per host the smoke test blames."""
    lines = ["%s: %s is %s, the others %s" % (host, d["field"], d["value"], d["reference"])
             for host, found in sorted(cluster["gate"]["disagreements"].items()) for d in found]
    return lines + list((cluster["smoke"] or {}).get("problems") or [])


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
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
        hostvars = task_vars.get("hostvars", {})
        results = {}
        for host in args["hosts"]:
            value = hostvars[host].get(args["result_var"]) if host in hostvars else None
            # Templating the registered dict gives plain data to serialize.
            results[host] = self._templar.template(value) if value is not None else None
            if results[host] is None and host in hostvars:
                for var, what in sorted(args["earlier_vars"].items()):
                    registered = hostvars[host].get(var)
                    earlier = report.earlier_failure(what, self._templar.template(registered)
                                                     if registered is not None else None)
                    if earlier:
                        results[host] = earlier
                        break
        lock = next((r["lock"] for r in results.values() if r and r.get("lock")), None)
        # The launching host's registered cluster smoke result; the others skipped the task.
        registered = [hostvars[h].get(args["cluster_var"]) for h in args["hosts"]
                      if h in hostvars and hostvars[h].get(args["cluster_var"]) is not None]
        cluster = next((r for r in registered if not r.get("skipped")), registered[0] if registered else None)
        cluster = self._templar.template(cluster) if cluster is not None else None
        try:
            built = report.write(os.path.abspath(args["dest"]), args["run_id"], args["hosts"], results, lock, cluster)
        except report.ReportError as exc:
            raise AnsibleActionFail(str(exc))
        except (IOError, OSError) as exc:
            raise AnsibleActionFail("cannot write reports under %s: %s" % (args["dest"], to_native(exc)))
        result.update(
            changed=False,
            directory=built["directory"],
            files=built["files"],
            table=built["table"],
            statuses=built["statuses"],
            drifted_hosts=built["drifted"],
            unreachable_hosts=built["unreachable"],
            consistency=built["consistency"],
            cluster={"verdict": built["cluster"]["verdict"], "failed_hosts": built["cluster"]["failed_hosts"],
                     "problems": cluster_problems(built["cluster"])},
        )
        bad = built["drifted"] + built["unreachable"]
        summary = "%d host(s): %d drifted, %d unreachable or failed, %d fingerprint(s); reports in %s" % (
            len(args["hosts"]), len(built["drifted"]), len(built["unreachable"]),
            len(built["consistency"]["groups"]), built["directory"],
        )
        result["msg"] = summary + "; cluster: %s" % built["cluster"]["verdict"]
        if (bad or built["cluster"]["verdict"] == "fail") and args["fail_on_drift"]:
            result["failed"] = True
        return result
