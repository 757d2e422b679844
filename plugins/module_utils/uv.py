# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""uv on a host: the one idempotent check of a pinned uv (re-hashed on every run) and its
install, from a hash-pinned tool venv or a release archive fetched with sha256 verification
and unpacked safely (stdlib, plus Ansible's own ``open_url`` for a download).

Layout::

    <install_root>/<version>/    one directory per version: a tool venv (method venv) or bin/
        bin/uv, bin/uvx
        .lockstep-complete       JSON, written last: method, source, for an archive the sha256
                                 of bin/uv and bin/uvx
    <bin_dir>/uv  -> <install_root>/<version>/bin/uv      (uvx likewise)

The marker alone proves nothing: every run re-hashes bin/uv and bin/uvx (against the uv
wheel's RECORD in a tool venv, against the marker for an archive) and runs ``uv --version``.
A broken version directory is rebuilt beside itself and renamed over the old one. Release
archives hold ``uv-<target>/uv`` and ``uv-<target>/uvx``: only those two regular files are
written; any link, device, absolute path or ``..`` in the archive refuses it whole.

UvRunner builds and runs the uv commands the venv module needs (sync, check, cache), reads
uv's JSON and explains uv's failures (SyncError with a cause an operator can act on).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import hashlib
import json
import os
import re
import ssl
import tarfile
import tempfile
from urllib.error import URLError
from urllib.parse import unquote, urlsplit

from ansible.module_utils.urls import open_url
from ansible.module_utils.urls import ConnectionError as UrlConnectionError

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, proc, store_fs
from ansible_collections.lockstep.cluster.plugins.module_utils.distributions import canonical_name


BINARIES = ("uv", "uvx")
_CHUNK = 1 << 20


class ArchiveError(Exception):
    pass


def download(url, dest, sha256, ca_bundle=None, timeout=300):
    """Stream ``url`` to ``dest``; raise ArchiveError unless its sha256 is ``sha256``.

    The URL is never repeated in a message (it may carry credentials; the option is no_log).
    """
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise ArchiveError("CA bundle %s does not exist on the host" % ca_bundle)
    digest = hashlib.sha256()
    try:
        response = open_url(url, timeout=timeout, ca_path=ca_bundle, http_agent="lockstep.cluster")
        with response, open(dest, "wb") as handle:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                handle.write(chunk)
    except (URLError, UrlConnectionError, OSError, ValueError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        # An OSError's text names the file or URL: keep only the error itself.
        text = getattr(reason, "strerror", None) or str(reason)
        raise ArchiveError("cannot download the uv archive (archive_url): %s" % text.replace(url, "<archive_url>"))
    if digest.hexdigest() != sha256:
        raise ArchiveError("the downloaded uv archive has sha256 %s, not uv_archive_sha256 %s"
                           % (digest.hexdigest(), sha256))


def verify(path, sha256):
    """The pushed copy is checked again here: it may have been truncated or swapped in between."""
    if not os.path.isfile(path):
        raise ArchiveError("the uv archive %s is not on the host" % path)
    actual = store_fs.sha256_file(path)
    if actual != sha256:
        raise ArchiveError("the uv archive on the host has sha256 %s, not uv_archive_sha256 %s" % (actual, sha256))


def _binary_name(member):
    """``uv``/``uvx`` for a release member (``uv-<target>/uv`` or a bare ``uv``), else None.

    Raises ArchiveError for anything unsafe to unpack."""
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ArchiveError("the uv archive has an unsafe member %r (absolute path or '..')" % name)
    if not (member.isfile() or member.isdir()):
        raise ArchiveError("the uv archive has an unsafe member %r (a link or device)" % name)
    if member.isfile() and 1 <= len(parts) <= 2 and parts[-1] in BINARIES:
        return parts[-1]
    return None


def extract(archive, bin_dir):
    """Write ``uv`` and ``uvx`` from ``archive`` into ``bin_dir``; returns {"bin/uv": sha256, ...}."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError("cannot read the uv archive: %s" % exc)
    found = {}
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError("cannot read the uv archive: %s" % exc)
        chosen = {}
        for member in members:
            name = _binary_name(member)
            if name is None:
                continue
            if name in chosen:
                raise ArchiveError("the uv archive holds %s twice (%s, %s)" % (name, chosen[name].name, member.name))
            chosen[name] = member
        missing = [n for n in BINARIES if n not in chosen]
        if missing:
            raise ArchiveError("the uv archive has no %s (expected uv-<target>/uv and uvx)" % " or ".join(missing))
        os.makedirs(bin_dir)
        for name, member in sorted(chosen.items()):
            target = os.path.join(bin_dir, name)
            source = tar.extractfile(member)
            digest = hashlib.sha256()
            with source, open(target, "wb") as handle:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    digest.update(chunk)
                    handle.write(chunk)
            os.chmod(target, 0o755)
            found["bin/" + name] = digest.hexdigest()
    return found


# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    version=dict(type="str", required=True),
    method=dict(type="str", choices=["venv", "archive"], default="venv"),
    install_root=dict(type="path", default="/opt/lockstep/uv"),
    bin_dir=dict(type="path", default="/usr/local/bin"),
    python=dict(type="str", default="/usr/bin/python3"),
    requirement_hashes=dict(type="list", elements="str", default=[]),
    pip_index_url=dict(type="str", no_log=True),
    archive_url=dict(type="str", no_log=True),
    archive_src=dict(type="str"),
    archive_sha256=dict(type="str"),
    ca_bundle=dict(type="path"),
    # Unset: what the method needs on the host's OS family (Debian splits ensurepip into python3-venv).
    packages=dict(type="list", elements="str"),
    timeout=dict(type="int", default=600),
    # Set by the action plugin: where it pushed archive_src.
    remote_archive=dict(type="path"),
)

MARKER = ".lockstep-complete"
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class InstallError(Exception):
    def __init__(self, message, detail=None):
        super(InstallError, self).__init__(message)
        self.message = message
        self.detail = detail


def sha256_of(value):
    """``sha256:ABC…`` or ``abc…`` -> ``abc…`` (lower case)."""
    value = (value or "").strip().lower()
    return value[len("sha256:"):] if value.startswith("sha256:") else value


def os_packages(method, family):
    """What ``python3 -m venv`` needs on this OS family for the venv method."""
    return ["python3-venv"] if method == "venv" and family == "Debian" else []


def normalize(params, facts=None):
    """Empty strings mean "not set" (role variables default to ""); unset packages are the OS
    family's (``facts``: the host's OS facts)."""
    p = dict(params)
    if p.get("packages") is None:
        p["packages"] = os_packages(p.get("method"), (facts or {}).get("os_family"))
    for name in ("pip_index_url", "archive_url", "archive_src", "archive_sha256", "ca_bundle", "remote_archive"):
        p[name] = p.get(name) or None
    p["archive_sha256"] = sha256_of(p["archive_sha256"]) or None
    p["requirement_hashes"] = [sha256_of(h) for h in p.get("requirement_hashes") or []]
    return p


def check_inputs(p):
    """What is wrong with the inputs (list of messages). The action plugin calls it before
    any host round trip, the module again."""
    problems = []
    if not _VERSION_RE.match(p["version"] or ""):
        problems.append("version %r is not a uv release number" % p["version"])
    for name in ("install_root", "bin_dir"):
        if not os.path.isabs(p[name] or ""):
            problems.append("%s must be an absolute path (got %r)" % (name, p[name]))
    if p["method"] == "venv":
        if not p["requirement_hashes"]:
            problems.append("no sha256 known for the uv %s wheels: set requirement_hashes (the uv role: "
                            "uv_requirement_hashes) from `uv pip compile --universal --generate-hashes` of uv==%s"
                            % (p["version"], p["version"]))
        bad = [h for h in p["requirement_hashes"] if not _SHA256_RE.match(h)]
        if bad:
            problems.append("requirement_hashes must be sha256 hex digests (got %s)" % ", ".join(bad))
    else:
        if not _SHA256_RE.match(p["archive_sha256"] or ""):
            problems.append("method archive needs archive_sha256 (64 hex digits) for uv %s" % p["version"])
        if not (p["archive_src"] or p["archive_url"] or p["remote_archive"]):
            problems.append("method archive needs archive_src (a file on the controller) or archive_url (a "
                            "mirror); no download location is built in")
    return problems


def version_dir(p):
    return os.path.join(p["install_root"], p["version"])


def read_marker(directory):
    """The marker as a dict ({} when it predates JSON markers), None when absent."""
    try:
        with open(os.path.join(directory, MARKER)) as handle:
            text = handle.read()
    except (IOError, OSError):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def reported_version(line):
    """``uv 0.13.9 (x86_64-unknown-linux-gnu)`` -> ``0.13.9``."""
    words = (line or "").split()
    return words[1] if len(words) > 1 and words[0] == "uv" else None


def _venv_problem(directory):
    """Tool venv: bin/uv and bin/uvx against the uv wheel's own RECORD."""
    site = distributions.guess_site_packages(directory)
    dist, findings = distributions.record_findings(site, "uv")
    if dist is None:
        return "the tool venv has no uv distribution"
    base = str(dist.locate_file(""))
    listed = set(os.path.normpath(os.path.join(base, str(f))) for f in dist.files or [])
    for name in BINARIES:
        if os.path.join(directory, "bin", name) not in listed:
            return "the uv wheel's RECORD does not list bin/%s" % name
    if findings:
        return ", ".join("%s %s" % (os.path.relpath(os.path.normpath(os.path.join(base, f["path"])), directory),
                                    f["reason"] + (" (sha256 differs from the uv wheel's RECORD)"
                                                   if f["reason"] == "modified" else ""))
                         for f in findings)
    return None


def _archive_problem(directory, files):
    """Archive install: bin/uv and bin/uvx against the sha256 recorded at install time."""
    for name in BINARIES:
        rel = "bin/" + name
        if rel not in files:
            return "the install record has no sha256 for %s" % rel
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            return "%s missing" % rel
        actual = store_fs.sha256_file(path)
        if actual != files[rel]:
            return "%s modified (sha256 %s, recorded %s)" % (rel, actual, files[rel])
    return None


def _version_problem(uv, version, timeout):
    result = proc.run([uv, "--version"], timeout=timeout)
    line = proc.first_line(result)
    if line is None:
        return "bin/uv --version failed: %s" % proc.describe(result, "it", timeout)
    if reported_version(line) != version:
        return "bin/uv --version printed %r, not uv %s" % (line, version)
    return None


def integrity_problem(directory, version, timeout=60):
    """None when ``directory`` holds an intact uv ``version``; else what is wrong (one line)."""
    if not os.path.isdir(directory):
        return "not installed"
    marker = read_marker(directory)
    if marker is None:
        return "incomplete (no %s: an interrupted install)" % MARKER
    if os.path.isfile(os.path.join(directory, "pyvenv.cfg")):
        problem = _venv_problem(directory)
    elif isinstance(marker.get("files"), dict):
        problem = _archive_problem(directory, marker["files"])
    else:
        problem = "nothing records what bin/uv must be (an install by an older role)"
    return problem or _version_problem(os.path.join(directory, "bin", "uv"), version, timeout)


def link_state(p):
    """The uv/uvx links in bin_dir: [{name, path, current, target, ok}]."""
    links = []
    for name in BINARIES:
        path = os.path.join(p["bin_dir"], name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise InstallError("%s is a directory; the uv link cannot replace it" % path)
        current = os.readlink(path) if os.path.islink(path) else ("(a file)" if os.path.lexists(path) else None)
        target = os.path.join(version_dir(p), "bin", name)
        links.append({"name": name, "path": path, "current": current, "target": target, "ok": current == target})
    return links


def pip_env(p, base=None):
    """pip's settings through its environment: an index URL never shows in a process list."""
    env = dict(os.environ if base is None else base, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if p["ca_bundle"]:
        env["PIP_CERT"] = p["ca_bundle"]
    if p["pip_index_url"]:
        env["PIP_INDEX_URL"] = p["pip_index_url"]
    return env


def requirement(p):
    return "uv==%s \\\n" % p["version"] + " \\\n".join("    --hash=sha256:%s" % h for h in p["requirement_hashes"]) + "\n"


def _install_venv(p, build):
    timeout = p["timeout"]
    result = proc.run([p["python"], "-m", "venv", build], timeout=timeout)
    if result.rc != 0:
        hint = " (Debian: the python3-venv package)" if "ensurepip" in result.out + result.err else ""
        raise InstallError("%s -m venv failed%s: %s" % (p["python"], hint, proc.describe(result, "it", timeout)),
                           proc.tail(result.out + result.err))
    requirements = os.path.join(build, "requirements.txt")
    store_fs.write_atomic(requirements, requirement(p))
    argv = [os.path.join(build, "bin", "python"), "-m", "pip", "install", "--quiet", "--require-hashes",
            "--only-binary", ":all:", "--no-deps", "-r", requirements]
    result = proc.run(argv, env=pip_env(p), timeout=timeout)
    if result.rc != 0:
        raise InstallError("pip could not install uv==%s: %s" % (p["version"], proc.describe(result, "pip", timeout)),
                           proc.tail(result.err or result.out))
    _drop_build_paths(build)
    return {"method": "venv", "requirement": "uv==%s" % p["version"], "hashes": len(p["requirement_hashes"])}


def _drop_build_paths(build):
    """pip/pip3 and activate* name the temporary build directory, which is renamed away: remove
    them (uv never needs them; ``bin/python -m pip`` keeps working)."""
    bin_dir = os.path.join(build, "bin")
    marker = build.encode()
    for name in os.listdir(bin_dir):
        path = os.path.join(bin_dir, name)
        if name in BINARIES or name.startswith("python") or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
        if marker in head:
            os.unlink(path)


def _install_archive(p, build):
    sha256 = p["archive_sha256"]
    try:
        if p["remote_archive"]:
            archive, source = p["remote_archive"], "controller"
            verify(archive, sha256)
        else:
            archive, source = os.path.join(build, "uv.tar.gz"), "url"
            download(p["archive_url"], archive, sha256, p["ca_bundle"], p["timeout"])
        files = extract(archive, os.path.join(build, "bin"))
    except ArchiveError as exc:
        raise InstallError(str(exc))
    if source == "url":
        os.unlink(archive)
    return {"method": "archive", "source": source, "archive_sha256": sha256, "files": files}


def _clear_leftovers(root, version):
    """Build and trash directories of an interrupted earlier run (same version only)."""
    for name in os.listdir(root):
        if name.startswith((".%s.build-" % version, ".%s.old-" % version)):
            store_fs.remove_tree(os.path.join(root, name))


def install(p):
    """Build uv into a temp dir beside the version dir, verify it, then rename it over."""
    root, directory = p["install_root"], version_dir(p)
    _clear_leftovers(root, p["version"])
    build = tempfile.mkdtemp(prefix=".%s.build-" % p["version"], dir=root)
    try:
        os.chmod(build, 0o755)
        record = (_install_venv if p["method"] == "venv" else _install_archive)(p, build)
        problem = (_venv_problem(build) if p["method"] == "venv" else _archive_problem(build, record["files"])) \
            or _version_problem(os.path.join(build, "bin", "uv"), p["version"], min(p["timeout"], 60))
        if problem:
            raise InstallError("the freshly installed uv %s is not usable: %s" % (p["version"], problem))
        record["version"] = p["version"]
        store_fs.write_atomic(os.path.join(build, MARKER), json.dumps(record, indent=1, sort_keys=True) + "\n")
        old = None
        if os.path.lexists(directory):
            old = os.path.join(root, ".%s.old-%d" % (p["version"], os.getpid()))
            os.rename(directory, old)
        os.rename(build, directory)
        store_fs.fsync_dir(root)
    except BaseException:
        store_fs.remove_tree(build)
        raise
    if old:
        store_fs.remove_tree(old)


def _linked_version(p, links):
    link = links[0]
    if link["current"] is None:
        return "(absent)"
    return proc.first_line(proc.run([link["path"], "--version"], timeout=30)) or "(does not run)"


def _diff(p, problem, links, missing, before_version):
    before, after = ["uv --version: %s" % before_version], ["uv --version: uv %s" % p["version"]]
    if problem:
        before.append("%s: %s" % (version_dir(p), problem))
        after.append("%s: uv %s (%s method)" % (version_dir(p), p["version"], p["method"]))
    for link in links:
        before.append("%s -> %s" % (link["path"], link["current"] or "(absent)"))
        after.append("%s -> %s" % (link["path"], link["target"]))
    if missing:
        before.append("packages missing: %s" % ", ".join(missing))
        after.append("packages installed: %s" % ", ".join(missing))
    return {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}


def _steps(p, problem, stale, missing):
    """What a run does, as (would ..., did ...) phrases; a rebuild names what was wrong."""
    steps = []
    if missing:
        steps.append(("install %s" % ", ".join(missing), "installed %s" % ", ".join(missing)))
    if problem == "not installed":
        steps.append(("install uv %s" % p["version"], "installed uv %s" % p["version"]))
    elif problem:
        steps.append(("rebuild uv %s at %s: %s" % (p["version"], version_dir(p), problem),
                      "rebuilt uv %s at %s: %s" % (p["version"], version_dir(p), problem)))
    if stale:
        names = ", ".join(link["name"] for link in stale)
        steps.append(("link %s into %s" % (names, p["bin_dir"]), "linked %s into %s" % (names, p["bin_dir"])))
    return steps


@contextlib.contextmanager
def _install_lock(p):
    """One install at a time per install root (the venv store's bounded lock)."""
    try:
        with store_fs.store_lock(p["install_root"], timeout=p["timeout"], doing="uv %s install" % p["version"]):
            yield
    except store_fs.LockTimeout as exc:
        raise InstallError("%s is locked by %s; waited %ds (timeout)" % (p["install_root"], exc.holder, p["timeout"]))
    except store_fs.UnsafeStore as exc:
        raise InstallError(str(exc))


def run(params, check_mode, diff=False, facts=None):
    """The module's whole job; returns the result dict (``failed`` set on an error)."""
    p = normalize(params, facts)
    directory = version_dir(p)
    result = {"changed": False, "version": p["version"], "method": p["method"], "install_dir": directory,
              "uv": os.path.join(p["bin_dir"], "uv"), "install": None, "links": [], "needs": []}
    try:
        problems = check_inputs(p)
        if problems:
            raise InstallError("; ".join(problems))
        problem = integrity_problem(directory, p["version"], min(p["timeout"], 60))
        links = link_state(p)
        result["package_manager"], result["missing_packages"] = distributions.missing_packages(p["packages"])
        stale = [link for link in links if not link["ok"]]
        if problem is None and not stale and not result["missing_packages"]:
            result["msg"] = "uv %s at %s is intact and linked from %s" % (p["version"], directory, p["bin_dir"])
            return result
        result.update(changed=True, install=problem, links=[link["name"] for link in stale])
        if diff:
            before = "uv %s" % p["version"] if not stale and not problem else _linked_version(p, links)
            result["diff"] = _diff(p, problem, stale, result["missing_packages"], before)
        steps = _steps(p, problem, stale, result["missing_packages"])
        if check_mode:
            result["msg"] = "would " + "; ".join(would for would, _did in steps)
            return result
        if result["missing_packages"]:
            result["needs"].append("packages")
        if result["install"] and p["method"] == "archive" and p["archive_src"] and not p["remote_archive"]:
            result["needs"].append("archive")
        if result["needs"]:
            result.update(changed=False, msg="needs %s from the controller first" % " and ".join(result["needs"]))
            return result
        if not os.path.isdir(p["install_root"]):
            os.makedirs(p["install_root"], 0o755)
        with _install_lock(p):
            # A concurrent run may have finished the same install while this one waited.
            if result["install"] and integrity_problem(directory, p["version"], min(p["timeout"], 60)):
                install(p)
            if stale and not os.path.isdir(p["bin_dir"]):
                os.makedirs(p["bin_dir"], 0o755)
            for link in stale:
                store_fs.flip_link(link["path"], link["target"])
        result["msg"] = "; ".join(did for _would, did in steps)
        return result
    except InstallError as exc:
        result.update(failed=True, changed=False, msg=exc.message)
        if exc.detail:
            result["stderr"] = exc.detail
        return result
    except (IOError, OSError) as exc:
        result.update(failed=True, changed=False, msg="uv %s: %s" % (p["version"], exc))
        return result


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
