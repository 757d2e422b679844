# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one subprocess runner and PATH search every module uses (stdlib only).

Every child runs in its own session so a timeout kills the whole process group and every
other process of that session (mpiexec leaves ranks behind and puts its ssh clients in groups
of their own, uv leaves build backends), and a child killed by a signal says so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import signal
import subprocess
import time

Result = collections.namedtuple("Result", "rc out err seconds timed_out")

try:  # Linux: prctl(2), looked up once, before any fork
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    """In the child, before exec: SIGKILL when the module dies. A module killed outright
    (SIGKILL: no cleanup runs) must not leave uv writing into a half-built venv, or a
    launcher running, in a session of its own."""
    def prepare():
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(137)
    return prepare if _PRCTL is not None else None


def run(argv, env=None, timeout=None, cwd=None, grace=None):
    """Run ``argv``; never raises for a child that cannot start (rc 127, the reason in err).

    ``rc`` is the exit status, negative for a signal (as subprocess reports it), None on a
    timeout (the process group was killed). With ``grace`` (seconds), a timeout first sends
    SIGTERM to the group, so a launcher can tear down what it started elsewhere, and SIGKILL
    only after that.
    """
    start = time.time()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, universal_newlines=True,
                                preexec_fn=_die_with_parent(os.getpid()))
    except OSError as exc:
        return Result(127, "", "cannot run %s: %s" % (argv[0], exc.strerror or exc), 0.0, False)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = err = None
        if grace:
            kill_group(proc.pid, signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        kill_session(proc.pid)  # stragglers of the group, and of the session outside it
        if out is None:
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                # Only a process that left the session (setsid) can still hold the pipes: never wait for it.
                for stream in (proc.stdout, proc.stderr):
                    stream.close()
                proc.wait()
                out, err = "", "(output lost: a process outside the session kept it open)"
        return Result(None, out, err, round(time.time() - start, 3), True)
    except BaseException:
        # The module itself is being stopped (SIGTERM -> SystemExit): take the children along.
        kill_session(proc.pid)
        raise
    return Result(proc.returncode, out, err, round(time.time() - start, 3), False)


def kill_group(pid, sig=signal.SIGKILL):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def session_members(sid, proc_dir="/proc"):
    """Pids of the session ``sid`` (field 6 of /proc/PID/stat), whatever their process group."""
    found = []
    for name in os.listdir(proc_dir):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_dir, name, "stat")) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                found.append(int(name))
        except (IOError, OSError, IndexError, ValueError):
            continue
    return found


def kill_session(sid, sig=signal.SIGKILL):
    """``sig`` to the group ``sid`` and to every process of the session ``sid``: a child that
    made a group of its own (Open MPI's ssh to each host does) still holds the output pipes
    and, through them, the remote daemons; only the session still names it."""
    kill_group(sid, sig)
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def describe(result, what, timeout=None):
    """``what`` exited 2 / was killed by SIGKILL / timed out after 30s / could not start."""
    if result.timed_out:
        return "%s timed out after %ss (its process group was killed)" % (what, timeout or "?")
    if result.rc == 127 and result.err.startswith("cannot run"):
        return result.err
    if result.rc is not None and result.rc < 0:
        try:
            name = signal.Signals(-result.rc).name
        except ValueError:
            name = "signal %d" % -result.rc
        return "%s was killed by %s" % (what, name)
    return "%s exited %s" % (what, result.rc)


def first_line(result):
    """First line of a successful command's output, else None (``uv --version``)."""
    if result.rc != 0:
        return None
    lines = (result.out or result.err or "").strip().splitlines()
    return lines[0].strip() if lines else None


def tail(text, lines=12):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def find_executable(names, dirs):
    """First ``dirs/name`` that is an executable file, trying each name in turn."""
    for name in names:
        for directory in dirs:
            candidate = os.path.join(os.path.expanduser(directory), name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def path_dirs(env):
    return [d for d in (env or {}).get("PATH", "").split(os.pathsep) if d]
