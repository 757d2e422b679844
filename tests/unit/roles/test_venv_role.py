"""roles/venv end to end on the controller itself (connection local, no container): every
bad input fails with one clear message before the active venv is touched, a good lock is
applied once, and check mode predicts without writing.

Uses the real uv and a local wheelhouse (offline), so it runs in seconds.
"""

import os

import pytest

from helpers import BASE_PYTHON, HEADER, lock_text, make_wheel, play_role, REPO, snapshot, task_results, UV


@pytest.fixture
def lab(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    sha = {}
    for name, version in (("alpha", "1.0"), ("alpha", "2.0"), ("beta", "1.0")):
        sha[(name, version)] = make_wheel(str(wheels), name, version)[1]

    def lock(name, pins, flags="--universal --python-version 3.9 --generate-hashes", raw=None):
        path = tmp_path / name
        body = raw if raw is not None else lock_text([(n, v, sha[(n, v)]) for n, v in pins]).split("\n", 2)[2]
        path.write_text(HEADER % flags + body)
        return str(path)

    def run(lockfile, check=False, **overrides):
        variables = {
            "venv_path": str(tmp_path / "opt" / "venv"),
            "venv_store_dir": str(tmp_path / "opt" / "venvs"),
            "venv_cache_dir": str(tmp_path / "opt" / "cache"),
            "venv_python": BASE_PYTHON,
            "venv_lockfile": lockfile,
            "venv_uv_executable": UV,
            "venv_find_links": [str(wheels)],
            "venv_offline": True,
        }
        variables.update(overrides)
        stats, results = task_results(play_role(tmp_path, "venv", variables, check=check))
        failures = [res.get("msg", "") for dummy, res in results if res.get("failed")]
        sync = [res for name, res in results if "Sync the venv" in name]
        return {"stats": stats, "failures": failures, "sync": sync[0] if sync else None}

    return {"tmp": tmp_path, "lock": lock, "run": run, "path": str(tmp_path / "opt" / "venv")}


def test_good_lock_then_noop_then_check_mode_prediction(lab):
    first = lab["lock"]("a.txt", [("alpha", "1.0"), ("beta", "1.0")])
    result = lab["run"](first)
    assert result["failures"] == [] and result["stats"]["changed"] == 1
    assert os.path.islink(lab["path"])
    again = lab["run"](first)
    assert again["failures"] == [] and again["stats"]["changed"] == 0

    before = snapshot(lab["path"])
    second = lab["lock"]("b.txt", [("alpha", "2.0"), ("beta", "1.0")])
    predicted = lab["run"](second, check=True)
    assert predicted["failures"] == [] and predicted["stats"]["changed"] == 1
    assert {"name": "alpha", "version": "2.0", "action": "installed"} in predicted["sync"]["changes"]
    assert "alpha==2.0" in predicted["sync"]["diff"]["after"]
    assert snapshot(lab["path"]) == before  # check mode wrote nothing


def _fails_untouched(lab, lockfile, expected, **overrides):
    good = lab["lock"]("good.txt", [("alpha", "1.0")])
    assert lab["run"](good)["failures"] == []
    before = snapshot(lab["path"])
    result = lab["run"](lockfile, **overrides)
    assert len(result["failures"]) == 1, result
    assert expected in result["failures"][0], result["failures"][0]
    assert snapshot(lab["path"]) == before
    return result["failures"][0]


def test_missing_lockfile(lab):
    _fails_untouched(lab, str(lab["tmp"] / "nope.txt"), "not found on the controller")


def test_relative_lockfile_is_found_like_the_validator_finds_it(lab):
    # ansible-playbook runs from the checkout: a relative lock path works (it used to pass
    # the policy check, then fail with "File not found").
    lockfile = lab["lock"]("rel.txt", [("alpha", "1.0")])
    result = lab["run"](os.path.relpath(lockfile, REPO))
    assert result["failures"] == [] and result["stats"]["changed"] == 1
    assert result["sync"]["lock"]["path"] == lockfile


def test_relative_venv_path_is_refused(lab):
    result = lab["run"](lab["lock"]("a.txt", [("alpha", "1.0")]), venv_path="venv")
    assert len(result["failures"]) == 1 and "must be absolute" in result["failures"][0]
    assert not os.path.lexists(os.path.join(REPO, "venv"))


def test_unhashed_entry(lab):
    raw = "alpha==1.0\n"
    _fails_untouched(lab, lab["lock"]("nohash.txt", None, raw=raw), "no --hash")


def test_unpinned_entry(lab):
    raw = "alpha>=1.0 \\\n    --hash=sha256:%s\n" % ("0" * 64)
    _fails_untouched(lab, lab["lock"]("unpinned.txt", None, raw=raw), "not pinned")


def test_lock_for_a_newer_python(lab):
    lockfile = lab["lock"]("py399.txt", [("alpha", "1.0")], flags="--python-version 3.99 --generate-hashes")
    _fails_untouched(lab, lockfile, "3.99")


def test_offline_cold_cache(lab):
    lockfile = lab["lock"]("b.txt", [("alpha", "2.0")])
    message = _fails_untouched(lab, lockfile, "offline and the uv cache", venv_find_links=[],
                               venv_cache_dir=str(lab["tmp"] / "cold"))
    assert str(lab["tmp"] / "cold") in message


def test_path_that_is_not_a_venv(lab):
    path = lab["tmp"] / "data"
    path.mkdir()
    (path / "keep").write_text("x")
    result = lab["run"](lab["lock"]("a.txt", [("alpha", "1.0")]), venv_path=str(path))
    assert len(result["failures"]) == 1 and "exists and is not a venv" in result["failures"][0]
    assert sorted(os.listdir(str(path))) == ["keep"]


def test_python_that_does_not_exist(lab):
    result = lab["run"](lab["lock"]("a.txt", [("alpha", "1.0")]), venv_python="python9.99")
    assert len(result["failures"]) == 1 and "cannot run the venv base Python" in result["failures"][0]
    assert not os.path.lexists(lab["path"])
