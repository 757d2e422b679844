"""plugins/plugin_utils/validate_report.py: per-host JSON, summary.md, junit.xml, the cross-host
comparison, unreachable hosts, and the Cluster part (summary.md's "## Cluster" section, junit.xml's
`cluster` testsuite and cluster.json), rendered from verdicts judged by plugin_utils/validate.py,
partly on launches recorded on the SSH lab."""

import copy
import json
import os
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate, validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import CHECKS

from helpers import dist, host_facts
from test_validate import blocked_case, duplicate_case, fixture_probes, HOSTS, load, recorded_verdict, two_rank_launch

LOCK = parse_lock("numpy==1.26.4\nsix==1.17.0\n", "lock.txt")
LOCK_INFO = {"path": "lock.txt", "sha256": LOCK.sha256, "entries": 2}
MPI = {
    "mpi4py_version": "4.1.2", "verdict": "compatible", "reasons": [],
    "library": {"flavor": "openmpi", "version": "4.1.4", "variant": "openmpi", "libmpi_realpath": "/usr/lib/libmpi.so.40"},
    "launcher": {"flavor": "openmpi", "version": "4.1.4"},
    "smoke": {"passed": True, "reasons": []},
}
GOOD = [dist("numpy", "1.26.4"), dist("six", "1.17.0")]


def probe(dists, mpi=None):
    return {"changed": False, "validate": host_facts(dists, mpi=copy.deepcopy(MPI if mpi is None else mpi))}


def probes():
    return {
        "n1": probe(copy.deepcopy(GOOD)),
        "n2": probe(copy.deepcopy(GOOD)),
        "n3": probe([dist("numpy", "1.26.0"), dist("six", "1.17.0"), dist("nvidia-nccl-cu12", "2.21.5")]),
        "n4": {"unreachable": True, "msg": "Failed to connect to the host via ssh"},
        "n5": {"changed": False, "validate": {"error": "the probe failed: boom"}},
        "n6": None,
    }


def verdict_of(found=None, **kwargs):
    found = probes() if found is None else found
    return validate.judge(sorted(found), found, LOCK, LOCK_INFO, **kwargs)


def test_rows_and_statuses():
    verdict = verdict_of()
    built = validate_report.build("r1", verdict)
    rows = {r["host"]: r for r in built["rows"]}
    assert dict((h, s[0]) for h, s in verdict["statuses"].items()) == {
        "n1": "ok", "n2": "ok", "n3": "drift", "n4": "unreachable", "n5": "error", "n6": "unreachable"}
    assert (rows["n3"]["mismatched"], rows["n3"]["extra"], rows["n3"]["gpu"]) == (1, 1, 1)
    assert (rows["n1"]["mpi"], rows["n1"]["abi"], rows["n1"]["smoke"]) == ("openmpi 4.1.4", "compatible", "pass")
    assert rows["n1"]["fingerprint"] == verdict["reports"]["n1"]["fingerprint"][:12]
    assert verdict["drifted"] == ["n3"] and verdict["unreachable"] == ["n4", "n5", "n6"]
    assert rows["n5"]["message"] == "the probe failed: boom"
    assert built["table"][0].split() == list(validate_report.COLUMNS)
    assert len(built["table"]) == 7


def test_the_one_comparison_names_the_odd_host_and_what_differs():
    the_gate = verdict_of()["gate"]
    assert list(the_gate["disagreements"]) == ["n3"]
    packages = [d for d in the_gate["disagreements"]["n3"] if d["field"] == "packages"]
    assert packages == [{"field": "packages", "reference": "2 package(s)",
                         "value": "numpy 1.26.0 (the others 1.26.4); nvidia-nccl-cu12 2.21.5 (the others absent)"}]
    assert set(the_gate["values"]) == {"n1", "n2", "n3"}  # unchecked hosts are not compared


def test_identical_hosts_agree():
    verdict = verdict_of({"a": probe(copy.deepcopy(GOOD)), "b": probe(copy.deepcopy(GOOD))})
    assert verdict["gate"]["passed"] and not verdict["failed"]
    assert "All checked hosts agree." in validate_report.build("r", verdict)["summary_md"]


def test_summary_names_each_cause_first_then_the_table():
    md = validate_report.build("r1", verdict_of())["summary_md"]
    lines = md.splitlines()
    assert lines[0] == "# Drift report r1"
    assert lines[4].startswith("Hosts: 6 — ok 2, drift 1, error 1, unreachable 2; cluster: fail")
    assert "- n3: drift: extra nvidia-nccl-cu12==2.21.5; version numpy: 1.26.0 installed, 1.26.4 locked; GPU " in md
    assert "- n3: packages differ from the other hosts: numpy 1.26.0 (the others 1.26.4); nvidia-nccl" in md
    assert "- n4: unreachable: Failed to connect to the host via ssh" in md
    assert md.index("- n5: error: the probe failed: boom") < md.index("| host | status |")
    table = [line for line in lines if line.startswith("| n")]
    assert [line.split("|")[1].strip() for line in table] == ["n1", "n2", "n3", "n4", "n5", "n6"]
    assert "| n3 | drift | 0 | 1 | 1 | 0 | 1 |" in md
    assert "- **n3** packages: `numpy 1.26.0 (the others 1.26.4); nvidia-nccl-cu12 2.21.5 (the others absent)`" in md
    assert "- n4 (unreachable): Failed to connect to the host via ssh" in md


def suite(built, name):
    return next(s for s in ET.fromstring(built["junit_xml"].split("\n", 1)[1]) if s.get("name") == name)


def test_junit_one_case_per_host_and_check():
    built = validate_report.build("r1", verdict_of())
    main = suite(built, "lockstep.validate")
    cases = main.findall("testcase")
    per_host = 1 + len(CHECKS) + 1
    assert len(cases) == 6 * per_host == int(main.get("tests"))
    outcome = {}
    for case in cases:
        kinds = [child.tag for child in case]
        outcome[(case.get("classname"), case.get("name"))] = kinds[0] if kinds else "pass"
    assert outcome[("n1", "packages")] == "pass" and outcome[("n1", "consistency")] == "pass"
    assert outcome[("n3", "packages")] == "failure" and outcome[("n3", "gpu")] == "failure"
    assert outcome[("n3", "consistency")] == "failure" and outcome[("n3", "integrity")] == "pass"
    assert outcome[("n4", "reachable")] == "error" and outcome[("n4", "packages")] == "failure"
    assert outcome[("n1", "uv")] == "skipped"
    assert int(main.get("failures")) == sum(1 for v in outcome.values() if v == "failure")
    assert int(main.get("errors")) == 3
    # No cluster launch was asked for: its cases are skipped, and only then.
    cluster = suite(built, "cluster")
    assert (cluster.get("tests"), cluster.get("skipped"), cluster.get("failures")) == ("6", "6", "0")


def test_write_creates_files(tmp_path):
    verdict = verdict_of()
    built = validate_report.write(str(tmp_path), "2025-01-01T00:00:00Z", verdict)
    run_dir = tmp_path / "2025-01-01T00_00_00Z"
    assert built["directory"] == str(run_dir)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["cluster.json", "junit.xml", "n1.json", "n2.json", "n3.json", "n4.json", "n5.json", "n6.json",
                     "summary.md"]
    n3 = json.loads((run_dir / "n3.json").read_text())
    assert n3["host"] == "n3" and n3["status"] == "drift" and n3["counts"]["mismatched"] == 1
    n6 = json.loads((run_dir / "n6.json").read_text())
    assert n6["status"] == "unreachable" and "left the play" in n6["message"]
    assert "Lock: `lock.txt`" in (run_dir / "summary.md").read_text()
    ET.parse(str(run_dir / "junit.xml"))
    assert (tmp_path / "latest").resolve() == run_dir
    validate_report.write(str(tmp_path), "second", verdict_of({"n1": probe(copy.deepcopy(GOOD))}))
    assert (tmp_path / "latest").resolve() == tmp_path / "second"


def test_safe_name():
    assert validate_report.safe_name("host/with:odd chars") == "host_with_odd_chars"
    assert validate_report.safe_name("n1.example.org") == "n1.example.org"


def test_passing_cluster_section_shows_ranks_per_host_and_timings():
    built = validate_report.build("r1", recorded_verdict("ok"))
    text = built["summary_md"]
    section = text[text.index("## Cluster"):]
    assert "Verdict: **pass** (3 host(s)). Smoke: pass — 3 rank(s) on 3 host(s), launched from lab-1 as bench" in section
    assert "| lab-2 | pass | 1 | " in section and "Hosts agree." in section
    cluster = suite(built, "cluster")
    assert (cluster.get("tests"), cluster.get("failures"), cluster.get("skipped")) == ("3", "0", "0")


def test_failing_smoke_names_the_host_and_cause_in_both_reports():
    verdict = recorded_verdict("import")
    built = validate_report.build("r1", verdict)
    assert verdict["cluster"]["verdict"] == "fail" and verdict["cluster"]["failed_hosts"] == ["lab-3"]
    assert "| lab-3 | import_error | - |" in built["summary_md"]
    failures = dict((c.get("classname"), c.find("failure").get("message")) for c in suite(built, "cluster")
                    if c.find("failure") is not None)
    # The others' smoke did not pass either (the launch was aborted), without being to blame.
    assert failures["lab-3"].startswith("import_error: mpi4py does not import")
    assert failures["lab-1"].startswith("aborted: ") and "because of lab-3" in failures["lab-1"]


def verdict_for(case):
    """The whole verdict of a recorded launch changed by a test (its members are the hosts)."""
    probes, lock = fixture_probes(case)
    hosts = [m["host"] for m in case["members"]]
    facts = dict((h, p["validate"] if p else None) for h, p in probes.items())
    launches = [{"launched": True, "launch_host": case["launch_host"], "members": case["members"],
                 "smoke": case["smoke"], "election": validate.elect(hosts, facts)}]
    return validate.judge(hosts, probes, lock, {"path": "lock.txt", "sha256": lock.sha256}, launches,
                          cluster_smoke=True)


def unresolved_case():
    case = two_rank_launch(load("ok"), ["lab-1", "lab-2"])
    case["smoke"]["unresolved"] = {"lab-3": "[Errno -2] Name or service not known"}
    return case


@pytest.mark.parametrize("make, host, line", [
    (blocked_case, "lab-2", "lab-2: inbound_blocked: ranks on lab-2 never connected: TCP to lab-2:41234 from lab-1 "
                            "timed out after 5s"),
    (unresolved_case, "lab-3", "lab-3: name_unresolved: lab-3 does not resolve from lab-1 ([Errno -2] Name or service "
                               "not known): left out of the launch"),
    (duplicate_case, "lab-2-again", "lab-2-again: duplicate_host: lab-2 and lab-2-again are the same machine: same SSH "
                                    "host key ed25519 SHA256:AbC; list it once (launched and judged as lab-2)"),
])
def test_each_clear_cause_is_named_with_its_host_in_the_failure_lines_and_the_summary(make, host, line):
    # verdict["problems"] is the validate task's failure message, line by line, and the summary's head.
    verdict = verdict_for(make())
    assert line in verdict["problems"] and verdict["cluster"]["failed_hosts"] == [host]
    summary = validate_report.build("r1", verdict)["summary_md"]
    assert "\n- %s\n" % line in summary.split("## Cluster", maxsplit=1)[0]
    assert "| %s | %s |" % (host, line.split(": ")[1]) in summary.split("## Cluster")[1]


def test_a_disagreement_fails_the_cluster_even_when_the_smoke_passed():
    verdict = recorded_verdict("ok", lambda facts: facts["lab-2"]["venv"].update(path="/opt/lockstep/venv-alt"))
    built = validate_report.build("r1", verdict)
    assert verdict["cluster"]["verdict"] == "fail" and verdict["cluster"]["failed_hosts"] == ["lab-2"]
    assert "- **lab-2** venv path: `/opt/lockstep/venv-alt`, the others `/opt/lockstep/venv`" in built["summary_md"]
    consistency = [c for c in suite(built, "lockstep.validate")
                   if c.get("name") == "consistency" and c.find("failure") is not None]
    assert [c.get("classname") for c in consistency] == ["lab-2"]
    assert "venv path /opt/lockstep/venv-alt vs /opt/lockstep/venv" in consistency[0].find("failure").get("message")


def test_a_launch_that_was_asked_for_and_never_happened_fails_with_its_reason():
    skipped = [{"skipped": True, "msg": "no member was checked: nothing to launch on"}] * 3
    verdict = recorded_verdict("ok", launches=skipped)
    built = validate_report.build("r1", verdict)
    assert verdict["cluster"]["verdict"] == "fail" and verdict["failed"]
    assert "Smoke: not run: no member was checked: nothing to launch on" in built["summary_md"]
    cases = list(suite(built, "cluster"))
    assert [c.get("name") for c in cases if c.find("failure") is not None] == ["smoke"] * 3
    # Nobody asked: skipped, and the comparison still ran.
    quiet = recorded_verdict("ok", launches=skipped, cluster_smoke=False)
    assert quiet["cluster"]["verdict"] == "pass"
    assert [c.find("skipped") is not None for c in suite(validate_report.build("r1", quiet), "cluster")] == [True] * 3


def test_an_unchecked_host_fails_its_consistency_case():
    verdict = recorded_verdict("ok", lambda facts: facts.update({"lab-3": None}))
    cases = dict((c.get("classname"), c) for c in suite(validate_report.build("r1", verdict), "lockstep.validate")
                 if c.get("name") == "consistency")
    assert cases["lab-3"].find("failure") is not None and cases["lab-1"].find("failure") is None


def test_write_adds_cluster_json(tmp_path):
    built = validate_report.write(str(tmp_path), "r1", recorded_verdict("hostkey"))
    with open(str(tmp_path / "r1" / "cluster.json")) as handle:
        data = json.load(handle)
    assert data["smoke"]["hosts"]["lab-3"]["status"] == "host_key"
    assert data["launch"]["preflight"]["lab-3"]["ok"] is False
    assert data["election"]["host"] == "lab-1"
    assert str(tmp_path / "r1" / "cluster.json") in built["files"]
    assert HOSTS == data["hosts"]


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_latest_that_is_not_a_symlink_fails_loudly_and_stays(tmp_path, kind):
    # Issue 17: it was silently left stale.
    latest = tmp_path / "latest"
    if kind == "directory":
        latest.mkdir()
        (latest / "summary.md").write_text("someone's copy\n")
    else:
        latest.write_text("someone's note\n")
    verdict = verdict_of({"n1": probe(copy.deepcopy(GOOD))})
    with pytest.raises(validate_report.ReportError) as err:
        validate_report.write(str(tmp_path), "run-2", verdict)
    assert str(err.value) == (
        "%s is a %s, not the symlink to the newest run: it was left as it is and is now stale (this run's reports "
        "are in %s); move it away so the next run can point it at the newest reports"
        % (latest, kind, tmp_path / "run-2"))
    assert os.path.isfile(str(tmp_path / "run-2" / "summary.md"))  # this run's reports are all there
    assert not os.path.islink(str(latest))
    kept = (latest / "summary.md") if kind == "directory" else latest
    assert kept.read_text().startswith("someone's")
    os.rename(str(latest), str(tmp_path / "moved"))
    validate_report.write(str(tmp_path), "run-3", verdict)
    assert os.readlink(str(latest)) == "run-3"
