#!/usr/bin/env bash
# Probe time per host (no MPI launch) vs `uv pip sync --check` vs `pip list` + `pip check`,
# and the manifest's full re-hash vs sha256sum, on the same ~100-package venv
# (bench/probe-lock.txt, built once under bench/results/).
# Usage: bench/probe.sh [runs]   -> bench/results/probe.md and probe.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
uv=${UV:-$root/.venv/bin/uv}
python=${PYTHON:-/usr/bin/python3} # the hosts' system Python runs the module
venv=$here/results/venv
piptool=$here/results/piptool # pip lives outside the measured venv (uv venvs have none)
mkdir -p "$here/results"
if [ ! -x "$venv/bin/python" ]; then
  rm -f "$venv.manifest.json" # probe_bench.py seals the new venv, as the venv role does
  "$uv" venv -q --python "$python" "$venv"
  # Copied, not hardlinked: as the venv role builds venvs (venv_link_mode: copy).
  "$uv" pip sync -q --require-hashes --link-mode copy --python "$venv/bin/python" "$here/probe-lock.txt"
fi
if [ ! -x "$piptool/bin/pip" ]; then
  "$uv" venv -q --python "$python" "$piptool"
  "$uv" pip install -q --python "$piptool/bin/python" "pip>=23"
fi
"$python" "$here/probe_bench.py" --root "$root" --venv "$venv" --lock "$here/probe-lock.txt" \
  --uv "$uv" --pip "$piptool/bin/pip" --runs "${1:-7}" --json "$here/results/probe.json" \
  | tee "$here/results/probe.md"
