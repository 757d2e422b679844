"""roles/mpi variables per OS family. The RHEL family is unit-tested only (no image here)."""

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import SONAMES, runtime_env

from _role_vars import render

FILES = {
    "Debian": ("defaults/main.yml", "vars/main.yml", "vars/Debian.yml"),
    "RedHat": ("defaults/main.yml", "vars/main.yml", "vars/RedHat.yml"),
}


@pytest.mark.parametrize("flavor, packages", [
    ("openmpi", ["openmpi", "openmpi-devel"]),
    ("mpich", ["mpich", "mpich-devel"]),
])
def test_rhel_layout(flavor, packages):
    get = render("mpi", FILES["RedHat"], facts={"os_family": "RedHat"}, mpi_flavor=flavor)
    assert get("_mpi_package_list") == packages
    assert get("_mpi_alternatives") == []
    assert get("_mpi_bin_dir") == "/usr/lib64/%s/bin" % flavor
    assert get("_mpi_libdir") == "/usr/lib64/%s/lib" % flavor
    assert get("_mpi_module") == "mpi/%s-x86_64" % flavor
    # The login profile mpi_select writes (the flavor lives off PATH on this family).
    profile = get("_mpi_profile_content")
    assert "module load mpi/%s-x86_64 " % flavor in profile and profile.endswith("fi\n")
    assert get("_mpi_abi_link") is False
    os_env = get("_mpi_os_env")
    assert os_env == {
        "MPI_BIN": "/usr/lib64/%s/bin" % flavor,
        "MPI_HOME": "/usr/lib64/%s" % flavor,
        "MPI_LIB": "/usr/lib64/%s/lib" % flavor,
        "LD_LIBRARY_PATH": "/usr/lib64/%s/lib" % flavor,
    }
    # What mpi_select would hand the venv on such a host.
    env = runtime_env(flavor, "x", "%s/%s" % (get("_mpi_libdir"), SONAMES[flavor]), os_env)
    assert env["MPI4PY_LIBMPI"] == "/usr/lib64/%s/lib/%s" % (flavor, SONAMES[flavor])
    assert env["MPI_BIN"] == "/usr/lib64/%s/bin" % flavor


def test_rhel_aarch64_module_name():
    get = render("mpi", FILES["RedHat"], facts={"os_family": "RedHat", "architecture": "aarch64"}, mpi_flavor="openmpi")
    assert get("_mpi_module") == "mpi/openmpi-aarch64"


@pytest.mark.parametrize("flavor, packages", [
    ("openmpi", ["openmpi-bin", "libopenmpi-dev"]),
    ("mpich", ["mpich", "libmpich-dev"]),
])
def test_debian_layout(flavor, packages):
    get = render("mpi", FILES["Debian"], mpi_flavor=flavor)
    assert get("_mpi_package_list") == packages
    assert get("_mpi_profile_content") == ""  # alternatives select the flavor
    assert get("_mpi_alternatives") == ["mpi", "mpirun", "mpi-x86_64-linux-gnu"]
    assert get("_mpi_libdir") == "/usr/lib/x86_64-linux-gnu"
    assert get("_mpi_bin_dir") == "/usr/bin"
    assert get("_mpi_abi_link") is True


def test_debian_without_dev_packages_only_pins_mpirun():
    get = render("mpi", FILES["Debian"], mpi_flavor="mpich", mpi_install_dev=False,
                 mpi_packages_extra=["libfabric1"])
    assert get("_mpi_package_list") == ["mpich", "libfabric1"]
    assert get("_mpi_alternatives") == ["mpirun"]


def test_debian_aarch64_multiarch():
    get = render("mpi", FILES["Debian"], facts={"architecture": "aarch64"})
    assert get("_mpi_libdir") == "/usr/lib/aarch64-linux-gnu"
    assert get("_mpi_alternatives")[-1] == "mpi-aarch64-linux-gnu"
