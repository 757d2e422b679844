"""Controller side: plugin_utils/deps.py, the one guarded import of packaging."""

import os
import subprocess
import sys

from ansible_collections.lockstep.cluster.plugins.plugin_utils import deps

from helpers import REPO

# Imports every plugin_utils file with packaging made unimportable, as ansible-test's plugin
# import check does, then shows what an action plugin would see at run time.
_WITHOUT_PACKAGING = r'''
import importlib, os, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "packaging" or name.startswith("packaging."):
            raise ImportError("No module named 'packaging' (blocked)")
sys.meta_path.insert(0, Block())
base = "ansible_collections.lockstep.cluster.plugins.plugin_utils"
for name in sorted(os.listdir(sys.argv[1])):
    if name.endswith(".py") and name != "__init__.py":
        importlib.import_module("%s.%s" % (base, name[:-3]))
deps = importlib.import_module(base + ".deps")
try:
    deps.require()
except RuntimeError as exc:
    print("REQUIRE:", exc)
try:
    deps.canonicalize_name("x")
except RuntimeError as exc:
    print("USE:", exc)
'''


def test_packaging_names_come_from_packaging():
    from packaging.version import Version
    assert deps.IMPORT_ERROR is None and deps.Version is Version
    deps.require()


def test_without_packaging_every_file_imports_and_use_fails_clearly():
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".collections"))
    out = subprocess.run([sys.executable, "-c", _WITHOUT_PACKAGING, os.path.join(REPO, "plugins", "plugin_utils")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "REQUIRE: the Python library 'packaging'" in out.stdout
    assert "USE: the Python library 'packaging'" in out.stdout
