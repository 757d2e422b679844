"""plugins/plugin_utils/validate_report.py: per-host JSON, summary.md, junit.xml, consistency,
unreachable hosts, and the Cluster part (summary.md's "## Cluster" section, junit.xml's
`cluster` testsuite and cluster.json) from a launch recorded on the SSH lab."""

import copy
import json
import os
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import CHECKS, evaluate, smoke_verdict

from test_validate import dist, ENV_311, host_facts


LOCK = parse_lock("numpy==1.26.4\nsix==1.17.0\n", "lock.txt")
MPI = {
    "mpi4py_version": "4.1.2", "verdict": "compatible", "reasons": [],
    "library": {"flavor": "openmpi", "version": "4.1.4", "variant": "openmpi", "libmpi_realpath": "/usr/lib/libmpi.so.40"},
    "launcher": {"flavor": "openmpi", "version": "4.1.4"},
    "smoke": {"passed": True, "reasons": []},
}


def result(dists, mpi=None, env=None):
    facts = host_facts(dists, env=env, mpi=copy.deepcopy(MPI if mpi is None else mpi))
    facts.update(evaluate(LOCK, facts))
    facts["lock"] = {"path": "lock.txt", "sha256": LOCK.sha256, "entries": 2}
    return facts


GOOD = [dist("numpy", "1.26.4"), dist("six", "1.17.0")]


def cluster():
    return {
        "n1": result(copy.deepcopy(GOOD)),
        "n2": result(copy.deepcopy(GOOD)),
        "n3": result([dist("numpy", "1.26.0"), dist("six", "1.17.0"), dist("nvidia-nccl-cu12", "2.21.5")]),
        "n4": {"unreachable": True, "msg": "Failed to connect to the host via ssh"},
        "n5": {"failed": True, "msg": "env_drift probe failed: boom"},
        "n6": None,
    }


def test_rows_and_statuses():
    built = validate_report.build("r1", sorted(cluster()), cluster())
    rows = {r["host"]: r for r in built["rows"]}
    assert built["statuses"] == {"n1": "ok", "n2": "ok", "n3": "drift", "n4": "unreachable", "n5": "error",
                                 "n6": "unreachable"}
    assert (rows["n3"]["mismatched"], rows["n3"]["extra"], rows["n3"]["gpu"]) == (1, 1, 1)
    assert (rows["n1"]["mpi"], rows["n1"]["abi"], rows["n1"]["smoke"]) == ("openmpi 4.1.4", "compatible", "pass")
    assert rows["n1"]["fingerprint"] == cluster()["n1"]["fingerprint"][:12]
    assert built["drifted"] == ["n3"] and built["unreachable"] == ["n4", "n5", "n6"]
    assert built["table"][0].split() == list(validate_report.COLUMNS)
    assert len(built["table"]) == 7


def test_consistency_calls_out_the_odd_host():
    cons = validate_report.build("r1", sorted(cluster()), cluster())["consistency"]
    assert not cons["consistent"]
    assert cons["groups"][0]["hosts"] == ["n1", "n2"]
    assert list(cons["outliers"]) == ["n3"]
    assert cons["outliers"]["n3"]["reference"] == "n1"
    assert cons["outliers"]["n3"]["differences"] == ["numpy 1.26.0 vs 1.26.4", "nvidia-nccl-cu12 2.21.5 vs absent"]


def test_differences_name_python_and_mpi():
    other = result(copy.deepcopy(GOOD), env=dict(ENV_311, python_full_version="3.11.9"),
                   mpi=dict(MPI, library=dict(MPI["library"], flavor="mpich", version="4.0.2")))
    diff = validate_report.differences(result(copy.deepcopy(GOOD)), other)
    assert diff[0] == "python 3.11.9 vs 3.11.2"
    assert "library mpich 4.0.2 openmpi vs openmpi 4.1.4 openmpi" in diff


def test_identical_hosts_are_consistent():
    results = {"a": result(copy.deepcopy(GOOD)), "b": result(copy.deepcopy(GOOD))}
    built = validate_report.build("r", ["a", "b"], results)
    assert built["consistency"]["consistent"] and built["consistency"]["outliers"] == {}
    assert "All reachable hosts share one fingerprint." in built["summary_md"]


def test_summary_markdown():
    md = validate_report.build("r1", sorted(cluster()), cluster())["summary_md"]
    lines = md.splitlines()
    assert lines[0] == "# Drift report r1"
    table = [line for line in lines if line.startswith("| n")]
    assert [line.split("|")[1].strip() for line in table] == ["n1", "n2", "n3", "n4", "n5", "n6"]
    assert "| n3 | drift | 0 | 1 | 1 | 0 | 1 |" in md
    assert "- **n3** differs from n1: numpy 1.26.0 vs 1.26.4; nvidia-nccl-cu12 2.21.5 vs absent" in md
    assert "- n4 (unreachable): Failed to connect to the host via ssh" in md
    assert "- n5 (error): env_drift probe failed: boom" in md
    assert "- version numpy: 1.26.0 installed, 1.26.4 locked" in md


def test_junit_one_case_per_host_and_check():
    root = ET.fromstring(validate_report.build("r1", sorted(cluster()), cluster())["junit_xml"])
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    per_host = 1 + len(CHECKS) + 1
    assert len(cases) == 6 * per_host == int(suite.get("tests"))
    outcome = {}
    for case in cases:
        kinds = [child.tag for child in case]
        outcome[(case.get("classname"), case.get("name"))] = kinds[0] if kinds else "pass"
    assert outcome[("n1", "packages")] == "pass" and outcome[("n1", "consistency")] == "pass"
    assert outcome[("n3", "packages")] == "failure" and outcome[("n3", "gpu")] == "failure"
    assert outcome[("n3", "consistency")] == "failure" and outcome[("n3", "integrity")] == "pass"
    assert outcome[("n4", "reachable")] == "error" and outcome[("n4", "packages")] == "failure"
    assert outcome[("n1", "uv")] == "skipped"
    failures = sum(1 for v in outcome.values() if v == "failure")
    assert int(suite.get("failures")) == failures
    assert int(suite.get("errors")) == 3


def test_write_creates_files(tmp_path):
    results = cluster()
    built = validate_report.write(str(tmp_path), "2025-01-01T00:00:00Z", sorted(results), results, results["n1"]["lock"])
    run_dir = tmp_path / "2025-01-01T00_00_00Z"
    assert built["directory"] == str(run_dir)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["junit.xml", "n1.json", "n2.json", "n3.json", "n4.json", "n5.json", "n6.json", "summary.md"]
    n3 = json.loads((run_dir / "n3.json").read_text())
    assert n3["host"] == "n3" and n3["status"] == "drift" and n3["counts"]["mismatched"] == 1
    n6 = json.loads((run_dir / "n6.json").read_text())
    assert n6["status"] == "unreachable" and "left the play" in n6["message"]
    assert "Lock: `lock.txt`" in (run_dir / "summary.md").read_text()
    ET.parse(str(run_dir / "junit.xml"))
    assert (tmp_path / "latest").resolve() == run_dir
    validate_report.write(str(tmp_path), "second", ["n1"], {"n1": results["n1"]})
    assert (tmp_path / "latest").resolve() == tmp_path / "second"


def test_safe_name():
    assert validate_report.safe_name("host/with:odd chars") == "host_with_odd_chars"
    assert validate_report.safe_name("n1.example.org") == "n1.example.org"


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
