#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mpi_facts
short_description: Describe the selected system MPI (flavor, version, launcher, libmpi, venv environment)
description:
  - Read-only. Runs C(mpiexec --version), resolves C(mpiexec), C(mpicc) and C(libmpi.so), and
    returns the environment a venv using this MPI needs (C(MPI4PY_MPIABI), C(MPI4PY_LIBMPI), ...).
  - Reports whether launcher, compiler wrapper and development library all belong to I(flavor).
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
options:
  flavor:
    description: The MPI flavor that is supposed to be selected.
    type: str
    required: true
    choices: [openmpi, mpich]
  bin_dir:
    description: Directory of C(mpiexec)/C(mpicc) (C(/usr/bin) on Debian, C(/usr/lib64/<flavor>/bin) on RHEL).
    type: path
    default: /usr/bin
  libdir:
    description: Directory of the runtime C(libmpi) of I(flavor).
    type: path
    default: /usr/lib/x86_64-linux-gnu
  os_env:
    description: OS-specific variables added to the environment (RHEL C(MPI_BIN), C(LD_LIBRARY_PATH), ...).
    type: dict
    default: {}
  allow_run_as_root:
    description: Add C(OMPI_ALLOW_RUN_AS_ROOT)/C(OMPI_ALLOW_RUN_AS_ROOT_CONFIRM) for Open MPI (containers, labs).
    type: bool
    default: false
  extra_env:
    description: Extra variables added last.
    type: dict
    default: {}
notes:
  - Supports check mode. Nothing installed yet (check mode on a bare host) is not an error
    (C(installed=false)).
"""

EXAMPLES = r"""
- name: Describe the selected MPI
  lockstep.cluster.mpi_facts:
    flavor: openmpi
  register: mpi
"""

RETURN = r"""
runtime:
  description:
    - Flavor, version, launcher, mpicc, libmpi (SONAME path and real file), env, consistency.
    - C(launcher) and C(mpicc) are the flavor-specific names (C(/usr/bin/mpiexec.openmpi)), not the
      generic alternatives links.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_ident import (
    SONAMES,
    flavored_path,
    parse_launcher_version,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_runtime import consistency_problems, runtime_env


def main():
    module = AnsibleModule(
        argument_spec=dict(
            flavor=dict(type="str", required=True, choices=["openmpi", "mpich"]),
            bin_dir=dict(type="path", default="/usr/bin"),
            libdir=dict(type="path", default="/usr/lib/x86_64-linux-gnu"),
            os_env=dict(type="dict", default={}),
            allow_run_as_root=dict(type="bool", default=False),
            extra_env=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    flavor = p["flavor"]
    launcher = os.path.join(p["bin_dir"], "mpiexec")
    mpicc = os.path.join(p["bin_dir"], "mpicc")
    libmpi = os.path.join(p["libdir"], SONAMES[flavor])
    libmpi_dev = os.path.join(p["libdir"], "libmpi.so")

    runtime = dict(flavor=flavor, installed=False, version=None, launcher=None, launcher_flavor=None, mpicc=None,
                   libmpi=None, libmpi_real=None, consistent=False, problems=[], env={})
    if not os.path.exists(launcher):
        runtime["problems"] = ["%s not found" % launcher]
        module.exit_json(changed=False, runtime=runtime)

    rc, out, err = module.run_command([launcher, "--version"])
    launcher_flavor, version = parse_launcher_version(out + "\n" + err)
    runtime.update(
        installed=True,
        version=version,
        launcher=flavored_path(launcher),
        launcher_flavor=launcher_flavor,
        mpicc=flavored_path(mpicc) if os.path.exists(mpicc) else None,
        libmpi=libmpi if os.path.exists(libmpi) else None,
        libmpi_real=os.path.realpath(libmpi) if os.path.exists(libmpi) else None,
    )
    problems = consistency_problems(flavor, launcher_flavor, runtime["mpicc"],
                                    os.path.realpath(libmpi_dev) if os.path.exists(libmpi_dev) else None)
    if runtime["libmpi"] is None:
        problems.append("%s not found (the mpi4py wheel needs it)" % libmpi)
    runtime["problems"] = problems
    runtime["consistent"] = not problems
    runtime["env"] = runtime_env(flavor, version, runtime["libmpi"], p["os_env"], p["allow_run_as_root"],
                                 p["extra_env"])
    module.exit_json(changed=False, runtime=runtime)


if __name__ == "__main__":
    main()
