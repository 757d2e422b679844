"""Fault suite, part 3: the store, the manifest and the cache around the venv, with the real uv
(issue 17). Each case asserts the message and that nothing was lost: the live venv byte-identical
(or replaced by a fresh, sealed one), a file a symlink points to untouched."""

import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest, probe, store_fs, venv_store
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils.validate import evaluate

from helpers import BASE_PYTHON, installed, lock_of, make_store, make_wheel, REPO, snapshot, sync, UV, wheelhouse

COLLECTIONS = os.path.join(REPO, ".collections")
NOBODY = 65534
# Holds the store lock as a sync would; "release" on stdin lets go (its note then says
# "released"), "orphan" forks a child that keeps the lock and exits without a word.
HOLDER = """
import os, sys, time
from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs
with store_fs.store_lock(sys.argv[1], 5, "build for a test"):
    print("held", flush=True)
    if sys.stdin.readline().strip() == "orphan":
        child = os.fork()
        if child == 0:
            os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # the test reads stdout to EOF
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        os._exit(0)
"""


@pytest.fixture
def house(tmp_path):
    return wheelhouse(tmp_path)


def alive(pid):
    """Running, not a zombie nobody reaps."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (IOError, OSError):
        return False


def validate(store, **overrides):
    params = dict((k, v.get("default")) for k, v in probe.VALIDATE_OPTIONS.items())
    params.update(venv=store.path, lockfile="lock.txt", mpi=False, uv_path=UV)
    params.update(overrides)
    facts = probe.collect(params, dict(os.environ))
    facts.update(evaluate(parse_lock(store.lock_text, "lock.txt"), facts))
    return facts


def site_of(venv):
    return glob.glob(os.path.join(os.path.realpath(venv), "lib", "python*", "site-packages"))[0]


def holder(store_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, store_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=COLLECTIONS), universal_newlines=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------- the store lock file

@pytest.mark.parametrize("run", ["sync", "rollback"])
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(house, tmp_path, run):
    # Issue 17: the lock file was opened through a symlink and the file it named truncated.
    sync(make_store(house, lock_of(house, ("alpha", "1.0"))))
    live = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(live)
    victim = tmp_path / "precious.conf"
    victim.write_text("do not truncate\n")
    lock = os.path.join(live.store, store_fs.STORE_LOCK)
    os.unlink(lock)
    os.symlink(str(victim), lock)
    before = snapshot(live.path)
    with pytest.raises(SyncError) as err:
        sync(make_store(house, lock_of(house, ("beta", "1.0")))) if run == "sync" else venv_store.rollback(live.path)
    assert err.value.kind == "unsafe-store"
    assert "refusing the lock file %s: it is a symlink (to %s); remove it" % (lock, victim) in err.value.message
    assert victim.read_text() == "do not truncate\n" and os.readlink(lock) == str(victim)
    assert snapshot(live.path) == before


@pytest.mark.parametrize("kind, reason", [
    ("hardlink", "has 2 hard links (another name could change it)"),
    ("fifo", "not a regular file"),
    ("directory", "not a regular file"),
    ("foreign", "owned by uid %d, not root" % NOBODY),
])
def test_a_lock_file_that_is_not_a_root_regular_file_is_refused(house, tmp_path, kind, reason):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    lock = os.path.join(live.store, store_fs.STORE_LOCK)
    os.unlink(lock)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    if kind == "hardlink":
        os.link(str(victim), lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "directory":
        os.mkdir(lock)
    else:
        with open(lock, "w"):
            pass
        os.chown(lock, NOBODY, NOBODY)
    before = snapshot(live.path)
    with pytest.raises(SyncError) as err:
        sync(make_store(house, lock_of(house, ("alpha", "2.0"))))
    assert err.value.kind == "unsafe-store"
    assert "refusing the lock file %s: %s: %s; remove it" % (lock, lock, reason) in err.value.message
    assert victim.read_text() == "keep me\n" and snapshot(live.path) == before


def test_the_timeout_names_the_live_holder_not_the_released_note(house):
    # Issue 17: a process that holds the lock without writing a note (flock(1), an operator's
    # maintenance script) was reported as the dead earlier holder, "doing: released".
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=1)
    os.makedirs(store.store)
    first = holder(store.store)
    first.communicate("release\n")
    assert json.loads(open(os.path.join(store.store, store_fs.STORE_LOCK)).read())["doing"] == "released"
    second = subprocess.Popen(["flock", os.path.join(store.store, store_fs.STORE_LOCK), "sleep", "60"])
    try:
        deadline = time.time() + 10
        while not any(" %d " % second.pid in line for line in open("/proc/locks")) and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(SyncError) as err:
            sync(store)
    finally:
        second.kill()
        second.wait()
    message = err.value.message
    assert err.value.kind == "locked"
    assert "is locked by pid %d (flock, uid 0) on %s, which left no note of what it is doing; the note in the " \
           "lock file is from an earlier holder, pid %d on %s, doing: released" % (
               second.pid, socket.gethostname(), first.pid, socket.gethostname()) in message
    assert not os.path.lexists(store.path)


def test_the_timeout_names_the_child_that_kept_a_dead_holders_lock(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=1)
    os.makedirs(store.store)
    first = holder(store.store)
    out, _err = first.communicate("orphan\n")
    child = int(out.split()[0])
    try:
        assert not alive(first.pid) and alive(child)
        with pytest.raises(SyncError) as err:
            sync(store)
    finally:
        os.kill(child, signal.SIGKILL)
    # /proc/locks still names the dead parent; the child's fdinfo shows it holds the lock.
    assert "is locked by pid %d (python" % child in err.value.message
    assert "the note in the lock file is from an earlier holder, pid %d" % first.pid in err.value.message
    assert "doing: build for a test" in err.value.message


# ---------------------------------------------------------------- the store directory

def test_a_store_others_can_write_is_repaired_and_what_they_could_write_is_not_trusted(house):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    real = os.path.realpath(live.path)
    os.chmod(live.store, 0o777)
    os.chmod(manifest.location(real), 0o666)  # anyone could have rewritten it
    plan = live.plan()  # read-only: predicts, changes nothing
    assert stat_mode(live.store) == 0o777
    assert plan["repairs"] == ["the venv store %s was writable by others (mode 0777): would make it 0755; venvs and "
                               "manifests in it that are not root's are not trusted" % live.store]
    assert plan["action"] == "build" and plan["drift"]
    assert ("%s (not trusted: writable by others (mode 0666))" % manifest.location(real)) in \
        venv_store.describe_findings(plan["changes"][0]["findings"])
    applied = sync(live)
    assert stat_mode(live.store) == 0o755
    assert applied["repairs"][0].startswith("the venv store %s was writable by others (mode 0777): made it 0755"
                                            % live.store)
    assert applied["built"] and os.path.realpath(live.path) != real and applied["previous_kept"] is None
    assert installed(live.path) == {"alpha": "1.0"} and validate(live)["status"] == "ok"
    assert sync(live)["action"] == "none" and not sync(live)["repairs"]


def stat_mode(path):
    return os.stat(path).st_mode & 0o7777


@pytest.mark.parametrize("mode, refused", [(0o777, True), (0o1777, False)])
def test_a_store_under_a_directory_others_can_write(house, mode, refused):
    sync(make_store(house, lock_of(house, ("beta", "1.0"))))
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)  # with a previous venv: rollback gets as far as the store lock
    parent = os.path.dirname(live.store)
    os.chmod(parent, mode)
    before = snapshot(live.path)
    other = make_store(house, lock_of(house, ("alpha", "2.0")))
    try:
        if not refused:  # sticky: others cannot rename what root owns in it
            assert sync(other)["built"]
            return
        for attempt in (other.plan, lambda: sync(other), lambda: venv_store.rollback(live.path)):
            with pytest.raises(SyncError) as err:
                attempt()
            assert err.value.kind == "unsafe-store"
            assert "%s: writable by others (mode 0777)" % parent in err.value.message
        assert snapshot(live.path) == before
    finally:
        os.chmod(parent, 0o755)


# ---------------------------------------------------------------- two venv paths, one lock

def test_two_venv_paths_synced_from_one_lock_never_share_nor_prune_each_other(house):
    # Issue 17: both paths pointed at one directory; a new lock for one pruned the other's venv.
    text = lock_of(house, ("alpha", "1.0"))
    one = make_store(house, text, keep=1)
    two = make_store(house, text, keep=1, path=str(house["tmp"] / "opt" / "venv-b"))
    sync(one)
    sync(two)
    assert one.target != two.target and os.path.realpath(one.path) != os.path.realpath(two.path)
    before = snapshot(two.path)
    for pins in ((("alpha", "2.0"),), (("beta", "1.0"),)):
        applied = sync(make_store(house, lock_of(house, *pins), keep=1))
    assert one.target in applied["pruned"]
    assert snapshot(two.path) == before and installed(two.path) == {"alpha": "1.0"}
    assert not venv_store.sealed_findings(two.path)


def test_a_directory_two_paths_shared_under_the_old_layout_is_not_pruned(house):
    one = make_store(house, lock_of(house, ("alpha", "1.0")), keep=1)
    sync(one)
    shared = str(house["tmp"] / "opt" / "venv-b")
    os.symlink(one.target, shared)  # as the old key (without venv_path) left it
    for pins in ((("alpha", "2.0"),), (("beta", "1.0"),)):
        applied = sync(make_store(house, lock_of(house, *pins), keep=1))
    assert one.target not in applied["pruned"] and os.path.isdir(one.target)
    assert installed(shared) == {"alpha": "1.0"}


# ---------------------------------------------------------------- owners and modes

@pytest.mark.parametrize("rel, problem", [
    ("alpha/__init__.py", "tampered alpha: alpha/__init__.py (owner %d:%d, manifest: 0:0)" % (NOBODY, NOBODY)),
    ("bin/activate", "file bin/activate: owner (%d:%d, manifest: 0:0)" % (NOBODY, NOBODY)),
])
def test_files_handed_to_the_benchmark_user_are_tampering(house, rel, problem):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    real = os.path.realpath(live.path)
    path = os.path.join(site_of(real), rel) if rel.startswith("alpha") else os.path.join(real, rel)
    os.chown(path, NOBODY, NOBODY)
    before = snapshot(live.path)
    report = validate(live)
    assert report["status"] == "drift" and problem in report["problems"], report["problems"]
    assert report["checks"]["integrity"]["outcome"] == "fail"
    plan = live.plan()
    assert plan["action"] == "build" and plan["drift"]
    assert snapshot(live.path) == before
    applied = sync(live)
    assert applied["built"] and applied["previous_kept"] is None
    fresh = os.path.join(site_of(live.path), rel) if rel.startswith("alpha") else \
        os.path.join(os.path.realpath(live.path), rel)
    assert os.stat(fresh).st_uid == 0 and validate(live)["status"] == "ok"


def test_an_unsafe_store_is_a_drift_failure_with_each_path(house):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    real = os.path.realpath(live.path)
    lock = os.path.join(live.store, store_fs.STORE_LOCK)
    os.chmod(live.store, 0o777)
    os.chmod(real, 0o775)
    os.chown(manifest.location(real), NOBODY, 0)
    os.chmod(lock, 0o666)
    before = snapshot(live.path)
    report = validate(live, verify_all_files=True)
    assert snapshot(live.path) == before
    unsafe = [p for p in report["problems"] if p.startswith("integrity: unsafe store: ")]
    assert unsafe == [
        "integrity: unsafe store: %s: writable by others (mode 0777)" % live.store,
        "integrity: unsafe store: %s: writable by its group (mode 0775)" % real,
        "integrity: unsafe store: %s: owned by uid %d, not root" % (manifest.location(real), NOBODY),
        "integrity: unsafe store: %s: writable by others (mode 0666)" % lock,
    ], report["problems"]
    assert report["status"] == "drift" and report["checks"]["integrity"]["outcome"] == "fail"


ATTACK = """
import glob, json, os, shutil, sys
from ansible_collections.lockstep.cluster.plugins.module_utils import manifest
store, live = sys.argv[1], sys.argv[2]
copy = os.path.join(store, "evil")
shutil.copytree(live, copy, symlinks=True)
target = glob.glob(os.path.join(copy, "lib", "python*", "site-packages", "alpha", "__init__.py"))[0]
with open(target, "a") as handle:
    handle.write("__version__ = 'pwned'\\n")
shutil.rmtree(os.path.join(os.path.dirname(target), "__pycache__"))  # the sealed bytecode would win
os.rename(live, os.path.join(store, ".old"))
os.rename(copy, live)
tmp = os.path.join(store, ".m")
with open(tmp, "w") as handle:
    json.dump(manifest.build(live), handle)
os.rename(tmp, manifest.location(live))
print("swapped")
"""


@pytest.fixture
def public_house():
    """A wheelhouse under a directory the benchmark user (nobody) can traverse."""
    base = tempfile.mkdtemp(prefix="lockstep-hostile-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        yield wheelhouse(Path(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_benchmark_user_swaps_the_live_venv_in_a_store_others_can_write(public_house):
    # Issue 17: with the store world-writable, the benchmark user replaced the live venv by an
    # edited copy and wrote a matching manifest: drift said ok, even re-hashing every file.
    house = public_house
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    real = os.path.realpath(live.path)
    os.chmod(live.store, 0o777)
    out = subprocess.run([BASE_PYTHON, "-c", ATTACK, live.store, real], user=NOBODY, group=NOBODY, extra_groups=[],
                         env=dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE="1"),
                         capture_output=True, universal_newlines=True, check=False)
    assert out.stdout.strip() == "swapped", out.stderr
    python = os.path.join(live.path, "bin", "python")
    assert subprocess.check_output([python, "-c", "import alpha; print(alpha.__version__)"]).strip() == b"pwned"
    report = validate(live, verify_all_files=True)
    assert report["integrity"]["findings"] == []  # the tree matches the rewritten manifest...
    assert report["status"] == "drift"  # ...and it still fails, with who could do it
    for line in ("integrity: unsafe store: %s: writable by others (mode 0777)" % live.store,
                 "integrity: unsafe store: %s: owned by uid %d, not root" % (real, NOBODY),
                 "integrity: unsafe store: %s: owned by uid %d, not root" % (manifest.location(real), NOBODY)):
        assert line in report["problems"], report["problems"]
    applied = sync(live)  # site.yml: repairs the store, distrusts the swapped venv, builds fresh
    assert applied["repairs"] and applied["drift"] and applied["built"] and applied["previous_kept"] is None
    assert subprocess.check_output([python, "-c", "import alpha; print(alpha.__version__)"]).strip() == b"1.0"
    assert validate(live, verify_all_files=True)["status"] == "ok"


# ---------------------------------------------------------------- same lock, same bytes

def _tool_wheel(house):
    house["sha"][("tool", "1.0")] = make_wheel(house["dir"], "tool", "1.0", body="def main():\n    return 0\n",
                                               extra_files={"tool-1.0.dist-info/entry_points.txt":
                                                            "[console_scripts]\ntool = tool:main\n"})[1]


def test_same_lock_same_bytes_on_two_hosts(house):
    # Two "hosts": one venv_path, two stores (so two real directories, as the store dir or
    # the MPI environment in the key make them differ): the bytes must be the same anyway.
    _tool_wheel(house)
    text = lock_of(house, ("alpha", "1.0"), ("tool", "1.0"))
    digests, sealed = [], []
    for store_dir in ("venvs-host-a", "store-of-host-bb"):
        store = make_store(house, text, store=str(house["tmp"] / store_dir))
        if os.path.lexists(store.path):
            os.unlink(store.path)
        sync(store)
        data = manifest.load(manifest.location(store.path))
        sealed.append(data)
        digests.append(manifest.content_digest(data))
    one, two = (s["entries"] for s in sealed)
    assert one["bin/tool"][3] != two["bin/tool"][3]  # its shebang names each venv's own directory...
    assert one["bin/tool"][10] == two["bin/tool"][10]  # ...which the portable hash leaves out
    pycs = sorted(rel for rel in one if rel.endswith(".pyc"))
    assert pycs and [one[r][3] for r in pycs] == [two[r][3] for r in pycs]  # bytecode is reproducible
    assert digests[0] == digests[1]
    assert sorted(digests[0]["by_package"]) == ["(venv)", "alpha", "tool"]


def test_same_bytes_when_the_venvs_python_ran_before_the_compile_and_uv_stamped_its_install(house, monkeypatch):
    # What the MLPerf lock showed on the lab: setuptools' .pth imports a module at every start,
    # so the venv's Python wrote a timestamp pyc (the install time is its mtime) before the
    # compile step. And uv stamps uv_cache.json of a wheel from find-links with its install time.
    real_compile = venv_store.VenvStore._compile

    def python_ran_first(self, target):
        source = os.path.join(site_of(target), "alpha", "__init__.py")
        os.utime(source, (time.time(), time.time()))  # this host's install time
        writes = dict((k, v) for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE")
        subprocess.check_call([os.path.join(target, "bin", "python"), "-c", "import alpha"], env=writes)
        return real_compile(self, target)

    monkeypatch.setattr(venv_store.VenvStore, "_compile", python_ran_first)
    text = lock_of(house, ("alpha", "1.0"))
    digests = []
    for store_dir in ("venvs-host-a", "store-of-host-bb"):
        store = make_store(house, text, store=str(house["tmp"] / store_dir))
        if os.path.lexists(store.path):
            os.unlink(store.path)
        os.utime(house["dir"])  # another install time
        time.sleep(1.1)
        sync(store)
        sealed = manifest.load(manifest.location(store.path))
        digests.append(manifest.content_digest(sealed))
        for pyc in glob.glob(os.path.join(site_of(store.path), "alpha", "__pycache__", "*.pyc")):
            with open(pyc, "rb") as handle:
                assert handle.read(8)[4:] == b"\x01\x00\x00\x00", pyc  # hash-based, unchecked
    assert digests[0] == digests[1]
    # uv_cache.json (uv's install time of a wheel from a local file) is per host, like RECORD.
    stamp = "lib/python3.11/site-packages/alpha-1.0.dist-info/uv_cache.json"
    assert manifest.per_host(stamp) and not manifest.per_host("lib/python3.11/site-packages/alpha/uv_cache.json")
    sealed["entries"][stamp] = list(sealed["entries"]["lib/python3.11/site-packages/alpha/__init__.py"])
    assert manifest.content_digest(sealed) == digests[1]


def test_the_content_digest_names_the_package_whose_bytes_differ(house):
    live = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")))
    sync(live)
    real = os.path.realpath(live.path)
    clean = manifest.content_digest(manifest.load(manifest.location(real)))
    report = validate(live)
    assert report["integrity"]["content_digest"] == clean
    with open(os.path.join(site_of(real), "beta", "__init__.py"), "a") as handle:
        handle.write("# poisoned\n")
    other = manifest.content_digest(manifest.build(real))  # a host that sealed these bytes
    assert other["sha256"] != clean["sha256"]
    assert [n for n in clean["by_package"] if clean["by_package"][n] != other["by_package"][n]] == ["beta"]


def _poison_cache(house):
    """Edit alpha 1.0 in uv's cache together with its RECORD line: the RECORD check passes."""
    poisoned = 0
    for path in glob.glob(str(house["tmp"] / "cache" / "archive-v0" / "*" / "alpha" / "__init__.py")):
        data = open(path, "rb").read() + b"POISON = True\n"
        with open(path, "wb") as handle:
            handle.write(data)
        record = glob.glob(os.path.join(os.path.dirname(os.path.dirname(path)), "alpha-1.0.dist-info", "RECORD"))[0]
        rows = open(record).read().splitlines()
        digest = __import__("base64").urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
        rows = ["alpha/__init__.py,sha256=%s,%d" % (digest, len(data)) if r.startswith("alpha/__init__.py,") else r
                for r in rows]
        with open(record, "w") as handle:
            handle.write("\n".join(rows) + "\n")
        poisoned += 1
    assert poisoned


@pytest.mark.parametrize("sealed_before", [True, False])
def test_a_cache_entry_edited_with_its_record_line_is_not_sealed(house, sealed_before):
    copy = {"link_mode": "copy"}
    first = make_store(house, lock_of(house, ("alpha", "1.0")), runner=copy, expected={"alpha": "1.0"})
    applied = sync(first)
    assert applied["cache_check"] == {"refreshed": "all", "trusted": 0, "replaced": []}
    _poison_cache(house)
    store_dir = None if sealed_before else str(house["tmp"] / "elsewhere")
    second = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")), runner=copy, store=store_dir,
                        path=str(house["tmp"] / "opt" / "venv2"), expected={"alpha": "1.0", "beta": "1.0"})
    applied = sync(second)
    text = open(os.path.join(site_of(second.path), "alpha", "__init__.py")).read()
    assert "POISON" not in text
    if sealed_before:  # alpha 1.0 was sealed in this store: taken from the cache, found different
        assert applied["cache_check"] == {"refreshed": ["beta"], "trusted": 1, "replaced": ["alpha==1.0"]}
    else:  # nothing sealed here yet: everything is fetched again
        assert applied["cache_check"] == {"refreshed": "all", "trusted": 0, "replaced": []}
    assert validate(second)["status"] == "ok"


def test_a_warm_build_takes_what_the_store_already_sealed_from_the_cache(house):
    copy = {"link_mode": "copy"}
    sync(make_store(house, lock_of(house, ("alpha", "1.0")), runner=copy, expected={"alpha": "1.0"}))
    second = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")), runner=copy,
                        expected={"alpha": "1.0", "beta": "1.0"})
    applied = sync(second)
    assert applied["cache_check"] == {"refreshed": ["beta"], "trusted": 1, "replaced": []}
    sync_argv = [c["argv"] for c in second.uv.commands if c["argv"][1:3] == ["pip", "sync"] and "--check" not in c["argv"]]
    clean = [c["argv"] for c in second.uv.commands if c["argv"][1:3] == ["cache", "clean"]]
    assert clean == [[UV, "cache", "clean", "beta", "--cache-dir", str(house["tmp"] / "cache"), "--offline"]]
    assert len(sync_argv) == 1
    # beta's old copy is unreachable now: pruned, so refetching never grows the cache for good
    assert [c["argv"][1:3] for c in second.uv.commands].count(["cache", "prune"]) == 1


# ---------------------------------------------------------------- killed and hung builds

def slow_uv(tmp_path, seconds):
    wrapper = tmp_path / "uv-slow"
    wrapper.write_text(textwrap.dedent("""\
        #!/bin/sh
        case " $* " in
          *" pip sync "*" --check "*) exec %(uv)s "$@" ;;
          *" pip sync "*) echo $$ > %(pidfile)s; sleep %(seconds)s; exec %(uv)s "$@" ;;
          *) exec %(uv)s "$@" ;;
        esac
        """ % {"uv": UV, "seconds": seconds, "pidfile": tmp_path / "uv.pid"}))
    wrapper.chmod(0o755)
    return str(wrapper)


def _wait_for(path, seconds=30):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists()
    time.sleep(0.1)
    return int(path.read_text())


def test_a_module_killed_mid_build_takes_uv_along_and_the_next_run_is_clean(house, tmp_path):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    before = snapshot(live.path)
    killed = make_store(house, lock_of(house, ("alpha", "2.0")), uv=slow_uv(tmp_path, 60))
    child = multiprocessing.get_context("fork").Process(target=lambda: sync(killed))
    child.start()
    uv_pid = _wait_for(tmp_path / "uv.pid")
    os.kill(child.pid, signal.SIGKILL)  # as the OOM killer or a task timeout kills the module
    child.join()
    deadline = time.time() + 5
    while alive(uv_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(uv_pid)  # it died with the module: nothing writes into the dead build
    assert snapshot(live.path) == before
    assert os.path.exists(killed.target + store_fs.BUILDING_SUFFIX)
    again = make_store(house, lock_of(house, ("alpha", "2.0")))
    assert sync(again)["built"] and installed(again.path) == {"alpha": "2.0"}
    assert not [n for n in os.listdir(again.store) if n.endswith(store_fs.BUILDING_SUFFIX)]
    assert not venv_store.sealed_findings(again.path)


def test_a_hung_uv_is_reported_as_timed_out_and_leaves_nothing(house, tmp_path):
    live = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(live)
    before = snapshot(live.path)
    hung = make_store(house, lock_of(house, ("alpha", "2.0")), uv=slow_uv(tmp_path, 60), runner={"timeout": 2})
    with pytest.raises(SyncError) as err:
        sync(hung)
    assert err.value.kind == "killed"
    assert err.value.message.startswith("uv timed out after 2s (its process group was killed) while syncing tests.txt;")
    assert not alive(int((tmp_path / "uv.pid").read_text()))
    assert snapshot(live.path) == before
    name = os.path.basename(before[0])
    assert sorted(os.listdir(live.store)) == sorted([store_fs.STORE_LOCK, name, name + store_fs.MANIFEST_SUFFIX])
