"""plugins/module_utils/uv_archive.py: the sha256-verified download and the safe unpack."""

import hashlib
import os

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import uv_archive as m

from helpers import make_tar


RELEASE = [("uv-x86_64-unknown-linux-gnu", ("dir", None)),
           ("uv-x86_64-unknown-linux-gnu/uv", b"#!/bin/sh\necho uv 0.13.9\n"),
           ("uv-x86_64-unknown-linux-gnu/uvx", b"#!/bin/sh\necho uvx\n")]


def test_release_layout_is_unpacked_with_sha256_of_each_binary(tmp_path):
    archive = tmp_path / "uv.tar.gz"
    make_tar(archive, RELEASE)
    files = m.extract(str(archive), str(tmp_path / "bin"))
    assert files == {"bin/uv": hashlib.sha256(RELEASE[1][1]).hexdigest(),
                     "bin/uvx": hashlib.sha256(RELEASE[2][1]).hexdigest()}
    assert sorted(os.listdir(str(tmp_path / "bin"))) == ["uv", "uvx"]
    assert os.access(str(tmp_path / "bin" / "uv"), os.X_OK)


def test_bare_binaries_and_extra_files(tmp_path):
    archive = tmp_path / "uv.tar.gz"
    make_tar(archive, [("uv", b"a"), ("uvx", b"b"), ("README.md", b"c"), ("docs/uv", b"d" * 3)])
    # docs/uv is a second candidate for uv: ambiguous, so the archive is refused.
    with pytest.raises(m.ArchiveError, match="holds uv twice"):
        m.extract(str(archive), str(tmp_path / "bin"))
    make_tar(archive, [("uv", b"a"), ("uvx", b"b"), ("README.md", b"c"), ("a/b/uv", b"deep")])
    assert set(m.extract(str(archive), str(tmp_path / "bin2"))) == {"bin/uv", "bin/uvx"}
    assert (tmp_path / "bin2" / "uv").read_bytes() == b"a"


@pytest.mark.parametrize("member, reason", [
    (("uv-x/uv", ("symlink", "/etc/passwd")), "a link or device"),
    (("uv-x/evil", ("hardlink", "/etc/shadow")), "a link or device"),
    (("uv-x/pipe", ("fifo", None)), "a link or device"),
    (("../uv", b"x"), "absolute path or '..'"),
    (("/usr/local/bin/uv", b"x"), "absolute path or '..'"),
])
def test_unsafe_members_refuse_the_whole_archive(tmp_path, member, reason):
    archive = tmp_path / "uv.tar.gz"
    make_tar(archive, RELEASE[1:] + [member])
    with pytest.raises(m.ArchiveError, match="unsafe member") as exc:
        m.extract(str(archive), str(tmp_path / "bin"))
    assert reason in str(exc.value)
    assert not (tmp_path / "bin").exists()


def test_an_archive_without_uvx_is_refused(tmp_path):
    archive = tmp_path / "uv.tar.gz"
    make_tar(archive, RELEASE[:2])
    with pytest.raises(m.ArchiveError, match="has no uvx"):
        m.extract(str(archive), str(tmp_path / "bin"))


def test_not_an_archive(tmp_path):
    archive = tmp_path / "uv.tar.gz"
    archive.write_bytes(b"<html>404</html>")
    with pytest.raises(m.ArchiveError, match="cannot read the uv archive"):
        m.extract(str(archive), str(tmp_path / "bin"))


def test_download_verifies_the_sha256(tmp_path):
    archive = tmp_path / "src.tar.gz"
    sha = make_tar(archive, RELEASE)
    dest = tmp_path / "dl.tar.gz"
    m.download(archive.as_uri(), str(dest), sha)
    assert dest.read_bytes() == archive.read_bytes()
    with pytest.raises(m.ArchiveError, match="has sha256 %s, not uv_archive_sha256 %s" % (sha, "0" * 64)):
        m.download(archive.as_uri(), str(dest), "0" * 64)


def test_download_errors_never_repeat_the_url(tmp_path):
    url = (tmp_path / "secret-token" / "missing.tar.gz").as_uri()
    with pytest.raises(m.ArchiveError, match="cannot download the uv archive") as exc:
        m.download(url, str(tmp_path / "dl"), "0" * 64)
    assert "secret-token" not in str(exc.value)
    with pytest.raises(m.ArchiveError, match="CA bundle /nope.pem does not exist"):
        m.download("https://index.example/uv.tar.gz", str(tmp_path / "dl"), "0" * 64, ca_bundle="/nope.pem")


def test_verify_a_pushed_copy(tmp_path):
    archive = tmp_path / "uv.tar.gz"
    sha = make_tar(archive, RELEASE)
    m.verify(str(archive), sha)
    with archive.open("r+b") as handle:
        handle.truncate(10)
    with pytest.raises(m.ArchiveError, match="on the host has sha256"):
        m.verify(str(archive), sha)
    with pytest.raises(m.ArchiveError, match="is not on the host"):
        m.verify(str(tmp_path / "gone"), sha)
