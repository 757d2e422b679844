"""plugins/module_utils/venv_key.py: a venv's stem, key recipe and uv.toml."""

from ansible_collections.lockstep.cluster.plugins.module_utils import venv_key as m


def test_lock_stem():
    assert m.lock_stem("lockfiles/smoke-cpu.txt") == "smoke-cpu"
    assert m.lock_stem("/x/mlperf storage.lock") == "mlperf-storage"
    assert m.lock_stem("pylock.smoke.toml") == "pylock.smoke"
    assert m.lock_stem("") == "lock"


def test_key_changes_with_inputs_but_not_python_patch():
    base = dict(lockfile_sha256="a" * 64, python_path="/usr/bin/python3", python_version="3.11.2")

    def variant(**changes):
        args = dict(base)
        args.update(changes)
        return m.compute_key(**args)

    key = m.compute_key(**base)
    assert key == variant(python_version="3.11.9")
    assert key != variant(python_version="3.12.1")
    assert key != variant(lockfile_sha256="b" * 64)
    assert key != m.compute_key(env={"MPI4PY_MPIABI": "mpich"}, **base)
    assert key != m.compute_key(mpi4py_mode="source", **base)
    assert m.compute_key(venv_path="/opt/a", **base) != m.compute_key(venv_path="/opt/b", **base)
    assert key != m.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich"}}, **base)
    one = m.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich"}}, **base)
    two = m.compute_key(build_variables={"mpi4py": {"MPICC": "/usr/bin/mpicc.openmpi"}}, **base)
    assert one != two


def test_uv_config_for_build_variables():
    assert m.render_uv_config({}) is None
    text = m.render_uv_config({"mpi4py": {"MPICC": "/usr/bin/mpicc.mpich", "LOCKSTEP_MPI": "mpich-4.0.2"}})
    assert text == ('[pip]\nextra-build-variables = { "mpi4py" = { LOCKSTEP_MPI = "mpich-4.0.2", '
                    'MPICC = "/usr/bin/mpicc.mpich" } }\n')
