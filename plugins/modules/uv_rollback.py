#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: uv_rollback
short_description: Flip a lockstep venv symlink back to the previous venv
description:
  - Swaps I(path) (the C(current) symlink managed by M(lockstep.cluster.uv_sync)) and
    I(previous), each with an atomic C(rename(2)). Running it twice rolls forward again.
  - Fails without touching anything when there is no complete previous venv.
  - A later M(lockstep.cluster.uv_sync) of the newer lock flips forward again (the rolled-away
    venv is kept, so that is only a flip). To stay on the old venv, revert the lock.
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
options:
  path:
    description: The stable venv path (symlink).
    type: path
    required: true
  previous:
    description: The symlink to the previous venv. Default C(<path>.previous).
    type: path
notes:
  - Supports check mode.
"""

EXAMPLES = r"""
- name: Roll back the benchmark venv
  lockstep.cluster.uv_rollback:
    path: /opt/lockstep/venv
"""

RETURN = r"""
venv:
  description: The venv I(path) points to after the rollback.
  returned: success
  type: str
previous:
  description: The venv I(path) pointed to before (now linked from I(previous)).
  returned: success
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_sync import (
    SyncError,
    inspect_path,
    is_venv,
    read_meta,
    rollback,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            previous=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"].rstrip("/")
    previous = module.params["previous"] or path + ".previous"
    try:
        if module.check_mode:
            state, current = inspect_path(path)
            target = os.path.realpath(previous) if os.path.islink(previous) else None
            if state not in ("link", "dangling") or not target or not is_venv(target) or read_meta(target) is None:
                raise SyncError("no complete previous venv for %s: nothing to roll back to" % path, "rollback")
            module.exit_json(changed=True, venv=target, previous=current)
        old, new = rollback(path, previous)
    except SyncError as exc:
        module.fail_json(msg=exc.message)
    module.exit_json(changed=True, venv=new, previous=old)


if __name__ == "__main__":
    main()
