# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sync a venv with the lock: find, parse and police the lock here, ask the
host once what a sync would do, and only then push the lock (and, with a wheelhouse, the files
the host lacks) and apply."""

from __future__ import annotations

import os
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.module_utils.venv import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils import probe, remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import LockError, python_version_reason, require
from ansible_collections.lockstep.cluster.plugins.plugin_utils.venv import outcome, prepare, sync_lock, WheelhouseError

MODULE = "lockstep.cluster.venv"
_INTERNAL = ("stage", "lockfile_sha256", "remote_lockfile", "expected", "wheelhouse_incoming", "wheelhouse_files",
             "build")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the lock and wheelhouse files are pushed only when a build needs them
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            require()
        except RuntimeError as exc:
            raise AnsibleActionFail(str(exc))
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        given = [name for name in _INTERNAL if self._task.args.get(name) is not None]
        if given:
            raise AnsibleActionFail("%s are set by the action plugin, not by a task" % ", ".join(given))
        secrets = remote.secrets_of([args["index_url"]] + list(args["extra_index_urls"]))
        try:
            return remote.redact(self._run(result, args, task_vars or {}), secrets)
        except (AnsibleActionFail, WheelhouseError, LockError) as exc:
            raise AnsibleActionFail(remote.redact(str(exc), secrets))

    def _run(self, result, args, task_vars):
        prepared = prepare(self, args, task_vars)
        path, lock, airgap = prepared["path"], prepared["lock"], prepared["airgap"]
        result["lock"] = {"path": path, "sha256": lock.sha256, "entries": len(lock.entries), "format": lock.format}
        module_args = dict(self._task.args, stage="plan", **prepared["module_overrides"])
        # This run's probe asked the host the same question: its plan, without a round trip.
        answered = probe.section(task_vars, "venv", dict(self._task.args, **prepared["module_overrides"]))
        if answered and not answered["result"].get("failed"):
            plan = answered["result"]
        else:
            plan = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            plan = remote.killed(plan, MODULE, "checked the venv %s" % args["path"], "nothing was changed")
        if plan.get("failed") or plan.get("unreachable"):
            result.update(plan)
            return result
        markers = plan["python"]["marker_environment"]
        reason = python_version_reason(lock, markers["python_full_version"])
        if reason:
            raise AnsibleActionFail("%s:%d: python: %s (venv_python %s)"
                                    % (path, lock.header_line, reason, plan["python"]["executable"]))
        try:
            expected = dict((name, entry.version) for name, entry in lock.for_environment(markers).items())
        except LockError as exc:
            raise AnsibleActionFail("the lock does not fit this host: %s" % exc)
        if plan["action"] == "none" and not plan.get("repairs"):
            result.update(outcome(plan, self._task.diff, predicted=self._task.check_mode))
            return self._facts(result, task_vars)
        if self._task.check_mode:
            if plan["action"] == "build":
                plan["after"] = expected  # what uv pip sync makes of a fresh venv
            result.update(outcome(plan, self._task.diff, predicted=True))
            if airgap:
                result["wheelhouse"] = airgap.predict(plan)
            if plan.get("missing_packages"):
                remote.install_into(self, task_vars, plan["package_manager"], plan["missing_packages"], result)
            return self._facts(result, task_vars)

        try:
            packages = plan.get("missing_packages") or []
            if airgap and not airgap.builds_here(plan):
                packages = []  # only a host that builds needs a compiler
            if packages and not remote.install_into(self, task_vars, plan["package_manager"], packages, result):
                return result
            if airgap:
                incoming, overrides = airgap.prepare(plan, module_args)
                text, sha = sync_lock(lock, overrides)
                prepared["text"] = text
                result["wheelhouse"] = airgap.report
                module_args.update(wheelhouse_incoming=incoming, wheelhouse_files=airgap.selected, lockfile_sha256=sha)
            module_args.update(stage="apply", remote_lockfile=self._push_lock(path, prepared["text"]), expected=expected)
            applied = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            applied = remote.killed(
                applied, MODULE, "built a new venv for %s" % args["path"],
                "%s still points at a complete, sealed venv (the flip is one rename) and the next run removes "
                "any half-built one in %s" % (args["path"], args["store"]))
        finally:
            remote.cleanup(self)
        if applied.get("failed") or applied.get("unreachable"):
            result.update(applied)
            return result
        result.update(outcome(applied, self._task.diff, predicted=False))
        return self._facts(result, task_vars)

    def _facts(self, result, task_vars):
        """The venv facts later tasks read, and the change mark the probe's reuse honours."""
        facts = {"venv_current": result.get("venv"), "venv_previous": result.get("previous"),
                 "venv_lock_sha256": result["lock"]["sha256"]}
        if result.get("changed") and not self._task.check_mode:
            facts.update(probe.changed_fact(task_vars, "venv"))
        result["ansible_facts"] = facts
        return result

    def _push_lock(self, path, text):
        if text is None:
            return remote.push_file(self, path, "lockfile.txt")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write(text)
        try:
            return remote.push_file(self, handle.name, "lockfile.txt")
        finally:
            os.unlink(handle.name)
