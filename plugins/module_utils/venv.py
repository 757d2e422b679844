# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sync a venv on the host: the module's option spec and the one call it makes.

The action plugin calls the module twice at most: ``stage=plan`` (read-only: probe the base
Python, is the live venv exactly the lockfile?) and, only when something must change,
``stage=apply`` with the lockfile it copied to the host and the package set it derived from
the lockfile for this Python. With a wheelhouse (``wheelhouse``: a directory on the host, no
index at all) the plan also reports what the wheelhouse holds and the wheel tags facts, and
apply first moves the files the controller pushed into it; ``stage=build`` builds one wheel
from an sdist there (mpi4py against this host's MPI) for the controller to collect.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import stat
import tempfile

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, mpi, proc
from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import sha256_file
from ansible_collections.lockstep.cluster.plugins.module_utils.uv import SyncError, UvRunner
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import VenvStore

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    lockfile=dict(type="path", required=True),
    cpu_only=dict(type="bool", default=True),
    uv=dict(type="path", required=True),
    path=dict(type="path", required=True),
    store=dict(type="path", required=True),
    previous=dict(type="path"),
    python=dict(type="str", default="python3"),
    env=dict(type="dict", default={}),
    mpi4py_mode=dict(type="str", choices=["binary", "source"], default="binary"),
    no_binary=dict(type="list", elements="str", default=[]),
    build_variables=dict(type="dict", default={}),
    # Unset: with mpi4py_mode=source, the OS family's compiler and Python headers.
    packages=dict(type="list", elements="str"),
    # The selected MPI's variables for lockstep.env (mpi role: mpi_runtime.env); unset in the probe,
    # which takes them from its own mpi section.
    mpi_env=dict(type="dict"),
    # May carry a password or token (Vault, lookup('env')): masked in every result.
    index_url=dict(type="str", no_log=True),
    extra_index_urls=dict(type="list", elements="str", default=[], no_log=True),
    wheelhouse=dict(type="path"),
    # Controller side only (the action plugin's wheelhouse); the module ignores them.
    wheelhouse_cache=dict(type="path"),
    wheelhouse_find_links=dict(type="list", elements="str", default=[]),
    build_group=dict(type="str"),
    build_requires=dict(type="dict", default={}),
    find_links=dict(type="list", elements="str", default=[]),
    offline=dict(type="bool", default=False),
    ca_bundle=dict(type="path"),
    cache_dir=dict(type="path"),
    link_mode=dict(type="str", choices=["copy", "hardlink", "clone", "symlink"], default="copy"),
    verify_files=dict(type="bool", default=True),
    validate_imports=dict(type="list", elements="str", default=[]),
    keep=dict(type="int", default=2),
    prune_after_sync=dict(type="bool", default=False),
    timeout=dict(type="int", default=1800),
    lock_timeout=dict(type="int", default=600),
    # Set by the action plugin.
    stage=dict(type="str", choices=["plan", "apply", "build"], default="plan"),
    lockfile_sha256=dict(type="str"),
    remote_lockfile=dict(type="path"),
    expected=dict(type="dict"),
    wheelhouse_incoming=dict(type="dict"),
    wheelhouse_files=dict(type="list", elements="str"),
    build=dict(type="dict"),
)

# Wheel tag facts of the venv's base Python (the controller turns them into packaging tags).
TAG_SCRIPT = r'''
import json, os, platform, sys, sysconfig
v = sys.version_info
name = sys.implementation.name
if name == "cpython":
    abi = "cp%d%d" % v[:2] + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
else:
    abi = (sysconfig.get_config_var("SOABI") or name).split("-")[0].replace(".", "_")
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError, AttributeError):
    libc = ""
print(json.dumps({"implementation": name, "version": "%d.%d" % v[:2], "abi": abi,
                  "machine": platform.machine(), "system": platform.system(),
                  "glibc": libc.split()[1] if libc.startswith("glibc ") else None}))
'''


def probe_python(python, timeout):
    """``(executable, version, marker_environment)`` of the venv's base interpreter."""
    facts, _mpi, error = mpi.probe(python, dict(os.environ), timeout, with_mpi=False)
    if not facts:
        raise SyncError("cannot run the venv base Python %r: %s" % (python, error), "python")
    return facts["executable"], facts["version"], facts["marker_environment"]


def wheelhouse_state(directory, python, timeout):
    """What the controller needs to push only the missing files: sha256 of each file in the
    wheelhouse, and the base Python's wheel tag facts."""
    files = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.startswith(".") and os.path.isfile(path):
                files[name] = sha256_file(path)
    result = proc.run([python, "-c", TAG_SCRIPT], timeout=timeout)
    try:
        facts = json.loads(result.out)
    except ValueError:
        raise SyncError("cannot read the wheel tags of %s: %s" % (python, proc.tail(result.err)), "python")
    return {"dir": directory, "files": files, "platform": facts}


def receive(directory, incoming):
    """Move the files the controller pushed (``{name: {src, sha256}}``) into the wheelhouse,
    each checked against the controller's sha256 first."""
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    for name, spec in sorted((incoming or {}).items()):
        if os.sep in name or name.startswith("."):
            raise SyncError("refusing the wheelhouse file name %r" % name, "input")
        actual = sha256_file(spec["src"])
        if actual != spec["sha256"]:
            raise SyncError("%s arrived with sha256 %s, the controller sent %s: transfer corrupted"
                            % (name, actual, spec["sha256"]), "wheelhouse")
        part = os.path.join(directory, ".%s.part" % name)
        shutil.copyfile(spec["src"], part)
        os.chmod(part, 0o644)
        os.rename(part, os.path.join(directory, name))


def make_view(directory, names):
    """A directory of hard links to exactly ``names``: uv picks by tag, not by hash, so a file
    of the same version left from another sync (the PyPI mpi4py wheel beside the one built
    here) must not be visible to it."""
    view = tempfile.mkdtemp(prefix=".view-", dir=directory)
    for name in names:
        if os.sep in name or name.startswith("."):
            raise SyncError("refusing the wheelhouse file name %r" % name, "input")
        source = os.path.join(directory, name)
        if not os.path.isfile(source):
            raise SyncError("%s is not in the wheelhouse %s" % (name, directory), "wheelhouse")
        try:
            os.link(source, os.path.join(view, name))
        except OSError:
            os.symlink(source, os.path.join(view, name))
    return view


def build_wheel(runner, python, directory, spec):
    """``uv build --wheel`` of the sdist ``spec['sdist']`` in the wheelhouse, offline, build
    requirements pinned by hash; the wheel lands in the wheelhouse. Returns its facts."""
    sdist = os.path.join(directory, spec["sdist"])
    if not os.path.isfile(sdist) or sha256_file(sdist) != spec["sdist_sha256"]:
        raise SyncError("%s is missing from the wheelhouse or does not have sha256 %s"
                        % (sdist, spec["sdist_sha256"]), "wheelhouse")
    out = tempfile.mkdtemp(prefix=".build-", dir=directory)
    try:
        constraints = None
        if spec.get("constraints"):
            constraints = os.path.join(out, "build-constraints.txt")
            with open(constraints, "w") as handle:
                handle.write(spec["constraints"])
        env = dict((str(k), str(v)) for k, v in (spec.get("env") or {}).items())
        result = runner.build_wheel(python, sdist, out, constraints, env)
        wheels = [n for n in os.listdir(out) if n.endswith(".whl")]
        if result.rc != 0 or len(wheels) != 1:
            what = proc.describe(result, "uv", runner.timeout)
            raise SyncError("uv build of %s failed (%s): %s" % (spec["sdist"], what, proc.tail(result.err, 20)),
                            "build", result.err)
        target = os.path.join(directory, wheels[0])
        os.rename(os.path.join(out, wheels[0]), target)
        return {"wheel": target, "filename": wheels[0], "sha256": sha256_file(target), "seconds": result.seconds}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def prune_wheelhouse(directory, keep):
    """Remove the wheelhouse files other than ``keep`` (this sync's files): ``(names, bytes)``,
    bytes counted only for files that had no other hard link (those give nothing back)."""
    removed, freed = [], 0
    keep = set(keep)
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        if name.startswith(".") or name in keep:
            continue  # in-flight transfers and views are dot-named
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            continue
        os.unlink(path)
        removed.append(name)
        if info.st_nlink == 1:
            freed += info.st_blocks * 512
    return removed, freed


def reclaim(runner, wheelhouse=None, keep=None):
    """After a sync that changed the venv (``prune_after_sync``): give back what the live venv
    does not use. uv's cache loses its pre-built wheels; the host wheelhouse keeps only this
    sync's files (``keep``; None: left alone). Returns ``(report, warnings)``: a failed prune
    is a warning, the venv is already live and correct."""
    report, warnings = {}, []
    result = runner.cache_prune()
    report["uv_cache"] = proc.tail(result.err, 1) if result.rc == 0 else None
    if result.rc != 0:
        warnings.append("the venv is synced, but pruning the uv cache failed (%s): %s"
                        % (proc.describe(result, "uv", runner.timeout), proc.tail(result.err, 4)))
    if wheelhouse and keep is not None:
        try:
            report["wheelhouse_removed"], report["wheelhouse_bytes"] = prune_wheelhouse(wheelhouse, keep)
        except OSError as exc:
            warnings.append("the venv is synced, but pruning the wheelhouse %s failed: %s" % (wheelhouse, exc))
    return report, warnings


BUILD_PACKAGES = {"Debian": ["gcc", "python3-dev"], "RedHat": ["gcc", "python3-devel"]}


def build_packages(mode, family):
    """What building mpi4py from source needs on this OS family (nothing for the binary wheel)."""
    return list(BUILD_PACKAGES.get(family, BUILD_PACKAGES["Debian"])) if mode == "source" else []


def resolve(params, facts=None):
    """The options with the unset OS packages taken from the host's family, and the venv
    environment: the MPI's variables, then ``env`` on top."""
    p = dict(params)
    if p.get("packages") is None:
        p["packages"] = build_packages(p.get("mpi4py_mode"), (facts or {}).get("os_family"))
    p["env"] = dict(p.get("mpi_env") or {}, **(p.get("env") or {}))
    return p


def run(params, check_mode, base_env=None, facts=None):
    """The module's whole job. Returns the result dict; raises SyncError with it attached."""
    p = resolve(params, facts)
    runner = UvRunner(
        p["uv"], index_url=p["index_url"], extra_index_urls=p["extra_index_urls"], find_links=p["find_links"],
        offline=p["offline"], ca_bundle=p["ca_bundle"], cache_dir=p["cache_dir"], no_binary=p["no_binary"],
        timeout=p["timeout"], link_mode=p["link_mode"], base_env=base_env, wheelhouse=p["wheelhouse"])
    view = None
    result = {"changed": False, "stage": p["stage"], "action": "none", "venv": None, "previous": None,
              "key": None, "drift": False, "tampered": []}
    try:
        if not p["lockfile_sha256"]:
            raise SyncError("lockfile_sha256 is set by the lockstep.cluster.venv action plugin; "
                            "run the module through it", "input")
        executable, version, markers = probe_python(p["python"], min(p["timeout"], 120))
        result["python"] = {"executable": executable, "version": version, "marker_environment": markers}
        if p["prune_after_sync"] and p["link_mode"] == "symlink":
            raise SyncError("prune_after_sync would delete the venv's own files: with link_mode symlink they "
                            "live in the uv cache; use copy, hardlink or clone", "input")
        if p["ca_bundle"] and not os.path.isfile(p["ca_bundle"]):
            raise SyncError("CA bundle %s does not exist on the host" % p["ca_bundle"], "input")
        if p["stage"] == "build":
            if not (p["wheelhouse"] and p["build"] and runner.available()):
                raise SyncError("stage=build needs wheelhouse, build and uv", "input")
            receive(p["wheelhouse"], p["wheelhouse_incoming"])
            result.update(changed=True, build=build_wheel(runner, executable, p["wheelhouse"], p["build"]))
            return result
        store = VenvStore(
            runner, p["path"], p["store"], executable, version, p["lockfile_sha256"],
            lockfile_name=os.path.basename(p["lockfile"]), env=p["env"], mpi4py_mode=p["mpi4py_mode"],
            build_variables=p["build_variables"], validate_imports=p["validate_imports"], keep=p["keep"],
            previous=p["previous"], verify_files=p["verify_files"], expected=p["expected"],
            lock_timeout=p["lock_timeout"])
        result["key"] = store.key
        result["package_manager"], result["missing_packages"] = distributions.missing_packages(p["packages"])
        if p["stage"] == "apply":
            if p["wheelhouse"]:
                receive(p["wheelhouse"], p["wheelhouse_incoming"])
                if p["wheelhouse_files"] is not None:
                    view = make_view(p["wheelhouse"], p["wheelhouse_files"])
                    runner.find_links[0] = view
            plan = store.sync(p["remote_lockfile"])
            if p["prune_after_sync"] and plan["action"] != "none":
                if view:
                    shutil.rmtree(view, ignore_errors=True)
                    view = None
                result["reclaimed"], warnings = reclaim(runner, p["wheelhouse"], p["wheelhouse_files"])
                if warnings:
                    result["warnings"] = warnings
        elif runner.available():
            plan = store.plan()
        elif check_mode:
            # A bare host in check mode: the uv role only predicted its install.
            state, current = store.check_inputs()
            plan = {"action": "build", "current": current if state == "link" else None, "target": store.target,
                    "drift": False, "changes": []}
            result["msg"] = "uv is not installed yet at %s: predicted from the lockfile" % p["uv"]
        else:
            raise SyncError("uv not found at %s (run the lockstep.cluster.uv role first)" % p["uv"], "input")
        result.update(action=plan["action"], venv=plan["target"], previous=plan["current"], drift=plan["drift"],
                      tampered=[c for c in plan["changes"] if c.get("action") == "tampered"],
                      repairs=plan.get("repairs") or [])
        if plan["action"] != "none":
            result.update(store.describe(plan))
            if p["wheelhouse"] and p["stage"] == "plan":
                result["wheelhouse"] = wheelhouse_state(p["wheelhouse"], executable, min(p["timeout"], 120))
        if p["stage"] == "apply":
            result.update(changed=plan["action"] != "none" or bool(result["repairs"]), built=plan["built"],
                          pruned=plan["pruned"],
                          sync_changes=plan["sync_changes"], cache_check=plan.get("cache_check"))
            if plan["action"] == "build":
                result["after"] = store.packages(plan["target"])
        return result
    except SyncError as exc:
        result.update(failed=True, msg=exc.message, kind=exc.kind)
        if exc.detail:
            result["stderr"] = exc.detail
        return result
    finally:
        if view:
            shutil.rmtree(view, ignore_errors=True)
        result["commands"] = runner.timings()
