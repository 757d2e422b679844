# Host side: shipped to the host with the modules that import it (stdlib only).
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

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, manifest, mpi_probe, proc, store_fs
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
    facts = {
        "path": path,
        "version": None,
        # uv records itself in pyvenv.cfg: which uv created this venv.
        "venv_created_by": pyvenv_cfg.get("uv"),
    }
    if path and os.path.lexists(path):
        result = proc.run([path, "--version"], env, timeout)
        match = re.match(r"uv\s+(\S+)", proc.first_line(result) or "")
        if match:
            facts["version"] = match.group(1)
        else:
            # A uv that is there but does not run (or prints something else) is broken, not absent.
            described = proc.describe(result, "%s --version" % path, timeout)
            output = proc.tail((result.out or "") + (result.err or ""), 2).replace("\n", " | ")
            facts["error"] = described if output in described else "%s: %s" % (described, output or "no output")
    return facts


def integrity_facts(venv_real, site_packages, params):
    """``(integrity, distributions)``: the venv against its manifest (lockstep venvs), or
    against each wheel's RECORD (a venv lockstep did not build: there is no manifest).

    A venv counts as lockstep's when anything the store keeps says so (its manifest, its
    ``lockstep.json``, the store lock beside it): then a manifest that is missing or
    unreadable is a failure, never a fallback to the weaker check.
    """
    if not params["verify_files"]:
        return {"method": "off"}, distributions.installed_distributions(site_packages, verify_files=False)
    location = manifest.location(venv_real)
    marks = (location, os.path.join(venv_real, store_fs.META_FILE),
             os.path.join(os.path.dirname(venv_real), store_fs.STORE_LOCK))
    if not any(os.path.exists(mark) for mark in marks):
        dists = distributions.installed_distributions(site_packages, verify_files=True)
        return {"method": "record", "manifest": None, "findings": [],
                "note": "no manifest (a venv lockstep.cluster did not build): checked against RECORD only"}, dists
    dists = distributions.installed_distributions(site_packages, verify_files=False)
    facts = {"method": "manifest", "manifest": location, "findings": []}
    if not os.path.isdir(venv_real):
        facts["error"] = "the venv directory %s does not exist" % venv_real
        return facts, dists
    try:
        data = manifest.load(location)
    except manifest.ManifestError as exc:
        facts["error"] = "%s: the venv cannot be verified (re-run site.yml to build a sealed one)" % exc
        return facts, dists
    facts.update(manifest.verify(venv_real, data, rehash_all=params["verify_all_files"]))
    # Whoever can write the store can swap the venv and rewrite its manifest to match: an
    # unsafe store is a failure, whatever the tree looks like.
    # Same lock, same bytes: what the other hosts' venvs must equal (manifest.content_digest).
    facts["content_digest"] = data.get("content_digest") or manifest.content_digest(data)
    facts["unsafe"] = store_fs.audit(params["venv"], venv_real) + [
        {"path": os.path.join(venv_real, rel), "reason": "sealed writable by group or others"}
        for rel in manifest.unsafe_entries(data)]
    manifest.attribute(facts["findings"], venv_real, site_packages)
    by_name = dict((distributions.canonical_name(d["name"]), d) for d in dists)
    for dist in dists:
        dist["tampered"] = []
    for finding in facts["findings"]:
        dist = by_name.get(finding.get("owner"))
        if dist is not None and finding.get("record_path"):
            # An installed package's file: reported under its name, as RECORD writes its path.
            finding["installed"] = True
            entry = dict((k, v) for k, v in finding.items() if k not in ("owner", "record_path", "installed"))
            dist["tampered"].append(dict(entry, path=finding["record_path"]))
    return facts, dists


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
    """Raw facts of one host: venv, the venv's files against its manifest, Python (with its
    marker environment), installed distributions, uv, MPI. Never modifies anything."""
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
    # The files first, before any of the venv's code runs: the report shows the tree as found.
    guessed = distributions.guess_site_packages(venv_real)
    if guessed:
        facts["integrity"], facts["distributions"] = integrity_facts(venv_real, guessed, params)
    py_facts, raw_mpi, error = mpi_probe.probe(python, env, params["timeout"], with_mpi=params["mpi"])
    facts["python"] = py_facts or {}
    if error and not py_facts:
        facts["python"]["error"] = error
    site_packages = (py_facts or {}).get("site_packages") or guessed
    facts["venv"]["site_packages"] = site_packages
    if not guessed:
        facts["integrity"], facts["distributions"] = integrity_facts(venv_real, site_packages, params)
    facts["uv"] = uv_facts(env, params["uv_path"], pyvenv_cfg, params["timeout"])
    if params["mpi"]:
        raw_mpi = raw_mpi if py_facts else {"python_error": error}
        facts["mpi"] = mpi_facts(raw_mpi or {"error": error}, [venv_real], facts["distributions"], env, python, params)
    return facts
