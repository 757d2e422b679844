# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of ``lockstep.cluster.env_drift``: option spec and the raw facts collection.

Stdlib only. The module returns these raw facts; the action plugin compares them with the
lock on the controller, where ``packaging`` is available.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, mpi_probe, proc
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_ident import MPI_WHEELS
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_env import venv_environment

canonical = distributions.canonical_name

# Shared by the module (host) and the action plugin (controller-side validation).
ARGUMENT_SPEC = dict(
    venv=dict(type="path", required=True),
    lockfile=dict(type="path", required=True),
    fail_on_drift=dict(type="bool", default=True),
    verify_files=dict(type="bool", default=True),
    verify_all_files=dict(type="bool", default=False),
    ignore_packages=dict(type="list", elements="str", default=[]),
    uv_version=dict(type="str"),
    uv_path=dict(type="path"),
    mpi=dict(type="bool", default=True),
    smoke_test=dict(type="bool", default=True),
    launcher=dict(type="path"),
    env_file=dict(type="path"),
    environment=dict(type="dict", default={}),
    timeout=dict(type="int", default=60),
    smoke_timeout=dict(type="int", default=120),
)

_UV_DIRS = ("/usr/local/bin", "/usr/bin", "~/.local/bin", "~/.cargo/bin")


def find_uv(env, explicit=None):
    if explicit:
        return explicit
    return proc.find_executable(["uv"], proc.path_dirs(env) + list(_UV_DIRS))


def uv_facts(env, explicit, pyvenv_cfg, timeout):
    path = find_uv(env, explicit)
    line = proc.first_line(proc.run([path, "--version"], env, timeout)) if path else None
    match = re.match(r"uv\s+(\S+)", line or "")
    return {
        "path": path,
        "version": match.group(1) if match else None,
        # uv records itself in pyvenv.cfg: which uv created this venv.
        "venv_created_by": pyvenv_cfg.get("uv"),
    }


def mpi_facts(raw, venv_roots, installed, env, python, params):
    """Interpret the probe's MPI line, identify launcher and system MPI, run the smoke test."""
    wheels = sorted(set(canonical(d["name"]) for d in installed) & set(MPI_WHEELS))
    launcher = mpi_probe.launcher_facts(mpi_probe.find_launcher(env, params["launcher"]), env, params["timeout"])
    # The activated venv's PATH comes first, so an MPI wheel's bin/mpiexec wins there too.
    launcher["in_venv"] = bool(launcher["path"]) and mpi_probe.under(launcher["path"], venv_roots)
    library = mpi_probe.library_facts(raw, venv_roots)
    facts = {
        "mpi4py_version": raw.get("mpi4py_version"),
        "library": library,
        "launcher": launcher,
        "system": mpi_probe.system_facts(
            library, launcher, mpi_probe.linker_cache(params["timeout"]),
            # What the mpi role selected, as it wrote it into the venv's env file.
            {"flavor": env.get("LOCKSTEP_MPI_FLAVOR"), "version": env.get("LOCKSTEP_MPI_VERSION")},
        ),
        "mpi_wheels": wheels,
        "raw": raw,
        "smoke": None,
    }
    # Without an importable mpi4py and a launcher there is nothing a launch could prove.
    if params["smoke_test"] and raw.get("extension") and launcher.get("path"):
        facts["smoke"] = mpi_probe.smoke_test(
            launcher["path"], launcher["flavor"], python, env, params["smoke_timeout"]
        )
    facts["verdict"], facts["reasons"] = mpi_probe.verdict(facts, wheels, facts["smoke"])
    return facts


def collect(params, base_env):
    """Raw facts of one host: venv, Python (with its marker environment), installed
    distributions with RECORD findings, uv, MPI. Never modifies anything."""
    venv = params["venv"]
    venv_real = os.path.realpath(venv)
    env, env_file = venv_environment(venv, base_env, params["env_file"], params["environment"])
    # Read-only: importing mpi4py (probe, smoke ranks) must not write __pycache__ into the venv.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    python = os.path.join(venv, "bin", "python")
    facts = {
        "venv": {
            "path": venv,
            "realpath": venv_real,
            "exists": os.path.isfile(os.path.join(venv_real, "pyvenv.cfg")),
            "env_file": env_file,
        },
    }
    pyvenv_cfg = distributions.read_pyvenv_cfg(venv_real)
    py_facts, raw_mpi, error = mpi_probe.probe(python, env, params["timeout"], with_mpi=params["mpi"])
    facts["python"] = py_facts or {}
    if error and not py_facts:
        facts["python"]["error"] = error
    site_packages = (py_facts or {}).get("site_packages") or distributions.guess_site_packages(venv_real)
    facts["venv"]["site_packages"] = site_packages
    facts["distributions"] = distributions.installed_distributions(
        site_packages, verify_files=params["verify_files"], rehash_all=params["verify_all_files"])
    facts["uv"] = uv_facts(env, params["uv_path"], pyvenv_cfg, params["timeout"])
    if params["mpi"]:
        raw_mpi = raw_mpi if py_facts else {"python_error": error}
        facts["mpi"] = mpi_facts(raw_mpi or {"error": error}, [venv_real], facts["distributions"], env, python, params)
    return facts
