"""plugins/modules/mpi.py: the thin shell (docs = spec, exit and fail)."""

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.modules import mpi

from helpers import doc_matches_spec


def test_documentation_states_the_argument_spec():
    doc_matches_spec(mpi.DOCUMENTATION, ARGUMENT_SPEC)


def _main(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            mpi.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_main_describes_a_host_without_mpi_in_check_mode(tmp_path, capsys):
    args = {"flavor": "openmpi", "packages": [], "alternatives": [], "abi_link": False, "bin_dir": str(tmp_path / "bin"),
            "libdir": str(tmp_path / "lib"), "_ansible_check_mode": True}
    rc, out = _main(capsys, args)
    assert rc == 0 and out["changed"] is False and out["runtime"]["installed"] is False
    assert out["msg"] == "openmpi is not installed yet"


def test_main_fails_outside_check_mode_when_mpi_is_not_consistent(tmp_path, capsys):
    args = {"flavor": "openmpi", "packages": [], "alternatives": [], "abi_link": False, "bin_dir": str(tmp_path / "bin"),
            "libdir": str(tmp_path / "lib")}
    rc, out = _main(capsys, args)
    assert rc == 1 and out["failed"]
    assert out["msg"] == "openmpi is not consistently selected: %s not found" % (tmp_path / "bin" / "mpiexec")
