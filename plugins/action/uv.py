# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install uv at its pin: check the inputs here, ask the host once, and
only when it is not converged install the missing OS packages, check and push the archive, and
run the module again."""

from __future__ import annotations

import hashlib

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.hashing import secure_hash

from ansible_collections.lockstep.cluster.plugins.module_utils.uv import ARGUMENT_SPEC, check_inputs, normalize
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe, remote

MODULE = "lockstep.cluster.uv"


def _failed(res):
    return bool(res.get("failed") or res.get("unreachable"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the archive is pushed only when an install needs it
    _supports_check_mode = True
    _supports_async = False

    def _archive(self, params):
        """Controller path of archive_src, after checking its sha256 here."""
        src = params["archive_src"]
        try:
            path = self._find_needle("files", src)
        except AnsibleError:
            raise AnsibleActionFail("archive_src %s not found on the controller (searched the role's files/, "
                                    "the playbook directory and the current directory)" % src)
        actual = secure_hash(path, hash_func=hashlib.sha256)
        if actual != params["archive_sha256"]:
            raise AnsibleActionFail("archive_src %s has sha256 %s, not archive_sha256 %s"
                                    % (path, actual, params["archive_sha256"]))
        return path

    def _facts(self, result, task_vars):
        """uv_executable for the roles after this one, and the change mark the probe's reuse honours."""
        facts = {"uv_executable": result.get("uv")}
        if result.get("changed") and not self._task.check_mode and not _failed(result):
            facts.update(probe.changed_fact(task_vars, "uv"))
        result["ansible_facts"] = facts
        return result

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        if self._task.args.get("remote_archive") is not None:
            raise AnsibleActionFail("remote_archive is set by the action plugin, not by a task")
        params = normalize(args, task_vars.get("ansible_facts"))
        problems = check_inputs(params)
        if problems:
            raise AnsibleActionFail("; ".join(problems))

        module_args = dict(self._task.args)
        answered = probe.answer(task_vars, "uv", module_args, self._task.check_mode)
        if answered is not None:  # this run's probe asked exactly this: no round trip
            result.update(answered)
            return self._facts(result, task_vars)
        first = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        needs = first.pop("needs", None) or []
        result.update(first)
        if _failed(first) or not (first.get("changed") or needs):
            return self._facts(result, task_vars)  # converged: this was the only round trip

        # Not converged (in check mode: would not be). The controller's part.
        src = self._archive(params) if first.get("install") and params["method"] == "archive" \
            and params["archive_src"] else None
        if self._task.check_mode:
            if first.get("missing_packages"):
                remote.install_into(self, task_vars, first["package_manager"], first["missing_packages"], result)
            return self._facts(result, task_vars)
        if not needs:
            return self._facts(result, task_vars)  # the module did everything in its first run

        try:
            if "packages" in needs and not remote.install_into(self, task_vars, first["package_manager"],
                                                               first["missing_packages"], result):
                return self._facts(result, task_vars)
            if "archive" in needs:
                module_args["remote_archive"] = remote.push_file(self, src, "uv.tar.gz")
            second = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        finally:
            remote.cleanup(self)
        still = second.pop("needs", None)
        if still and not _failed(second):
            second.update(failed=True, msg="%s still missing after the package install"
                          % ", ".join(second.get("missing_packages") or still))
        packages_changed = bool(result.get("packages", {}).get("changed"))
        # The first run's diff and missing packages describe the whole change.
        result.update((k, v) for k, v in second.items() if k not in ("diff", "missing_packages"))
        result["changed"] = not _failed(second) and bool(second.get("changed") or packages_changed)
        if packages_changed and not _failed(second):
            result["msg"] = "; ".join(m for m in ("installed %s" % ", ".join(first["missing_packages"]),
                                                  second.get("msg") if second.get("changed") else None) if m)
        return self._facts(result, task_vars)
