# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build and run uv commands, read uv's JSON, explain uv's failures (stdlib only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
from urllib.parse import unquote, urlsplit

from ansible_collections.lockstep.cluster.plugins.module_utils import proc
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import canonical_name

_PYVER_RE = re.compile(r"[Pp]ython[ _]?(?:version )?\(?([0-9]+\.[0-9]+(?:\.[0-9]+)?)\)? does not satisfy "
                       r"Python\s*([<>=!~][^\s,]+)")
_NETWORK_MARKERS = (
    "error sending request", "failed to fetch", "dns error", "connection refused", "tcp connect error",
    "network is unreachable", "timed out", "could not connect", "connect error", "name or service not known",
    "temporary failure in name resolution", "certificate", "tls handshake")
_OFFLINE_MARKERS = ("network was disabled", "not found in the cache", "network connectivity is disabled")
_HASH_MARKERS = ("hash mismatch", "hashes do not match", "expected hashes", "hash-checking mode", "--require-hashes")
# uv's resolver failure for a pin it found no file for: "no version of torch==2.13.0+cpu" (an
# index), "torch was not found in the cache / provided package locations and you require
# torch==2.13.0+cpu" (offline, --no-index). Only pins with a PEP 440 local label (+cpu).
_LOCAL_PIN_RE = re.compile(r"(?:no version of|you require) ([A-Za-z0-9][A-Za-z0-9._-]*==[^\s,;+]+\+[A-Za-z0-9][A-Za-z0-9.]*)")
# Where such a file comes from (role variables), named in the message.
LOCAL_VERSION_SOURCES = (
    "venv_wheelhouse_find_links (a controller directory or URL holding it; with venv_wheelhouse_dir the "
    "controller pushes it to the hosts)",
    "venv_find_links (a directory or URL the host reads)",
    "venv_extra_index_urls (an index that serves it, such as PyTorch's CPU wheel index)")


MASK = "********"


def secrets_of(urls):
    """What no output may show: each credentialed index URL and its password (or a token
    given as the user name)."""
    found = []
    for url in urls or ():
        parts = urlsplit(url or "")
        secret = parts.password or parts.username
        if secret:
            found += [url, secret, unquote(secret)]
    return sorted(set(s for s in found if len(s) >= 4), key=len, reverse=True)


def redact(text, secrets):
    for secret in secrets or ():
        text = text.replace(secret, MASK)
    return text


class SyncError(Exception):
    """A failure with one user-facing message; the live venv is untouched when it is raised."""

    def __init__(self, message, kind="error", detail=None):
        super(SyncError, self).__init__(message)
        self.message = message
        self.kind = kind
        self.detail = detail


def parse_uv_json(stdout):
    """The JSON report of ``uv pip sync --output-format json`` (dict), or None."""
    text = (stdout or "").strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        data = json.loads(text[start:])
    except ValueError:
        return None
    return data if isinstance(data, dict) and "changes" in data else None


def local_version_pins(text):
    """The pins with a local version label (``torch==2.13.0+cpu``) that uv found no file for,
    in order: builds a public index does not serve, so the hosts need another source."""
    found = []
    for pin in _LOCAL_PIN_RE.findall(text or ""):
        if pin not in found:
            found.append(pin)
    return found


def local_version_message(pins, lock_name, tail):
    return ("%s pins %s, a local-version build (the '+' label) that the package sources uv was given do not "
            "hold; give the hosts its file with one of: %s; nothing was changed (uv output: %s)"
            % (lock_name, ", ".join(pins), "; ".join(LOCAL_VERSION_SOURCES), tail))


def classify_failure(result, offline=False, cache_dir=None, lock_name="the lock", python_version=None, timeout=None):
    """One clear message for a failed ``uv pip sync`` result: ``(kind, message)``."""
    text = result.err or ""
    low = text.lower()
    tail = proc.tail(text)
    if result.timed_out or (result.rc is not None and result.rc < 0):
        return ("killed", "%s while syncing %s; nothing was changed (uv output: %s)"
                % (proc.describe(result, "uv", timeout), lock_name, tail or "none"))
    match = _PYVER_RE.search(text)
    if match or "requires-python" in low or "requires python" in low:
        found = match.group(1) if match else (python_version or "?")
        need = match.group(2) if match else "a newer version"
        return ("python", "%s needs Python %s but the venv Python is %s; install a newer Python on "
                "the host and point venv_python at it (uv output: %s)" % (lock_name, need, found, tail))
    pins = local_version_pins(text)
    if pins:
        return ("local-version", local_version_message(pins, lock_name, tail))
    if any(marker in low for marker in _OFFLINE_MARKERS):
        return ("offline", "offline and the uv cache (%s) does not hold every package of %s: run once with "
                "network access, or provide a wheelhouse with venv_find_links (uv output: %s)"
                % (cache_dir or "default cache", lock_name, tail))
    if any(marker in low for marker in _HASH_MARKERS):
        return ("hash", "a downloaded file does not match the hashes in %s (corrupt mirror, tampered "
                "wheel or wrong index): nothing was changed (uv output: %s)" % (lock_name, tail))
    if any(marker in low for marker in _NETWORK_MARKERS):
        return ("network", "cannot download packages for %s and the uv cache (%s) does not have them: no "
                "network, proxy or CA bundle problem (venv_ca_bundle)? (uv output: %s)"
                % (lock_name, cache_dir or "default cache", tail))
    if "not found in the provided package locations" in low or ("no solution found" in low and offline):
        return ("wheelhouse", "the wheelhouse does not hold every file of %s and the host has no index to "
                "fall back on; nothing was changed (uv output: %s)" % (lock_name, tail))
    return ("uv", "uv pip sync of %s failed (%s): %s" % (lock_name, proc.describe(result, "uv", timeout), tail))


class UvRunner(object):
    """Builds and runs uv commands with the role's options; records what ran and how long."""

    def __init__(self, uv, index_url=None, extra_index_urls=None, find_links=None, offline=False,
                 ca_bundle=None, cache_dir=None, no_binary=None, timeout=None, base_env=None, run=None,
                 link_mode=None, wheelhouse=None):
        self.uv = uv
        self.index_url = index_url or None
        self.extra_index_urls = list(extra_index_urls or [])
        self.secrets = secrets_of([self.index_url] + self.extra_index_urls)
        # A wheelhouse means no index at all: uv never opens a socket and a missing file
        # fails at once instead of waiting on a network that is not there.
        self.wheelhouse = wheelhouse or None
        self.find_links = ([self.wheelhouse] if self.wheelhouse else []) + list(find_links or [])
        self.offline = bool(offline) or bool(self.wheelhouse)
        self.ca_bundle = ca_bundle or None
        self.cache_dir = cache_dir or None
        self.no_binary = list(no_binary or [])
        self.link_mode = link_mode or None
        self.timeout = timeout
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._run = run or proc.run
        self.commands = []

    def available(self):
        return bool(self.uv) and os.path.isfile(self.uv) and os.access(self.uv, os.X_OK)

    def env(self):
        env = dict(self.base_env)
        # Never let an active venv/conda env or a managed-Python download sneak in.
        for key in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "UV_PYTHON", "UV_SYSTEM_PYTHON"):
            env.pop(key, None)
        for key in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS"):
            env.pop(key, None)
        env["UV_PYTHON_DOWNLOADS"] = "never"
        env["UV_NO_PROGRESS"] = "1"
        # Index URLs may carry a password: the environment, never argv (/proc/<pid>/cmdline
        # is readable by every local user, /proc/<pid>/environ only by the owner).
        if self.index_url and not self.wheelhouse:
            env["UV_DEFAULT_INDEX"] = self.index_url
        if self.extra_index_urls and not self.wheelhouse:
            env["UV_INDEX"] = " ".join(self.extra_index_urls)
        if self.ca_bundle:
            env["SSL_CERT_FILE"] = self.ca_bundle
        return env

    def common(self):
        args = []
        if self.cache_dir:
            args += ["--cache-dir", self.cache_dir]
        if self.offline:
            args.append("--offline")
        return args

    def source_args(self):
        args = ["--no-index"] if self.wheelhouse else []
        for link in self.find_links:
            args += ["--find-links", link]
        return args

    def index_args(self):
        args = self.source_args()
        for name in self.no_binary:
            args += ["--no-binary", name]
        return args

    def run(self, argv, env=None):
        result = self._run(argv, env or self.env(), self.timeout)
        if self.secrets:  # uv may echo an index URL in an error
            result = result._replace(out=redact(result.out or "", self.secrets),
                                     err=redact(result.err or "", self.secrets))
        self.commands.append({"argv": list(argv), "rc": result.rc, "seconds": result.seconds})
        return result

    def version(self):
        line = proc.first_line(self.run([self.uv, "--version"]))
        return line.split()[1] if line and len(line.split()) > 1 else None

    def create_venv(self, venv, python):
        return self.run([self.uv, "venv", "--no-config", "--python", python, "--python-preference", "only-system",
                         "--no-python-downloads", "--quiet"] + self.common() + [venv])

    def sync(self, python, lock_path, check=False, config_file=None, refresh=None):
        """``refresh``: True re-fetches every file (hash-checked against the lock) instead of
        trusting uv's cache; a list does it for those packages only."""
        argv = [self.uv, "pip", "sync", "--require-hashes", "--python", python, "--output-format", "json"]
        if config_file:
            argv += ["--config-file", config_file]
        if check:
            argv.append("--check")
        if refresh is True:
            argv.append("--refresh")
        for name in refresh or () if refresh is not True else ():
            argv += ["--refresh-package", name]
        if self.link_mode:
            argv += ["--link-mode", self.link_mode]
        return self.run(argv + self.common() + self.index_args() + [lock_path])

    def build_wheel(self, python, sdist, out_dir, constraints=None, env=None):
        """``uv build --wheel`` of a hash-checked sdist; build requirements only from the
        wheelhouse/index, pinned and hash-checked by ``constraints``."""
        argv = [self.uv, "build", "--wheel", "--no-config", "--python", python, "--out-dir", out_dir]
        if constraints:
            argv += ["--build-constraints", constraints, "--require-hashes"]
        merged = self.env()
        merged.update(env or {})
        return self.run(argv + self.common() + self.source_args() + [sdist], merged)

    def cache_clean(self, names):
        """Drop ``names`` from uv's cache: uv never re-verifies cached files, and with
        hardlinks an edit in a venv is an edit of the cache."""
        return self.run([self.uv, "cache", "clean"] + list(names) + self.common())

    def cache_prune(self):
        """Drop every pre-built wheel from uv's cache (``--ci``: wheels uv built here from an
        sdist stay, a rebuild costs minutes). uv waits until no other uv process reads the cache."""
        return self.run([self.uv, "cache", "prune", "--ci"] + self.common())

    def list_packages(self, python):
        argv = [self.uv, "pip", "list", "--python", python, "--format", "json", "--offline"]
        if self.cache_dir:
            argv += ["--cache-dir", self.cache_dir]
        result = self.run(argv)
        if result.rc != 0:
            return None
        try:
            rows = json.loads(result.out or "[]")
        except ValueError:
            return None
        return dict((canonical_name(row["name"]), row["version"]) for row in rows)

    def timings(self):
        """What ran and how long each took (command and first two arguments, seconds)."""
        out = []
        for command in self.commands:
            words = [os.path.basename(command["argv"][0])] + [a for a in command["argv"][1:3] if "\n" not in a]
            out.append("%s %.2fs rc=%s" % (" ".join(words), command["seconds"], command["rc"]))
        return out
