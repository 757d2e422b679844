# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the play's hosts one cluster: compute every member's files on the controller from the
play's hostvars and the cluster key, compare them with this run's probe snapshot of the member
(or ask the host once), and only then create the user, push the key and write."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import AccessError, ARGUMENT_SPEC, plan_from
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import CLUSTER_OPTIONS
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe, remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster as cc

MODULE = "lockstep.cluster.cluster"
_INTERNAL = ("stage", "files", "private_key_src", "stale_users")


def describe(plan_result, created_user):
    changes = ["create user %s" % plan_result["user"]["name"]] if created_user else []
    changes += plan_result.get("directories", [])
    changes += ["take the cluster key and blocks back from %s (an earlier cluster user)" % name
                for name in plan_result.get("stale_users") or []]
    for entry in plan_result.get("files", []):
        if entry["action"] != "none":
            why = " (%s)" % ", ".join(entry["reasons"]) if entry["action"] == "update" and entry["reasons"] else ""
            changes.append("%s %s%s" % (entry["action"], entry["path"], why))
    return changes


def diffs(plan_result):
    out = []
    for entry in plan_result.get("files", []):
        if entry["action"] != "none" and entry["kind"] != "secret" and "after" in entry:
            out.append({"before_header": entry["path"], "after_header": entry["path"],
                        "before": entry.get("before") or "", "after": entry["after"]})
        elif entry["action"] != "none" and entry["kind"] == "secret":
            out.append({"prepared": "%s: the cluster private key would be written (content not shown)" % entry["path"]})
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the private key is pushed only when the host's copy differs
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        given = [name for name in _INTERNAL if self._task.args.get(name) is not None]
        if given:
            raise AnsibleActionFail("%s are set by the action plugin, not by a task" % ", ".join(given))
        check = self._task.check_mode
        hostvars = task_vars.get("hostvars", {})
        me_name = task_vars.get("inventory_hostname")
        try:
            entries, left_out = cc.members(args["hosts"], hostvars, args["slots"])
            if args["manage_keys"]:
                private, public_line, generated = cc.ensure_key_pair(args["key_dir"], args["name"], create=not check)
            else:
                private, public_line, generated = None, None, False
        except (cc.ClusterConfigError, OSError) as exc:
            raise AnsibleActionFail("cluster %s: %s" % (args["name"], exc))
        me = next((m for m in entries if m["inventory_name"] == me_name), None)
        if me is None:
            raise AnsibleActionFail("%s is not a member with facts: run the cluster role after lockstep.cluster.probe "
                                    "(or fact gathering, gather_subset: min) on every host of O(hosts)" % me_name)
        if args["manage_keys"] and public_line is None:  # check mode, no key yet: any value differs
            public_line = "ssh-ed25519 (generated-at-apply) lockstep-cluster-%s" % args["name"]
        # Check mode without a key pair yet: nothing to hash, any host copy differs.
        key_sha256 = cc.key_sha256(private) if private and not (check and generated) else "0" * 64
        specs = cc.member_specs(args, me, entries, key_sha256, public_line)
        result.update(hostfile=args["hostfile"], members=[m["name"] for m in entries], left_out=left_out)
        if left_out:
            result["warnings"] = ["left out of the cluster (no facts in this play, unreachable?): %s"
                                  % ", ".join(left_out)]

        module_args = dict(self._task.args, stage="plan", files=specs)
        answered = probe.section(task_vars, "cluster", dict((k, args[k]) for k in CLUSTER_OPTIONS))
        if answered:
            # This run's probe took the member's snapshot: compared here, no host round trip.
            try:
                planned = plan_from(specs, answered["snapshot"])
            except AccessError as exc:
                raise AnsibleActionFail("%s: %s" % (me_name, exc))
        else:
            planned = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        if planned.get("failed") or planned.get("unreachable"):
            result.update(planned)
            return result
        user = planned["user"]
        create_user = not user["exists"]
        if create_user and not args["manage_user"]:
            raise AnsibleActionFail("user %s does not exist on %s and cluster_manage_user is off"
                                    % (args["user"], me_name))
        if create_user:
            # Nothing exists yet under a home that does not exist yet: every file is new.
            planned["files"] = [dict(spec, action="create", reasons=["content"], before="",
                                     after=spec.get("content") if spec["kind"] != "secret" else None,
                                     path=spec["path"] if not spec.get("home") else "~%s/%s" % (args["user"], spec["path"]))
                                for spec in specs]
        changes = describe(planned, create_user)
        result["user"] = user
        result["changes"] = changes
        result["changed"] = bool(changes)
        if self._task.diff and changes:
            result["diff"] = diffs(planned)
        if not changes or check:
            return result
        result["ansible_facts"] = probe.changed_fact(task_vars, "cluster")

        if create_user:
            made = self._execute_module(module_name="ansible.builtin.user", task_vars=task_vars, module_args={
                "name": args["user"], "shell": args["user_shell"], "create_home": True, "state": "present"})
            if made.get("failed") or made.get("unreachable"):
                result.update(failed=True, msg="cannot create user %s: %s" % (args["user"], made.get("msg")))
                return result
        needs_key = args["manage_keys"] and (create_user or any(
            f["kind"] == "secret" and f["action"] != "none" for f in planned["files"]))
        try:
            if needs_key:
                module_args["private_key_src"] = remote.push_file(self, private, "cluster-key")
            module_args.update(stage="apply", stale_users=planned.get("stale_users") or [])
            applied = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        finally:
            remote.cleanup(self)
        if applied.get("failed") or applied.get("unreachable"):
            result.update(applied)
            return result
        result["user"] = applied["user"]
        return result
