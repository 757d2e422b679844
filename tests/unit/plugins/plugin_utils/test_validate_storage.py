"""The shared-storage verdict (plugin_utils/validate.py storage_verdict, wired into judge) and how
the reports show it (validate_report.py: summary.md's first lines and Cluster section,
junit.xml's `cluster` testsuite, cluster.json). The launch is the one recorded on the SSH lab
(fixtures/cluster/ok.json) with the storage phase of each rank added the way the rank script
writes it: which writer's file a rank saw, what it could not do, its filesystem and free space."""

import copy
import xml.etree.ElementTree as ET

from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate_report
from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate as cv

from test_validate import HOSTS, load, recorded_verdict

GIB = 1 << 30
NFS = {"fstype": "nfs4", "source": "nas:/export/data", "mountpoint": "/data", "mount_options": "rw,relatime"}


def fact(path, seen=0, writers=(0,), **change):
    """A rank's report of one directory: by default shared, writable, 100 GiB free, on NFS."""
    out = dict(NFS, path=path, realpath=path, exists=True, writable=True, free=100 * GIB, size=200 * GIB,
               inodes_free=10 ** 6, hung=False, seen=seen, read="seen" if seen is not None else "absent",
               writers=list(writers))
    out.update(change)
    return out


def launch(per_host, dirs=("/data",), min_free=0, drop=()):
    """The recorded clean launch, each rank with a storage phase built from ``per_host``
    (``{host: [fact per directory]}``; a host not named gets the default shared facts)."""
    case = load("ok")
    smoke = copy.deepcopy(case["smoke"])
    smoke["storage"] = {"dirs": list(dirs), "min_free": min_free, "timeout": 10}
    for rank in smoke["ranks"]:
        host = rank["id"]["member"]
        if host in drop:
            continue
        facts = per_host.get(host) or [fact(d) for d in dirs]
        rank["storage"] = {"phase": "storage", "rank": rank["init"]["rank"], "hostname": host, "dirs": facts,
                           "storage_s": 0.01}
    return [{"launched": True, "launch_host": case["launch_host"], "members": case["members"], "smoke": smoke,
             "election": None}]


def verdict(per_host, **kwargs):
    return recorded_verdict("ok", launches=launch(per_host, **kwargs))


def statuses(found, path="/data"):
    return dict((h, found["storage"]["hosts"][h][path]["status"]) for h in HOSTS)


def junit_cases(found):
    root = ET.fromstring(validate_report.build("r", found)["junit_xml"].split("\n", 1)[1])
    cluster = next(s for s in root.findall("testsuite") if s.get("name") == "cluster")
    return dict(((c.get("classname"), c.get("name")), c.find("failure")) for c in cluster.findall("testcase")), cluster


def test_shared_everywhere_passes_and_shows_where_it_lives():
    found = verdict({})
    storage = found["storage"]
    assert storage["passed"] and storage["problems"] == [] and not found["failed"]
    assert statuses(found) == {"lab-1": "ok", "lab-2": "ok", "lab-3": "ok"}
    assert storage["dirs"] == [{"path": "/data", "shared_by": HOSTS, "writers": ["lab-1"]}]
    assert storage["hosts"]["lab-2"]["/data"]["seen_from"] == "lab-1"
    summary = validate_report.build("r", found)["summary_md"]
    assert "Shared storage: pass — 1 directory on every host." in summary
    assert "| lab-3 | /data | pass (shared) | nfs4 | nas:/export/data | 100.0 GiB | - |" in summary
    cases, suite = junit_cases(found)
    assert ("lab-2", "shared_storage /data") in cases and cases[("lab-2", "shared_storage /data")] is None
    assert suite.get("failures") == "0"


def test_a_host_with_its_own_directory_at_the_same_path_is_named_with_the_writer_and_the_others():
    # lab-3 did not see lab-1's file, so it wrote one of its own in round 2 and saw only that.
    local = fact("/data", seen=2, writers=(0, 2), fstype="ext4", source="/dev/sda1", mountpoint="/")
    found = verdict({"lab-3": [local]})
    assert statuses(found) == {"lab-1": "ok", "lab-2": "ok", "lab-3": "not_shared"}
    message = found["storage"]["hosts"]["lab-3"]["/data"]["message"]
    assert message == ("not the storage lab-1, lab-2 share: it does not see the file lab-1 wrote there "
                       "(here ext4 /dev/sda1)")
    assert found["failed"] and found["cluster"]["verdict"] == "fail" and found["cluster"]["failed_hosts"] == ["lab-3"]
    assert "lab-3: shared storage /data: not_shared: not the storage lab-1, lab-2 share" in found["problems"][0]
    assert found["storage"]["dirs"][0]["writers"] == ["lab-1", "lab-3"]


def test_the_odd_host_is_named_even_when_it_wrote_first():
    # lab-1 (rank 0) has a local disk there; lab-2 and lab-3 share the file lab-2 wrote in round 2.
    found = verdict({"lab-1": [fact("/data", seen=0, writers=(0, 1), fstype="xfs", source="/dev/nvme0n1")],
                     "lab-2": [fact("/data", seen=1, writers=(0, 1))], "lab-3": [fact("/data", seen=1, writers=(0, 1))]})
    assert statuses(found) == {"lab-1": "not_shared", "lab-2": "ok", "lab-3": "ok"}
    assert "does not see the file lab-2 wrote there (here xfs /dev/nvme0n1)" in \
        found["storage"]["hosts"]["lab-1"]["/data"]["message"]


def test_per_host_directories_everywhere_name_every_host():
    found = verdict(dict((h, [fact("/scratch", seen=r, writers=(0, 1, 2), fstype="overlay", source="overlay")])
                         for r, h in enumerate(HOSTS)), dirs=("/scratch",))
    assert statuses(found, "/scratch") == dict((h, "not_shared") for h in HOSTS)
    assert found["storage"]["hosts"]["lab-2"]["/scratch"]["message"] == \
        "no other host sees the same files there (here overlay overlay)"
    assert found["storage"]["dirs"][0]["shared_by"] == []


def test_a_read_only_host_is_named_and_still_counted_as_sharing():
    found = verdict({"lab-3": [fact("/data", writable=False, write_error="Read-only file system",
                                    mount_options="ro,relatime")]})
    entry = found["storage"]["hosts"]["lab-3"]["/data"]
    assert entry["status"] == "not_writable" and entry["causes"] == ["not_writable"]
    assert entry["message"] == "bench cannot create a file there: Read-only file system"
    assert found["storage"]["dirs"][0]["shared_by"] == HOSTS
    assert found["cluster"]["failed_hosts"] == ["lab-3"]


def test_a_host_that_misses_the_token_and_cannot_write_has_both_causes():
    # The staged-file case: lab-2 reads the shared path but the file lab-1 wrote is not there.
    found = verdict({"lab-2": [fact("/data", seen=None, writable=False, write_error="Permission denied",
                                    fstype="nfs4", source="nas2:/export/data")]})
    entry = found["storage"]["hosts"]["lab-2"]["/data"]
    assert entry["causes"] == ["not_writable", "not_shared"] and entry["status"] == "not_writable"
    assert "it does not see the file lab-1 wrote there (here nfs4 nas2:/export/data)" in entry["message"]
    assert found["cluster"]["failed_hosts"] == ["lab-2"]


def test_a_full_directory_is_named_on_every_host_with_its_free_space_and_the_minimum():
    tiny = [fact("/full", free=1 << 20, fstype="tmpfs", source="tmpfs")]
    found = verdict(dict((h, tiny) for h in HOSTS), dirs=("/full",), min_free=8 << 20)
    assert statuses(found, "/full") == dict((h, "low_space") for h in HOSTS)
    assert found["storage"]["hosts"]["lab-1"]["/full"]["message"] == "1.0 MiB free, 8.0 MiB required (tmpfs tmpfs)"
    summary = validate_report.build("r", found)["summary_md"]
    assert "Shared storage: FAIL — 1 directory on every host, at least 8.0 MiB free; 3 of 3 host/directory" in summary
    # At the minimum exactly is enough.
    assert verdict(dict((h, tiny) for h in HOSTS), dirs=("/full",), min_free=1 << 20)["storage"]["passed"]


def test_a_filesystem_that_refuses_the_write_for_space_is_not_writable():
    found = verdict({"lab-2": [fact("/data", writable=False, write_error="No space left on device", free=0)]})
    assert found["storage"]["hosts"]["lab-2"]["/data"]["message"] == \
        "bench cannot create a file there: No space left on device"


def test_a_writer_whose_token_write_failed_after_its_probe_passed_is_not_writable():
    # Rank 0 could not write its file, so rank 1 wrote one in the next round; all three read it.
    found = verdict({"lab-1": [fact("/data", seen=1, writers=(1,), write_error="Disk quota exceeded")],
                     "lab-2": [fact("/data", seen=1, writers=(1,))], "lab-3": [fact("/data", seen=1, writers=(1,))]})
    entry = found["storage"]["hosts"]["lab-1"]["/data"]
    assert entry["causes"] == ["not_writable"] and entry["message"] == \
        "bench cannot create a file there: Disk quota exceeded"
    assert found["storage"]["dirs"][0] == {"path": "/data", "shared_by": HOSTS, "writers": ["lab-2"]}


def test_a_missing_directory_is_named_and_nothing_else_is_claimed_about_it():
    found = verdict({"lab-3": [fact("/data", seen=None, exists=False, error="does not exist", writers=(0,),
                                    fstype=None, source=None, free=None)]})
    entry = found["storage"]["hosts"]["lab-3"]["/data"]
    assert (entry["status"], entry["causes"], entry["message"]) == ("missing", ["missing"], "/data does not exist here")
    assert statuses(found)["lab-1"] == "ok"
    cases, dummy = junit_cases(found)
    assert cases[("lab-3", "shared_storage /data")].get("message") == "missing: /data does not exist here"


def test_a_hung_directory_is_named():
    found = verdict({"lab-2": [fact("/data", seen=None, hung=True, error="the check did not finish in 10s")]})
    assert statuses(found)["lab-2"] == "hung"
    assert found["storage"]["hosts"]["lab-2"]["/data"]["message"] == \
        "/data did not answer in time here: the check did not finish in 10s"
    assert statuses(found)["lab-1"] == "ok"  # two hosts still compared: they share it


def test_each_directory_is_judged_on_its_own():
    dirs = ("/data", "/results", "/ckpt")
    lab3 = [fact("/data"), fact("/results", seen=2, writers=(0, 2)), fact("/ckpt", writable=False, write_error="x")]
    found = verdict({"lab-3": lab3}, dirs=dirs)
    assert [found["storage"]["hosts"]["lab-3"][d]["status"] for d in dirs] == ["ok", "not_shared", "not_writable"]
    cases, suite = junit_cases(found)
    assert sorted(n for (h, n) in cases if h == "lab-3") == ["shared_storage /ckpt", "shared_storage /data",
                                                             "shared_storage /results", "smoke"]
    assert suite.get("failures") == "2" and suite.get("tests") == str(3 * 4)


def test_a_rank_that_never_reported_its_storage_fails_that_host():
    found = verdict({}, drop=("lab-2",))
    entry = found["storage"]["hosts"]["lab-2"]["/data"]
    assert entry["status"] == "not_checked" and entry["message"] == "its rank did not report the storage check"
    assert found["cluster"]["failed_hosts"] == ["lab-2"] and found["failed"]
    assert "lab-2: shared storage /data: not_checked: its rank did not report the storage check" in found["problems"]


def test_a_launch_that_failed_before_the_storage_check_says_so_once():
    launches = launch({}, drop=HOSTS)
    launches[0]["smoke"] = dict(load("import")["smoke"], storage=launches[0]["smoke"]["storage"])
    found = recorded_verdict("import", launches=launches)
    assert not found["storage"]["passed"]
    assert found["storage"]["failed_hosts"] == []  # the smoke verdict names who broke the launch
    assert [p for p in found["problems"] if "shared storage" in p] == [
        "shared storage not checked on lab-1, lab-2, lab-3: the launch did not get that far there"]
    cases, dummy = junit_cases(found)
    assert cases[("lab-1", "shared_storage /data")].get("message").startswith("not_checked: its rank did not get")


def test_without_shared_dirs_there_is_no_storage_verdict_and_no_testcase():
    found = recorded_verdict("ok")
    assert found["storage"] is None
    cases, dummy = junit_cases(found)
    assert not [n for (h, n) in cases if n.startswith("shared_storage")]
    assert "Shared storage" not in validate_report.build("r", found)["summary_md"]


def test_summary_names_host_and_directory_first_and_in_the_cluster_section_and_cluster_json_holds_it():
    local = fact("/data", seen=2, writers=(0, 2), fstype="ext4", source="/dev/sda1")
    found = verdict({"lab-3": [local]})
    summary = validate_report.build("r", found)["summary_md"]
    head = summary.split("| host |", maxsplit=1)[0]
    assert "- lab-3: shared storage /data: not_shared: not the storage lab-1, lab-2 share" in head
    cluster = summary.split("## Cluster")[1]
    assert "| lab-3 | /data | not_shared | ext4 | /dev/sda1 | 100.0 GiB | not the storage lab-1, lab-2 share" in cluster
    assert "| lab-1 | /data | pass (shared) |" in cluster
    data = validate_report.cluster_json(found)
    assert data["storage"]["hosts"]["lab-3"]["/data"]["status"] == "not_shared" and data["verdict"] == "fail"


def test_groups_ties_go_to_the_first_hosts_group_and_one_host_cannot_share():
    hosts = ["a", "b", "c", "d"]
    facts = {"a": {"exists": True, "seen": 2}, "b": {"exists": True, "seen": 0}, "c": {"exists": True, "seen": 0},
             "d": {"exists": True, "seen": 2}}
    groups = cv._storage_groups(hosts, facts)  # pylint: disable=protected-access
    assert groups["reference"] == ["a", "d"] and groups["writer"] == 2
    alone = cv._storage_groups(hosts, dict(facts, b=None, c=None, d={"exists": False}))  # pylint: disable=protected-access
    assert alone["reference"] is None and alone["compared"] == 1


def test_human_bytes():
    assert [cv.human_bytes(n) for n in (0, 1023, 1024, 3 << 29, 5 << 40, 3 << 50)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 GiB", "5.0 TiB", "3072.0 TiB"]


# Recorded on the SSH lab (fixtures/cluster/storage.json, see its note): a volume on every host,
# a directory of each host's own, one that lab-2 lacks, and one bench cannot write in.

def recorded_storage(min_free=None):
    case = load("storage")
    smoke = copy.deepcopy(case["smoke"])
    if min_free is not None:
        smoke["storage"]["min_free"] = min_free
    return cv.storage_verdict(case["members"], smoke)


def test_recorded_lab_run_names_each_host_and_directory():
    found = recorded_storage()
    table = dict((d, [found["hosts"][h][d]["status"] for h in HOSTS])
                 for d in ("/srv/shared/data", "/srv/own/a", "/srv/staged", "/srv"))
    assert table == {"/srv/shared/data": ["ok", "ok", "ok"], "/srv/own/a": ["not_shared"] * 3,
                     "/srv/staged": ["not_shared", "missing", "not_shared"], "/srv": ["not_writable"] * 3}
    assert found["hosts"]["lab-2"]["/srv"]["message"] == "bench cannot create a file there: Permission denied"
    assert found["hosts"]["lab-2"]["/srv/staged"]["message"] == "/srv/staged does not exist here"
    assert found["dirs"][0] == {"path": "/srv/shared/data", "shared_by": HOSTS, "writers": ["lab-1"]}
    # Nobody could write in /srv: nothing proves it shared or not, and nothing claims it.
    assert found["dirs"][3]["writers"] == [] and found["hosts"]["lab-1"]["/srv"]["causes"] == ["not_writable"]
    assert found["failed_hosts"] == HOSTS and not found["passed"]


def test_recorded_lab_run_with_a_minimum_above_the_free_space_names_the_shared_volume_too():
    free = load("storage")["smoke"]["ranks"][0]["storage"]["dirs"][0]["free"]
    found = recorded_storage(min_free=free + (1 << 30))
    assert [found["hosts"][h]["/srv/shared/data"]["status"] for h in HOSTS] == ["low_space"] * 3
    assert found["hosts"]["lab-3"]["/srv/shared/data"]["message"].endswith("required (ext4 /dev/vda)")
    assert recorded_storage(min_free=free - (1 << 30))["hosts"]["lab-3"]["/srv/shared/data"]["status"] == "ok"
