"""plugins/module_utils/venv.py: the host wheelhouse pruned down to one sync's files."""

import os

from ansible_collections.lockstep.cluster.plugins.module_utils import venv as venv_sync


def test_prune_wheelhouse_keeps_this_syncs_files_and_counts_only_unshared_bytes(tmp_path):
    house = tmp_path / "wh"
    house.mkdir()
    for name in ("keep-1.0-py3-none-any.whl", "old-1.0-py3-none-any.whl", "shared-1.0-py3-none-any.whl"):
        (house / name).write_bytes(b"x" * 10000)
    os.link(str(house / "shared-1.0-py3-none-any.whl"), str(tmp_path / "elsewhere.whl"))  # another link: frees nothing
    (house / ".old-2.0.whl.part").write_bytes(b"in flight")  # a transfer of another run
    (house / ".view-abc").mkdir()
    removed, freed = venv_sync.prune_wheelhouse(str(house), ["keep-1.0-py3-none-any.whl"])
    assert removed == ["old-1.0-py3-none-any.whl", "shared-1.0-py3-none-any.whl"]
    assert sorted(os.listdir(str(house))) == [".old-2.0.whl.part", ".view-abc", "keep-1.0-py3-none-any.whl"]
    assert freed == os.stat(str(house / "keep-1.0-py3-none-any.whl")).st_blocks * 512  # old's blocks only
    assert (tmp_path / "elsewhere.whl").exists()


def test_prune_wheelhouse_of_a_missing_directory_removes_nothing(tmp_path):
    assert venv_sync.prune_wheelhouse(str(tmp_path / "none"), []) == ([], 0)
