"""Host side: dist-info reading and RECORD verification (module_utils/distributions.py)."""

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions as inventory

from helpers import make_dist, record_hash


def by_name(dists):
    return {d["name"]: d for d in dists}


def test_reads_names_versions_installer(tmp_path):
    make_dist(tmp_path, "Six", "1.17.0")
    make_dist(tmp_path, "zope.interface", "7.0", installer="pip")
    dists = by_name(inventory.installed_distributions([str(tmp_path)]))
    assert set(dists) == {"Six", "zope.interface"}
    assert dists["Six"]["version"] == "1.17.0"
    assert dists["zope.interface"]["installer"] == "pip"
    assert dists["Six"]["metadata_dir"] == "Six-1.17.0.dist-info"
    assert dists["Six"]["record"] is True and dists["Six"]["files"] == 1


def test_clean_tree_has_no_findings(tmp_path):
    make_dist(tmp_path, "a", "1", {"a/__init__.py": b"", "a/data.bin": os.urandom(3 << 20)})
    make_dist(tmp_path, "b", "2", {"b.py": b"print(1)\n"})
    assert all(d["tampered"] == [] for d in inventory.installed_distributions([str(tmp_path)]))


def test_modified_file_is_named_with_both_hashes(tmp_path):
    make_dist(tmp_path, "a", "1", {"a/__init__.py": b"good\n", "a/other.py": b"fine\n"})
    (tmp_path / "a" / "__init__.py").write_bytes(b"evil\n")
    (finding,) = by_name(inventory.installed_distributions([str(tmp_path)]))["a"]["tampered"]
    assert finding["path"] == "a/__init__.py"
    assert finding["reason"] == "modified"
    assert finding["expected"] == record_hash(b"good\n")
    assert finding["actual"] == record_hash(b"evil\n")
    assert "size" not in finding  # same length: only the digest tells


def test_record_check_reads_every_file_whatever_record_s_times(tmp_path):
    # Issue 10.2: a same-size edit followed by `touch RECORD` passed a shortcut that trusted
    # files older than RECORD. Without a manifest nothing trustworthy says when RECORD was
    # written, so the RECORD check reads every file.
    info = make_dist(tmp_path, "a", "1", {"a/same.py": b"good\n", "a/longer.py": b"1\n"})
    (tmp_path / "a" / "same.py").write_bytes(b"evil\n")
    (tmp_path / "a" / "longer.py").write_bytes(b"12345\n")
    time.sleep(0.05)
    os.utime(str(info / "RECORD"))  # RECORD newer than every file
    found = by_name(inventory.installed_distributions([str(tmp_path)]))["a"]["tampered"]
    assert [f["path"] for f in found] == ["a/longer.py", "a/same.py"]


def test_size_change_and_missing_file(tmp_path):
    make_dist(tmp_path, "a", "1", {"a/x.py": b"1\n", "a/y.py": b"2\n"})
    (tmp_path / "a" / "x.py").write_bytes(b"longer\n")
    (tmp_path / "a" / "y.py").unlink()
    findings = {f["path"]: f for f in by_name(inventory.installed_distributions([str(tmp_path)]))["a"]["tampered"]}
    assert findings["a/x.py"]["size"] == {"expected": 2, "actual": 7}
    assert findings["a/y.py"]["reason"] == "missing"


def test_scripts_outside_site_packages_are_checked(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    script = tmp_path / "bin" / "tool"
    script.parent.mkdir()
    script.write_bytes(b"#!/venv/bin/python\n")
    make_dist(site, "t", "1", extra_rows=["../../../bin/tool,%s,19" % record_hash(b"#!/venv/bin/python\n")])
    assert by_name(inventory.installed_distributions([str(site)]))["t"]["tampered"] == []
    script.write_bytes(b"#!/usr/bin/python\n")
    (finding,) = by_name(inventory.installed_distributions([str(site)]))["t"]["tampered"]
    assert finding["path"] == "../../../bin/tool"


def test_unhashed_rows_are_not_verified(tmp_path):
    make_dist(tmp_path, "a", "1", {"a.py": b"1"}, extra_rows=["a.cpython-311.pyc,,"])
    dist = by_name(inventory.installed_distributions([str(tmp_path)]))["a"]
    assert dist["files"] == 1 and dist["tampered"] == []


def test_verify_files_off_skips_hashing(tmp_path):
    make_dist(tmp_path, "a", "1", {"a.py": b"1"})
    (tmp_path / "a.py").write_bytes(b"2")
    (dist,) = inventory.installed_distributions([str(tmp_path)], verify_files=False)
    assert "tampered" not in dist and dist["files"] is None


@pytest.mark.parametrize("workers", [1, 3, 16])
def test_findings_land_on_the_right_distribution_whatever_the_batching(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(inventory, "PARALLEL_MIN_FILES", 0)  # fork even for this small tree
    for index in range(7):
        make_dist(tmp_path, "p%d" % index, "1", {"p%d/m%d.py" % (index, j): b"%d" % j for j in range(5)})
    (tmp_path / "p3" / "m4.py").write_bytes(b"changed")
    (tmp_path / "p6" / "m0.py").write_bytes(b"changed")
    dists = by_name(inventory.installed_distributions([str(tmp_path)], workers=workers))
    tampered = {name: [f["path"] for f in d["tampered"]] for name, d in dists.items() if d["tampered"]}
    assert tampered == {"p3": ["p3/m4.py"], "p6": ["p6/m0.py"]}


def test_metadata_without_record_is_unverifiable(tmp_path):
    info = tmp_path / "legacy-0.1-py3.11.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: legacy\nVersion: 0.1\n")
    make_dist(tmp_path, "wiped", "1.0")
    (tmp_path / "wiped-1.0.dist-info" / "RECORD").unlink()  # hiding an edit
    dists = by_name(inventory.installed_distributions([str(tmp_path)]))
    assert (dists["legacy"]["record"], dists["wiped"]["record"]) == (False, False)
    assert dists["legacy"]["tampered"] == [
        {"path": "legacy-0.1-py3.11.egg-info/RECORD", "reason": "no hashes to verify"}]
    assert dists["wiped"]["tampered"][0]["path"] == "wiped-1.0.dist-info/RECORD"


def test_guess_site_packages_and_pyvenv_cfg(tmp_path):
    (tmp_path / "lib" / "python3.12" / "site-packages").mkdir(parents=True)
    (tmp_path / "lib64").symlink_to("lib")
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nuv = 0.13.9\nversion_info = 3.12.1\n")
    assert inventory.guess_site_packages(str(tmp_path)) == [str(tmp_path / "lib" / "python3.12" / "site-packages")]
    assert inventory.read_pyvenv_cfg(str(tmp_path))["uv"] == "0.13.9"
    assert inventory.read_pyvenv_cfg(str(tmp_path / "nope")) == {}


@settings(max_examples=100)
@given(st.binary(max_size=4096), st.binary(min_size=1, max_size=64))
def test_any_change_of_content_is_found(original, suffix):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path
        site = Path(tmp)
        make_dist(site, "p", "1", {"p.dat": original})
        assert inventory.installed_distributions([tmp])[0]["tampered"] == []
        (site / "p.dat").write_bytes(original + suffix)
        assert [f["path"] for f in inventory.installed_distributions([tmp])[0]["tampered"]] == ["p.dat"]


def test_canonical_name_is_pep503():
    assert inventory.canonical_name("Zope.Interface") == "zope-interface"
    assert inventory.canonical_name("mpi4py") == "mpi4py"
    assert inventory.canonical_name("a__b--c..d") == "a-b-c-d"
