# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit's reports on the controller, rendered from the one verdict (plugin_utils.validate):
``reports/<run-id>/<host>.json``, ``summary.md`` (what failed and why, one row per host, the
cross-host comparison, unreachable hosts, findings, and the Cluster section) and ``junit.xml``
(one testcase per host and check, and a ``cluster`` testsuite), ``cluster.json`` (every rank's
report, the shared-storage verdict) and ``reports/latest``."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import CHECKS, GATE_FIELDS, human_bytes

STATUSES = ("ok", "drift", "error", "unreachable")
COLUMNS = ("host", "status", "missing", "extra", "mismatched", "tampered", "gpu", "mpi", "abi", "smoke", "fingerprint")
FIELD_NAMES = {"lock_sha256": "lock sha256", "venv_path": "venv path", "python": "Python", "packages": "packages",
               "files": "changed files", "bytes": "venv bytes", "mpi": "MPI library", "launcher": "MPI launcher",
               "mpi4py": "mpi4py (variant)", "uv": "uv"}


class ReportError(Exception):
    """The reports were written, but something around them is wrong (names the path)."""


def row(host, verdict):
    """One summary row as a dict keyed by COLUMNS."""
    status, message = verdict["statuses"][host]
    result = verdict["reports"].get(host) or {}
    entry = {"host": host, "status": status, "message": message}
    counts = result.get("counts") or {}
    for key in ("missing", "extra", "mismatched", "tampered", "gpu"):
        entry[key] = counts.get(key, "")
    mpi = result.get("mpi") or {}
    library = mpi.get("library") or {}
    entry["mpi"] = " ".join(p for p in (library.get("flavor"), library.get("version")) if p) or "-"
    entry["abi"] = mpi.get("verdict", "-")
    smoke = (result.get("checks") or {}).get("mpi_smoke") or {}
    entry["smoke"] = {"pass": "pass", "fail": "fail"}.get(smoke.get("outcome"), "-")
    entry["fingerprint"] = (result.get("fingerprint") or "")[:12] or "-"
    if status in ("error", "unreachable"):
        entry["abi"] = entry["smoke"] = entry["mpi"] = "-"
    return entry


def text_table(rows):
    """Fixed-width table for the end of the play."""
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for r in rows]
    return [line.rstrip() for line in lines]


def _cell(value):
    return "-" if value is None or value == "" else str(value)


def gate_lines(verdict):
    the_gate = verdict["gate"]
    if the_gate["passed"]:
        return ["All checked hosts agree." if the_gate["values"] else "No host was checked."]
    return ["- **%s** %s: `%s`, the others `%s`" % (host, FIELD_NAMES[d["field"]], _cell(d["value"]), _cell(d["reference"]))
            for host in verdict["hosts"] for d in the_gate["disagreements"].get(host, [])]


def summary_markdown(run_id, verdict, rows):
    lock = verdict["lock"]
    out = ["# Drift report %s" % run_id, ""]
    if lock:
        out += ["Lock: `%s` (sha256 `%s`)" % (lock.get("path"), (lock.get("sha256") or "")[:16]), ""]
    totals = dict((s, sum(1 for r in rows if r["status"] == s)) for s in STATUSES)
    out.append("Hosts: %d — " % len(rows) + ", ".join("%s %d" % (s, totals[s]) for s in STATUSES)
               + "; cluster: %s" % verdict["cluster"]["verdict"])
    if verdict["problems"]:  # the causes first: what a person must act on
        out += [""] + ["- %s" % line for line in verdict["problems"]]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [("`%s`" % r[c]) if c == "fingerprint" and r[c] != "-" else str(r[c]) for c in COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Cross-host consistency", "",
            "The hosts must agree on: %s." % ", ".join(FIELD_NAMES[f] for f in GATE_FIELDS), ""]
    out += gate_lines(verdict)
    unreachable = [r for r in rows if r["status"] in ("unreachable", "error")]
    out += ["", "## Unreachable or failed hosts", ""]
    out += ["- %s (%s): %s" % (r["host"], r["status"], r["message"]) for r in unreachable] or ["None."]
    drifted = [r for r in rows if r["status"] == "drift"]
    if drifted:
        out += ["", "## Findings", ""]
        for r in drifted:
            out += ["### %s" % r["host"], ""]
            out += ["- %s" % p for p in verdict["reports"][r["host"]].get("problems") or []]
            out.append("")
    return "\n".join(out).rstrip() + "\n" + cluster_markdown(verdict)


def cluster_markdown(verdict):
    out = ["", "## Cluster", ""]
    smoke, raw = verdict["smoke"], verdict["smoke_raw"] or {}
    if smoke:
        launcher = raw.get("launcher") or {}
        ranks = sum(len(e["ranks"]) for e in smoke["hosts"].values())
        smoke_text = "%s — %d rank(s) on %d host(s), launched from %s as %s with %s in %s s" % (
            "pass" if smoke["passed"] else "FAIL", ranks, len(smoke["hosts"]), smoke["launch_host"],
            _cell(raw.get("user")), " ".join(p for p in (launcher.get("flavor"), launcher.get("version")) if p) or "-",
            _cell(raw.get("seconds")))
    else:
        smoke_text = verdict.get("smoke_missing") or "not run"
    the_gate = verdict["gate"]
    storage = verdict.get("storage")
    out.append("Verdict: **%s** (%d host(s)). Smoke: %s. Hosts %s.%s" % (
        verdict["cluster"]["verdict"], len(verdict["hosts"]), smoke_text,
        "agree" if the_gate["passed"] else "disagree: %d host(s)" % len(the_gate["disagreements"]),
        " Shared storage: %s." % storage_text(storage) if storage else ""))
    if smoke:
        out += ["", "| host | smoke | ranks | ssh s | startup s | MPI_Init s | collectives s | cause |", "|" + "---|" * 8]
        for host in verdict["hosts"]:
            entry = smoke["hosts"].get(host)
            if not entry:
                continue
            t = entry["timings"]
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                host, "pass" if entry["status"] == "ok" else entry["status"],
                ",".join(str(r) for r in entry["ranks"]) or "-", _cell(t.get("ssh_s")), _cell(t.get("startup_s")),
                _cell(t.get("init_s")), _cell(t.get("collectives_s")),
                (entry["message"] or "").replace("|", "/") or "-"))
        extra = [p for p in smoke["problems"] if not any(p.startswith(h + ": ") for h in smoke["hosts"])]
        if extra:
            out += [""] + ["- %s" % p for p in extra]
    if storage:
        out += storage_markdown(verdict["hosts"], storage)
    return "\n".join(out) + "\n"


def storage_text(storage):
    """``pass``/``FAIL`` of the shared-storage check, with how many host/directory pairs failed."""
    pairs = [e for per in storage["hosts"].values() for e in per.values()]
    bad = sum(1 for e in pairs if e["status"] != "ok")
    return "%s — %d director%s on every host%s%s" % (
        "pass" if storage["passed"] else "FAIL", len(storage["dirs"]), "y" if len(storage["dirs"]) == 1 else "ies",
        ", at least %s free" % human_bytes(storage["min_free"]) if storage["min_free"] else "",
        "; %d of %d host/directory checks failed" % (bad, len(pairs)) if bad else "")


def storage_markdown(hosts, storage):
    """The shared-storage table of the Cluster section: one row per host and directory."""
    out = ["", "Shared storage (the same files seen from every host; never judged by device or inode):", "",
           "| host | directory | storage | filesystem | source | free | cause |", "|" + "---|" * 7]
    for entry in storage["dirs"]:
        path = entry["path"]
        for host in hosts:
            one = storage["hosts"].get(host, {}).get(path)
            if not one:
                continue
            shared = "shared" if host in entry["shared_by"] else "-"
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                host, path, "pass (%s)" % shared if one["status"] == "ok" else one["status"], _cell(one["fstype"]),
                _cell(one["source"]), human_bytes(one["free"]) if one["free"] is not None else "-",
                (one["message"] or "").replace("|", "/") or "-"))
    extra = [p for p in storage["problems"] if not any(p.startswith(h + ": ") for h in hosts)]
    if extra:
        out += [""] + ["- %s" % p for p in extra]
    return out


def junit_xml(run_id, verdict, rows):
    """Testsuite ``lockstep.validate``: per host ``reachable``, each of CHECKS and
    ``consistency`` (the cross-host comparison); testsuite ``cluster``: per host ``smoke`` and,
    with shared directories, ``shared_storage <dir>`` per directory."""
    root = ET.Element("testsuites", name="lockstep drift %s" % run_id)
    suite = ET.SubElement(root, "testsuite", name="lockstep.validate", id=run_id)
    cluster = ET.SubElement(root, "testsuite", name="cluster", id=run_id)
    counts = {}

    def case(parent, host, name, kind=None, message=""):
        element = ET.SubElement(parent, "testcase", classname=host, name=name)
        tally = counts.setdefault(id(parent), {"tests": 0, "failures": 0, "errors": 0, "skipped": 0})
        tally["tests"] += 1
        if kind:
            tally[{"failure": "failures", "error": "errors", "skipped": "skipped"}[kind]] += 1
            ET.SubElement(element, kind, message=message[:1024]).text = message

    the_gate, smoke = verdict["gate"], verdict["smoke"]
    for r in rows:
        host = r["host"]
        if r["status"] in ("unreachable", "error"):
            case(suite, host, "reachable", "error", r["message"] or r["status"])
            for check in CHECKS + ("consistency",):
                # Expected to run and could not: a failure, never a skip.
                case(suite, host, check, "failure", "not checked: host %s" % r["status"])
        else:
            case(suite, host, "reachable")
            checks = verdict["reports"][host].get("checks") or {}
            for check in CHECKS:
                outcome = checks.get(check, {"outcome": "skip", "message": "not reported"})
                kind = {"pass": None, "fail": "failure", "skip": "skipped"}[outcome["outcome"]]
                case(suite, host, check, kind, outcome.get("message", ""))
            found = the_gate["disagreements"].get(host)
            case(suite, host, "consistency", "failure" if found else None, "; ".join(
                "%s %s vs %s" % (FIELD_NAMES[d["field"]], d["value"], d["reference"]) for d in found or ()))
        entry = (smoke or {}).get("hosts", {}).get(host)
        if smoke is None:
            missing = verdict.get("smoke_missing")
            case(cluster, host, "smoke", "failure" if missing else "skipped", missing or "cluster smoke test not asked for")
        elif entry is None or entry["status"] != "ok":
            case(cluster, host, "smoke", "failure", "%s: %s" % ((entry or {}).get("status", "missing"),
                                                                (entry or {}).get("message", "no verdict")))
        else:
            case(cluster, host, "smoke")
        storage_cases(case, cluster, host, verdict.get("storage"))
    for element in (suite, cluster):
        for key, value in counts.get(id(element), {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}).items():
            element.set(key, str(value))
    if hasattr(ET, "indent"):  # Python >= 3.9: readable by people too
        ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def storage_cases(case, suite, host, storage):
    """Per directory of the shared-storage check, testcase ``shared_storage <dir>`` of the host."""
    for entry in (storage or {}).get("dirs") or ():
        one = storage["hosts"].get(host, {}).get(entry["path"])
        if one is None or one["status"] != "ok":
            case(suite, host, "shared_storage %s" % entry["path"], "failure", "%s: %s" % (
                (one or {}).get("status", "not_checked"), (one or {}).get("message") or "no verdict"))
        else:
            case(suite, host, "shared_storage %s" % entry["path"])


def safe_name(host):
    """A host name as a file name (inventory names may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", host)


def build(run_id, verdict):
    """Everything the reports hold, without touching the disk."""
    rows = [row(host, verdict) for host in verdict["hosts"]]
    return {
        "rows": rows,
        "table": text_table(rows),
        "summary_md": summary_markdown(run_id, verdict, rows),
        "junit_xml": junit_xml(run_id, verdict, rows),
    }


def cluster_json(verdict):
    """``cluster.json``: the cluster verdict, the comparison, the election and what the
    launching host saw (every rank's report)."""
    return {"verdict": verdict["cluster"]["verdict"], "failed_hosts": verdict["cluster"]["failed_hosts"],
            "hosts": verdict["hosts"], "gate": verdict["gate"], "smoke": verdict["smoke"],
            "election": verdict["election"], "launch": verdict["smoke_raw"], "problems": verdict["problems"],
            "storage": verdict.get("storage")}


def _dump(path, payload):
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return path


def write(directory, run_id, verdict):
    """Write the reports under ``directory/run_id``; returns build() plus the file paths."""
    report = build(run_id, verdict)
    target = os.path.join(directory, safe_name(run_id))
    if not os.path.isdir(target):
        os.makedirs(target)
    files = []
    for host in verdict["hosts"]:
        status, message = verdict["statuses"][host]
        payload = dict(verdict["reports"].get(host) or {}, host=host, status=status)
        if message:
            payload["message"] = message
        files.append(_dump(os.path.join(target, safe_name(host) + ".json"), payload))
    for name, key in (("summary.md", "summary_md"), ("junit.xml", "junit_xml")):
        path = os.path.join(target, name)
        with open(path, "w") as handle:
            handle.write(report[key])
        files.append(path)
    files.append(_dump(os.path.join(target, "cluster.json"), cluster_json(verdict)))
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
