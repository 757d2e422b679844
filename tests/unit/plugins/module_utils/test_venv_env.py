"""Host side: lockstep.env, its one writer and one reader (module_utils/venv_env.py)."""

import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.lockstep.cluster.plugins.module_utils import venv_env


def test_render_is_sorted_literal_lines_and_parse_reads_it_back():
    env = {"MPI4PY_MPIABI": "mpich", "A_PATH": "/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY": None}
    text = venv_env.render(env)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["A_PATH=/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY=", "MPI4PY_MPIABI=mpich"]
    assert venv_env.parse(text) == {"A_PATH": "/usr/lib/x86_64-linux-gnu/libmpi.so.12", "EMPTY": "",
                                    "MPI4PY_MPIABI": "mpich"}


@pytest.mark.parametrize("env", [{"BAD-NAME": "x"}, {"OK": "two\nlines"}, {"OK": "cr\rhere"}, {"1X": "y"}])
def test_render_refuses_what_activate_could_not_export(env):
    with pytest.raises(venv_env.EnvFileError):
        venv_env.render(env)


@pytest.mark.parametrize("line", ["export A=1", "not a line", "A B=1", "=x"])
def test_parse_names_the_bad_line(line):
    with pytest.raises(venv_env.EnvFileError) as err:
        venv_env.parse("# ok\nGOOD=1\n" + line + "\n", "/v/lockstep.env")
    assert "/v/lockstep.env:3" in str(err.value)


def test_values_are_literal_for_the_reader_and_for_an_activated_shell(tmp_path):
    """The validator and `. bin/activate` must agree on a value with $, quotes and spaces."""
    values = {"DOLLAR": "$HOME/x", "QUOTED": "'1'", "SPACES": "a b  c", "BRACES": "${UNSET:-d}"}
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('VIRTUAL_ENV="%s"\n' % venv)
    (venv / venv_env.ENV_FILE).write_text(venv_env.render(values))
    assert venv_env.install_activate_hook(str(venv)) is True
    assert venv_env.install_activate_hook(str(venv)) is False  # once
    script = ". %s/bin/activate && " % venv + " && ".join('printf "%%s\\n" "$%s"' % k for k in sorted(values))
    shell = subprocess.check_output(["bash", "-c", script], universal_newlines=True,
                                    env={"PATH": os.environ["PATH"], "HOME": "/root"}).splitlines()
    reader, _used = venv_env.venv_environment(str(venv), {"PATH": "/usr/bin", "HOME": "/root"})
    assert shell == [values[k] for k in sorted(values)]
    assert [reader[k] for k in sorted(values)] == shell


def test_venv_environment_layers(tmp_path):
    (tmp_path / "lockstep.env").write_text("A=from-file\nB=from-file\nMPI_BIN=/usr/lib64/mpich/bin\n")
    env, used = venv_env.venv_environment(
        str(tmp_path), {"PATH": "/usr/bin", "PYTHONHOME": "/bad", "A": "base"}, None, {"B": "extra"})
    assert used == str(tmp_path / "lockstep.env")
    assert (env["A"], env["B"]) == ("from-file", "extra")
    # Like the activate hook: MPI_BIN first, then the venv's bin.
    assert env["PATH"] == "/usr/lib64/mpich/bin:%s/bin:/usr/bin" % tmp_path
    assert env["VIRTUAL_ENV"] == str(tmp_path) and "PYTHONHOME" not in env
    (tmp_path / "lockstep.env").unlink()
    assert venv_env.venv_environment(str(tmp_path), {}, None, None)[1] is None
    with pytest.raises(IOError):
        venv_env.venv_environment(str(tmp_path), {}, str(tmp_path / "missing.env"))


def test_read_of_a_missing_file_is_empty(tmp_path):
    assert venv_env.read(str(tmp_path / "none")) == {}


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_VALUES = st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200)
@given(st.dictionaries(_NAMES, _VALUES, max_size=6))
def test_round_trip(values):
    """Whatever the writer accepts reads back exactly."""
    assert venv_env.parse(venv_env.render(values)) == values
