"""Time the env_drift host probe against uv's and pip's own checks (see probe.sh).

Each command is a fresh process, as on a host: interpreter start-up is part of the cost.
One warm-up run, then --runs timed runs; the page cache is warm (a re-run audit).
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
from ansible_collections.lockstep.cluster.plugins.module_utils.env_probe import ARGUMENT_SPEC, collect
params = {k: v.get("default") for k, v in ARGUMENT_SPEC.items()}
params.update(venv=sys.argv[1], lockfile="-", smoke_test=False, verify_files=sys.argv[2] != "off",
              verify_all_files=sys.argv[2] == "all")
facts = collect(params, dict(os.environ))
assert len(facts["distributions"]) > 50, len(facts["distributions"])
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
    commands = [
        ("probe (RECORD check, default: re-hash changed inodes; MPI import, no launch)",
         [sys.executable, "-c", PROBE, args.venv, "changed"]),
        ("probe (RECORD check, re-hash every file)", [sys.executable, "-c", PROBE, args.venv, "all"]),
        ("probe (RECORD check off)", [sys.executable, "-c", PROBE, args.venv, "off"]),
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
    print("# env_drift probe vs uv / pip (%d packages, %d files, %.0f MiB, %d runs, median)\n"
          % (packages, files, size / 2 ** 20, args.runs))
    print("| command | median s | min s | x uv --check --offline | exit |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print("| %s | %.3f | %.3f | %.2f | %s |" % (label, r["median"], r["min"], r["median"] / base, r["rc"]))
    with open(args.json, "w") as handle:
        json.dump({"packages": packages, "files": files, "bytes": size, "runs": args.runs, "results": results},
                  handle, indent=2)


if __name__ == "__main__":
    main()
