"""The cluster smoke verdict (plugin_utils/cluster_verdict.py) on launches recorded on the SSH
lab (fixtures/cluster/*.json: what the launching host returned, and each host's own env_drift
result, trimmed): every cause is told apart and lands on the right host."""

import copy
import json
import os

import pytest

from ansible_collections.lockstep.cluster.plugins.plugin_utils import cluster_verdict as cv

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cluster")


def load(name):
    with open(os.path.join(FIXTURES, name + ".json")) as handle:
        return json.load(handle)


def judge(case):
    return cv.smoke_verdict(case["members"], case["results"], case["smoke"], case["launch_host"])


def statuses(verdict):
    return dict((h, e["status"]) for h, e in verdict["hosts"].items())


def test_clean_launch_passes_with_one_rank_per_host_and_timings():
    verdict = judge(load("ok"))
    assert verdict["passed"] is True and verdict["problems"] == []
    assert statuses(verdict) == {"lab-1": "ok", "lab-2": "ok", "lab-3": "ok"}
    assert [verdict["hosts"][h]["ranks"] for h in ("lab-1", "lab-2", "lab-3")] == [[0], [1], [2]]
    assert set(verdict["hosts"]["lab-2"]["timings"]) == {"ssh_s", "startup_s", "init_s", "collectives_s"}
    # The launching host starts its own rank without SSH: no SSH check of itself.
    assert "ssh_s" not in verdict["hosts"]["lab-1"]["timings"]


@pytest.mark.parametrize("case, cause, words", [
    ("hostkey", "host_key", "has changed"),
    ("hostkey-nopre", "host_key", "has changed"),
    ("sshdown", "ssh_unreachable", "Connection refused"),
    ("sshdown-nopre", "ssh_unreachable", "Connection refused"),
    ("auth", "ssh_auth", "Permission denied"),
    ("auth-nopre", "ssh_auth", "Permission denied"),
    ("import", "import_error", "Permission denied"),
    ("import-nopre", "import_error", "cannot open shared object"),
    ("novenv", "venv_missing", "could not access"),
])
def test_each_recorded_failure_names_lab3_and_its_cause(case, cause, words):
    verdict = judge(load(case))
    assert verdict["passed"] is False
    assert verdict["hosts"]["lab-3"]["status"] == cause
    assert words in verdict["hosts"]["lab-3"]["message"]
    assert any(p.startswith("lab-3: %s" % cause) for p in verdict["problems"])
    # The others either ran (the SSH check kept lab-3 out of the launch) or were aborted
    # with it; never blamed with a cause of their own.
    for host in ("lab-1", "lab-2"):
        assert verdict["hosts"][host]["status"] in ("ok", "aborted")
        if verdict["hosts"][host]["status"] == "aborted":
            assert "because of lab-3" in verdict["hosts"][host]["message"]


def test_host_switched_to_mpich_launched_from_an_open_mpi_host_differs_from_its_own_report():
    # lab-3 re-provisioned with MPICH: launched from lab-1, the forwarded venv environment
    # makes its rank load Open MPI (still installed), unlike lab-3's own report.
    verdict = judge(load("flavor-env"))
    assert statuses(verdict) == {"lab-1": "ok", "lab-2": "ok", "lab-3": "env_differs"}
    assert "library: rank has openmpi 4.1.4, the host reported mpich 4.0.2" in verdict["hosts"]["lab-3"]["message"]


def test_mpich_launcher_finds_no_hydra_proxy_on_open_mpi_hosts():
    verdict = judge(load("flavor-daemon"))
    assert set(statuses(verdict).values()) == {"flavor_mismatch"}
    assert "no hydra_pmi_proxy" in verdict["hosts"]["lab-1"]["message"]
    assert "the launcher on lab-3 is mpich 4.0.2 while 2 host(s) run openmpi" in verdict["hosts"]["lab-3"]["message"]


def test_launch_from_the_odd_host_that_hung_blames_it_and_aborts_the_others():
    verdict = judge(load("flavor-outlier"))
    assert statuses(verdict) == {"lab-1": "aborted", "lab-2": "aborted", "lab-3": "flavor_mismatch"}


def test_preflight_keeps_the_broken_host_out_and_the_others_launch():
    verdict = judge(load("sshdown"))
    assert statuses(verdict) == {"lab-1": "ok", "lab-2": "ok", "lab-3": "ssh_unreachable"}
    assert verdict["hosts"]["lab-2"]["ranks"] == [1]


def test_missing_rank():
    case = load("ok")
    case["smoke"]["ranks"] = [r for r in case["smoke"]["ranks"] if r["id"]["hostname"] != "lab-2"]
    case["smoke"]["returncode"] = 1
    verdict = judge(case)
    assert verdict["passed"] is False
    assert verdict["hosts"]["lab-2"]["status"] == "rank_missing"
    assert "no rank reported from lab-2" in verdict["hosts"]["lab-2"]["message"]


def test_hanging_rank_recorded_on_the_lab_is_missing_and_the_others_wait_for_it():
    # lab-2's Python hung before the rank script ran (a sitecustomize that sleeps): the launch
    # timed out after 15 s, the others sat in MPI_Init waiting for it.
    verdict = judge(load("hang"))
    assert statuses(verdict) == {"lab-1": "aborted", "lab-2": "rank_missing", "lab-3": "aborted"}
    assert "because of lab-2" in verdict["hosts"]["lab-1"]["message"]
    assert load("hang")["smoke"]["stragglers"] == {}


def test_timed_out_rank_is_missing():
    case = load("ok")
    case["smoke"]["ranks"] = [r for r in case["smoke"]["ranks"] if r["id"]["hostname"] != "lab-3"]
    case["smoke"].update(returncode=None, timed_out=True)
    verdict = judge(case)
    assert verdict["hosts"]["lab-3"] == dict(verdict["hosts"]["lab-3"], status="rank_missing",
                                             message="no rank started before the launch timed out")


@pytest.mark.parametrize("field, change, words", [
    ("venv", lambda r: r["venv"].update(realpath="/opt/lockstep/venvs/other"), "venv: rank has"),
    ("python", lambda r: r["python"].update(version="3.11.9"), "python: rank has 3.11.2, the host reported 3.11.9"),
    ("libmpi", lambda r: r["mpi"]["library"].update(libmpi_realpath="/usr/lib/other/libmpi.so.40"), "libmpi:"),
    ("packages", lambda r: r["distributions"].append({"name": "Six", "version": "1.0"}), "packages:"),
])
def test_environment_on_the_rank_differs_from_the_hosts_own_report(field, change, words):
    case = load("ok")
    change(case["results"]["lab-2"])
    verdict = judge(case)
    assert statuses(verdict) == {"lab-1": "ok", "lab-2": "env_differs", "lab-3": "ok"}
    assert words in verdict["hosts"]["lab-2"]["message"]


def test_flavor_mismatch_from_the_rank_library():
    case = load("ok")
    rank = next(r for r in case["smoke"]["ranks"] if r["id"]["hostname"] == "lab-3")
    rank["id"]["library_version"] = "MPICH Version:      4.0.2\nMPICH Release date: Thu Apr  7 12:34:45 CDT 2022"
    rank["init"]["size"] = 1
    rank.pop("done")
    verdict = judge(case)
    assert verdict["hosts"]["lab-3"]["status"] == "flavor_mismatch"
    assert "launcher is openmpi 4.1.4 but the rank loaded mpich 4.0.2" in verdict["hosts"]["lab-3"]["message"]


def test_the_launching_host_is_blamed_when_its_launcher_is_the_odd_one():
    case = load("ok")
    for host in ("lab-2", "lab-3"):
        case["results"][host]["mpi"]["launcher"] = {"flavor": "mpich", "version": "4.0.2"}
    verdict = judge(case)
    assert verdict["hosts"]["lab-1"]["status"] == "flavor_mismatch"
    assert "launcher on lab-1 is openmpi 4.1.4 while 2 host(s) run mpich" in verdict["hosts"]["lab-1"]["message"]


def test_without_own_reports_the_launch_alone_is_judged():
    case = load("ok")
    results = dict((h, {"status": "ok"}) for h in case["results"])
    verdict = cv.smoke_verdict(case["members"], results, case["smoke"], "lab-1")
    assert verdict["passed"] and set(statuses(verdict).values()) == {"ok"}


def test_host_the_controller_never_reached_is_unreachable_not_ok():
    case = load("ok")
    case["results"]["lab-3"] = None
    verdict = judge(case)
    assert verdict["hosts"]["lab-3"]["status"] == "unreachable" and verdict["passed"] is False


def test_host_missing_from_the_hostfile():
    case = load("ok")
    case["smoke"]["not_in_hostfile"] = ["lab-3"]
    verdict = judge(case)
    assert verdict["hosts"]["lab-3"]["status"] == "not_in_hostfile"


def test_a_smoke_that_did_not_run_fails_every_host():
    case = load("ok")
    verdict = cv.smoke_verdict(case["members"], case["results"], {"failed": True, "msg": "boom"}, "lab-1")
    assert verdict["passed"] is False and set(statuses(verdict).values()) == {"rank_missing"}


def test_wrong_allreduce_fails_the_rank():
    case = load("ok")
    rank = next(r for r in case["smoke"]["ranks"] if r["id"]["hostname"] == "lab-2")
    rank["done"]["allreduce"] = 7
    verdict = judge(case)
    assert verdict["hosts"]["lab-2"]["status"] == "rank_failed" and "allreduce 7 (expected 3)" in \
        verdict["hosts"]["lab-2"]["message"]


def test_ssh_cause_classifies_stderr():
    assert cv.ssh_cause("Host key verification failed.")[0] == "host_key"
    assert cv.ssh_cause("No ED25519 host key is known for lab-9 and you have requested strict checking.")[0] == "host_key"
    assert cv.ssh_cause("bench@lab-2: Permission denied (publickey).")[0] == "ssh_auth"
    assert cv.ssh_cause("ssh: Could not resolve hostname lab-9: Name or service not known")[0] == "ssh_unreachable"
    assert cv.ssh_cause("all fine") == (None, None)


# The cross-host gate.

def gate_case():
    case = load("ok")
    return ["lab-1", "lab-2", "lab-3"], case["results"]


def test_gate_passes_when_hosts_agree():
    hosts, results = gate_case()
    found = cv.gate(hosts, results)
    assert found["passed"] and found["disagreements"] == {}
    assert found["reference"]["mpi"] == "openmpi 4.1.4" and found["reference"]["venv_path"] == "/opt/lockstep/venv"


@pytest.mark.parametrize("field, change, value", [
    ("venv_path", lambda r: r["venv"].update(path="/opt/lockstep/venv-alt"), "/opt/lockstep/venv-alt"),
    ("mpi", lambda r: r["mpi"]["library"].update(flavor="mpich", version="4.0.2"), "mpich 4.0.2"),
    ("launcher", lambda r: r["mpi"]["launcher"].update(flavor="mpich", version="4.0.2"), "mpich 4.0.2"),
    ("lock_sha256", lambda r: r["lock"].update(sha256="0" * 64), "0" * 64),
    ("python", lambda r: r["python"].update(version="3.13.5"), "3.13.5"),
    ("uv", lambda r: r["uv"].update(version="0.13.8"), "0.13.8"),
    ("mpi4py", lambda r: r["mpi"]["library"].update(variant="mpich"), None),
])
def test_gate_names_the_disagreeing_host_and_field(field, change, value):
    hosts, results = gate_case()
    results = copy.deepcopy(results)
    change(results["lab-3"])
    found = cv.gate(hosts, results)
    assert not found["passed"]
    assert list(found["disagreements"]) == ["lab-3"]
    assert [d["field"] for d in found["disagreements"]["lab-3"]] == [field]
    if value:
        assert found["disagreements"]["lab-3"][0]["value"] == value


def test_gate_reference_on_a_tie_is_the_first_hosts_value():
    hosts, results = gate_case()
    results = copy.deepcopy(results)
    results["lab-2"]["venv"]["path"] = "/b"
    results["lab-3"]["venv"]["path"] = "/c"
    found = cv.gate(hosts, results)
    assert sorted(found["disagreements"]) == ["lab-2", "lab-3"]
