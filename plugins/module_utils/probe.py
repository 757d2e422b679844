# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host has, collected in one module run: the probe's option spec and its raw facts.

Stdlib only. One section per question asked (``validate``: the venv, its files against the
manifest, the venv's Python, its distributions, uv and the MPI stack); the module returns raw
facts and the controller judges them (plugin_utils.validate), where ``packaging`` is available.
Nothing here modifies the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import time

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.cluster.plugins.module_utils import (
    cluster,
    distributions,
    manifest,
    mpi,
    proc,
    store_fs,
    uv,
    venv,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import venv_environment

# The audit's questions (the validate role's settings); the lock itself stays on the controller.
VALIDATE_OPTIONS = dict(
    venv=dict(type="path", required=True),
    verify_files=dict(type="bool", default=True),
    verify_all_files=dict(type="bool", default=False),
    uv_path=dict(type="path"),
    mpi=dict(type="bool", default=True),
    smoke_test=dict(type="bool", default=True),
    launcher=dict(type="path"),
    env_file=dict(type="path"),
    environment=dict(type="dict", default={}),
    timeout=dict(type="int", default=60),
    smoke_timeout=dict(type="int", default=120),
)

# What the probe needs of the cluster role's settings to snapshot a member's files.
CLUSTER_OPTIONS = dict(
    user=dict(type="str", default="bench"),
    hostfile=dict(type="path", default="/etc/lockstep/hostfile"),
    manage_keys=dict(type="bool", default=True),
    manage_known_hosts=dict(type="bool", default=True),
)

# Each role's section takes that role's module options, checked against that module's spec.
SPECS = {"uv": uv.ARGUMENT_SPEC, "mpi": mpi.ARGUMENT_SPEC, "venv": venv.ARGUMENT_SPEC, "cluster": CLUSTER_OPTIONS}
# Options that do not change what the host is asked: set per apply by an action plugin, or read
# on the controller only. They stay out of a section's digest.
NOT_ASKED = {
    "uv": ("remote_archive", "archive_src"),
    "venv": ("stage", "remote_lockfile", "expected", "wheelhouse_incoming", "wheelhouse_files", "build",
             "wheelhouse_cache", "wheelhouse_find_links", "build_group", "build_requires", "lock_timeout",
             "prune_after_sync"),
    "mpi": (), "cluster": (), "validate": (),
}

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    uv=dict(type="dict"),
    mpi=dict(type="dict"),
    venv=dict(type="dict"),
    cluster=dict(type="dict"),
    validate=dict(type="dict", options=VALIDATE_OPTIONS),
    # Kept for this run (the fact lockstep_probe) for the roles and the audit to reuse: only where
    # the playbook knows nothing but lockstep roles runs on the host after the probe (site.yml).
    keep=dict(type="bool", default=False),
    # Checked on the controller (the action plugin): these roles' arguments, in this one task.
    role_arguments=dict(type="list", elements="str", default=[]),
)


def settings(section, given):
    """``(settings, error)``: a role section's options, checked and defaulted by its module's
    spec, exactly as the role's own action plugin checks them (so their digests agree)."""
    given = dict(given or {})
    if section == "cluster":  # the cluster role's options: the snapshot needs only a few
        given = dict((k, v) for k, v in given.items() if k in CLUSTER_OPTIONS)
    checked = ArgumentSpecValidator(SPECS[section]).validate(given)
    if checked.error_messages:
        return None, "; ".join(checked.error_messages)
    return checked.validated_parameters, None


def secrets(params):
    """The values of every no_log option given in a role section (an index URL with a token):
    the module masks them in everything it returns, as the role's own module would."""
    found = set()
    for name, spec in SPECS.items():
        for option, rule in spec.items():
            value = (params.get(name) or {}).get(option)
            if rule.get("no_log") and value:
                found.update(value if isinstance(value, list) else [value])
    return set(str(v) for v in found)


def digest(section, params):
    """sha256 of what a section asks the host (NOT_ASKED left out): a role reuses the probe's
    answer only when its own options give the same digest."""
    asked = dict((k, v) for k, v in (params or {}).items() if k not in NOT_ASKED.get(section, ()))
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode("utf-8")).hexdigest()


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
    # Same lock, same bytes: what the other hosts' venvs must equal (manifest.content_digest).
    facts["content_digest"] = data.get("content_digest") or manifest.content_digest(data)
    # Whoever can write the store can swap the venv and rewrite its manifest to match: an
    # unsafe store is a failure, whatever the tree looks like.
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
    py_facts, raw_mpi, error = mpi.probe(python, env, params["timeout"], with_mpi=params["mpi"])
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
        facts["mpi"] = mpi.mpi_facts(raw_mpi or {"error": error}, [venv_real], facts["distributions"], env, python, params)
    return facts


def _section(name, given, answer):
    """One role's answer, exactly what its own module would say in check mode (read-only)."""
    params, error = settings(name, given)
    if error:
        return {"error": "%s: %s" % (name, error)}
    facts = answer["facts"]
    if name == "venv" and params.get("mpi_env") is None and "result" in answer.get("mpi", {}):
        # The venv's MPI variables are what the mpi role would hand it: this run's mpi answer.
        params["mpi_env"] = (answer["mpi"]["result"].get("runtime") or {}).get("env") or {}
    try:
        if name == "uv":
            result = uv.run(params, True, answer["diff"], facts)
        elif name == "mpi":
            result = mpi.run(params, True, answer["diff"], facts)
        elif name == "venv":
            result = venv.run(dict(params, stage="plan"), True, answer["env"], facts)
        else:
            return {"digest": digest(name, params), "snapshot": cluster.snapshot(params)}
    except (IOError, OSError, RuntimeError, ValueError, cluster.AccessError) as exc:
        return {"error": "%s: %s" % (name, exc)}
    return {"digest": digest(name, params), "result": result}


def run(params, base_env, module):
    """Every section that was asked for, in one module run: the OS facts the roles need, each
    role's answer (``uv``, ``mpi``, ``venv``: their check-mode plan; ``cluster``: a snapshot of
    the member's files), and the audit's facts (``validate``). A section that cannot be answered
    carries its ``error``; the others still are. Nothing is changed."""
    start = time.time()
    out = {"facts": distributions.os_facts(module), "diff": bool(getattr(module, "_diff", False)),
           "env": base_env}
    # Where a run's time goes on the host (the bench and an operator read it).
    seconds = {"facts": round(time.time() - start, 3)}
    for name in ("uv", "mpi", "venv", "cluster"):
        if params.get(name) is not None:
            begin = time.time()
            out[name] = _section(name, params[name], out)
            seconds[name] = round(time.time() - begin, 3)
    if params.get("validate"):
        begin = time.time()
        options = params["validate"]
        env_file = options.get("env_file")
        if env_file and not os.path.isfile(env_file):
            out["validate"] = {"error": "env_file %s does not exist" % env_file}
        else:
            try:
                out["validate"] = collect(options, base_env)
            except (IOError, OSError, RuntimeError, ValueError) as exc:
                out["validate"] = {"error": "the probe failed: %s" % exc}
        seconds["validate"] = round(time.time() - begin, 3)
    out["seconds"] = seconds
    out.pop("diff")
    out.pop("env")
    return out
