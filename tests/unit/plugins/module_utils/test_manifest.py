"""The manifest of a venv tree (module_utils/manifest.py): what it records, what verify()
finds, and when the fast path re-hashes."""

import hashlib
import json
import os
import time

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest

from helpers import make_dist


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "venv"
    site = root / "lib" / "python3.11" / "site-packages"
    make_dist(site, "alpha", "1.0", {"alpha/__init__.py": b"x = 1\n", "alpha/util.py": b"y = 2\n"})
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    return {"root": str(root), "site": site, "data": manifest.build(str(root))}


def findings(tree, **kwargs):
    return [(f["path"], f["reason"]) for f in manifest.verify(tree["root"], tree["data"], **kwargs)["findings"]]


def test_records_every_entry_with_its_content_and_metadata(tree):
    entries = tree["data"]["entries"]
    assert entries["bin/python"][:4] == ["link", entries["bin/python"][1], 0, "/usr/bin/python3"]
    kind, mode, size, digest, ino, mtime_ns, ctime_ns, owner, uid, gid, portable = \
        entries["lib/python3.11/site-packages/alpha/__init__.py"]
    assert owner == "alpha" and portable is None
    st = os.lstat(os.path.join(tree["root"], "lib/python3.11/site-packages/alpha/__init__.py"))
    assert (uid, gid) == (st.st_uid, st.st_gid)
    assert (kind, mode, size) == ("file", st.st_mode & 0o7777, 6)
    assert (ino, mtime_ns, ctime_ns) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    assert digest == hashlib.sha256(b"x = 1\n").hexdigest()
    assert entries["bin/tool"][1] == 0o755 and entries["lib"][0] == "dir"
    assert findings(tree) == []


def test_written_and_loaded_outside_the_venv(tree, tmp_path):
    path = manifest.location(tree["root"])
    assert path == os.path.realpath(tree["root"]) + ".manifest.json"
    manifest.write(path, tree["data"])
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert manifest.load(path)["entries"] == tree["data"]["entries"]
    with pytest.raises(manifest.ManifestError, match="no manifest at"):
        manifest.load(str(tmp_path / "absent.manifest.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(manifest.ManifestError, match="not valid JSON"):
        manifest.load(str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"format": 99, "entries": {}}))
    with pytest.raises(manifest.ManifestError, match="not a lockstep manifest"):
        manifest.load(str(tmp_path / "other.json"))


def test_new_missing_modified_mode_type_and_link_are_named(tree):
    site = tree["site"]
    (site / "zz.pth").write_text("/tmp/evil\n")
    (site / "alpha" / "__pycache__").mkdir()
    (site / "alpha" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (site / "alpha" / "util.py").unlink()
    (site / "alpha" / "__init__.py").write_bytes(b"x = 11\n")
    os.chmod(os.path.join(tree["root"], "bin", "tool"), 0o777)
    os.unlink(os.path.join(tree["root"], "bin", "python"))
    os.symlink("/tmp/python", os.path.join(tree["root"], "bin", "python"))
    os.rename(os.path.join(tree["root"], "lib", "python3.11", "site-packages", "alpha-1.0.dist-info", "INSTALLER"),
              os.path.join(tree["root"], "moved"))
    os.mkdir(os.path.join(tree["root"], "lib", "python3.11", "site-packages", "alpha-1.0.dist-info", "INSTALLER"))
    sp = "lib/python3.11/site-packages/"
    assert findings(tree) == [
        ("bin/python", "link"),
        ("bin/tool", "mode"),
        (sp + "alpha-1.0.dist-info/INSTALLER", "type"),
        (sp + "alpha/__init__.py", "modified"),
        (sp + "alpha/__pycache__", "new"),
        (sp + "alpha/__pycache__/__init__.cpython-311.pyc", "new"),
        (sp + "alpha/util.py", "missing"),
        (sp + "zz.pth", "new"),
        ("moved", "new"),
    ]


def test_fast_path_rehashes_only_what_changed_and_a_time_set_back_does_not_hide_an_edit(tree):
    result = manifest.verify(tree["root"], tree["data"])
    assert result["rehashed"] == 0 and result["files"] > 5
    path = os.path.join(tree["root"], "lib/python3.11/site-packages/alpha/__init__.py")
    before = os.stat(path)
    time.sleep(0.02)
    with open(path, "r+b") as handle:  # same size, in place
        handle.write(b"x = 7\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r: mtime as it was
    record = os.path.join(tree["root"], "lib/python3.11/site-packages/alpha-1.0.dist-info/RECORD")
    os.utime(record)  # and RECORD newer than everything
    result = manifest.verify(tree["root"], tree["data"])
    assert [(f["path"], f["reason"]) for f in result["findings"]] == [
        ("lib/python3.11/site-packages/alpha/__init__.py", "modified")]
    assert result["rehashed"] == 2  # the edited file and the touched RECORD: ctime moved for both
    assert result["findings"][0]["expected"] != result["findings"][0]["actual"]


def test_same_content_with_new_times_is_not_a_finding_and_rehash_all_reads_everything(tree):
    path = os.path.join(tree["root"], "bin", "tool")
    os.utime(path)
    result = manifest.verify(tree["root"], tree["data"])
    assert result["findings"] == [] and result["rehashed"] == 1
    assert manifest.verify(tree["root"], tree["data"], rehash_all=True)["rehashed"] == result["files"]


def test_parallel_digests_match_serial(tmp_path):
    paths = []
    for number in range(manifest.PARALLEL_MIN + 5):
        path = tmp_path / ("f%05d" % number)
        path.write_bytes(b"%d\n" % number)
        paths.append(str(path))
    assert manifest.digest_many(paths, workers=2) == manifest.digest_many(paths, workers=1)


def test_findings_are_capped_with_a_count(tree):
    extra = os.path.join(tree["root"], "dropped")
    os.mkdir(extra)
    for number in range(manifest.MAX_FINDINGS + 10):
        open(os.path.join(extra, "f%04d" % number), "w").close()
    result = manifest.verify(tree["root"], tree["data"])
    assert len(result["findings"]) == manifest.MAX_FINDINGS and result["truncated"] == 11


def test_record_is_checked_against_the_manifest_hashes(tree):
    assert manifest.record_mismatches(tree["data"], [str(tree["site"])]) == []
    path = tree["site"] / "alpha" / "util.py"
    path.write_bytes(b"y = 3\n")
    again = manifest.build(tree["root"])
    assert manifest.record_mismatches(again, [str(tree["site"])]) == ["lib/python3.11/site-packages/alpha/util.py"]
    os.unlink(str(tree["site"] / "alpha-1.0.dist-info" / "RECORD"))
    assert manifest.record_mismatches(manifest.build(tree["root"]), [str(tree["site"])]) == [
        "lib/python3.11/site-packages/alpha-1.0.dist-info/RECORD"]


def test_owners_come_from_record_at_build_and_bytecode_belongs_to_its_source(tmp_path):
    root = tmp_path / "venv"
    site = root / "lib" / "python3.11" / "site-packages"
    make_dist(site, "Al_Pha", "1.0", {"al_pha/__init__.py": b"x = 1\n"})
    cache = site / "al_pha" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"compiled")
    (site / "loose.py").write_text("")
    entries = manifest.build(str(root))["entries"]
    sp = "lib/python3.11/site-packages/"
    assert entries[sp + "al_pha/__init__.py"][7] == "al-pha"
    assert entries[sp + "al_pha/__pycache__/__init__.cpython-311.pyc"][7] == "al-pha"
    assert entries[sp + "loose.py"][7] is None


def test_missing_bytecode_is_counted_not_reported(tmp_path):
    root = tmp_path / "venv"
    site = root / "lib" / "python3.11" / "site-packages"
    make_dist(site, "alpha", "1.0", {"alpha/__init__.py": b"x = 1\n"})
    (site / "alpha" / "__pycache__").mkdir()
    (site / "alpha" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"compiled")
    data = manifest.build(str(root))
    import shutil
    shutil.rmtree(str(site / "alpha" / "__pycache__"))
    result = manifest.verify(str(root), data)
    assert result["findings"] == [] and result["bytecode_missing"] == 2


def test_attribute_names_the_owner_and_the_record_path(tree):
    sp = "lib/python3.11/site-packages/"
    findings = [{"path": sp + "alpha/util.py", "reason": "new"}, {"path": sp + "zz.pth", "reason": "new"},
                {"path": "bin/tool", "reason": "modified", "owner": "tool-dist"}]
    manifest.attribute(findings, tree["root"], [str(tree["site"])])
    assert findings == [
        {"path": sp + "alpha/util.py", "reason": "new", "owner": "alpha", "record_path": "alpha/util.py"},
        {"path": sp + "zz.pth", "reason": "new", "record_path": "zz.pth"},
        {"path": "bin/tool", "reason": "modified", "owner": "tool-dist"}]


def test_a_package_directory_belongs_to_its_distribution_site_packages_to_none(tree):
    sp = "lib/python3.11/site-packages/"
    entries = tree["data"]["entries"]
    assert entries[sp + "alpha"][7] == "alpha" and entries[sp + "alpha-1.0.dist-info"][7] == "alpha"
    assert entries[sp.rstrip("/")][7] is None and entries["bin"][7] is None
