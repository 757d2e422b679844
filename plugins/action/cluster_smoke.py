# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Launch one MPI job across the cluster: elect the launching host among the members the
controller checked (plugin_utils.validate.elect, the rule the verdict blames by), and run the
launch there only; every other host skips without a round trip. A member that is a machine
already listed under another inventory name (same SSH host key in the facts) is left out of
the election and the launch, and marked for the verdict. The verdict is
lockstep.cluster.validate's."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster_smoke import ARGUMENT_SPEC, storage_plan
from ansible_collections.lockstep.cluster.plugins.plugin_utils.cluster import address_and_aliases
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import checked, elect, same_machines

MODULE = "lockstep.cluster.cluster_smoke"


def describe_members(names, hostvars):
    """``[{"host", "name", "aliases"}]``: the name the hostfile gives each member and every
    name it may report (the cluster role's own rule); a machine listed again under another
    name also has ``same_as`` (the first name) and ``same_by`` (the evidence)."""
    out, addresses, host_facts = [], {}, {}
    for name in names:
        values = hostvars.get(name) or {}
        address, aliases = address_and_aliases(name, values)
        out.append({"host": name, "name": address, "aliases": aliases})
        addresses[name] = str(values.get("ansible_host") or address)
        host_facts[name] = values.get("ansible_facts") or {}
    again = same_machines(names, host_facts, addresses)
    for entry in out:
        entry.update(again.get(entry["host"], {}))
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            storage_plan(args)  # bad input fails on every member, before anyone launches
        except ValueError as exc:
            raise AnsibleActionFail(str(exc))
        hostvars = task_vars.get("hostvars", {})
        me = task_vars.get("inventory_hostname")
        members = describe_members(args["members"], hostvars)
        facts = {}
        for m in members:
            value = (hostvars.get(m["host"]) or {}).get(args["probe_var"]) if args["probe_var"] else {"validate": {}}
            value = self._templar.template(value) if value is not None else None
            facts[m["host"]] = value["validate"] if checked(value) or not args["probe_var"] else None
            if m.get("same_as"):
                facts[m["host"]] = None  # one machine launches and votes once, under its first name
        election = elect(args["members"], facts)
        result.update(changed=False, launch_host=election["host"], election=election)
        if election["host"] != me:
            why = "launched from %s" % election["host"] if election["host"] else \
                "no member was checked: nothing to launch on"
            result.update(skipped=True, msg=why)
            return result
        module_args = dict(self._task.args, hosts=[m["name"] for m in members if facts[m["host"]] is not None])
        smoke = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        for key in ("invocation", "_ansible_no_log", "changed"):
            smoke.pop(key, None)
        result.update(launched=True, members=members, smoke=smoke)
        result["msg"] = smoke.get("msg") or smoke.get("error") or "launched %s rank(s) from %s" % (
            smoke.get("expected_ranks"), me)
        return result
