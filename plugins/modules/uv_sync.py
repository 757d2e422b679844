#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: uv_sync
short_description: Sync a venv to a hash-pinned lock with uv, behind an atomic symlink
description:
  - Keeps I(path) a symlink to a venv that is exactly the lock I(lock_content), installed with
    C(uv pip sync --require-hashes).
  - A venv is never modified in place. A new lock, Python, mpi4py mode or MPI environment
    builds a new venv under I(store) (named after the lock and a hash of those inputs),
    syncs and validates it, then flips I(path) with an atomic C(rename(2)). The venv that was
    current is kept and linked from I(previous) for rollback.
  - Any failure before the flip (download error, hash mismatch, uv killed, failed import
    check) removes the half-built venv and leaves I(path) exactly as it was.
  - C(changed) comes from uv itself (C(uv pip sync --check --output-format json)); check mode
    reports what would change and diff mode shows the package and environment changes.
version_added: "0.1.0"
author:
  - lockstep.cluster maintainers (@lockstep)
options:
  uv:
    description: Path of the uv executable.
    type: path
    required: true
  path:
    description: The stable path benchmark jobs use (a symlink managed by this module).
    type: path
    required: true
  store:
    description: Directory holding one venv per lock/Python/MPI key. Keep it on the same filesystem as I(cache_dir).
    type: path
    required: true
  previous:
    description: Symlink to the venv that was current before the last flip. Default C(<path>.previous).
    type: path
  python:
    description: Base interpreter for the venv (an absolute path is best).
    type: str
    required: true
  python_version:
    description: Version of I(python) (C(3.11.2)); probed when omitted. Only major.minor goes into the key.
    type: str
  lock_content:
    description: Text of the lockfile (the module writes it into the venv as C(lockstep.lock.txt)).
    type: str
    required: true
  lock_name:
    description: Name of the lockfile, for messages and the venv directory name.
    type: str
    default: lock.txt
  lock_sha256:
    description: SHA-256 of I(lock_content) as computed by the lock policy; computed when omitted.
    type: str
  env:
    description: Variables written to C(<venv>/lockstep.env) (KEY=VALUE) and exported by C(bin/activate).
    type: dict
    default: {}
  mpi4py_mode:
    description: C(binary) installs the lock's mpi4py wheel; C(source) is expected to come with I(no_binary) and I(build_variables).
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
  index_url:
    description: Package index URL (overrides the lock's C(--index-url)).
    type: str
  extra_index_urls:
    description: Extra package index URLs.
    type: list
    elements: str
    default: []
  find_links:
    description: Wheelhouse directories or URLs (C(--find-links)).
    type: list
    elements: str
    default: []
  offline:
    description: Never touch the network; packages must be in the uv cache or a local I(find_links).
    type: bool
    default: false
  ca_bundle:
    description: CA bundle for HTTPS (exported to uv as C(SSL_CERT_FILE)).
    type: path
  cache_dir:
    description: uv cache directory.
    type: path
  verify_files:
    description:
      - Re-hash the live venv's files against each distribution's RECORD. uv does not, so
        without this an edited installed file goes unnoticed; with it, the venv is rebuilt
        fresh (never repaired in place) and the edit shows in the diff as C(tampered).
      - The tampered packages are dropped from uv's cache first (uv never re-verifies its
        cache, and with hardlinks the edit is in the cache too), so they are fetched again.
    type: bool
    default: true
  link_mode:
    description:
      - How uv puts files from its cache into the venv.
      - C(copy) (default) gives every venv its own files. With C(hardlink) the venv, its
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
    description: Venvs kept for this I(path), current and previous included.
    type: int
    default: 2
  timeout:
    description: Seconds allowed for each uv command.
    type: int
    default: 1800
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Sync the benchmark venv
  lockstep.cluster.uv_sync:
    uv: /usr/local/bin/uv
    path: /opt/lockstep/venv
    store: /opt/lockstep/venvs
    python: /usr/bin/python3
    lock_content: "{{ lookup('ansible.builtin.file', 'lockfiles/smoke-cpu.txt', rstrip=false) }}"
    lock_name: smoke-cpu.txt
    env:
      MPI4PY_MPIABI: openmpi
"""

RETURN = r"""
venv:
  description: The venv I(path) points to after the run (would point to, in check mode).
  returned: always
  type: str
previous:
  description: The venv I(path) pointed to before the run.
  returned: always
  type: str
action:
  description: C(none), C(flip) (an existing complete venv is reused) or C(build).
  returned: always
  type: str
key:
  description: SHA-256 identity of the venv (lock, Python, mpi4py mode, build variables, environment).
  returned: always
  type: str
changes:
  description: Package changes as seen from the active venv (uv JSON style C(name), C(version), C(action)).
  returned: always
  type: list
  elements: dict
drift:
  description: The active venv had the right key but no longer matched the lock (someone changed it).
  returned: always
  type: bool
commands:
  description: The commands the module ran, with their duration and exit code.
  returned: always
  type: list
  elements: str
"""

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_sync import (
    SyncError,
    UvRunner,
    VenvStore,
    package_diff,
    render_diff,
)


def probe_python(python):
    try:
        out = subprocess.check_output(
            [python, "-c", "import platform, sys; print(sys.executable); print(platform.python_version())"],
            universal_newlines=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SyncError("cannot run the venv base Python %r: %s" % (python, exc), "python")
    lines = out.strip().splitlines()
    return lines[0], lines[1]


def _timings(runner):
    """What the module ran and how long each took (first two words after uv, seconds)."""
    if runner is None:
        return []
    out = []
    for command in runner.commands:
        words = [os.path.basename(command["argv"][0])] + [a for a in command["argv"][1:3] if "\n" not in a]
        out.append("%s %.2fs rc=%s" % (" ".join(words), command["seconds"], command["rc"]))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uv=dict(type="path", required=True),
            path=dict(type="path", required=True),
            store=dict(type="path", required=True),
            previous=dict(type="path"),
            python=dict(type="str", required=True),
            python_version=dict(type="str"),
            lock_content=dict(type="str", required=True),
            lock_name=dict(type="str", default="lock.txt"),
            lock_sha256=dict(type="str"),
            env=dict(type="dict", default={}),
            mpi4py_mode=dict(type="str", choices=["binary", "source"], default="binary"),
            no_binary=dict(type="list", elements="str", default=[]),
            build_variables=dict(type="dict", default={}),
            index_url=dict(type="str"),
            extra_index_urls=dict(type="list", elements="str", default=[]),
            find_links=dict(type="list", elements="str", default=[]),
            offline=dict(type="bool", default=False),
            ca_bundle=dict(type="path"),
            cache_dir=dict(type="path"),
            link_mode=dict(type="str", choices=["copy", "hardlink", "clone", "symlink"], default="copy"),
            verify_files=dict(type="bool", default=True),
            validate_imports=dict(type="list", elements="str", default=[]),
            keep=dict(type="int", default=2),
            timeout=dict(type="int", default=1800),
        ),
        supports_check_mode=True,
    )
    p = module.params
    runner = None
    exit_json = module.exit_json

    def _exit(**kwargs):
        kwargs["commands"] = _timings(runner)
        exit_json(**kwargs)

    module.exit_json = _exit
    result = dict(changed=False, venv=None, previous=None, action="none", key=None, changes=[], drift=False)
    try:
        python = p["python"]
        version = p["python_version"]
        if not version or not os.path.isabs(python):
            python, version = probe_python(python)
        if p["ca_bundle"] and not os.path.isfile(p["ca_bundle"]):
            raise SyncError("CA bundle %s does not exist on the host" % p["ca_bundle"], "input")
        runner = UvRunner(
            p["uv"], index_url=p["index_url"], extra_index_urls=p["extra_index_urls"], find_links=p["find_links"],
            offline=p["offline"], ca_bundle=p["ca_bundle"], cache_dir=p["cache_dir"], no_binary=p["no_binary"],
            timeout=p["timeout"], link_mode=p["link_mode"])
        store = VenvStore(
            runner, p["path"], p["store"], python, version, p["lock_content"], lock_name=p["lock_name"],
            lock_sha256=p["lock_sha256"], env=p["env"], mpi4py_mode=p["mpi4py_mode"],
            build_variables=p["build_variables"], validate_imports=p["validate_imports"], keep=p["keep"],
            previous=p["previous"], verify_files=p["verify_files"])
        result["key"] = store.key
        if not os.access(p["uv"], os.X_OK):
            if not module.check_mode:
                raise SyncError("uv not found at %s (run the lockstep.cluster.uv role first)" % p["uv"], "input")
            # Check mode on a bare host: the uv role only predicted its install.
            store.check_inputs()
            before = store.packages(None)
            after = store._predict_fresh()
            result.update(changed=True, action="build", venv=store.target, changes=package_diff(before, after),
                          msg="uv is not installed yet; predicted from the lock")
            if module._diff:
                result["diff"] = render_diff(before, after, None, store.env, None, store.target)
            module.exit_json(**result)

        plan = store.plan()
        result.update(action=plan["action"], venv=plan["target"], previous=plan["current"], drift=plan["drift"])
        if module.check_mode:
            before, after = store.predict(plan)
            result["changes"] = package_diff(before, after) if plan["action"] != "none" else []
            result["changed"] = plan["action"] != "none"
            if module._diff and result["changed"]:
                result["diff"] = render_diff(before, after, store._env_of(plan["current"]), store.env,
                                             plan["current"], plan["target"])
            module.exit_json(**result)

        if plan["action"] == "none":
            module.exit_json(**result)

        applied = store.apply(plan)
        result.update(changed=True, venv=applied["venv"], previous=applied["previous"], changes=applied["changes"],
                      pruned=applied["pruned"])
        if module._diff:
            result["diff"] = render_diff(applied["before"], applied["after"], applied["before_env"], store.env,
                                         applied["previous"], applied["venv"])
        module.exit_json(**result)
    except SyncError as exc:
        result["kind"] = exc.kind
        result["commands"] = _timings(locals().get("runner"))
        if exc.detail:
            result["stderr"] = exc.detail
        module.fail_json(msg=exc.message, **result)


if __name__ == "__main__":
    main()
