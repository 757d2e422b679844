# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: cluster reports from the per-host ``env_drift`` results.

``reports/<run-id>/<host>.json``, ``summary.md`` (one row per host, cross-host consistency,
unreachable hosts) and ``junit.xml`` (one testcase per host and check).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils.deps import canonicalize_name
from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.drift import CHECKS

STATUSES = ("ok", "drift", "error", "unreachable")
COLUMNS = ("host", "status", "missing", "extra", "mismatched", "tampered", "gpu", "mpi", "abi", "smoke", "fingerprint")


class ReportError(Exception):
    """The reports were written, but something around them is wrong (names the path)."""


def earlier_failure(name, registered):
    """A stand-in result for a host that left the play before the check, from what it
    registered while it was provisioned (``registered``: the venv task's result): why it left,
    so the summary says "killed while building" rather than "unreachable". None when it
    tells nothing."""
    if not isinstance(registered, dict) or not (registered.get("failed") or registered.get("unreachable")):
        return None
    msg = str(registered.get("msg") or "failed").strip().splitlines()[0]
    if registered.get("unreachable"):
        return {"unreachable": True, "msg": "unreachable during %s: %s" % (name, msg)}
    return {"failed": True, "msg": "site.yml failed on this host before the check, in %s: %s" % (name, msg)}


def host_status(result):
    """Normalize what a host left behind: an env_drift result, a failed or unreachable task
    result, or nothing (the host left the play before the check ran)."""
    if result is None:
        return "unreachable", "host left the play before the check (unreachable or failed earlier)"
    if result.get("unreachable"):
        return "unreachable", result.get("msg", "unreachable")
    if result.get("status") in ("ok", "drift"):
        return result["status"], None
    return "error", result.get("msg", "env_drift returned no status")


def row(host, result):
    """One summary row as a dict keyed by COLUMNS."""
    status, message = host_status(result)
    entry = {"host": host, "status": status, "message": message}
    counts = (result or {}).get("counts") or {}
    for key in ("missing", "extra", "mismatched", "tampered", "gpu"):
        entry[key] = counts.get(key, "")
    mpi = (result or {}).get("mpi") or {}
    library = mpi.get("library") or {}
    entry["mpi"] = " ".join(p for p in (library.get("flavor"), library.get("version")) if p) or "-"
    entry["abi"] = mpi.get("verdict", "-")
    smoke = mpi.get("smoke")
    entry["smoke"] = "-" if not smoke else ("pass" if smoke.get("passed") else "fail")
    entry["fingerprint"] = ((result or {}).get("fingerprint") or "")[:12] or "-"
    if status == "error":
        entry["abi"] = entry["smoke"] = entry["mpi"] = "-"
    return entry


def consistency(results):
    """Group reachable hosts by fingerprint. Returns ``{"consistent", "groups", "outliers"}``:
    groups largest first, and for each host outside the largest group what differs from it."""
    groups = {}
    for host in sorted(results):
        result = results[host]
        if result and result.get("fingerprint"):
            groups.setdefault(result["fingerprint"], []).append(host)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))
    outliers = {}
    if len(ordered) > 1:
        reference = ordered[0][1][0]
        for dummy, hosts in ordered[1:]:
            for host in hosts:
                outliers[host] = {"reference": reference, "differences": differences(results[reference], results[host])}
    return {
        "consistent": len(ordered) <= 1,
        "groups": [{"fingerprint": fp, "hosts": hosts} for fp, hosts in ordered],
        "outliers": outliers,
    }


def _packages(result):
    return {canonicalize_name(d["name"]): d["version"] for d in result.get("distributions") or []}


def _mpi_summary(result):
    mpi = result.get("mpi") or {}
    library, launcher = mpi.get("library") or {}, mpi.get("launcher") or {}
    return {
        "mpi4py": mpi.get("mpi4py_version"),
        "library": " ".join(p for p in (library.get("flavor"), library.get("version"), library.get("variant")) if p),
        "libmpi": library.get("libmpi_realpath"),
        "launcher": " ".join(p for p in (launcher.get("flavor"), launcher.get("version")) if p),
    }


def differences(reference, other):
    """Human-readable differences between two hosts' facts (packages, Python, MPI, files)."""
    out = []
    ref_python = ((reference.get("python") or {}).get("marker_environment") or {}).get("python_full_version")
    other_python = ((other.get("python") or {}).get("marker_environment") or {}).get("python_full_version")
    if ref_python != other_python:
        out.append("python %s vs %s" % (other_python, ref_python))
    ref_pkgs, other_pkgs = _packages(reference), _packages(other)
    for name in sorted(set(ref_pkgs) | set(other_pkgs)):
        if ref_pkgs.get(name) != other_pkgs.get(name):
            out.append("%s %s vs %s" % (name, other_pkgs.get(name, "absent"), ref_pkgs.get(name, "absent")))
    ref_mpi, other_mpi = _mpi_summary(reference), _mpi_summary(other)
    for key in sorted(ref_mpi):
        if ref_mpi[key] != other_mpi[key]:
            out.append("%s %s vs %s" % (key, other_mpi[key] or "none", ref_mpi[key] or "none"))
    tampered = (other.get("counts") or {}).get("tampered")
    if tampered:
        out.append("%s tampered file(s)" % tampered)
    return out or ["tampered files differ"]


def text_table(rows):
    """Fixed-width table for the end of the play."""
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for r in rows]
    return [line.rstrip() for line in lines]


def summary_markdown(run_id, lock, rows, results, cons):
    out = ["# Drift report %s" % run_id, ""]
    if lock:
        out.append("Lock: `%s` (sha256 `%s`)" % (lock.get("path"), (lock.get("sha256") or "")[:16]))
        out.append("")
    totals = dict((s, sum(1 for r in rows if r["status"] == s)) for s in STATUSES)
    out.append("Hosts: %d — " % len(rows) + ", ".join("%s %d" % (s, totals[s]) for s in STATUSES))
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [("`%s`" % r[c]) if c == "fingerprint" and r[c] != "-" else str(r[c]) for c in COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Cross-host consistency", ""]
    if cons["consistent"]:
        out.append("All reachable hosts share one fingerprint." if cons["groups"] else "No host was checked.")
    else:
        out.append("Hosts differ: %d fingerprints." % len(cons["groups"]))
        out.append("")
        for group in cons["groups"]:
            out.append("- `%s`: %s" % (group["fingerprint"][:12], ", ".join(group["hosts"])))
        out.append("")
        for host in sorted(cons["outliers"]):
            outlier = cons["outliers"][host]
            out.append("- **%s** differs from %s: %s" % (host, outlier["reference"], "; ".join(outlier["differences"])))
    unreachable = [r for r in rows if r["status"] in ("unreachable", "error")]
    out += ["", "## Unreachable or failed hosts", ""]
    out += ["- %s (%s): %s" % (r["host"], r["status"], r["message"]) for r in unreachable] or ["None."]
    drifted = [r for r in rows if r["status"] == "drift"]
    if drifted:
        out += ["", "## Findings", ""]
        for r in drifted:
            out.append("### %s" % r["host"])
            out.append("")
            out += ["- %s" % p for p in results[r["host"]].get("problems") or []]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def junit_xml(run_id, rows, results, cons, extra_suites=()):
    """One testcase per host and check: ``reachable``, each of drift.CHECKS, ``consistency``;
    then ``extra_suites`` (the ``cluster`` testsuite)."""
    suite = ET.Element("testsuite", name="lockstep.env_drift", id=run_id)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(host, name, kind=None, message=""):
        element = ET.SubElement(suite, "testcase", classname=host, name=name)
        counts["tests"] += 1
        if kind:
            counts[{"failure": "failures", "error": "errors", "skipped": "skipped"}[kind]] += 1
            ET.SubElement(element, kind, message=message[:1024]).text = message

    for r in rows:
        host = r["host"]
        if r["status"] in ("unreachable", "error"):
            case(host, "reachable", "error", r["message"] or r["status"])
            for check in CHECKS + ("consistency",):
                # Expected to run and could not: a failure, never a skip.
                case(host, check, "failure", "not checked: host %s" % r["status"])
            continue
        case(host, "reachable")
        checks = results[host].get("checks") or {}
        for check in CHECKS:
            outcome = checks.get(check, {"outcome": "skip", "message": "not reported"})
            kind = {"pass": None, "fail": "failure", "skip": "skipped"}[outcome["outcome"]]
            case(host, check, kind, outcome.get("message", ""))
        outlier = cons["outliers"].get(host)
        if outlier:
            case(host, "consistency", "failure",
                 "differs from %s: %s" % (outlier["reference"], "; ".join(outlier["differences"])))
        else:
            case(host, "consistency")
    for key, value in counts.items():
        suite.set(key, str(value))
    root = ET.Element("testsuites", name="lockstep drift %s" % run_id)
    root.append(suite)
    for extra in extra_suites:
        root.append(extra)
    if hasattr(ET, "indent"):  # Python >= 3.9: readable by people too
        ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def safe_name(host):
    """A host name as a file name (inventory names may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", host)


def build(run_id, hosts, results, lock=None, cluster=None):
    """Everything the reports hold, without touching the disk.

    ``hosts``: every host of the play, ``results``: host -> env_drift result (or None),
    ``cluster``: the registered cluster_smoke result (None when it did not run).
    """
    results = dict((h, results.get(h)) for h in hosts)
    rows = [row(host, results[host]) for host in hosts]
    reachable = dict((h, r) for h, r in results.items() if host_status(r)[0] in ("ok", "drift"))
    cons = consistency(reachable)
    statuses = dict((r["host"], r["status"]) for r in rows)
    cluster_part = cluster_report.build(hosts, results, cluster)
    return {
        "rows": rows,
        "table": text_table(rows),
        "summary_md": summary_markdown(run_id, lock, rows, results, cons) + cluster_report.markdown(cluster_part),
        "junit_xml": junit_xml(run_id, rows, results, cons, [cluster_report.junit_suite(run_id, cluster_part)]),
        "cluster": cluster_part,
        "consistency": cons,
        "statuses": statuses,
        "drifted": sorted(h for h, s in statuses.items() if s == "drift"),
        "unreachable": sorted(h for h, s in statuses.items() if s in ("unreachable", "error")),
    }


def write(directory, run_id, hosts, results, lock=None, cluster=None):
    """Write the reports under ``directory/run_id``; returns build() plus the file paths."""
    report = build(run_id, hosts, results, lock, cluster)
    target = os.path.join(directory, safe_name(run_id))
    if not os.path.isdir(target):
        os.makedirs(target)
    files = []
    for host in hosts:
        path = os.path.join(target, safe_name(host) + ".json")
        status, message = host_status(results.get(host))
        payload = dict(results.get(host) or {}, host=host, status=status)
        if message:
            payload["message"] = message
        with open(path, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        files.append(path)
    for name, key in (("summary.md", "summary_md"), ("junit.xml", "junit_xml")):
        path = os.path.join(target, name)
        with open(path, "w") as handle:
            handle.write(report[key])
        files.append(path)
    if cluster is not None:  # what the launching host saw, when the cluster smoke test ran
        files.append(cluster_report.write_json(target, report["cluster"], cluster))
    # reports/latest -> the newest run, for people and CI steps that do not know the run id.
    latest = os.path.join(directory, "latest")
    report["directory"] = target
    report["files"] = files
    if os.path.lexists(latest) and not os.path.islink(latest):
        # Not ours to delete (someone's copy?); left as it is, it would silently be stale.
        raise ReportError("%s is a %s, not the symlink to the newest run: it was left as it is and is now stale "
                          "(this run's reports are in %s); move it away so the next run can point it at the "
                          "newest reports" % (latest, "directory" if os.path.isdir(latest) else "file", target))
    tmp_link = latest + ".tmp"
    if os.path.islink(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.basename(target), tmp_link)
    os.rename(tmp_link, latest)
    return report
