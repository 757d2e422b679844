# Controller side: an action plugin, run inside ansible-playbook.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of lockstep.cluster.uv_sync: find, parse and police the lock here, ask the
host once what a sync would do, and only then push the lock (and, with a wheelhouse, the files
the host lacks) and apply."""

from __future__ import annotations

import hashlib
import os
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.lockstep.cluster.plugins.plugin_utils import deps
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_sync import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.plugin_utils import credentials, remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils.airgap import Airgap
from ansible_collections.lockstep.cluster.plugins.plugin_utils.locate import read_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lockfile import LockError
from ansible_collections.lockstep.cluster.plugins.plugin_utils.policy import (
    check_policy,
    format_violations,
    python_version_reason,
)
from ansible_collections.lockstep.cluster.plugins.plugin_utils.pylock import render_requirements
from ansible_collections.lockstep.cluster.plugins.plugin_utils.venv_diff import outcome
from ansible_collections.lockstep.cluster.plugins.plugin_utils.wheelhouse import WheelhouseError

MODULE = "lockstep.cluster.uv_sync"
_INTERNAL = ("stage", "lockfile_sha256", "remote_lockfile", "expected", "wheelhouse_incoming", "wheelhouse_files",
             "build")


def sync_lock(lock, overrides=None):
    """``(text or None, sha256)`` the host syncs: the lock file itself, or its requirements
    rendering (always for a pylock: one host code path, no index URL needed on the host; and
    whenever a built wheel's hash replaces the lock's)."""
    if lock.format == "requirements" and not overrides:
        return None, lock.sha256
    text = render_requirements(lock, overrides, title=os.path.basename(lock.path))
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the lock and wheelhouse files are pushed only when a build needs them
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            deps.require()
        except RuntimeError as exc:
            raise AnsibleActionFail(str(exc))
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        given = [name for name in _INTERNAL if self._task.args.get(name) is not None]
        if given:
            raise AnsibleActionFail("%s are set by the action plugin, not by a task" % ", ".join(given))
        secrets = credentials.secrets_of([args["index_url"]] + list(args["extra_index_urls"]))
        try:
            return credentials.redact(self._run(result, args, task_vars or {}), secrets)
        except (AnsibleActionFail, WheelhouseError, LockError) as exc:
            raise AnsibleActionFail(credentials.redact(str(exc), secrets))

    def _run(self, result, args, task_vars):
        path, lock = read_lock(self, args["lockfile"])
        violations = check_policy(lock, cpu_only=args["cpu_only"])
        if violations:
            raise AnsibleActionFail(format_violations(violations))
        result["lock"] = {"path": path, "sha256": lock.sha256, "entries": len(lock.entries), "format": lock.format}

        airgap = Airgap(self, args, lock, task_vars) if args["wheelhouse"] else None
        overrides = airgap.built_overrides() if airgap else {}
        text, sha = sync_lock(lock, overrides)
        module_args = dict(self._task.args, lockfile=path, lockfile_sha256=sha, stage="plan")
        if airgap:
            module_args.update(airgap.module_overrides())
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
            return result
        if self._task.check_mode:
            if plan["action"] == "build":
                plan["after"] = expected  # what uv pip sync makes of a fresh venv
            result.update(outcome(plan, self._task.diff, predicted=True))
            if airgap:
                result["wheelhouse"] = airgap.predict(plan)
            if plan.get("missing_packages"):
                remote.install_into(self, task_vars, plan["package_manager"], plan["missing_packages"], result)
            return result

        try:
            packages = plan.get("missing_packages") or []
            if airgap and not airgap.builds_here(plan):
                packages = []  # only a host that builds needs a compiler
            if packages and not remote.install_into(self, task_vars, plan["package_manager"], packages, result):
                return result
            if airgap:
                incoming, overrides = airgap.prepare(plan, module_args)
                text, sha = sync_lock(lock, overrides)
                result["wheelhouse"] = airgap.report
                module_args.update(wheelhouse_incoming=incoming, wheelhouse_files=airgap.selected, lockfile_sha256=sha)
            module_args.update(stage="apply", remote_lockfile=self._push_lock(path, text), expected=expected)
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
