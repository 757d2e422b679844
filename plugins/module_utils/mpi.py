# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side of ``lockstep.cluster.mpi``: its option spec and the one call the module makes
(stdlib only): are the MPI packages there, is the flavor selected (Debian alternatives, the
MPICH ``libmpi.so.12`` link, the RHEL profile script), and what does the runtime look like.

Missing packages stop the run before anything changes: the action plugin installs them with
the distribution's package module and runs the module again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.lockstep.cluster.plugins.module_utils import os_packages, proc, store_fs
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_ident import (
    SONAMES,
    flavored_path,
    parse_launcher_version,
    root_env,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_runtime import (
    ABI_LINK_TARGET,
    consistency_problems,
    parse_query,
    plan_abi_link,
    plan_alternatives,
    runtime_env,
)

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    flavor=dict(type="str", required=True, choices=["openmpi", "mpich"]),
    packages=dict(type="list", elements="str", default=[]),
    alternatives=dict(type="list", elements="str", default=["mpi", "mpirun"]),
    abi_link=dict(type="bool", default=True),
    libdir=dict(type="path", default="/usr/lib/x86_64-linux-gnu"),
    bin_dir=dict(type="path", default="/usr/bin"),
    profile_path=dict(type="path", default="/etc/profile.d/lockstep-mpi.sh"),
    profile_content=dict(type="str", default=""),
    os_env=dict(type="dict", default={}),
    allow_run_as_root=dict(type="bool", default=False),
    extra_env=dict(type="dict", default={}),
    timeout=dict(type="int", default=120),
)

_SYSTEM_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]


class SelectError(Exception):
    pass


def _tool(name):
    return proc.find_executable([name], proc.path_dirs(os.environ) + _SYSTEM_DIRS)


def _c_env(extra=None):
    return dict(os.environ, LC_ALL="C", **(extra or {}))


def query_alternatives(tool, names, timeout):
    """{name: parsed ``update-alternatives --query`` or None when not registered}."""
    queries = {}
    for name in names:
        result = proc.run([tool, "--query", name], _c_env(), timeout)
        queries[name] = parse_query(result.out) if result.rc == 0 else None
    return queries


def owned_by_package(path, timeout=30):
    dpkg = _tool("dpkg-query")
    return bool(dpkg) and proc.run([dpkg, "--search", path], _c_env(), timeout).rc == 0


def plan_profile(path, content):
    """(action, current text): action None | create | update for the RHEL profile script."""
    if not content:
        return None, None
    try:
        with open(path) as handle:
            current = handle.read()
    except (IOError, OSError):
        return "create", None
    return (None if current == content else "update"), current


def describe(p, timeout):
    """The selected MPI as the venv will see it (flavor, version, launcher, mpicc, libmpi, env)
    and whether mpiexec, mpicc and libmpi.so all belong to the flavor."""
    flavor = p["flavor"]
    launcher = os.path.join(p["bin_dir"], "mpiexec")
    mpicc = os.path.join(p["bin_dir"], "mpicc")
    libmpi = os.path.join(p["libdir"], SONAMES[flavor])
    libmpi_dev = os.path.join(p["libdir"], "libmpi.so")
    runtime = dict(flavor=flavor, installed=False, version=None, launcher=None, launcher_flavor=None, mpicc=None,
                   libmpi=None, libmpi_real=None, consistent=False, problems=["%s not found" % launcher], env={})
    if not os.path.exists(launcher):
        return runtime
    result = proc.run([launcher, "--version"], _c_env(root_env(flavor)), timeout)
    launcher_flavor, version = parse_launcher_version(result.out + "\n" + result.err)
    runtime.update(
        installed=True, version=version, launcher=flavored_path(launcher), launcher_flavor=launcher_flavor,
        mpicc=flavored_path(mpicc) if os.path.exists(mpicc) else None,
        libmpi=libmpi if os.path.exists(libmpi) else None,
        libmpi_real=os.path.realpath(libmpi) if os.path.exists(libmpi) else None)
    problems = consistency_problems(flavor, launcher_flavor, runtime["mpicc"],
                                    os.path.realpath(libmpi_dev) if os.path.exists(libmpi_dev) else None)
    if launcher_flavor is None:
        problems.append("%s: %s" % (proc.describe(result, "%s --version" % launcher, timeout),
                                    proc.tail(result.err or result.out, 3)))
    if runtime["libmpi"] is None:
        problems.append("%s not found (the mpi4py wheel needs it)" % libmpi)
    runtime.update(problems=problems, consistent=not problems,
                   env=runtime_env(flavor, version, runtime["libmpi"], p["os_env"], p["allow_run_as_root"],
                                   p["extra_env"]))
    return runtime


def _diff(p, missing, changes, link, profile, predict=True):
    before, after = [], []
    if missing:
        before.append("packages missing: %s" % ", ".join(missing))
        after.append("packages installed: %s" % ", ".join(missing))
        if p["alternatives"] and predict:
            after.append("alternatives %s: %s (after the install)" % (", ".join(p["alternatives"]), p["flavor"]))
    for change in changes:
        before.append("%s: %s (%s)" % (change["name"], change["before"], change["status"]))
        after.append("%s: %s (manual)" % (change["name"], change["after"]))
    if link["action"] == "create":
        before.append("%s: absent" % link["path"])
        after.append("%s -> %s" % (link["path"], ABI_LINK_TARGET))
    elif link["action"] == "remove":
        before.append("%s -> %s" % (link["path"], ABI_LINK_TARGET))
        after.append("%s: absent" % link["path"])
    if profile["action"]:
        before.append("%s:\n%s" % (profile["path"], profile["current"] if profile["current"] is not None else "(absent)"))
        after.append("%s:\n%s" % (profile["path"], p["profile_content"]))
    return {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}


def _plan(p, missing, timeout):
    """(alternative changes, abi link action and path); tolerant of a flavor whose packages are
    still missing (check mode predicts the install first)."""
    changes = []
    if p["alternatives"]:
        tool = _tool("update-alternatives")
        if tool is None:
            if not missing:
                raise SelectError("update-alternatives not found: the alternatives selection is for the Debian family")
        else:
            changes, errors = plan_alternatives(query_alternatives(tool, p["alternatives"], timeout), p["flavor"])
            if errors and not missing:
                raise SelectError("cannot select %s: %s" % (p["flavor"], "; ".join(errors)))
    action, path = None, None
    if p["abi_link"]:
        action, path = plan_abi_link(p["libdir"], p["flavor"], os.path.exists, os.path.islink, os.readlink,
                                     lambda link: owned_by_package(link, timeout))
        if action == "missing-mpich":
            if not missing:
                raise SelectError("MPICH is selected but %s has neither libmpi.so.12 nor %s: is the mpich package "
                                  "installed?" % (p["libdir"], ABI_LINK_TARGET))
            action = None  # decided after the install
    return changes, action, path


def _apply(p, changes, link, profile, timeout):
    tool = _tool("update-alternatives") if changes else None
    for change in changes:
        result = proc.run([tool, "--set", change["name"], change["after"]], _c_env(), timeout)
        if result.rc != 0:
            raise SelectError("update-alternatives --set %s %s: %s: %s" % (
                change["name"], change["after"], proc.describe(result, "it", timeout), proc.tail(result.err, 3)))
    if link["action"] == "create":
        if os.path.islink(link["path"]):
            os.unlink(link["path"])  # dangling
        os.symlink(ABI_LINK_TARGET, link["path"])
    elif link["action"] == "remove":
        os.unlink(link["path"])
    if profile["action"]:
        directory = os.path.dirname(profile["path"])
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        store_fs.write_atomic(profile["path"], p["profile_content"], 0o644)


def run(params, check_mode, diff=False):
    """The module's whole job; returns the result dict (``failed`` set on an error)."""
    p = params
    timeout = p["timeout"]
    result = {"changed": False, "flavor": p["flavor"], "alternatives": [], "abi_link": {"action": None, "path": None},
              "profile": {"action": None, "path": p["profile_path"] if p["profile_content"] else None},
              "missing_packages": [], "needs": []}
    try:
        result["package_manager"], missing = os_packages.missing(p["packages"], timeout)
        result["missing_packages"] = missing
        if missing and not check_mode:
            result.update(needs=["packages"], msg="needs %s installed first" % ", ".join(missing))
            if diff:  # the selection part follows from the run after the install
                result["diff"] = _diff(p, missing, [], {"action": None}, {"action": None}, predict=False)
            return result
        changes, link_action, link_path = _plan(p, missing, timeout)
        profile_action, profile_current = plan_profile(p["profile_path"], p["profile_content"])
        link = {"action": link_action, "path": link_path}
        profile = {"action": profile_action, "path": result["profile"]["path"]}
        result.update(alternatives=changes, abi_link=link, profile=profile,
                      changed=bool(missing or changes or link_action or profile_action))
        if diff and result["changed"]:
            result["diff"] = _diff(p, missing, changes, link, dict(profile, current=profile_current))
        if result["changed"] and not check_mode:
            _apply(p, changes, link, profile, timeout)
        result["runtime"] = runtime = describe(p, timeout)
        # Check mode cannot have switched anything yet: the host may well be inconsistent.
        if not check_mode and not runtime["consistent"]:
            raise SelectError("%s is not consistently selected: %s" % (p["flavor"], "; ".join(runtime["problems"])))
        if not runtime["installed"]:
            result["msg"] = "%s is not installed yet" % p["flavor"]
        else:
            done = "was already selected" if not result["changed"] else "would be selected" if check_mode else "selected"
            result["msg"] = "%s %s %s" % (p["flavor"], runtime["version"] or "(version unknown)", done)
        return result
    except SelectError as exc:
        result.update(failed=True, msg=str(exc))
        return result
    except (IOError, OSError) as exc:
        result.update(failed=True, msg="cannot select %s: %s" % (p["flavor"], exc))
        return result
