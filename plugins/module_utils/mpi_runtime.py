# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: select one system MPI consistently and describe it (stdlib only).

Debian registers both MPI flavors under three alternatives: ``mpi`` (mpicc & co),
``mpirun`` (mpirun/mpiexec) and ``mpi-<multiarch>`` (headers, ``libmpi.so``, pkg-config).
Auto mode picks the highest priority per name (Open MPI 50, MPICH 40), so a host with
both installed may end up half one flavor and half the other; selecting means setting
all three, in manual mode, to the same flavor.

Debian 12's MPICH has ``libmpich.so.12`` but no ``libmpi.so.12`` (the MPICH ABI name the
mpi4py binary wheel needs). A ``libmpi.so.12`` symlink in the multiarch directory is what
works (the dynamic linker searches trusted directories by file name; an ldconfig'd link
elsewhere does not, the cache goes by SONAME). Debian 13 ships that link itself.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_ident import OMPI_ROOT_ENV, SONAMES, flavor_of_path

ABI_LINK_TARGET = "libmpich.so.12"


def parse_query(text):
    """``update-alternatives --query NAME`` -> {name, link, status, value, alternatives}."""
    info = {"name": None, "link": None, "status": None, "value": None, "alternatives": []}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep or line.startswith(" "):
            continue
        key, value = key.strip(), value.strip()
        if key == "Name":
            info["name"] = value
        elif key == "Link":
            info["link"] = value
        elif key == "Status":
            info["status"] = value
        elif key == "Value":
            info["value"] = value if value != "none" else None
        elif key == "Alternative":
            info["alternatives"].append(value)
    return info


def choose_alternative(info, flavor):
    """The registered alternative of ``flavor`` (None if that flavor is not installed)."""
    matches = [path for path in info["alternatives"] if flavor_of_path(path) == flavor]
    return sorted(matches)[0] if matches else None


def plan_alternatives(queries, flavor):
    """``queries``: {name: parsed query or None}. Returns (changes, errors).

    ``changes``: [{name, before, after, status}] for each alternative not already pinned
    (manual mode) to ``flavor``.
    """
    changes, errors = [], []
    for name in sorted(queries):
        info = queries[name]
        if info is None or not info["alternatives"]:
            errors.append("alternative '%s' is not registered (is the %s development package installed?)"
                          % (name, flavor))
            continue
        wanted = choose_alternative(info, flavor)
        if wanted is None:
            errors.append("alternative '%s' has no %s choice (registered: %s)"
                          % (name, flavor, ", ".join(info["alternatives"])))
            continue
        if info["value"] != wanted or info["status"] != "manual":
            changes.append({"name": name, "before": info["value"], "status": info["status"], "after": wanted})
    return changes, errors


def plan_abi_link(libdir, flavor, exists, islink, readlink, owned_by_package):
    """What to do with ``<libdir>/libmpi.so.12``: (action, path) with action None|create|remove.

    The link is created for MPICH when the name is missing, and removed again when the
    flavor moves away from MPICH, but only if it is ours (our exact target, no package).
    """
    path = os.path.join(libdir, SONAMES["mpich"])
    if flavor == "mpich":
        if exists(path):
            return None, path
        if not exists(os.path.join(libdir, ABI_LINK_TARGET)):
            return "missing-mpich", path
        return "create", path
    if islink(path) and readlink(path) == ABI_LINK_TARGET and not owned_by_package(path):
        return "remove", path
    return None, path


def runtime_env(flavor, version, libmpi, os_env=None, allow_run_as_root=False, extra=None):
    """Variables a venv using this MPI needs (written to ``<venv>/lockstep.env``).

    ``MPI4PY_MPIABI`` + ``MPI4PY_LIBMPI`` pin which libmpi the mpi4py wheel loads, so a
    second flavor on the host (or a libmpi wheel) cannot be picked instead.
    """
    env = {
        "LOCKSTEP_MPI_FLAVOR": flavor,
        "LOCKSTEP_MPI_VERSION": version or "unknown",
        "MPI4PY_MPIABI": flavor,
    }
    if libmpi:
        env["MPI4PY_LIBMPI"] = libmpi
    env.update(os_env or {})
    if allow_run_as_root and flavor == "openmpi":
        env.update(OMPI_ROOT_ENV)
    for key, value in (extra or {}).items():
        env[str(key)] = "" if value is None else str(value)
    return env


def consistency_problems(flavor, launcher_flavor, mpicc, libmpi_dev):
    """Why mpiexec, mpicc and libmpi.so do not all belong to ``flavor`` (list of strings)."""
    problems = []
    if launcher_flavor != flavor:
        problems.append("mpiexec is %s, not %s" % (launcher_flavor or "unknown", flavor))
    if mpicc is not None and flavor_of_path(mpicc) not in (flavor, None):
        problems.append("mpicc is %s (%s)" % (flavor_of_path(mpicc), mpicc))
    if libmpi_dev is not None and flavor_of_path(libmpi_dev) not in (flavor, None):
        problems.append("libmpi.so is %s (%s)" % (flavor_of_path(libmpi_dev), libmpi_dev))
    return problems
