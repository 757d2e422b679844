"""playbooks/drift.yml (the validate role) on the controller itself, against a venv the store
built: one knob for failing on drift (issue 10.8), the uv pin read from the uv role rather
than copied (10.7), tampered files named in the reports (10.1)."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from _role_vars import render, ROLES

from helpers import ansible_env, ANSIBLE_PLAYBOOK, lock_of, make_store, REPO, sync, wheelhouse


def uv_pin():
    with open(os.path.join(ROLES, "uv", "defaults", "main.yml")) as handle:
        return yaml.safe_load(handle)["uv_version"]


def test_lockstep_fail_on_drift_is_the_default_of_validate_fail_on_drift():
    assert render("validate", ["defaults/main.yml"])("validate_fail_on_drift") is False
    for value in (True, False):
        assert render("validate", ["defaults/main.yml"], lockstep_fail_on_drift=value)("validate_fail_on_drift") is value


@pytest.fixture
def audit(tmp_path):
    house = wheelhouse(tmp_path)
    store = make_store(house, lock_of(house, ("alpha", "1.0")))
    sync(store)
    bindir = tmp_path / "bin"
    bindir.mkdir()

    def run(uv_says, **extra):
        fake = bindir / "uv"
        fake.write_text("#!/bin/sh\necho '%s'\n" % uv_says)
        fake.chmod(0o755)
        # The venv only: this controller has no uv role install and no cluster to compare with.
        variables = {"validate_venv": store.path, "validate_lockfile": store.lockfile, "validate_mpi": False,
                     "validate_roles": [],
                     "validate_report_dir": str(tmp_path / "reports"), "validate_run_id": "run",
                     "ansible_connection": "local", "ansible_become": False,
                     "ansible_python_interpreter": sys.executable}
        variables.update(extra)
        (tmp_path / "vars.json").write_text(json.dumps(variables))
        env = ansible_env(PATH=str(bindir) + os.pathsep + os.environ["PATH"])
        proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", os.path.join(REPO, "playbooks", "drift.yml"),
                               "-e", "@%s" % (tmp_path / "vars.json")], cwd=str(tmp_path), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
        report = json.loads((tmp_path / "reports" / "run" / "localhost.json").read_text())
        junit = ET.parse(str(tmp_path / "reports" / "run" / "junit.xml")).getroot()
        cases = dict((c.get("name"), [child.tag for child in c]) for c in junit.iter("testcase"))
        return proc, report, cases

    return {"run": run, "store": store}


def test_clean_venv_passes_with_the_uv_role_pin(audit):
    proc, report, cases = audit["run"]("uv %s" % uv_pin(), lockstep_fail_on_drift=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["status"] == "ok" and report["checks"]["uv"] == {"outcome": "pass", "message": ""}
    assert report["checks"]["integrity"]["outcome"] == "pass" and report["integrity"]["method"] == "manifest"
    assert cases["uv"] == [] and cases["integrity"] == []


def test_another_uv_version_is_drift(audit):
    proc, report, cases = audit["run"]("uv 0.0.1", lockstep_fail_on_drift=True)
    assert proc.returncode != 0
    assert report["problems"] == ["uv: uv 0.0.1 but %s expected" % uv_pin()]
    assert cases["uv"] == ["failure"]


def test_tampered_file_fails_drift_yml_with_lockstep_fail_on_drift(audit):
    site = [os.path.join(r, "site-packages") for r, d, _f in os.walk(os.path.realpath(audit["store"].path))
            if "site-packages" in d][0]
    with open(os.path.join(site, "zz-evil.pth"), "w") as handle:
        handle.write("/tmp/evil\n")
    proc, report, cases = audit["run"]("uv %s" % uv_pin(), lockstep_fail_on_drift=True)
    assert proc.returncode != 0 and "- localhost: drift: file " in proc.stdout
    rel = os.path.relpath(os.path.join(site, "zz-evil.pth"), os.path.realpath(audit["store"].path))
    assert report["problems"] == ["file %s: new file, not in the venv's manifest" % rel]
    assert cases["integrity"] == ["failure"]
    proc, report, cases = audit["run"]("uv %s" % uv_pin(), lockstep_fail_on_drift=False)
    assert proc.returncode == 0 and report["status"] == "drift"
