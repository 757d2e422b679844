"""roles/mpi's logic: plugins/module_utils/mpi_runtime.py (alternatives, ABI link, facts)."""

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi_ident
from ansible_collections.lockstep.cluster.plugins.module_utils import mpi_runtime as m

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
    assert mpi_ident.flavor_of_path(path) == flavor


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
    assert mpi_ident.link_chain("/usr/bin/mpicc", links.get, links.__contains__) == [
        "/usr/bin/mpicc", "/etc/alternatives/mpi", "/usr/bin/mpicc.openmpi", "/usr/bin/opal_wrapper"]
    assert mpi_ident.flavored_path("/usr/bin/mpicc", links.get, links.__contains__) == "/usr/bin/mpicc.openmpi"
    assert mpi_ident.flavored_path("/opt/x/mpicc", links.get, links.__contains__) == "/opt/x/mpicc"


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
