"""The Cluster part of the reports (plugin_utils/cluster_report.py through validate_report.build/write):
summary.md's "## Cluster" section, junit.xml's `cluster` testsuite and cluster.json, from a
launch recorded on the SSH lab."""

import copy
import json
import os
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.cluster_verdict import smoke_verdict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cluster")
HOSTS = ["lab-1", "lab-2", "lab-3"]


def recorded(name):
    with open(os.path.join(FIXTURES, name + ".json")) as handle:
        case = json.load(handle)
    verdict = smoke_verdict(case["members"], case["results"], case["smoke"], case["launch_host"])
    registered = {"changed": False, "passed": verdict["passed"], "verdict": verdict, "smoke": case["smoke"]}
    return case["results"], registered


def suite(built, name):
    return next(s for s in ET.fromstring(built["junit_xml"].split("\n", 1)[1]) if s.get("name") == name)


def test_passing_cluster_section_shows_ranks_per_host_and_timings():
    results, registered = recorded("ok")
    built = validate_report.build("r1", HOSTS, results, cluster=registered)
    text = built["summary_md"]
    section = text[text.index("## Cluster"):]
    assert "Verdict: **pass** (3 host(s)). Smoke: pass — 3 rank(s) on 3 host(s), launched from lab-1 as bench" in section
    assert "| lab-2 | pass | 1 | " in section and "Gate: hosts agree" in section
    cluster = suite(built, "cluster")
    assert (cluster.get("tests"), cluster.get("failures"), cluster.get("skipped")) == ("6", "0", "0")
    assert built["cluster"]["verdict"] == "pass" and built["cluster"]["failed_hosts"] == []


def test_failing_smoke_names_the_host_and_cause_in_both_reports():
    results, registered = recorded("import")
    built = validate_report.build("r1", HOSTS, results, cluster=registered)
    assert built["cluster"]["verdict"] == "fail" and built["cluster"]["failed_hosts"] == ["lab-3"]
    assert "| lab-3 | import_error | - |" in built["summary_md"]
    failures = dict((c.get("classname"), c.find("failure").get("message")) for c in suite(built, "cluster")
                    if c.find("failure") is not None)
    # The others' smoke did not pass either (the launch was aborted), without being to blame.
    assert failures["lab-3"].startswith("import_error: mpi4py does not import")
    assert failures["lab-1"].startswith("aborted: ") and "because of lab-3" in failures["lab-1"]


def test_gate_disagreement_fails_the_cluster_even_when_the_smoke_passed():
    results, registered = recorded("ok")
    results = copy.deepcopy(results)
    results["lab-2"]["venv"]["path"] = "/opt/lockstep/venv-alt"
    built = validate_report.build("r1", HOSTS, results, cluster=registered)
    assert built["cluster"]["verdict"] == "fail" and built["cluster"]["failed_hosts"] == ["lab-2"]
    assert "- **lab-2** venv path: `/opt/lockstep/venv-alt`, the others `/opt/lockstep/venv`" in built["summary_md"]
    gate = [c for c in suite(built, "cluster") if c.get("name") == "gate" and c.find("failure") is not None]
    assert [c.get("classname") for c in gate] == ["lab-2"]
    assert "venv path /opt/lockstep/venv-alt vs /opt/lockstep/venv" in gate[0].find("failure").get("message")


def test_smoke_not_run_is_skipped_not_passed_and_the_gate_still_runs():
    results, dummy = recorded("ok")
    built = validate_report.build("r1", HOSTS, results, cluster={"skipped": True})
    assert "Smoke: not run" in built["summary_md"]
    cases = list(suite(built, "cluster"))
    assert [c.get("name") for c in cases if c.find("skipped") is not None] == ["smoke"] * 3
    assert built["cluster"]["verdict"] == "pass"


def test_an_unchecked_host_fails_its_gate_case():
    results, registered = recorded("ok")
    results = dict(results, **{"lab-3": None})
    built = validate_report.build("r1", HOSTS, results, cluster=None)
    gate = dict((c.get("classname"), c) for c in suite(built, "cluster") if c.get("name") == "gate")
    assert gate["lab-3"].find("failure") is not None


def test_write_adds_cluster_json(tmp_path):
    results, registered = recorded("hostkey")
    built = validate_report.write(str(tmp_path), "r1", HOSTS, results, None, registered)
    with open(str(tmp_path / "r1" / "cluster.json")) as handle:
        data = json.load(handle)
    assert data["smoke"]["hosts"]["lab-3"]["status"] == "host_key"
    assert data["launch"]["preflight"]["lab-3"]["ok"] is False
    assert str(tmp_path / "r1" / "cluster.json") in built["files"]
