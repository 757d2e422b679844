"""MPI probe: parsers on outputs captured on Debian 12/13 MPI stacks, verdicts, smoke test."""

import os
import sys

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi_ident, mpi_probe

# Captured in a Debian 12 container (openmpi-bin 4.1.4, mpich 4.0.2, PyPI mpich 5.0.2).
OMPI4_LIB = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022"
MPICH_LIB = "MPICH Version:  4.0.2\nMPICH Release date:     Thu Apr  7 12:34:45 CDT 2022\nMPICH ABI:      14:2:2"
OMPI4_LAUNCHER = "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
OMPI5_LAUNCHER = "mpiexec (Open MPI) 5.0.7\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
HYDRA_LAUNCHER = "HYDRA build details:\n    Version:                                 4.0.2\n    Release Date: x\n"
LDCONFIG = """3 libs found in cache `/etc/ld.so.cache'
\tlibmpich.so.12 (libc6,x86-64) => /lib/x86_64-linux-gnu/libmpich.so.12
\tlibmpi_cxx.so.40 (libc6,x86-64) => /lib/x86_64-linux-gnu/libmpi_cxx.so.40
\tlibmpi.so.40 (libc6,x86-64) => /lib/x86_64-linux-gnu/libmpi.so.40
\tlibmpi.so (libc6,x86-64) => %s
"""


@pytest.mark.parametrize("text, expected", [
    (OMPI4_LIB, ("openmpi", "4.1.4")),
    (MPICH_LIB, ("mpich", "4.0.2")),
    ("Intel(R) MPI Library 2021.13 for Linux* OS\n", ("impi", "2021.13")),
    ("MVAPICH2 Version:     2.3.7\nMVAPICH2 Release date: x", ("mvapich", "2.3.7")),
    ("Some other MPI 1.0", (None, None)),
    (None, (None, None)),
])
def test_parse_library_version(text, expected):
    assert mpi_ident.parse_library_version(text) == expected


@pytest.mark.parametrize("text, expected", [
    (OMPI4_LAUNCHER, ("openmpi", "4.1.4")),
    (OMPI5_LAUNCHER, ("openmpi", "5.0.7")),
    (HYDRA_LAUNCHER, ("mpich", "4.0.2")),
    ("mpirun (Open MPI) 5.0.7\n\nReport bugs to https://www.open-mpi.org/community/help/\n", ("openmpi", "5.0.7")),
    ("mpiexec.openmpi (OpenRTE) 4.1.4\n", ("openmpi", "4.1.4")),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.13 Build 2024", ("impi", "2021.13")),
    ("usage: something", (None, None)),
])
def test_parse_launcher_version(text, expected):
    assert mpi_ident.parse_launcher_version(text) == expected


@pytest.mark.parametrize("path, flavor", [
    ("/usr/bin/mpiexec.openmpi", "openmpi"),
    ("/usr/bin/orterun", "openmpi"),
    ("/usr/bin/mpiexec.hydra", "mpich"),
    ("/usr/lib64/mpich/bin/mpiexec", "mpich"),
    ("/usr/bin/mpiexec", None),
])
def test_flavor_of_a_launcher_path(path, flavor):
    assert mpi_ident.flavor_of_path(path) == flavor


@pytest.mark.parametrize("path, variant", [
    ("/v/mpi4py/MPI.openmpi.cpython-311-x86_64-linux-gnu.so", "openmpi"),
    ("/v/mpi4py/MPI.mpich.cpython-313-x86_64-linux-gnu.so", "mpich"),
    ("/v/mpi4py/MPI.cpython-311-x86_64-linux-gnu.so", None),
    ("/v/mpi4py/MPI.abi3.so", None),
    (None, None),
])
def test_variant_from_extension(path, variant):
    assert mpi_probe.variant_from_extension(path) == variant


def test_parse_ldconfig_default_follows_libmpi_so(tmp_path):
    real = tmp_path / "libmpich.so.12.2.2"
    real.write_text("")
    (tmp_path / "libmpi.so").symlink_to(real)
    found = mpi_probe.parse_ldconfig(LDCONFIG % (tmp_path / "libmpi.so"))
    assert found["default"] == "mpich"
    assert found["openmpi"] == "/lib/x86_64-linux-gnu/libmpi.so.40"
    assert found["mpich"] == "/lib/x86_64-linux-gnu/libmpich.so.12"


def facts(library=None, launcher=None, raw=None):
    base_library = {"flavor": "openmpi", "version": "4.1.4", "variant": "openmpi",
                    "libmpi": "/usr/lib/libmpi.so.40", "in_venv": False}
    base_launcher = {"path": "/usr/bin/mpiexec", "flavor": "openmpi", "version": "4.1.4", "in_venv": False}
    base_raw = {"extension": "/v/MPI.openmpi.so", "library_version": OMPI4_LIB}
    base_library.update(library or {})
    base_launcher.update(launcher or {})
    base_raw.update(raw or {})
    return {"library": base_library, "launcher": base_launcher, "raw": base_raw}


PASSED = {"passed": True, "reasons": []}


def test_verdict_compatible():
    assert mpi_probe.verdict(facts(), [], PASSED) == ("compatible", [])
    verdict, reasons = mpi_probe.verdict(facts(), [], None)
    assert verdict == "compatible" and "smoke test not run" in reasons[0]


def test_verdict_launcher_of_other_flavor():
    verdict, reasons = mpi_probe.verdict(facts(launcher={"flavor": "mpich", "version": "4.0.2"}), [], PASSED)
    assert verdict == "incompatible"
    assert reasons == ["launcher /usr/bin/mpiexec is mpich but mpi4py loaded openmpi"]


def test_verdict_same_abi_family_is_compatible():
    impi = facts(library={"flavor": "impi", "variant": "mpich", "version": "2021.13"},
                 launcher={"flavor": "mpich", "version": "4.0.2"})
    assert mpi_probe.verdict(impi, [], PASSED)[0] == "compatible"


def test_verdict_open_mpi_major_mismatch():
    verdict, reasons = mpi_probe.verdict(facts(launcher={"version": "5.0.7"}), [], PASSED)
    assert verdict == "incompatible" and "5.0.7" in reasons[0] and "4.1.4" in reasons[0]


def test_verdict_mpi_wheel_shadowing():
    shadow = facts(library={"flavor": "mpich", "variant": "mpich", "version": "5.0.2", "in_venv": True,
                            "libmpi": "/v/lib/libmpi.so.12"},
                   launcher={"path": "/v/bin/mpiexec", "flavor": "mpich", "version": "5.0.2", "in_venv": True})
    verdict, reasons = mpi_probe.verdict(shadow, ["mpich"], PASSED)
    assert verdict == "incompatible"
    assert reasons == [
        "PyPI MPI wheel 'mpich' installed in the venv",
        "libmpi loaded from inside the venv (/v/lib/libmpi.so.12) shadows the system MPI",
        "launcher /v/bin/mpiexec comes from inside the venv and shadows the system one",
    ]


def test_verdict_import_error_is_incompatible_missing_mpi4py_unknown():
    broken = facts(raw={"import_error": "libmpi.so.12: cannot open shared object file", "extension": None})
    assert mpi_probe.verdict(broken, [], None)[0] == "incompatible"
    absent = facts(raw={"import_error": "No module named 'mpi4py'"})
    assert mpi_probe.verdict(absent, [], None) == ("unknown", ["mpi4py is not installed in the venv"])


def test_verdict_unknown_without_launcher_or_flavor():
    assert mpi_probe.verdict(facts(launcher={"path": None, "error": "no launcher"}), [], None) == (
        "unknown", ["no launcher"])
    verdict, reasons = mpi_probe.verdict(facts(library={"flavor": None}), [], None)
    assert verdict == "unknown" and "unrecognised MPI library" in reasons[0]


def test_verdict_failed_smoke_wins():
    smoke = {"passed": False, "reasons": ["ranks [0, 0], expected [0, 1]"]}
    assert mpi_probe.verdict(facts(), [], smoke) == ("incompatible", ["smoke test: ranks [0, 0], expected [0, 1]"])


def test_system_facts_prefers_loaded_system_library_then_ldconfig():
    library = {"flavor": "openmpi", "version": "4.1.4", "in_venv": False}
    assert mpi_probe.system_facts(library, {}, {})["source"] == "libmpi loaded by mpi4py"
    shadowed = {"flavor": "mpich", "version": "5.0.2", "in_venv": True}
    venv_launcher = {"flavor": "mpich", "version": "5.0.2", "in_venv": True}
    system = mpi_probe.system_facts(shadowed, venv_launcher, {"openmpi": "/l", "mpich": "/m", "default": "openmpi"})
    assert system == {"flavor": "openmpi", "version": None, "source": "ldconfig cache"}
    launcher = {"flavor": "openmpi", "version": "4.1.4", "in_venv": False}
    assert mpi_probe.system_facts(shadowed, launcher, {"openmpi": "/l"})["version"] == "4.1.4"
    assert mpi_probe.system_facts({}, launcher, {})["source"] == "launcher"


def test_evaluate_smoke_pass_and_other_flavor_launcher():
    good = mpi_probe.evaluate_smoke(0, "LOCKSTEP-RANK 1 2 h\nLOCKSTEP-RANK 0 2 h\n", "", 2)
    assert good["passed"] and good["ranks"] == [0, 1] and good["sizes"] == [2]
    # What mpiexec.mpich prints for an Open MPI build (captured): every rank alone.
    stderr = ("Your environment has PMI_SIZE=2 set, but mpi4py was built with Open MPI.\n"
              "<frozen importlib._bootstrap>:241: RuntimeWarning: suspicious MPI execution environment\n")
    bad = mpi_probe.evaluate_smoke(0, "LOCKSTEP-RANK 0 1 h\nLOCKSTEP-RANK 0 1 h\n", stderr, 2)
    assert not bad["passed"] and bad["suspicious_warning"]
    assert bad["reasons"][0] == "ranks [0, 0], expected [0, 1]"
    assert bad["stderr_tail"][-1].endswith("suspicious MPI execution environment")
    timed_out = mpi_probe.evaluate_smoke(None, "", "", 2, timeout=5)
    assert "launch timed out after 5s" in timed_out["reasons"]


def test_smoke_command_flags():
    assert "--oversubscribe" in mpi_probe.smoke_command("/usr/bin/mpiexec", "openmpi", "/v/bin/python")
    hydra = mpi_probe.smoke_command("/usr/bin/mpiexec", "mpich", "/v/bin/python")
    assert "--oversubscribe" not in hydra and hydra[:3] == ["/usr/bin/mpiexec", "-n", "2"]


def test_smoke_environment_allows_root_only_for_open_mpi(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert mpi_probe.smoke_environment({}, "openmpi")["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in mpi_probe.smoke_environment({}, "mpich")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in mpi_probe.smoke_environment({}, "openmpi")


def test_probe_reports_python_even_when_mpi_import_crashes(tmp_path):
    site = tmp_path / "site"
    (site / "mpi4py").mkdir(parents=True)
    (site / "mpi4py" / "__init__.py").write_text(
        "__version__ = '4.1.2'\nclass rc:\n    pass\nimport os\nos._exit(-11 & 0xff)\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    python, mpi, error = mpi_probe.probe(sys.executable, env, timeout=30)
    assert python["marker_environment"]["python_full_version"] == "%d.%d.%d" % sys.version_info[:3]
    assert mpi == {"error": error} and error.startswith("the probe exited 245")


def test_probe_cannot_run():
    assert mpi_probe.probe("/nonexistent/python", {}, 5)[2].startswith("cannot run /nonexistent/python")


def test_find_launcher_walks_path(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
    (second / "mpirun").write_text("")
    (second / "mpirun").chmod(0o755)
    (first / "mpiexec").write_text("")  # not executable: skipped
    env = {"PATH": "%s:%s" % (first, second)}
    assert mpi_probe.find_launcher(env) == str(second / "mpirun")
    assert mpi_probe.find_launcher(env, "/explicit/mpiexec") == "/explicit/mpiexec"


def test_provisioned_flavor_from_the_env_file_is_the_expectation():
    provisioned = {"flavor": "mpich", "version": "4.0.2"}
    system = mpi_probe.system_facts({"flavor": "openmpi", "in_venv": False}, {}, {}, provisioned)
    assert system == {"flavor": "mpich", "version": "4.0.2", "source": "lockstep.env"}
    mismatch = dict(facts(), system=system)
    verdict, reasons = mpi_probe.verdict(mismatch, [], PASSED)
    assert verdict == "incompatible"
    assert reasons == ["the host was provisioned with mpich but mpi4py loaded openmpi"]
    matching = dict(facts(), system=mpi_probe.system_facts({}, {}, {}, {"flavor": "openmpi"}))
    assert mpi_probe.verdict(matching, [], PASSED) == ("compatible", [])
