# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an action plugin needs from a host beyond one module run — a file pushed into the task's
remote temp dir, OS packages installed with Ansible's own modules — and index credentials
(``https://user:token@index.example/simple``) from Vault or the environment: who gets them (uv
through its environment, urllib through a header) and how every message is scrubbed of them.

Pushes and installs happen only when the module's idempotent check said they are needed, so a
converged host costs one round trip.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote, urlsplit, urlunsplit


# What installs packages, by what the host module found (module_utils.distributions.package_manager).
_PACKAGE_MODULES = {
    "apt": ("ansible.builtin.apt", {"update_cache": True, "cache_valid_time": 3600, "install_recommends": False}),
    "dnf": ("ansible.builtin.dnf", {}),
    "yum": ("ansible.builtin.yum", {}),
}


def push_file(action, src, name=None):
    """Copy the controller file ``src`` into the task's remote temp dir; returns the remote path.

    The temp dir is made on first use; ``cleanup`` removes it.
    """
    shell = action._connection._shell
    if shell.tmpdir is None:
        action._make_tmp_path()
    remote = shell.join_path(shell.tmpdir, name or os.path.basename(src))
    action._transfer_file(src, remote)
    action._fixup_perms2((shell.tmpdir, remote))
    return remote


def cleanup(action):
    tmpdir = action._connection._shell.tmpdir
    if tmpdir is not None:
        action._remove_tmp_path(tmpdir)


def install_packages(action, task_vars, manager, names):
    """Install ``names`` with the distribution's package module; returns that module's result.

    In check mode nothing runs: the result predicts the install (apt cannot even simulate
    without python3-apt on the host).
    """
    if action._task.check_mode:
        return {"changed": True, "msg": "would install %s" % ", ".join(names)}
    module, extra = _PACKAGE_MODULES.get(manager, ("ansible.builtin.package", {}))
    args = dict(extra, name=list(names), state="present")
    return action._execute_module(module_name=module, module_args=args, task_vars=task_vars)


def install_into(action, task_vars, manager, names, result):
    """``install_packages``, its result kept in ``result["packages"]``. False, with ``result``
    failed and naming the packages, when the install did not happen."""
    installed = result["packages"] = install_packages(action, task_vars, manager, names)
    if installed.get("failed") or installed.get("unreachable"):
        result.update(failed=True, changed=False, msg="cannot install %s: %s" % (", ".join(names), installed.get("msg")))
        return False
    return True


_SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 6: "SIGABRT", 11: "SIGSEGV", 1: "SIGHUP", 2: "SIGINT"}


def killed(result, module, doing, aftermath):
    """A module result without the module's own JSON because its process died (rc 128+N from
    the remote shell, or -N): say so, with the signal and what it was doing, instead of a
    deserialization error that reads like a connection problem. Other results are returned
    as they are. ``aftermath``: what the run left behind (one sentence)."""
    rc = result.get("rc")
    if not result.get("failed") or result.get("unreachable") or "kind" in result or not isinstance(rc, int):
        return result
    number = -rc if rc < 0 else rc - 128 if 128 < rc < 160 else None
    if number is None:
        return result
    name = _SIGNALS.get(number, "signal %d" % number)
    why = " (out of memory, a task timeout or an operator?)" if number == 9 else ""
    out = dict(result, kind="killed", signal=name)
    out["msg"] = "%s was killed by %s on the host while it %s%s; %s" % (module, name, doing, why, aftermath)
    return out


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
