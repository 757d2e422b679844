"""Host side (molecule faults): replace a module's compiled pyc with one whose header matches
its source (flags, mtime, size) but whose code is other; Python then runs the forged code."""

import importlib.util
import marshal
import os
import sys

source = sys.argv[1]
pyc = importlib.util.cache_from_source(source)
st = os.stat(source)
code = compile("__version__ = 'forged'\n", source, "exec")
with open(pyc, "wb") as handle:
    handle.write(importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
                 + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                 + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))
print(pyc)
