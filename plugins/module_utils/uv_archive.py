# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: a uv release archive — fetched with sha256 verification, unpacked safely.

Stdlib plus Ansible's own ``open_url`` (shipped with every module; it honours the proxy
variables and a CA bundle). Release archives hold ``uv-<target>/uv`` and ``uv-<target>/uvx``.
Only those two regular files are written; any link, device, absolute path or ``..`` in the
archive refuses it whole.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import ssl
import tarfile
from urllib.error import URLError

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url

from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import sha256_file

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
    actual = sha256_file(path)
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
