"""plugins/module_utils/mpi.py: MPI names and versions on outputs captured on Debian 12/13 MPI
stacks, the selection (alternatives, ABI link, facts) on a fake host in a temp dir (both flavors
"installed", fake update-alternatives and dpkg-query on PATH that keep their state in JSON files
and really re-point the links), the venv probe's verdicts and the smoke test."""

import hashlib
import json
import os
import sys
import textwrap

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions
from ansible_collections.lockstep.cluster.plugins.module_utils import mpi as m

# `update-alternatives --query mpi-x86_64-linux-gnu` on Debian 12 with both flavors installed.
QUERY_ARCH = """\
Name: mpi-x86_64-linux-gnu
Link: /usr/include/x86_64-linux-gnu/mpi
Slaves:
 libmpi.so-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/libmpi.so
 mpi.pc-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/pkgconfig/mpi.pc
Status: auto
Best: /usr/lib/x86_64-linux-gnu/openmpi/include
Value: /usr/lib/x86_64-linux-gnu/openmpi/include

Alternative: /usr/include/x86_64-linux-gnu/mpich
Priority: 40
Slaves:
 libmpi.so-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/libmpich.so
 mpi.pc-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/pkgconfig/mpich.pc

Alternative: /usr/lib/x86_64-linux-gnu/openmpi/include
Priority: 50
Slaves:
 libmpi.so-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openmpi/lib/libmpi.so
 mpi.pc-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/pkgconfig/ompi.pc
"""

QUERY_MPIRUN_MANUAL_MPICH = """\
Name: mpirun
Link: /usr/bin/mpirun
Slaves:
 mpiexec /usr/bin/mpiexec
Status: manual
Best: /usr/bin/mpirun.openmpi
Value: /usr/bin/mpirun.mpich

Alternative: /usr/bin/mpirun.mpich
Priority: 40
Slaves:
 mpiexec /usr/bin/mpiexec.mpich

Alternative: /usr/bin/mpirun.openmpi
Priority: 50
Slaves:
 mpiexec /usr/bin/mpiexec.openmpi
"""

QUERY_OPENMPI_ONLY = """\
Name: mpi
Link: /usr/bin/mpicc
Status: auto
Best: /usr/bin/mpicc.openmpi
Value: /usr/bin/mpicc.openmpi

Alternative: /usr/bin/mpicc.openmpi
Priority: 50
"""


def test_parse_query():
    info = m.parse_query(QUERY_ARCH)
    assert info["name"] == "mpi-x86_64-linux-gnu"
    assert info["status"] == "auto"
    assert info["value"] == "/usr/lib/x86_64-linux-gnu/openmpi/include"
    assert info["alternatives"] == ["/usr/include/x86_64-linux-gnu/mpich", "/usr/lib/x86_64-linux-gnu/openmpi/include"]


@pytest.mark.parametrize("path, flavor", [
    ("/usr/bin/mpicc.mpich", "mpich"),
    ("/usr/bin/mpirun.openmpi", "openmpi"),
    ("/usr/include/x86_64-linux-gnu/mpich", "mpich"),
    ("/usr/lib/x86_64-linux-gnu/openmpi/include", "openmpi"),
    ("/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4", "openmpi"),
    ("/usr/lib/x86_64-linux-gnu/libmpi.so.12", "mpich"),
    ("/usr/bin/opal_wrapper", None),
    (None, None),
])
def test_flavor_of_path(path, flavor):
    assert m.flavor_of_path(path) == flavor


def test_plan_pins_every_alternative_to_one_flavor():
    queries = {"mpi-x86_64-linux-gnu": m.parse_query(QUERY_ARCH), "mpirun": m.parse_query(QUERY_MPIRUN_MANUAL_MPICH)}
    changes, errors = m.plan_alternatives(queries, "mpich")
    assert errors == []
    # mpirun is already manual on mpich: only the auto/openmpi one changes.
    assert changes == [{"name": "mpi-x86_64-linux-gnu", "before": "/usr/lib/x86_64-linux-gnu/openmpi/include",
                        "status": "auto", "after": "/usr/include/x86_64-linux-gnu/mpich"}]
    changes, errors = m.plan_alternatives(queries, "openmpi")
    # Right value but auto mode still gets pinned (a later install could flip auto mode).
    assert [c["name"] for c in changes] == ["mpi-x86_64-linux-gnu", "mpirun"]
    assert changes[1]["after"] == "/usr/bin/mpirun.openmpi"


def test_plan_errors_name_the_missing_flavor():
    changes, errors = m.plan_alternatives({"mpi": m.parse_query(QUERY_OPENMPI_ONLY), "mpirun": None}, "mpich")
    assert changes == []
    assert errors == [
        "alternative 'mpi' has no mpich choice (registered: /usr/bin/mpicc.openmpi)",
        "alternative 'mpirun' is not registered (is the mpich development package installed?)",
    ]


class FakeFs(object):
    def __init__(self, files=(), links=None, owned=()):
        self.files = set(files)
        self.links = dict(links or {})
        self.owned = set(owned)

    def exists(self, path):
        if path in self.links:
            target = self.links[path]
            return self.exists(target if target.startswith("/") else path.rsplit("/", 1)[0] + "/" + target)
        return path in self.files

    def islink(self, path):
        return path in self.links

    def readlink(self, path):
        return self.links[path]

    def owned_by_package(self, path):
        return path in self.owned

    def plan(self, flavor):
        return m.plan_abi_link(LIB, flavor, self.exists, self.islink, self.readlink, self.owned_by_package)


LIB = "/usr/lib/x86_64-linux-gnu"


def test_abi_link_debian12_mpich_is_created():
    fs = FakeFs(files=[LIB + "/libmpich.so.12"])
    assert fs.plan("mpich") == ("create", LIB + "/libmpi.so.12")


def test_abi_link_debian13_packaged_link_is_left_alone():
    fs = FakeFs(files=[LIB + "/libmpich.so.12.4.1"], links={LIB + "/libmpi.so.12": "libmpich.so.12.4.1"},
                owned=[LIB + "/libmpi.so.12"])
    assert fs.plan("mpich") == (None, LIB + "/libmpi.so.12")
    assert fs.plan("openmpi") == (None, LIB + "/libmpi.so.12")


def test_abi_link_ours_is_removed_when_switching_away():
    fs = FakeFs(files=[LIB + "/libmpich.so.12"], links={LIB + "/libmpi.so.12": "libmpich.so.12"})
    assert fs.plan("mpich") == (None, LIB + "/libmpi.so.12")
    assert fs.plan("openmpi") == ("remove", LIB + "/libmpi.so.12")
    # Same target but owned by a package: not ours.
    fs.owned.add(LIB + "/libmpi.so.12")
    assert fs.plan("openmpi") == (None, LIB + "/libmpi.so.12")


def test_abi_link_dangling_is_recreated_and_missing_mpich_reported():
    fs = FakeFs(files=[LIB + "/libmpich.so.12"], links={LIB + "/libmpi.so.12": "libmpich.so.12.9"})
    assert fs.plan("mpich") == ("create", LIB + "/libmpi.so.12")
    assert FakeFs().plan("mpich") == ("missing-mpich", LIB + "/libmpi.so.12")


def test_flavored_path_walks_the_alternatives_chain():
    links = {"/usr/bin/mpicc": "/etc/alternatives/mpi", "/etc/alternatives/mpi": "/usr/bin/mpicc.openmpi",
             "/usr/bin/mpicc.openmpi": "opal_wrapper"}
    assert m.link_chain("/usr/bin/mpicc", links.get, links.__contains__) == [
        "/usr/bin/mpicc", "/etc/alternatives/mpi", "/usr/bin/mpicc.openmpi", "/usr/bin/opal_wrapper"]
    assert m.flavored_path("/usr/bin/mpicc", links.get, links.__contains__) == "/usr/bin/mpicc.openmpi"
    assert m.flavored_path("/opt/x/mpicc", links.get, links.__contains__) == "/opt/x/mpicc"


def test_runtime_env():
    env = m.runtime_env("openmpi", "4.1.4", "/usr/lib/x86_64-linux-gnu/libmpi.so.40", allow_run_as_root=True,
                        extra={"OMPI_MCA_btl": "self,vader"})
    assert env == {
        "LOCKSTEP_MPI_FLAVOR": "openmpi",
        "LOCKSTEP_MPI_VERSION": "4.1.4",
        "MPI4PY_MPIABI": "openmpi",
        "MPI4PY_LIBMPI": "/usr/lib/x86_64-linux-gnu/libmpi.so.40",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl": "self,vader",
    }
    # Root flags are Open MPI only; RHEL paths come in through os_env.
    env = m.runtime_env("mpich", "4.1.1", "/usr/lib64/mpich/lib/libmpi.so.12", allow_run_as_root=True,
                        os_env={"MPI_BIN": "/usr/lib64/mpich/bin", "LD_LIBRARY_PATH": "/usr/lib64/mpich/lib"})
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env
    assert env["MPI_BIN"] == "/usr/lib64/mpich/bin"


def test_consistency_problems():
    assert m.consistency_problems("mpich", "mpich", "/usr/bin/mpicc.mpich",
                                  "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2") == []
    assert m.consistency_problems("mpich", "openmpi", "/usr/bin/mpicc.openmpi",
                                  "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4") == [
        "mpiexec is openmpi, not mpich",
        "mpicc is openmpi (/usr/bin/mpicc.openmpi)",
        "libmpi.so is openmpi (/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4)",
    ]


# Captured in a Debian 12 container (openmpi-bin 4.1.4, mpich 4.0.2, PyPI mpich 5.0.2).
OMPI4_LIB = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022"
MPICH_LIB = "MPICH Version:  4.0.2\nMPICH Release date:     Thu Apr  7 12:34:45 CDT 2022\nMPICH ABI:      14:2:2"
OMPI4_LAUNCHER = "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-m.org/community/help/\n"
OMPI5_LAUNCHER = "mpiexec (Open MPI) 5.0.7\n\nReport bugs to https://www.open-m.org/community/help/\n"
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
    assert m.parse_library_version(text) == expected


@pytest.mark.parametrize("text, expected", [
    (OMPI4_LAUNCHER, ("openmpi", "4.1.4")),
    (OMPI5_LAUNCHER, ("openmpi", "5.0.7")),
    (HYDRA_LAUNCHER, ("mpich", "4.0.2")),
    ("mpirun (Open MPI) 5.0.7\n\nReport bugs to https://www.open-m.org/community/help/\n", ("openmpi", "5.0.7")),
    ("mpiexec.openmpi (OpenRTE) 4.1.4\n", ("openmpi", "4.1.4")),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.13 Build 2024", ("impi", "2021.13")),
    ("usage: something", (None, None)),
])
def test_parse_launcher_version(text, expected):
    assert m.parse_launcher_version(text) == expected


@pytest.mark.parametrize("path, flavor", [
    ("/usr/bin/mpiexec.openmpi", "openmpi"),
    ("/usr/bin/orterun", "openmpi"),
    ("/usr/bin/mpiexec.hydra", "mpich"),
    ("/usr/lib64/mpich/bin/mpiexec", "mpich"),
    ("/usr/bin/mpiexec", None),
])
def test_flavor_of_a_launcher_path(path, flavor):
    assert m.flavor_of_path(path) == flavor


@pytest.mark.parametrize("path, variant", [
    ("/v/mpi4py/MPI.openmpi.cpython-311-x86_64-linux-gnu.so", "openmpi"),
    ("/v/mpi4py/MPI.mpich.cpython-313-x86_64-linux-gnu.so", "mpich"),
    ("/v/mpi4py/MPI.cpython-311-x86_64-linux-gnu.so", None),
    ("/v/mpi4py/MPI.abi3.so", None),
    (None, None),
])
def test_variant_from_extension(path, variant):
    assert m.variant_from_extension(path) == variant


def test_parse_ldconfig_default_follows_libmpi_so(tmp_path):
    real = tmp_path / "libmpich.so.12.2.2"
    real.write_text("")
    (tmp_path / "libmpi.so").symlink_to(real)
    found = m.parse_ldconfig(LDCONFIG % (tmp_path / "libmpi.so"))
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
    assert m.verdict(facts(), [], PASSED) == ("compatible", [])
    verdict, reasons = m.verdict(facts(), [], None)
    assert verdict == "compatible" and "smoke test not run" in reasons[0]


def test_verdict_launcher_of_other_flavor():
    verdict, reasons = m.verdict(facts(launcher={"flavor": "mpich", "version": "4.0.2"}), [], PASSED)
    assert verdict == "incompatible"
    assert reasons == ["launcher /usr/bin/mpiexec is mpich but mpi4py loaded openmpi"]


def test_verdict_same_abi_family_is_compatible():
    impi = facts(library={"flavor": "impi", "variant": "mpich", "version": "2021.13"},
                 launcher={"flavor": "mpich", "version": "4.0.2"})
    assert m.verdict(impi, [], PASSED)[0] == "compatible"


def test_verdict_open_mpi_major_mismatch():
    verdict, reasons = m.verdict(facts(launcher={"version": "5.0.7"}), [], PASSED)
    assert verdict == "incompatible" and "5.0.7" in reasons[0] and "4.1.4" in reasons[0]


def test_verdict_mpi_wheel_shadowing():
    shadow = facts(library={"flavor": "mpich", "variant": "mpich", "version": "5.0.2", "in_venv": True,
                            "libmpi": "/v/lib/libmpi.so.12"},
                   launcher={"path": "/v/bin/mpiexec", "flavor": "mpich", "version": "5.0.2", "in_venv": True})
    verdict, reasons = m.verdict(shadow, ["mpich"], PASSED)
    assert verdict == "incompatible"
    assert reasons == [
        "PyPI MPI wheel 'mpich' installed in the venv",
        "libmpi loaded from inside the venv (/v/lib/libmpi.so.12) shadows the system MPI",
        "launcher /v/bin/mpiexec comes from inside the venv and shadows the system one",
    ]


def test_verdict_import_error_is_incompatible_missing_mpi4py_unknown():
    broken = facts(raw={"import_error": "libmpi.so.12: cannot open shared object file", "extension": None})
    assert m.verdict(broken, [], None)[0] == "incompatible"
    absent = facts(raw={"import_error": "No module named 'mpi4py'"})
    assert m.verdict(absent, [], None) == ("unknown", ["mpi4py is not installed in the venv"])


def test_verdict_unknown_without_launcher_or_flavor():
    assert m.verdict(facts(launcher={"path": None, "error": "no launcher"}), [], None) == (
        "unknown", ["no launcher"])
    verdict, reasons = m.verdict(facts(library={"flavor": None}), [], None)
    assert verdict == "unknown" and "unrecognised MPI library" in reasons[0]


def test_verdict_failed_smoke_wins():
    smoke = {"passed": False, "reasons": ["ranks [0, 0], expected [0, 1]"]}
    assert m.verdict(facts(), [], smoke) == ("incompatible", ["smoke test: ranks [0, 0], expected [0, 1]"])


def test_system_facts_prefers_loaded_system_library_then_ldconfig():
    library = {"flavor": "openmpi", "version": "4.1.4", "in_venv": False}
    assert m.system_facts(library, {}, {})["source"] == "libmpi loaded by mpi4py"
    shadowed = {"flavor": "mpich", "version": "5.0.2", "in_venv": True}
    venv_launcher = {"flavor": "mpich", "version": "5.0.2", "in_venv": True}
    system = m.system_facts(shadowed, venv_launcher, {"openmpi": "/l", "mpich": "/m", "default": "openmpi"})
    assert system == {"flavor": "openmpi", "version": None, "source": "ldconfig cache"}
    launcher = {"flavor": "openmpi", "version": "4.1.4", "in_venv": False}
    assert m.system_facts(shadowed, launcher, {"openmpi": "/l"})["version"] == "4.1.4"
    assert m.system_facts({}, launcher, {})["source"] == "launcher"


def test_evaluate_smoke_pass_and_other_flavor_launcher():
    good = m.evaluate_smoke(0, "LOCKSTEP-RANK 1 2 h\nLOCKSTEP-RANK 0 2 h\n", "", 2)
    assert good["passed"] and good["ranks"] == [0, 1] and good["sizes"] == [2]
    # What mpiexec.mpich prints for an Open MPI build (captured): every rank alone.
    stderr = ("Your environment has PMI_SIZE=2 set, but mpi4py was built with Open MPI.\n"
              "<frozen importlib._bootstrap>:241: RuntimeWarning: suspicious MPI execution environment\n")
    bad = m.evaluate_smoke(0, "LOCKSTEP-RANK 0 1 h\nLOCKSTEP-RANK 0 1 h\n", stderr, 2)
    assert not bad["passed"] and bad["suspicious_warning"]
    assert bad["reasons"][0] == "ranks [0, 0], expected [0, 1]"
    assert bad["stderr_tail"][-1].endswith("suspicious MPI execution environment")
    timed_out = m.evaluate_smoke(None, "", "", 2, timeout=5)
    assert "launch timed out after 5s" in timed_out["reasons"]


def test_smoke_command_flags():
    assert "--oversubscribe" in m.smoke_command("/usr/bin/mpiexec", "openmpi", "/v/bin/python")
    hydra = m.smoke_command("/usr/bin/mpiexec", "mpich", "/v/bin/python")
    assert "--oversubscribe" not in hydra and hydra[:3] == ["/usr/bin/mpiexec", "-n", "2"]


def test_smoke_environment_allows_root_only_for_open_mpi(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert m.smoke_environment({}, "openmpi")["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in m.smoke_environment({}, "mpich")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in m.smoke_environment({}, "openmpi")


def test_probe_reports_python_even_when_mpi_import_crashes(tmp_path):
    site = tmp_path / "site"
    (site / "mpi4py").mkdir(parents=True)
    (site / "mpi4py" / "__init__.py").write_text(
        "__version__ = '4.1.2'\nclass rc:\n    pass\nimport os\nos._exit(-11 & 0xff)\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    python, mpi_facts, error = m.probe(sys.executable, env, timeout=30)
    assert python["marker_environment"]["python_full_version"] == "%d.%d.%d" % sys.version_info[:3]
    assert mpi_facts == {"error": error} and error.startswith("the probe exited 245")


def test_probe_cannot_run():
    assert m.probe("/nonexistent/python", {}, 5)[2].startswith("cannot run /nonexistent/python")


def test_find_launcher_walks_path(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
    (second / "mpirun").write_text("")
    (second / "mpirun").chmod(0o755)
    (first / "mpiexec").write_text("")  # not executable: skipped
    env = {"PATH": "%s:%s" % (first, second)}
    assert m.find_launcher(env) == str(second / "mpirun")
    assert m.find_launcher(env, "/explicit/mpiexec") == "/explicit/mpiexec"


def test_provisioned_flavor_from_the_env_file_is_the_expectation():
    provisioned = {"flavor": "mpich", "version": "4.0.2"}
    system = m.system_facts({"flavor": "openmpi", "in_venv": False}, {}, {}, provisioned)
    assert system == {"flavor": "mpich", "version": "4.0.2", "source": "lockstep.env"}
    mismatch = dict(facts(), system=system)
    verdict, reasons = m.verdict(mismatch, [], PASSED)
    assert verdict == "incompatible"
    assert reasons == ["the host was provisioned with mpich but mpi4py loaded openmpi"]
    matching = dict(facts(), system=m.system_facts({}, {}, {}, {"flavor": "openmpi"}))
    assert m.verdict(matching, [], PASSED) == ("compatible", [])


UPDATE_ALTERNATIVES = r'''#!{python}
import json, os, sys
state_file, log_file = {state!r}, {log!r}
state = json.load(open(state_file))
with open(log_file, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
action, name = sys.argv[1], sys.argv[2]
alt = state.get(name)
if alt is None:
    sys.stderr.write("update-alternatives: error: no alternatives for %s\n" % name)
    sys.exit(2)
if action == "--query":
    print("Name: %s\nLink: %s\nStatus: %s\nBest: %s\nValue: %s\n" % (
        name, alt["link"], alt["status"], sorted(alt["choices"])[-1], alt["value"] or "none"))
    for path in sorted(alt["choices"]):
        print("Alternative: %s\nPriority: 40\n" % path)
    sys.exit(0)
if action == "--set":
    path = sys.argv[3]
    if path not in alt["choices"] or os.environ.get("FAKE_SET_FAILS"):
        sys.stderr.write("update-alternatives: error: alternative %s for %s not registered\n" % (path, name))
        sys.exit(2)
    alt.update(value=path, status="manual")
    for link, target in alt["choices"][path].items():
        os.unlink(link)
        os.symlink(target, link)
    json.dump(state, open(state_file, "w"))
    sys.exit(0)
sys.exit(2)
'''

DPKG_QUERY = r'''#!{python}
import json, sys
installed = json.load(open({packages!r}))
if sys.argv[1] == "--search":
    sys.exit(1)  # no package owns the files the module asks about
names = [a for a in sys.argv[1:] if not a.startswith("-") and "$" not in a]
for name in names:
    if name in installed:
        print("%s ii " % name)
sys.exit(0 if all(n in installed for n in names) else 1)
'''

PACKAGES = {"openmpi": ["openmpi-bin", "libopenmpi-dev"], "mpich": ["mpich", "libmpich-dev"]}
ARCH_ALT = "mpi-x86_64-linux-gnu"


class Host(object):
    """The fake host: bin/, lib/, etc/ and the tools' state."""

    def __init__(self, root, monkeypatch):
        self.root = root
        self.bin, self.lib, fake = root / "bin", root / "lib", root / "fakebin"
        for d in (self.bin, self.lib / "openmpi" / "lib", fake, root / "include"):
            d.mkdir(parents=True)
        launchers = {"openmpi": "mpiexec (OpenRTE) 4.1.4", "mpich": "HYDRA build details:\n    Version:   4.0.2"}
        for flavor, text in launchers.items():
            self.script(self.bin / ("mpiexec." + flavor), "#!/bin/sh\nprintf '%%s\\n' '%s'\n" % text)
            self.script(self.bin / ("mpirun." + flavor), "#!/bin/sh\n")
            self.script(self.bin / ("mpicc." + flavor), "#!/bin/sh\n")
        for name in ("libmpi.so.40", "openmpi/lib/libmpi.so", "libmpich.so.12", "libmpich.so"):
            (self.lib / name).write_text(name)
        b, lib = str(self.bin), str(self.lib)
        self.state = {
            "mpirun": {"link": b + "/mpirun", "status": "auto", "value": b + "/mpirun.openmpi", "choices": dict(
                (b + "/mpirun." + f, {b + "/mpirun": b + "/mpirun." + f, b + "/mpiexec": b + "/mpiexec." + f})
                for f in ("openmpi", "mpich"))},
            "mpi": {"link": b + "/mpicc", "status": "auto", "value": b + "/mpicc.openmpi", "choices": dict(
                (b + "/mpicc." + f, {b + "/mpicc": b + "/mpicc." + f}) for f in ("openmpi", "mpich"))},
            ARCH_ALT: {"link": str(root / "include" / "mpi"), "status": "auto", "value": lib + "/openmpi/include",
                       "choices": {lib + "/openmpi/include": {lib + "/libmpi.so": lib + "/openmpi/lib/libmpi.so"},
                                   "/usr/include/x86_64-linux-gnu/mpich": {lib + "/libmpi.so": lib + "/libmpich.so"}}},
        }
        for alt in self.state.values():  # auto mode: Open MPI everywhere
            for link, target in alt["choices"][alt["value"]].items():
                os.symlink(target, link)
        self.packages = set(PACKAGES["openmpi"] + PACKAGES["mpich"])
        self.save()
        self.script(fake / "update-alternatives", UPDATE_ALTERNATIVES.format(
            python=sys.executable, state=str(root / "alternatives.json"), log=str(root / "alternatives.log")))
        self.script(fake / "dpkg-query", DPKG_QUERY.format(python=sys.executable, packages=str(root / "packages.json")))
        monkeypatch.setenv("PATH", "%s:%s" % (fake, os.environ["PATH"]))
        monkeypatch.setattr(distributions, "package_manager", lambda: "apt")

    @staticmethod
    def script(path, text):
        path.write_text(text)
        path.chmod(0o755)

    def save(self):
        (self.root / "alternatives.json").write_text(json.dumps(self.state))
        (self.root / "packages.json").write_text(json.dumps(sorted(self.packages)))

    def load(self):
        self.state = json.loads((self.root / "alternatives.json").read_text())
        return self.state

    def sets(self):
        log = self.root / "alternatives.log"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [c[1:] for c in calls if c[0] == "--set"]

    def snapshot(self):
        out = []
        for root, dirs, files in os.walk(str(self.root)):
            for name in sorted(dirs + files):
                full = os.path.join(root, name)
                if name == "alternatives.log":
                    continue
                if os.path.islink(full):
                    out.append((full, os.readlink(full)))
                elif os.path.isfile(full):
                    with open(full, "rb") as handle:
                        out.append((full, hashlib.sha256(handle.read()).hexdigest()))
        return sorted(out)

    def params(self, flavor="openmpi", **over):
        p = dict((name, spec.get("default")) for name, spec in m.ARGUMENT_SPEC.items())
        p.update(flavor=flavor, packages=list(PACKAGES[flavor]), alternatives=["mpi", "mpirun", ARCH_ALT],
                 libdir=str(self.lib), bin_dir=str(self.bin), profile_path=str(self.root / "etc" / "lockstep-mpi.sh"),
                 timeout=30)
        p.update(over)
        return p


@pytest.fixture
def host(tmp_path_factory, monkeypatch):
    # Not tmp_path: its name comes from the test, and a test named *openmpi* would make every
    # fake path look like Open MPI to the flavor guess.
    return Host(tmp_path_factory.mktemp("host"), monkeypatch)


def test_first_run_pins_auto_alternatives_then_converged(host):
    result = m.run(host.params(), check_mode=False, diff=True)
    assert "failed" not in result, result
    assert result["changed"] and sorted(c["name"] for c in result["alternatives"]) == ["mpi", ARCH_ALT, "mpirun"]
    assert "mpirun: %s/mpirun.openmpi (auto)" % host.bin in result["diff"]["before"]
    assert "mpirun: %s/mpirun.openmpi (manual)" % host.bin in result["diff"]["after"]
    assert all(alt["status"] == "manual" for alt in host.load().values())
    runtime = result["runtime"]
    assert runtime["consistent"] and runtime["problems"] == []
    assert runtime["version"] == "4.1.4" and runtime["launcher"] == str(host.bin / "mpiexec.openmpi")
    assert runtime["mpicc"] == str(host.bin / "mpicc.openmpi")
    assert runtime["libmpi"] == str(host.lib / "libmpi.so.40")
    assert runtime["env"] == {"LOCKSTEP_MPI_FLAVOR": "openmpi", "LOCKSTEP_MPI_VERSION": "4.1.4",
                              "MPI4PY_MPIABI": "openmpi", "MPI4PY_LIBMPI": str(host.lib / "libmpi.so.40")}
    sets = len(host.sets())
    again = m.run(host.params(), check_mode=False, diff=True)
    assert again["changed"] is False and "diff" not in again and again["msg"] == "openmpi 4.1.4 was already selected"
    assert len(host.sets()) == sets and again["runtime"] == runtime


def test_switch_to_mpich_check_mode_then_apply_then_back(host):
    m.run(host.params(), check_mode=False)
    before = host.snapshot()
    predicted = m.run(host.params("mpich"), check_mode=True, diff=True)
    assert predicted["changed"] and len(predicted["alternatives"]) == 3
    assert predicted["abi_link"] == {"action": "create", "path": str(host.lib / "libmpi.so.12")}
    assert "%s -> libmpich.so.12" % (host.lib / "libmpi.so.12") in predicted["diff"]["after"]
    assert predicted["runtime"]["flavor"] == "mpich" and not predicted["runtime"]["consistent"]  # not failed
    assert "failed" not in predicted and host.snapshot() == before

    result = m.run(host.params("mpich"), check_mode=False)
    assert "failed" not in result, result
    assert os.readlink(str(host.lib / "libmpi.so.12")) == "libmpich.so.12"
    assert result["runtime"]["consistent"] and result["runtime"]["version"] == "4.0.2"
    assert result["runtime"]["libmpi"] == str(host.lib / "libmpi.so.12")
    assert m.run(host.params("mpich"), check_mode=False)["changed"] is False

    back = m.run(host.params(), check_mode=False)
    assert back["abi_link"]["action"] == "remove" and not os.path.lexists(str(host.lib / "libmpi.so.12"))
    assert back["runtime"]["consistent"]


def test_missing_packages_stop_the_run_before_any_change(host):
    host.packages.discard("libmpich-dev")
    for alt in host.state.values():  # libmpich-dev is what registers MPICH here
        for path in [p for p in alt["choices"] if "mpich" in p]:
            del alt["choices"][path]
    host.save()
    before = host.snapshot()
    result = m.run(host.params("mpich"), check_mode=False, diff=True)
    assert result["needs"] == ["packages"] and result["missing_packages"] == ["libmpich-dev"]
    assert result["changed"] is False and "failed" not in result and host.sets() == []
    assert result["diff"] == {"before": "packages missing: libmpich-dev\n", "after": "packages installed: libmpich-dev\n"}
    predicted = m.run(host.params("mpich"), check_mode=True, diff=True)
    # Unregistered MPICH alternatives are expected before the install: predicted, not failed.
    assert predicted["changed"] and "failed" not in predicted and predicted["needs"] == []
    assert "alternatives mpi, mpirun, %s: mpich (after the install)" % ARCH_ALT in predicted["diff"]["after"]
    assert host.snapshot() == before


def test_an_unregistered_flavor_fails_when_no_package_is_missing(host):
    del host.state[ARCH_ALT]
    host.save()
    result = m.run(host.params(), check_mode=False)
    assert result["failed"] and "alternative '%s' is not registered" % ARCH_ALT in result["msg"]
    assert host.sets() == []


def test_a_launcher_from_the_other_flavor_fails_the_run(host):
    m.run(host.params(), check_mode=False)
    os.unlink(str(host.bin / "mpiexec"))  # someone re-pointed it by hand
    os.symlink(str(host.bin / "mpiexec.mpich"), str(host.bin / "mpiexec"))
    checked = m.run(host.params(), check_mode=True)
    assert "failed" not in checked and checked["runtime"]["consistent"] is False
    result = m.run(host.params(), check_mode=False)
    assert result["failed"] and result["msg"] == "openmpi is not consistently selected: mpiexec is mpich, not openmpi"
    assert result["runtime"]["launcher_flavor"] == "mpich"


def test_mpich_without_its_library(host):
    m.run(host.params("mpich"), check_mode=False)
    os.unlink(str(host.lib / "libmpi.so.12"))
    os.unlink(str(host.lib / "libmpich.so.12"))
    result = m.run(host.params("mpich"), check_mode=False)
    assert result["failed"] and "has neither libmpi.so.12 nor libmpich.so.12" in result["msg"]


def test_update_alternatives_errors_are_named(host, monkeypatch):
    monkeypatch.setenv("FAKE_SET_FAILS", "1")
    result = m.run(host.params(), check_mode=False)
    assert result["failed"]
    assert result["msg"] == ("update-alternatives --set mpi {0}/mpicc.openmpi: it exited 2: update-alternatives: "
                             "error: alternative {0}/mpicc.openmpi for mpi not registered".format(host.bin))
    monkeypatch.setattr(m, "_SYSTEM_DIRS", [])
    monkeypatch.setenv("PATH", str(host.root / "nowhere"))
    result = m.run(host.params(packages=[]), check_mode=False)
    assert result["failed"] and "update-alternatives not found" in result["msg"]


def test_rhel_profile_script_is_written_once_and_updated_when_it_differs(host):
    profile = host.root / "etc" / "lockstep-mpi.sh"
    content = "module load mpi/openmpi-x86_64\n"
    p = host.params(alternatives=[], abi_link=False, profile_content=content, packages=[])
    result = m.run(p, check_mode=True, diff=True)
    assert result["profile"]["action"] == "create" and not profile.exists()
    result = m.run(p, check_mode=False, diff=True)
    assert result["changed"] and profile.read_text() == content and oct(profile.stat().st_mode & 0o777) == "0o644"
    assert result["diff"]["after"] == "%s:\n%s\n" % (profile, content)
    assert m.run(p, check_mode=False)["changed"] is False
    updated = m.run(dict(p, profile_content="module load mpi/mpich-x86_64\n"), check_mode=False, diff=True)
    assert updated["profile"]["action"] == "update" and "openmpi" in updated["diff"]["before"]
    assert host.sets() == []


def test_os_env_root_and_extra_env_reach_the_runtime(host):
    p = host.params(os_env={"MPI_BIN": "/usr/lib64/openmpi/bin"}, allow_run_as_root=True, extra_env={"FI_PROVIDER": "tcp"})
    env = m.run(p, check_mode=False)["runtime"]["env"]
    assert env["MPI_BIN"] == "/usr/lib64/openmpi/bin" and env["FI_PROVIDER"] == "tcp"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"


def test_nothing_installed_in_check_mode_is_not_an_error(host):
    for name in os.listdir(str(host.bin)):
        os.unlink(str(host.bin / name))
    host.packages.clear()
    host.state.clear()
    host.save()
    result = m.run(host.params(), check_mode=True)
    assert "failed" not in result and result["changed"]
    assert result["runtime"]["installed"] is False and result["msg"] == "openmpi is not installed yet"
    assert textwrap.dedent(result["runtime"]["problems"][0]).endswith("mpiexec not found")


# Where each flavor lives per OS family (the RHEL family is unit-tested only: no image here).

@pytest.mark.parametrize("flavor, packages", [
    ("openmpi", ["openmpi", "openmpi-devel"]),
    ("mpich", ["mpich", "mpich-devel"]),
])
def test_rhel_layout(flavor, packages):
    found = m.layout(flavor, "RedHat", "x86_64")
    assert found["packages"] == packages and found["alternatives"] == [] and found["abi_link"] is False
    assert found["bin_dir"] == "/usr/lib64/%s/bin" % flavor and found["libdir"] == "/usr/lib64/%s/lib" % flavor
    # The login profile the module writes (the flavor lives off PATH on this family).
    assert "module load mpi/%s-x86_64 " % flavor in found["profile_content"]
    assert found["profile_content"].endswith("fi\n")
    assert found["os_env"] == {"MPI_BIN": "/usr/lib64/%s/bin" % flavor, "MPI_HOME": "/usr/lib64/%s" % flavor,
                               "MPI_LIB": "/usr/lib64/%s/lib" % flavor, "LD_LIBRARY_PATH": "/usr/lib64/%s/lib" % flavor}
    # What the module hands the venv on such a host.
    env = m.runtime_env(flavor, "x", "%s/%s" % (found["libdir"], m.SONAMES[flavor]), found["os_env"])
    assert env["MPI4PY_LIBMPI"] == "/usr/lib64/%s/lib/%s" % (flavor, m.SONAMES[flavor])
    assert env["MPI_BIN"] == "/usr/lib64/%s/bin" % flavor


def test_rhel_aarch64_module_name():
    assert "module load mpi/openmpi-aarch64 " in m.layout("openmpi", "RedHat", "aarch64")["profile_content"]


@pytest.mark.parametrize("flavor, packages", [
    ("openmpi", ["openmpi-bin", "libopenmpi-dev"]),
    ("mpich", ["mpich", "libmpich-dev"]),
])
def test_debian_layout(flavor, packages):
    found = m.layout(flavor, "Debian", "x86_64")
    assert found["packages"] == packages
    assert found["profile_content"] == ""  # alternatives select the flavor
    assert found["alternatives"] == ["mpi", "mpirun", "mpi-x86_64-linux-gnu"]
    assert found["libdir"] == "/usr/lib/x86_64-linux-gnu" and found["bin_dir"] == "/usr/bin"
    assert found["abi_link"] is True


def test_debian_without_dev_packages_only_pins_mpirun():
    found = m.layout("mpich", "Debian", "x86_64", install_dev=False, extra=["libfabric1"])
    assert found["packages"] == ["mpich", "libfabric1"] and found["alternatives"] == ["mpirun"]


def test_debian_aarch64_multiarch():
    found = m.layout("openmpi", "Debian", "aarch64")
    assert found["libdir"] == "/usr/lib/aarch64-linux-gnu" and found["alternatives"][-1] == "mpi-aarch64-linux-gnu"


def test_given_values_win_over_the_layout():
    params = dict((k, v.get("default")) for k, v in m.ARGUMENT_SPEC.items())
    params.update(flavor="mpich", libdir="/opt/mpi/lib", packages=[])
    resolved = m.resolve(params, {"os_family": "RedHat", "architecture": "x86_64"})
    assert resolved["libdir"] == "/opt/mpi/lib" and resolved["packages"] == []
    assert resolved["bin_dir"] == "/usr/lib64/mpich/bin"
