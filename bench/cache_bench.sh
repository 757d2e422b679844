#!/usr/bin/env bash
# Build cost of the uv cache check: a checkout without it (BEFORE, e.g. a `git worktree` of
# the commit before) against this one, cold (empty uv cache) and warm, for a lock.
# Usage: bench/cache_bench.sh BEFORE_CHECKOUT LOCK [FIND_LINKS...]   (prints, asserts nothing)
# e.g.   bench/cache_bench.sh ../main lockfiles/mlperf-storage-cpu.txt /opt/wheels
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
before=$(cd "$1" && pwd); lock=$(readlink -f "$2"); shift 2
work=$(mktemp -d /var/tmp/lockstep-cache-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
py=$here/../.venv/bin/python
build() { printf '%-34s ' "$1"; "$py" "$here/build_cost.py" "${@:2}" "${links[@]}" || echo failed; }
links=("$@")
build "before, cold" "$before" "$lock" "$work/cache-before" "$work/b/s1" "$work/b/p1"
build "before, warm" "$before" "$lock" "$work/cache-before" "$work/b/s2" "$work/b/p2"
rm -rf "$work/b"
build "after, cold (fetches all)" "$here/.." "$lock" "$work/cache-after" "$work/a/s1" "$work/a/p1"
build "after, warm, store holds all" "$here/.." "$lock" "$work/cache-after" "$work/a/s1" "$work/a/p2"
build "after, warm, empty store" "$here/.." "$lock" "$work/cache-after" "$work/a/s2" "$work/a/p3"
du -sh "$work/cache-before" "$work/cache-after"
