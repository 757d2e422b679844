# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe a host once per run: every role's question and the audit's, answered in one module run.
With ``keep`` (site.yml's first task) the answer is kept as the host's fact ``lockstep_probe``
for this run, so the roles and the audit reuse it and a converged host costs this one round
trip; asked again in the same run, it answers from that fact unless a role changed the host
since (plugin_utils.probe)."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.probe import ARGUMENT_SPEC, settings
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe, remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils import venv as venv_prep

MODULE = "lockstep.cluster.probe"
ROLE_SECTIONS = ("uv", "mpi", "venv", "cluster")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def _reusable(self, task_vars, args):
        """This run's answer when it already answers every section asked, with the same options."""
        answer = probe.current(task_vars)
        if not answer:
            return None
        for name in ROLE_SECTIONS:
            if args.get(name) is not None and probe.section(task_vars, name, self._asked(name, args[name], task_vars)) is None:
                return None
        if args.get("validate") is not None and (
                "validate" not in answer["sections"] or answer.get("validate_args") != args["validate"]):
            return None
        return answer

    def _asked(self, name, given, task_vars):
        """A section's options as the role's action plugin will give them (the venv lock's sha256
        and wheelhouse choices are worked out here, on the controller, by the same code)."""
        if name != "venv":
            return given
        params, error = settings("venv", given)
        if error:
            raise AnsibleActionFail("venv: %s" % error)
        prepared = venv_prep.prepare(self, params, task_vars)
        return dict(given, **prepared["module_overrides"])

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        errors = probe.role_argument_errors(args["role_arguments"], task_vars, self._templar.template)
        if errors:
            raise AnsibleActionFail("Validation of the roles' arguments failed:\n%s" % "\n".join(errors))
        secrets = remote.secrets_of([(args.get("venv") or {}).get("index_url")]
                                    + list((args.get("venv") or {}).get("extra_index_urls") or []))
        answer = self._reusable(task_vars, args)
        if answer:
            result.update(changed=False, reused=True, msg="this run's probe (nothing changed since)",
                          **answer["sections"])
            return result
        module_args = dict((k, v) for k, v in self._task.args.items() if v is not None and k != "role_arguments")
        for name in ROLE_SECTIONS:
            if args.get(name) is not None:
                module_args[name] = self._asked(name, args[name], task_vars)
        found = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        for key in ("invocation", "_ansible_no_log"):
            found.pop(key, None)
        if found.get("failed") or found.get("unreachable"):
            result.update(found)
            return result
        facts = found.pop("facts", {})
        sections = dict((k, v) for k, v in found.items() if k in ROLE_SECTIONS + ("validate",))
        result.update(changed=False, seconds=found.get("seconds") or {}, **sections)
        errors = ["%s: %s" % (name, s["error"]) for name, s in sorted(sections.items())
                  if isinstance(s, dict) and s.get("error")]
        result["msg"] = remote.redact("; ".join(errors) or "probed: %s" % ", ".join(sorted(sections)), secrets)
        # The OS facts the roles use (by setup's names); with keep, the answers too, for this run.
        result["ansible_facts"] = dict(facts)
        if args["keep"]:
            result["ansible_facts"].update({
                probe.FACT: {"run": probe.run_id(), "sections": sections, "validate_args": args.get("validate")},
                probe.CHANGED: {"run": probe.run_id(), "roles": []},
            })
        return result
