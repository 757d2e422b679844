"""The manifest of a venv tree (module_utils/manifest.py): what it records, what verify() finds,
and when the fast path re-hashes; then tampering with a live venv built by the store, with the
real uv (issue 10.1, 10.2): the sync's converged check (``plan``) and the validator
(``probe.collect`` + ``validate.evaluate``) both name the file, neither changes a byte of the
live venv, and ``sync`` replaces it."""

import hashlib
import importlib.util
import json
import marshal
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest, probe, store_fs
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import evaluate
from ansible_collections.lockstep.cluster.plugins.module_utils import venv_store as m

from helpers import lock_of, make_dist, make_store, snapshot, sync, UV, wheelhouse


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


TAG = sys.implementation.cache_tag


@pytest.fixture
def live(tmp_path):
    house = wheelhouse(tmp_path)
    store = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")))
    sync(store)
    real = os.path.realpath(store.path)
    site = [os.path.join(real, "lib", d, "site-packages") for d in os.listdir(os.path.join(real, "lib"))][0]
    return {"house": house, "store": store, "real": real, "site": site,
            "rel": os.path.relpath(site, real) + "/"}


def validate(live, **overrides):
    params = dict((k, v.get("default")) for k, v in probe.VALIDATE_OPTIONS.items())
    params.update(venv=live["store"].path, lockfile="lock.txt", mpi=False, uv_path=UV)
    params.update(overrides)
    facts = probe.collect(params, dict(os.environ))
    facts.update(evaluate(parse_lock(live["store"].lock_text, "lock.txt"), facts))
    return facts


def plan_and_report(live):
    """plan() and the validator on the tampered venv, which both leave it byte-identical."""
    before = snapshot(live["store"].path)
    plan = live["store"].plan()
    report = validate(live)
    assert snapshot(live["store"].path) == before
    return plan, report


def assert_caught(live, plan, report, path, reason, owner=None):
    assert plan["action"] == "build" and plan["drift"], plan
    changed = dict((c["name"], c) for c in plan["changes"])
    group = changed[owner or m.UNOWNED]
    wanted = path if owner is None else path.split("site-packages/", 1)[1]
    assert (wanted, reason) in [(f["path"], f["reason"]) for f in group["findings"]], group
    assert report["status"] == "drift" and report["checks"]["integrity"]["outcome"] == "fail"
    named = [p for p in report["problems"] if wanted in p]
    assert named, report["problems"]


def assert_replaced(live):
    """sync builds a fresh venv beside the tampered one and does not keep that as previous."""
    applied = sync(live["store"])
    assert applied["built"] and os.path.realpath(live["store"].path) != live["real"]
    assert applied["previous_kept"] is None  # the tampered venv is no rollback target
    assert not os.path.lexists(live["store"].path + ".previous")
    assert live["store"].plan()["action"] == "none"
    assert validate(live)["status"] == "ok"


def test_clean_venv_after_its_python_ran_as_root_also_with_o(live):
    # Issue 10.1's flip side: running the venv's Python (a benchmark as root, with -O, no
    # PYTHONDONTWRITEBYTECODE) must not make the manifest report anything.
    python = os.path.join(live["store"].path, "bin", "python")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for flags in ([], ["-O"], ["-OO"]):
        subprocess.check_call([python] + flags + ["-c", "import alpha, beta, json, importlib.metadata"], env=env)
    assert os.path.isfile(os.path.join(live["site"], m.NO_BYTECODE_PTH))
    assert os.path.isfile(os.path.join(live["site"], "alpha", "__pycache__", "__init__.%s.pyc" % TAG))
    plan, report = plan_and_report(live)
    assert plan["action"] == "none"
    assert report["status"] == "ok", report["problems"]
    assert report["integrity"]["method"] == "manifest" and report["integrity"]["rehashed"] == 0


def test_pth_that_puts_a_fake_package_first(live, tmp_path):
    fake = tmp_path / "evil" / "alpha"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = 'evil'\n")
    with open(os.path.join(live["site"], "00-evil.pth"), "w") as handle:
        handle.write("import sys; sys.path.insert(0, %r)\n" % str(tmp_path / "evil"))
    out = subprocess.check_output([os.path.join(live["real"], "bin", "python"), "-c", "import alpha; print(alpha.__version__)"])
    assert out.strip() == b"evil"  # the tamper works...
    plan, report = plan_and_report(live)  # ...and is caught
    assert_caught(live, plan, report, live["rel"] + "00-evil.pth", "new")
    assert report["drift"]["files"][0]["path"] == live["rel"] + "00-evil.pth"
    assert_replaced(live)


def test_fake_package_directory_dropped_into_site_packages(live):
    fake = os.path.join(live["site"], "numpy")
    os.mkdir(fake)
    with open(os.path.join(fake, "__init__.py"), "w") as handle:
        handle.write("raise SystemExit('fake numpy')\n")
    plan, report = plan_and_report(live)
    assert_caught(live, plan, report, live["rel"] + "numpy/__init__.py", "new")
    assert_caught(live, plan, report, live["rel"] + "numpy", "new")


def _forged_pyc(source_path, code_text):
    """A pyc whose header matches ``source_path`` (flags, mtime, size) but whose code is other."""
    st = os.stat(source_path)
    code = compile(code_text, source_path, "exec")
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + \
        (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + marshal.dumps(code)


def test_hand_made_pyc_whose_header_matches_its_source(live):
    source = os.path.join(live["site"], "beta", "__init__.py")
    pyc = os.path.join(live["site"], "beta", "__pycache__", "__init__.%s.pyc" % TAG)
    with open(pyc, "wb") as handle:
        handle.write(_forged_pyc(source, "__version__ = 'forged'\n"))
    out = subprocess.check_output([os.path.join(live["real"], "bin", "python"), "-c", "import beta; print(beta.__version__)"])
    assert out.strip() == b"forged"  # Python trusts the header
    plan, report = plan_and_report(live)
    # Bytecode belongs to the package of its source.
    assert_caught(live, plan, report, live["rel"] + "beta/__pycache__/__init__.%s.pyc" % TAG, "modified", owner="beta")
    assert_replaced(live)


def test_new_optimized_pyc_nobody_compiled(live):
    source = os.path.join(live["site"], "alpha", "__init__.py")
    pyc = os.path.join(live["site"], "alpha", "__pycache__", "__init__.%s.opt-1.pyc" % TAG)
    with open(pyc, "wb") as handle:
        handle.write(_forged_pyc(source, "__version__ = 'forged'\n"))
    plan, report = plan_and_report(live)
    assert_caught(live, plan, report, live["rel"] + "alpha/__pycache__/__init__.%s.opt-1.pyc" % TAG, "new",
                  owner="alpha")


@pytest.mark.parametrize("cover", ["touch-record", "mtime-set-back"])
def test_same_size_edit_with_its_traces_covered(live, cover):
    # Issue 10.2: an edit of the same size, then `touch RECORD` (or the file's own mtime set
    # back): ctime still moved, and the manifest's fast path keys on it.
    path = os.path.join(live["site"], "alpha", "__init__.py")
    before = os.stat(path)
    time.sleep(0.02)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "r+b") as handle:
        handle.write(data.replace(b"1.0", b"6.6"))
    if cover == "touch-record":
        os.utime(os.path.join(live["site"], "alpha-1.0.dist-info", "RECORD"))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.path.getsize(path) == before.st_size
    plan, report = plan_and_report(live)
    assert_caught(live, plan, report, live["rel"] + "alpha/__init__.py", "modified", owner="alpha")
    assert report["drift"]["tampered"][0]["name"] == "alpha"
    assert_replaced(live)


@pytest.mark.parametrize("case", ["chmod", "bin-script", "python-link", "deleted", "lockstep-env", "activate"])
def test_other_edits_anywhere_in_the_tree(live, case):
    real = live["real"]
    if case == "chmod":
        os.chmod(os.path.join(live["site"], "alpha", "__init__.py"), 0o666)
        path, reason = live["rel"] + "alpha/__init__.py", "mode"
    elif case == "bin-script":
        with open(os.path.join(real, "bin", "activate.csh"), "a") as handle:
            handle.write("setenv PYTHONPATH /tmp/evil\n")
        path, reason = "bin/activate.csh", "modified"
    elif case == "python-link":
        os.unlink(os.path.join(real, "bin", "python"))
        os.symlink("/bin/sh", os.path.join(real, "bin", "python"))
        path, reason = "bin/python", "link"
    elif case == "deleted":
        os.unlink(os.path.join(live["site"], "beta", "__init__.py"))
        path, reason = live["rel"] + "beta/__init__.py", "missing"
    elif case == "lockstep-env":
        with open(os.path.join(real, "lockstep.env"), "a") as handle:
            handle.write("LD_PRELOAD=/tmp/evil.so\n")
        path, reason = "lockstep.env", "modified"
    else:
        with open(os.path.join(real, "bin", "activate"), "a") as handle:
            handle.write("export PATH=/tmp/evil:$PATH\n")
        path, reason = "bin/activate", "modified"
    if case == "python-link":
        plan = live["store"].plan()  # the venv's python does not run: the validator says so too
        report = validate(live)
        assert report["status"] == "drift"
        expected = live["store"].python if os.path.islink(live["store"].python) else None
        assert [p for p in report["problems"] if p.startswith("file bin/python: link (/bin/sh, manifest: ")], \
            (expected, report["problems"])
        assert [(f["path"], f["reason"]) for f in plan["changes"][0]["findings"]] == [(path, reason)]
        return
    plan, report = plan_and_report(live)
    owner = "alpha" if case == "chmod" else "beta" if case == "deleted" else None
    assert_caught(live, plan, report, path, reason, owner=owner)


def test_manifest_deleted_or_corrupted(live):
    location = manifest.location(live["real"])
    os.unlink(location)
    before = snapshot(live["store"].path)
    report = validate(live)
    assert report["status"] == "drift"
    assert report["problems"] == ["integrity: no manifest at %s: the venv cannot be verified (re-run site.yml to "
                                  "build a sealed one)" % location]
    plan = live["store"].plan()
    assert plan["action"] == "build" and plan["drift"] and plan["target"] != live["real"]
    assert snapshot(live["store"].path) == before
    with open(location, "w") as handle:
        handle.write("{truncated")
    report = validate(live)
    assert "is not valid JSON" in report["problems"][0]
    assert_replaced(live)


def test_lockfile_copy_edited_in_the_live_venv_is_replaced_not_an_internal_error(live):
    # Before: complete() said no, the plan targeted the live directory itself, and the
    # build stopped with "internal error: refusing to rebuild the active venv".
    with open(os.path.join(live["real"], m.LOCKFILE_COPY), "a") as handle:
        handle.write("# edited\n")
    plan, report = plan_and_report(live)
    assert plan["drift"] and plan["changes"][0]["files"] == [m.LOCKFILE_COPY]
    assert report["status"] == "drift" and "file lockstep.lock.txt" in report["problems"][0]
    assert_replaced(live)


def test_a_venv_lockstep_did_not_build_is_checked_against_record(live, tmp_path):
    venv = tmp_path / "handmade"
    subprocess.check_call([UV, "venv", "-q", "--python", sys.executable, str(venv)])
    subprocess.check_call([UV, "pip", "sync", "-q", "--offline", "--find-links", live["house"]["dir"],
                           "--cache-dir", str(live["house"]["tmp"] / "cache"), "--python", str(venv / "bin" / "python"),
                           live["store"].lockfile])
    report = validate(live, venv=str(venv))
    assert report["status"] == "ok", report["problems"]
    assert report["checks"]["integrity"] == {
        "outcome": "pass", "message": "no manifest (a venv lockstep.cluster did not build): checked against RECORD only"}
    site = [str(p) for p in venv.glob("lib/python*/site-packages")][0]
    with open(os.path.join(site, "alpha", "__init__.py"), "a") as handle:
        handle.write("# edited\n")
    report = validate(live, venv=str(venv))
    assert report["problems"] == ["tampered alpha: alpha/__init__.py (modified)"]
    assert not os.path.exists(str(venv) + store_fs.MANIFEST_SUFFIX)


@pytest.mark.parametrize("script, message", [
    ("#!/bin/sh\necho 'uv: corrupted' >&2\nexit 1\n", "uv: uv at %s does not run: %s --version exited 1: uv: corrupted"),
    ("#!/bin/sh\necho 'uv 0.1.0'\n", "uv: uv 0.1.0 but 0.13.9 expected"),
])
def test_uv_replaced_by_a_failing_script_or_another_version(live, tmp_path, script, message):
    # Issue 10.7: drift.yml reported ok with a uv that no longer runs.
    fake = tmp_path / "uv"
    fake.write_text(script)
    fake.chmod(0o755)
    facts = validate(live, uv_path=str(fake))
    report = evaluate(parse_lock(live["store"].lock_text, "lock.txt"), facts, uv_version="0.13.9")
    assert report["status"] == "drift"
    assert report["problems"] == [message.replace("%s", str(fake))]
    assert report["checks"]["uv"]["outcome"] == "fail"
