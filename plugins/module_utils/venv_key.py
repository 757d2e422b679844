# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A venv's name and identity in the store: its lock stem, its key recipe and the
uv.toml that keys uv's build cache (stdlib only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re

# Bumped when the layout or the key recipe changes, so old venvs are rebuilt, not reused.
# 2: the manifest in the store, compiled bytecode and the no-bytecode guard.
# 3: keyed by venv_path too; manifest format 2 (owners, portable hashes); reproducible bytecode.
FORMAT = 3


def lock_stem(lockfile_name):
    """``lockfiles/smoke-cpu.txt`` -> ``smoke-cpu`` (safe for a directory name)."""
    base = os.path.basename(lockfile_name or "lock")
    for suffix in (".txt", ".toml", ".lock", ".in"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "lock"
    return base[:48]


def compute_key(lockfile_sha256, python_path, python_version, mpi4py_mode="binary", build_variables=None,
                no_binary=None, env=None, venv_path=None):
    """The identity of a venv: everything that changes what is in it or how it must run, and
    the ``venv_path`` it is built for: two paths synced from one lock in one store get two
    directories, so neither flips, prunes nor repairs the other's venv.

    The Python patch level is left out on purpose: a distro point release updates the
    interpreter under the venv in place and must not force a rebuild.
    """
    recipe = {
        "format": FORMAT,
        "lock": lockfile_sha256,
        "python": [python_path, ".".join(str(python_version).split(".")[:2])],
        "mpi4py": mpi4py_mode,
        "build_variables": build_variables or {},
        "no_binary": sorted(no_binary or []),
        "env": env or {},
        "venv_path": venv_path,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def _toml_string(value):
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


def render_uv_config(build_variables):
    """uv.toml with ``extra-build-variables``: uv keys its build cache on them, so an sdist
    built against one MPI is never reused for another (plain env vars are not keyed)."""
    if not build_variables:
        return None
    parts = []
    for package in sorted(build_variables):
        inner = ", ".join("%s = %s" % (var, _toml_string(val)) for var, val in sorted(build_variables[package].items()))
        parts.append("%s = { %s }" % (_toml_string(package), inner))
    return "[pip]\nextra-build-variables = { %s }\n" % ", ".join(parts)
