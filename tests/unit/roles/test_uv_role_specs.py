"""roles/uv, roles/mpi, roles/venv: argument_specs match defaults exactly; uv and mpi are one\nmodule task each; uv and venv vars."""

import os

import pytest
import yaml

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi, uv

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


def test_uv_unknown_version_needs_hashes():
    assert render("uv", UV_FILES, uv_version="9.9.9")("_uv_hashes") == []
    assert render("uv", UV_FILES, uv_version="9.9.9", uv_requirement_hashes=["a" * 64])("_uv_hashes") == ["a" * 64]


def _tasks(role):
    return _yaml(role, "tasks/main.yml")


# role -> (its one module, the option of that module that its *_flavor/method choice feeds)
ONE_TASK = {
    "uv": ("lockstep.cluster.uv", uv.ARGUMENT_SPEC, {"uv_install_method": "method"}),
    "mpi": ("lockstep.cluster.mpi", mpi.ARGUMENT_SPEC, {"mpi_flavor": "flavor"}),
}


@pytest.mark.parametrize("role", sorted(ONE_TASK))
def test_role_is_vars_then_one_module_then_set_fact(role):
    """One host round trip per role: include_vars and set_fact run on the controller."""
    module, spec, _choices = ONE_TASK[role]
    assert os.listdir(os.path.join(ROLES, role, "tasks")) == ["main.yml"]
    tasks = _tasks(role)
    actions = [next(k for k in task if "." in k and k not in ("ansible.builtin.when",)) for task in tasks]
    assert actions == ["ansible.builtin.include_vars", module, "ansible.builtin.set_fact"]
    args = tasks[1][module]
    assert set(args) <= set(spec), set(args) - set(spec)
    internal = {"remote_archive", "timeout", "profile_path"}
    assert set(spec) - set(args) <= internal, set(spec) - set(args) - internal
    assert not any("when" in task or "changed_when" in task or "failed_when" in task for task in tasks)


@pytest.mark.parametrize("role", sorted(ONE_TASK))
def test_role_choices_are_the_module_choices(role):
    _module, spec, choices = ONE_TASK[role]
    options = _yaml(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for variable, option in choices.items():
        assert options[variable]["choices"] == spec[option]["choices"]


@pytest.mark.parametrize("role", sorted(ONE_TASK))
def test_role_files_name_no_download_host(role):
    for root, _dirs, names in os.walk(os.path.join(ROLES, role)):
        for name in names:
            with open(os.path.join(root, name)) as handle:
                assert "://" not in handle.read(), os.path.join(root, name)


def test_uv_role_passes_secrets_only_when_set():
    args = _tasks("uv")[1]["lockstep.cluster.uv"]
    for option in ("pip_index_url", "archive_url", "archive_src", "archive_sha256", "ca_bundle"):
        assert "default(omit, true)" in args[option], option
    assert uv.ARGUMENT_SPEC["pip_index_url"]["no_log"] and uv.ARGUMENT_SPEC["archive_url"]["no_log"]


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
