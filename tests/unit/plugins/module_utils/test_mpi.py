"""plugins/module_utils/mpi_select.py: packages, selection and description in one call, on a
fake host in a temp dir (both flavors "installed", fake update-alternatives and dpkg-query on
PATH that keep their state in JSON files and really re-point the links)."""

import hashlib
import json
import os
import sys
import textwrap

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi as m
from ansible_collections.lockstep.cluster.plugins.module_utils import os_packages

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
        monkeypatch.setattr(os_packages, "manager", lambda: "apt")

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
