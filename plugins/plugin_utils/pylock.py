# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: PEP 751 ``pylock.toml`` locks, read with ``packaging.pylock`` into the same
``Lock``/``LockEntry`` model as a requirements lock, so policy, drift and sync need no format
branches; and the requirements text a host syncs from in a wheelhouse (no index, no URLs).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

from ansible_collections.lockstep.cluster.plugins.plugin_utils.deps import (
    Pylock,
    PylockUnsupportedVersionError,
    PylockValidationError,
    canonicalize_name,
    is_valid_pylock_path,
)

__all__ = ["is_pylock_name", "parse_pylock", "render_requirements"]

_PACKAGES_RE = re.compile(r"^\s*\[\[\s*packages\s*\]\]\s*(#.*)?$")
_REQUIRES_PYTHON_RE = re.compile(r"^\s*requires-python\s*=")


def is_pylock_name(path):
    """PEP 751 file names: ``pylock.toml`` or ``pylock.<name>.toml``."""
    return is_valid_pylock_path(Path(path))


def _package_lines(text):
    """Line number of each ``[[packages]]`` table, in file order (tomllib keeps no lines)."""
    return [number for number, line in enumerate(text.splitlines(), start=1) if _PACKAGES_RE.match(line)]


def _hashes(dist):
    return tuple("%s:%s" % (algorithm, digest) for algorithm, digest in sorted((dist.hashes or {}).items())
                 if algorithm in ("sha256", "sha384", "sha512"))


def parse_pylock(text, path="<pylock>"):
    """Parse pylock ``text``; raises LockError naming ``path`` and the package's line."""
    # Imported here: lockfile imports this module for its load_lock dispatch.
    from ansible_collections.lockstep.cluster.plugins.plugin_utils.lock import Lock, LockEntry, LockError

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(path, getattr(exc, "lineno", 0) or 0, "not valid TOML: %s" % exc)
    try:
        pylock = Pylock.from_dict(data)
    except (PylockValidationError, PylockUnsupportedVersionError) as exc:
        raise LockError(path, 0, "not a valid PEP 751 lock: %s" % exc)
    lines = _package_lines(text)
    entries = []
    seen = {}
    for index, package in enumerate(pylock.packages):
        line = lines[index] if index < len(lines) else 0
        if package.vcs or package.directory or package.archive:
            raise LockError(path, line, "%s: VCS, directory and archive URL packages are not supported in a "
                            "lock; pin name and version from an index" % package.name)
        hashes = tuple(sorted(set(h for dist in ([package.sdist] if package.sdist else []) + list(package.wheels or ())
                                  for h in _hashes(dist))))
        entry = LockEntry(
            name=canonicalize_name(package.name), raw_name=str(package.name),
            version=str(package.version) if package.version is not None else None,
            marker=str(package.marker) if package.marker is not None else None,
            hashes=hashes, line=line, specifier="==%s" % package.version if package.version is not None else "")
        key = (entry.name, entry.marker)
        if key in seen:
            raise LockError(path, line, "duplicate package %s (first at line %d)" % (entry.name, seen[key]))
        seen[key] = line
        entries.append(entry)
    requires_python_line = next((n for n, raw in enumerate(text.splitlines(), start=1)
                                 if _REQUIRES_PYTHON_RE.match(raw)), 0)
    return Lock(path=path, entries=entries, options={}, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                header_command=None, header_line=requires_python_line, format="pylock",
                requires_python=str(pylock.requires_python) if pylock.requires_python else None, pylock=pylock,
                environments=tuple(str(m) for m in pylock.environments or ()))


def render_requirements(lock, hashes=None, title=None):
    """The requirements text (``name==version ; marker`` + ``--hash``) for ``lock``'s entries.

    ``hashes`` maps a canonical name to the hashes to use instead of the lock's (a wheel built
    from the lock's sdist). A host syncs from this in a wheelhouse: uv installs a pylock from
    its recorded URLs and ignores ``--find-links``, a requirements file takes them from there.
    """
    hashes = hashes or {}
    out = ["# lockstep.cluster: rendered from %s (sha256 %s) for a wheelhouse sync" % (title or lock.path, lock.sha256)]
    for entry in sorted(lock.entries, key=lambda e: (e.name, e.marker or "")):
        line = "%s==%s" % (entry.name, entry.version)
        if entry.marker:
            line += " ; %s" % entry.marker
        for digest in hashes.get(entry.name) or entry.hashes:
            line += " \\\n    --hash=%s" % digest
        out.append(line)
    return "\n".join(out) + "\n"
