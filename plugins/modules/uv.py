#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Install a pinned uv, verify it on every run, and link it into a bin directory (module_utils/uv.py; plugins/action/uv.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: uv
short_description: Install a pinned uv, verify it on every run, and link it into a bin directory
description:
  - Keeps C(<install_root>/<version>) an intact install of uv O(version) and the C(uv) and
    C(uvx) links in O(bin_dir) pointing at it, so C(uv --version) prints exactly O(version).
  - One host round trip on a converged host. The check re-hashes C(bin/uv) and C(bin/uvx) (against
    the uv wheel's own C(RECORD) in a tool venv, against the sha256 recorded at install time for an
    archive), runs C(uv --version), reads the links and asks dpkg or rpm whether O(packages) are
    installed. The completion marker is never trusted alone.
  - A uv that is missing, truncated, replaced or prints another version is rebuilt in a temporary
    directory beside the version directory and renamed over it; the result names what was wrong.
  - "O(method=venv) creates a tool venv with O(python) and runs C(pip install --require-hashes
    --only-binary :all: --no-deps) on a requirement file holding O(requirement_hashes). A package
    index override goes through C(PIP_INDEX_URL), never the command line."
  - O(method=archive) unpacks C(uv) and C(uvx) from a release archive with the standard
    C(tarfile) module (any link, device, absolute path or C(..) refuses the archive). The archive
    is O(archive_src) on the controller (checked there, pushed only when an install is needed and
    checked again on the host) or downloaded from O(archive_url) on the host; both are verified
    against O(archive_sha256).
  - Missing O(packages) are reported by the module and installed by the action plugin with the
    distribution's package module, then the module runs again.
  - Each version keeps its own directory, so an upgrade or a downgrade to an installed version
    is a link flip. An install is verified by what it recorded, whichever O(method) made it.
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
  version:
    description: The uv release, for example V(0.13.9). C(uv --version) must print exactly it.
    type: str
    required: true
  method:
    description:
      - V(venv) pip-installs the hash-pinned uv wheel into a tool venv.
      - V(archive) unpacks a sha256-verified release archive (air-gapped sites).
    type: str
    choices: [venv, archive]
    default: venv
  install_root:
    description: Parent of the per-version directories. Absolute.
    type: path
    default: /opt/lockstep/uv
  bin_dir:
    description: Directory of the C(uv) and C(uvx) links. Absolute.
    type: path
    default: /usr/local/bin
  python:
    description: Interpreter that creates the tool venv (O(method=venv)).
    type: str
    default: /usr/bin/python3
  requirement_hashes:
    description:
      - sha256 of the uv wheels of O(version) (O(method=venv)); pip installs the one for the host
        and refuses any other file. C(sha256:) prefixes are accepted.
    type: list
    elements: str
    default: []
  pip_index_url:
    description: Package index (mirror) for O(method=venv), passed to pip as C(PIP_INDEX_URL). Unset keeps pip's configuration.
    type: str
  archive_url:
    description:
      - Where the host downloads the release archive (O(method=archive)); C(http), C(https) or C(file).
        There is no default location.
    type: str
  archive_src:
    description: Controller path of a pre-downloaded release archive; wins over O(archive_url).
    type: str
  archive_sha256:
    description: sha256 of the archive; required by O(method=archive).
    type: str
  ca_bundle:
    description: CA bundle on the host for HTTPS (C(PIP_CERT) for pip, the download's trust store). Unset is the system default.
    type: path
  packages:
    description:
      - OS packages the install needs. Unset, the host's OS family decides (C(python3-venv) on the
        Debian family for O(method=venv), nothing else).
    type: list
    elements: str
  timeout:
    description: Seconds allowed for each command and for the download.
    type: int
    default: 600
  remote_archive:
    description: Internal, set by the action plugin; where it pushed O(archive_src) on the host.
    type: path
notes:
  - O(pip_index_url) and O(archive_url) are C(no_log) (they may carry credentials).
seealso:
  - module: lockstep.cluster.venv
"""

EXAMPLES = r"""
- name: Install uv 0.13.9 from its hash-pinned wheel
  lockstep.cluster.uv:
    version: "0.13.9"
    requirement_hashes:
      - 16963d19594e18d746a70c7fce82237bde4f2cac4cfcf0ca2b84796fe9d0c6e9
      - 2c45530751517d6c3bbc69a19473f6effe47cce047bede01ffd8af7ea7b36b25
    packages: [python3-venv]

- name: Install uv from an archive downloaded beforehand on the controller
  lockstep.cluster.uv:
    version: "0.13.9"
    method: archive
    archive_src: files/uv-x86_64-unknown-linux-gnu.tar.gz
    archive_sha256: "{{ lookup('ansible.builtin.file', 'files/uv-x86_64-unknown-linux-gnu.tar.gz.sha256') }}"
"""

RETURN = r"""
uv:
  description: The linked uv, C(<bin_dir>/uv).
  returned: always
  type: str
  sample: /usr/local/bin/uv
install_dir:
  description: The version directory, C(<install_root>/<version>).
  returned: always
  type: str
install:
  description: Why uv was (or would be) installed or rebuilt (V(not installed), C(bin/uv modified ...)); null when it was intact.
  returned: always
  type: str
links:
  description: The links that were (or would be) changed (V(uv), V(uvx)).
  returned: always
  type: list
  elements: str
missing_packages:
  description: O(packages) that were not installed when the module looked.
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
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = run(module.params, module.check_mode, module._diff, distributions.os_facts(module))
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
