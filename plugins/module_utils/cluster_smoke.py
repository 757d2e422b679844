# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster smoke test, run on the launching host: one ``mpiexec`` across the cluster, as the
benchmark user, with the venv's own Python on every rank (stdlib only).

Before the launch, every name of the hostfile is resolved here (an unresolvable one is left out
and named), and one BatchMode ``ssh <host> true`` per host (in parallel) names the hosts SSH
cannot reach, or whose host key does not match; the launch then covers the others. Only when a
launch times out or loses ranks: a one-shot TCP listener on each member (over that SSH) and a
connect from here name the host whose inbound TCP is blocked, and the launch's processes still
alive on any host (ranks by the launch's token, the launcher's daemons by their start time and
the launcher's address) are killed. Each
rank prints who it is before ``MPI_Init`` (host, venv, Python, mpi4py, the libmpi it loaded,
what its launcher told it, what its environment adds to the interpreter: RUNTIME_SCRIPT) and, after an allreduce and a ring exchange, what it saw. The
controller judges all of it (plugin_utils.validate); this side only collects.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import pwd
import re
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

from ansible_collections.lockstep.cluster.plugins.module_utils import mpi, proc
from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import member_file
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import root_env
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import read_env_file, venv_environment

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    members=dict(type="list", elements="str", required=True),
    probe_var=dict(type="str", default="_validate_probe"),
    venv=dict(type="path", required=True),
    user=dict(type="str", default="bench"),
    hostfile=dict(type="path", default="/etc/lockstep/hostfile"),
    launcher=dict(type="path"),
    env_file=dict(type="path"),
    environment=dict(type="dict", default={}),
    preflight=dict(type="bool", default=True),
    ssh_timeout=dict(type="int", default=10),
    timeout=dict(type="int", default=120),
    grace=dict(type="int", default=10),
    # Set by the action plugin: the hostfile names of the members the controller reached.
    hosts=dict(type="list", elements="str"),
    # The shared-storage check: directories every rank checks, the free space each must have.
    shared_dirs=dict(type="list", elements="str", default=[]),
    shared_min_free=dict(type="raw", default="0"),
    shared_timeout=dict(type="int", default=10),
)

TAG = "LOCKSTEP-CLUSTER "
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# argv[1]: this launch's token (finds stragglers), argv[2]: the member file.
RANK_SCRIPT = r'''
import hashlib, json, os, platform, re, socket, sys, sysconfig, time
start = time.time()
def say(doc):
    doc.update(pid=os.getpid(), hostname=socket.gethostname())
    sys.stdout.write("LOCKSTEP-CLUSTER " + json.dumps(doc) + "\n")
    sys.stdout.flush()
me = {"phase": "id", "token": sys.argv[1],
      "prefix": os.path.realpath(sys.prefix), "executable": sys.executable,
      "python": platform.python_version()}
try:
    with open(sys.argv[2]) as handle:
        me["member"] = json.load(handle).get("host")
except (IOError, OSError, ValueError):
    me["member"] = None
for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
    if os.environ.get(key, "").isdigit():
        me["env_rank"] = int(os.environ[key])
        break
me["launched_by"] = ("openmpi" if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMIX_NAMESPACE" in os.environ
                     else "mpich" if "PMI_SIZE" in os.environ or "PMI_FD" in os.environ else None)
try:
    from importlib import metadata
    paths = sorted(set([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    pins = sorted("%s==%s" % (re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(), d.version)
                  for d in metadata.distributions(path=paths) if d.metadata["Name"])
    me["packages_sha256"] = hashlib.sha256("\n".join(pins).encode("utf-8")).hexdigest()
except Exception as exc:
    me["packages_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    import mpi4py
    me["mpi4py"] = mpi4py.__version__
    mpi4py.rc.initialize = mpi4py.rc.finalize = False
    from mpi4py import MPI
    me["extension"] = MPI.__file__
    me["library_version"] = MPI.Get_library_version().strip("\x00 \n")
except ImportError as exc:
    me["import_error"] = str(exc)
except Exception as exc:
    me["import_error"] = "%s: %s" % (type(exc).__name__, exc)
libs = []
with open("/proc/self/maps") as maps:
    for line in maps:
        fields = line.split()
        if len(fields) >= 6 and re.match(r"^lib(mpi|mpich)\.so(\.[0-9]+)*$", os.path.basename(fields[-1])):
            if fields[-1] not in libs:
                libs.append(fields[-1])
me["libmpi"] = [os.path.realpath(p) for p in libs]
me["runtime"] = runtime_facts(me["prefix"])
me["startup_s"] = round(time.time() - start, 3)
say(me)
if "import_error" in me:
    sys.exit(3)
t0 = time.time()
MPI.Init()
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
say({"phase": "init", "rank": rank, "size": size, "init_s": round(time.time() - t0, 3)})
t1 = time.time()
total = comm.allreduce(rank, op=MPI.SUM)
got = comm.sendrecv(rank, dest=(rank + 1) % size, source=(rank - 1) % size)
say({"phase": "done", "rank": rank, "size": size, "allreduce": total, "ring_from": got,
     "collectives_s": round(time.time() - t1, 3)})
if len(sys.argv) > 3:
    import base64
    hung = shared_storage(comm, rank, size, json.loads(base64.urlsafe_b64decode(sys.argv[3]).decode("utf-8")), sys.argv[1])
MPI.Finalize()
if len(sys.argv) > 3 and hung:
    os._exit(0)  # a thread stuck in a hung mount must not hold the rank at exit
'''

# The shared-storage check (cluster_shared_dirs), run by every rank after the collectives, as
# the cluster user. Sameness is proved by content, never by st_dev/inode (FUSE, DAOS, NFS
# give each client its own): a rank writes a file with a random secret, every rank reads it.
# Every rank reaches every allgather whatever its directories do: file work runs in threads
# joined against a deadline, and a directory that hangs there is skipped from then on.
STORAGE_SCRIPT = r"""
import errno as _errno, os as _os, re as _re, threading as _threading, time as _time
STORAGE_ROUNDS = 4


def storage_in_time(work, items, limit, hung):
    results = {}

    def one(i):
        try:
            results[i] = work(i)
        except OSError as exc:
            results[i] = {"error": storage_error(exc)}
        except Exception as exc:
            results[i] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    threads = []
    for i in items:
        if i not in hung:
            thread = _threading.Thread(target=one, args=(i,))
            thread.daemon = True
            thread.start()
            threads.append((i, thread))
    deadline = _time.time() + limit
    for i, thread in threads:
        thread.join(max(0.0, deadline - _time.time()))
        if thread.is_alive():
            hung.add(i)
    return dict((i, results[i]) for i, dummy in threads if i not in hung and i in results)


def storage_unescape(text):
    return _re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def storage_mount(real):
    best = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if "-" not in fields:
                continue
            sep = fields.index("-")
            point = storage_unescape(fields[4])
            if real == point or real.startswith(point.rstrip("/") + "/"):
                if len(point) >= len(best.get("mountpoint", "")):
                    best = {"mountpoint": point, "fstype": fields[sep + 1], "source": storage_unescape(fields[sep + 2]),
                            "mount_options": fields[5]}
    return best


def storage_error(exc):
    return _os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)


def storage_local(path, probe):
    fact = {"path": path, "realpath": _os.path.realpath(path), "exists": _os.path.isdir(path)}
    if not fact["exists"]:
        fact["error"] = "not a directory" if _os.path.lexists(path) else "does not exist"
        return fact
    vfs = _os.statvfs(path)
    fact.update(free=vfs.f_bavail * vfs.f_frsize, size=vfs.f_blocks * vfs.f_frsize, inodes_free=vfs.f_favail)
    fact.update(storage_mount(fact["realpath"]))
    name = _os.path.join(path, probe)
    fd = None
    try:
        fd = _os.open(name, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL | _os.O_NOFOLLOW, 0o600)
        _os.write(fd, b"\0" * 4096)
        _os.fsync(fd)
        fact["writable"] = True
    except OSError as exc:
        fact["writable"] = False
        fact["write_error"] = storage_error(exc)
    finally:
        if fd is not None:
            _os.close(fd)
            try:
                _os.unlink(name)
            except OSError as exc:
                fact["cleanup_error"] = "%s: %s" % (name, storage_error(exc))
    return fact


def storage_write(path, secret):
    fd = _os.open(path, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL | _os.O_NOFOLLOW, 0o644)
    try:
        _os.write(fd, secret.encode("ascii"))
        _os.fsync(fd)
    finally:
        _os.close(fd)
    return {"secret": secret}


def storage_read(path, secret):
    try:
        fd = _os.open(path, _os.O_RDONLY | _os.O_NOFOLLOW)
    except OSError as exc:
        return {"read": "absent" if exc.errno == _errno.ENOENT else "error: %s" % storage_error(exc)}
    try:
        found = _os.read(fd, 256).decode("ascii", "replace")
    finally:
        _os.close(fd)
    return {"read": "seen" if found == secret else "differs"}


def shared_storage(comm, rank, size, plan, token):
    # Facts per directory, then rounds: the lowest writable rank not yet placed writes its file,
    # allgather (the barrier), every rank not yet placed reads it, allgather, the file goes.
    began = _time.time()
    dirs, limit = plan["dirs"], plan["timeout"]
    count, hung = len(dirs), set()
    local = storage_in_time(lambda i: storage_local(dirs[i], ".lockstep-probe-%s-%d" % (token, rank)),
                            range(count), limit, hung)
    facts = []
    for i in range(count):
        fact = local.get(i) or {"path": dirs[i], "error": "the check did not finish in %ss" % limit}
        fact.update(hung=False, seen=None, read=None, writers=[])
        facts.append(fact)
    writable = comm.allgather([bool(f.get("writable")) for f in facts])
    placed = [set() for dummy in range(count)]
    tried = [set() for dummy in range(count)]
    for dummy in range(STORAGE_ROUNDS):
        writers = []
        for i in range(count):
            free = [k for k in range(size) if writable[k][i] and k not in placed[i] and k not in tried[i]]
            writers.append(free[0] if free else None)
            if free:
                tried[i].add(free[0])
        if all(w is None for w in writers):
            break
        names = [_os.path.join(dirs[i], ".lockstep-shared-%s-%d" % (token, i)) for i in range(count)]
        mine = [i for i in range(count) if writers[i] == rank]
        secrets = dict((i, "%s %s" % (token, _os.urandom(16).hex())) for i in mine)
        wrote = storage_in_time(lambda i: storage_write(names[i], secrets[i]), mine, limit, hung)
        for i in mine:
            if "secret" not in wrote.get(i, {}):
                facts[i]["write_error"] = (wrote.get(i) or {}).get("error") or "timed out writing the file"
        shared = {}
        for part in comm.allgather(dict((i, secrets[i]) for i in mine if "secret" in wrote.get(i, {}))):
            shared.update(part)
        readers = [i for i in range(count) if i in shared and rank not in placed[i]]
        reads = storage_in_time(lambda i: storage_read(names[i], shared[i]), readers, limit, hung)
        outcome = comm.allgather(dict((i, (reads.get(i) or {}).get("read") or (reads.get(i) or {}).get("error")
                                          or "timed out reading the file") for i in readers))
        gone = [i for i in mine if i in shared]
        removed = storage_in_time(lambda i: _os.unlink(names[i]), gone, limit, hung)
        for i in gone:
            if i not in removed or removed[i]:
                facts[i]["remove_error"] = "%s: %s" % (names[i], (removed.get(i) or {}).get("error") or "timed out")
        for i in range(count):
            if i not in shared:
                continue
            facts[i]["writers"].append(writers[i])
            for k in range(size):
                if outcome[k].get(i) == "seen":
                    placed[i].add(k)
            if i in outcome[rank]:
                facts[i]["read"] = outcome[rank][i]
                if outcome[rank][i] == "seen":
                    facts[i]["seen"] = writers[i]
    for i in hung:
        facts[i]["hung"] = True
    say({"phase": "storage", "rank": rank, "dirs": facts, "storage_s": round(_time.time() - began, 3)})
    return hung
"""

# What the environment adds to the venv's Python (issue 17), run by every rank before MPI_Init
# and by the probe as the cluster user in a login-like shell: where numpy (found, not imported),
# mpi4py and its extension (and any other module already imported) come from, the interpreter-affecting
# variables set and the startup files that set them, and the sitecustomize / usercustomize /
# .pth files on sys.path outside the venv (with their sha256: the controller accepts a
# package's own unchanged file, see probe.base_python). Judged on the controller.
RUNTIME_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "LD_PRELOAD", "LD_LIBRARY_PATH")
RUNTIME_SCRIPT = "RUNTIME_VARS = %r\n" % (RUNTIME_VARS,) + r"""
import hashlib as _hashlib, os as _os, re as _re, sys as _sys, sysconfig as _sysconfig
RUNTIME_FILES = ("/etc/environment", "/etc/security/pam_env.conf", "/etc/profile", "/etc/bash.bashrc",
                 "PROFILE.D", "~/.pam_environment", "~/.profile", "~/.bash_profile", "~/.bash_login", "~/.bashrc")


def runtime_inside(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots if r)


def runtime_sources(names):
    # Startup files that assign a variable: "file:line", home files as ~/...
    home = _os.path.expanduser("~")
    files = []
    for name in RUNTIME_FILES:
        if name == "PROFILE.D":
            try:
                files += sorted(_os.path.join("/etc/profile.d", f) for f in _os.listdir("/etc/profile.d") if f.endswith(".sh"))
            except OSError:
                pass
        else:
            files.append(_os.path.expanduser(name))
    found = dict((n, []) for n in names)
    for path in files:
        try:
            with open(path, "rb") as handle:
                text = handle.read(262144).decode("utf-8", "replace")
        except (IOError, OSError):
            continue
        shown = "~" + path[len(home):] if home not in ("", "/") and path.startswith(home + "/") else path
        for number, line in enumerate(text.splitlines(), 1):
            body = line.strip()
            if body.startswith("#"):
                continue
            for n in names:
                if _re.search(r"(^|[^A-Za-z0-9_$])%s\s*(=|\+=|\s(DEFAULT|OVERRIDE)=)|"
                              r"\b(export|setenv|declare\s+-x)\s+([^;#]*\s)?%s\b" % (n, n), body):
                    found[n].append("%s:%d" % (shown, number))
    return found


def runtime_sha256(path):
    try:
        with open(path, "rb") as handle:
            return _hashlib.sha256(handle.read()).hexdigest()
    except (IOError, OSError):
        return None


def runtime_facts(venv_real, modules=("numpy", "mpi4py", "mpi4py.MPI")):
    out = {"modules": {}, "foreign": {}, "env": {}, "sources": {}, "customize": [], "sys_path": list(_sys.path)}
    base = {"prefix": _sys.base_prefix,
            "executable": _os.path.realpath(getattr(_sys, "_base_executable", None) or _sys.executable),
            "stdlib": _sysconfig.get_path("stdlib", vars={"installed_base": _sys.base_prefix, "base": _sys.base_prefix}),
            "platstdlib": _sysconfig.get_path("platstdlib", vars={"platbase": _sys.base_exec_prefix,
                                                                  "installed_platbase": _sys.base_exec_prefix})}
    base["dynload"] = [p for p in _sys.path if p.endswith("lib-dynload")]
    out["base"] = base
    trusted = [_os.path.realpath(p) for p in [base["stdlib"], base["platstdlib"]] + base["dynload"] if p]
    for name in modules:
        try:
            if name in _sys.modules:
                where = getattr(_sys.modules[name], "__file__", None)
            elif "." not in name:
                # Where the import would come from, without running it (numpy costs 0.3 s).
                import importlib.util as _util
                where = getattr(_util.find_spec(name), "origin", None)
                if where is None:
                    raise ImportError("No module named %r" % name)
            else:
                if name.startswith("mpi4py."):
                    import mpi4py as _mpi4py
                    _mpi4py.rc.initialize = _mpi4py.rc.finalize = False  # never MPI_Init here
                __import__(name)
                where = getattr(_sys.modules[name], "__file__", None)
            out["modules"][name] = _os.path.realpath(where or "") or None
        except ImportError as exc:
            out["modules"][name] = None
            if "No module named" not in str(exc):
                out.setdefault("import_errors", {})[name] = str(exc)[:300]
        except Exception as exc:
            out["modules"][name] = None
            out.setdefault("import_errors", {})[name] = ("%s: %s" % (type(exc).__name__, exc))[:300]
    for name, module in sorted(list(_sys.modules.items())):
        if name in ("__main__", "__mp_main__"):
            continue
        where = getattr(module, "__file__", None)
        if isinstance(where, str) and where:
            real = _os.path.realpath(where)
            if not runtime_inside(real, [venv_real] + trusted) and len(out["foreign"]) < 20:
                out["foreign"][name] = real
    for name in RUNTIME_VARS:
        if _os.environ.get(name):
            out["env"][name] = _os.environ[name]
    out["sources"] = runtime_sources(sorted(out["env"]))
    seen = set()
    for entry in _sys.path:
        real = _os.path.realpath(entry or ".")
        if real in seen or runtime_inside(real, [venv_real]) or not _os.path.isdir(real):
            continue
        seen.add(real)
        try:
            names = sorted(_os.listdir(real))
        except OSError:
            continue
        for name in names:
            if _re.match(r"^(sitecustomize|usercustomize)(\.|$)", name) or name.endswith(".pth"):
                path = _os.path.join(entry or ".", name)
                out["customize"].append({"path": path, "realpath": _os.path.realpath(path), "sha256": runtime_sha256(path)})
    return out
"""

# Its functions come first; the rank script calls runtime_facts() before MPI_Init and
# shared_storage() after its collectives.
RANK_SCRIPT = RUNTIME_SCRIPT + STORAGE_SCRIPT + RANK_SCRIPT


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text):
    """Bytes of ``"0"``, ``"4096"``, ``"500M"``, ``"1.5 GiB"``, ``"2T"``: the letters are powers of
    1024, with or without ``i``/``B`` after them. ValueError names what it could not read."""
    match = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(?:i?B|i)?\s*$", str(text), re.I)
    if not match or (not match.group(2) and re.search(r"[iI]", str(text))):
        raise ValueError("%r is not a size (bytes, or a number with K, M, G, T or P: 500M, 1.5G)" % (text,))
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def encode_plan(storage):
    """The plan as the ranks get it: JSON in URL-safe base64, one word whatever the paths hold
    (no launcher or remote shell splits or unquotes it)."""
    text = json.dumps({"dirs": storage["dirs"], "timeout": storage["timeout"]}, sort_keys=True)
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def storage_plan(params):
    """``None`` without shared_dirs, else ``{"dirs", "min_free" (bytes), "timeout"}``; ValueError
    for a relative directory, a size that is none, or a timeout below one second."""
    dirs = []
    for path in params.get("shared_dirs") or []:
        if not os.path.isabs(path):
            raise ValueError("shared_dirs: %s is not an absolute path (every rank checks the same path)" % path)
        if path not in dirs:
            dirs.append(path)
    if not dirs:
        return None
    try:
        min_free = parse_size(params.get("shared_min_free") or "0")
    except ValueError as exc:
        raise ValueError("shared_min_free: %s" % exc)
    if params.get("shared_timeout", 10) < 1:
        raise ValueError("shared_timeout: %s, at least 1 second" % params.get("shared_timeout"))
    return {"dirs": dirs, "min_free": min_free, "timeout": params.get("shared_timeout", 10)}


def parse_hostfile(text):
    """``[(name, line)]`` of a hostfile in either syntax (``host slots=N`` or ``host:N``)."""
    entries = []
    for line in (text or "").splitlines():
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        name = re.split(r"[\s:]", body, maxsplit=1)[0]
        entries.append((name, line.strip()))
    return entries


def user_env(user, base_venv, env_file, extra):
    """The launcher's environment: a clean login-like base for ``user``, then the venv's."""
    base = {"PATH": SYSTEM_PATH, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
            "SHELL": user.pw_shell or "/bin/sh", "LANG": "C.UTF-8"}
    env, used = venv_environment(base_venv, base, env_file, extra)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env, used


def as_user(argv, user):
    """``argv`` run as ``user`` (setpriv from util-linux: no PAM, no password, no tty)."""
    if os.geteuid() == user.pw_uid:
        return list(argv)
    return ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid, "--init-groups", "--"] + list(argv)


def pam_environment(path="/etc/environment"):
    """The variables pam_env sets from ``path`` at an SSH login (``KEY=VALUE``, an optional
    ``export``, quotes stripped); {} when it cannot be read."""
    found = {}
    try:
        with open(path) as handle:
            text = handle.read(262144)
    except (IOError, OSError, UnicodeDecodeError):
        return found
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if line.startswith("#") or not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            continue
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def login_command(user, argv, forward, pam_file="/etc/environment"):
    """``(argv, env)``: ``argv`` run as ``user`` the way a launcher's SSH login starts a rank:
    the variables of /etc/environment (pam_env), then the user's shell as sshd runs a command
    (bash reads /etc/bash.bashrc and ~/.bashrc then: it sees SSH_CLIENT at the top level), then
    ``forward`` on top (what the launcher forwards to its ranks)."""
    env = {"PATH": SYSTEM_PATH, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
           "SHELL": user.pw_shell or "/bin/sh", "LANG": "C.UTF-8"}
    env.update(pam_environment(pam_file))
    env["SSH_CLIENT"] = "127.0.0.1 0 22"
    inner = ["env", "-u", "SSH_CLIENT"] + ["%s=%s" % (k, forward[k]) for k in sorted(forward)] + list(argv)
    return as_user([user.pw_shell or "/bin/sh", "-c", 'exec "$@"', "lockstep-login"] + inner, user), env


# The daemon a launcher starts on every other host over SSH (Open MPI 4 / 5, MPICH's Hydra).
DAEMONS = {"openmpi": ("orted", "prted"), "mpich": ("hydra_pmi_proxy",)}
NO_DAEMON = 3


def daemon_probe(flavor, launcher_dir):
    """Remote shell code: exit 0 when the launcher's daemon is on the non-interactive PATH or
    beside the launcher (RHEL keeps MPI off PATH), else NO_DAEMON."""
    names = DAEMONS.get(flavor)
    if not names:
        return "true"
    return "for d in %s; do command -v $d >/dev/null 2>&1 && exit 0; [ -x %s/$d ] && exit 0; done; exit %d" % (
        " ".join(names), shlex.quote(launcher_dir), NO_DAEMON)


def ssh_check(host, user, env, timeout, command="true", flavor=None):
    """One BatchMode ``ssh host <command>`` as ``user``: ``{"ok", "rc", "seconds", "error"}``
    (and ``cause`` when SSH worked but the launcher's daemon is missing there)."""
    argv = as_user(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout, host, command], user)
    result = proc.run(argv, env, timeout + 5)
    entry = {"ok": result.rc == 0, "rc": result.rc, "seconds": result.seconds}
    if result.rc == NO_DAEMON:
        entry["cause"] = "flavor_mismatch"
        entry["error"] = "no %s (the %s launcher's daemon) on %s" % ("/".join(DAEMONS[flavor]), flavor, host)
    elif result.rc != 0:
        entry["error"] = proc.tail(result.err, 4) or proc.describe(result, "ssh %s" % host, timeout + 5)
    return entry


def preflight(hosts, user, env, timeout, command="true", flavor=None):
    """ssh_check for every host, in parallel."""
    return on_each(hosts, lambda host: ssh_check(host, user, env, timeout, command, flavor))


def on_each(hosts, work):
    """``{host: work(host)}``, the calls run in parallel threads; a None result is left out."""
    found = {}

    def one(host):
        value = work(host)
        if value is not None:
            found[host] = value

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def launch_command(launcher, flavor, hostfile, ranks, python, token, members_at, forward, as_root, storage=None):
    """One rank per host: Open MPI ``--map-by node``, MPICH ``-ppn 1``; never a prompt (BatchMode).
    ``storage``: the shared-storage plan, handed to every rank as its last argument (JSON)."""
    if flavor == "openmpi":
        argv = [launcher, "--hostfile", hostfile, "-n", str(ranks), "--map-by", "node",
                "--mca", "plm_rsh_args", "-o BatchMode=yes"]
        if as_root:
            argv.append("--allow-run-as-root")
        for key in forward:
            argv += ["-x", key]
    elif flavor == "mpich":
        # Hydra forwards the whole environment by default; ssh reads BatchMode from ~/.ssh/config.
        argv = [launcher, "-f", hostfile, "-launcher", "ssh", "-n", str(ranks), "-ppn", "1"]
    else:
        raise ValueError("cannot launch with a launcher of unknown flavor (%s)" % launcher)
    argv += [python, "-c", RANK_SCRIPT, token, members_at]
    if storage:
        argv.append(encode_plan(storage))
    return argv


def forwarded(env, env_file_vars, extra):
    """What Open MPI must carry to remote ranks (-x): the venv's own variables."""
    keys = ["PATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "LD_LIBRARY_PATH"] + sorted(env_file_vars) + sorted(extra)
    out = []
    for key in keys:
        if key in env and key not in out and not key.startswith("OMPI_"):
            out.append(key)
    return out


def launch_env(env, launcher):
    """What the launch itself sets of the variables a rank reports: lockstep.env's and
    ``environment``'s, and the library directories Open MPI puts in front of LD_LIBRARY_PATH on
    its ranks when it is started by an absolute path (as with ``--prefix``: <prefix>/lib, lib64)."""
    found = dict((k, env[k]) for k in RUNTIME_VARS if env.get(k))
    if launcher.get("flavor") == "openmpi" and launcher.get("path"):
        prefixes = []
        for path in (launcher["path"], launcher.get("realpath")):
            prefix = os.path.dirname(os.path.dirname(path or ""))
            if prefix and prefix not in prefixes:
                prefixes.append(prefix)
        dirs = [os.path.join(p, d) for p in prefixes for d in ("lib", "lib64")]
        found["LD_LIBRARY_PATH"] = ":".join([p for p in [found.get("LD_LIBRARY_PATH")] if p] + dirs)
    return found


def parse_ranks(stdout):
    """``([{"id": {...}, "init": {...}, "done": {...}}], other_lines)``: the tagged JSON lines
    grouped per rank process (host and pid), and every other line."""
    ranks = {}
    other = []
    for line in (stdout or "").splitlines():
        if line.startswith(TAG):
            try:
                doc = json.loads(line[len(TAG):])
            except ValueError:
                other.append(line)
                continue
            # Containers have pid namespaces of their own: a pid is unique per host only.
            key = "%s:%s" % (doc.get("hostname") or "", doc.get("pid"))
            ranks.setdefault(key, {})[doc.get("phase", "?")] = doc
        else:
            other.append(line)
    return [ranks[k] for k in sorted(ranks)], other


def stragglers(hosts, user, env, token, timeout, me=None, started=None, launcher_ids=()):
    """After a failed launch: the processes of this launch still alive on each host, killed by
    pid. ``{host: [pids]}`` of what was found; this host (``me``) is swept without SSH.

    Ranks carry the token on their command line. The launcher's daemons (orted, prted,
    hydra_pmi_proxy) do not: with ``started`` (when the launch began) and ``launcher_ids`` (this
    host's names and addresses, which their command line carries to call back), a process of the
    user whose command line runs such a daemon (the daemon, or an ssh that starts one on the
    next host), that started since the launch began and names this launcher, is this launch's."""
    # "[l]ockstep-…" matches the ranks' command lines but not this shell's own.
    script = "pids=$(pgrep -u %d -f '[%s]%s'); " % (user.pw_uid, token[0], token[1:])
    ids = [i for i in launcher_ids if i and re.match(r"^[A-Za-z0-9_.:%-]+$", i)]
    if started is not None and ids:
        window = int(time.time() - started) + 2  # elapsed seconds: no clock shared between hosts
        # By command line, not name: a daemon's own ssh to the next host (Open MPI's tree spawn)
        # carries the daemon's command too. "[o]rted" keeps this shell's own line out.
        script += ("for p in $(pgrep -u %d -f '%s'); do e=$(ps -o etimes= -p $p) && [ \"$e\" -le %d ] && "
                   "tr '\\0' ' ' < /proc/$p/cmdline | grep -qE %s && pids=\"$pids $p\"; done; "
                   % (user.pw_uid, "|".join("[%s]%s" % (n[0], n[1:]) for names in DAEMONS.values() for n in names),
                      window, shlex.quote(_whole_words(ids))))
    script += "[ -z \"$pids\" ] || { echo $pids; kill -KILL $pids; }"

    def sweep(host):
        if host == me:
            argv = as_user(["sh", "-c", script], user)
        else:
            argv = as_user(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout, host, script], user)
        result = proc.run(argv, env, timeout + 5)
        pids = [int(p) for p in (result.out or "").split() if p.isdigit()]
        return pids or None

    return on_each(hosts, sweep)


def _whole_words(ids):
    """An ERE matching any of ``ids`` (names, addresses) as a whole: 10.0.0.5, not 10.0.0.50."""
    edge = "[^A-Za-z0-9_.-]"
    return "(^|%s)(%s)(%s|$)" % (edge, "|".join(i.replace(".", "\\.") for i in ids), edge)


def resolve(names):
    """``{name: {"addresses": [...]} | {"error": ...}}``: each name as this host resolves it
    (in parallel; getaddrinfo, what ssh and the launcher do first)."""
    def one(name):
        try:
            found = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            return {"error": str(exc)}
        return {"addresses": sorted(set(info[4][0] for info in found))}
    return on_each(names, one)


# The inbound TCP check after a failed launch (ranks that never connected): a listener on one
# host, a connect from another, both bounded (CONNECT_TIMEOUT), both through python3 or the venv's.
CONNECT_TIMEOUT = 5
LISTEN_SCRIPT = r"""
import socket, sys
try:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
except (OSError, AttributeError):
    s = socket.socket()
    s.bind(("", 0))
s.listen(1)
sys.stdout.write("%d\n" % s.getsockname()[1])
sys.stdout.flush()
s.settimeout(float(sys.argv[1]))
try:
    s.accept()[0].close()
    sys.stdout.write("accepted\n")
except socket.timeout:
    sys.stdout.write("no connection\n")
"""
CONNECT_SCRIPT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
    sys.stdout.write("connected\n")
except socket.timeout:
    sys.stdout.write("timed out after %ss\n" % sys.argv[3])
except OSError as exc:
    sys.stdout.write("was refused\n" if exc.errno == 111 else "failed: %s\n" % (exc.strerror or exc))
"""


def _remote_python(script, python, *args):
    """Shell code running ``script`` with python3, else the venv's Python (on every member)."""
    return "p=$(command -v python3 || echo %s); exec \"$p\" -c %s %s" % (
        shlex.quote(python), shlex.quote(script), " ".join(shlex.quote(str(a)) for a in args))


def _connect(name, port, limit):
    """``None`` when a TCP connection to ``name:port`` opens within ``limit`` seconds, else why."""
    try:
        socket.create_connection((name, port), limit).close()
        return None
    except socket.timeout:
        return "timed out after %ss" % limit
    except ConnectionRefusedError:
        return "was refused"
    except OSError as exc:
        return "failed: %s" % (exc.strerror or exc)


def inbound_remote(host, me, user, env, timeout, python, limit=CONNECT_TIMEOUT):
    """A one-shot listener on ``host`` (port 0, over SSH), a connect to it from here:
    ``{"ok", "port", "from", "seconds", "error"}``; ``ok`` None when no listener started."""
    began = time.time()
    argv = as_user(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout, host,
                    _remote_python(LISTEN_SCRIPT, python, limit + 2)], user)
    entry = {"ok": None, "port": None, "from": me}
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
    except OSError as exc:
        entry.update(error="cannot run ssh: %s" % exc, seconds=0.0)
        return entry
    line = ""
    if select.select([child.stdout], [], [], timeout + 5)[0]:
        line = child.stdout.readline().decode("utf-8", "replace").strip()
    if line.isdigit():
        port = entry["port"] = int(line)
        why = _connect(host, port, limit)
        entry["ok"] = why is None
        if why:
            entry["error"] = "TCP to %s:%d from %s %s" % (host, port, me, why)
    try:  # the listener ends by itself (accepted, or its own limit)
        dummy, err = child.communicate(timeout=limit + 5)
    except subprocess.TimeoutExpired:
        proc.kill_group(child.pid)
        dummy, err = child.communicate()
    if entry["port"] is None:
        entry["error"] = "no listener started on %s: %s" % (
            host, proc.tail(err.decode("utf-8", "replace"), 2) or line or "no answer in %ss" % (timeout + 5))
    entry["seconds"] = round(time.time() - began, 3)
    return entry


def inbound_local(me, peer, user, env, timeout, python, limit=CONNECT_TIMEOUT):
    """This (launching) host's own inbound TCP: a listener here, a connect to it from ``peer``
    over SSH. Same shape as inbound_remote's, ``from`` being the peer."""
    began = time.time()
    entry = {"ok": None, "port": None, "from": peer}
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
    except (OSError, AttributeError):
        listener = socket.socket()
        listener.bind(("", 0))
    try:
        listener.listen(1)
        port = entry["port"] = listener.getsockname()[1]
        argv = as_user(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout, peer,
                        _remote_python(CONNECT_SCRIPT, python, me, port, limit)], user)
        result = proc.run(argv, env, timeout + limit + 5)
        said = (result.out or "").strip()
        if result.rc != 0 or not said:
            entry["error"] = "could not try from %s: %s" % (peer, proc.tail(result.err, 2) or proc.describe(result, "ssh"))
        else:
            entry["ok"] = said == "connected"
            if not entry["ok"]:
                entry["error"] = "TCP to %s:%d from %s %s" % (me, port, peer, said)
    finally:
        listener.close()
    entry["seconds"] = round(time.time() - began, 3)
    return entry


def inbound(hosts, me, user, env, timeout, python):
    """Who can be reached over TCP after a launch whose ranks never connected: every other host
    from here, and this host from the first other one that could be reached. ``{host: entry}``
    (inbound_remote's); costs one SSH and a connect per host, so only on failure."""
    others = [h for h in hosts if h != me]
    found = on_each(others, lambda host: inbound_remote(host, me, user, env, timeout, python))
    peer = next((h for h in others if found.get(h, {}).get("ok")), None)
    if me in hosts and peer:
        found[me] = inbound_local(me, peer, user, env, timeout, python)
    return found


def own_name(hostfile):
    """This host's name in the hostfile: the member file beside it says, else gethostname."""
    try:
        with open(member_file(hostfile)) as handle:
            name = json.load(handle).get("name")
        if name:
            return name
    except (IOError, OSError, ValueError):
        pass
    return socket.gethostname()


def private_hostfile(entries, user):
    """A hostfile of only ``entries`` (their original lines), readable by ``user``."""
    directory = tempfile.mkdtemp(prefix="lockstep-smoke-")
    os.chown(directory, user.pw_uid, user.pw_gid)
    path = os.path.join(directory, "hostfile")
    with open(path, "w") as handle:
        handle.write("\n".join(line for dummy, line in entries) + "\n")
    os.chmod(path, 0o644)
    return directory, path


def run(params, base_env):
    """Everything the controller needs to judge the launch (see the module's RETURN)."""
    begun = time.time()
    out = {"user": params["user"], "venv": params["venv"], "hostfile": params["hostfile"], "timeout": params["timeout"]}
    storage = storage_plan(params)
    if storage:
        out["storage"] = storage
    try:
        user = pwd.getpwnam(params["user"])
    except KeyError:
        out.update(error="user %s does not exist" % params["user"], stage="user")
        return out
    try:
        with open(params["hostfile"]) as handle:
            entries = parse_hostfile(handle.read())
    except (IOError, OSError) as exc:
        out.update(stage="hostfile", error="cannot read the hostfile %s: %s" % (params["hostfile"], exc))
        return out
    wanted = params["hosts"] if params["hosts"] is not None else [name for name, dummy in entries]
    out["hostfile_hosts"] = [name for name, dummy in entries]
    out["not_in_hostfile"] = [h for h in wanted if h not in out["hostfile_hosts"]]
    chosen = [(name, line) for name, line in entries if name in wanted]
    python = os.path.join(params["venv"], "bin", "python")
    env, env_file = user_env(user, params["venv"], params["env_file"], params["environment"])
    launcher = mpi.launcher_facts(mpi.find_launcher(env, params["launcher"]), env, 30)
    out["launcher"] = launcher
    # The launcher starts its own host's rank without SSH: no login to itself is needed.
    me = own_name(params["hostfile"])
    # Every name first: one that does not resolve here is named and left out, and the launch
    # runs across the others (a launcher aborts the whole job on a name it cannot resolve, so
    # keeping it would only blame every host again).
    out["resolved"] = resolve(sorted(set(wanted + [n for n, dummy in chosen])))
    out["unresolved"] = dict((n, r["error"]) for n, r in out["resolved"].items() if "error" in r)
    chosen = [(n, line) for n, line in chosen if n not in out["unresolved"]]
    remote = [n for n, dummy in chosen if n != me]
    probe = daemon_probe(launcher.get("flavor"), os.path.dirname(launcher.get("realpath") or "/usr/bin"))
    out["preflight"] = preflight(remote, user, env, params["ssh_timeout"], probe, launcher.get("flavor")) \
        if params["preflight"] else {}
    launch = [(n, line) for n, line in chosen if out["preflight"].get(n, {"ok": True})["ok"]]
    out["launched_hosts"] = [n for n, dummy in launch]
    if not os.access(python, os.X_OK):
        out.update(stage="venv", error="%s is not an executable on the launching host" % python)
        return out
    if not launch:
        out.update(stage="preflight", error="no host of the hostfile resolved and passed the SSH check")
        return out
    if not launcher.get("path") or launcher.get("flavor") not in ("openmpi", "mpich"):
        out.update(stage="launcher", error=launcher.get("error") or "cannot tell the launcher's flavor")
        return out
    token = "lockstep-smoke-%s" % uuid.uuid4().hex[:16]
    members_at = member_file(params["hostfile"])
    directory = None
    hostfile = params["hostfile"]
    if len(launch) != len(entries):
        directory, hostfile = private_hostfile(launch, user)
    as_root = user.pw_uid == 0
    env_file_vars = set()
    if env_file:
        env_file_vars = set(read_env_file(env_file))
    env.update(root_env(launcher["flavor"], user.pw_uid))
    argv = launch_command(launcher["path"], launcher["flavor"], hostfile, len(launch), python, token, members_at,
                          forwarded(env, env_file_vars, params["environment"]), as_root, storage)
    try:
        started = time.time()
        result = proc.run(as_user(argv, user), env, params["timeout"], grace=params["grace"])
        out["seconds"] = round(time.time() - started, 3)
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
    out["command"] = ["<rank script>" if arg == RANK_SCRIPT else arg for arg in argv]
    out["returncode"] = result.rc
    out["timed_out"] = result.timed_out
    out["token"] = token
    out["ranks"], other = parse_ranks(result.out)
    out["stdout_tail"] = proc.tail("\n".join(other), 20)
    out["stderr_tail"] = proc.tail(result.err, 40)
    out["expected_ranks"] = len(launch)
    out["rank_env_expected"] = launch_env(env, launcher)
    if result.timed_out or result.rc != 0:
        ids = [me, socket.gethostname()] + (out["resolved"].get(me) or {}).get("addresses", [])
        out["stragglers"] = stragglers(out["launched_hosts"], user, env, token, params["ssh_timeout"], me,
                                       started, ids)
        finished = len([r for r in out["ranks"] if "done" in r])
        if result.timed_out or finished < len(launch):
            # Ranks that never connected: whose inbound TCP is blocked (only now: no cost on success).
            out["inbound"] = inbound(out["launched_hosts"], me, user, env, params["ssh_timeout"], python)
    out["total_seconds"] = round(time.time() - begun, 3)
    return out
