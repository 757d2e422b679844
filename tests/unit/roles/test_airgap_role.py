"""roles/venv with a wheelhouse, on the controller itself (connection local): the controller
fetches from a local PEP 503 index, pushes only what the host wheelhouse lacks, the host syncs
with no index; a pylock.toml twin gives the same venv and the same drift report; a password in
the index URL shows up nowhere (output at -vvv, results, uv's argv in /proc)."""

import base64
import http.server
import json
import os
import subprocess
import textwrap
import threading
import time

import pytest

from helpers import BASE_PYTHON, HEADER, lock_text, make_wheel, play_role, task_results, UV

SECRET = "s3cr3t-Pa55-%d" % os.getpid()


# Audit the venv the play synced (the probe collects, validate judges).
DRIFT_TASK = textwrap.dedent("""\
      post_tasks:
        - name: Probe the venv
          lockstep.cluster.probe:
            validate:
              venv: "{{ venv_path }}"
              mpi: false
          register: _validate_probe
        - name: Check the venv against the lock
          lockstep.cluster.validate:
            hosts: [localhost]
            lockfile: "{{ venv_lockfile }}"
            cluster_smoke: false
            dest: "{{ playbook_dir }}/reports"
            run_id: drift
          register: drift_result
    """)


def simple_index(root, wheels):
    """A PEP 503 index of ``wheels`` ({filename: sha256}) under ``root/simple`` (file URLs)."""
    for filename, sha in wheels.items():
        project = root / "simple" / filename.split("-")[0]
        project.mkdir(parents=True, exist_ok=True)
        with open(project / "index.html", "a") as page:
            page.write('<a href="%s#sha256=%s">%s</a>\n' % ((root / "wheels" / filename).as_uri(), sha, filename))


@pytest.fixture
def airgap(tmp_path):
    (tmp_path / "wheels").mkdir()
    sha = {}
    files = {}
    for name, version in (("alpha", "1.0"), ("alpha", "2.0"), ("beta", "1.0")):
        path, digest = make_wheel(str(tmp_path / "wheels"), name, version)
        sha[(name, version)] = digest
        files[os.path.basename(path)] = digest
    simple_index(tmp_path, files)

    def lock(name, pins):
        body = lock_text([(n, v, sha[(n, v)]) for n, v in pins]).split("\n", 2)[2]
        path = tmp_path / name
        path.write_text(HEADER % "--universal --python-version 3.9 --generate-hashes" + body)
        return str(path)

    def pylock(name, pins):
        source = tmp_path / (name + ".in")
        source.write_text("".join("%s==%s\n" % pin for pin in pins))
        out = tmp_path / name
        subprocess.run([UV, "pip", "compile", "--no-config", "-q", "--universal", "--python-version", "3.9",
                        "--default-index", (tmp_path / "simple").as_uri(), str(source), "-o", str(out)], check=True)
        return str(out)

    def run(lockfile, check=False, verbose=False, playbook_tasks=None, **overrides):
        variables = {
            "venv_path": str(tmp_path / "opt" / "venv"),
            "venv_store_dir": str(tmp_path / "opt" / "venvs"),
            "venv_cache_dir": str(tmp_path / "opt" / "cache"),
            "venv_python": BASE_PYTHON,
            "venv_lockfile": lockfile,
            "venv_uv_executable": UV,
            "venv_wheelhouse_dir": str(tmp_path / "opt" / "wheelhouse"),
            "venv_wheelhouse_cache": str(tmp_path / "controller"),
            "venv_index_url": (tmp_path / "simple").as_uri(),
        }
        variables.update(overrides)
        proc = play_role(tmp_path, "venv", variables, check=check, verbose=verbose, tasks=playbook_tasks or "")
        if verbose:
            return proc
        stats, results = task_results(proc)
        return {"stats": stats, "failures": [r.get("msg", "") for dummy, r in results if r.get("failed")],
                "sync": next((r for n, r in results if "Sync the venv" in n), None), "results": results}

    return {"tmp": tmp_path, "lock": lock, "pylock": pylock, "run": run, "sha": sha,
            "host_wh": tmp_path / "opt" / "wheelhouse", "path": str(tmp_path / "opt" / "venv")}


def installed(venv):
    out = subprocess.check_output([UV, "pip", "list", "--python", os.path.join(venv, "bin", "python"),
                                   "--format", "json", "--offline"], universal_newlines=True)
    return dict((row["name"], row["version"]) for row in json.loads(out))


def test_push_only_missing_then_converged_costs_one_module_run(airgap):
    first = airgap["run"](airgap["lock"]("a.txt", [("alpha", "1.0"), ("beta", "1.0")]))
    assert first["failures"] == [] and first["stats"]["changed"] == 1, first
    assert sorted(first["sync"]["wheelhouse"]["pushed"]) == ["alpha-1.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"]
    assert sorted(os.listdir(airgap["host_wh"])) == ["alpha-1.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"]
    assert installed(airgap["path"]) == {"alpha": "1.0", "beta": "1.0"}
    # uv never had an index: every sync ran --offline --no-index.
    again = airgap["run"](airgap["lock"]("a.txt", [("alpha", "1.0"), ("beta", "1.0")]))
    assert again["failures"] == [] and again["stats"]["changed"] == 0
    assert "wheelhouse" not in again["sync"]  # no push, no listing: the plan said "none"
    # The venv's files match its manifest: nothing for uv to check again.
    assert again["sync"]["commands"] == []

    # Check mode names what it would push, and pushes nothing.
    predicted = airgap["run"](airgap["lock"]("b.txt", [("alpha", "2.0"), ("beta", "1.0")]), check=True)
    assert predicted["failures"] == [] and predicted["stats"]["changed"] == 1
    assert predicted["sync"]["wheelhouse"]["push"] == ["alpha-2.0-py3-none-any.whl"]
    assert sorted(os.listdir(airgap["host_wh"])) == ["alpha-1.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"]

    upgrade = airgap["run"](airgap["lock"]("b.txt", [("alpha", "2.0"), ("beta", "1.0")]))
    assert upgrade["failures"] == [] and upgrade["sync"]["wheelhouse"]["pushed"] == ["alpha-2.0-py3-none-any.whl"]
    assert upgrade["sync"]["wheelhouse"]["fetched"] == ["alpha-2.0-py3-none-any.whl"]
    assert installed(airgap["path"]) == {"alpha": "2.0", "beta": "1.0"}


def test_missing_file_fails_fast_and_clearly(airgap):
    lockfile = airgap["lock"]("a.txt", [("alpha", "1.0")])
    os.unlink(airgap["tmp"] / "wheels" / "alpha-1.0-py3-none-any.whl")
    start = time.time()
    result = airgap["run"](lockfile)
    assert len(result["failures"]) == 1 and "cannot fetch" in result["failures"][0], result["failures"]
    assert "alpha==1.0" in result["failures"][0]
    assert time.time() - start < 60
    assert not os.path.lexists(airgap["path"])


def test_a_file_that_is_not_the_locked_one_is_refused(airgap):
    lockfile = airgap["lock"]("a.txt", [("alpha", "1.0")])
    wheel = airgap["tmp"] / "wheels" / "alpha-1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    result = airgap["run"](lockfile)
    assert len(result["failures"]) == 1 and "not one the lock pins" in result["failures"][0], result["failures"]
    assert not os.listdir(airgap["tmp"] / "controller" / "files") or \
        "alpha-1.0-py3-none-any.whl" not in os.listdir(airgap["tmp"] / "controller" / "files")


def test_pylock_twin_provisions_and_validates_like_the_requirements_lock(airgap, tmp_path):
    pins = [("alpha", "1.0"), ("beta", "1.0")]
    pylock = airgap["pylock"]("pylock.twin.toml", pins)
    result = airgap["run"](pylock, playbook_tasks=DRIFT_TASK)
    assert result["failures"] == [], result["failures"]
    assert result["sync"]["lock"]["format"] == "pylock"
    assert installed(airgap["path"]) == {"alpha": "1.0", "beta": "1.0"}
    report = next(r for n, r in result["results"] if n == "Check the venv against the lock")["reports"]["localhost"]
    assert report["status"] == "ok" and report["counts"]["expected"] == 2, report["problems"]
    twin = airgap["lock"]("twin.txt", pins)
    again = airgap["run"](twin, playbook_tasks=DRIFT_TASK)
    report_txt = next(r for n, r in again["results"] if n == "Check the venv against the lock")["reports"]["localhost"]
    assert report_txt["status"] == "ok" and report_txt["fingerprint"] == report["fingerprint"]
    assert report_txt["checks"] == report["checks"]


class _AuthIndex(http.server.SimpleHTTPRequestHandler):
    """The local index behind HTTP basic auth (user ``ci``, password SECRET); slow on purpose so
    a process scan sees uv running."""

    def do_GET(self):
        expected = "Basic " + base64.b64encode(("ci:%s" % SECRET).encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="index"')
            self.end_headers()
            return
        time.sleep(0.3)
        super().do_GET()

    def log_message(self, *args):
        pass


def _http_index(root):
    """Serve ``root`` (simple/ with relative links to wheels/) on 127.0.0.1."""
    for page in (root / "simple").glob("*/index.html"):
        page.write_text(page.read_text().replace((root / "wheels").as_uri(), "../../wheels"))

    def handler(*args, **kwargs):
        return _AuthIndex(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://ci:%s@127.0.0.1:%d/simple" % (SECRET, server.server_address[1])


def _scan_cmdlines(stop, seen, marker):
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    line = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if " pip sync " in line and marker in line:  # this test's uv, not a neighbour's
                seen["uv"] += 1
            if SECRET in line:
                seen["leaks"].append(line)
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["index", "wheelhouse"])
def test_index_password_is_never_shown(airgap, mode):
    server, url = _http_index(airgap["tmp"])
    try:
        overrides = {"venv_index_url": url}
        if mode == "index":
            overrides["venv_wheelhouse_dir"] = ""
        lockfile = airgap["lock"]("a.txt", [("alpha", "1.0"), ("beta", "1.0")])
        stop, seen = threading.Event(), {"uv": 0, "leaks": []}
        scanner = threading.Thread(target=_scan_cmdlines, args=(stop, seen, str(airgap["tmp"])))
        scanner.start()
        try:
            proc = airgap["run"](lockfile, verbose=True, **overrides)
        finally:
            stop.set()
            scanner.join()
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert installed(airgap["path"]) == {"alpha": "1.0", "beta": "1.0"}
        assert seen["uv"] > 0 and seen["leaks"] == []
        assert SECRET not in proc.stdout and SECRET not in proc.stderr
        assert "task path:" in proc.stdout and "sync_changes" in proc.stdout  # -vvv showed the results
        # Nothing written on the host (venvs, uv cache, wheelhouse) or the controller wheelhouse keeps it.
        for top in ("opt", "controller"):
            for root, _dirs, names in os.walk(airgap["tmp"] / top):
                for name in names:
                    path = os.path.join(root, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        with open(path, "rb") as handle:
                            assert SECRET.encode() not in handle.read(), path
        # A wrong password: uv's error must not echo the URL with it.
        bad = url.replace(SECRET, SECRET + "-wrong")
        os.unlink(os.path.realpath(airgap["path"]) + "/lockstep.json")  # force a rebuild
        if mode == "wheelhouse":
            for name in os.listdir(airgap["host_wh"]):
                os.unlink(airgap["host_wh"] / name)
            for name in os.listdir(airgap["tmp"] / "controller" / "files"):
                os.unlink(airgap["tmp"] / "controller" / "files" / name)
        failed = airgap["run"](airgap["lock"]("b.txt", [("alpha", "2.0")]), verbose=True, venv_index_url=bad,
                               **dict((k, v) for k, v in overrides.items() if k != "venv_index_url"))
        assert failed.returncode != 0
        assert SECRET not in failed.stdout and SECRET not in failed.stderr, failed.stdout[-2000:]
    finally:
        server.shutdown()


def _cache_entries(cache):
    """Unpacked wheels in uv's cache (what a copy-mode venv does not use)."""
    return os.listdir(cache / "archive-v0") if (cache / "archive-v0").is_dir() else []


@pytest.mark.parametrize("link_mode", ["copy", "hardlink"])
def test_prune_after_sync_gives_back_the_cache_and_old_wheelhouse_files(airgap, link_mode):
    cache = airgap["tmp"] / "opt" / "cache"
    first = airgap["run"](airgap["lock"]("a.txt", [("alpha", "1.0"), ("beta", "1.0")]), venv_link_mode=link_mode)
    assert first["failures"] == [] and "reclaimed" not in first["sync"]
    assert _cache_entries(cache)  # the default keeps uv's cache

    b = airgap["lock"]("b.txt", [("alpha", "2.0"), ("beta", "1.0")])
    pruned = airgap["run"](b, venv_link_mode=link_mode, venv_prune_after_sync=True, playbook_tasks=DRIFT_TASK)
    assert pruned["failures"] == [] and pruned["stats"]["changed"] == 1, pruned
    reclaimed = pruned["sync"]["reclaimed"]
    assert reclaimed["wheelhouse_removed"] == ["alpha-1.0-py3-none-any.whl"] and reclaimed["wheelhouse_bytes"] > 0
    assert reclaimed["uv_cache"].startswith("Removed "), reclaimed
    assert sorted(os.listdir(airgap["host_wh"])) == ["alpha-2.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"]
    assert _cache_entries(cache) == []
    assert installed(airgap["path"]) == {"alpha": "2.0", "beta": "1.0"}
    report = next(r for n, r in pruned["results"] if n == "Check the venv against the lock")["reports"]["localhost"]
    assert report["status"] == "ok", report["problems"]

    # Converged: nothing to sync, nothing pruned, and drift still passes.
    again = airgap["run"](b, venv_link_mode=link_mode, venv_prune_after_sync=True, playbook_tasks=DRIFT_TASK)
    assert again["failures"] == [] and again["stats"]["changed"] == 0, again
    assert "reclaimed" not in again["sync"]
    assert next(r for n, r in again["results"] if n == "Check the venv against the lock")["reports"]["localhost"][
        "status"] == "ok"


def test_prune_after_sync_is_refused_with_symlinked_venv_files(airgap):
    result = airgap["run"](airgap["lock"]("a.txt", [("alpha", "1.0")]), venv_link_mode="symlink",
                           venv_prune_after_sync=True)
    assert len(result["failures"]) == 1 and "link_mode symlink" in result["failures"][0], result["failures"]
    assert not os.path.lexists(airgap["path"])


def test_a_failed_cache_prune_is_a_warning_the_venv_stays_synced(airgap, tmp_path):
    wrapper = tmp_path / "uv-no-prune"
    wrapper.write_text('#!/bin/sh\n[ "$1 $2" = "cache prune" ] && { echo "cache is locked" >&2; exit 2; }\n'
                       'exec %s "$@"\n' % UV)
    wrapper.chmod(0o755)
    result = airgap["run"](airgap["lock"]("a.txt", [("alpha", "1.0")]), venv_prune_after_sync=True,
                           venv_uv_executable=str(wrapper))
    assert result["failures"] == [] and result["stats"]["changed"] == 1, result
    assert any("pruning the uv cache failed" in w and "cache is locked" in w for w in result["sync"]["warnings"])
    assert installed(airgap["path"]) == {"alpha": "1.0"}
