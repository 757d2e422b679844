"""Testinfra checks shared by the default, mpich and debian13 scenarios (run after site.yml).

Expectations come from the scenario inventory (mpi_flavor, ...) and the role defaults; the
venv is compared with the committed smoke lock, evaluated for the host's own Python.
"""

import hashlib
import json
import os
import sys

import pytest
import testinfra
import yaml

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(PROJECT, ".collections"))

from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import load_lock  # noqa: E402

VENV = "/opt/lockstep/venv"
LOCK = os.path.join(PROJECT, "lockfiles", "smoke-cpu.txt")
HELLO = "from mpi4py import MPI\nc = MPI.COMM_WORLD\nprint('rank %d of %d' % (c.rank, c.size))\n"

testinfra_hosts = ["all"]


def _default(role, name):
    with open(os.path.join(PROJECT, "roles", role, "defaults", "main.yml")) as handle:
        return yaml.safe_load(handle)[name]


@pytest.fixture(scope="module")
def hostvars(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def node(host, hostvars):
    """Commands straight through `podman exec`: testinfra's ansible backend does not know the
    podman connection and would run every command as an ad-hoc ansible call (~3 s each)."""
    if hostvars.get("ansible_connection") in ("podman", "containers.podman.podman"):
        return testinfra.get_host("podman://" + hostvars["inventory_hostname"])
    return host


@pytest.fixture(scope="module")
def flavor(hostvars):
    return hostvars.get("mpi_flavor", _default("mpi", "mpi_flavor"))


def test_uv_prints_the_pinned_version(node, hostvars):
    version = hostvars.get("uv_version", _default("uv", "uv_version"))
    out = node.check_output("uv --version")
    assert out.split()[:2] == ["uv", version]
    assert node.file("/usr/local/bin/uv").is_symlink


def test_mpiexec_is_the_chosen_flavor(node, flavor):
    out = node.run("mpiexec --version").stdout
    if flavor == "openmpi":
        assert "Open MPI" in out or "OpenRTE" in out
    else:
        assert "HYDRA" in out


def test_alternatives_agree(node, flavor):
    arch = node.check_output("dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine "
                             "2>/dev/null || echo x86_64-linux-gnu")
    for name in ("mpi", "mpirun", "mpi-%s" % arch.strip()):
        query = node.check_output("update-alternatives --query %s" % name)
        fields = dict(line.split(": ", 1) for line in query.splitlines() if ": " in line and not line.startswith(" "))
        assert fields["Status"] == "manual", name
        assert flavor in fields["Value"], (name, fields["Value"])
    # mpicc -> /etc/alternatives/mpi -> mpicc.<flavor> (-> opal_wrapper for Open MPI)
    assert flavor in node.check_output("readlink /etc/alternatives/mpi")
    libmpi = node.file("/usr/lib/%s/libmpi.so" % arch.strip()).linked_to
    assert ("libmpich" in libmpi) == (flavor == "mpich"), libmpi


def test_venv_is_the_lock(node):
    link = node.file(VENV)
    assert link.is_symlink
    python = json.loads(node.check_output(
        "%s/bin/python -c 'import json, platform, sys; print(json.dumps({\"python_full_version\": "
        "platform.python_version(), \"python_version\": \"%%d.%%d\" %% sys.version_info[:2], \"sys_platform\": "
        "sys.platform, \"platform_machine\": platform.machine(), \"platform_system\": platform.system(), "
        "\"os_name\": \"posix\", \"implementation_name\": sys.implementation.name, "
        "\"platform_python_implementation\": platform.python_implementation()}))'" % VENV))
    expected = dict((name, entry.version) for name, entry in load_lock(LOCK).for_environment(python).items())
    installed = json.loads(node.check_output("uv pip list --python %s/bin/python --format json --offline" % VENV))
    assert dict((row["name"].lower(), row["version"]) for row in installed) == expected
    # ...and the venv recorded the exact lock it was synced from.
    with open(LOCK, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    assert node.check_output("sha256sum %s/lockstep.lock.txt" % VENV).split()[0] == digest
    meta = json.loads(node.file(VENV + "/lockstep.json").content_string)
    assert meta["lock_sha256"] == load_lock(LOCK).sha256


def test_lockstep_env_and_activate_hook(node, flavor):
    env = dict(line.split("=", 1) for line in node.file(VENV + "/lockstep.env").content_string.splitlines()
               if line and not line.startswith("#"))
    assert env["MPI4PY_MPIABI"] == flavor
    assert env["LOCKSTEP_MPI_FLAVOR"] == flavor
    assert node.file(env["MPI4PY_LIBMPI"]).exists
    out = node.check_output("bash -c '. %s/bin/activate && echo $MPI4PY_MPIABI'" % VENV)
    assert out.strip() == flavor


@pytest.fixture(scope="module")
def hello(node):
    node.run("cat > /tmp/lockstep_hello.py <<'EOF'\n%sEOF\nchmod 0644 /tmp/lockstep_hello.py" % HELLO)
    return "/tmp/lockstep_hello.py"


@pytest.mark.parametrize("how", ["plain", "activated"])
def test_mpiexec_two_ranks_as_benchmark_user(node, hello, how):
    """The proof that launcher and library match: ranks 0 and 1 of size 2, as a non-root
    benchmark user, with the venv's python directly and with the venv activated."""
    if how == "plain":
        command = "mpiexec -n 2 %s/bin/python %s" % (VENV, hello)
    else:
        command = "bash -c '. %s/bin/activate && mpiexec -n 2 python %s'" % (VENV, hello)
    result = node.run("cd /tmp && runuser -u bench -- %s" % command)
    assert result.rc == 0, result.stdout + result.stderr
    assert sorted(result.stdout.strip().splitlines()) == ["rank 0 of 2", "rank 1 of 2"], result.stdout + result.stderr
    assert "suspicious" not in result.stderr


def test_mpich_abi_name_and_switch_leftovers(node, flavor):
    """MPICH: libmpi.so.12 must resolve (Debian 12 needs the role's link). Open MPI: a link
    the role made for MPICH earlier is gone again."""
    arch = node.check_output("dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu").strip()
    soname = node.file("/usr/lib/%s/libmpi.so.12" % arch)
    if flavor == "mpich":
        assert soname.exists
        assert "libmpich.so.12" in soname.linked_to
    elif soname.is_symlink:
        assert soname.linked_to.rsplit("/", 1)[-1] != "libmpich.so.12" or node.run("dpkg -S %s" % soname.path).rc == 0


def test_previous_venv_kept_after_a_switch(node, hostvars):
    if hostvars.get("inventory_hostname") != "lockstep-mpich":
        pytest.skip("only the mpich scenario switches flavor")
    previous = node.file(VENV + ".previous")
    assert previous.is_symlink
    env = node.file(previous.linked_to + "/lockstep.env").content_string
    assert "MPI4PY_MPIABI=openmpi" in env


def test_uv_install_method_layout(node, hostvars):
    """venv method: a tool venv with the hash-pinned requirement; archive: the binaries."""
    version = hostvars.get("uv_version", _default("uv", "uv_version"))
    root = "/opt/lockstep/uv/%s" % version
    assert node.file(root + "/.lockstep-complete").exists
    if hostvars.get("uv_install_method", "venv") == "venv":
        assert node.file(root + "/pyvenv.cfg").exists
        assert "--hash=sha256:" in node.file(root + "/requirements.txt").content_string
    else:
        assert not node.file(root + "/pyvenv.cfg").exists
    assert node.file("/usr/local/bin/uv").linked_to == root + "/bin/uv"
