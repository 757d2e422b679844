# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one import of ``packaging`` (PEP 440/503/508/751) for every plugin_utils file.

ansible-core depends on packaging, so every controller has it. The one place it is missing is
ansible-test's plugin import check (a venv with only Jinja2 and PyYAML), and ansible-lint's
production profile refuses sanity ignores for it: so the import is guarded here, once, like
ansible-core guards it in its own plugin loader, and ``require()`` turns the absence into a
clear error at the start of every action plugin.
"""

from __future__ import annotations

try:
    from packaging.markers import Marker
    from packaging.pylock import (
        Pylock,
        PylockSelectError,
        PylockUnsupportedVersionError,
        PylockValidationError,
        is_valid_pylock_path,
    )
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.tags import compatible_tags, cpython_tags, generic_tags
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError as exc:
    IMPORT_ERROR = exc

    class _Unavailable(Exception):
        """Stands for every packaging name: ``except`` clauses still work, any use raises."""

        def __init__(self, *args, **kwargs):
            super().__init__()
            require()

    Marker = Pylock = Requirement = SpecifierSet = Version = _Unavailable
    InvalidRequirement = InvalidVersion = PylockSelectError = _Unavailable
    PylockUnsupportedVersionError = PylockValidationError = _Unavailable

    def _unavailable(*args, **kwargs):
        require()

    canonicalize_name = compatible_tags = cpython_tags = generic_tags = is_valid_pylock_path = _unavailable
else:
    IMPORT_ERROR = None

__all__ = [
    "InvalidRequirement", "InvalidVersion", "Marker", "Pylock", "PylockSelectError", "PylockUnsupportedVersionError",
    "PylockValidationError", "Requirement", "SpecifierSet", "Version", "canonicalize_name", "compatible_tags",
    "cpython_tags", "generic_tags", "is_valid_pylock_path", "require",
]


def require():
    """Raise a clear error when packaging (a dependency of ansible-core) is not importable."""
    if IMPORT_ERROR is not None:
        raise RuntimeError("the Python library 'packaging' (>= 26, with packaging.pylock) is required on the "
                           "controller: %s" % IMPORT_ERROR)
