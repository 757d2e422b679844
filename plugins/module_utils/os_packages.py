# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: which OS packages are missing, asked read-only from dpkg or rpm (stdlib only).

Modules report what is missing inside their one idempotent check; the action plugin installs
it with Ansible's own package modules (plugin_utils.packages), so a converged host costs no
extra round trip and nothing here reimplements apt or dnf.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.lockstep.cluster.plugins.module_utils import proc

_DPKG_FORMAT = "${Package} ${db:Status-Abbrev}\\n"


def manager():
    """``apt``, ``dnf``, ``yum`` or None (what plugin_utils.packages installs with)."""
    for name, path in (("apt", "/usr/bin/dpkg-query"), ("dnf", "/usr/bin/dnf"), ("yum", "/usr/bin/yum")):
        if os.path.exists(path):
            return name
    return None


def missing(names, timeout=60):
    """``(manager, [names not installed])``; every name is missing when no manager answers."""
    names = [n for n in names if n]
    kind = manager()
    if not names:
        return kind, []
    if kind == "apt":
        # Unknown names make dpkg-query exit 1 and print nothing for them: missing.
        result = proc.run(["dpkg-query", "--show", "--showformat", _DPKG_FORMAT] + names,
                          dict(os.environ, LC_ALL="C"), timeout)
        installed = set(line.split()[0] for line in result.out.splitlines()
                        if len(line.split()) > 1 and line.split()[1].startswith("ii"))
        return kind, [n for n in names if n not in installed]
    if kind in ("dnf", "yum"):
        installed = set()
        for name in names:
            if proc.run(["rpm", "-q", "--whatprovides", name], dict(os.environ, LC_ALL="C"), timeout).rc == 0:
                installed.add(name)
        return kind, [n for n in names if n not in installed]
    return kind, list(names)
