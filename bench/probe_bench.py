"""Time the host probe's audit section (module_utils/probe.py collect) against uv's and pip's own checks (see probe.sh), and the
manifest's full re-hash against sha256sum over the same files.

Each command is a fresh process, as on a host: interpreter start-up is part of the cost.
One warm-up run, then --runs timed runs; the page cache is warm (a re-run audit).
The venv gets a manifest first (<venv>.manifest.json), as the venv role writes one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROBE = """
import os, sys
from ansible_collections.lockstep.cluster.plugins.module_utils.probe import VALIDATE_OPTIONS, collect
params = {k: v.get("default") for k, v in VALIDATE_OPTIONS.items()}
params.update(venv=sys.argv[1], smoke_test=False, verify_files=sys.argv[2] != "off",
              verify_all_files=sys.argv[2] == "all")
facts = collect(params, dict(os.environ))
assert len(facts["distributions"]) > 50, len(facts["distributions"])
assert facts["integrity"]["method"] == ("off" if sys.argv[2] == "off" else "manifest"), facts["integrity"]
assert not facts["integrity"].get("findings") and not facts["integrity"].get("error"), facts["integrity"]
"""

# In-process: the manifest's full re-hash (as verify_all_files does it), one file list.
REHASH = """
import json, os, sys, time
from ansible_collections.lockstep.cluster.plugins.module_utils import manifest
data = manifest.load(manifest.location(sys.argv[1]))
start = time.perf_counter()
result = manifest.verify(os.path.realpath(sys.argv[1]), data, rehash_all=True, workers=int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - start, "files": result["rehashed"],
                  "findings": len(result["findings"])}))
"""


def timed(argv, env, runs):
    def once():
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - start
        return elapsed, proc.returncode, proc.stderr.decode(errors="replace")[-300:]

    _elapsed, rc, err = once()  # warm-up; its rc/stderr tell whether the command works
    samples = [once()[0] for _run in range(runs)]
    return {"median": statistics.median(samples), "min": min(samples), "rc": rc, "stderr": err.strip()}


def main():
    parser = argparse.ArgumentParser()
    for name in ("root", "venv", "lock", "uv", "pip", "json"):
        parser.add_argument("--" + name, required=True)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    # uv first on PATH, as on a provisioned host (/usr/local/bin/uv), not behind a shim.
    env = dict(os.environ, PYTHONPATH=os.path.join(args.root, ".collections"), PYTHONDONTWRITEBYTECODE="1",
               PATH=os.path.dirname(args.uv) + os.pathsep + os.environ.get("PATH", ""))
    vpy = os.path.join(args.venv, "bin", "python")
    sync = [args.uv, "pip", "sync", "--check", "--require-hashes", "--python", vpy, args.lock]
    pip = [args.pip, "--python", vpy, "--disable-pip-version-check"]
    seal(args.venv, env)
    commands = [
        ("probe (manifest check, default: re-hash what changed; MPI import, no launch)",
         [sys.executable, "-c", PROBE, args.venv, "changed"]),
        ("probe (manifest check, re-hash every file)", [sys.executable, "-c", PROBE, args.venv, "all"]),
        ("probe (file check off)", [sys.executable, "-c", PROBE, args.venv, "off"]),
        ("uv pip sync --check --offline", sync[:4] + ["--offline"] + sync[4:]),
        ("uv pip sync --check (index reachable)", sync),
        ("pip list", pip + ["list"]),
        ("pip check", pip + ["check"]),
    ]
    results = {label: timed(argv, env, args.runs) for label, argv in commands}
    results["pip list + pip check"] = {
        "median": results["pip list"]["median"] + results["pip check"]["median"],
        "min": results["pip list"]["min"] + results["pip check"]["min"], "rc": 0, "stderr": "",
    }
    files = sum(len(names) for _root, _dirs, names in os.walk(args.venv))
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _dirs, fs in os.walk(args.venv) for n in fs
               if not os.path.islink(os.path.join(d, n)))
    packages = sum(1 for line in open(args.lock) if line[:1].isalnum())
    base = results["uv pip sync --check --offline"]["median"]
    print("# probe (audit section) vs uv / pip (%d packages, %d files, %.0f MiB, %d runs, median)\n"
          % (packages, files, size / 2 ** 20, args.runs))
    print("| command | median s | min s | x uv --check --offline | exit |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print("| %s | %.3f | %.3f | %.2f | %s |" % (label, r["median"], r["min"], r["median"] / base, r["rc"]))
    throughput = rehash_vs_sha256sum(args.venv, env, args.runs)
    print("\n# full re-hash vs sha256sum over the same %d files (%.0f MiB, best of %d)\n"
          % (throughput["files"], throughput["bytes"] / 2 ** 20, args.runs))
    print("| reader | s | MiB/s | % of sha256sum |")
    print("|---|---|---|---|")
    for label in ("sha256sum", "manifest re-hash, 1 process", "manifest re-hash, forked workers"):
        seconds = throughput[label]
        rate = throughput["bytes"] / 2 ** 20 / seconds
        print("| %s | %.3f | %.0f | %.0f %% |" % (label, seconds, rate, 100 * throughput["sha256sum"] / seconds))
    with open(args.json, "w") as handle:
        json.dump({"packages": packages, "files": files, "bytes": size, "runs": args.runs, "results": results,
                   "throughput": throughput}, handle, indent=2)


def seal(venv, env):
    """Write the venv's manifest as the venv role does (kept while the venv is unchanged)."""
    subprocess.run([sys.executable, "-c", "import sys; from ansible_collections.lockstep.cluster.plugins.module_utils "
                    "import manifest as m; path = m.location(sys.argv[1]); import os\n"
                    "if not os.path.exists(path): m.write(path, m.build(os.path.realpath(sys.argv[1])))",
                    venv], env=env, check=True)


def rehash_vs_sha256sum(venv, env, runs):
    """Best-of-``runs`` seconds for sha256sum (one process, as many files per exec as fit) and
    for the manifest's re-hash of exactly the files the manifest lists."""
    data = json.load(open(venv.rstrip("/") + ".manifest.json"))
    root = os.path.realpath(venv)
    paths = sorted(os.path.join(root, rel) for rel, row in data["entries"].items() if row[0] == "file")
    size = sum(data["entries"][os.path.relpath(p, root)][2] for p in paths)
    listing = "\0".join(paths).encode() + b"\0"

    def best(argv, **kwargs):
        times = []
        for _run in range(runs + 1):  # the first one warms the page cache
            start = time.perf_counter()
            proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, check=True, **kwargs)
            times.append((time.perf_counter() - start, proc.stdout))
        return times[1:]

    sha = min(t for t, _out in best(["xargs", "-0", "sha256sum"], input=listing))
    rehash = {}
    for workers in (1, os.cpu_count() or 1):
        samples = [json.loads(out) for _t, out in best([sys.executable, "-c", REHASH, venv, str(workers)])]
        assert all(s["files"] == len(paths) and s["findings"] == 0 for s in samples), samples[0]
        rehash[workers] = min(s["seconds"] for s in samples)
    return {"files": len(paths), "bytes": size, "sha256sum": sha, "manifest re-hash, 1 process": rehash[1],
            "manifest re-hash, forked workers": rehash[os.cpu_count() or 1], "workers": os.cpu_count() or 1}


if __name__ == "__main__":
    main()
