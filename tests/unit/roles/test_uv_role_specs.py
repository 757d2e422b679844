"""roles/uv, roles/mpi, roles/venv: argument_specs match defaults exactly; uv and venv vars."""

import os

import pytest
import yaml

from _role_vars import ROLES, render

ROLE_NAMES = ("uv", "mpi", "venv")


def _yaml(role, path):
    with open(os.path.join(ROLES, role, path)) as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_argument_specs_match_defaults(role):
    defaults = _yaml(role, "defaults/main.yml")
    options = _yaml(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, spec in options.items():
        assert spec.get("default") == defaults[name], name
        assert name.startswith(role + "_"), name
        assert spec.get("description"), name


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_internal_vars_are_underscored(role):
    for name in _yaml(role, "vars/main.yml"):
        assert name.startswith("_%s_" % role), name


def test_rollback_entry_point_is_a_subset_of_main():
    specs = _yaml("venv", "meta/argument_specs.yml")["argument_specs"]
    for name, spec in specs["rollback"]["options"].items():
        assert spec == specs["main"]["options"][name]


UV_FILES = ("defaults/main.yml", "vars/main.yml", "vars/Debian.yml")


def test_uv_known_version_has_hashes():
    get = render("uv", UV_FILES)
    assert len(get("_uv_hashes")) > 5
    assert all(len(h) == 64 for h in get("_uv_hashes"))
    assert get("_uv_dir") == "/opt/lockstep/uv/" + get("uv_version")


def test_uv_unknown_version_needs_hashes():
    assert render("uv", UV_FILES, uv_version="9.9.9")("_uv_hashes") == []
    assert render("uv", UV_FILES, uv_version="9.9.9", uv_requirement_hashes=["a" * 64])("_uv_hashes") == ["a" * 64]


def test_uv_archive_url_and_target():
    get = render("uv", UV_FILES, facts={"architecture": "aarch64"}, uv_version="0.13.9")
    assert get("_uv_archive_url") == (
        "https://github.com/astral-sh/uv/releases/download/0.13.9/uv-aarch64-unknown-linux-gnu.tar.gz")
    mirror = render("uv", UV_FILES, uv_archive_url="http://mirror/uv.tgz")
    assert mirror("_uv_archive_url") == "http://mirror/uv.tgz"


def test_uv_pip_env_only_sets_what_is_given():
    assert set(render("uv", UV_FILES)("_uv_pip_env")) == {"PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT"}
    env = render("uv", UV_FILES, uv_ca_bundle="/etc/ssl/host-ca.crt", uv_pip_index_url="http://m/simple")("_uv_pip_env")
    assert env["PIP_CERT"] == "/etc/ssl/host-ca.crt" and env["PIP_INDEX_URL"] == "http://m/simple"


PYENV_FILES = ("defaults/main.yml", "vars/main.yml", "vars/Debian.yml")
RUNTIME = {"flavor": "mpich", "version": "4.0.2", "mpicc": "/usr/bin/mpicc.mpich",
           "env": {"MPI4PY_MPIABI": "mpich"}}


def test_venv_binary_mode_has_no_build_variables():
    get = render("venv", PYENV_FILES, mpi_runtime=RUNTIME)
    assert get("_venv_build_variables") == {}
    assert get("_venv_mpi_env") == {"MPI4PY_MPIABI": "mpich"}


def test_venv_source_mode_keys_the_build_to_the_mpi():
    get = render("venv", PYENV_FILES, mpi_runtime=RUNTIME, venv_mpi4py_mode="source")
    assert get("_venv_build_variables") == {"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich", "LOCKSTEP_MPI": "mpich-4.0.2"}}
    other = render("venv", PYENV_FILES, venv_mpi4py_mode="source",
                   mpi_runtime=dict(RUNTIME, flavor="openmpi", version="4.1.4", mpicc="/usr/bin/mpicc.openmpi"))
    assert other("_venv_build_variables") != get("_venv_build_variables")


def test_venv_works_without_the_mpi_role():
    get = render("venv", PYENV_FILES)
    assert get("_venv_mpi_env") == {}


def test_venv_default_lock_is_the_committed_mlperf_lock():
    get = render("venv", PYENV_FILES)
    assert os.path.normpath(get("venv_lockfile")).endswith(os.path.join("lockfiles", "mlperf-storage-cpu.txt"))
    assert os.path.exists(get("venv_lockfile"))
