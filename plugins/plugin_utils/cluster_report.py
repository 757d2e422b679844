# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the "Cluster" part of the drift reports — the cross-host gate and the
cluster smoke test, as a summary.md section and a ``cluster`` JUnit testsuite."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils.cluster_verdict import GATE_FIELDS, gate

FIELD_NAMES = {"lock_sha256": "lock sha256", "venv_path": "venv path", "python": "Python", "mpi": "MPI library",
               "launcher": "MPI launcher", "mpi4py": "mpi4py (variant)", "uv": "uv"}


def build(hosts, results, smoke=None):
    """``{"verdict": pass|fail, "gate", "smoke" (the cluster_smoke verdict or None), "failed_hosts"}``.

    ``results``: host -> env_drift result of the hosts that were checked (others are absent or
    None); ``smoke``: the registered cluster_smoke result (None, or skipped: not run).
    """
    checked = dict((h, r) for h, r in results.items() if r and r.get("status") in ("ok", "drift"))
    the_gate = gate([h for h in hosts if h in checked], checked)
    verdict = None
    if smoke and not smoke.get("skipped") and smoke.get("verdict"):
        verdict = smoke["verdict"]
    failed = set(the_gate["disagreements"])
    if verdict:
        failed |= set(h for h, e in verdict["hosts"].items() if e["status"] not in ("ok", "aborted"))
    passed = the_gate["passed"] and (verdict is None or verdict["passed"])
    return {
        "verdict": "pass" if passed else "fail",
        "hosts": list(hosts),
        "gate": the_gate,
        "smoke": verdict,
        "smoke_detail": _detail(smoke) if verdict else None,
        "failed_hosts": [h for h in hosts if h in failed],
    }


def _detail(smoke):
    raw = smoke.get("smoke") or {}
    launcher = raw.get("launcher") or {}
    return {"launcher": " ".join(p for p in (launcher.get("flavor"), launcher.get("version")) if p) or "-",
            "seconds": raw.get("seconds"), "expected_ranks": raw.get("expected_ranks"),
            "timed_out": raw.get("timed_out"), "returncode": raw.get("returncode"), "user": raw.get("user")}


def _cell(value):
    return "-" if value is None or value == "" else str(value)


def markdown(cluster):
    out = ["", "## Cluster", ""]
    smoke, detail, the_gate = cluster["smoke"], cluster["smoke_detail"], cluster["gate"]
    if smoke:
        ranks = sum(len(e["ranks"]) for e in smoke["hosts"].values())
        smoke_text = "%s — %d rank(s) on %d host(s), launched from %s as %s with %s in %s s" % (
            "pass" if smoke["passed"] else "FAIL", ranks, len(smoke["hosts"]), smoke["launch_host"],
            _cell(detail["user"]), detail["launcher"], _cell(detail["seconds"]))
    else:
        smoke_text = "not run"
    out.append("Verdict: **%s** (%d host(s)). Smoke: %s. Gate: %s." % (
        cluster["verdict"], len(cluster["hosts"]), smoke_text,
        "hosts agree" if the_gate["passed"] else "%d host(s) disagree" % len(the_gate["disagreements"])))
    if smoke:
        out += ["", "| host | smoke | ranks | ssh s | startup s | MPI_Init s | collectives s | cause |", "|" + "---|" * 8]
        for host in cluster["hosts"]:
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
            out.append("")
            out += ["- %s" % p for p in extra]
    out += ["", "Gate (%s):" % ", ".join(FIELD_NAMES[f] for f in GATE_FIELDS), ""]
    if the_gate["passed"]:
        out.append("All checked hosts agree." if the_gate["values"] else "No host was checked.")
    else:
        for host in cluster["hosts"]:
            for d in the_gate["disagreements"].get(host, []):
                out.append("- **%s** %s: `%s`, the others `%s`" % (
                    host, FIELD_NAMES[d["field"]], _cell(d["value"]), _cell(d["reference"])))
    return "\n".join(out) + "\n"


def junit_suite(run_id, cluster):
    """Testsuite ``cluster``: per host ``gate`` and ``smoke``."""
    suite = ET.Element("testsuite", name="cluster", id=run_id)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(host, name, kind=None, message=""):
        element = ET.SubElement(suite, "testcase", classname=host, name=name)
        counts["tests"] += 1
        if kind:
            counts[{"failure": "failures", "skipped": "skipped"}[kind]] += 1
            ET.SubElement(element, kind, message=message[:1024]).text = message

    smoke, the_gate = cluster["smoke"], cluster["gate"]
    for host in cluster["hosts"]:
        if host not in the_gate["values"]:
            case(host, "gate", "failure", "not checked: the host's own check did not run")
        elif host in the_gate["disagreements"]:
            case(host, "gate", "failure", "; ".join("%s %s vs %s" % (FIELD_NAMES[d["field"]], d["value"], d["reference"])
                                                    for d in the_gate["disagreements"][host]))
        else:
            case(host, "gate")
        entry = (smoke or {}).get("hosts", {}).get(host)
        if smoke is None:
            case(host, "smoke", "skipped", "cluster smoke test not run")
        elif entry is None or entry["status"] != "ok":
            case(host, "smoke", "failure", "%s: %s" % ((entry or {}).get("status", "missing"),
                                                       (entry or {}).get("message", "no verdict")))
        else:
            case(host, "smoke")
    for key, value in counts.items():
        suite.set(key, str(value))
    return suite


def write_json(directory, cluster, smoke):
    """``cluster.json``: the verdict, the gate and what the launching host saw (every rank's report)."""
    path = os.path.join(directory, "cluster.json")
    payload = dict(cluster, launch=(smoke or {}).get("smoke"))
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return path
