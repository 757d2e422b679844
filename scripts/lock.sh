#!/usr/bin/env bash
# Regenerate or verify the committed locks: lockfiles/NAME.txt from lockfiles/NAME.in.
#
#   scripts/lock.sh lock  [UV-ARGS...]  rewrite every lock, keeping existing pins unless
#                                       UV-ARGS say otherwise (--upgrade, -P numpy, ...)
#   scripts/lock.sh check               recompile each lock the same way into a temp file and
#                                       diff: exit 1 if any lock is not current
#   scripts/lock.sh pylock              write lockfiles/pylock.NAME.toml (PEP 751), the twin of
#                                       each committed NAME.txt: the same pins and hashes, plus
#                                       each file's index URL (so it is not committed: .gitignore)
#
# Pins are kept by seeding uv's output file with the committed lock WITHOUT its hashes: uv
# prefers the versions it finds there, and re-reads hashes from the index. (Seeded with the
# hashes, uv copies them unchecked, even with --refresh: a hand-edited pin or hash would
# survive `lock` and pass `check`.)
#
# Each .in states its own uv flags on a "# lock-flags:" line; the token $LOCKSTEP_WHEELS
# there stands for the wheelhouse directory (env LOCKSTEP_WHEELS, default /opt/wheels), which
# holds the CPU torch wheel that PyPI does not have. Every lock also gets --generate-hashes
# (a hash for every distribution, for uv pip sync --require-hashes). The index is uv's own
# default; LOCKSTEP_INDEX_URL resolves against a mirror instead. No index is written into a
# lock (nothing in the repository names an index host): hosts use uv's default or the role's
# venv_index_url.
# Find-links are NOT emitted into the lock: the wheelhouse is a path on this machine and uv
# rejects a lock whose --find-links directory does not exist; hosts pass their own torch
# source at sync time. uv would then drop --find-links from its header, so the header is
# written with --custom-compile-command and holds the full command, which reproduces the lock
# from the repo root.
# Needs PyPI (check too: it re-resolves). Run from anywhere; uv runs from the repo root so
# headers and "# via" lines carry relative paths.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
[ $# -gt 0 ] && shift
case $mode in
  lock | check | pylock) ;;
  *) echo "usage: $0 lock [UV-ARGS...] | check | pylock" >&2; exit 2 ;;
esac
[ "$mode" != lock ] && [ $# -gt 0 ] && { echo "lock.sh: $mode takes no arguments" >&2; exit 2; }

if [ -n "${UV:-}" ]; then
  uv=$UV
elif [ -x .venv/bin/uv ]; then
  uv=.venv/bin/uv
else
  uv=$(scripts/bootstrap-uv.sh)
fi
wheels=${LOCKSTEP_WHEELS:-/opt/wheels}

# Only the flags below may shape a lock: ignore uv config files and UV_* resolver settings.
for var in "${!UV_@}"; do
  case $var in UV_CACHE_DIR | UV_NO_PROGRESS | UV_NATIVE_TLS | UV_SYSTEM_CERTS | UV_HTTP_TIMEOUT) ;; *) unset "$var" ;; esac
done

common=(--generate-hashes)
index=()
[ -n "${LOCKSTEP_INDEX_URL:-}" ] && index=(--index-url "$LOCKSTEP_INDEX_URL")

# read_flags IN: the uv flags of IN's "# lock-flags:" line into the array `flags`.
read_flags() {
  local in=$1 flags_line word
  flags_line=$(sed -n 's/^# lock-flags:[[:space:]]*//p' "$in")
  [ -n "$flags_line" ] || { echo "lock.sh: $in has no '# lock-flags:' line" >&2; return 1; }
  local -a words
  flags=()
  read -r -a words <<<"$flags_line"
  for word in "${words[@]}"; do
    # shellcheck disable=SC2016 # the literal token, not its value
    if [ "$word" = '$LOCKSTEP_WHEELS' ]; then
      [ -d "$wheels" ] || { echo "lock.sh: $in needs the wheelhouse $wheels (set LOCKSTEP_WHEELS)" >&2; return 1; }
      word=$wheels
    fi
    flags+=("$word")
  done
}

# compile IN OUT HEADER_OUT [UV-ARGS...]: resolve IN into OUT; the header names HEADER_OUT.
compile() {
  local in=$1 out=$2 header_out=$3
  shift 3
  local -a flags
  read_flags "$in" || return 1
  local -a args=(pip compile "${flags[@]}" "${common[@]}" "$in")
  local header
  header="uv$(printf ' %q' "${args[@]}" -o "$header_out")"
  "$uv" --no-config "${args[@]}" "${index[@]}" -o "$out" --custom-compile-command "$header" --quiet --no-progress "$@"
}

# pylock_twin IN TXT OUT: the PEP 751 twin of the committed TXT (its pins, uv adds the URLs).
pylock_twin() {
  local in=$1 txt=$2 out=$3
  local -a flags
  read_flags "$in" || return 1
  "$uv" --no-config pip compile "${flags[@]}" --no-deps "${index[@]}" "$txt" -o "$out" --quiet --no-progress
}

shopt -s nullglob
ins=(lockfiles/*.in)
[ ${#ins[@]} -gt 0 ] || { echo "lock.sh: no lockfiles/*.in" >&2; exit 1; }

status=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for in in "${ins[@]}"; do
  txt=${in%.in}.txt
  if [ "$mode" = pylock ]; then
    # The committed lock is the input: --no-deps keeps exactly its pins, uv adds the URLs.
    pylock=lockfiles/pylock.$(basename "${in%.in}").toml
    if pylock_twin "$in" "$txt" "$tmp/pylock.toml"; then
      mv "$tmp/pylock.toml" "$pylock"
      echo "lock.sh: $pylock ($(grep -c '^\[\[packages\]\]' "$pylock") packages)"
    else
      status=1
    fi
    continue
  fi
  out=$tmp/$(basename "$txt")
  if [ -f "$txt" ]; then
    sed -E '/^[[:space:]]+--hash=/d; s/[[:space:]]*\\$//' "$txt" >"$out"
  elif [ "$mode" = check ]; then
    echo "lock.sh: $txt is missing: run scripts/lock.sh lock" >&2
    status=1
    continue
  fi
  start=$SECONDS
  compile "$in" "$out" "$txt" "$@"
  if [ "$mode" = lock ]; then
    mv "$out" "$txt"
    echo "lock.sh: $txt ($(grep -c '^[A-Za-z0-9]' "$txt") entries, $((SECONDS - start)) s)"
  elif diff -u --label "$txt (committed)" --label "$txt (recompiled)" "$txt" "$out" >"$tmp/diff"; then
    echo "lock.sh: $txt is current"
  else
    echo "lock.sh: $txt is NOT current with $in and its lock-flags (diff below);" \
      "run scripts/lock.sh lock and commit the result" >&2
    cat "$tmp/diff" >&2
    status=1
  fi
done
exit $status
