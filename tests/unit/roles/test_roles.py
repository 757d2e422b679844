"""Every role: argument_specs match defaults exactly; each provisioning role is one module task that
forwards its _<role>_settings (what the probe asks with); uv and venv vars."""

import os

import pytest
import yaml
from _role_vars import render, ROLES

from ansible_collections.lockstep.cluster.plugins.module_utils import cluster, mpi, uv, venv

ROLE_NAMES = ("uv", "mpi", "venv", "cluster", "validate")


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


UV_FILES = ("defaults/main.yml", "vars/main.yml")


def test_uv_known_version_has_hashes():
    get = render("uv", UV_FILES)
    assert len(get("_uv_hashes")) > 5
    assert all(len(h) == 64 for h in get("_uv_hashes"))


def test_uv_unknown_version_needs_hashes():
    assert render("uv", UV_FILES, uv_version="9.9.9")("_uv_hashes") == []
    assert render("uv", UV_FILES, uv_version="9.9.9", uv_requirement_hashes=["a" * 64])("_uv_hashes") == ["a" * 64]


def _tasks(role):
    return _yaml(role, "tasks/main.yml")


# role -> (its one module, that module's spec, role choices that feed a module option)
ONE_TASK = {
    "uv": ("lockstep.cluster.uv", uv.ARGUMENT_SPEC, {"uv_install_method": "method"}),
    "mpi": ("lockstep.cluster.mpi", mpi.ARGUMENT_SPEC, {"mpi_flavor": "flavor"}),
    "venv": ("lockstep.cluster.venv", venv.ARGUMENT_SPEC, {"venv_mpi4py_mode": "mpi4py_mode"}),
    "cluster": ("lockstep.cluster.cluster", cluster.ARGUMENT_SPEC, {}),
}
# Options a role never sets: the action plugin's, or left to the module's default.
NOT_FROM_THE_ROLE = {"remote_archive", "timeout", "profile_path", "packages", "alternatives", "abi_link", "libdir",
                     "bin_dir", "profile_content", "os_env", "stage", "lockfile_sha256", "remote_lockfile", "expected",
                     "wheelhouse_incoming", "wheelhouse_files", "build", "previous", "files", "private_key_src",
                     "stale_users"}


@pytest.mark.parametrize("role", sorted(ONE_TASK))
def test_role_is_one_module_task_that_passes_its_settings_exactly(role):
    """No include_vars, no set_fact: the role's task forwards _<role>_settings key for key, the
    very dict lockstep.cluster.probe asks the host with, so their digests agree."""
    module, spec, _choices = ONE_TASK[role]
    tasks = [t for t in _tasks(role) if module in t]
    assert len(tasks) == 1
    assert [next(k for k in t if "." in k) for t in _tasks(role)][-1] == module
    args = tasks[0][module]
    settings = _yaml(role, "vars/main.yml")["_%s_settings" % role]
    assert args == dict((k, "{{ _%s_settings.%s }}" % (role, k)) for k in settings)
    assert set(settings) <= set(spec), set(settings) - set(spec)
    assert set(spec) - set(settings) <= NOT_FROM_THE_ROLE, set(spec) - set(settings) - NOT_FROM_THE_ROLE
    assert not any("changed_when" in task or "failed_when" in task for task in _tasks(role))


@pytest.mark.parametrize("role", sorted(ONE_TASK) + ["validate"])
def test_every_role_has_a_settings_entry_point_without_tasks(role):
    assert _yaml(role, "tasks/settings.yml") == []


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
                # Only the documentation's example host (index.example) may be named.
                text = "".join(line for line in handle if "index.example" not in line)
                assert "://" not in text, os.path.join(root, name)


def test_uv_role_passes_secrets_only_when_set():
    get = render("uv", UV_FILES)
    for option in ("pip_index_url", "archive_url", "archive_src", "archive_sha256", "ca_bundle"):
        assert get("_uv_settings")[option] is None, option
    assert render("uv", UV_FILES, uv_pip_index_url="https://u:t@index.example/simple")("_uv_settings")[
        "pip_index_url"] == "https://u:t@index.example/simple"
    assert uv.ARGUMENT_SPEC["pip_index_url"]["no_log"] and uv.ARGUMENT_SPEC["archive_url"]["no_log"]


PYENV_FILES = ("defaults/main.yml", "vars/main.yml")
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


def test_venv_without_the_mpi_role_leaves_the_mpi_env_to_the_probe():
    # Unset (null): the probe fills it from its own mpi answer, the module alone uses none.
    assert render("venv", PYENV_FILES)("_venv_mpi_env") is None


def test_venv_default_lock_is_the_committed_mlperf_lock():
    get = render("venv", PYENV_FILES)
    assert get("venv_lockfile") == "lockfiles/mlperf-storage-cpu.txt"
    assert os.path.exists(os.path.join(ROLES, "..", get("venv_lockfile")))


def test_venv_uses_the_uv_the_uv_role_links():
    assert render("venv", PYENV_FILES)("venv_uv_executable") == "/usr/local/bin/uv"
    assert render("venv", PYENV_FILES, uv_bin_dir="/opt/bin")("venv_uv_executable") == "/opt/bin/uv"
    assert render("venv", PYENV_FILES, uv_executable="/x/uv")("venv_uv_executable") == "/x/uv"
