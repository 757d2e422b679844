# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of ``lockstep.cluster.uv_sync``: its option spec and the one call the module makes.

The action plugin calls the module twice at most: ``stage=plan`` (read-only: probe the base
Python, is the live venv exactly the lockfile?) and, only when something must change,
``stage=apply`` with the lockfile it copied to the host and the package set it derived from
the lockfile for this Python.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi_probe, os_packages
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_runner import SyncError, UvRunner
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import VenvStore

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    lockfile=dict(type="path", required=True),
    cpu_only=dict(type="bool", default=True),
    uv=dict(type="path", required=True),
    path=dict(type="path", required=True),
    store=dict(type="path", required=True),
    previous=dict(type="path"),
    python=dict(type="str", default="python3"),
    env=dict(type="dict", default={}),
    mpi4py_mode=dict(type="str", choices=["binary", "source"], default="binary"),
    no_binary=dict(type="list", elements="str", default=[]),
    build_variables=dict(type="dict", default={}),
    packages=dict(type="list", elements="str", default=[]),
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
    lock_timeout=dict(type="int", default=600),
    # Set by the action plugin.
    stage=dict(type="str", choices=["plan", "apply"], default="plan"),
    lockfile_sha256=dict(type="str"),
    remote_lockfile=dict(type="path"),
    expected=dict(type="dict"),
)


def probe_python(python, timeout):
    """``(executable, version, marker_environment)`` of the venv's base interpreter."""
    facts, _mpi, error = mpi_probe.probe(python, dict(os.environ), timeout, with_mpi=False)
    if not facts:
        raise SyncError("cannot run the venv base Python %r: %s" % (python, error), "python")
    return facts["executable"], facts["version"], facts["marker_environment"]


def run(params, check_mode, base_env=None):
    """The module's whole job. Returns the result dict; raises SyncError with it attached."""
    p = params
    runner = UvRunner(
        p["uv"], index_url=p["index_url"], extra_index_urls=p["extra_index_urls"], find_links=p["find_links"],
        offline=p["offline"], ca_bundle=p["ca_bundle"], cache_dir=p["cache_dir"], no_binary=p["no_binary"],
        timeout=p["timeout"], link_mode=p["link_mode"], base_env=base_env)
    result = {"changed": False, "stage": p["stage"], "action": "none", "venv": None, "previous": None,
              "key": None, "drift": False, "tampered": []}
    try:
        if not p["lockfile_sha256"]:
            raise SyncError("lockfile_sha256 is set by the lockstep.cluster.uv_sync action plugin; "
                            "run the module through it", "input")
        executable, version, markers = probe_python(p["python"], min(p["timeout"], 120))
        result["python"] = {"executable": executable, "version": version, "marker_environment": markers}
        if p["ca_bundle"] and not os.path.isfile(p["ca_bundle"]):
            raise SyncError("CA bundle %s does not exist on the host" % p["ca_bundle"], "input")
        store = VenvStore(
            runner, p["path"], p["store"], executable, version, p["lockfile_sha256"],
            lockfile_name=os.path.basename(p["lockfile"]), env=p["env"], mpi4py_mode=p["mpi4py_mode"],
            build_variables=p["build_variables"], validate_imports=p["validate_imports"], keep=p["keep"],
            previous=p["previous"], verify_files=p["verify_files"], expected=p["expected"],
            lock_timeout=p["lock_timeout"])
        result["key"] = store.key
        result["package_manager"], result["missing_packages"] = os_packages.missing(p["packages"])
        if p["stage"] == "apply":
            plan = store.sync(p["remote_lockfile"])
        elif runner.available():
            plan = store.plan()
        elif check_mode:
            # A bare host in check mode: the uv role only predicted its install.
            state, current = store.check_inputs()
            plan = {"action": "build", "current": current if state == "link" else None, "target": store.target,
                    "drift": False, "changes": []}
            result["msg"] = "uv is not installed yet at %s: predicted from the lockfile" % p["uv"]
        else:
            raise SyncError("uv not found at %s (run the lockstep.cluster.uv role first)" % p["uv"], "input")
        result.update(action=plan["action"], venv=plan["target"], previous=plan["current"], drift=plan["drift"],
                      tampered=[c for c in plan["changes"] if c.get("action") == "tampered"])
        if plan["action"] != "none":
            result.update(store.describe(plan))
        if p["stage"] == "apply":
            result.update(changed=plan["action"] != "none", built=plan["built"], pruned=plan["pruned"],
                          sync_changes=plan["sync_changes"])
            if plan["action"] == "build":
                result["after"] = store.packages(plan["target"])
        return result
    except SyncError as exc:
        result.update(failed=True, msg=exc.message, kind=exc.kind)
        if exc.detail:
            result["stderr"] = exc.detail
        return result
    finally:
        result["commands"] = runner.timings()
