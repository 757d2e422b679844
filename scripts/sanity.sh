#!/usr/bin/env bash
# ansible-test sanity, offline-capable. ansible-test insists on running from
# …/ansible_collections/<ns>/<name>, so the tracked tree is copied there first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=$here/.cache/ansible_collections/lockstep/cluster
py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

rm -rf "$dest" && mkdir -p "$dest"
(cd "$here" && git ls-files --cached --others --exclude-standard | grep -v '^\.collections/' \
  | while read -r f; do [ -e "$f" ] && echo "$f"; done | tar -cf - -T -) | tar -xf - -C "$dest"

# ansible-test bootstraps pip with get-pip.py from the internet. A stub under the name it
# looks for (get_pip_<pip version>.py) that uses ensurepip + the configured index works offline.
src=$(python3 -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
pipver=$(sed -n "s/^ *pip='\([0-9.]*\)',$/\1/p" "$src/_internal/python_requirements.py" | head -n1)
[ -n "$pipver" ] || { echo "sanity: cannot find ansible-test's pip version" >&2; exit 1; }
stub=$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py
if [ ! -f "$stub" ]; then
  mkdir -p "$(dirname "$stub")"
  cat >"$stub" <<'PY'
"""Offline stand-in for get-pip.py: ensurepip, then pip installs what was asked."""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip sets PIP_CONFIG_FILE=/dev/null for itself; pip below must see the real config.
os.environ.pop("PIP_CONFIG_FILE", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
fi

cd "$dest"
git init -q . && git add -A
ansible-test sanity --python "$py" --requirements "$@"
