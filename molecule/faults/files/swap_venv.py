"""Host side (molecule faults), run as the benchmark user: in a venv store others can write,
replace the live venv by an edited copy and rewrite its manifest so the tree matches it again
(issue 17). Usage: swap_venv.py STORE LIVE_VENV_DIR"""

import glob
import hashlib
import json
import os
import shutil
import stat
import sys

store, live = sys.argv[1], sys.argv[2]
location = live + ".manifest.json"
with open(location) as handle:
    sealed = json.load(handle)
copy = os.path.join(store, "swapped")
shutil.copytree(live, copy, symlinks=True)
site = glob.glob(os.path.join(copy, "lib", "python3*", "site-packages"))[0]
with open(os.path.join(site, "tqdm", "__init__.py"), "a") as handle:
    handle.write("__version__ = 'pwned'\n")
shutil.rmtree(os.path.join(site, "tqdm", "__pycache__"))  # the sealed bytecode would win
os.rename(live, os.path.join(store, ".original"))
os.rename(copy, live)

entries = {}
for root, dirs, files in os.walk(live):
    for name in dirs + files:
        path = os.path.join(root, name)
        rel = os.path.relpath(path, live)
        st = os.lstat(path)
        old = sealed["entries"].get(rel) or [None] * 11
        if stat.S_ISLNK(st.st_mode):
            kind, content = "link", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, content = "dir", None
        else:
            with open(path, "rb") as handle:
                kind, content = "file", hashlib.sha256(handle.read()).hexdigest()
        entries[rel] = [kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0, content, st.st_ino,
                        st.st_mtime_ns, st.st_ctime_ns, old[7], st.st_uid, st.st_gid, old[10]]
sealed["entries"] = entries
tmp = os.path.join(store, ".manifest.tmp")
with open(tmp, "w") as handle:
    json.dump(sealed, handle)
os.rename(tmp, location)
print("swapped")
