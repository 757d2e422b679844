# Controller side: imported by the action plugins only, never shipped to a host.
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

from ansible_collections.lockstep.cluster.plugins.plugin_utils.deps import (
    InvalidVersion,
    SpecifierSet,
    Version,
    canonicalize_name,
)
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
    """A uv that is there but does not run is a failure whatever the pin; a missing or other
    version only when a version is pinned (drift.yml and site.yml pin the uv role's)."""
    if uv.get("error"):
        return ["uv at %s does not run: %s" % (uv.get("path"), uv["error"])]
    if not wanted:
        return []
    if not uv.get("version"):
        return ["uv %s expected, no uv found on the host" % wanted]
    if uv["version"] != wanted:
        return ["uv %s but %s expected" % (uv["version"], wanted)]
    return []


def integrity_findings(facts, changed=()):
    """File findings that belong to no installed package (a new ``.pth``, a ``bin/`` script, a
    removed package's files...), why the file check itself could not run, and how many files
    belong to packages in ``changed`` (missing/extra/mismatched: reported there, not twice)."""
    integrity = facts.get("integrity") or {}
    files, explained = [], 0
    for finding in integrity.get("findings") or []:
        if finding.get("owner") in changed:
            explained += 1
        elif not finding.get("installed"):
            files.append(dict((k, finding[k]) for k in ("path", "reason", "type", "expected", "actual", "size")
                              if k in finding))
    errors = [integrity["error"]] if integrity.get("error") else []
    errors += ["unsafe store: %s: %s" % (u["path"], u["reason"]) for u in integrity.get("unsafe") or []]
    if integrity.get("truncated"):
        errors.append("%d more findings not listed" % integrity["truncated"])
    return files, errors, explained


def fingerprint(facts):
    """sha256 over what makes two hosts interchangeable: Python, the installed packages, any
    file that differs from the venv's manifest, uv, the MPI stack (and whether its launch
    worked). Paths and host names stay out of it."""
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
        "files": sorted("%s:%s" % (f["path"], f.get("actual", f["reason"])) for f in integrity_findings(facts)[0]),
        "integrity_errors": len(integrity_findings(facts)[1]),
        # The toolchain site.yml runs with: a host whose uv is another or broken is not interchangeable.
        "uv": [(facts.get("uv") or {}).get("version"), bool((facts.get("uv") or {}).get("error"))],
        "mpi": [
            mpi.get("mpi4py_version"), library.get("flavor"), library.get("version"), library.get("variant"),
            library.get("libmpi_realpath"), launcher.get("flavor"), launcher.get("version"),
            bool(mpi.get("smoke") and mpi["smoke"].get("passed")),
        ],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def evaluate(lock, facts, ignore=(), uv_version=None, smoke_test=True):
    """The drift report of one host: ``status`` (``ok`` | ``drift``), per-check findings and
    outcomes, counts, ``problems`` (one line per finding) and the fingerprint.

    ``ok`` means every check that was expected to run ran and passed: a verdict of unknown,
    or a smoke test that did not run although asked for, is drift with its reason.
    """
    python = facts.get("python") or {}
    expected = expected_packages(lock, python.get("marker_environment"))
    missing, extra, mismatched = compare_packages(expected, facts.get("distributions") or [], ignore)
    changed = set(p["name"] for p in missing + extra + mismatched)
    files, integrity_errors, explained = integrity_findings(facts, changed)
    drift = {
        "missing": missing,
        "extra": extra,
        "mismatched": mismatched,
        "tampered": [t for t in tampered_files(facts["distributions"]) if t["name"] not in changed],
        "files": files,
        "gpu": gpu_packages(facts["distributions"]),
        "python": check_python(python, lock),
        "uv": check_uv(facts.get("uv") or {}, uv_version),
    }
    # The integrity check fails for those too (JUnit), the problems name them once, as packages.
    also = ["%d file(s) of the packages reported above differ from the manifest" % explained] if explained else []
    checks = check_outcomes(facts, drift, integrity_errors + also, uv_checked=bool(uv_version),
                            mpi_expected="mpi4py" in expected, smoke_test=smoke_test)
    problems = []
    if not facts["venv"]["exists"]:
        problems.append("venv %s does not exist" % facts["venv"]["path"])
    problems += ["missing %s==%s" % (m["name"], m["expected"]) for m in missing]
    problems += ["extra %s==%s" % (e["name"], e["version"]) for e in extra]
    problems += ["version %s: %s installed, %s locked" % (m["name"], m["installed"], m["expected"]) for m in mismatched]
    problems += [
        "tampered %s: %s (%s)" % (t["name"], f["path"], _tamper_reason(f)) for t in drift["tampered"] for f in t["files"]
    ]
    problems += ["file %s: %s" % (f["path"], _file_reason(f)) for f in files]
    problems += ["integrity: %s" % e for e in integrity_errors]
    problems += ["GPU package %s==%s: %s" % (g["name"], g["version"], g["reason"]) for g in drift["gpu"]]
    problems += ["python: %s" % r for r in drift["python"]]
    problems += ["uv: %s" % r for r in drift["uv"]]
    mpi = facts.get("mpi") or {}
    if checks["mpi_abi"]["outcome"] == "fail":
        problems += ["mpi: %s" % r for r in checks["mpi_abi"]["reasons"]]
    if checks["mpi_smoke"]["outcome"] == "fail" and not mpi.get("smoke"):  # a failed launch is in the verdict
        problems += ["mpi smoke test: %s" % r for r in checks["mpi_smoke"]["reasons"]]
    counts = {
        "expected": len(expected),
        "installed": len(facts["distributions"]),
        "missing": len(missing),
        "extra": len(extra),
        "mismatched": len(mismatched),
        "tampered": sum(len(t["files"]) for t in drift["tampered"]) + len(files),
        "gpu": len(drift["gpu"]),
    }
    for check in checks.values():
        check.pop("reasons", None)
    return {
        "status": "drift" if problems else "ok",
        "drift": drift,
        "counts": counts,
        "problems": problems,
        "checks": checks,
        "fingerprint": fingerprint(facts),
    }


def _tamper_reason(finding):
    if finding["reason"] in ("owner", "mode") and finding.get("actual"):
        return "%s %s, manifest: %s" % (finding["reason"], finding["actual"], finding.get("expected"))
    return finding["reason"]


def _file_reason(finding):
    if finding["reason"] == "new":
        return "new %s, not in the venv's manifest" % finding.get("type", "entry")
    if finding.get("expected") and finding.get("actual"):
        return "%s (%s, manifest: %s)" % (finding["reason"], finding["actual"], finding["expected"])
    return finding["reason"]


def _mpi_checks(mpi, mpi_expected, smoke_test):
    """``(abi, smoke)`` outcomes with reasons. Skipped only when nobody asked: MPI disabled,
    the smoke test disabled, or mpi4py neither locked for this host nor installed."""
    if not mpi:
        return ({"outcome": "skip", "message": "mpi disabled"}, {"outcome": "skip", "message": "mpi disabled"})
    raw, launcher = mpi.get("raw") or {}, mpi.get("launcher") or {}
    absent = "No module named 'mpi4py'" in (raw.get("import_error") or "")
    if not mpi_expected and absent:
        skip = {"outcome": "skip", "message": "mpi4py is not in the lock for this host"}
        return skip, dict(skip)
    abi = list(mpi["reasons"]) if mpi["verdict"] == "incompatible" else \
        ["verdict unknown: %s" % "; ".join(mpi["reasons"])] if mpi["verdict"] == "unknown" else []
    smoke = mpi.get("smoke")
    if not smoke_test:
        return _outcome(abi), {"outcome": "skip", "message": "smoke test disabled"}
    if smoke:
        smoke_fail = [] if smoke.get("passed") else list(smoke.get("reasons") or ["failed"])
    else:
        why = []
        if not raw.get("extension"):
            why.append("mpi4py.MPI did not load")
        if not launcher.get("path"):
            why.append(launcher.get("error") or "no launcher")
        smoke_fail = ["not run: %s" % ("; ".join(why) or "unknown reason")]
    return _outcome(abi), _outcome(smoke_fail)


def _outcome(failures):
    return {"outcome": "fail" if failures else "pass", "message": "; ".join(failures), "reasons": list(failures)}


def check_outcomes(facts, drift, integrity_errors, uv_checked, mpi_expected=True, smoke_test=True):
    """Per check (CHECKS): ``{"outcome": pass|fail|skip, "message": …}`` for junit and tables.
    ``skip`` only for a check nobody asked for; one that could not run when asked is ``fail``."""
    integrity = facts.get("integrity") or {}
    packages = (
        ["missing %s" % m["name"] for m in drift["missing"]]
        + ["extra %s" % e["name"] for e in drift["extra"]]
        + ["mismatched %s" % m["name"] for m in drift["mismatched"]]
    )
    if integrity.get("method") == "off":
        checked = {"outcome": "skip", "message": "verify_files disabled"}
    else:
        checked = _outcome(["%s: %s" % (t["name"], ", ".join(f["path"] for f in t["files"])) for t in drift["tampered"]]
                           + ["%s (%s)" % (f["path"], f["reason"]) for f in drift["files"]] + integrity_errors)
        if checked["outcome"] == "pass" and integrity.get("note"):
            checked["message"] = integrity["note"]
    uv_failures = drift["uv"]
    abi, smoke = _mpi_checks(facts.get("mpi"), mpi_expected, smoke_test)
    return {
        "packages": _outcome(packages),
        "integrity": checked,
        "gpu": _outcome(["%s==%s" % (g["name"], g["version"]) for g in drift["gpu"]]),
        "python": _outcome(drift["python"]),
        "uv": _outcome(uv_failures) if uv_checked or uv_failures
        else {"outcome": "skip", "message": "no uv_version to compare with"},
        "mpi_abi": abi,
        "mpi_smoke": smoke,
    }
