"""Make ``ansible_collections.lockstep.cluster`` and the shared test helpers importable from a
plain checkout."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parents[1] / ".collections", _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
