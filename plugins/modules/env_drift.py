#!/usr/bin/python
# Host side (thin shell); the controller half is plugins/action/env_drift.py.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: env_drift
short_description: Check a host's venv against the lock, and mpi4py against the system MPI
version_added: 0.1.0
description:
  - Audits one host, read-only. The action plugin parses O(lockfile) on the controller with
    C(packaging); the module collects raw facts on the host with the standard library only
    (the host's Python may lack C(packaging)), and the action plugin compares them.
  - "Packages: the venv's installed distributions are read from their C(.dist-info) (no pip
    needed; uv venvs have none) and compared with the lock entries whose markers hold for
    the B(venv's) Python: missing, extra, version mismatch (PEP 440 equality, PEP 503 names)."
  - "Integrity (O(verify_files)): a venv built by M(lockstep.cluster.uv_sync) is compared,
    entry by entry, with the manifest written beside it in the venv store before it went live
    (C(<store>/<venv>.manifest.json), not writable through the venv): new, missing and changed
    files anywhere in the tree (site-packages, C(bin/), C(.pth), C(__pycache__)), mode, owner and
    symlink changes, and a store, venv directory, manifest or lock file that someone other than
    root could write or swap (an unsafe store is a failure). A venv lockstep.cluster did not build (no manifest, no store around it) is
    checked against its distributions' C(RECORD) instead, every file re-hashed; one that was
    built by it but lost its manifest is a failure."
  - GPU packages (the collection's shared GPU rule, for example C(nvidia-*)) found in the
    venv are reported; the Python version is checked against the lock's header
    (C(--python-version), C(--universal)); the uv version against O(uv_version).
  - "MPI: a probe runs inside the venv's Python with the venv's environment and without
    C(MPI_Init): mpi4py version, the C(MPI.*.so) variant loaded, the libmpi actually mapped
    (C(/proc/self/maps)), launcher path and flavor, system MPI flavor and version, and a
    verdict C(compatible), C(incompatible) or C(unknown) with reasons. A launch smoke test
    (C(mpiexec -n 2)) must see ranks 0 and 1 of size 2 and no C(suspicious MPI execution
    environment) warning."
  - A check that was asked for and could not run (verdict C(unknown), a smoke test without a
    launcher or an importable mpi4py, a uv that does not run) fails with its reason; only a
    check nobody asked for is skipped.
  - Returns a fingerprint (sha256 of Python, packages and MPI facts) so hosts can be compared.
  - Also the one-host pre-flight, for example
    C(ansible localhost -c local -m lockstep.cluster.env_drift -a "venv=/opt/venv lockfile=lockfiles/smoke-cpu.txt").
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.attributes
  - lockstep.cluster.attributes.ACTION
  - lockstep.cluster.attributes.PLATFORM
  - lockstep.cluster.lockfile
attributes:
  check_mode:
    support: full
    details: The module never changes the host, so check mode runs the same audit.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts (C(/proc/self/maps) names the loaded libmpi).
options:
  venv:
    description:
      - Path of the virtual environment on the host. May be a symlink (for example
        C(current) pointing at a hash-keyed directory); both paths are reported.
    type: path
    required: true
  fail_on_drift:
    description:
      - Fail the task when the host drifted (status C(drift)). The results are returned either way.
    type: bool
    default: true
  verify_files:
    description:
      - Compare the venv with its manifest (see the description); without one, with the
        distributions' C(RECORD) files.
      - A file is re-hashed when anything the manifest recorded for it changed (inode, size,
        mode, mtime or ctime; any write moves ctime, which a writer of the venv cannot set
        back); the others are not read. See O(verify_all_files).
    type: bool
    default: true
  verify_all_files:
    description:
      - With O(verify_files), re-hash every file of the manifest whatever its recorded times.
        Costs reading the whole venv; use it where ctimes cannot be trusted (e.g. files
        restored from a backup that preserved ctimes at the block level).
    type: bool
    default: false
  ignore_packages:
    description:
      - Installed distributions never reported as extra (for example C(pip) in a seeded venv).
    type: list
    elements: str
    default: []
  uv_version:
    description:
      - The uv version the host must have. Not checked when omitted (the version is still
        reported); a uv that is found but does not run is a failure either way.
    type: str
  uv_path:
    description:
      - uv binary on the host. Default is C(uv) on the venv's C(PATH), then C(/usr/local/bin),
        C(/usr/bin), C(~/.local/bin), C(~/.cargo/bin).
    type: path
  mpi:
    description:
      - Probe mpi4py and the system MPI. Disable for hosts without MPI.
    type: bool
    default: true
  smoke_test:
    description:
      - Launch C(mpiexec -n 2) on the venv's Python (Open MPI gets C(--oversubscribe), and the
        allow-run-as-root variables when run as root). Only with O(mpi) and an importable mpi4py.
    type: bool
    default: true
  launcher:
    description:
      - MPI launcher to identify and use for the smoke test. Default is C(mpiexec), then
        C(mpirun), on the venv's C(PATH) (then C(/usr/lib64/openmpi/bin) and C(/usr/lib64/mpich/bin)).
    type: path
  env_file:
    description:
      - File of C(KEY=VALUE) lines applied to the environment of the venv's Python and the
        launcher, in the format the provisioning writes (C(LD_LIBRARY_PATH), C(MPI4PY_LIBMPI), ...),
        with literal values (no quotes, no C($VAR) expansion), exactly what C(bin/activate) exports.
      - Default is C(<venv>/lockstep.env) when it exists. A given file that does not exist is an error.
    type: path
  environment:
    description:
      - Extra environment variables for the probe and the smoke test, applied after O(env_file).
    type: dict
    default: {}
  timeout:
    description:
      - Seconds allowed for each probe subprocess (the venv's Python, C(mpiexec --version), C(uv --version)).
    type: int
    default: 60
  smoke_timeout:
    description:
      - Seconds allowed for the launch smoke test; the launcher's process group is killed after it.
    type: int
    default: 120
notes:
  - Read-only. Nothing is installed; bytecode is not written (C(PYTHONDONTWRITEBYTECODE), and a
    lockstep venv sets C(sys.dont_write_bytecode) itself). The files are checked before any of
    the venv's code runs.
  - The action plugin runs the module once per host and does the PEP 440/503 comparison on the controller.
seealso:
  - name: Binary mpi4py wheels and MPI ABI
    description: How mpi4py selects C(MPI.mpich) or C(MPI.openmpi) at import time.
    link: https://mpi4py.readthedocs.io/en/stable/install.html
"""

EXAMPLES = r"""
- name: Audit the benchmark venv, report without failing
  lockstep.cluster.env_drift:
    venv: /opt/lockstep/venv
    lockfile: lockfiles/mlperf-storage-cpu.txt
    fail_on_drift: false
  register: drift

- name: Packages only (hosts without MPI), faster without re-hashing
  lockstep.cluster.env_drift:
    venv: /srv/venv
    lockfile: /etc/lockstep/lock.txt
    mpi: false
    verify_files: false

- name: Smoke test with an explicit launcher and the Debian MPICH soname workaround
  lockstep.cluster.env_drift:
    venv: /opt/venv
    lockfile: lockfiles/smoke-cpu.txt
    launcher: /usr/bin/mpiexec.mpich
    environment:
      LD_LIBRARY_PATH: /opt/venv/lib
"""

RETURN = r"""
status:
  description: C(ok) when every check that was asked for ran and passed, else C(drift).
  returned: always
  type: str
  sample: drift
drifted:
  description: RV(status) is C(drift).
  returned: always
  type: bool
problems:
  description: One line per finding, the same wording as the reports.
  returned: always
  type: list
  elements: str
  sample: ["extra six==1.16.0", "tampered numpy: numpy/__init__.py (modified)"]
counts:
  description: Number of expected, installed, missing, extra, mismatched, tampered (files) and GPU packages.
  returned: always
  type: dict
  sample: {expected: 24, installed: 25, missing: 0, extra: 1, mismatched: 0, tampered: 0, gpu: 0}
drift:
  description: The findings per check.
  returned: always
  type: dict
  contains:
    missing:
      description: Lock entries not installed (C(name), C(expected) version, lock C(line)).
      type: list
      elements: dict
    extra:
      description: Installed distributions not in the lock (C(name), C(version)).
      type: list
      elements: dict
    mismatched:
      description: Installed with another version (C(name), C(expected), C(installed)).
      type: list
      elements: dict
    tampered:
      description:
        - Installed distributions with files that differ from the manifest (or C(RECORD)), C(name), C(version),
          C(files) with C(path) (as C(RECORD) writes it), C(reason), hashes. Packages reported as missing, extra or
          mismatched are not repeated here.
      type: list
      elements: dict
    files:
      description: Entries that differ from the manifest and belong to no installed package (C(path) relative to the venv, C(reason)).
      type: list
      elements: dict
    gpu:
      description: GPU packages installed (C(name), C(version), C(reason)).
      type: list
      elements: dict
    python:
      description: Why the venv's Python does not fit the lock.
      type: list
      elements: str
    uv:
      description: Why the uv version does not fit O(uv_version).
      type: list
      elements: str
checks:
  description:
    - Outcome per check (C(packages), C(integrity), C(gpu), C(python), C(uv), C(mpi_abi), C(mpi_smoke)),
      each as C(outcome) (C(pass), C(fail) or C(skip)) and C(message).
    - C(skip) only for a check that was not asked for (O(mpi), O(smoke_test), O(verify_files) off, no O(uv_version),
      no mpi4py in the lock); one that was asked for and could not run is C(fail).
  returned: always
  type: dict
fingerprint:
  description:
    - sha256 of the Python version, the installed packages, files that differ from the manifest, uv and the MPI
      facts; equal on interchangeable hosts.
  returned: always
  type: str
lock:
  description: The lock as parsed on the controller.
  returned: always
  type: dict
  contains:
    path:
      description: Path on the controller.
      type: str
    sha256:
      description: sha256 of the lock file.
      type: str
    entries:
      description: Number of entries in the lock (before markers).
      type: int
venv:
  description: The venv as found on the host.
  returned: always
  type: dict
  contains:
    path:
      description: O(venv) as given.
      type: str
    realpath:
      description: O(venv) with symlinks resolved.
      type: str
    exists:
      description: A C(pyvenv.cfg) exists there.
      type: bool
    env_file:
      description: The environment file applied, if any.
      type: str
    site_packages:
      description: Directories read for distributions.
      type: list
      elements: str
python:
  description: The venv's Python, reported by itself.
  returned: always
  type: dict
  contains:
    executable:
      description: C(sys.executable).
      type: str
    version:
      description: Python version.
      type: str
    marker_environment:
      description: The PEP 508 marker environment the lock's markers were evaluated against.
      type: dict
    error:
      description: Why the venv's Python could not run.
      type: str
      returned: when it could not run
integrity:
  description:
    - How the files were checked (C(method) V(manifest), V(record) or V(off)), the C(manifest) path, C(findings)
      (C(path) relative to the venv, C(reason), C(owner) package), C(files) and C(rehashed) counts, C(error) when a
      lockstep venv's manifest is missing or unreadable, C(note) for a venv without one.
    - For a lockstep venv, C(unsafe) (C(path), C(reason)) lists what would let someone other than root swap the
      venv or rewrite its manifest (each one fails the C(integrity) check), and C(content_digest) (C(sha256),
      C(entries), C(by_package)) is the venv's bytes as every host with the same lock must have them.
  returned: always
  type: dict
distributions:
  description:
    - Installed distributions (C(name), C(version), C(installer), C(metadata_dir)).
    - With O(verify_files), also C(record) (a RECORD with hashes exists), C(files) (hashed files) and C(tampered).
  returned: always
  type: list
  elements: dict
uv:
  description: uv on the host.
  returned: always
  type: dict
  contains:
    path:
      description: The uv binary found.
      type: str
    version:
      description: C(uv --version).
      type: str
    venv_created_by:
      description: The uv version recorded in the venv's C(pyvenv.cfg).
      type: str
    error:
      description: Why the uv found does not run.
      type: str
mpi:
  description: MPI and mpi4py facts.
  returned: when O(mpi=true)
  type: dict
  contains:
    verdict:
      description: C(compatible), C(incompatible) or C(unknown).
      type: str
    reasons:
      description: Why (empty for a plain C(compatible)).
      type: list
      elements: str
    mpi4py_version:
      description: mpi4py in the venv.
      type: str
    library:
      description: The MPI library loaded by mpi4py (C(flavor), C(version), C(variant) of C(MPI.*.so), C(libmpi), C(libmpi_realpath), C(in_venv)).
      type: dict
    launcher:
      description: The launcher (C(path), C(realpath), C(flavor), C(version)).
      type: dict
    system:
      description: The system MPI (C(flavor), C(version), C(source) of that identification).
      type: dict
    mpi_wheels:
      description: PyPI MPI distributions (C(mpich), C(openmpi), C(impi-rt), C(msmpi)) in the venv.
      type: list
      elements: str
    smoke:
      description: The launch (C(passed), C(ranks), C(sizes), C(returncode), C(suspicious_warning), C(reasons), C(command)); null when not run.
      type: dict
    raw:
      description: What the probe printed (library version string, extension, loaded libmpi, import errors).
      type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.env_probe import ARGUMENT_SPEC, collect


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    env_file = module.params["env_file"]
    if env_file and not os.path.isfile(env_file):
        module.fail_json(msg="env_file %s does not exist" % env_file)
    try:
        facts = collect(module.params, dict(os.environ))
    except (IOError, OSError, RuntimeError, ValueError) as exc:
        module.fail_json(msg="env_drift probe failed: %s" % exc)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
