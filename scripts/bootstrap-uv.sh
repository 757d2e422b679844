#!/usr/bin/env bash
# Print the path of a uv binary at the version pinned in requirements.txt. When none is
# on PATH, install that exact pin (hash-verified) into .cache/bootstrap with pip.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pin=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' "$here/requirements.txt")
[ -n "$pin" ] || { echo "bootstrap-uv: no uv== pin in requirements.txt" >&2; exit 1; }
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$pin" ]; then
  command -v uv; exit 0
fi
boot=$here/.cache/bootstrap
if [ ! -x "$boot/bin/uv" ] || [ "$("$boot/bin/uv" --version | cut -d' ' -f2)" != "$pin" ]; then
  python3 -m venv "$boot" >&2
  req=$(mktemp)
  trap 'rm -f "$req"' EXIT
  # The uv entry with its --hash continuation lines, so pip verifies what it installs.
  awk '/^uv==/{p=1} p{print; if ($0 !~ /\\$/) exit}' "$here/requirements.txt" >"$req"
  "$boot/bin/pip" install -q --require-hashes --no-deps -r "$req" >&2
fi
echo "$boot/bin/uv"
