# Controller side: imported by the action plugins only, never shipped to a host.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: index credentials (``https://user:token@index.example/simple``) from Vault
or the environment — who gets them (uv through its environment, urllib through a header) and
how every message is scrubbed of them."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["auth_header", "redact", "secrets_of", "strip_userinfo", "uv_index_env"]

MASK = "********"


def strip_userinfo(url):
    """``url`` without ``user:password@`` (the form any message may show)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    netloc = host + (":%d" % parts.port if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def secrets_of(urls):
    """The strings no output may contain: each credentialed URL, its password (raw and
    percent-decoded) and a token given as the user name alone (``https://TOKEN@host``)."""
    found = []
    for url in urls or ():
        if not url:
            continue
        parts = urlsplit(url)
        if parts.password:
            found += [url, parts.password, unquote(parts.password)]
        elif parts.username:
            found += [url, parts.username, unquote(parts.username)]
    # Longest first, so a URL is masked whole before its password is.
    return sorted(set(s for s in found if len(s) >= 4), key=len, reverse=True)


def redact(value, secrets):
    """``value`` (str, or nested dicts/lists of them) with every secret replaced by MASK."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return dict((key, redact(item, secrets)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, secrets) for item in value)
    return value


def auth_header(file_url, index_urls):
    """``Authorization`` value for downloading ``file_url``: its own user info, else that of
    the credentialed index on the same host and port (a private index serves its files from
    its own host; uv's lock output carries no credentials). None when there are none."""
    candidates = [file_url] + [u for u in index_urls or () if u]
    target = urlsplit(file_url)
    for url in candidates:
        parts = urlsplit(url)
        if parts.username is None:
            continue
        if (parts.hostname, parts.port) != (target.hostname, target.port):
            continue
        pair = "%s:%s" % (unquote(parts.username), unquote(parts.password or ""))
        return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return None


def uv_index_env(index_url=None, extra_index_urls=()):
    """uv's environment for the indexes: never its argv (``/proc/<pid>/cmdline`` is world
    readable, ``environ`` is not)."""
    env = {}
    if index_url:
        env["UV_DEFAULT_INDEX"] = index_url
    extras = [u for u in extra_index_urls or () if u]
    if extras:
        env["UV_INDEX"] = " ".join(extras)
    return env
