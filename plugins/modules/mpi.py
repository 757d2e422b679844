#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Install, select and describe one system MPI flavor in one host round trip (module_utils/mpi.py; plugins/action/mpi.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mpi
short_description: Install, select and describe one system MPI flavor in one host round trip
description:
  - Makes O(flavor) the consistent system MPI and returns how a venv uses it (RV(runtime)).
  - The module asks dpkg or rpm whether O(packages) are installed. Missing ones are installed by
    the action plugin with the distribution's package module, then the module runs again;
    nothing else changes before they are there.
  - On the Debian family it pins the alternatives O(alternatives) (C(mpi), C(mpirun),
    C(mpi-<multiarch>)) to O(flavor) in manual mode, so C(mpicc), C(mpiexec) and C(libmpi.so)
    agree. With O(abi_link) it gives MPICH the C(libmpi.so.12) name the mpi4py binary wheel
    needs in O(libdir) (Debian 12 ships only C(libmpich.so.12)), and removes that link again
    when the flavor moves away (only the link it made).
  - On the RHEL family (MPI off C(PATH)) it writes O(profile_content) to O(profile_path) when it
    differs, for example an environment-module C(module load mpi/<flavor>-<arch>).
  - Then it runs C(mpiexec --version), resolves C(mpiexec), C(mpicc) and C(libmpi), and fails
    (not in check mode) when they do not all belong to O(flavor).
  - A converged host costs one module run.
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  flavor:
    description: The MPI flavor to select.
    type: str
    required: true
    choices: [openmpi, mpich]
  packages:
    description: OS packages of the flavor (runtime, development, extras).
    type: list
    elements: str
    default: []
  alternatives:
    description: Debian alternatives to pin to O(flavor); V([]) on the RHEL family.
    type: list
    elements: str
    default: [mpi, mpirun]
  abi_link:
    description: Manage C(<libdir>/libmpi.so.12) for MPICH (Debian).
    type: bool
    default: true
  libdir:
    description: Directory of the runtime C(libmpi) of O(flavor) (the multiarch directory on Debian).
    type: path
    default: /usr/lib/x86_64-linux-gnu
  bin_dir:
    description: Directory of C(mpiexec) and C(mpicc) (C(/usr/lib64/<flavor>/bin) on the RHEL family).
    type: path
    default: /usr/bin
  profile_path:
    description: Login profile script that selects the flavor (RHEL family).
    type: path
    default: /etc/profile.d/lockstep-mpi.sh
  profile_content:
    description: Content of O(profile_path); empty leaves that file alone.
    type: str
    default: ""
  os_env:
    description: OS-specific variables for the venv environment (RHEL C(MPI_BIN), C(LD_LIBRARY_PATH), ...).
    type: dict
    default: {}
  allow_run_as_root:
    description: Add C(OMPI_ALLOW_RUN_AS_ROOT)/C(OMPI_ALLOW_RUN_AS_ROOT_CONFIRM) for Open MPI (containers, labs).
    type: bool
    default: false
  extra_env:
    description: Extra variables, added last.
    type: dict
    default: {}
  timeout:
    description: Seconds allowed for each command.
    type: int
    default: 120
seealso:
  - module: lockstep.cluster.probe
"""

EXAMPLES = r"""
- name: Install and select MPICH
  lockstep.cluster.mpi:
    flavor: mpich
    packages: [mpich, libmpich-dev]
    alternatives: [mpi, mpirun, mpi-x86_64-linux-gnu]
    libdir: /usr/lib/x86_64-linux-gnu
  register: mpi

- name: Open MPI on a RHEL-family host
  lockstep.cluster.mpi:
    flavor: openmpi
    packages: [openmpi, openmpi-devel]
    alternatives: []
    abi_link: false
    bin_dir: /usr/lib64/openmpi/bin
    libdir: /usr/lib64/openmpi/lib
    profile_content: |
      if command -v module >/dev/null 2>&1; then module load mpi/openmpi-x86_64 >/dev/null 2>&1 || true; fi
"""

RETURN = r"""
runtime:
  description:
    - C(flavor), C(version), C(launcher) and C(mpicc) (the flavor-specific names such as
      C(/usr/bin/mpiexec.openmpi), not the alternatives links), C(libmpi) (the SONAME path the
      mpi4py wheel needs) and C(libmpi_real), C(installed), C(consistent), C(problems), and C(env)
      (the variables a venv using this MPI needs).
    - In check mode it describes the host as it is, before any change.
  returned: always
  type: dict
alternatives:
  description: Alternatives that were (or would be) changed, with their value before and after.
  returned: always
  type: list
  elements: dict
abi_link:
  description: What was done with C(libmpi.so.12) (V(create), V(remove) or null) and its path.
  returned: always
  type: dict
profile:
  description: What was done with O(profile_path) (V(create), V(update) or null).
  returned: always
  type: dict
missing_packages:
  description: O(packages) that were not installed when the module first looked.
  returned: always
  type: list
  elements: str
packages:
  description: The package module's result, when the action plugin installed RV(missing_packages).
  returned: when packages were missing
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = run(module.params, module.check_mode, module._diff)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
