"""plugins/module_utils/uv.py: the one idempotent check and the install, on a fake
filesystem in tmp_path, and the sha256-verified download and the safe unpack of an archive.

The archive method runs for real (file:// URLs, tiny shell-script "uv" binaries). The venv
method runs against a fake ``python`` that creates a venv-shaped directory and "pip installs"
a uv dist-info with a real RECORD, so RECORD verification, the requirement file and the pip
environment are all exercised offline. (tests/unit/roles/test_uv_role.py runs the real pip.)"""

import hashlib
import json
import os
import stat
import sys
import textwrap

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions
from ansible_collections.lockstep.cluster.plugins.module_utils import uv as m

from helpers import make_tar


HASHES = ["a" * 64, "sha256:" + "b" * 64]

FAKE_PYTHON = r'''#!{python}
# A stand-in for python3: `-m venv DIR` makes a venv-shaped DIR, `-m pip install -r REQ` writes
# uv's bin/uv, bin/uvx and dist-info with a real RECORD. Every call is logged (argv, PIP_* env).
import base64, hashlib, json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "env": dict((k, v) for k, v in os.environ.items() if k.startswith("PIP_"))}}) + "\n")
if args[:2] == ["-m", "venv"]:
    if os.environ.get("FAKE_NO_ENSUREPIP"):
        sys.stderr.write("The virtual environment was not created successfully because ensurepip is not available.\n")
        sys.exit(1)
    venv = args[2]
    os.makedirs(os.path.join(venv, "bin"))
    os.makedirs(os.path.join(venv, "lib", "python3.11", "site-packages"))
    with open(os.path.join(venv, "pyvenv.cfg"), "w") as f:
        f.write("home = /usr/bin\n")
    shutil.copy(__file__, os.path.join(venv, "bin", "python"))
    with open(os.path.join(venv, "bin", "pip"), "w") as f:
        f.write("#!%s/bin/python\n" % venv)
    with open(os.path.join(venv, "bin", "activate"), "w") as f:
        f.write('VIRTUAL_ENV="%s"\n' % venv)
    sys.exit(0)
if args[:3] == ["-m", "pip", "install"]:
    if os.environ.get("FAKE_PIP_RC"):
        sys.stderr.write("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n")
        sys.exit(int(os.environ["FAKE_PIP_RC"]))
    version = open(args[args.index("-r") + 1]).read().split("==")[1].split()[0]
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
    site = os.path.join(venv, "lib", "python3.11", "site-packages")
    prints = os.environ.get("FAKE_UV_PRINTS", version)
    files = {{"../../../bin/uv": ("#!/bin/sh\necho 'uv %s (fake)'\n" % prints).encode(),
             "../../../bin/uvx": b"#!/bin/sh\necho uvx\n", "uv/__init__.py": b""}}
    info = os.path.join(site, "uv-%s.dist-info" % version)
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: uv\nVersion: %s\n" % version)
    rows = []
    for rel, data in files.items():
        path = os.path.normpath(os.path.join(site, rel))
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o755)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
        rows.append("%s,sha256=%s,%d" % (rel, digest, len(data)))
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("\n".join(rows + ["uv-%s.dist-info/METADATA,," % version, "uv-%s.dist-info/RECORD,," % version]) + "\n")
    sys.exit(0)
sys.exit(2)
'''


def fake_uv(version):
    return ("#!/bin/sh\necho 'uv %s (fake)'\n" % version).encode()


def _script(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def dpkg(tmp_path, monkeypatch):
    """A fake dpkg-query on PATH; returns the set of installed package names to edit."""
    installed = {"python3-venv"}
    fake = tmp_path / "fakebin"
    fake.mkdir()
    state = tmp_path / "dpkg-installed.json"

    def write():
        state.write_text(json.dumps(sorted(installed)))
    write()
    _script(fake / "dpkg-query", textwrap.dedent("""\
        #!%s
        import json, sys
        installed = json.load(open(%r))
        names = [a for a in sys.argv[1:] if not a.startswith("-") and "$" not in a]
        for name in names:
            if name in installed:
                print("%%s ii " %% name)
        sys.exit(0 if all(n in installed for n in names) else 1)
        """ % (sys.executable, str(state))))
    monkeypatch.setenv("PATH", "%s:%s" % (fake, os.environ["PATH"]))
    monkeypatch.setattr(distributions, "package_manager", lambda: "apt")

    class Packages(set):
        def sync(self):
            installed.clear()
            installed.update(self)
            write()
    packages = Packages(installed)
    return packages


@pytest.fixture
def python(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PYTHON_LOG", str(tmp_path / "python.log"))
    return _script(tmp_path / "python3", FAKE_PYTHON.format(python=sys.executable))


def calls(tmp_path):
    log = tmp_path / "python.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def params(tmp_path, **over):
    p = dict((name, spec.get("default")) for name, spec in m.ARGUMENT_SPEC.items())
    p.update(version="0.13.9", install_root=str(tmp_path / "root"), bin_dir=str(tmp_path / "bin"), timeout=30,
             packages=["python3-venv"], requirement_hashes=list(HASHES))
    p.update(over)
    return p


def archive_params(tmp_path, version="0.13.9", prints=None, **over):
    archive = tmp_path / ("uv-%s.tar.gz" % version)
    sha = make_tar(archive, [("uv-x86_64-unknown-linux-gnu/uv", fake_uv(prints or version)),
                             ("uv-x86_64-unknown-linux-gnu/uvx", b"#!/bin/sh\necho uvx\n")])
    values = dict(version=version, method="archive", archive_url=archive.as_uri(), archive_sha256=sha,
                  requirement_hashes=[], packages=[])
    values.update(over)
    return params(tmp_path, **values)


def tree(path):
    """Every entry under ``path`` with its link target or content hash: shows any change."""
    out = []
    for root, dirs, files in os.walk(str(path)):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            if name == ".lockstep.lock":
                continue  # who held the install lock last, not part of the install
            if os.path.islink(full):
                out.append((full, "->", os.readlink(full)))
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    out.append((full, hashlib.sha256(handle.read()).hexdigest()))
            else:
                out.append((full, "dir"))
    return sorted(out)


def uv_prints(tmp_path):
    import subprocess
    return subprocess.run([str(tmp_path / "bin" / "uv"), "--version"], stdout=subprocess.PIPE, check=False,
                          universal_newlines=True).stdout.strip()


# -- inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("over, message", [
    ({"requirement_hashes": []}, "no sha256 known for the uv 0.13.9 wheels: set requirement_hashes"),
    ({"requirement_hashes": ["abc"]}, "requirement_hashes must be sha256 hex digests (got abc)"),
    ({"version": "../etc"}, "is not a uv release number"),
    ({"install_root": "opt/uv"}, "install_root must be an absolute path"),
    ({"method": "archive", "archive_url": "https://index.example/uv.tgz"}, "method archive needs archive_sha256"),
    ({"method": "archive", "archive_sha256": "c" * 64}, "no download location is built in"),
])
def test_bad_inputs_fail_with_one_clear_message_and_touch_nothing(tmp_path, dpkg, over, message):
    result = m.run(params(tmp_path, **over), check_mode=False)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not (tmp_path / "root").exists() and not (tmp_path / "bin").exists()


def test_normalize_accepts_prefixed_hashes_and_empty_strings(tmp_path):
    p = m.normalize(params(tmp_path, requirement_hashes=["SHA256:" + "A" * 64], archive_url="",
                           archive_sha256="sha256:" + "b" * 64))
    assert p["requirement_hashes"] == ["a" * 64]
    assert p["archive_url"] is None and p["archive_sha256"] == "b" * 64


# -- method venv ----------------------------------------------------------------------------

def test_venv_install_then_converged(tmp_path, dpkg, python):
    p = params(tmp_path, python=python, pip_index_url="https://user:tok@index.example/simple", ca_bundle="/etc/ca.pem")
    result = m.run(p, check_mode=False, diff=True)
    assert "failed" not in result, result
    assert result["changed"] and result["install"] == "not installed" and result["links"] == ["uv", "uvx"]
    assert result["msg"] == "installed uv 0.13.9; linked uv, uvx into %s" % (tmp_path / "bin")
    assert "uv --version: (absent)" in result["diff"]["before"] and "uv --version: uv 0.13.9" in result["diff"]["after"]
    directory = tmp_path / "root" / "0.13.9"
    assert os.readlink(str(tmp_path / "bin" / "uv")) == str(directory / "bin" / "uv")
    assert uv_prints(tmp_path) == "uv 0.13.9 (fake)"
    requirement = (directory / "requirements.txt").read_text()
    assert requirement == "uv==0.13.9 \\\n    --hash=sha256:%s \\\n    --hash=sha256:%s\n" % ("a" * 64, "b" * 64)
    pip = [c for c in calls(tmp_path) if c["argv"][:2] == ["-m", "pip"]][0]
    assert pip["argv"][2:9] == ["install", "--quiet", "--require-hashes", "--only-binary", ":all:", "--no-deps", "-r"]
    assert not any("index.example" in arg for arg in pip["argv"])  # never in a process list
    assert pip["env"]["PIP_INDEX_URL"] == "https://user:tok@index.example/simple"
    assert pip["env"]["PIP_CERT"] == "/etc/ca.pem"
    # Scripts naming the temporary build dir are gone; nothing of the build is left beside it.
    assert sorted(os.listdir(str(directory / "bin"))) == ["python", "uv", "uvx"]
    assert sorted(os.listdir(str(tmp_path / "root"))) == [".lockstep.lock", "0.13.9"]
    assert json.loads((directory / m.MARKER).read_text())["method"] == "venv"

    before = len(calls(tmp_path))
    again = m.run(p, check_mode=False)
    assert again["changed"] is False and "failed" not in again and again["install"] is None
    assert len(calls(tmp_path)) == before  # a converged run installs nothing


@pytest.mark.parametrize("damage, reason", [
    (lambda uv: uv.write_text("#!/bin/sh\nexit 1\n"), "bin/uv modified (sha256 differs from the uv wheel's RECORD)"),
    (lambda uv: uv.write_bytes(uv.read_bytes()[:5]), "bin/uv modified"),
    (lambda uv: uv.unlink(), "bin/uv missing"),
])
def test_venv_broken_uv_is_detected_and_rebuilt(tmp_path, dpkg, python, damage, reason):
    p = params(tmp_path, python=python)
    assert m.run(p, check_mode=False)["changed"]
    uv = tmp_path / "root" / "0.13.9" / "bin" / "uv"
    damage(uv)
    broken = tree(tmp_path / "root")
    predicted = m.run(p, check_mode=True, diff=True)
    assert predicted["changed"] and reason in predicted["install"]
    assert predicted["msg"].startswith("would rebuild uv 0.13.9 at %s: %s" % (tmp_path / "root" / "0.13.9", reason))
    assert tree(tmp_path / "root") == broken  # check mode wrote nothing
    result = m.run(p, check_mode=False)
    assert result["changed"] and reason in result["install"] and "rebuilt uv 0.13.9" in result["msg"]
    assert uv_prints(tmp_path) == "uv 0.13.9 (fake)"
    assert sorted(os.listdir(str(tmp_path / "root"))) == [".lockstep.lock", "0.13.9"]
    assert m.run(p, check_mode=False)["changed"] is False


def test_venv_record_must_list_the_binaries(tmp_path, dpkg, python):
    p = params(tmp_path, python=python)
    m.run(p, check_mode=False)
    record = next((tmp_path / "root" / "0.13.9" / "lib" / "python3.11" / "site-packages").glob("uv-*/RECORD"))
    record.write_text("".join(l + "\n" for l in record.read_text().splitlines() if "bin/uvx" not in l))
    assert m.integrity_problem(str(tmp_path / "root" / "0.13.9"), "0.13.9") == "the uv wheel's RECORD does not list bin/uvx"


def test_venv_failed_pip_keeps_the_old_install(tmp_path, dpkg, python, monkeypatch):
    p = params(tmp_path, python=python)
    m.run(p, check_mode=False)
    uv = tmp_path / "root" / "0.13.9" / "bin" / "uv"
    uv.write_text("#!/bin/sh\nexit 1\n")
    before = tree(tmp_path / "root")
    monkeypatch.setenv("FAKE_PIP_RC", "1")
    result = m.run(p, check_mode=False)
    assert result["failed"] and result["msg"].startswith("pip could not install uv==0.13.9: pip exited 1")
    assert "DO NOT MATCH THE HASHES" in result["stderr"]
    assert tree(tmp_path / "root") == before  # no half-built directory, the old one as it was


def test_venv_without_ensurepip_names_the_package(tmp_path, dpkg, python, monkeypatch):
    monkeypatch.setenv("FAKE_NO_ENSUREPIP", "1")
    result = m.run(params(tmp_path, python=python), check_mode=False)
    assert result["failed"] and "-m venv failed (Debian: the python3-venv package)" in result["msg"]
    assert os.listdir(str(tmp_path / "root")) == [".lockstep.lock"]


def test_a_uv_that_prints_another_version_is_not_installed(tmp_path, dpkg, python, monkeypatch):
    monkeypatch.setenv("FAKE_UV_PRINTS", "0.13.8")
    result = m.run(params(tmp_path, python=python), check_mode=False)
    assert result["failed"]
    assert result["msg"] == ("the freshly installed uv 0.13.9 is not usable: bin/uv --version printed "
                             "'uv 0.13.8 (fake)', not uv 0.13.9")
    assert not (tmp_path / "bin").exists() and not (tmp_path / "root" / "0.13.9").exists()


# -- packages -----------------------------------------------------------------------------

def test_missing_packages_are_reported_before_anything_changes(tmp_path, dpkg, python):
    dpkg.clear()
    dpkg.sync()
    p = params(tmp_path, python=python)
    predicted = m.run(p, check_mode=True)
    assert predicted["changed"] and predicted["missing_packages"] == ["python3-venv"]
    assert predicted["msg"] == "would install python3-venv; install uv 0.13.9; link uv, uvx into %s" % (tmp_path / "bin")
    assert predicted["needs"] == []  # check mode asks the controller for nothing
    result = m.run(p, check_mode=False)
    assert result["changed"] is False and result["needs"] == ["packages"] and result["package_manager"] == "apt"
    assert not (tmp_path / "root").exists() and calls(tmp_path) == []
    dpkg.add("python3-venv")
    dpkg.sync()
    assert m.run(p, check_mode=False)["changed"]


def test_a_removed_package_makes_an_intact_uv_unconverged(tmp_path, dpkg, python):
    p = params(tmp_path, python=python)
    m.run(p, check_mode=False)
    dpkg.clear()
    dpkg.sync()
    result = m.run(p, check_mode=False)
    assert result["install"] is None and result["links"] == [] and result["needs"] == ["packages"]


# -- method archive -------------------------------------------------------------------------

def test_archive_install_check_mode_then_converged(tmp_path, dpkg):
    p = archive_params(tmp_path)
    predicted = m.run(p, check_mode=True, diff=True)
    assert predicted["changed"] and not (tmp_path / "root").exists() and not (tmp_path / "bin").exists()
    result = m.run(p, check_mode=False, diff=True)
    assert result["changed"] and "failed" not in result, result
    assert result["diff"] == predicted["diff"]
    marker = json.loads((tmp_path / "root" / "0.13.9" / m.MARKER).read_text())
    assert marker["method"] == "archive" and marker["source"] == "url"
    assert marker["files"]["bin/uv"] == hashlib.sha256(fake_uv("0.13.9")).hexdigest()
    assert sorted(os.listdir(str(tmp_path / "root" / "0.13.9"))) == [m.MARKER, "bin"]  # the download is gone
    assert uv_prints(tmp_path) == "uv 0.13.9 (fake)"
    assert m.run(p, check_mode=True)["changed"] is False
    assert m.run(p, check_mode=False)["changed"] is False


@pytest.mark.parametrize("damage, reason", [
    (lambda uv: uv.write_text("#!/bin/sh\nexit 1\n"), "bin/uv modified (sha256 "),
    (lambda uv: uv.write_bytes(b""), "bin/uv modified"),
    (lambda uv: uv.unlink(), "bin/uv missing"),
])
def test_archive_broken_uv_is_detected_and_rebuilt(tmp_path, dpkg, damage, reason):
    p = archive_params(tmp_path)
    m.run(p, check_mode=False)
    damage(tmp_path / "root" / "0.13.9" / "bin" / "uv")
    result = m.run(p, check_mode=False)
    assert result["changed"] and result["install"].startswith(reason), result
    assert result["msg"].startswith("rebuilt uv 0.13.9 at %s: %s" % (tmp_path / "root" / "0.13.9", reason))
    assert uv_prints(tmp_path) == "uv 0.13.9 (fake)"
    assert m.run(p, check_mode=False)["changed"] is False


def test_a_marker_is_not_trusted_alone(tmp_path, dpkg):
    """A right-looking dir with a marker but nothing recorded (an older role's install), or no
    marker at all (an interrupted install) is rebuilt; leftovers of an interrupted build go."""
    p = archive_params(tmp_path)
    directory = tmp_path / "root" / "0.13.9"
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "uv").write_bytes(fake_uv("0.13.9"))
    (directory / m.MARKER).write_text("uv 0.13.9 from somewhere\n")
    (tmp_path / "root" / ".0.13.9.build-abc").mkdir()
    assert m.integrity_problem(str(directory), "0.13.9") == "nothing records what bin/uv must be (an install by an older role)"
    (directory / m.MARKER).unlink()
    assert m.integrity_problem(str(directory), "0.13.9").startswith("incomplete")
    result = m.run(p, check_mode=False)
    assert result["changed"] and result["install"].startswith("incomplete")
    assert sorted(os.listdir(str(tmp_path / "root"))) == [".lockstep.lock", "0.13.9"]


def test_archive_src_is_asked_from_the_controller_then_verified_again(tmp_path, dpkg):
    p = archive_params(tmp_path)
    pushed = p["archive_url"][len("file://"):]
    p.update(archive_url=None, archive_src="files/uv.tar.gz")
    first = m.run(p, check_mode=False)
    assert first["needs"] == ["archive"] and first["changed"] is False and not (tmp_path / "root").exists()
    with open(pushed, "r+b") as handle:  # a copy that went wrong on the way
        data = handle.read()
        handle.truncate(len(data) // 2)
    failed = m.run(dict(p, remote_archive=pushed), check_mode=False)
    assert failed["failed"] and "the uv archive on the host has sha256" in failed["msg"]
    assert not (tmp_path / "root" / "0.13.9").exists() and not (tmp_path / "bin").exists()
    with open(pushed, "wb") as handle:
        handle.write(data)
    done = m.run(dict(p, remote_archive=pushed), check_mode=False)
    assert done["changed"] and json.loads((tmp_path / "root" / "0.13.9" / m.MARKER).read_text())["source"] == "controller"
    assert os.path.exists(pushed)  # the action plugin's temp dir is its own to clean


def test_a_wrong_download_creates_nothing(tmp_path, dpkg):
    p = archive_params(tmp_path, archive_sha256="d" * 64)
    result = m.run(p, check_mode=False)
    assert result["failed"] and "not uv_archive_sha256 %s" % ("d" * 64) in result["msg"]
    assert os.listdir(str(tmp_path / "root")) == [".lockstep.lock"]


def test_version_switch_and_back_is_a_link_flip(tmp_path, dpkg):
    new, old = archive_params(tmp_path), archive_params(tmp_path, version="0.13.8")
    m.run(new, check_mode=False)
    down = m.run(old, check_mode=False, diff=True)
    assert down["install"] == "not installed" and uv_prints(tmp_path) == "uv 0.13.8 (fake)"
    assert "uv --version: uv 0.13.9 (fake)" in down["diff"]["before"]
    assert sorted(os.listdir(str(tmp_path / "root"))) == [".lockstep.lock", "0.13.8", "0.13.9"]
    up = m.run(new, check_mode=False, diff=True)
    assert up["changed"] and up["install"] is None and up["msg"] == "linked uv, uvx into %s" % (tmp_path / "bin")
    assert "uv --version: uv 0.13.8 (fake)" in up["diff"]["before"]
    assert uv_prints(tmp_path) == "uv 0.13.9 (fake)"


def test_a_foreign_uv_in_bin_dir_is_replaced_a_directory_is_not(tmp_path, dpkg):
    p = archive_params(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "uv").write_text("#!/bin/sh\necho uv 0.1.0\n")  # curl | sh
    result = m.run(p, check_mode=False, diff=True)
    assert result["changed"] and "%s -> (a file)" % (tmp_path / "bin" / "uv") in result["diff"]["before"]
    assert os.path.islink(str(tmp_path / "bin" / "uv"))
    (tmp_path / "bin" / "uvx").unlink()
    (tmp_path / "bin" / "uvx").mkdir()
    result = m.run(p, check_mode=False)
    assert result["failed"] and result["msg"] == "%s is a directory; the uv link cannot replace it" % (tmp_path / "bin" / "uvx")


def test_a_binary_that_does_not_run_is_named(tmp_path, dpkg):
    p = archive_params(tmp_path)
    m.run(p, check_mode=False)
    directory = tmp_path / "root" / "0.13.9"
    uv = directory / "bin" / "uv"
    uv.write_text("#!/bin/sh\nexit 3\n")
    marker = json.loads((directory / m.MARKER).read_text())
    marker["files"]["bin/uv"] = hashlib.sha256(uv.read_bytes()).hexdigest()  # the record agrees...
    (directory / m.MARKER).write_text(json.dumps(marker))
    # ...so only running it shows the problem.
    assert m.integrity_problem(str(directory), "0.13.9") == "bin/uv --version failed: it exited 3"
    os.chmod(str(uv), stat.S_IRUSR)
    assert m.integrity_problem(str(directory), "0.13.9").startswith("bin/uv --version failed: cannot run")


def test_a_held_install_lock_times_out_naming_the_holder(tmp_path, dpkg):
    import fcntl
    import socket
    (tmp_path / "root").mkdir()
    fd = os.open(str(tmp_path / "root" / ".lockstep.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0,
                                 "started": "earlier", "doing": "uv 0.13.9 install"}).encode())
        result = m.run(archive_params(tmp_path, timeout=1), check_mode=False)
    finally:
        os.close(fd)
    assert result["failed"] and result["msg"].startswith("%s is locked by " % (tmp_path / "root"))
    assert result["msg"].endswith("waited 1s (timeout)") and str(os.getpid()) in result["msg"]
    assert os.listdir(str(tmp_path / "root")) == [".lockstep.lock"]


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
