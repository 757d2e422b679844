#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Sync a venv to a hash-pinned lock with uv, behind an atomic symlink (module_utils/venv.py; plugins/action/venv.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: venv
short_description: Sync a venv to a hash-pinned lock with uv, behind an atomic symlink
description:
  - Keeps O(path) a symlink to a venv that is exactly the lock O(lockfile), installed with
    C(uv pip sync --require-hashes).
  - The action plugin finds and parses the lock on the controller with C(packaging) and refuses
    it before touching the host when it is not pinned, hashed and (with O(cpu_only)) CPU-only,
    or when it was not resolved for the host's Python. The lock reaches the host as a file, and
    only when something must change.
  - A venv is never modified in place. A new lock, Python, mpi4py mode or MPI environment
    builds a new venv under O(store) (named after the lock and a hash of those inputs),
    syncs and validates it, compiles its bytecode, seals it with a manifest of every file
    (C(<store>/<venv>.manifest.json), beside it, outside it), then flips O(path) with an atomic
    C(rename) system call. The venv that was current is kept and linked from O(previous) for
    rollback, unless someone had changed it (then the previous rollback target stays).
  - One store lock is held from the plan to the flip; a second run on the host waits at most
    O(lock_timeout) and then fails naming the holder.
  - The store must be root's and writable by root only (so must the directories above it, as
    OpenSSH checks its own files). A store directory that group or others can write is repaired
    (C(chmod go-w), reported in RV(repairs)); every venv and manifest in it that is not root's or
    that others can write is then not trusted and the live venv is rebuilt. Anything else unsafe
    fails the task naming the path. The store lock file is never opened through a symlink.
  - uv's cache is not trusted blindly. A package no venv of the store holds yet is fetched again
    (C(--refresh-package), checked against the lock's hashes); one the store holds is taken from
    the cache, and its files must then be those sealed in that venv, else it is dropped from the
    cache and installed afresh (RV(cache_check)).
  - Any failure before the flip (download error, hash mismatch, uv killed, failed import
    check) removes the half-built venv and leaves O(path) exactly as it was.
  - C(changed) comes from uv itself (C(uv pip sync --check --output-format json)) and the
    live venv against its manifest (O(verify_files)); check mode predicts the package set
    from the lock for the host's Python, and diff mode shows package, tamper and environment changes.
  - A converged host costs one module run.
  - With O(wheelhouse) the host needs no network at all. The controller picks the files the
    lock needs for the host's Python and platform (C(packaging.pylock) selection by wheel tags),
    fetches them once into O(wheelhouse_cache) (sha256-checked against the lock), pushes only
    those the host lacks (the plan reports what it has, in the same module run) and the host syncs
    with C(--offline --no-index --find-links). A missing file fails at once, never waits on a network.
  - With O(wheelhouse) and O(mpi4py_mode=source), one host per O(build_group) and Python tag builds
    the mpi4py wheel from the lock's sdist (C(uv build), build requirements pinned by hash); the
    controller keeps it with its provenance and every other host of the combination installs it.
  - A C(pylock.toml) lock is synced from its requirements rendering (same pins, markers and hashes),
    because uv takes a pylock's files only from its recorded URLs, which an air-gapped host cannot reach.
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
  - lockstep.cluster.lockstep.LOCKFILE
  - lockstep.cluster.lockstep.UV
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  cpu_only:
    description: Refuse a lock with GPU packages (the collection's GPU rule, for example C(nvidia-*), CUDA torch builds).
    type: bool
    default: true
  uv:
    description: Path of the uv executable on the host.
    type: path
    required: true
  path:
    description: The stable path benchmark jobs use (a symlink managed by this module). Absolute.
    type: path
    required: true
  store:
    description: Directory holding one venv per lock/Python/MPI key. Absolute; keep it on the same filesystem as O(cache_dir).
    type: path
    required: true
  previous:
    description: Symlink to the venv that was current before the last flip. Default C(<path>.previous).
    type: path
  python:
    description: Base interpreter for the venv, a command on C(PATH) or an absolute path. It is probed on the host.
    type: str
    default: python3
  env:
    description:
      - Variables written to C(<venv>/lockstep.env) (C(KEY=VALUE), literal values) and exported by C(bin/activate),
        on top of O(mpi_env).
    type: dict
    default: {}
  mpi_env:
    description:
      - The selected MPI's variables for the venv (the C(lockstep.cluster.mpi) module's C(runtime.env)).
        Part of the venv's key, like O(env).
      - Unset in M(lockstep.cluster.probe), which takes them from its own O(lockstep.cluster.probe#module:mpi)
        section, so both compute the same key.
    type: dict
  mpi4py_mode:
    description: V(binary) installs the lock's mpi4py wheel; V(source) is expected to come with O(no_binary) and O(build_variables).
    type: str
    choices: [binary, source]
    default: binary
  no_binary:
    description: Packages uv must build from their sdist (C(--no-binary)).
    type: list
    elements: str
    default: []
  build_variables:
    description:
      - "Per-package build environment (uv C(extra-build-variables)), for example C({mpi4py: {MPICC: /usr/bin/mpicc.mpich}})."
      - uv keys its build cache on them, so a build for one MPI is never reused for another.
    type: dict
    default: {}
  packages:
    description:
      - OS packages a build needs (the compiler and Python headers for a source-built mpi4py).
        The module reports the missing ones and the action plugin installs them with the
        distribution's package module before a build.
      - Unset, the host's OS family decides for O(mpi4py_mode=source) (C(gcc) and C(python3-dev) on the Debian
        family, C(python3-devel) on the RHEL family); nothing for the binary wheel.
    type: list
    elements: str
  verify_files:
    description:
      - Compare the live venv with its manifest (every entry of the tree; a file is re-hashed
        when its recorded inode, size, mode, mtime or ctime changed). uv re-hashes nothing and
        looks only at dist-info, so without this a C(.pth), a forged C(.pyc) or an edited
        file goes unnoticed; with it, the venv is rebuilt fresh (never repaired in place) and
        the files show in the diff as C(tampered).
      - The tampered packages are dropped from uv's cache first (uv never re-verifies its
        cache, and with hardlinks the edit is in the cache too), so they are fetched again.
    type: bool
    default: true
  link_mode:
    description:
      - How uv puts files from its cache into the venv.
      - V(copy) (default) gives every venv its own files. With V(hardlink) the venv, its
        rollback sibling and the uv cache share inodes, so one in-place edit of an installed
        file corrupts all three and a re-sync reinstalls the edited file.
    type: str
    choices: [copy, hardlink, clone, symlink]
    default: copy
  validate_imports:
    description: Modules the new venv must import before the flip. C(mpi4py) is checked (without C(MPI_Init)) whenever the lock has it.
    type: list
    elements: str
    default: []
  keep:
    description: Venvs kept for this O(path), current and previous included.
    type: int
    default: 2
  prune_after_sync:
    description:
      - After a sync that changed the venv (a build or a flip), give the disk back that the live venv
        does not use - C(uv cache prune --ci) (pre-built wheels go, wheels built here from an sdist stay)
        and, with O(wheelhouse), every wheelhouse file but this sync's. A converged run prunes nothing.
      - Refused with O(link_mode=symlink), whose venv files live in the cache. A failed prune is a warning.
    type: bool
    default: false
  timeout:
    description: Seconds allowed for each uv command.
    type: int
    default: 1800
  lock_timeout:
    description:
      - Seconds to wait for the venv store lock another run on this host holds (one lock from
        plan to flip). After that the task fails naming the holder (pid, host, start time and
        what it is doing) and nothing is changed.
    type: int
    default: 600
  wheelhouse:
    description:
      - Wheelhouse directory on the host; the controller fills it. Set, the host syncs with no
        index at all (C(--offline --no-index --find-links)).
    type: path
  wheelhouse_cache:
    description: Controller directory of the controller wheelhouse (fetched files, built wheels). Default C(~/.cache/lockstep/wheelhouse).
    type: path
  wheelhouse_find_links:
    description: Controller-side directories or URLs with files the index lacks (C(uv pip compile --find-links)).
    type: list
    elements: str
    default: []
  build_group:
    description: What a built mpi4py wheel is shared by (distro release and MPI); the host's Python tag is added.
    type: str
  build_requires:
    description:
      - Build requirements to add, per package built in the wheelhouse, to those its sdist
        declares in C(pyproject.toml). A build backend may ask for more at build time (mpi4py's
        asks for Cython), which the controller cannot see without running the sdist's code.
    type: dict
    default: {}
  stage:
    description: Internal, set by the action plugin. V(plan) only looks; V(apply) builds and flips; V(build) builds one wheel.
    type: str
    choices: [plan, apply, build]
    default: plan
  lockfile_sha256:
    description: Internal, set by the action plugin from the controller's copy of O(lockfile).
    type: str
  remote_lockfile:
    description: Internal, set by the action plugin; where it copied O(lockfile) on the host.
    type: path
  expected:
    description:
      - Internal, set by the action plugin; the packages (name to version) the lock installs for
        the host's Python. A new venv must hold exactly these.
    type: dict
  wheelhouse_incoming:
    description: Internal, set by the action plugin; files it pushed (name to C(src), C(sha256)) to move into O(wheelhouse).
    type: dict
  wheelhouse_files:
    description: Internal, set by the action plugin; the files of O(wheelhouse) uv may see for this sync (the host's selection).
    type: list
    elements: str
  build:
    description: Internal, set by the action plugin; the sdist to build with V(stage=build).
    type: dict
seealso:
  - module: lockstep.cluster.probe
  - module: lockstep.cluster.lock_policy
"""

EXAMPLES = r"""
- name: Sync an air-gapped host from the controller wheelhouse (pylock.toml lock)
  lockstep.cluster.venv:
    lockfile: lockfiles/pylock.smoke-cpu.toml
    uv: /usr/local/bin/uv
    path: /opt/lockstep/venv
    store: /opt/lockstep/venvs
    wheelhouse: /opt/lockstep/wheelhouse
    wheelhouse_find_links: [/opt/wheels]

- name: Sync the benchmark venv
  lockstep.cluster.venv:
    lockfile: lockfiles/smoke-cpu.txt
    uv: /usr/local/bin/uv
    path: /opt/lockstep/venv
    store: /opt/lockstep/venvs
    python: python3
    env:
      MPI4PY_MPIABI: openmpi
"""

RETURN = r"""
venv:
  description: The venv O(path) points to after the run (would point to, in check mode).
  returned: always
  type: str
previous:
  description: The venv O(path) pointed to before the run.
  returned: always
  type: str
action:
  description: V(none), V(flip) (an existing complete venv is reused) or V(build).
  returned: always
  type: str
key:
  description: SHA-256 identity of the venv (lock, Python, mpi4py mode, build variables, environment).
  returned: always
  type: str
changes:
  description: Package changes as seen from the active venv (uv JSON style C(name), C(version), C(action)); C(tampered) entries name the edited files.
  returned: always
  type: list
  elements: dict
drift:
  description: The active venv had the right key but no longer matched the lock (someone changed it).
  returned: always
  type: bool
cache_check:
  description:
    - After a build, how far it trusted uv's cache. C(refreshed) lists the packages fetched again
      (checked against the lock's hashes) instead of taken from the cache (C(all) when no venv of
      the store held any of them yet), C(trusted) counts the packages known from venvs sealed in
      the store earlier, and C(replaced) names the packages whose cached copy differed from the
      sealed one (dropped from the cache and installed afresh).
  returned: when a venv was built
  type: dict
repairs:
  description:
    - What was made safe in O(store) (would be, in check mode), for example a store directory
      that others could write, made C(0755). A store owned by another user, or a directory
      above it that others can write, fails the task instead, naming the path.
  returned: always
  type: list
  elements: str
lock:
  description: The lock as read on the controller (C(path), C(sha256), C(entries)).
  returned: always
  type: dict
python:
  description: The base interpreter as probed on the host (C(executable), C(version), C(marker_environment)).
  returned: always
  type: dict
wheelhouse:
  description:
    - With O(wheelhouse), when something changed (C(dir), C(files), C(fetched), C(fetch_seconds),
      C(pushed), C(pushed_bytes), C(push_seconds), and C(mpi4py_wheel) with its provenance in source
      mode); in check mode C(push) (what would be pushed) and C(build).
  returned: when a wheelhouse was used
  type: dict
reclaimed:
  description:
    - With O(prune_after_sync), after a sync that changed the venv - C(uv_cache) (uv's summary line),
      and with O(wheelhouse) C(wheelhouse_removed) (file names) and C(wheelhouse_bytes) (disk given back).
  returned: when something was pruned
  type: dict
commands:
  description: The commands the module ran, with their duration and exit code.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions
from ansible_collections.lockstep.cluster.plugins.module_utils.venv import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = run(module.params, module.check_mode, facts=distributions.os_facts(module))
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
