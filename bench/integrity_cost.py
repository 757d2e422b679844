"""In-process cost of env_probe.integrity_facts (everything the probe does for a venv's files:
manifest load and verify, owners, the store audit, the content digest), with the host code of
a checkout, the venv sealed by that checkout first. Prints best and median of N.

Usage: /usr/bin/python3 bench/integrity_cost.py CHECKOUT VENV N   (e.g. VENV=bench/results/venv)
Compare a checkout before a change with this one, interleaved, on the same venv.
"""

import os
import sys
import time

tree, venv, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.path.join(tree, ".collections"))
from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, env_probe, manifest  # noqa: E402

real = os.path.realpath(venv)
sealed = manifest.build(real)
if hasattr(manifest, "content_digest"):
    sealed["content_digest"] = manifest.content_digest(sealed)  # as venv_store seals it
manifest.write(manifest.location(real), sealed)
sites = distributions.guess_site_packages(real)
params = {"verify_files": True, "verify_all_files": False, "venv": venv}
times = []
for _run in range(runs):
    start = time.perf_counter()
    facts, _dists = env_probe.integrity_facts(real, sites, params)
    times.append(time.perf_counter() - start)
times.sort()
print("%s: best %.4f s, median %.4f s, %d entries, findings %d, unsafe %d" % (
    tree, times[0], times[len(times) // 2], len(sealed["entries"]), len(facts["findings"]),
    len(facts.get("unsafe") or [])))
