# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: where a lock given to a task lives, by one rule for every action plugin.

Like ``copy``'s ``src``: an absolute path as is; a relative one in the role's ``files/``, the
playbook's directory (and its ``files/``), then the current directory, so the same relative
``lockfiles/…`` works in ``uv_sync``, ``env_drift`` and ``lock_policy`` alike.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError

from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import LockError, load_lock


def find_lock(action, name):
    """Absolute controller path of the lock ``name`` (``action``: the ActionBase instance)."""
    if not name:
        raise AnsibleActionFail("no lockfile given")
    if os.path.isabs(name):
        if not os.path.isfile(name):
            raise AnsibleActionFail("lockfile %s not found on the controller" % name)
        return name
    try:
        return action._find_needle("files", name)
    except AnsibleError:
        if os.path.isfile(name):
            return os.path.abspath(name)
    raise AnsibleActionFail(
        "lockfile %s not found on the controller (searched the role's files/, the playbook "
        "directory and the current directory %s)" % (name, os.getcwd()))


def read_lock(action, name):
    """``(path, Lock)``; a lock that cannot be read or parsed fails the task with file:line."""
    path = find_lock(action, name)
    try:
        return path, load_lock(path)
    except LockError as exc:
        raise AnsibleActionFail("cannot read lock: %s" % exc)
