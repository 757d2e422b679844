"""Cluster reports: per-host JSON, summary.md, junit.xml, consistency, unreachable hosts."""

import copy
import json
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import CHECKS, evaluate
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock

from test_validate import ENV_311, dist, host_facts

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
