"""plugins/modules/uv.py: the thin shell (docs = spec, no_log, exit and fail)."""

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.lockstep.cluster.plugins.module_utils.uv import ARGUMENT_SPEC
from ansible_collections.lockstep.cluster.plugins.modules import uv

from helpers import doc_matches_spec, make_tar


def test_documentation_states_the_argument_spec():
    doc_matches_spec(uv.DOCUMENTATION, ARGUMENT_SPEC)
    assert [n for n, a in sorted(ARGUMENT_SPEC.items()) if a.get("no_log")] == ["archive_url", "pip_index_url"]


def _main(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            uv.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_main_installs_then_exits_unchanged(tmp_path, capsys):
    archive = tmp_path / "uv.tar.gz"
    sha = make_tar(archive, [("uv-x/uv", b"#!/bin/sh\necho 'uv 0.13.9'\n"), ("uv-x/uvx", b"#!/bin/sh\n")])
    args = {"version": "0.13.9", "method": "archive", "archive_url": archive.as_uri(), "archive_sha256": sha,
            "install_root": str(tmp_path / "root"), "bin_dir": str(tmp_path / "bin")}
    rc, out = _main(capsys, args)
    assert rc == 0 and out["changed"] and out["install"] == "not installed"
    assert out["invocation"]["module_args"]["archive_url"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    rc, out = _main(capsys, args)
    assert rc == 0 and out["changed"] is False


def test_main_fails_with_the_message(tmp_path, capsys):
    rc, out = _main(capsys, {"version": "0.13.9", "install_root": str(tmp_path), "bin_dir": str(tmp_path / "bin")})
    assert rc == 1 and out["failed"] and out["msg"].startswith("no sha256 known for the uv 0.13.9 wheels")
