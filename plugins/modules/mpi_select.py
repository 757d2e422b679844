#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mpi_select
short_description: Make one system MPI flavor the consistent choice on a Debian-family host
description:
  - Pins the Debian alternatives C(mpi), C(mpirun) and C(mpi-<multiarch>) (manual mode) to the
    same MPI flavor, so C(mpicc), C(mpiexec) and C(libmpi.so) agree.
  - For MPICH, makes sure C(libmpi.so.12) exists in the multiarch library directory (Debian 12
    ships only C(libmpich.so.12); the mpi4py binary wheel needs the MPICH ABI name), and
    removes that link again when the flavor moves away from MPICH (only the link it made).
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
options:
  flavor:
    description: The MPI flavor to select.
    type: str
    required: true
    choices: [openmpi, mpich]
  alternatives:
    description: Alternatives to pin to I(flavor).
    type: list
    elements: str
    default: [mpi, mpirun]
  libdir:
    description: Multiarch library directory (for the C(libmpi.so.12) link).
    type: path
    default: /usr/lib/x86_64-linux-gnu
  abi_link:
    description: Manage the C(libmpi.so.12) link for MPICH.
    type: bool
    default: true
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Select MPICH everywhere
  lockstep.cluster.mpi_select:
    flavor: mpich
    alternatives: [mpi, mpirun, mpi-x86_64-linux-gnu]
    libdir: /usr/lib/x86_64-linux-gnu
"""

RETURN = r"""
alternatives:
  description: Alternatives that were (or would be) changed, with their value before and after.
  returned: always
  type: list
  elements: dict
abi_link:
  description: What was done with C(libmpi.so.12) (C(create), C(remove) or null) and its path.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_runtime import (
    ABI_LINK_TARGET,
    parse_query,
    plan_abi_link,
    plan_alternatives,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            flavor=dict(type="str", required=True, choices=["openmpi", "mpich"]),
            alternatives=dict(type="list", elements="str", default=["mpi", "mpirun"]),
            libdir=dict(type="path", default="/usr/lib/x86_64-linux-gnu"),
            abi_link=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    flavor = module.params["flavor"]
    update_alternatives = module.get_bin_path("update-alternatives", required=True)

    queries = {}
    for name in module.params["alternatives"]:
        rc, out, _err = module.run_command([update_alternatives, "--query", name])
        queries[name] = parse_query(out) if rc == 0 else None
    changes, errors = plan_alternatives(queries, flavor)
    if errors:
        module.fail_json(msg="cannot select %s: %s" % (flavor, "; ".join(errors)), alternatives=changes)

    dpkg = module.get_bin_path("dpkg-query")

    def owned_by_package(path):
        if not dpkg:
            return False
        rc, _out, _err = module.run_command([dpkg, "--search", path])
        return rc == 0

    link_action, link_path = (None, None)
    if module.params["abi_link"]:
        link_action, link_path = plan_abi_link(module.params["libdir"], flavor, os.path.exists, os.path.islink,
                                               os.readlink, owned_by_package)
        if link_action == "missing-mpich":
            module.fail_json(msg="MPICH is selected but %s has neither libmpi.so.12 nor %s: is the mpich "
                                 "package installed?" % (module.params["libdir"], ABI_LINK_TARGET))

    changed = bool(changes) or link_action is not None
    result = dict(changed=changed, alternatives=changes, abi_link={"action": link_action, "path": link_path})
    if module._diff and changed:
        before = ["%s: %s (%s)" % (c["name"], c["before"], c["status"]) for c in changes]
        after = ["%s: %s (manual)" % (c["name"], c["after"]) for c in changes]
        if link_action == "create":
            before.append("%s: absent" % link_path)
            after.append("%s -> %s" % (link_path, ABI_LINK_TARGET))
        elif link_action == "remove":
            before.append("%s -> %s" % (link_path, ABI_LINK_TARGET))
            after.append("%s: absent" % link_path)
        result["diff"] = {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}
    if module.check_mode or not changed:
        module.exit_json(**result)

    for change in changes:
        module.run_command([update_alternatives, "--set", change["name"], change["after"]], check_rc=True)
    if link_action == "create":
        if os.path.islink(link_path):
            os.unlink(link_path)  # dangling
        os.symlink(ABI_LINK_TARGET, link_path)
    elif link_action == "remove":
        os.unlink(link_path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
