#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ask a host every question of a run in one module run (module_utils/probe.py; plugins/action/probe.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: probe
short_description: Ask a host every question of a run in one module run (read-only)
version_added: 0.1.0
description:
  - Collects, on the host and with the standard library only, what the controller needs to judge
    the host, one section per question. Nothing on the host changes; the controller compares
    (M(lockstep.cluster.validate) judges the O(validate) section against the lock with
    C(packaging)).
  - "O(validate): the venv as found: its files against the manifest written when it was built
    (new, missing and changed files anywhere in the tree, mode and symlink changes; a venv
    lockstep.cluster did not build is checked against its distributions' C(RECORD)), its
    installed distributions from their C(.dist-info), the venv's Python with its PEP 508 marker
    environment, uv, and the MPI stack: a probe inside the venv's Python with the venv's
    environment and without C(MPI_Init) (mpi4py version, the C(MPI.*.so) variant, the libmpi
    actually mapped, launcher path and flavor, system MPI), a verdict C(compatible),
    C(incompatible) or C(unknown) with reasons, and optionally a launch smoke test
    (C(mpiexec -n 2)) that must see ranks 0 and 1 of size 2."
  - "O(validate) also asks what a rank on this host really runs: the venv's Python once as
    O(validate.user) in a login-like environment (the variables of C(/etc/environment), then
    the user's shell as sshd runs a command, so bash reads C(/etc/bash.bashrc) and C(~/.bashrc),
    then the venv's forwarded variables on top, as a launcher does) reports where C(numpy),
    C(mpi4py) and its C(MPI) extension (and any other module it imported) come from, the
    interpreter-affecting variables (C(PYTHONPATH), C(PYTHONHOME), C(PYTHONSTARTUP),
    C(PYTHONUSERBASE), C(LD_PRELOAD), C(LD_LIBRARY_PATH)) with the startup files that set them,
    and the C(sitecustomize)/C(usercustomize)/C(.pth) files on its C(sys.path) outside the venv.
    The base interpreter it runs on is verified against its package manager: C(dpkg --verify)
    (conffiles also by the md5 dpkg recorded; Debian's C(sitecustomize.py) is a link to one) or
    C(rpm -V) of the few packages owning its executable, stdlib and C(lib-dynload), and its
    C(.py)/C(.pth)/C(.so) files no package owns (dpkg: its C(*.list) files; no C(__pycache__))."
  - "O(uv), O(mpi), O(venv): each role's own question, asked in check mode (read-only) with that
    role's module options: M(lockstep.cluster.uv) re-hashes uv and reads its links,
    M(lockstep.cluster.mpi) checks the packages and the selection and describes the runtime,
    M(lockstep.cluster.venv) plans the sync (uv C(--check) and the manifest); O(cluster) takes a
    snapshot of the member's cluster files (only what lockstep manages: a managed block, a key's
    sha256). The action plugin keeps the answer as the host's fact C(lockstep_probe) for this run,
    with the OS facts the roles use (C(setup)'s names); each role's action plugin reuses it when
    its options give the same digest and no role changed the host since, so a converged host
    costs this one round trip."
  - The files are checked before any of the venv's code runs; bytecode is never written.
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
attributes:
  check_mode:
    support: full
    details: The module never changes the host, so check mode asks the same questions.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts (C(/proc/self/maps) names the loaded libmpi).
options:
  uv:
    description: The options of M(lockstep.cluster.uv) (the uv role's settings); omitted, not asked.
    type: dict
  mpi:
    description: The options of M(lockstep.cluster.mpi) (the mpi role's settings); omitted, not asked.
    type: dict
  venv:
    description:
      - The options of M(lockstep.cluster.venv) (the venv role's settings); omitted, not asked. The action
        plugin reads and polices the lock on the controller first, as the venv role does.
      - Its C(mpi_env) unset, the probe takes the MPI's variables from its own O(mpi) answer.
    type: dict
  cluster:
    description: The options of M(lockstep.cluster.cluster) (the cluster role's settings); omitted, not asked.
    type: dict
  keep:
    description:
      - Keep the answer as the host's fact C(lockstep_probe) for this playbook run, for the roles' action plugins
        and the audit to reuse (until a role changes the host). Only where nothing but lockstep roles acts on
        the host between this probe and the audit, as in C(site.yml); elsewhere every probe asks the host.
    type: bool
    default: false
  role_arguments:
    description:
      - Roles of this collection whose variables are checked here, on the controller, against their
        C(meta/argument_specs.yml) as the roles' own argument check would (same messages, prefixed
        with the role), before the host is asked. For a play that runs those roles with
        C(rolespec_validate=false), as C(site.yml) does (one task instead of one per role and host).
    type: list
    elements: str
    default: []
  validate:
    description:
      - The audit's questions (the C(lockstep.cluster.validate) role's settings). Omitted, the
        audit section is not collected.
    type: dict
    suboptions:
      venv:
        description:
          - Path of the virtual environment on the host. May be a symlink (for example
            C(current) pointing at a hash-keyed directory); both paths are reported.
        type: path
        required: true
      verify_files:
        description:
          - Compare the venv with its manifest (see the description); without one, with the
            distributions' C(RECORD) files.
          - A file is re-hashed when anything the manifest recorded for it changed (inode, size,
            mode, mtime or ctime; any write moves ctime, which a writer of the venv cannot set
            back); the others are not read. See O(validate.verify_all_files).
        type: bool
        default: true
      verify_all_files:
        description:
          - With O(validate.verify_files), re-hash every file of the manifest whatever its recorded times.
            Costs reading the whole venv; use it where ctimes cannot be trusted (e.g. files
            restored from a backup that preserved ctimes at the block level).
        type: bool
        default: false
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
            allow-run-as-root variables when run as root). Only with O(validate.mpi) and an importable mpi4py.
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
          - Extra environment variables for the probe and the smoke test, applied after O(validate.env_file).
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
      user:
        description:
          - The cluster user the benchmark ranks run as; the venv's Python runs once as this user in a
            login-like environment (see the description). Unset, the user the module runs as; a user
            that does not exist is said in C(runtime.note) and the check runs as the module's user.
        type: str
notes:
  - Read-only. Nothing is installed; bytecode is not written (C(PYTHONDONTWRITEBYTECODE), and a
    lockstep venv sets C(sys.dont_write_bytecode) itself).
seealso:
  - module: lockstep.cluster.validate
  - name: Binary mpi4py wheels and MPI ABI
    description: How mpi4py selects C(MPI.mpich) or C(MPI.openmpi) at import time.
    link: https://mpi4py.readthedocs.io/en/stable/install.html
"""

EXAMPLES = r"""
- name: Probe the benchmark venv (the validate role does this, then judges it)
  lockstep.cluster.probe:
    validate:
      venv: /opt/lockstep/venv
  register: probe

- name: Packages only (hosts without MPI), without re-hashing
  lockstep.cluster.probe:
    validate:
      venv: /srv/venv
      mpi: false
      verify_files: false
"""

RETURN = r"""
uv:
  description: C(digest) of the options asked and C(result), what M(lockstep.cluster.uv) says in check mode; or C(error).
  returned: when O(uv) is given
  type: dict
mpi:
  description: C(digest) and C(result), what M(lockstep.cluster.mpi) says in check mode (with C(runtime)); or C(error).
  returned: when O(mpi) is given
  type: dict
venv:
  description: C(digest) and C(result), the plan of M(lockstep.cluster.venv); or C(error).
  returned: when O(venv) is given
  type: dict
cluster:
  description:
    - C(digest) and C(snapshot) - the cluster C(user) (exists, uid, home), per managed file its state (C(exists),
      C(mode), owner, the managed C(block) or the C(text) of a file that is wholly lockstep's, the key's C(sha256)),
      the C(directories), and C(stale_users) (other users that still hold the cluster key); or C(error).
  returned: when O(cluster) is given
  type: dict
seconds:
  description: Where the module run's time went on the host, per section (C(facts), C(uv), C(mpi), C(venv), C(cluster),
    C(validate)), in seconds.
  returned: when the host was asked (not reused)
  type: dict
  sample: {"facts": 0.11, "uv": 0.13, "mpi": 0.04, "venv": 0.3, "cluster": 0.002, "validate": 0.15}
reused:
  description: The answer came from this run's earlier probe (nothing changed on the host since); no round trip.
  returned: when reused
  type: bool
ansible_facts:
  description:
    - The OS facts the roles use, by C(setup)'s names (C(distribution), C(distribution_version),
      C(os_family), C(architecture), C(machine_id), C(ssh_host_key_*_public)); with O(keep), C(lockstep_probe)
      (the answer, for this run) and C(lockstep_changed) (reset).
  returned: when the host was asked
  type: dict
validate:
  description: The audit's raw facts; C(error) alone when they could not be collected (and why).
  returned: when O(validate) is given
  type: dict
  contains:
      venv:
        description: The venv as found on the host.
        returned: always
        type: dict
        contains:
          path:
            description: O(validate.venv) as given.
            type: str
          realpath:
            description: O(validate.venv) with symlinks resolved.
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
            description: The PEP 508 marker environment the controller evaluates the lock's markers against.
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
            - For a lockstep venv, C(unsafe) (C(path), C(reason)) lists what would let someone other than root swap
              the venv or rewrite its manifest (each one fails the C(integrity) check), and C(content_digest)
              (C(sha256), C(entries), C(by_package)) is the venv's bytes as every host with the same lock must have them.
        returned: always
        type: dict
      distributions:
        description:
          - Installed distributions (C(name), C(version), C(installer), C(metadata_dir)).
          - With O(validate.verify_files), also C(record) (a RECORD with hashes exists), C(files) (hashed files) and C(tampered).
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
        returned: when O(validate.mpi=true)
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
      runtime:
        description:
          - What the venv's Python sees as O(validate.user) in a login-like environment - C(user), C(modules)
            (C(numpy), C(mpi4py), C(mpi4py.MPI) -> the file each was imported from, null when absent),
            C(import_errors), C(foreign) (other imported modules from outside the venv and the base stdlib),
            C(env) (the interpreter-affecting variables set), C(sources) (per variable, C(file:line) of the
            startup files that set it, home files as C(~/...)), C(customize) (C(path), C(realpath), C(sha256) of
            each sitecustomize/usercustomize/.pth file on C(sys.path) outside the venv), C(sys_path), C(base)
            (the base interpreter's C(prefix), C(executable), C(stdlib), C(platstdlib), C(dynload)),
            C(expected_env) (what the env file and O(validate.environment) set themselves), C(seconds);
            C(error) when it did not run, C(note) when the user does not exist.
        returned: when the venv's Python runs
        type: dict
      base_python:
        description:
          - The base interpreter against its package manager - C(manager) (V(dpkg), V(rpm) or null), C(packages)
            verified, C(findings) (C(path), C(reason) - changed, missing, conffile changed, not owned by any
            package, a link no package owns), C(clean_customize) (the package's own unchanged
            sitecustomize files, path -> sha256, which the audit accepts), C(seconds); C(note) when not verified
            (no dpkg/rpm, or an interpreter no package owns), C(error) when the package manager failed.
        returned: when the venv's Python runs
        type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.probe import ARGUMENT_SPEC, run, secrets


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.no_log_values.update(secrets(module.params))
    module.exit_json(changed=False, **run(module.params, dict(os.environ), module))


if __name__ == "__main__":
    main()
