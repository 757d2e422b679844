#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Flip a lockstep venv symlink back to the previous venv (module_utils/venv_store.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollback
short_description: Flip a lockstep venv symlink back to the previous venv
description:
  - Swaps O(path) (the C(current) symlink managed by M(lockstep.cluster.venv)) and
    O(previous), each with an atomic C(rename) system call. Running it twice rolls forward again.
  - Verifies the previous venv first, under the venv store lock, and refuses with the reason
    without touching anything when it fails; check mode runs the same verification.
    The previous venv must be complete and exactly as its manifest recorded it when it was
    built (no new, missing or changed file), its validation imports must load, and when it
    has mpi4py, the host's MPI as it is now (the launcher on C(PATH), the libmpi mpi4py
    loads) must match the MPI flavor it was built for.
  - A later M(lockstep.cluster.venv) of the newer lock flips forward again (the rolled-away
    venv is kept, so that is only a flip). To stay on the old venv, revert the lock.
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.PLATFORM
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  path:
    description: The stable venv path (symlink).
    type: path
    required: true
  previous:
    description: The symlink to the previous venv. Default C(<path>.previous).
    type: path
  timeout:
    description: Seconds allowed for each check the previous venv's Python runs.
    type: int
    default: 60
  lock_timeout:
    description: Seconds to wait for the venv store lock held by another run; then fail naming the holder.
    type: int
    default: 600
"""

EXAMPLES = r"""
- name: Roll back the benchmark venv
  lockstep.cluster.rollback:
    path: /opt/lockstep/venv
"""

RETURN = r"""
venv:
  description: The venv O(path) points to after the rollback.
  returned: success
  type: str
previous:
  description: The venv O(path) pointed to before (now linked from O(previous)).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import rollback


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            previous=dict(type="path"),
            timeout=dict(type="int", default=60),
            lock_timeout=dict(type="int", default=600),
        ),
        supports_check_mode=True,
    )
    try:
        old, new = rollback(module.params["path"], module.params["previous"], check_mode=module.check_mode,
                            lock_timeout=module.params["lock_timeout"], timeout=module.params["timeout"])
    except SyncError as exc:
        module.fail_json(msg=exc.message, kind=exc.kind)
    module.exit_json(changed=True, venv=new, previous=old)


if __name__ == "__main__":
    main()
