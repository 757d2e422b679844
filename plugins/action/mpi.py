# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install and select one system MPI: ask the host once; only when the flavor's
packages are missing, install them with the distribution's package module and ask again."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe, remote

MODULE = "lockstep.cluster.mpi"


def _failed(res):
    return bool(res.get("failed") or res.get("unreachable"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def _facts(self, result, task_vars):
        """mpi_runtime (flavor, version, launcher, mpicc, libmpi, the venv's env) for the roles after
        this one, and the change mark the probe's reuse honours."""
        facts = {"mpi_runtime": result.get("runtime") or {}}
        if result.get("changed") and not self._task.check_mode and not _failed(result):
            facts.update(probe.changed_fact(task_vars, "mpi"))
        result["ansible_facts"] = facts
        return result

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        module_args = dict(self._task.args)
        answered = probe.answer(task_vars, "mpi", module_args, self._task.check_mode)
        if answered is not None:  # this run's probe asked exactly this: no round trip
            result.update(answered)
            return self._facts(result, task_vars)
        first = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        needs = first.pop("needs", None) or []
        result.update(first)
        if _failed(first):
            return result
        missing = first.get("missing_packages") or []
        if self._task.check_mode:
            if missing:
                remote.install_into(self, task_vars, first["package_manager"], missing, result)
            return self._facts(result, task_vars)
        if "packages" not in needs:
            return self._facts(result, task_vars)  # one round trip: converged, or selected in this run

        if not remote.install_into(self, task_vars, first["package_manager"], missing, result):
            return result
        installed = result["packages"]
        second = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        if second.pop("needs", None) and not _failed(second):
            second.update(failed=True, msg="%s still missing after the package install"
                          % ", ".join(second.get("missing_packages") or missing))
        if "diff" in first and "diff" in second:  # packages, then the selection
            second["diff"] = dict((k, first["diff"][k] + second["diff"][k]) for k in ("before", "after"))
        result.update((k, v) for k, v in second.items() if k != "missing_packages")
        result["changed"] = not _failed(second) and bool(second.get("changed") or installed.get("changed"))
        if result["changed"] and not _failed(second):
            result["msg"] = "installed %s; %s" % (", ".join(missing), second.get("msg"))
        return self._facts(result, task_vars)
