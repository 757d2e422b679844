"""One venv build (plan, uv sync, compile, seal, flip) with the host code of a checkout, as the
venv role does it: prints the seconds, the cache check and the uv steps (JSON). Used by
bench/cache_bench.sh to compare a checkout before and after the uv cache check.

Usage: build_cost.py CHECKOUT LOCK CACHE_DIR STORE VENV_PATH [FIND_LINKS...]

The import check of mpi4py (MPI_Init-free) is skipped: it needs a libmpi on the machine and
costs the same with and without the cache check.
"""

import hashlib
import json
import os
import platform
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
tree, lock, cache, store, path = sys.argv[1:6]
links = sys.argv[6:]
# The controller side (packaging) of this checkout computes the package set, as the action plugin does.
sys.path.insert(0, os.path.join(here, "..", ".collections"))
from ansible_collections.lockstep.cluster.plugins.plugin_utils.lockfile import parse_lock  # noqa: E402

markers = {"implementation_name": "cpython", "implementation_version": platform.python_version(), "os_name": os.name,
           "platform_machine": platform.machine(), "platform_python_implementation": "CPython",
           "platform_release": platform.release(), "platform_system": platform.system(),
           "platform_version": platform.version(), "python_full_version": "3.11.2", "python_version": "3.11",
           "sys_platform": sys.platform}
text = open(lock).read()
expected = dict((n, e.version) for n, e in parse_lock(text, lock).for_environment(markers).items())
for name in [m for m in sys.modules if m.startswith("ansible_collections")]:
    del sys.modules[name]
sys.path[0] = os.path.join(tree, ".collections")
from ansible_collections.lockstep.cluster.plugins.module_utils import venv_store  # noqa: E402
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import UvRunner  # noqa: E402

venv_store.import_errors = lambda *args, **kwargs: {}
runner = UvRunner(os.environ.get("UV", os.path.join(here, "..", ".venv", "bin", "uv")), cache_dir=cache,
                  find_links=links, link_mode="copy")
built = venv_store.VenvStore(runner, path, store, "/usr/bin/python3", "3.11.2",
                             hashlib.sha256(text.encode()).hexdigest(), lockfile_name=os.path.basename(lock),
                             expected=expected)
start = time.time()
plan = built.sync(lock)
print(json.dumps({"seconds": round(time.time() - start, 2), "cache_check": plan.get("cache_check"),
                  "steps": [s for s in runner.timings() if " sync " in s or "cache" in s or "compileall" in s]}))
