# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""May this venv be trusted? Manifest findings grouped by package, the import
check, and the rollback that verifies its target before it flips (stdlib only)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os

from ansible_collections.lockstep.cluster.plugins.module_utils import (
    distributions,
    manifest,
    mpi,
    proc,
    store_fs,
    venv_env,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import family
from ansible_collections.lockstep.cluster.plugins.module_utils.uv_runner import SyncError

# Findings that are not in any package's RECORD are grouped under this name.
UNOWNED = "(venv)"

# Run by a venv's interpreter before it goes live (and before a rollback to it). mpi4py is
# loaded without MPI_Init: enough to catch a libmpi the wheel cannot load.
VALIDATE_SCRIPT = r'''
import importlib, json, sys
out = {"python": sys.version.split()[0], "prefix": sys.prefix, "imports": {}}
for name in sys.argv[1:]:
    try:
        if name.split(".")[0] == "mpi4py":
            import mpi4py
            mpi4py.rc.initialize = mpi4py.rc.finalize = False
            from mpi4py import MPI
            out["imports"][name] = MPI.Get_library_version().strip("\x00 \n").splitlines()[0]
        else:
            module = importlib.import_module(name)
            out["imports"][name] = getattr(module, "__version__", "ok")
    except BaseException as exc:
        out["imports"][name] = None
        out.setdefault("errors", {})[name] = "%s: %s" % (type(exc).__name__, exc)
print("LOCKSTEP-VALIDATE " + json.dumps(out))
'''


def import_errors(run, venv, imports, base_env):
    """``{module: error}`` for the ``imports`` that fail in ``venv`` with its environment
    (mpi4py without MPI_Init); {} when all load. ``run(argv, env)`` runs a command."""
    if not imports:
        return {}
    env, _env_file = venv_env.venv_environment(venv, base_env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = run([os.path.join(venv, "bin", "python"), "-c", VALIDATE_SCRIPT] + list(imports), env)
    report = None
    for line in (result.out or "").splitlines():
        if line.startswith("LOCKSTEP-VALIDATE "):
            report = json.loads(line[len("LOCKSTEP-VALIDATE "):])
    if result.rc != 0 or report is None or report.get("errors"):
        return (report or {}).get("errors") or {"python": (result.err or result.out or "").strip()[-800:]}
    return {}


def sealed_findings(venv, rehash_all=False):
    """The venv against its manifest: findings (``[]`` = exactly as sealed); a manifest that
    cannot be used is one finding naming it, and so is a venv or manifest that is not root's
    or that others can write (store_fs.venv_problems)."""
    unsafe = store_fs.venv_problems(venv)
    if unsafe:
        return [{"path": p["path"], "reason": "not trusted: %s" % p["reason"]} for p in unsafe]
    try:
        data = manifest.load(manifest.location(venv))
    except manifest.ManifestError as exc:
        return [{"path": os.path.basename(manifest.location(venv)), "reason": str(exc)}]
    return manifest.verify(os.path.realpath(venv), data, rehash_all)["findings"]


def group_findings(venv, findings):
    """Manifest findings as uv-style ``tampered`` changes, one per owning distribution:
    ``{name, version, action, files, findings}``; files of no package under UNOWNED."""
    venv = os.path.realpath(venv)
    sites = distributions.guess_site_packages(venv)
    manifest.attribute(findings, venv, sites)
    versions = {}
    for site in sites:
        for path in glob.glob(os.path.join(site, "*.dist-info")):
            name, version = manifest.dist_of(path)
            versions[distributions.canonical_name(name)] = version
    groups = {}
    for finding in findings:
        owner = finding.get("owner")
        key = (owner, versions.get(owner, "")) if owner else (UNOWNED, "")
        entry = dict((k, v) for k, v in finding.items() if k not in ("owner", "record_path"))
        if owner and finding.get("record_path"):
            entry["path"] = finding["record_path"]
        groups.setdefault(key, []).append(entry)
    return [{"name": name, "version": version, "action": "tampered", "files": [f["path"] for f in items],
             "findings": items} for (name, version), items in sorted(groups.items())]


def describe_findings(findings, limit=10):
    text = ", ".join("%s (%s)" % (f["path"], f["reason"]) for f in findings[:limit])
    return text + (" and %d more" % (len(findings) - limit) if len(findings) > limit else "")


def mpi_reasons(venv, base_env, timeout):
    """Why ``venv``'s mpi4py does not fit the host's MPI as it is now ([] when it does, or
    when the venv has no mpi4py): the launcher on PATH, the libmpi mpi4py loads and the
    flavor the venv was built for (its lockstep.env) must agree."""
    sites = distributions.guess_site_packages(venv)
    if not any(glob.glob(os.path.join(site, "mpi4py-*.dist-info")) for site in sites):
        return []
    env, _env_file = venv_env.venv_environment(venv, base_env)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    python = os.path.join(venv, "bin", "python")
    py_facts, raw, error = mpi.probe(python, env, timeout, with_mpi=True)
    if not py_facts:
        return ["its Python does not run: %s" % error]
    params = {"launcher": None, "timeout": timeout, "smoke_test": False}
    facts = mpi.mpi_facts(raw or {"error": error}, [venv], [], env, python, params)
    reasons = []
    built_for = env.get("LOCKSTEP_MPI_FLAVOR")
    launcher = facts["launcher"]
    if not launcher.get("path"):
        reasons.append("no MPI launcher (mpiexec/mpirun) on the host's PATH to run it with")
    elif built_for and launcher.get("flavor") and family(built_for) != family(launcher["flavor"]):
        reasons.append("it was built for %s but the host's launcher %s is now %s (MPI flavor switched since)"
                       % (built_for, launcher["path"], launcher["flavor"]))
    if facts["verdict"] != "compatible":
        reasons.extend("mpi: %s" % r for r in facts["reasons"] if r not in reasons)
    return reasons


def verify_target(venv, base_env, timeout=60):
    """Everything that must hold before ``venv`` may go live again ([] when it may)."""
    meta = store_fs.read_meta(venv)
    if not store_fs.is_venv(venv) or meta is None:
        return ["it is missing or incomplete (no pyvenv.cfg or lockstep.json)"]
    findings = sealed_findings(venv)
    if findings:
        return ["it differs from its manifest: %s" % describe_findings(findings)]
    reasons = []
    imports = [i for i in meta.get("validate_imports") or [] if i.split(".")[0] != "mpi4py"]
    errors = import_errors(lambda argv, env: proc.run(argv, env, timeout), venv, imports, base_env)
    reasons.extend("import %s fails: %s" % item for item in sorted(errors.items()))
    return reasons + mpi_reasons(venv, base_env, timeout)


def rollback(path, previous_link=None, check_mode=False, lock_timeout=600, timeout=60, base_env=None):
    """Swap ``current`` and ``previous`` once the previous venv is verified (manifest,
    imports, MPI as the host is now). Returns (old_current, new_current). Raises SyncError."""
    path = path.rstrip("/") or path
    previous_link = previous_link or path + ".previous"
    base_env = dict(os.environ if base_env is None else base_env)
    state, current = store_fs.inspect_path(path)
    if state not in ("link", "dangling"):
        raise SyncError("venv_path %s is not a lockstep venv symlink (%s): nothing to roll back" % (path, state),
                        "rollback")
    if not os.path.islink(previous_link):
        raise SyncError("no previous venv recorded at %s: nothing to roll back to" % previous_link, "rollback")
    target = os.path.realpath(previous_link)

    def checked():
        reasons = verify_target(target, base_env, timeout)
        if reasons:
            raise SyncError("refusing to roll back %s to %s: %s; %s is left as it is (re-run site.yml to build a "
                            "venv for this host)" % (path, target, "; ".join(reasons), path), "rollback")

    if check_mode:
        checked()
        return current, target
    try:
        with store_fs.store_lock(os.path.dirname(target), lock_timeout, "rollback %s to %s" % (path, target)):
            if os.path.realpath(previous_link) != target or os.path.realpath(path) != current:
                raise SyncError("%s or %s changed while the rollback waited for the store lock: run it again"
                                % (path, previous_link), "rollback")
            checked()
            store_fs.flip_link(path, target)
            if current and os.path.isdir(current):
                store_fs.flip_link(previous_link, current)
    except store_fs.LockTimeout as exc:
        raise SyncError(str(exc), "locked")
    except store_fs.UnsafeStore as exc:
        raise SyncError(str(exc), "unsafe-store")
    return current, target
