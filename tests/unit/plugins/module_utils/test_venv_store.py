"""roles/venv's engine on the host: plugins/module_utils/venv_store.py (and store_fs).

A venv's stem, key recipe and uv.toml; ``lockstep.env``, its one writer and one reader; and the
store, run with the real uv against a local wheelhouse of tiny hand-made wheels (offline,
seconds): first sync, no-op, new lock, rollback, and every failure that must leave ``current``
exactly as it was (bad hash, uv killed mid-sync, failed validation, offline with a cold cache,
no network, a Python too old, a path that is not a venv). Then runs that overlap, die or roll
back (issue 10.4, 10.5, 10.8): every refusal names its cause and leaves the live venv
byte-identical."""

import glob
import json
import multiprocessing
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.lockstep.cluster.plugins.module_utils import manifest, store_fs, venv_store
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError

from helpers import (
    FAKE_INIT,
    FAKE_MPI,
    HYDRA_LAUNCHER,
    installed,
    lock_of,
    lock_text,
    make_store,
    make_wheel,
    OMPI_LAUNCHER,
    REPO,
    snapshot,
    sync,
    UV,
    wheelhouse,
)


@pytest.fixture
def house(tmp_path):
    return wheelhouse(tmp_path)


# ---------------------------------------------------------------- pure helpers

def test_inspect_path(tmp_path):
    venv = tmp_path / "v"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    (tmp_path / "link").symlink_to(venv)
    (tmp_path / "bad").symlink_to(plain)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert store_fs.inspect_path(str(tmp_path / "absent")) == ("absent", None)
    assert store_fs.inspect_path(str(tmp_path / "link"))[0] == "link"
    assert store_fs.inspect_path(str(tmp_path / "bad"))[0] == "not-venv"
    assert store_fs.inspect_path(str(tmp_path / "gone"))[0] == "dangling"
    assert store_fs.inspect_path(str(venv))[0] == "venv-dir"
    assert store_fs.inspect_path(str(plain))[0] == "not-venv"


def test_flip_link_is_a_rename(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    link = str(tmp_path / "current")
    store_fs.flip_link(link, str(a))
    inode = os.lstat(link).st_ino
    store_fs.flip_link(link, str(b))
    assert os.readlink(link) == str(b)
    assert os.lstat(link).st_ino != inode  # replaced, not rewritten
    assert sorted(os.listdir(str(tmp_path))) == ["a", "b", "current"]  # no temp link left


def test_prune_keeps_protected_and_newest(tmp_path):
    store = tmp_path / "store"
    store.mkdir()

    def venv(name, created, path="/opt/venv"):
        d = store / name
        d.mkdir()
        (d / "pyvenv.cfg").write_text("")
        (d / store_fs.META_FILE).write_text(json.dumps({"created": created, "path": path}))
        (store / (name + store_fs.MANIFEST_SUFFIX)).write_text("{}")  # sealed = complete
        return str(d)

    old, mid, new, cur = (venv("x-%012x" % i, i) for i in (1, 2, 3, 4))
    other = venv("y-%012x" % 9, 0, path="/opt/other")
    partial = store / ("x-%012x" % 5)
    partial.mkdir()  # interrupted build: no metadata
    foreign = store / "not-ours"
    foreign.mkdir()
    removed = store_fs.prune(str(store), "/opt/venv", "x", [cur, old], keep=3)
    assert sorted(removed) == sorted([mid, str(partial)])
    assert os.path.isdir(new) and os.path.isdir(old) and os.path.isdir(cur)
    assert os.path.isdir(other) and foreign.is_dir()


def test_rollback_requires_a_previous(tmp_path):
    with pytest.raises(SyncError) as err:
        venv_store.rollback(str(tmp_path / "venv"))
    assert "nothing to roll back" in err.value.message


# ---------------------------------------------------------------- store, with real uv

def test_first_sync_noop_new_lock_and_rollback(house):
    first = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")), env={"MPI4PY_MPIABI": "openmpi"})
    applied = sync(first)
    assert applied["action"] == "build" and applied["current"] is None and applied["built"]
    current = first.path
    assert os.path.islink(current) and os.path.realpath(current) == first.target
    assert installed(current) == {"alpha": "1.0", "beta": "1.0"}
    venv = os.path.realpath(current)
    assert venv_store.parse_env_file(open(os.path.join(venv, venv_store.ENV_FILE)).read()) == {"MPI4PY_MPIABI": "openmpi"}
    assert venv_store.HOOK_BEGIN in open(os.path.join(venv, "bin", "activate")).read()
    assert open(os.path.join(venv, venv_store.LOCKFILE_COPY)).read() == first.lock_text
    assert store_fs.read_meta(venv)["key"] == first.key

    # The activate hook exports lockstep.env.
    out = subprocess.check_output(["bash", "-c", ". %s/bin/activate && echo $MPI4PY_MPIABI" % current],
                                  universal_newlines=True)
    assert out.strip() == "openmpi"

    # Same lock, same venv: uv says in sync -> nothing to do.
    again = make_store(house, first.lock_text, env={"MPI4PY_MPIABI": "openmpi"})
    assert again.plan()["action"] == "none"

    # New lock: a new venv, the old one becomes `previous`, current flips.
    second = make_store(house, lock_of(house, ("alpha", "2.0"), ("gamma", "1.0")), env={"MPI4PY_MPIABI": "openmpi"})
    applied = sync(second)
    assert applied["action"] == "build" and applied["current"] == venv
    assert os.path.realpath(current) == second.target
    assert os.path.realpath(current + ".previous") == venv
    assert installed(current) == {"alpha": "2.0", "gamma": "1.0"}
    assert installed(venv) == {"alpha": "1.0", "beta": "1.0"}  # the old venv was not touched

    # Rollback swaps current and previous; re-applying the first lock is then a no-op.
    old, new = venv_store.rollback(current)
    assert (old, new) == (second.target, venv)
    assert os.path.realpath(current) == venv and os.path.realpath(current + ".previous") == second.target
    assert make_store(house, first.lock_text, env={"MPI4PY_MPIABI": "openmpi"}).plan()["action"] == "none"

    # ...and the second lock now only needs a flip to its kept venv, no rebuild.
    forward = make_store(house, second.lock_text, env={"MPI4PY_MPIABI": "openmpi"})
    assert forward.plan()["action"] == "flip"


def test_env_change_builds_a_new_venv(house):
    text = lock_of(house, ("alpha", "1.0"))
    first = make_store(house, text, env={"MPI4PY_MPIABI": "openmpi"})
    sync(first)
    switched = make_store(house, text, env={"MPI4PY_MPIABI": "mpich"})
    plan = switched.plan()
    assert plan["action"] == "build" and plan["target"] != first.target
    described = switched.describe(plan)
    assert described["before"] == {"alpha": "1.0"}  # same packages, new environment
    assert described["before_env"] == {"MPI4PY_MPIABI": "openmpi"}
    assert described["after_env"] == {"MPI4PY_MPIABI": "mpich"}
    sync(switched)
    assert venv_store.parse_env_file(open(os.path.join(first.path, venv_store.ENV_FILE)).read()) == {"MPI4PY_MPIABI": "mpich"}
    assert venv_store.parse_env_file(open(os.path.join(first.target, venv_store.ENV_FILE)).read()) == {"MPI4PY_MPIABI": "openmpi"}


def test_plan_and_describe_change_nothing(house):
    first = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")))
    # Fresh host: plan says build, describe has no "after" (the controller predicts it from
    # the lock), and nothing is written.
    plan = first.plan()
    assert plan["action"] == "build" and "after" not in first.describe(plan)
    assert first.describe(plan)["before"] == {}
    assert not os.path.lexists(first.path) and not os.path.exists(first.store)
    sync(first)
    state = snapshot(first.path)
    second = make_store(house, lock_of(house, ("alpha", "2.0"), ("beta", "1.0")))
    plan = second.plan()
    assert plan["action"] == "build"
    assert second.describe(plan)["before"] == {"alpha": "1.0", "beta": "1.0"}
    assert snapshot(first.path) == state
    name = os.path.basename(first.target)
    assert sorted(os.listdir(first.store)) == sorted([".lockstep.lock", name, name + store_fs.MANIFEST_SUFFIX])


def test_a_converged_venv_whose_files_match_its_manifest_is_not_checked_by_uv_again(house, monkeypatch):
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(store)
    asked = []
    real = store.uv.sync
    monkeypatch.setattr(store.uv, "sync", lambda *a, **k: asked.append(k) or real(*a, **k))
    assert store.plan()["action"] == "none" and asked == []
    # Files not checked: uv's check is the only answer, so it runs.
    store.verify_files = False
    assert store.plan()["action"] == "none" and [k.get("check") for k in asked] == [True]


def test_drifted_live_venv_is_replaced_not_repaired(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(store)
    live = os.path.realpath(store.path)
    subprocess.check_call([UV, "pip", "install", "--quiet", "--offline", "--find-links", house["dir"],
                           "--cache-dir", str(house["tmp"] / "cache"),
                           "--python", os.path.join(live, "bin", "python"), "gamma==1.0"])
    plan = store.plan()
    assert plan["action"] == "build" and plan["drift"]
    assert plan["target"] != live and plan["target"].startswith(store.target + "-")
    applied = sync(store)
    assert applied["drift"] and applied["current"] == live
    assert installed(store.path) == {"alpha": "1.0"}
    assert installed(live) == {"alpha": "1.0", "gamma": "1.0"}  # left as found, for a look
    # ...but never as the rollback target: there was no clean one before it, so none now.
    assert applied["previous_kept"] is None and not os.path.lexists(store.path + ".previous")
    assert store.plan()["action"] == "none"


@pytest.mark.parametrize("verify_files, link_mode", [(True, "copy"), (True, "hardlink"), (False, "copy")])
def test_edited_file_in_live_venv(house, verify_files, link_mode):
    # With hardlink the edit also lands in uv's cache: the rebuild must not copy it back.
    store = make_store(house, lock_of(house, ("alpha", "1.0")), runner={"link_mode": link_mode},
                       verify_files=verify_files)
    sync(store)
    live = os.path.realpath(store.path)
    module = glob.glob(os.path.join(live, "lib", "python*", "site-packages", "alpha", "__init__.py"))[0]
    with open(module, "a") as handle:
        handle.write("print('edited')\n")
    plan = store.plan()
    if not verify_files:
        assert plan["action"] == "none"  # uv alone does not see it
        return
    assert plan["action"] == "build" and plan["drift"]
    assert [(c["name"], c["action"], c["files"]) for c in plan["changes"]] == [
        ("alpha", "tampered", ["alpha/__init__.py"])]
    sync(store)
    fresh = glob.glob(os.path.join(store.path, "lib", "python*", "site-packages", "alpha", "__init__.py"))[0]
    assert "edited" not in open(fresh).read()
    assert "edited" in open(module).read()  # the old venv is left as found (not as `previous`)
    assert not os.path.samefile(fresh, module)
    assert store.plan()["action"] == "none"


def test_poisoned_cache_is_purged_before_the_flip(house):
    # A hardlinked venv edited in place poisons uv's cache; the next new venv (another lock)
    # would get the edited file from it. The role checks a new venv before flipping to it.
    first = make_store(house, lock_of(house, ("alpha", "1.0")), runner={"link_mode": "hardlink"})
    sync(first)
    module = glob.glob(os.path.join(first.path, "lib", "python*", "site-packages", "alpha", "__init__.py"))[0]
    with open(module, "a") as handle:
        handle.write("print('edited')\n")
    second = make_store(house, lock_of(house, ("alpha", "1.0"), ("beta", "1.0")), runner={"link_mode": "copy"},
                        verify_files=True)
    sync(second)
    fresh = glob.glob(os.path.join(second.path, "lib", "python*", "site-packages", "alpha", "__init__.py"))[0]
    assert os.path.realpath(second.path) == second.target
    assert "edited" not in open(fresh).read()


def _assert_failure_leaves_current(house, bad_store, kind, before):
    with pytest.raises(SyncError) as err:
        sync(bad_store)
    assert err.value.kind == kind, err.value.message
    assert snapshot(bad_store.path) == before
    # The half-built venv is gone; only the live venv, its manifest and the store lock remain.
    name = os.path.basename(before[0])
    assert sorted(os.listdir(bad_store.store)) == sorted([".lockstep.lock", name, name + store_fs.MANIFEST_SUFFIX])
    return err.value


def test_bad_hash_leaves_current_untouched(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    bad = make_store(house, lock_text([("alpha", "2.0", "0" * 64)]))
    error = _assert_failure_leaves_current(house, bad, "hash", before)
    assert "hash" in error.message


def test_uv_killed_mid_sync_leaves_current_untouched(house, tmp_path):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    # A uv that gets SIGKILLed during the real sync (not during --check or venv creation).
    wrapper = tmp_path / "uv-killed"
    wrapper.write_text(textwrap.dedent("""\
        #!/bin/sh
        case " $* " in
          *" pip sync "*" --check "*|*" --dry-run "*) exec %(uv)s "$@" ;;
          *" pip sync "*) %(uv)s "$@" & sleep 0.2; kill -9 $! 2>/dev/null; kill -9 $$ ;;
          *) exec %(uv)s "$@" ;;
        esac
        """ % {"uv": UV}))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    killed = make_store(house, lock_of(house, ("alpha", "2.0"), ("beta", "1.0")), uv=str(wrapper))
    error = _assert_failure_leaves_current(house, killed, "killed", before)
    assert "killed by SIGKILL" in error.message


def test_failed_validation_leaves_current_untouched(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    bad = make_store(house, lock_of(house, ("alpha", "1.0"), ("broken", "1.0")), validate_imports=["broken"])
    error = _assert_failure_leaves_current(house, bad, "validate", before)
    assert "broken on purpose" in error.message


def test_expected_set_from_the_controller_must_match(house):
    # uv says the venv is the lock; the controller's reading of the lock says otherwise
    # (e.g. a marker uv and packaging disagree on): refuse the flip, name the package.
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    bad = make_store(house, lock_of(house, ("alpha", "2.0"), ("beta", "1.0")), expected={"alpha": "2.0"})
    error = _assert_failure_leaves_current(house, bad, "validate", before)
    assert "beta: 1.0 installed, none locked" in error.message


def test_lockfile_on_the_host_must_be_the_controllers(house, tmp_path):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    other = tmp_path / "other.txt"
    other.write_text(lock_of(house, ("alpha", "2.0")))
    with pytest.raises(SyncError) as err:
        good.sync(str(other))
    assert err.value.kind == "input" and good.lockfile_sha256 in err.value.message
    assert not os.path.lexists(good.path)


def test_edited_lockfile_copy_in_the_live_venv_means_rebuild(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(store)
    with open(os.path.join(store.target, venv_store.LOCKFILE_COPY), "a") as handle:
        handle.write("# edited\n")
    assert store.plan()["action"] == "build"


def test_offline_cold_cache_is_one_clear_message(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    cold = make_store(house, lock_of(house, ("alpha", "2.0")), find_links=False,
                      runner={"cache_dir": str(house["tmp"] / "cold-cache")})
    error = _assert_failure_leaves_current(house, cold, "offline", before)
    assert "cold-cache" in error.message


def test_no_network_is_one_clear_message(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    unreachable = make_store(house, lock_of(house, ("alpha", "2.0")), offline=False, find_links=False,
                             runner={"cache_dir": str(house["tmp"] / "cold-cache"),
                                     "index_url": "http://127.0.0.1:9/simple"})
    error = _assert_failure_leaves_current(house, unreachable, "network", before)
    assert "network" in error.message


def test_lock_needing_newer_python_is_one_clear_message(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    future = make_store(house, lock_of(house, ("future", "1.0")), offline=False, find_links=False,
                        runner={"index_url": house["index"]})
    error = _assert_failure_leaves_current(house, future, "python", before)
    assert ">=3.99" in error.message


@pytest.mark.parametrize("source", ["index", "offline-cache", "wheelhouse"])
def test_local_version_pin_names_the_variables_that_give_hosts_its_file(house, source):
    # The lab's old hint failed like this in 0.5 s: "no version of torch==2.13.0+cpu". Each
    # way uv words it (an index, an offline cache, --no-index) must name where the file comes from.
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    (house["tmp"] / "simple" / "alpha").mkdir()
    (house["tmp"] / "simple" / "alpha" / "index.html").write_text("")  # the index knows no alpha file
    text = lock_text([("alpha", "1.0+cpu", house["sha"][("alpha", "1.0")])])
    options = {"index": dict(offline=False, runner={"index_url": house["index"]}),
               "offline-cache": dict(find_links=False, runner={"cache_dir": str(house["tmp"] / "cold")}),
               "wheelhouse": dict(find_links=False, runner={"wheelhouse": house["dir"]})}[source]
    bad = make_store(house, text, **options)
    error = _assert_failure_leaves_current(house, bad, "local-version", before)
    assert "alpha==1.0+cpu" in error.message
    for variable in ("venv_wheelhouse_find_links", "venv_find_links", "venv_extra_index_urls"):
        assert variable in error.message


def test_local_version_pins_only_for_local_labels():
    from ansible_collections.lockstep.cluster.plugins.module_utils.uv import local_version_pins

    assert local_version_pins("Because there is no version of torch==2.13.0+cpu and you require "
                              "torch==2.13.0+cpu, we can conclude") == ["torch==2.13.0+cpu"]
    assert local_version_pins("Because there is no version of numpy==9.9 and you require numpy==9.9") == []
    assert local_version_pins("Hash mismatch for torch==2.13.0+cpu") == []


def test_interrupted_build_is_cleaned_up_next_run(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    os.makedirs(store.target)
    open(os.path.join(store.target, "pyvenv.cfg"), "w").close()  # killed before lockstep.json
    assert store.plan()["action"] == "build"
    sync(store)
    assert installed(store.path) == {"alpha": "1.0"}


@pytest.mark.parametrize("kind", ["file", "dir", "venv-dir", "link-to-dir"])
def test_path_that_is_not_our_symlink_is_refused(house, kind):
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    os.makedirs(os.path.dirname(store.path))
    if kind == "file":
        open(store.path, "w").write("keep me")
    elif kind == "dir":
        os.makedirs(store.path)
        open(os.path.join(store.path, "data"), "w").write("keep me")
    elif kind == "venv-dir":
        os.makedirs(store.path)
        open(os.path.join(store.path, "pyvenv.cfg"), "w").write("home = /usr/bin\n")
    else:
        other = str(house["tmp"] / "elsewhere")
        os.makedirs(other)
        os.symlink(other, store.path)
    with pytest.raises(SyncError) as err:
        store.plan()
    assert err.value.kind == "not-venv"
    assert store.path in err.value.message
    assert os.path.lexists(store.path) and not os.path.exists(store.store)


@pytest.mark.parametrize("link_mode, shared", [("copy", False), ("hardlink", True)])
def test_link_mode_decides_whether_the_venv_shares_inodes_with_the_cache(house, link_mode, shared):
    # With hardlinks an in-place edit of a venv file also edits uv's cache (and the rollback
    # venv): the drift validator's tamper finding would then survive a re-sync.
    store = make_store(house, lock_of(house, ("alpha", "1.0")), runner={"link_mode": link_mode})
    sync(store)
    site = glob.glob(os.path.join(store.target, "lib", "python*", "site-packages"))[0]
    files = [os.path.join(root, n) for root, _d, names in os.walk(site) for n in names
             if "alpha" in os.path.relpath(os.path.join(root, n), site) and n.endswith(".py")]
    assert files
    assert all((os.stat(f).st_nlink > 1) is shared for f in files)


def test_lock_stem():
    assert venv_store.lock_stem("lockfiles/smoke-cpu.txt") == "smoke-cpu"
    assert venv_store.lock_stem("/x/mlperf storage.lock") == "mlperf-storage"
    assert venv_store.lock_stem("pylock.smoke.toml") == "pylock.smoke"
    assert venv_store.lock_stem("") == "lock"


def test_key_changes_with_inputs_but_not_python_patch():
    base = dict(lockfile_sha256="a" * 64, python_path="/usr/bin/python3", python_version="3.11.2")

    def variant(**changes):
        args = dict(base)
        args.update(changes)
        return venv_store.compute_key(**args)

    key = venv_store.compute_key(**base)
    assert key == variant(python_version="3.11.9")
    assert key != variant(python_version="3.12.1")
    assert key != variant(lockfile_sha256="b" * 64)
    assert key != venv_store.compute_key(env={"MPI4PY_MPIABI": "mpich"}, **base)
    assert key != venv_store.compute_key(mpi4py_mode="source", **base)
    assert venv_store.compute_key(venv_path="/opt/a", **base) != venv_store.compute_key(venv_path="/opt/b", **base)
    assert key != venv_store.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich"}}, **base)
    one = venv_store.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich"}}, **base)
    two = venv_store.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.openmpi"}}, **base)
    assert one != two


def test_uv_config_for_build_variables():
    assert venv_store.render_uv_config({}) is None
    text = venv_store.render_uv_config({"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich", "LOCKSTEP_MPI": "mpich-4.0.2"}})
    assert text == ('[pip]\nextra-build-variables = { "mpi4py" = { LOCKSTEP_MPI = "mpich-4.0.2", '
                    'MPICC = "/usr/bin/mpicc.mpich" } }\n')


def test_render_is_sorted_literal_lines_and_parse_reads_it_back():
    env = {"MPI4PY_MPIABI": "mpich", "A_PATH": "/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY": None}
    text = venv_store.render_env_file(env)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["A_PATH=/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY=", "MPI4PY_MPIABI=mpich"]
    assert venv_store.parse_env_file(text) == {"A_PATH": "/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY": "",
                                               "MPI4PY_MPIABI": "mpich"}


@pytest.mark.parametrize("env", [{"BAD-NAME": "x"}, {"OK": "two\nlines"}, {"OK": "cr\rhere"}, {"1X": "y"}])
def test_render_refuses_what_activate_could_not_export(env):
    with pytest.raises(venv_store.EnvFileError):
        venv_store.render_env_file(env)


@pytest.mark.parametrize("line", ["export A=1", "not a line", "A B=1", "=x"])
def test_parse_names_the_bad_line(line):
    with pytest.raises(venv_store.EnvFileError) as err:
        venv_store.parse_env_file("# ok\nGOOD=1\n" + line + "\n", "/v/lockstep.env")
    assert "/v/lockstep.env:3" in str(err.value)


def test_values_are_literal_for_the_reader_and_for_an_activated_shell(tmp_path):
    """The validator and `. bin/activate` must agree on a value with $, quotes and spaces."""
    values = {"DOLLAR": "$HOME/x", "QUOTED": "'1'", "SPACES": "a b  c", "BRACES": "${UNSET:-d}"}
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('VIRTUAL_ENV="%s"\n' % venv)
    (venv / venv_store.ENV_FILE).write_text(venv_store.render_env_file(values))
    assert venv_store.install_activate_hook(str(venv)) is True
    assert venv_store.install_activate_hook(str(venv)) is False  # once
    script = ". %s/bin/activate && " % venv + " && ".join('printf "%%s\\n" "$%s"' % k for k in sorted(values))
    shell = subprocess.check_output(["bash", "-c", script], universal_newlines=True,
                                    env={"PATH": os.environ["PATH"], "HOME": "/root"}).splitlines()
    reader, _used = venv_store.venv_environment(str(venv), {"PATH": "/usr/bin", "HOME": "/root"})
    assert shell == [values[k] for k in sorted(values)]
    assert [reader[k] for k in sorted(values)] == shell


def test_venv_environment_layers(tmp_path):
    (tmp_path / "lockstep.env").write_text("A=from-file\nB=from-file\nMPI_BIN=/usr/lib64/mpich/bin\n")
    env, used = venv_store.venv_environment(
        str(tmp_path), {"PATH": "/usr/bin", "PYTHONHOME": "/bad", "A": "base"}, None, {"B": "extra"})
    assert used == str(tmp_path / "lockstep.env")
    assert (env["A"], env["B"]) == ("from-file", "extra")
    # Like the activate hook: MPI_BIN first, then the venv's bin.
    assert env["PATH"] == "/usr/lib64/mpich/bin:%s/bin:/usr/bin" % tmp_path
    assert env["VIRTUAL_ENV"] == str(tmp_path) and "PYTHONHOME" not in env
    (tmp_path / "lockstep.env").unlink()
    assert venv_store.venv_environment(str(tmp_path), {}, None, None)[1] is None
    with pytest.raises(IOError):
        venv_store.venv_environment(str(tmp_path), {}, str(tmp_path / "missing.env"))


def test_read_of_a_missing_file_is_empty(tmp_path):
    assert venv_store.read_env_file(str(tmp_path / "none")) == {}


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_VALUES = st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200)
@given(st.dictionaries(_NAMES, _VALUES, max_size=6))
def test_round_trip(values):
    """Whatever the writer accepts reads back exactly."""
    assert venv_store.parse_env_file(venv_store.render_env_file(values)) == values


COLLECTIONS = os.path.join(REPO, ".collections")
# Holds the store lock as a sync would, in another process, until killed.
HOLDER = """
import sys, time
from ansible_collections.lockstep.cluster.plugins.module_utils import store_fs
with store_fs.store_lock(sys.argv[1], 5, "build /opt/x for an operator's test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def slow_uv(tmp_path, seconds):
    """uv whose real sync (not --check) first sleeps; writes its pid for the test to kill."""
    wrapper = tmp_path / ("uv-slow-%s" % seconds)
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


def hold_lock(store_dir, seconds):
    os.makedirs(store_dir, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, store_dir, str(seconds)], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=COLLECTIONS), universal_newlines=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def in_child(store, queue):
    try:
        queue.put(("ok", store.sync(store.lockfile)))
    except SyncError as exc:
        queue.put(("error", exc.message))


# ---------------------------------------------------------------- the store lock


def test_a_held_lock_times_out_naming_the_holder_and_nothing_changes(house):
    good = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(good)
    before = snapshot(good.path)
    holder = hold_lock(good.store, 60)
    try:
        other = make_store(house, lock_of(house, ("alpha", "2.0")), lock_timeout=1)
        start = time.time()
        with pytest.raises(SyncError) as err:
            sync(other)
        assert 1 <= time.time() - start < 10
    finally:
        holder.kill()
        holder.wait()
    assert err.value.kind == "locked"
    message = err.value.message
    assert "is locked by pid %d on %s" % (holder.pid, socket.gethostname()) in message
    assert "doing: build /opt/x for an operator's test" in message and "waited 1s" in message
    assert snapshot(good.path) == before
    assert not any(n.endswith(store_fs.BUILDING_SUFFIX) for n in os.listdir(good.store))


def test_a_dead_holder_never_blocks(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=2)
    os.makedirs(store.store)
    holder = hold_lock(store.store, 60)
    holder.kill()  # SIGKILL: its flock goes with it, its note stays in the lock file
    holder.wait()
    note = json.loads(open(os.path.join(store.store, store_fs.STORE_LOCK)).read())
    assert note["pid"] == holder.pid
    start = time.time()
    sync(store)
    assert time.time() - start < 10 and installed(store.path) == {"alpha": "1.0"}
    assert json.loads(open(os.path.join(store.store, store_fs.STORE_LOCK)).read())["doing"] == "released"


def test_lock_waits_for_the_holder_then_proceeds(house):
    store = make_store(house, lock_of(house, ("alpha", "1.0")), lock_timeout=30)
    holder = hold_lock(os.path.join(str(house["tmp"]), "opt", "venvs"), 2)
    start = time.time()
    sync(store)
    holder.wait()
    assert time.time() - start >= 1.5 and installed(store.path) == {"alpha": "1.0"}


# ---------------------------------------------------------------- concurrent runs


def test_two_runs_with_two_locks_at_once(house, tmp_path):
    # Issue 10.4: both report success, and the later one must not delete the venv the other
    # had just made live; `previous` must be the other one.
    first = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 3))
    second = make_store(house, lock_of(house, ("alpha", "2.0")), uv=slow_uv(tmp_path, 0))
    queue = multiprocessing.get_context("fork").Queue()
    one = multiprocessing.get_context("fork").Process(target=in_child, args=(first, queue))
    one.start()
    deadline = time.time() + 30
    while not os.path.exists(first.target + store_fs.BUILDING_SUFFIX) and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(first.target + store_fs.BUILDING_SUFFIX)  # the first one is inside the lock
    assert second.plan()["action"] == "build"  # plan (unlocked, read-only) still sees nothing live
    two = multiprocessing.get_context("fork").Process(target=in_child, args=(second, queue))
    two.start()
    results = [queue.get(timeout=120), queue.get(timeout=120)]
    one.join()
    two.join()
    assert [r[0] for r in results] == ["ok", "ok"], results
    current, previous = os.path.realpath(first.path), os.path.realpath(first.path + ".previous")
    assert {current, previous} == {first.target, second.target}
    assert current == second.target  # the second waited, re-planned and built after the first
    assert installed(first.target) == {"alpha": "1.0"} and installed(second.target) == {"alpha": "2.0"}
    assert not venv_store.sealed_findings(first.target) and not venv_store.sealed_findings(second.target)


def test_two_runs_with_the_same_lock_at_once(house, tmp_path):
    # Issue 10.4: the second one used to fail with "refusing to rebuild the active venv".
    first = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 2))
    second = make_store(house, first.lock_text)
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=in_child, args=(s, queue)) for s in (first, second)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _proc in procs]
    for proc in procs:
        proc.join()
    assert sorted(r[0] for r in results) == ["ok", "ok"], results
    assert sorted(r[1]["action"] for r in results) == ["build", "none"], results
    assert os.path.realpath(first.path) == first.target and not os.path.lexists(first.path + ".previous")


def test_killed_module_leaves_a_partial_venv_that_a_run_with_another_lock_removes(house, tmp_path):
    # Issue 10.8: the partial venv was only ever recognised by a run of the same lock.
    killed = make_store(house, lock_of(house, ("alpha", "1.0")), name="one.txt", uv=slow_uv(tmp_path, 60))
    child = multiprocessing.get_context("fork").Process(target=in_child, args=(killed, multiprocessing.Queue()))
    child.start()
    pidfile = tmp_path / "uv.pid"
    deadline = time.time() + 30
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # as a task timeout kills the module: no cleanup runs
    child.join()
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert os.path.isdir(killed.target) and os.path.exists(killed.target + store_fs.BUILDING_SUFFIX)
    other = make_store(house, lock_of(house, ("beta", "1.0")), name="two.txt")
    applied = sync(other)
    assert killed.target in applied["pruned"]
    assert sorted(os.listdir(other.store)) == sorted([
        store_fs.STORE_LOCK, os.path.basename(other.target), os.path.basename(other.target) + ".manifest.json"])


# ---------------------------------------------------------------- repairs and rollback


def _tamper(venv):
    site = [os.path.join(root, "site-packages") for root, dirs, _f in os.walk(venv) if "site-packages" in dirs][0]
    with open(os.path.join(site, "zz-evil.pth"), "w") as handle:
        handle.write("/tmp/evil\n")
    return os.path.relpath(os.path.join(site, "zz-evil.pth"), venv)


def test_repair_keeps_the_clean_previous_and_rollback_goes_there(house):
    # Issue 10.5: after a repair `.previous` was the tampered venv (the clean one pruned).
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    current = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(current)
    assert os.path.realpath(current.path + ".previous") == clean.target
    _tamper(current.target)
    repaired = sync(current)
    assert repaired["drift"] and repaired["previous_kept"] == clean.target
    assert os.path.realpath(current.path + ".previous") == clean.target
    assert current.target in repaired["pruned"]  # keep=2: the fresh one and the clean one
    old, new = venv_store.rollback(current.path)
    assert new == clean.target and installed(current.path) == {"alpha": "1.0"}


def test_rollback_refuses_a_tampered_previous_in_check_mode_too(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    rel = _tamper(clean.target)
    before = snapshot(later.path)
    for check_mode in (True, False):
        with pytest.raises(SyncError) as err:
            venv_store.rollback(later.path, check_mode=check_mode)
        assert err.value.kind == "rollback"
        assert "refusing to roll back %s to %s: it differs from its manifest: %s (new)" % (
            later.path, clean.target, rel) in err.value.message
        assert snapshot(later.path) == before


def test_rollback_refuses_a_previous_without_its_manifest(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    os.unlink(manifest.location(clean.target))
    before = snapshot(later.path)
    with pytest.raises(SyncError) as err:
        venv_store.rollback(later.path)
    assert "no manifest at %s" % manifest.location(clean.target) in err.value.message
    assert snapshot(later.path) == before


def test_rollback_refuses_when_an_import_fails_on_the_host_now(house, tmp_path):
    needed = tmp_path / "needed-by-hostdep"
    needed.write_text("")
    make_wheel(house["dir"], "hostdep", "1.0", body="import os\nassert os.path.exists(%r), 'host file gone'\n"
               % str(needed))
    sha = __import__("hashlib").sha256(open(os.path.join(house["dir"], "hostdep-1.0-py3-none-any.whl"), "rb")
                                       .read()).hexdigest()
    house["sha"][("hostdep", "1.0")] = sha
    first = make_store(house, lock_of(house, ("hostdep", "1.0")), validate_imports=["hostdep"])
    sync(first)
    sync(make_store(house, lock_of(house, ("alpha", "1.0"))))
    needed.unlink()
    with pytest.raises(SyncError) as err:
        venv_store.rollback(first.path)
    assert "import hostdep fails: AssertionError: host file gone" in err.value.message


def test_a_lock_timeout_on_rollback_names_the_holder(house):
    sync(make_store(house, lock_of(house, ("alpha", "1.0"))))
    later = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(later)
    before = snapshot(later.path)
    holder = hold_lock(later.store, 60)
    try:
        with pytest.raises(SyncError) as err:
            venv_store.rollback(later.path, lock_timeout=1)
    finally:
        holder.kill()
        holder.wait()
    assert err.value.kind == "locked" and "pid %d" % holder.pid in err.value.message
    assert snapshot(later.path) == before


def test_flip_back_to_a_kept_venv_that_was_tampered_builds_fresh(house):
    first = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(first)
    sync(make_store(house, lock_of(house, ("alpha", "2.0"))))
    _tamper(first.target)
    plan = first.plan()
    assert plan["action"] == "build"  # not "flip" to the kept, tampered venv
    sync(first)
    assert not venv_store.sealed_findings(first.path)


def _launcher(directory, text):
    directory.mkdir()
    path = directory / "mpiexec"
    path.write_text(text)
    path.chmod(0o755)
    return str(directory)


@pytest.mark.parametrize("launcher, refused", [("openmpi", False), ("mpich", True), ("none", True)])
def test_rollback_checks_the_previous_venv_mpi_against_the_host_now(house, tmp_path, launcher, refused):
    # Issue 10.5: after an MPI flavor switch, rollback paired an Open MPI venv with the MPICH
    # launcher, silently. A fake mpi4py loads a fake libmpi; the launchers are fakes too.
    libmpi = str(tmp_path / "libmpi.so.40")
    libz = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1", "/lib/libz.so.1")
                if os.path.exists(p))
    __import__("shutil").copy(libz, libmpi)
    house["sha"][("mpi4py", "4.1.2")] = make_wheel(house["dir"], "mpi4py", "4.1.2", body=FAKE_INIT,
                                                   extra_files={"mpi4py/MPI.py": FAKE_MPI})[1]
    built_for = make_store(house, lock_of(house, ("mpi4py", "4.1.2")), validate_imports=["mpi4py"],
                           env={"FAKE_LIBMPI": libmpi, "LOCKSTEP_MPI_FLAVOR": "openmpi", "MPI4PY_MPIABI": "openmpi"})
    sync(built_for)
    later = make_store(house, lock_of(house, ("alpha", "1.0")), env={"LOCKSTEP_MPI_FLAVOR": "mpich"})
    sync(later)
    bindir = {"openmpi": lambda: _launcher(tmp_path / "ompi", OMPI_LAUNCHER),
              "mpich": lambda: _launcher(tmp_path / "hydra", HYDRA_LAUNCHER),
              "none": lambda: str(tmp_path)}[launcher]()
    env = {"PATH": bindir}  # nothing else: a host MPI must not answer for the fakes
    before = snapshot(later.path)
    if not refused:
        assert venv_store.rollback(later.path, base_env=env)[1] == built_for.target
        return
    with pytest.raises(SyncError) as err:
        venv_store.rollback(later.path, base_env=env)
    assert snapshot(later.path) == before
    if launcher == "mpich":
        assert "it was built for openmpi but the host's launcher %s/mpiexec is now mpich (MPI flavor switched " \
               "since)" % bindir in err.value.message
        assert "mpi: launcher %s/mpiexec is mpich but mpi4py loaded openmpi" % bindir in err.value.message
    else:
        assert "no MPI launcher (mpiexec/mpirun) on the host's PATH to run it with" in err.value.message


def test_a_new_lock_does_not_make_a_tampered_live_venv_the_rollback_target(house):
    clean = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(clean)
    second = make_store(house, lock_of(house, ("alpha", "2.0")))
    sync(second)
    _tamper(second.target)  # live, tampered, then replaced by a third lock
    third = make_store(house, lock_of(house, ("beta", "1.0")))
    applied = sync(third)
    assert applied["previous_kept"] == clean.target
    assert os.path.realpath(third.path + ".previous") == clean.target


def test_store_dir_created_by_another_run_at_the_same_moment(house, monkeypatch):
    # Two first runs on a fresh host: both see no store, the other one creates it first.
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    real_makedirs = os.makedirs

    def raced(path, mode=0o777, exist_ok=False):
        real_makedirs(path, mode)
        raise FileExistsError(17, "File exists", path)

    monkeypatch.setattr(os, "makedirs", raced)
    sync(store)
    assert installed(store.path) == {"alpha": "1.0"}


class _NoLock(object):
    """A store lock that does not hold (a file system without working flock)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def doing(self, what):
        pass


def test_without_a_working_lock_a_live_venv_is_still_never_deleted_nor_lost(house, tmp_path, monkeypatch):
    # Issue 10.4's symptom: the later run deleted the venv the other had just made live and
    # left `.previous` wrong. Even if the lock did not serialize them, the flip takes what is
    # live at that moment as the venv it replaces, and prune spares everything live.
    monkeypatch.setattr(store_fs, "store_lock", _NoLock)
    base = make_store(house, lock_of(house, ("beta", "1.0")))
    sync(base)
    slow = make_store(house, lock_of(house, ("alpha", "1.0")), uv=slow_uv(tmp_path, 3))
    fast = make_store(house, lock_of(house, ("alpha", "2.0")))
    queue = multiprocessing.get_context("fork").Queue()
    first = multiprocessing.get_context("fork").Process(target=in_child, args=(slow, queue))
    first.start()
    deadline = time.time() + 30
    while not (tmp_path / "uv.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sync(fast)["action"] == "build"  # flips while the slow one is still building
    outcome = queue.get(timeout=120)
    assert outcome[0] == "ok", outcome
    first.join()
    assert os.path.realpath(base.path) == slow.target
    assert os.path.realpath(base.path + ".previous") == fast.target  # not `base`, which it planned against
    assert installed(fast.target) == {"alpha": "2.0"}
