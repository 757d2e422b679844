# -*- coding: utf-8 -*-
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
)


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
        lock = next((r["lock"] for r in results.values() if r and r.get("lock")), None)
        try:
            built = report.write(os.path.abspath(args["dest"]), args["run_id"], args["hosts"], results, lock)
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
        )
        bad = built["drifted"] + built["unreachable"]
        summary = "%d host(s): %d drifted, %d unreachable or failed, %d fingerprint(s); reports in %s" % (
            len(args["hosts"]), len(built["drifted"]), len(built["unreachable"]),
            len(built["consistency"]["groups"]), built["directory"],
        )
        result["msg"] = summary
        if bad and args["fail_on_drift"]:
            result["failed"] = True
        return result
