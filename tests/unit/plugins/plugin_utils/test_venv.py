"""plugins/plugin_utils/venv.py: the controller wheelhouse (host tags, picking each host's files, fetching once
and checking hashes, one mpi4py build per combination) and what it says when it cannot list a lock."""

import hashlib
import os
import time

import pytest
from packaging.pylock import Pylock
from packaging.tags import Tag

from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError, UvRunner
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import VenvStore
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import load_lock, parse_lock
from ansible_collections.lockstep.cluster.plugins.plugin_utils import venv as wheelhouse

from helpers import HEADER, lock_text, make_wheel, UV
from test_lock import PY311_X86


HOST = {"implementation": "cpython", "version": "3.11", "abi": "cp311", "machine": "x86_64", "system": "Linux",
        "glibc": "2.36"}


def test_host_tags_follow_glibc_and_abi():
    tags = wheelhouse.host_tags(HOST)
    assert tags[0] == Tag("cp311", "cp311", "manylinux_2_36_x86_64")
    assert Tag("cp311", "cp311", "manylinux2014_x86_64") in tags and Tag("cp310", "abi3", "manylinux1_x86_64") in tags
    assert Tag("cp311", "cp311", "linux_x86_64") in tags and Tag("py3", "none", "any") in tags
    assert Tag("cp311", "cp311", "manylinux_2_38_x86_64") not in tags  # newer glibc than the host
    assert Tag("cp312", "cp312", "manylinux_2_28_x86_64") not in tags
    old = wheelhouse.host_tags(dict(HOST, glibc="2.17"))
    assert Tag("cp311", "cp311", "manylinux_2_28_x86_64") not in old


def _two_platform_lock(tmp_path):
    wheels = ["mpi-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", "mpi-1.0-cp311-cp311-manylinux_2_17_aarch64.whl"]
    text = ('lock-version = "1.0"\ncreated-by = "t"\n\n[[packages]]\nname = "mpi"\nversion = "1.0"\n'
            'sdist = { path = "files/mpi-1.0.tar.gz", hashes = { sha256 = "%s" } }\nwheels = [\n%s]\n') % (
        "0" * 64, "".join('  { path = "files/%s", hashes = { sha256 = "%s" } },\n' % (w, str(i + 1) * 64)
                          for i, w in enumerate(wheels)))
    path = tmp_path / "pylock.two.toml"
    path.write_text(text)
    return load_lock(str(path))


def test_select_files_picks_the_hosts_wheel_or_the_sdist(tmp_path):
    lock = _two_platform_lock(tmp_path)
    files = wheelhouse.select_files(lock.pylock, lock, PY311_X86, wheelhouse.host_tags(HOST))
    assert list(files) == ["mpi-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"]
    wheel = "mpi-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert files[wheel]["path"] == str(tmp_path / "files" / wheel)
    source = wheelhouse.select_files(lock.pylock, lock, PY311_X86, wheelhouse.host_tags(HOST), prefer_sdist=["mpi"])
    assert list(source) == ["mpi-1.0.tar.gz"] and source["mpi-1.0.tar.gz"]["kind"] == "sdist"
    # No wheel for an old glibc and no sdist: one clear error.
    data = lock.pylock.to_dict()
    del data["packages"][0]["sdist"]
    with pytest.raises(wheelhouse.WheelhouseError, match="no file for this host"):
        wheelhouse.select_files(Pylock.from_dict(data), lock, PY311_X86, wheelhouse.host_tags(dict(HOST, glibc="2.17")))


def test_a_file_the_lock_does_not_pin_is_refused(tmp_path):
    lock = _two_platform_lock(tmp_path)
    other = parse_lock(lock_text([("mpi", "1.0", "f" * 64)]), "other.txt")
    with pytest.raises(wheelhouse.WheelhouseError, match="which other.txt does not pin"):
        wheelhouse.select_files(lock.pylock, other, PY311_X86, wheelhouse.host_tags(HOST))


def test_fetch_copies_once_and_checks_the_hash(tmp_path):
    src = tmp_path / "alpha-1.0-py3-none-any.whl"
    path, digest = make_wheel(str(tmp_path), "alpha", "1.0")
    spec = {"name": "alpha", "version": "1.0", "url": src.as_uri(), "path": None, "sha256s": [digest]}
    got, sha, fetched = wheelhouse.fetch(str(tmp_path / "wh"), src.name, spec)
    assert (sha, fetched) == (digest, True) and open(got, "rb").read() == src.read_bytes()
    assert wheelhouse.fetch(str(tmp_path / "wh"), src.name, spec)[2] is False  # cached
    with open(got, "ab") as handle:
        handle.write(b"corrupt")
    assert wheelhouse.fetch(str(tmp_path / "wh"), src.name, spec)[2] is True  # re-fetched, not trusted
    with pytest.raises(wheelhouse.WheelhouseError, match="not one the lock pins"):
        wheelhouse.fetch(str(tmp_path / "wh2"), src.name, dict(spec, sha256s=["0" * 64]))
    assert os.listdir(tmp_path / "wh2" / "files") == [".%s.lock" % src.name]


def test_host_sync_with_a_file_missing_from_the_wheelhouse_fails_fast(index, tmp_path):
    """No index on the host: uv says at once the file is not there (no network wait)."""
    (tmp_path / "host-wh").mkdir()
    os.link(next((index["tmp"] / "wheels").glob("alpha-*")), tmp_path / "host-wh" / "alpha-1.0-py3-none-any.whl")
    lockfile = tmp_path / "l.txt"
    lockfile.write_text(HEADER % "--generate-hashes" + lock_text(
        [("alpha", "1.0", index["sha"]["alpha"]), ("beta", "1.0", index["sha"]["beta"])]).split("\n", 2)[2])
    runner = UvRunner(UV, wheelhouse=str(tmp_path / "host-wh"), cache_dir=str(tmp_path / "cache"),
                      index_url="https://ci:hunter22@index.example/simple")
    import hashlib
    sha = hashlib.sha256(lockfile.read_bytes()).hexdigest()
    store = VenvStore(runner, str(tmp_path / "venv"), str(tmp_path / "venvs"), "/usr/bin/python3", "3.11", sha,
                      lockfile_name="l.txt")
    start = time.time()
    with pytest.raises(SyncError) as caught:
        store.sync(str(lockfile))
    assert caught.value.kind == "wheelhouse" and "does not hold every file" in caught.value.message
    assert "beta" in caught.value.message
    assert time.time() - start < 20
    sync = [c["argv"] for c in runner.commands if "sync" in c["argv"]][0]
    assert "--offline" in sync and "--no-index" in sync and "hunter22" not in " ".join(sync)
    assert "UV_DEFAULT_INDEX" not in runner.env()  # no index at all with a wheelhouse
    assert not os.path.lexists(tmp_path / "venv")


def _build_once(directory, log):
    """What one host's action does for a (group, tag): wait for the build lock, build only if
    no wheel was recorded meanwhile."""
    with wheelhouse.build_lock(directory, "mpi4py", "Debian-12/openmpi-4.1.4", "cp311-x86_64"):
        if not [m for m in wheelhouse.built_wheels(directory, "mpi4py", "Debian-12/openmpi-4.1.4")
                if m["tag"] == "cp311-x86_64"]:
            time.sleep(1.0)  # the build
            wheelhouse.record_built(directory, "mpi4py", "Debian-12/openmpi-4.1.4", "cp311-x86_64",
                                    "mpi4py-4.1.2-cp311-cp311-linux_x86_64.whl", b"wheel-%d" % os.getpid(),
                                    {"builder": str(os.getpid())})
            with open(log, "a") as handle:
                handle.write("built\n")


def test_one_build_per_combination_across_concurrent_hosts(tmp_path):
    import multiprocessing

    log = str(tmp_path / "log")
    hosts = [multiprocessing.Process(target=_build_once, args=(str(tmp_path), log)) for dummy in range(3)]
    for host in hosts:
        host.start()
    for host in hosts:
        host.join(30)
    assert [h.exitcode for h in hosts] == [0, 0, 0]
    assert open(log).read() == "built\n"
    built = wheelhouse.built_wheels(str(tmp_path), "mpi4py", "Debian-12/openmpi-4.1.4")
    assert len(built) == 1 and built[0]["sha256"] == hashlib.sha256(open(built[0]["path"], "rb").read()).hexdigest()
    # Another MPI is another group: nothing shared with it.
    assert wheelhouse.built_wheels(str(tmp_path), "mpi4py", "Debian-12/mpich-4.0.2") == []
    # A built wheel replaced behind the controller's back is not offered any more.
    with open(built[0]["path"], "ab") as handle:
        handle.write(b"tampered")
    assert wheelhouse.built_wheels(str(tmp_path), "mpi4py", "Debian-12/openmpi-4.1.4") == []


@pytest.mark.parametrize("version, hint", [("1.0+cpu", "venv_wheelhouse_find_links"),
                                           ("9.9", "unreachable")])
def test_controller_listing_of_a_local_version_pin_names_the_variable(index, tmp_path, version, hint):
    """The controller wheelhouse lists the lock's files with uv: a '+cpu' pin that the index
    does not serve needs venv_wheelhouse_find_links; any other miss keeps the generic reason."""
    lockfile = tmp_path / "l.txt"
    lockfile.write_text(HEADER % "--generate-hashes"
                        + lock_text([("alpha", version, index["sha"]["alpha"])]).split("\n", 2)[2])
    with pytest.raises(wheelhouse.WheelhouseError) as caught:
        wheelhouse.source_pylock(load_lock(str(lockfile)), str(tmp_path / "cache"), UV, index_url=index["url"])
    assert hint in str(caught.value)
    assert ("alpha==1.0+cpu" in str(caught.value)) == ("+" in version)
