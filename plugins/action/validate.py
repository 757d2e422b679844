# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge an audit and write its reports on the controller, once for the play: every host's
probe against the lock, the hosts against each other, the cluster launch; the run fails here
and nowhere else."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate, validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import LockError, read_lock, require
from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import ARGUMENT_SPEC as CLUSTER_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster as cc

ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    lockfile=dict(type="path", required=True),
    cluster=dict(type="dict"),
    roles=dict(type="list", elements="str", default=[], choices=["uv", "cluster"]),
    probe_var=dict(type="str", default="_validate_probe"),
    cluster_var=dict(type="str", default="_validate_cluster"),
    cluster_smoke=dict(type="bool", default=True),
    smoke_test=dict(type="bool", default=True),
    ignore_packages=dict(type="list", elements="str", default=[]),
    uv_version=dict(type="str"),
    dest=dict(type="path", required=True),
    run_id=dict(type="str", required=True),
    fail_on_drift=dict(type="bool", default=False),
    # What a host registered while provisioned: why it left the play before the check.
    earlier_vars=dict(type="dict", default={"_venv_sync": "the venv role"}),
)


def _summary(report, status):
    if report is None:
        return {"status": status[0], "message": status[1]}
    return dict((k, report[k]) for k in ("status", "problems", "counts", "checks", "fingerprint"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def _registered(self, hostvars, host, name):
        value = (hostvars.get(host) or {}).get(name) if host in hostvars else None
        # Templating the registered dict gives plain data to judge and serialize.
        return self._templar.template(value) if value is not None else None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            require()
        except RuntimeError as exc:
            raise AnsibleActionFail(str(exc))
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        hostvars = task_vars.get("hostvars", {})
        path, lock = read_lock(self, args["lockfile"])
        probes = dict((h, self._registered(hostvars, h, args["probe_var"])) for h in args["hosts"])
        for host in [h for h in args["hosts"] if probes[h] is None]:
            for var, what in sorted(args["earlier_vars"].items()):
                probes[host] = validate.earlier_failure(what, self._registered(hostvars, host, var))
                if probes[host]:
                    break
        launches = [self._registered(hostvars, h, args["cluster_var"]) for h in args["hosts"]]
        expected = {} if "cluster" in args["roles"] else None
        if args["cluster"]:
            # What the cluster role would write on each member now, compared with its snapshot.
            expected, error = cc.expected_files(args["cluster"], hostvars, CLUSTER_SPEC)
            if error:
                raise AnsibleActionFail("cannot work out the cluster files: %s" % error)
        try:
            verdict = validate.judge(
                args["hosts"], probes, lock, {"path": path, "sha256": lock.sha256, "entries": len(lock.entries)},
                launches, cluster_smoke=args["cluster_smoke"], ignore=args["ignore_packages"],
                uv_version=args["uv_version"], smoke_test=args["smoke_test"], expected_files=expected,
                roles=args["roles"])
        except LockError as exc:  # markers that cannot be evaluated, or two pins apply
            raise AnsibleActionFail("the lock does not fit a host: %s" % to_native(exc))
        try:
            built = validate_report.write(os.path.abspath(args["dest"]), args["run_id"], verdict)
        except validate_report.ReportError as exc:
            raise AnsibleActionFail(str(exc))
        except (IOError, OSError) as exc:
            raise AnsibleActionFail("cannot write reports under %s: %s" % (args["dest"], to_native(exc)))
        statuses = dict((h, s[0]) for h, s in verdict["statuses"].items())
        result.update(
            changed=False, directory=built["directory"], files=built["files"], table=built["table"],
            statuses=statuses, drifted_hosts=verdict["drifted"], unreachable_hosts=verdict["unreachable"],
            gate=verdict["gate"], cluster=dict(verdict["cluster"], problems=verdict["problems"]),
            problems=verdict["problems"],
            # Per host what a person acts on; the whole facts are in <host>.json.
            reports=dict((h, _summary(r, verdict["statuses"][h])) for h, r in verdict["reports"].items()),
        )
        counts = "%d host(s): %d drifted, %d unreachable or failed; cluster %s" % (
            len(args["hosts"]), len(verdict["drifted"]), len(verdict["unreachable"]), verdict["cluster"]["verdict"])
        result["msg"] = "%s; reports in %s" % (counts, built["directory"])
        if verdict["failed"] and args["fail_on_drift"]:
            # The host and its cause in the message itself, not only in a side file.
            result["failed"] = True
            result["msg"] = "%s:\n%s\nSee %s/summary.md" % (counts, "\n".join("- " + p for p in verdict["problems"]),
                                                            built["directory"])
        return result
