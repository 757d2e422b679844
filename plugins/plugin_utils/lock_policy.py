# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lock policy (pinned, hashed, CPU-only, the host's Python) and the
GPU rule the drift validator shares."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.lockstep.cluster.plugins.plugin_utils.deps import (
    canonicalize_name,
    InvalidVersion,
    SpecifierSet,
    Version,
)


__all__ = ["Violation", "check_policy", "format_violations", "gpu_reason", "python_version_reason"]


@dataclass(frozen=True)
class Violation:
    """One lock policy failure; ``code`` is one of not-pinned, no-hash, gpu, python, empty, source."""

    path: str
    line: int
    name: str
    code: str
    message: str

    def __str__(self):
        return "%s:%d: %s: %s" % (self.path, self.line, self.name, self.message)


# PyPI's torch family for Linux x86_64 is the CUDA build (it pulls nvidia-* wheels); the
# CPU build carries the +cpu local version (PyTorch's CPU index or a wheelhouse). PyPI's
# macOS/aarch64 wheels are CPU-only, but a lock does not say which platform it serves, so
# +cpu is required everywhere.
_TORCH_FAMILY = frozenset(("torch", "torchvision", "torchaudio"))
_GPU_NAMES = {
    "tensorflow": "tensorflow on Linux ships CUDA support (and tensorflow[and-cuda] pulls nvidia-*); "
                  "use tensorflow-cpu",
    "tf-nightly": "tf-nightly on Linux ships CUDA support; use tf-nightly-cpu",
    "triton": "Triton is the CUDA/ROCm kernel compiler of GPU torch builds",
    "cuda-python": "CUDA Python bindings",
    "cuda-bindings": "CUDA Python bindings",
    "cuda-toolkit": "meta-package of the NVIDIA CUDA wheels",
}
# Name segments of GPU builds: tensorflow-gpu, onnxruntime-gpu, paddlepaddle-gpu,
# cupy-cuda12x, mxnet-cu112, jax-cuda12-plugin, cudf-cu12, pytorch-triton-rocm, ...
_GPU_SEGMENT_RE = re.compile(r"(?:^|-)(gpu|cu\d+[a-z0-9]*|cuda\d+[a-z0-9]*|rocm\d*)(?:-|$)")
# Local versions of GPU builds: torch 2.5.1+cu121, +rocm6.2, +xpu, jaxlib 0.4.1+cuda11.cudnn86.
_GPU_LOCAL_RE = re.compile(r"^(cu\d|cuda|rocm|xpu)")
# Extras that select GPU builds: jax[cuda12], tensorflow[and-cuda], faiss[gpu], ...
_GPU_EXTRA_RE = re.compile(r"(?:^|-)(gpu|cuda\d*[a-z0-9]*|cu\d+|rocm\d*)(?:-|$)")


def gpu_reason(name, version, extras=()):
    """Why ``name==version`` (with ``extras``) is a GPU package, or None if it is not.

    Shared by the lock policy and the drift validator (installed distributions), so it
    only needs a name and a version string (``version`` may be None).
    """
    canonical = canonicalize_name(name)
    local = None
    if version:
        try:
            local = Version(version).local
        except InvalidVersion:
            local = None
    if local and _GPU_LOCAL_RE.match(local):
        return "%s==%s is a GPU build (local version +%s)" % (canonical, version, local)
    if canonical.startswith("nvidia-"):
        return "%s is an NVIDIA CUDA/DALI package" % canonical
    if canonical in _TORCH_FAMILY and not (local and local.startswith("cpu")):
        return ("%s%s is not the +cpu build: %s from PyPI on Linux x86_64 is the CUDA build "
                "(pulls nvidia-*); pin the +cpu build (PyTorch CPU index or a wheelhouse)"
                % (canonical, "==" + version if version else "", canonical))
    if canonical in _GPU_NAMES:
        return "%s: %s" % (canonical, _GPU_NAMES[canonical])
    if canonical.startswith("pytorch-triton"):
        return "%s: %s" % (canonical, _GPU_NAMES["triton"])
    segment = _GPU_SEGMENT_RE.search(canonical)
    if segment:
        return "%s is a GPU build (name contains %r)" % (canonical, segment.group(1))
    for extra in extras:
        if _GPU_EXTRA_RE.search(canonicalize_name(extra)):
            return "%s[%s] selects a GPU build" % (canonical, extra)
    return None


def python_version_reason(lock, python_version):
    """Why ``lock`` cannot serve ``python_version`` (e.g. "3.13"), or None (or unknown).

    Best effort: uses the Python range the header command resolved for (see
    ``Lock.python_specifier``). Raises ValueError for an invalid version string.
    """
    specifier = lock.python_specifier
    if specifier is None:
        return None
    try:
        version = Version(python_version)
    except InvalidVersion:
        raise ValueError("invalid python_version %r" % python_version)
    if SpecifierSet(specifier).contains(version, prereleases=True):
        return None
    if lock.requires_python:
        return "the lock serves Python %s (its requires-python), not %s" % (specifier, python_version)
    how = "--universal --python-version" if "--universal" in lock.header_command else "--python-version"
    return "the lock serves Python %s (resolved with %s %s), not %s" % (
        specifier, how, lock.header_option("--python-version"), python_version)


# Options by which a lock would pick its own package source; where packages come from is the
# role's (venv_index_url, venv_find_links, the wheelhouse), and uv would otherwise fail on such
# a line with an error that looks like a network problem.
_SOURCE_OPTIONS = ("index-url", "extra-index-url", "find-links", "no-index", "trusted-host")


def check_policy(lock, cpu_only=True, python_version=None):
    """Return the policy violations of ``lock`` (empty list = the lock is acceptable).

    Every entry must be pinned with ``==`` and carry at least one hash; with ``cpu_only`` no
    entry may be a GPU package (``gpu_reason``); with ``python_version`` the lock must have
    been resolved for that Python.
    """
    violations = []
    if not lock.entries:
        violations.append(Violation(lock.path, 0, "-", "empty", "the lock has no requirements"))
    for entry in lock.entries:
        if entry.version is None:
            violations.append(Violation(
                lock.path, entry.line, entry.name, "not-pinned",
                "not pinned with == (found %r); a lock pins exact versions" % (entry.specifier or "no version")))
        if not entry.hashes:
            violations.append(Violation(
                lock.path, entry.line, entry.name, "no-hash",
                "no --hash; regenerate with --generate-hashes"))
        if cpu_only:
            reason = gpu_reason(entry.name, entry.version, entry.extras)
            if reason:
                violations.append(Violation(lock.path, entry.line, entry.name, "gpu", reason))
    for name in sorted((getattr(lock, "option_lines", None) or {}), key=lambda n: lock.option_lines[n]):
        if name in _SOURCE_OPTIONS:
            violations.append(Violation(
                lock.path, lock.option_lines[name], "--" + name, "source",
                "a lock must not choose where packages come from (venv_index_url, venv_find_links or the "
                "wheelhouse do); remove the line (uv pip compile without --emit-index-url/--emit-find-links, "
                "pip-compile --no-emit-index-url --no-emit-find-links --no-emit-trusted-host)"))
    if python_version:
        reason = python_version_reason(lock, python_version)
        if reason:
            violations.append(Violation(lock.path, lock.header_line, "python", "python", reason))
    return violations


def format_violations(violations):
    """One message listing every violation as ``path:line: name: reason``."""
    if not violations:
        return "lock policy: no violations"
    lines = ["lock policy: %d violation(s):" % len(violations)]
    lines.extend("  %s" % violation for violation in violations)
    return "\n".join(lines)
