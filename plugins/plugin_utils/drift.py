# -*- coding: utf-8 -*-
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: a host's raw facts (module_utils.env_probe) against the lock.

PEP 440 / PEP 503 come from ``packaging``, which the controller has and the hosts may not,
so this runs in the action plugin, never on a host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ansible_collections.lockstep.cluster.plugins.plugin_utils.policy import gpu_reason, python_version_reason

CHECKS = ("packages", "integrity", "gpu", "python", "uv", "mpi_abi", "mpi_smoke")


def version_matches(installed, entry):
    """PEP 440 equality with the pin (``1.0`` == ``1.0.0``; local labels count: ``2.5.1+cpu``
    != ``2.5.1``), string equality for versions PEP 440 cannot parse; an entry that is not
    pinned with ``==`` (the lock policy reports those) must contain the installed version."""
    try:
        if entry.version is None:
            return SpecifierSet(entry.specifier).contains(installed, prereleases=True)
        return Version(installed) == Version(entry.version)
    except InvalidVersion:
        return installed == entry.version


def check_python(python, lock):
    """Reasons the venv's Python does not fit the lock (empty list when it does)."""
    env = python.get("marker_environment")
    if not env:
        return ["the venv's Python does not run: %s" % python.get("error", "unknown error")]
    reason = python_version_reason(lock, env["python_full_version"])
    return [reason] if reason else []


def expected_packages(lock, marker_environment):
    """Lock entries that apply to the host (markers evaluated for the venv's Python).

    When the venv's Python cannot run there is no environment to evaluate: every name in the
    lock is expected, so a missing venv reports everything as missing.
    """
    if marker_environment:
        return lock.for_environment(marker_environment)
    expected = {}
    for entry in lock.entries:
        expected.setdefault(entry.name, entry)
    return expected


def compare_packages(expected, distributions, ignore=()):
    """missing / extra / mismatched lists; names PEP 503-normalized, versions PEP 440."""
    ignored = set(canonicalize_name(n) for n in ignore)
    installed = {}
    for dist in distributions:
        installed.setdefault(canonicalize_name(dist["name"]), dist)
    missing, extra, mismatched = [], [], []
    for name in sorted(expected):
        entry = expected[name]
        dist = installed.get(name)
        if dist is None:
            missing.append({"name": name, "expected": entry.version or entry.specifier, "line": entry.line})
        elif not version_matches(dist["version"], entry):
            mismatched.append({"name": name, "expected": entry.version or entry.specifier, "installed": dist["version"]})
    for name in sorted(set(installed) - set(expected) - ignored):
        extra.append({"name": name, "version": installed[name]["version"]})
    return missing, extra, mismatched


def tampered_files(distributions):
    return [
        {"name": canonicalize_name(d["name"]), "version": d["version"], "files": d["tampered"]}
        for d in distributions
        if d.get("tampered")
    ]


def gpu_packages(distributions):
    found = []
    for dist in distributions:
        name = canonicalize_name(dist["name"])
        reason = gpu_reason(name, dist["version"])
        if reason:
            found.append({"name": name, "version": dist["version"], "reason": reason})
    return sorted(found, key=lambda f: f["name"])


def check_uv(uv, wanted):
    if not wanted:
        return []
    if not uv.get("version"):
        return ["uv %s expected, no uv found on the host" % wanted]
    if uv["version"] != wanted:
        return ["uv %s but %s expected" % (uv["version"], wanted)]
    return []


def fingerprint(facts):
    """sha256 over what makes two hosts interchangeable: Python, the installed packages (and
    any tampered file), the MPI stack. Paths and host names stay out of it."""
    env = (facts.get("python") or {}).get("marker_environment") or {}
    mpi = facts.get("mpi") or {}
    library, launcher = mpi.get("library") or {}, mpi.get("launcher") or {}
    material = {
        "python": [env.get(k) for k in ("implementation_name", "python_full_version", "platform_machine")],
        "packages": sorted("%s==%s" % (canonicalize_name(d["name"]), d["version"]) for d in facts["distributions"]),
        "tampered": sorted(
            "%s:%s:%s" % (canonicalize_name(d["name"]), f["path"], f.get("actual", f["reason"]))
            for d in facts["distributions"]
            for f in d.get("tampered") or ()
        ),
        "mpi": [
            mpi.get("mpi4py_version"), library.get("flavor"), library.get("version"), library.get("variant"),
            library.get("libmpi_realpath"), launcher.get("flavor"), launcher.get("version"),
        ],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def evaluate(lock, facts, ignore=(), uv_version=None):
    """The drift report of one host: ``status`` (``ok`` | ``drift``), per-check findings,
    counts, ``problems`` (one line per finding) and the fingerprint."""
    python = facts.get("python") or {}
    expected = expected_packages(lock, python.get("marker_environment"))
    missing, extra, mismatched = compare_packages(expected, facts.get("distributions") or [], ignore)
    drift = {
        "missing": missing,
        "extra": extra,
        "mismatched": mismatched,
        "tampered": tampered_files(facts["distributions"]),
        "gpu": gpu_packages(facts["distributions"]),
        "python": check_python(python, lock),
        "uv": check_uv(facts.get("uv") or {}, uv_version),
    }
    problems = []
    if not facts["venv"]["exists"]:
        problems.append("venv %s does not exist" % facts["venv"]["path"])
    problems += ["missing %s==%s" % (m["name"], m["expected"]) for m in missing]
    problems += ["extra %s==%s" % (e["name"], e["version"]) for e in extra]
    problems += ["version %s: %s installed, %s locked" % (m["name"], m["installed"], m["expected"]) for m in mismatched]
    problems += [
        "tampered %s: %s (%s)" % (t["name"], f["path"], f["reason"]) for t in drift["tampered"] for f in t["files"]
    ]
    problems += ["GPU package %s==%s: %s" % (g["name"], g["version"], g["reason"]) for g in drift["gpu"]]
    problems += ["python: %s" % r for r in drift["python"]]
    problems += ["uv: %s" % r for r in drift["uv"]]
    mpi = facts.get("mpi")
    if mpi and mpi["verdict"] == "incompatible":
        problems += ["mpi: %s" % r for r in mpi["reasons"]]
    counts = {
        "expected": len(expected),
        "installed": len(facts["distributions"]),
        "missing": len(missing),
        "extra": len(extra),
        "mismatched": len(mismatched),
        "tampered": sum(len(t["files"]) for t in drift["tampered"]),
        "gpu": len(drift["gpu"]),
    }
    return {
        "status": "drift" if problems else "ok",
        "drift": drift,
        "counts": counts,
        "problems": problems,
        "checks": check_outcomes(facts, drift, uv_checked=bool(uv_version)),
        "fingerprint": fingerprint(facts),
    }


def check_outcomes(facts, drift, uv_checked):
    """Per check (CHECKS): ``{"outcome": pass|fail|skip, "message": …}`` for junit and tables."""
    def outcome(failures, skip=None):
        if skip:
            return {"outcome": "skip", "message": skip}
        return {"outcome": "fail" if failures else "pass", "message": "; ".join(failures)}

    mpi = facts.get("mpi")
    smoke = (mpi or {}).get("smoke")
    # The module leaves out ``tampered`` when verify_files is off.
    verified = all("tampered" in d for d in facts["distributions"])
    packages = (
        ["missing %s" % m["name"] for m in drift["missing"]]
        + ["extra %s" % e["name"] for e in drift["extra"]]
        + ["mismatched %s" % m["name"] for m in drift["mismatched"]]
    )
    return {
        "packages": outcome(packages),
        "integrity": outcome(
            ["%s: %s" % (t["name"], ", ".join(f["path"] for f in t["files"])) for t in drift["tampered"]],
            skip=None if verified else "verify_files disabled",
        ),
        "gpu": outcome(["%s==%s" % (g["name"], g["version"]) for g in drift["gpu"]]),
        "python": outcome(drift["python"]),
        "uv": outcome(drift["uv"], skip=None if uv_checked else "no uv_version to compare with"),
        "mpi_abi": outcome(
            mpi["reasons"] if mpi and mpi["verdict"] == "incompatible" else [],
            skip="mpi disabled" if not mpi
            else "verdict unknown: %s" % "; ".join(mpi["reasons"]) if mpi["verdict"] == "unknown"
            else None,
        ),
        "mpi_smoke": outcome(
            smoke["reasons"] if smoke else [],
            skip=None if smoke else "smoke test not run",
        ),
    }
