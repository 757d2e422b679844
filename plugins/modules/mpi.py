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
  install_dev:
    description: Install the development package (mpicc, libmpi.so, headers); without it only C(mpirun) is pinned on Debian.
    type: bool
    default: true
  packages_extra:
    description: More OS packages to install with the flavor (for example a fabric provider).
    type: list
    elements: str
    default: []
  packages:
    description:
      - OS packages of the flavor. Unset, the host's OS family decides (Debian C(openmpi-bin) /
        C(libopenmpi-dev), C(mpich) / C(libmpich-dev); RHEL C(openmpi) / C(openmpi-devel), C(mpich) /
        C(mpich-devel)), plus O(packages_extra).
    type: list
    elements: str
  alternatives:
    description:
      - Debian alternatives to pin to O(flavor). Unset, C(mpi), C(mpirun) and C(mpi-<multiarch>) on Debian
        (only C(mpirun) without O(install_dev)), none on the RHEL family.
    type: list
    elements: str
  abi_link:
    description: Manage C(<libdir>/libmpi.so.12) for MPICH. Unset, on Debian only.
    type: bool
  libdir:
    description:
      - Directory of the runtime C(libmpi) of O(flavor). Unset, the multiarch directory on Debian
        (C(/usr/lib/x86_64-linux-gnu)), C(/usr/lib64/<flavor>/lib) on the RHEL family.
    type: path
  bin_dir:
    description: Directory of C(mpiexec) and C(mpicc). Unset, C(/usr/bin) on Debian, C(/usr/lib64/<flavor>/bin) on RHEL.
    type: path
  profile_path:
    description: Login profile script that selects the flavor (RHEL family).
    type: path
    default: /etc/profile.d/lockstep-mpi.sh
  profile_content:
    description:
      - Content of O(profile_path); empty leaves that file alone. Unset, empty on Debian (the alternatives
        select the flavor) and a script loading the module C(mpi/<flavor>-<arch>) on the RHEL family.
    type: str
  os_env:
    description:
      - OS-specific variables for the venv environment. Unset, none on Debian and what C(module load)
        sets on the RHEL family (C(MPI_BIN), C(MPI_HOME), C(MPI_LIB), C(LD_LIBRARY_PATH)).
    type: dict
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
- name: Install and select MPICH (packages, alternatives and paths from the host's OS family)
  lockstep.cluster.mpi:
    flavor: mpich
  register: mpi

- name: Open MPI with a fabric provider, paths given explicitly
  lockstep.cluster.mpi:
    flavor: openmpi
    packages_extra: [libfabric1]
    bin_dir: /usr/bin
    libdir: /usr/lib/x86_64-linux-gnu
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

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = run(module.params, module.check_mode, module._diff, distributions.os_facts(module))
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
