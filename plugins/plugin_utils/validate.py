# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verdict of an audit: each host's raw facts (module_utils.probe) against the lock, the
hosts against each other, and the cluster smoke test's launch, with one named cause per host.

PEP 440 / PEP 503 come from ``packaging``, which the controller has and the hosts may not, so
this runs in the action plugin, never on a host. Causes of the smoke test (``CAUSES``), the
first that applies wins: the controller could not check the host, it is another inventory name
of a host already listed (same SSH host key), its hostfile name does not resolve from the
launching host, it is not in the hostfile, SSH from the launching host cannot reach it /
refuses the login / finds another host key, the venv's Python is missing there, mpi4py does not
import there, its rank loaded another MPI than the launcher's (launcher/flavor mismatch), its
rank's environment adds to the venv's Python (a variable such as PYTHONPATH, a module imported
from outside the venv, a sitecustomize outside it: rank_env), its rank's environment differs
from what the host reported itself, its inbound TCP is blocked (its ranks never connected), its
rank never showed up, or its rank started but failed (MPI_Init,
allreduce, ring exchange, timeout).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections import Counter

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import AccessError, plan_from
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import family, parse_library_version
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import (
    canonicalize_name,
    gpu_reason,
    InvalidVersion,
    python_version_reason,
    SpecifierSet,
    Version,
)


CHECKS = ("packages", "integrity", "gpu", "python", "uv", "mpi_abi", "mpi_smoke", "cluster_files", "rank_env",
          "base_python")


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


def uv_install_findings(section):
    """What the uv role's own check (re-hashing bin/uv and bin/uvx against what the install
    recorded, ``uv --version``, the links) says of a host, from the probe's uv answer."""
    if not section:
        return []
    if section.get("error"):
        return ["the uv install could not be checked: %s" % section["error"]]
    result = section.get("result") or {}
    if result.get("failed"):
        return ["the uv install could not be checked: %s" % result.get("msg")]
    if result.get("changed"):
        return ["the uv install is not what the uv role made: %s" % (result.get("msg") or "it would change")]
    return []


def cluster_file_findings(plan):
    """What differs from the files the cluster role would write (``plan``: module_utils.cluster
    plan_from() of the expected files against the probe's snapshot), and an earlier cluster
    user that still holds the key."""
    if plan is None:
        return []
    if plan.get("error"):
        return [plan["error"]]
    if not plan["user"].get("exists"):
        return ["the cluster user %s does not exist" % plan["user"]["name"]]
    found = ["%s: %s" % (entry["path"], "missing" if entry["action"] == "create" else ", ".join(entry["reasons"]))
             for entry in plan["files"] if entry["action"] != "none"]
    found += ["directory: %s" % change for change in plan["directories"]]
    found += ["%s (an earlier cluster user) still holds the cluster key or its authorized_keys block" % name
              for name in plan.get("stale_users") or []]
    return found


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


# Where a variable can come from when no startup file the rank reads sets it.
_NO_SOURCE = ("not set in /etc/environment, /etc/profile(.d), /etc/bash.bashrc, ~/.profile or ~/.bashrc: "
              "a module system, PAM or the launcher")


def _inside(path, root):
    return bool(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


def _parts(name, value):
    """A variable's entries: PATH-like lists by ':', LD_PRELOAD by ':' or blanks, others whole."""
    if name == "LD_PRELOAD":
        return [p for p in re.split(r"[:\s]+", value or "") if p]
    if name in ("PYTHONPATH", "LD_LIBRARY_PATH"):
        return [p for p in (value or "").split(":") if p]
    return [value] if value else []


def runtime_findings(seen, venv_real, allowed=None, clean=None, who=None):
    """What the environment adds to the venv's Python, one line each (module_utils.cluster_smoke
    RUNTIME_SCRIPT's facts of a rank, or of the probe's login-like run as the cluster user):
    a key module (numpy, mpi4py, its MPI extension) or any other imported module from outside
    the venv and the base stdlib, an interpreter-affecting variable beyond what the launch sets
    itself (``allowed``: lockstep.env and ``environment``) with the startup files that set it,
    and sitecustomize/usercustomize/.pth files on sys.path outside the venv that are not a
    package's own unchanged file (``clean``: {path: sha256}, probe.base_python)."""
    if not seen:
        return []
    if seen.get("error"):
        return ["could not be checked: %s" % seen["error"]]
    out, allowed, clean = [], allowed or {}, clean or {}
    named = []
    for name in ("numpy", "mpi4py", "mpi4py.MPI"):
        path = (seen.get("modules") or {}).get(name)
        if path and not _inside(path, venv_real):
            named.append(name)
            out.append("%s imported from %s, outside the venv %s" % (name, path, venv_real))
    for name, error in sorted((seen.get("import_errors") or {}).items()):
        out.append("%s does not import: %s" % (name, error))
    foreign = sorted((n, p) for n, p in (seen.get("foreign") or {}).items()
                     if n not in ("sitecustomize", "usercustomize")  # the customize files, below
                     and not any(n == m or n.startswith(m.split(".")[0] + ".") for m in named))
    out += ["module %s imported from %s, outside the venv and the base stdlib" % (n, p) for n, p in foreign[:3]]
    if len(foreign) > 3:
        out.append("%d more modules imported from outside the venv" % (len(foreign) - 3))
    for name, value in sorted((seen.get("env") or {}).items()):
        extra = [p for p in _parts(name, value) if p not in _parts(name, allowed.get(name))]
        if not extra:
            continue
        where = (seen.get("sources") or {}).get(name)
        out.append("%s=%s%s (%s)" % (name, value if len(extra) == len(_parts(name, value)) else ":".join(extra),
                                     " in %s's environment" % who if who else "",
                                     "set in %s" % ", ".join(where) if where else _NO_SOURCE))
    for entry in seen.get("customize") or ():
        if entry.get("sha256") and clean.get(entry["path"]) == entry["sha256"]:
            continue
        if entry["path"].endswith(".pth"):
            out.append(".pth file %s on sys.path outside the venv" % entry["path"])
        else:
            out.append("%s %s on sys.path outside the venv (runs at every start of the venv's Python)" % (
                os.path.basename(entry["path"]).split(".")[0], entry["path"]))
    return out


def base_python_findings(section):
    """The base interpreter against its package manager (probe.base_python): changed, missing
    and foreign files by path, or why it could not be verified."""
    if not section:
        return []
    found = ["%s: %s" % (f["path"], f["reason"]) for f in section.get("findings") or ()]
    if section.get("error"):
        found.append("could not be verified: %s" % section["error"])
    return found


def _runtime_of(facts):
    runtime = facts.get("runtime")
    if runtime is None:
        return []
    return runtime_findings(runtime, (facts.get("venv") or {}).get("realpath"), runtime.get("expected_env"),
                            (facts.get("base_python") or {}).get("clean_customize"), runtime.get("user"))


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
        # What the login environment and the base interpreter add: a host with any differs.
        "runtime": sorted(_runtime_of(facts) + base_python_findings(facts.get("base_python"))),
        # The toolchain site.yml runs with: a host whose uv is another or broken is not interchangeable.
        "uv": [(facts.get("uv") or {}).get("version"), bool((facts.get("uv") or {}).get("error"))],
        "mpi": [
            mpi.get("mpi4py_version"), library.get("flavor"), library.get("version"), library.get("variant"),
            library.get("libmpi_realpath"), launcher.get("flavor"), launcher.get("version"),
            bool(mpi.get("smoke") and mpi["smoke"].get("passed")),
        ],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def evaluate(lock, facts, ignore=(), uv_version=None, smoke_test=True, cluster=None, uv_install=None,
             cluster_files=None):
    """The drift report of one host: ``status`` (``ok`` | ``drift``), per-check findings and
    outcomes, counts, ``problems`` (one line per finding) and the fingerprint.

    ``ok`` means every check that was expected to run ran and passed: a verdict of unknown,
    or a smoke test that did not run although asked for, is drift with its reason. ``cluster``:
    this host's entry in the cluster smoke verdict when that launch covered it (then it is the
    host's smoke test: one launch per audit). ``uv_install``: the probe's uv answer (the uv role's
    own check); ``cluster_files``: the cluster files compared with what the cluster role would
    write (module_utils.cluster.plan_from), None when not asked.
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
        "uv": check_uv(facts.get("uv") or {}, uv_version) + uv_install_findings(uv_install),
        "cluster_files": cluster_file_findings(cluster_files),
        "rank_env": _runtime_of(facts),
        "base_python": base_python_findings(facts.get("base_python")),
    }
    # The integrity check fails for those too (JUnit), the problems name them once, as packages.
    also = ["%d file(s) of the packages reported above differ from the manifest" % explained] if explained else []
    checks = check_outcomes(facts, drift, integrity_errors + also, uv_checked=bool(uv_version or uv_install),
                            mpi_expected="mpi4py" in expected, smoke_test=smoke_test, cluster=cluster,
                            files_checked=cluster_files is not None)
    problems = []
    if not facts["venv"]["exists"]:
        problems.append("venv %s does not exist" % facts["venv"]["path"])
    # First: what runs on the ranks besides the venv, whatever else differs.
    problems += ["rank env: %s" % r for r in drift["rank_env"]]
    problems += ["base python: %s" % r for r in drift["base_python"]]
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
    problems += ["cluster file %s" % r for r in drift["cluster_files"]]
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


def _mpi_checks(mpi, mpi_expected, smoke_test, cluster=None):
    """``(abi, smoke)`` outcomes with reasons. Skipped only when nobody asked: MPI disabled,
    the smoke test disabled, or mpi4py neither locked for this host nor installed. The smoke
    test is the host's own ``mpiexec -n 2`` or, when the cluster smoke test covered the host,
    its rank there (``cluster``: the host's entry in that verdict)."""
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
    elif cluster is not None:
        smoke_fail = [] if cluster["status"] == "ok" else [
            "not proven: the cluster launch was aborted (%s)" % cluster["message"] if cluster["status"] == ABORTED
            else "cluster smoke test: %s: %s" % (cluster["status"], cluster["message"])]
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


def check_outcomes(facts, drift, integrity_errors, uv_checked, mpi_expected=True, smoke_test=True, cluster=None,
                   files_checked=False):
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
    abi, smoke = _mpi_checks(facts.get("mpi"), mpi_expected, smoke_test, cluster)
    return {
        "packages": _outcome(packages),
        "integrity": checked,
        "gpu": _outcome(["%s==%s" % (g["name"], g["version"]) for g in drift["gpu"]]),
        "python": _outcome(drift["python"]),
        "uv": _outcome(uv_failures) if uv_checked or uv_failures
        else {"outcome": "skip", "message": "no uv_version to compare with"},
        "mpi_abi": abi,
        "mpi_smoke": smoke,
        "cluster_files": _outcome(drift["cluster_files"]) if files_checked
        else {"outcome": "skip", "message": "the cluster role's settings were not given"},
        "rank_env": _outcome(drift["rank_env"]) if "runtime" in facts
        else {"outcome": "skip", "message": "not collected by the probe"},
        "base_python": _base_outcome(facts.get("base_python"), drift["base_python"]),
    }


def _base_outcome(section, findings):
    if section is None:
        return {"outcome": "skip", "message": "not collected by the probe"}
    outcome = _outcome(findings)
    if not findings:
        outcome["message"] = section.get("note") or "%s: %s verified" % (section.get("manager"), ", ".join(
            section.get("packages") or ()))
    return outcome


CAUSES = ("unreachable", "duplicate_host", "name_unresolved", "not_in_hostfile", "ssh_unreachable", "ssh_auth",
          "host_key", "venv_missing", "import_error", "flavor_mismatch", "rank_env", "env_differs", "inbound_blocked",
          "rank_missing", "rank_failed")
# A host whose rank was fine as far as it got, in a launch another host's failure brought down.
ABORTED = "aborted"
# Faults that bring a whole launch down (a rank whose environment differs or adds to the venv still
# runs; a duplicate or an unresolved name is left out of the launch).
_ABORTS = set(CAUSES) - set(["unreachable", "rank_missing", "rank_failed", "env_differs", "rank_env", "not_in_hostfile",
                             "duplicate_host", "name_unresolved"])
GATE_FIELDS = ("lock_sha256", "venv_path", "python", "packages", "files", "bytes", "mpi", "launcher", "mpi4py", "uv")

_HOST_KEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
                       r"No \S+ host key is known|host key for \S+ has changed", re.I)
_AUTH = re.compile(r"Permission denied \(|Too many authentication failures", re.I)
_NET = re.compile(r"Connection refused|Connection timed out|No route to host|Could not resolve hostname|"
                  r"Name or service not known|Network is unreachable|Connection closed by|"
                  r"Connection reset|port 22: ", re.I)
# Where a launcher says which host an exec or ssh failure was on.
_NAMED = (
    re.compile(r"[Hh]ost key for (?P<host>\S+) has changed"),
    re.compile(r"No \S+ host key is known for (?P<host>\S+) and"),
    re.compile(r"\S+@(?P<host>\S+): Permission denied \("),
    re.compile(r"ssh: connect to host (?P<host>\S+) port \d+"),
    re.compile(r"ssh: Could not resolve hostname (?P<host>[^:\s]+)"),
    re.compile(r"Node:\s+(?P<host>\S+)"),
    re.compile(r"\[proxy:[^@\]]*@(?P<host>[^\]]+)\][^\n]*(execvp error|No such file)"),
)


def ssh_cause(text):
    """``(cause, line)`` for an ssh failure's stderr, or ``(None, None)``."""
    for cause, pattern in (("host_key", _HOST_KEY), ("ssh_auth", _AUTH), ("ssh_unreachable", _NET)):
        match = pattern.search(text or "")
        if match:
            line = next((ln.strip() for ln in (text or "").splitlines() if pattern.search(ln)), match.group(0))
            return cause, line
    return None, None


def _pins(result):
    return tuple(sorted("%s==%s" % (canonicalize_name(d["name"]), d["version"]) for d in result.get("distributions") or []))


def _changed_files(result):
    """Paths that differ from the manifest (or RECORD), whoever owns them."""
    tampered = ["%s:%s" % (t["name"], f["path"]) for t in (result.get("drift") or {}).get("tampered") or ()
                for f in t["files"]]
    return tuple(sorted(tampered + [f["path"] for f in (result.get("drift") or {}).get("files") or ()]))


def _value(result, field):
    mpi = result.get("mpi") or {}
    library, launcher = mpi.get("library") or {}, mpi.get("launcher") or {}
    if field == "lock_sha256":  # the lock the venv was built from (its store metadata), else the audited one
        return ((result.get("venv") or {}).get("built_from") or {}).get("lock_sha256") \
            or (result.get("lock") or {}).get("sha256")
    if field == "venv_path":
        return (result.get("venv") or {}).get("path")
    if field == "python":
        return (result.get("python") or {}).get("version")
    if field == "packages":
        return _pins(result)
    if field == "files":
        return _changed_files(result)
    if field == "bytes":  # same lock, same bytes: the venv's content digest, per package
        digest = ((result.get("integrity") or {}).get("content_digest")) or {}
        return tuple(sorted((digest.get("by_package") or {}).items())) if digest else None
    if field == "mpi":
        return " ".join(p for p in (library.get("flavor"), library.get("version")) if p) or None
    if field == "launcher":
        return " ".join(p for p in (launcher.get("flavor"), launcher.get("version")) if p) or None
    if field == "mpi4py":
        return " ".join(p for p in (mpi.get("mpi4py_version"), library.get("variant")) if p) or None
    if field == "uv":
        return (result.get("uv") or {}).get("version")
    raise KeyError(field)


def _shown_value(field, value, reference):
    """A field's value as the reports show it; packages and files as what differs from the reference."""
    if field == "packages":
        mine, ref = dict(p.split("==", 1) for p in value), dict(p.split("==", 1) for p in reference or ())
        diff = ["%s %s (the others %s)" % (n, mine.get(n, "absent"), ref.get(n, "absent"))
                for n in sorted(set(mine) | set(ref)) if mine.get(n) != ref.get(n)]
        return "; ".join(diff[:8]) + ("; %d more" % (len(diff) - 8) if len(diff) > 8 else "")
    if field == "bytes":
        mine, ref = dict(value or ()), dict(reference or ())
        differ = sorted(n for n in set(mine) | set(ref) if mine.get(n) != ref.get(n))
        return ("the files of %s differ from the other hosts'" % ", ".join(differ[:8])
                + (" and %d more" % (len(differ) - 8) if len(differ) > 8 else "")) if value else "no content digest"
    if field == "files":
        extra = sorted(set(value) - set(reference or ()))
        gone = sorted(set(reference or ()) - set(value))
        parts = ["changed %s" % p for p in extra[:8]] + ["clean here, changed on the others: %s" % p for p in gone[:4]]
        return "; ".join(parts) or "-"
    return value


def _compared(field, hosts, raw, reference):
    """The hosts a field is compared on: bytes only where the venv path is the reference's
    (the path is inside bytecode and scripts; the venv_path disagreement already names it)."""
    if field != "bytes":
        return hosts
    return [h for h in hosts if raw[h]["venv_path"] == reference.get("venv_path")]


def gate(hosts, results):
    """The one cross-host comparison: the checked hosts must agree on GATE_FIELDS (lock, venv
    path, Python, the installed packages, files that differ from the manifest, the MPI library
    and launcher, mpi4py, uv). Reference per field: the most common value (ties: the first
    host's). Returns ``{"passed", "reference", "disagreements": {host: [{"field", "value",
    "reference"}]}, "values"}`` (display strings); hosts without a result are not compared."""
    checked = [h for h in hosts if results.get(h)]
    raw = {h: {f: _value(results[h], f) for f in GATE_FIELDS} for h in checked}
    reference = {}
    for field in GATE_FIELDS:
        among = _compared(field, checked, raw, reference)
        counts = Counter(raw[h][field] for h in among)
        if counts:
            top = max(counts.values())
            reference[field] = next(raw[h][field] for h in among if counts[raw[h][field]] == top)
    disagreements = {}
    for host in checked:
        for field in GATE_FIELDS:
            if host in _compared(field, [host], raw, reference) and raw[host][field] != reference.get(field):
                shown_ref = "%d package(s)" % len(reference[field]) if field == "packages" else \
                    "%d changed file(s)" % len(reference[field]) if field == "files" else \
                    "%d package digest(s)" % len(reference[field] or ()) if field == "bytes" else reference[field]
                disagreements.setdefault(host, []).append(
                    {"field": field, "value": _shown_value(field, raw[host][field], reference[field]),
                     "reference": shown_ref})
    values = {h: {f: (len(v or ()) if f in ("packages", "files", "bytes") else v) for f, v in raw[h].items()}
              for h in checked}
    shown = dict((f, len(v or ()) if f in ("packages", "files", "bytes") else v) for f, v in reference.items())
    return {"passed": not disagreements, "reference": shown, "disagreements": disagreements, "values": values}


def checked(result):
    """A probe result the host really produced: reachable, not failed, its audit collected.
    The one answer to "was this host checked" (smoke members, verdict, reports)."""
    return bool(result) and not result.get("unreachable") and not result.get("failed") \
        and isinstance(result.get("validate"), dict) and not result["validate"].get("error")


def _key_fingerprint(blob):
    """OpenSSH's ``SHA256:…`` of a base64 public key blob (None when it is not base64)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


def same_machines(hosts, host_facts, addresses=None):
    """Inventory names that are one machine listed again: ``{later host: {"same_as": the first
    host, "same_by": the evidence}}``. Evidence: an SSH host key both hosts' facts carry
    (``ssh_host_key_*_public``), else (no keys) the same ``machine_id`` and the same address
    (``addresses``: host -> its ansible_host or cluster address). Hosts without facts: never."""
    first_by, out = {}, {}
    for host in hosts:
        facts = host_facts.get(host) or {}
        evidence = []
        for kind in ("ed25519", "ecdsa", "rsa"):
            blob = facts.get("ssh_host_key_%s_public" % kind)
            printed = _key_fingerprint(blob) if blob else None
            if printed:
                evidence.append((("key", printed), "same SSH host key %s %s" % (kind, printed)))
        address = (addresses or {}).get(host)
        if not evidence and facts.get("machine_id") and address:
            evidence.append((("machine", facts["machine_id"], address),
                             "same machine-id %s at the same address %s" % (facts["machine_id"], address)))
        hit = next(((first_by[k], why) for k, why in evidence if k in first_by), None)
        if hit:
            out[host] = {"same_as": hit[0], "same_by": hit[1]}
            continue
        for k, dummy in evidence:
            first_by.setdefault(k, host)
    return out


def launcher_flavor(facts):
    return (((facts or {}).get("mpi") or {}).get("launcher") or {}).get("flavor")


def elect(hosts, facts):
    """The host that launches the cluster smoke test: the first checked host whose launcher is
    of the ABI family most hosts have (ties: the family of the first such host). Returns
    ``{"host", "family", "counts"}``; the verdict blames a launching host of another family
    with the same counts, so the host launched from and the host blamed never disagree."""
    ordered = [(h, launcher_flavor(facts.get(h))) for h in hosts if facts.get(h) is not None]
    counts = Counter(family(f) for dummy, f in ordered if f)
    if not counts:
        return {"host": ordered[0][0] if ordered else None, "family": None, "counts": {}}
    top = max(counts.values())
    majority = next(family(f) for dummy, f in ordered if f and counts[family(f)] == top)
    host = next(h for h, f in ordered if f and family(f) == majority)
    return {"host": host, "family": majority, "counts": dict(counts)}


def packages_sha256(result):
    """What a rank computes over its venv: sorted ``name==version``, PEP 503 names."""
    pins = sorted("%s==%s" % (re.sub(r"[-_.]+", "-", d["name"]).lower(), d["version"])
                  for d in result.get("distributions") or [])
    return hashlib.sha256("\n".join(pins).encode("utf-8")).hexdigest()


def env_differences(rank, result):
    """Fields where the rank's view differs from the host's own env_drift report."""
    mpi = result.get("mpi") or {}
    own = {
        "venv": (result.get("venv") or {}).get("realpath"),
        "python": (result.get("python") or {}).get("version"),
        "mpi4py": mpi.get("mpi4py_version"),
        "library": ((mpi.get("raw") or {}).get("library_version") or "").strip() or None,
        "libmpi": (mpi.get("library") or {}).get("libmpi_realpath"),
        "packages": packages_sha256(result) if result.get("distributions") is not None else None,
    }
    seen = {
        "venv": rank.get("prefix"),
        "python": rank.get("python"),
        "mpi4py": rank.get("mpi4py"),
        "library": (rank.get("library_version") or "").strip() or None,
        "libmpi": (rank.get("libmpi") or [None])[0],
        "packages": rank.get("packages_sha256"),
    }
    out = []
    for field in own:
        if own[field] is not None and seen[field] != own[field]:
            out.append("%s: rank has %s, the host reported %s" % (field, _shown(field, seen[field]), _shown(field, own[field])))
    return out


def _shown(field, value):
    if value is None:
        return "none"
    if field == "packages":
        return "sha256 " + value[:12]
    if field == "library":
        flavor, version = parse_library_version(value)
        if flavor:
            return _flavor_text(flavor, version)
    return value.splitlines()[0][:80]


def _flavor_text(flavor, version):
    return " ".join(p for p in (flavor, version) if p) or "unknown"


def attribute(members, ranks):
    """Rank processes by member host: by the member file a rank read, else by its hostname (a
    member listed again, ``same_as``, counts as the first name)."""
    by_alias = {}
    for m in members:
        # A duplicate's rank (its member file may carry either name) is the first name's.
        owner = m.get("same_as") or m["host"]
        for alias in [m["host"], m["name"]] + list(m.get("aliases") or []):
            by_alias.setdefault(alias, owner)
            by_alias.setdefault(alias.split(".")[0], owner)
    out, strays = {}, []
    for rank in ranks:
        ident = rank.get("id") or next(iter(rank.values()))
        host = by_alias.get(ident.get("member") or "") or by_alias.get(ident.get("hostname") or "") \
            or by_alias.get((ident.get("hostname") or "").split(".")[0])
        if host:
            out.setdefault(host, []).append(rank)
        else:
            strays.append(ident.get("hostname"))
    return out, strays


def launch_errors(smoke):
    """Hosts a launcher's own output names with a failure: ``{hostfile name: (cause, line)}``."""
    text = "\n".join([smoke.get("stderr_tail") or "", smoke.get("stdout_tail") or ""])
    found = {}
    for pattern in _NAMED:
        for match in pattern.finditer(text):
            host = match.group("host").rstrip(":,.")
            context = text[max(0, match.start() - 400):match.end() + 200]
            whole = text[text.rfind("\n", 0, match.start()) + 1:].split("\n", 1)[0]
            cause, line = ssh_cause(whole)
            if cause is None and re.search(r"execut|execvp|No such file", context):
                said = re.search(r"[^\n]*(unable to launch|execvp error|could not access)[^\n]*", context)
                cause, line = "venv_missing", (said.group(0) if said else whole).strip(" -")
            if cause:
                found.setdefault(host, (cause, line))
    return found


def judge_rank(rank, result, launcher, expected, allowed_env=None, user=None):
    """``(cause, message)`` for one rank process, or (None, timings) when it is fine.
    ``allowed_env``: the interpreter variables the launch set itself (the smoke's
    ``rank_env_expected``); ``user``: whose environment the rank ran in."""
    ident, init, done = rank.get("id") or {}, rank.get("init"), rank.get("done")
    if ident.get("import_error"):
        return "import_error", "mpi4py does not import: %s" % ident["import_error"]
    lib_flavor, lib_version = parse_library_version(ident.get("library_version"))
    if family(lib_flavor) != family(launcher.get("flavor")):
        return "flavor_mismatch", "the launcher is %s but the rank loaded %s" % (
            _flavor_text(launcher.get("flavor"), launcher.get("version")), _flavor_text(lib_flavor, lib_version))
    found = runtime_findings(ident.get("runtime"), ident.get("prefix"), allowed_env,
                             ((result or {}).get("base_python") or {}).get("clean_customize"), user)
    if found:
        return "rank_env", "; ".join(found)
    if result:
        differs = env_differences(ident, result)
        if differs:
            return "env_differs", "; ".join(differs)
    if not init:
        return "rank_failed", "the rank never completed MPI_Init"
    if init["size"] != expected:
        return "rank_failed", "world size %s, expected %d" % (init["size"], expected)
    if not done:
        return "rank_failed", "rank %d never completed the allreduce and ring exchange" % init["rank"]
    if done["allreduce"] != expected * (expected - 1) // 2 or done["ring_from"] != (done["rank"] - 1) % expected:
        return "rank_failed", "rank %d: allreduce %s (expected %d), ring received %s (expected %d)" % (
            done["rank"], done["allreduce"], expected * (expected - 1) // 2, done["ring_from"], (done["rank"] - 1) % expected)
    return None, None


def _timings(pre, ranks):
    out = {}
    if pre and pre.get("seconds") is not None:
        out["ssh_s"] = pre["seconds"]
    for rank in ranks:
        for phase, key in (("id", "startup_s"), ("init", "init_s"), ("done", "collectives_s")):
            value = (rank.get(phase) or {}).get(key)
            if value is not None:
                out[key] = max(out.get(key, 0), value)
    return out


def _launch_outlier(election, launcher, launch_host):
    """When the launching host's launcher is of another family than the elected majority's,
    it is the one to blame, not the ranks that loaded the others' MPI."""
    mine = launcher.get("flavor")
    majority = election.get("family")
    if not majority or not mine or family(mine) == majority:
        return None
    if election["counts"].get(majority, 0) > election["counts"].get(family(mine), 0):
        return "the launcher on %s is %s while %d host(s) run %s launchers" % (
            launch_host, _flavor_text(mine, launcher.get("version")), election["counts"][majority], majority)
    return None


def mark_aborted(hosts, launched, members, smoke):
    """A failed launch takes every rank down: hosts that only lack a rank or MPI_Init while
    another launched host has a fault that aborts a launch were aborted, not at fault. In a
    launch that timed out, ranks wait in MPI_Init for the hosts whose rank never started."""
    if smoke.get("returncode") == 0 and not smoke.get("timed_out"):
        return
    mine = [m for m in members if m["name"] in launched]
    culprits = sorted(m["host"] for m in mine if hosts[m["host"]]["status"] in _ABORTS)
    victims = ("rank_missing", "rank_failed")
    if not culprits and smoke.get("timed_out"):
        culprits = sorted(m["host"] for m in mine if hosts[m["host"]]["status"] == "rank_missing")
        victims = ("rank_failed",)
    if not culprits:
        return
    for m in mine:
        entry = hosts[m["host"]]
        if m["host"] not in culprits and entry["status"] in victims:
            entry.update(status=ABORTED, message="%s; the launch was aborted because of %s" % (
                entry["message"], ", ".join(culprits)))


def smoke_verdict(members, results, smoke, launch_host):
    """Per host: ``{"status": "ok" | cause, "message", "ranks", "timings"}``, and the overall
    ``passed``. ``members``: ``[{"host", "name", "aliases"}]`` in play order (``name``: what the
    hostfile says); ``results``: host -> env_drift result or None; ``smoke``: the module's
    result (None when it did not run)."""
    out = {"launch_host": launch_host, "hosts": {}, "problems": []}
    if not smoke or smoke.get("unreachable") or (smoke.get("failed") and "stage" not in smoke):
        why = (smoke or {}).get("msg") or "the cluster smoke test did not run"
        out.update(passed=False, error=why)
        for m in members:
            out["hosts"][m["host"]] = {"status": "rank_missing" if results.get(m["host"]) else "unreachable",
                                       "message": why, "ranks": [], "timings": {}}
        out["problems"].append("smoke: %s" % why)
        return out
    launcher = smoke.get("launcher") or {}
    expected = smoke.get("expected_ranks") or 0
    pre = smoke.get("preflight") or {}
    launched = set(smoke.get("launched_hosts") or [])
    missing_in_file = set(smoke.get("not_in_hostfile") or [])
    attributed, strays = attribute(members, smoke.get("ranks") or [])
    named = launch_errors(smoke)
    unresolved = smoke.get("unresolved") or {}
    reach = smoke.get("inbound") or {}
    outlier = _launch_outlier(elect([m["host"] for m in members if not m.get("same_as")], results), launcher,
                              launch_host)
    for m in members:
        host, name = m["host"], m["name"]
        ranks = attributed.get(host, [])
        entry = {"status": "ok", "message": "", "timings": _timings(pre.get(name), ranks),
                 "ranks": sorted((r.get("init") or {}).get("rank") for r in ranks if r.get("init"))}
        out["hosts"][host] = entry
        if not results.get(host):
            entry.update(status="unreachable", message="not checked: the controller could not reach it or its check failed")
        elif m.get("same_as"):
            entry.update(status="duplicate_host", message="%s and %s are the same machine: %s; list it once "
                         "(launched and judged as %s)" % (m["same_as"], host, m.get("same_by"), m["same_as"]))
        elif name in unresolved:
            entry.update(status="name_unresolved", message="%s does not resolve from %s (%s): left out of the launch" % (
                name, launch_host, unresolved[name]))
        elif name in missing_in_file:
            entry.update(status="not_in_hostfile", message="%s is not in the hostfile %s" % (name, smoke.get("hostfile")))
        elif name in pre and pre[name].get("cause") == "flavor_mismatch":
            entry.update(status="flavor_mismatch", message="%s, so the launcher on %s (%s) cannot start ranks there" % (
                pre[name].get("error"), launch_host, _flavor_text(launcher.get("flavor"), launcher.get("version"))))
        elif name in pre and not pre[name].get("ok"):
            cause, line = ssh_cause(pre[name].get("error"))
            entry.update(status=cause or "ssh_unreachable", message="ssh from %s as %s: %s" % (
                launch_host, smoke.get("user"), line or pre[name].get("error") or "exit %s" % pre[name].get("rc")))
        elif host == launch_host and outlier:
            entry.update(status="flavor_mismatch", message=outlier)
        elif name not in launched:
            entry.update(status="rank_missing", message="not launched: %s" % (smoke.get("error") or "left out of the launch"))
        elif not ranks:
            hit = next((named[a] for a in [name] + list(m.get("aliases") or []) if a in named), None)
            if hit:
                entry.update(status=hit[0], message=hit[1] if hit[0] != "venv_missing" else
                             "%s/bin/python cannot run there: %s" % (smoke.get("venv"), hit[1]))
            elif smoke.get("timed_out"):
                entry.update(status="rank_missing", message="no rank started before the launch timed out")
            else:
                blamed = sorted(h for h, (c, dummy) in named.items() if h != name)
                entry.update(status="rank_missing", message="no rank reported from %s (launcher exit %s%s)" % (
                    name, smoke.get("returncode"), "; the launch failed on %s" % ", ".join(blamed) if blamed else ""))
        else:
            for rank in ranks:
                cause, message = judge_rank(rank, results[host], launcher, expected, smoke.get("rank_env_expected"),
                                            smoke.get("user"))
                if cause:
                    if cause == "flavor_mismatch" and outlier:
                        message += " (launched from %s: %s)" % (launch_host, outlier)
                    if cause == "rank_failed" and smoke.get("timed_out"):
                        message += "; the launch timed out after %ss" % smoke.get("timeout")
                    entry.update(status=cause, message=message)
                    break
            else:
                if len(ranks) != 1 and expected:
                    entry.update(status="rank_failed", message="%d ranks on this host, expected 1" % len(ranks))
        if name in launched and reach.get(name, {}).get("ok") is False and entry["status"] in (
                "ok", "rank_missing", "rank_failed"):
            entry.update(status="inbound_blocked", message="ranks on %s never connected: %s" % (
                host, reach[name].get("error")))
    mark_aborted(out["hosts"], launched, members, smoke)
    for host, entry in out["hosts"].items():
        if entry["status"] != "ok":
            out["problems"].append("%s: %s: %s" % (host, entry["status"], entry["message"]))
    if strays:
        out["problems"].append("ranks on hosts outside the group: %s" % ", ".join(sorted(set(strays))))
    if smoke.get("stragglers"):
        out["problems"].append("killed leftover rank processes after the launch: %s" % ", ".join(
            "%s %s" % (h, p) for h, p in sorted(smoke["stragglers"].items())))
    clean = all(e["status"] == "ok" for e in out["hosts"].values())
    if clean and (smoke.get("returncode") != 0 or smoke.get("error")):
        out["problems"].append("the launch failed: %s" % (smoke.get("error") or "exit %s" % smoke.get("returncode")))
    out["passed"] = clean and not strays and smoke.get("returncode") == 0 and not smoke.get("error")
    return out


# The shared-storage check (cluster_shared_dirs): per host and directory, every cause that
# applies, in this order, the first being the status - not_checked, missing, hung,
# not_writable, low_space, not_shared.


def human_bytes(count):
    """``1.5 GiB``: what the reports show for a size in bytes."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return "%d B" % count if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024


def _storage_docs(members, ranks):
    """``({host: the storage report of its lowest rank, or None}, {rank number: host})``."""
    attributed, dummy = attribute(members, ranks)
    docs, by_rank = {}, {}
    for m in members:
        mine = attributed.get(m["host"], [])
        for rank in mine:
            number = (rank.get("storage") or rank.get("init") or {}).get("rank")
            if number is not None:
                by_rank[number] = m["host"]
        reports = sorted((r["storage"] for r in mine if r.get("storage")), key=lambda d: d.get("rank", 0))
        docs[m["host"]] = reports[0] if reports else None
    return docs, by_rank


def _storage_groups(hosts, facts):
    """One directory: ``{"groups": {writer rank: [hosts that read its file]}, "reference": the
    largest group of more than one host (ties: the first host's), None when no two hosts share
    it or fewer than two could compare, "writer": the rank that wrote the reference's file,
    "compared": how many hosts could compare}``."""
    compared = [h for h in hosts if facts[h] and facts[h].get("exists") and not facts[h].get("hung")]
    groups = {}
    for host in compared:
        if facts[host].get("seen") is not None:
            groups.setdefault(facts[host]["seen"], []).append(host)
    out = {"groups": groups, "reference": None, "writer": None, "compared": len(compared)}
    top = max([len(g) for g in groups.values()] or [0])
    if len(compared) > 1 and top > 1:
        out["writer"] = next(w for h in compared for w, g in sorted(groups.items()) if h in g and len(g) == top)
        out["reference"] = groups[out["writer"]]
    return out


def _where(fact):
    return " ".join(p for p in (fact.get("fstype"), fact.get("source")) if p) or "unknown filesystem"


def _storage_causes(host, path, fact, smoke_status, user, min_free, shared, by_rank):
    """``[(cause, message)]`` of one host and directory (``shared``: _storage_groups')."""
    if fact is None:
        if smoke_status not in (None, "ok"):
            return [("not_checked", "its rank did not get that far (%s)" % smoke_status)]
        return [("not_checked", "its rank did not report the storage check")]
    if not fact.get("exists"):
        return [("missing", "%s %s here" % (path, fact.get("error") or "does not exist"))]
    if fact.get("hung"):
        return [("hung", "%s did not answer in time here: %s" % (path, fact.get("error") or "a step timed out"))]
    out = []
    if not fact.get("writable") or fact.get("write_error"):
        out.append(("not_writable", "%s cannot create a file there: %s" % (user, fact.get("write_error") or "unknown error")))
    if min_free and fact.get("free") is not None and fact["free"] < min_free:
        out.append(("low_space", "%s free, %s required (%s)" % (
            human_bytes(fact["free"]), human_bytes(min_free), _where(fact))))
    reference, groups = shared["reference"], shared["groups"]
    if reference is not None and host not in reference:
        with_me = [h for h in groups.get(fact.get("seen"), []) if h != host]
        out.append(("not_shared", "not the storage %s share: it does not see the file %s wrote there%s (here %s)" % (
            ", ".join(reference), by_rank.get(shared["writer"], "rank %s" % shared["writer"]),
            "; it shares it with %s only" % ", ".join(with_me) if with_me else "", _where(fact))))
    elif reference is None and shared["compared"] > 1 and groups:
        out.append(("not_shared", "no other host sees the same files there (here %s)" % _where(fact)))
    return out


def storage_verdict(members, smoke, smoke_hosts=None):
    """The shared-storage verdict of a launch that carried ``shared_dirs``, or None without.

    Per host and directory ``{"status": "ok" | cause, "causes", "message"}`` and what the rank
    saw (filesystem, source, free space); per directory the hosts that share it (``reference``)
    and who wrote the file they read. A host that misses the directory, whose check hung, that
    cannot write there, has less than ``min_free`` free, or does not see the file the others
    see (or no two hosts see each other's) fails; ``failed_hosts`` leaves out hosts whose rank
    never got that far (the smoke verdict names those)."""
    plan = (smoke or {}).get("storage")
    if not plan:
        return None
    members = [m for m in members if not m.get("same_as")]  # a name listed again: its smoke cause says so
    hosts = [m["host"] for m in members]
    docs, by_rank = _storage_docs(members, smoke.get("ranks") or [])
    smoke_hosts = smoke_hosts or {}
    out = {"dirs": [], "min_free": plan.get("min_free") or 0, "hosts": dict((h, {}) for h in hosts), "problems": []}
    not_reached = []
    for index, path in enumerate(plan["dirs"]):
        facts = {}
        for host in hosts:
            listed = (docs[host] or {}).get("dirs") or []
            facts[host] = listed[index] if index < len(listed) else None
        shared = _storage_groups(hosts, facts)
        writers = sorted(set(w for h in hosts if facts[h] for w in facts[h].get("writers") or ()))
        out["dirs"].append({"path": path, "shared_by": shared["reference"] or [],
                            "writers": [by_rank.get(w, "rank %s" % w) for w in writers]})
        for host in hosts:
            fact = facts[host] or {}
            status = (smoke_hosts.get(host) or {}).get("status")
            causes = _storage_causes(host, path, facts[host], status, smoke.get("user"), out["min_free"], shared,
                                     by_rank)
            out["hosts"][host][path] = {
                "status": causes[0][0] if causes else "ok", "causes": [c for c, dummy in causes],
                "message": "; ".join(m for dummy, m in causes),
                "fstype": fact.get("fstype"), "source": fact.get("source"), "mountpoint": fact.get("mountpoint"),
                "mount_options": fact.get("mount_options"), "realpath": fact.get("realpath"), "free": fact.get("free"),
                "seen_from": by_rank.get(fact.get("seen")) if fact.get("seen") is not None else None}
            if causes and causes[0][0] == "not_checked" and status not in (None, "ok"):
                not_reached.append(host)
            elif causes:
                out["problems"].append("%s: shared storage %s: %s: %s" % (
                    host, path, causes[0][0], out["hosts"][host][path]["message"]))
    if not_reached:
        out["problems"].append("shared storage not checked on %s: the launch did not get that far there" % ", ".join(
            h for h in hosts if h in not_reached))
    out["failed_hosts"] = [h for h in hosts if h not in not_reached and any(
        e["status"] != "ok" for e in out["hosts"][h].values())]
    out["passed"] = all(e["status"] == "ok" for per in out["hosts"].values() for e in per.values())
    return out


def earlier_failure(name, registered):
    """A stand-in probe result for a host that left the play before the audit, from what it
    registered while it was provisioned (``registered``: the venv task's result): why it left,
    so the summary says "killed while building" rather than "unreachable". None when it
    tells nothing."""
    if not isinstance(registered, dict) or not (registered.get("failed") or registered.get("unreachable")):
        return None
    msg = str(registered.get("msg") or "failed").strip().splitlines()[0]
    if registered.get("unreachable"):
        return {"unreachable": True, "msg": "unreachable during %s: %s" % (name, msg)}
    return {"failed": True, "msg": "site.yml failed on this host before the check, in %s: %s" % (name, msg)}


def host_status(probe, report):
    """``(status, message)`` of one host: ``ok``/``drift`` from its report, ``unreachable`` when
    the controller never reached it, ``error`` when its probe failed (with why)."""
    if probe is None:
        return "unreachable", "host left the play before the check (unreachable or failed earlier)"
    if probe.get("unreachable"):
        return "unreachable", probe.get("msg", "unreachable")
    if report is not None:
        return report["status"], None
    section = probe.get("validate") if isinstance(probe.get("validate"), dict) else {}
    return "error", section.get("error") or probe.get("msg") or "the probe returned no audit"


def judge(hosts, probes, lock, lock_info, launches=(), cluster_smoke=False, ignore=(), uv_version=None,
          smoke_test=True, expected_files=None, roles=()):
    """The whole verdict of an audit, computed in one place.

    ``probes``: host -> the registered probe result (None when the host left the play);
    ``launches``: the registered cluster_smoke results (the launching host's carries the launch,
    the others skipped); ``cluster_smoke``: the launch was asked for. Per host its report (the
    probe's facts, judged against the lock; the cluster launch is its smoke test when it covered
    the host), its status and the one cross-host comparison; then the cluster verdict. A launch
    that was asked for across several hosts and did not happen fails the cluster, with why.
    ``expected_files``: host -> the files the cluster role would write there (None: not compared);
    ``roles``: the provisioning roles whose work was asked to be checked (uv, cluster): one the
    probe could not check (its settings were not loaded) is a failure with that reason.
    Returns everything the reports and the task result show."""
    facts = dict((h, probes[h]["validate"] if checked(probes.get(h)) else None) for h in hosts)
    launch = next((r for r in launches if r and r.get("launched")), None)
    smoke_part = smoke_verdict(launch["members"], facts, launch.get("smoke"), launch["launch_host"]) if launch else None
    reports = {}
    for host in hosts:
        if facts[host] is None:
            reports[host] = None
            continue
        entry = (smoke_part or {}).get("hosts", {}).get(host)
        report = dict(facts[host])
        uv_answer = probes[host].get("uv")
        if "uv" in roles and uv_answer is None:
            uv_answer = {"error": "the uv role's settings were not loaded (playbooks import them with tasks_from: "
                                  "settings; validate_roles: [] audits the venv only)"}
        report.update(evaluate(lock, facts[host], ignore, uv_version, smoke_test, cluster=entry,
                               uv_install=uv_answer,
                               cluster_files=_cluster_plan(probes[host].get("cluster"), (expected_files or {}).get(host),
                                                           expected_files is not None)))
        report["lock"] = lock_info
        reports[host] = report
    statuses = dict((h, host_status(probes.get(h), reports[h])) for h in hosts)
    the_gate = gate(hosts, reports)
    failed = set(the_gate["disagreements"])
    if smoke_part:
        failed |= set(h for h, e in smoke_part["hosts"].items() if e["status"] not in ("ok", ABORTED))
    storage_part = storage_verdict(launch["members"], launch.get("smoke"), (smoke_part or {}).get("hosts")) \
        if launch else None
    if storage_part:
        failed |= set(storage_part["failed_hosts"])
    cluster_passed = the_gate["passed"] and (smoke_part is None or smoke_part["passed"]) \
        and (storage_part is None or storage_part["passed"])
    smoke_missing = None
    if cluster_smoke and launch is None and len(hosts) > 1:
        # Asked for and not launched: a failure with its reason, never a pass.
        smoke_missing = "not run: %s" % (next((r.get("msg") for r in launches if r and r.get("msg")), None)
                                         or "no host launched it")
        cluster_passed = False
    drifted = [h for h in hosts if statuses[h][0] == "drift"]
    unreachable = [h for h in hosts if statuses[h][0] in ("unreachable", "error")]
    return {
        "hosts": list(hosts),
        "lock": lock_info,
        "reports": reports,
        "statuses": statuses,
        "drifted": drifted,
        "unreachable": unreachable,
        "gate": the_gate,
        "election": launch.get("election") if launch else None,
        "smoke": smoke_part,
        "smoke_raw": launch.get("smoke") if launch else None,
        "smoke_missing": smoke_missing,
        "storage": storage_part,
        "cluster": {"verdict": "pass" if cluster_passed else "fail",
                    "failed_hosts": [h for h in hosts if h in failed]},
        "failed": bool(drifted or unreachable or not cluster_passed),
        "problems": problem_lines(hosts, statuses, reports, the_gate, smoke_part)
        + list((storage_part or {}).get("problems") or [])
        + (["cluster smoke test %s" % smoke_missing] if smoke_missing else []),
    }


def _cluster_plan(section, specs, asked):
    """The cluster files of a host against what the cluster role would write (None: not asked)."""
    if not asked:
        return None
    if not section or section.get("error") or specs is None:
        why = (section or {}).get("error") or (
            "the cluster role's settings were not loaded (playbooks import them with tasks_from: settings; "
            "validate_roles: [] audits the venv only)" if not section
            else "no expected files (the host has no facts)")
        return {"error": "could not be checked: %s" % why}
    try:
        return plan_from(specs, section["snapshot"])
    except AccessError as exc:
        return {"error": str(exc)}


def problem_lines(hosts, statuses, reports, the_gate, smoke_part):
    """One line per host that is not ok, naming the host and the cause (what the play's failure
    message and the summary's first lines say), then the cluster's own findings."""
    lines = []
    for host in hosts:
        status, message = statuses[host]
        if status in ("unreachable", "error"):
            lines.append("%s: %s: %s" % (host, status, message))
        elif status == "drift":
            found = reports[host]["problems"]
            more = "; %d more" % (len(found) - 3) if len(found) > 3 else ""
            lines.append("%s: drift: %s%s" % (host, "; ".join(found[:3]), more))
    for host in hosts:
        for d in the_gate["disagreements"].get(host, []):
            if d["field"] in ("packages", "files", "bytes"):
                lines.append("%s: %s differ from the other hosts: %s" % (host, d["field"], d["value"]))
            else:
                lines.append("%s: %s is %s, the other hosts %s" % (host, d["field"], d["value"], d["reference"]))
    lines += list((smoke_part or {}).get("problems") or [])
    return lines
