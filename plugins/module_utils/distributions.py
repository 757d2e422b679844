# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is installed on a host: the Python distributions of a venv, read from their dist-info
(no pip, no packaging), the OS packages, asked read-only from dpkg or rpm, and the few OS facts
the roles need, from Ansible's own fact collectors (stdlib plus ansible.module_utils).

Runs under the host's system Python against the venv's site-packages, so it imports only the
standard library: the venv is exactly the lock and the host may lack ``packaging``. Modules
report missing OS packages inside their one idempotent check; the action plugin installs them
with Ansible's own package modules (plugin_utils.remote), so nothing here reimplements apt or dnf.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import csv
import errno
import glob
import hashlib
import multiprocessing
import os
import re

from ansible_collections.lockstep.cluster.plugins.module_utils import proc


try:
    from importlib import metadata as importlib_metadata
except ImportError:  # Python < 3.8 on the host: reported by the module, not a crash on import.
    importlib_metadata = None

# Below this many files a fork costs more than it saves.
PARALLEL_MIN_FILES = 2000
_HASH_WORKERS = min(8, os.cpu_count() or 1)
_CHUNK = 1 << 20


def read_pyvenv_cfg(venv):
    """``pyvenv.cfg`` as a dict (uv writes ``uv = X.Y.Z``, venv writes ``version = …``)."""
    cfg = {}
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as handle:
            for line in handle:
                key, sep, value = line.partition("=")
                if sep:
                    cfg[key.strip()] = value.strip()
    except (IOError, OSError):
        pass
    return cfg


def guess_site_packages(venv):
    """site-packages dirs of a venv when its own Python cannot tell us (broken interpreter)."""
    found = []
    for pattern in ("lib/python*/site-packages", "lib64/python*/site-packages"):
        for path in sorted(glob.glob(os.path.join(venv, pattern))):
            real = os.path.realpath(path)
            if real not in [os.path.realpath(p) for p in found]:
                found.append(path)
    return found


def canonical_name(name):
    """PEP 503 normalized name (the host-side twin of packaging's canonicalize_name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_digest(value):
    """RECORD hash field ``sha256=<urlsafe b64, no padding>`` -> (algorithm, raw digest)."""
    algo, sep, b64 = value.partition("=")
    if not sep or algo not in hashlib.algorithms_guaranteed:
        return None, None
    try:
        return algo, base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (ValueError, TypeError):
        return None, None


def _check_file(job):
    """One RECORD row against the disk: None when it matches, else a finding dict.

    Every file is read: nothing in a venv tells when RECORD was written that its writer
    cannot set (a venv with a manifest is checked against that instead, module_utils.manifest).
    """
    path, rel, algo, expected, size = job
    digest = hashlib.new(algo)
    actual_size = 0
    # os.read on a raw fd: the cheapest loop per file, and most files are small.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                actual_size += len(chunk)
                digest.update(chunk)
        finally:
            os.close(fd)
    except (IOError, OSError) as exc:
        missing = getattr(exc, "errno", None) == errno.ENOENT
        return {"path": rel, "reason": "missing" if missing else "unreadable: %s" % exc}
    if digest.digest() == expected:
        return None
    finding = {
        "path": rel,
        "reason": "modified",
        "expected": "%s=%s" % (algo, base64.urlsafe_b64encode(expected).decode("ascii").rstrip("=")),
        "actual": "%s=%s" % (algo, base64.urlsafe_b64encode(digest.digest()).decode("ascii").rstrip("=")),
    }
    if size is not None and size != actual_size:
        finding["size"] = {"expected": size, "actual": actual_size}
    return finding


def _record_jobs(dist):
    """Hashed RECORD rows of a distribution as hashing jobs (rows without a hash, e.g.
    RECORD itself or bytecode written after install, cannot be verified and are skipped).

    RECORD is parsed here rather than through ``dist.files``: PackagePath objects cost
    several microseconds each and a ~100-package venv has tens of thousands of rows.
    """
    text = dist.read_text("RECORD")
    if not text:
        return []
    base = str(dist.locate_file(""))
    jobs = []
    for row in csv.reader(text.splitlines()):
        if len(row) < 2 or not row[1]:
            continue
        algo, expected = _record_digest(row[1])
        if algo is None:
            continue
        size = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
        jobs.append((os.path.normpath(os.path.join(base, row[0])), row[0], algo, expected, size))
    return jobs


def _check_batch(pairs):
    """``(index, job)`` pairs -> ``(index, finding)`` for the files that do not match."""
    out = []
    for index, job in pairs:
        finding = _check_file(job)
        if finding is not None:
            out.append((index, finding))
    return out


def hash_files(pairs, workers):
    """Hash every job; forked workers share the load (threads would serialize on the GIL
    for the many small files of a venv). Falls back to one process when forking is not
    possible or not worth it."""
    if workers <= 1 or len(pairs) < PARALLEL_MIN_FILES:
        return _check_batch(pairs)
    size = -(-len(pairs) // (workers * 4))  # a few batches per worker evens out big files
    batches = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    try:
        pool = multiprocessing.get_context("fork").Pool(workers)
    except (OSError, ValueError):
        return _check_batch(pairs)
    try:
        return [found for batch in pool.map(_check_batch, batches) for found in batch]
    finally:
        pool.close()
        pool.join()


def record_findings(site_packages, name):
    """``(dist, findings)`` for the distribution ``name`` alone (dist None when absent):
    RECORD rows whose file is missing or differs (every file is read); a RECORD without hashes
    is one finding."""
    if importlib_metadata is None:
        raise RuntimeError("importlib.metadata needs Python >= 3.8 on the host")
    for dist in importlib_metadata.distributions(path=list(site_packages)):
        if canonical_name(dist.metadata["Name"] or "") == canonical_name(name):
            jobs = _record_jobs(dist)
            if not jobs:
                return dist, [{"path": "%s/RECORD" % _dist_info_dir(dist), "reason": "no hashes to verify"}]
            return dist, sorted((f for _i, f in _check_batch(list(enumerate(jobs)))), key=lambda f: f["path"])
    return None, []


def _dist_info_dir(dist):
    # Distribution._path is private but the only stdlib way to name the metadata dir.
    path = getattr(dist, "_path", None)
    return os.path.basename(str(path)) if path is not None else None


def installed_distributions(site_packages, verify_files=True, workers=_HASH_WORKERS):
    """Distributions found in ``site_packages`` (list of dirs), sorted by name.

    Each item: name (as in METADATA), version, installer, metadata dir and, when
    ``verify_files``, ``record`` (whether a RECORD with hashes exists), ``files`` (hashed rows)
    and ``tampered``: RECORD rows whose file is missing or whose digest differs, or the
    RECORD itself when it has no hashes (``record`` and ``files`` are None otherwise).
    """
    if importlib_metadata is None:
        raise RuntimeError("importlib.metadata needs Python >= 3.8 on the host")
    dists = []
    for dist in importlib_metadata.distributions(path=list(site_packages)):
        name = dist.metadata["Name"]
        if not name:
            continue
        installer = dist.read_text("INSTALLER")
        # Parsing RECORD costs as much as the rest of the listing: only when hashing.
        jobs = _record_jobs(dist) if verify_files else []
        dists.append(
            {
                "name": name,
                "version": dist.version,
                "installer": installer.strip() if installer else None,
                "metadata_dir": _dist_info_dir(dist),
                "record": bool(jobs) if verify_files else None,
                "files": len(jobs) if verify_files else None,
                "_jobs": jobs,
            }
        )
    if verify_files:
        pairs = [(index, job) for index, item in enumerate(dists) for job in item["_jobs"]]
        per_dist = {}
        for index, finding in hash_files(pairs, max(1, workers)):
            per_dist.setdefault(index, []).append(finding)
        for index, item in enumerate(dists):
            item["tampered"] = sorted(per_dist.get(index, []), key=lambda f: f["path"])
            if not item["record"]:
                # Installers always write RECORD; without it nothing can be verified (and
                # deleting it must not hide an edit).
                item["tampered"].append({"path": "%s/RECORD" % item["metadata_dir"], "reason": "no hashes to verify"})
    for item in dists:
        del item["_jobs"]
    dists.sort(key=lambda d: (d["name"].lower(), d["version"]))
    return dists


_DPKG_FORMAT = "${Package} ${db:Status-Abbrev}\\n"


def package_manager():
    """``apt``, ``dnf``, ``yum`` or None (what plugin_utils.remote installs with)."""
    for name, path in (("apt", "/usr/bin/dpkg-query"), ("dnf", "/usr/bin/dnf"), ("yum", "/usr/bin/yum")):
        if os.path.exists(path):
            return name
    return None


def missing_packages(names, timeout=60):
    """``(manager, [names not installed])``; every name is missing when no manager answers."""
    names = [n for n in names if n]
    kind = package_manager()
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


# The facts the roles use, by the names `setup` gives them (distribution, os_family,
# architecture, machine_id, ssh_host_key_*), so hostvars read the same either way.
FACT_KEYS = ("distribution", "distribution_release", "distribution_version", "distribution_major_version",
             "os_family", "system", "architecture", "machine", "machine_id", "hostname", "fqdn", "python_version")


def os_facts(module):
    """The OS facts of this host, collected by Ansible's own collectors (the ``min`` subset's
    distribution, platform and SSH host key facts) in this module run."""
    # Imported here: the rest of this file also runs as plain stdlib code (manifest checks).
    from ansible.module_utils.facts.system.distribution import DistributionFactCollector
    from ansible.module_utils.facts.system.platform import PlatformFactCollector
    from ansible.module_utils.facts.system.ssh_pub_keys import SshPubKeyFactCollector

    found = {}
    for collector in (DistributionFactCollector(), PlatformFactCollector(), SshPubKeyFactCollector()):
        found.update(collector.collect(module=module, collected_facts=found) or {})
    return dict((k, v) for k, v in found.items() if k in FACT_KEYS or k.startswith("ssh_host_key_"))
