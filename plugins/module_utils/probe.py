# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host has, collected in one module run: the probe's option spec and its raw facts.

Stdlib only. One section per question asked (``validate``: the venv, its files against the
manifest, the venv's Python, its distributions, uv, the MPI stack, what the cluster user's login
environment adds to the venv's Python, and the base interpreter against its package manager:
dpkg --verify / rpm -V and files in its sys.path no package owns); the module returns raw
facts and the controller judges them (plugin_utils.validate), where ``packaging`` is available.
Nothing here modifies the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import pwd
import re
import shutil
import time

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.cluster.plugins.module_utils import (
    cluster,
    cluster_smoke,
    distributions,
    manifest,
    mpi,
    proc,
    store_fs,
    uv,
    venv,
)
from ansible_collections.lockstep.cluster.plugins.module_utils.venv_store import read_env_file, venv_environment

# The audit's questions (the validate role's settings); the lock itself stays on the controller.
VALIDATE_OPTIONS = dict(
    venv=dict(type="path", required=True),
    verify_files=dict(type="bool", default=True),
    verify_all_files=dict(type="bool", default=False),
    uv_path=dict(type="path"),
    mpi=dict(type="bool", default=True),
    smoke_test=dict(type="bool", default=True),
    launcher=dict(type="path"),
    env_file=dict(type="path"),
    environment=dict(type="dict", default={}),
    timeout=dict(type="int", default=60),
    smoke_timeout=dict(type="int", default=120),
    # The cluster user: the venv's Python runs once in its login-like environment (what a rank
    # inherits); unset: the user the module runs as.
    user=dict(type="str"),
)

# What the probe needs of the cluster role's settings to snapshot a member's files.
CLUSTER_OPTIONS = dict(
    user=dict(type="str", default="bench"),
    hostfile=dict(type="path", default="/etc/lockstep/hostfile"),
    manage_keys=dict(type="bool", default=True),
    manage_known_hosts=dict(type="bool", default=True),
)

# Each role's section takes that role's module options, checked against that module's spec.
SPECS = {"uv": uv.ARGUMENT_SPEC, "mpi": mpi.ARGUMENT_SPEC, "venv": venv.ARGUMENT_SPEC, "cluster": CLUSTER_OPTIONS}
# Options that do not change what the host is asked: set per apply by an action plugin, or read
# on the controller only. They stay out of a section's digest.
NOT_ASKED = {
    "uv": ("remote_archive", "archive_src"),
    "venv": ("stage", "remote_lockfile", "expected", "wheelhouse_incoming", "wheelhouse_files", "build",
             "wheelhouse_cache", "wheelhouse_find_links", "build_group", "build_requires", "lock_timeout",
             "prune_after_sync"),
    "mpi": (), "cluster": (), "validate": (),
}

# Shared by the module (host) and the action plugin (which validates the task's arguments).
ARGUMENT_SPEC = dict(
    uv=dict(type="dict"),
    mpi=dict(type="dict"),
    venv=dict(type="dict"),
    cluster=dict(type="dict"),
    validate=dict(type="dict", options=VALIDATE_OPTIONS),
    # Kept for this run (the fact lockstep_probe) for the roles and the audit to reuse: only where
    # the playbook knows nothing but lockstep roles runs on the host after the probe (site.yml).
    keep=dict(type="bool", default=False),
    # Checked on the controller (the action plugin): these roles' arguments, in this one task.
    role_arguments=dict(type="list", elements="str", default=[]),
)


def settings(section, given):
    """``(settings, error)``: a role section's options, checked and defaulted by its module's
    spec, exactly as the role's own action plugin checks them (so their digests agree)."""
    given = dict(given or {})
    if section == "cluster":  # the cluster role's options: the snapshot needs only a few
        given = dict((k, v) for k, v in given.items() if k in CLUSTER_OPTIONS)
    checked = ArgumentSpecValidator(SPECS[section]).validate(given)
    if checked.error_messages:
        return None, "; ".join(checked.error_messages)
    return checked.validated_parameters, None


def secrets(params):
    """The values of every no_log option given in a role section (an index URL with a token):
    the module masks them in everything it returns, as the role's own module would."""
    found = set()
    for name, spec in SPECS.items():
        for option, rule in spec.items():
            value = (params.get(name) or {}).get(option)
            if rule.get("no_log") and value:
                found.update(value if isinstance(value, list) else [value])
    return set(str(v) for v in found)


def digest(section, params):
    """sha256 of what a section asks the host (NOT_ASKED left out): a role reuses the probe's
    answer only when its own options give the same digest."""
    asked = dict((k, v) for k, v in (params or {}).items() if k not in NOT_ASKED.get(section, ()))
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode("utf-8")).hexdigest()


_UV_DIRS = ("/usr/local/bin", "/usr/bin", "~/.local/bin", "~/.cargo/bin")


def find_uv(env, explicit=None):
    if explicit:
        return explicit
    return proc.find_executable(["uv"], proc.path_dirs(env) + list(_UV_DIRS))


def uv_facts(env, explicit, pyvenv_cfg, timeout):
    path = find_uv(env, explicit)
    facts = {
        "path": path,
        "version": None,
        # uv records itself in pyvenv.cfg: which uv created this venv.
        "venv_created_by": pyvenv_cfg.get("uv"),
    }
    if path and os.path.lexists(path):
        result = proc.run([path, "--version"], env, timeout)
        match = re.match(r"uv\s+(\S+)", proc.first_line(result) or "")
        if match:
            facts["version"] = match.group(1)
        else:
            # A uv that is there but does not run (or prints something else) is broken, not absent.
            described = proc.describe(result, "%s --version" % path, timeout)
            output = proc.tail((result.out or "") + (result.err or ""), 2).replace("\n", " | ")
            facts["error"] = described if output in described else "%s: %s" % (described, output or "no output")
    return facts


def integrity_facts(venv_real, site_packages, params):
    """``(integrity, distributions)``: the venv against its manifest (lockstep venvs), or
    against each wheel's RECORD (a venv lockstep did not build: there is no manifest).

    A venv counts as lockstep's when anything the store keeps says so (its manifest, its
    ``lockstep.json``, the store lock beside it): then a manifest that is missing or
    unreadable is a failure, never a fallback to the weaker check.
    """
    if not params["verify_files"]:
        return {"method": "off"}, distributions.installed_distributions(site_packages, verify_files=False)
    location = manifest.location(venv_real)
    marks = (location, os.path.join(venv_real, store_fs.META_FILE),
             os.path.join(os.path.dirname(venv_real), store_fs.STORE_LOCK))
    if not any(os.path.exists(mark) for mark in marks):
        dists = distributions.installed_distributions(site_packages, verify_files=True)
        return {"method": "record", "manifest": None, "findings": [],
                "note": "no manifest (a venv lockstep.cluster did not build): checked against RECORD only"}, dists
    dists = distributions.installed_distributions(site_packages, verify_files=False)
    facts = {"method": "manifest", "manifest": location, "findings": []}
    if not os.path.isdir(venv_real):
        facts["error"] = "the venv directory %s does not exist" % venv_real
        return facts, dists
    try:
        data = manifest.load(location)
    except manifest.ManifestError as exc:
        facts["error"] = "%s: the venv cannot be verified (re-run site.yml to build a sealed one)" % exc
        return facts, dists
    facts.update(manifest.verify(venv_real, data, rehash_all=params["verify_all_files"]))
    # Same lock, same bytes: what the other hosts' venvs must equal (manifest.content_digest).
    facts["content_digest"] = data.get("content_digest") or manifest.content_digest(data)
    # Whoever can write the store can swap the venv and rewrite its manifest to match: an
    # unsafe store is a failure, whatever the tree looks like.
    facts["unsafe"] = store_fs.audit(params["venv"], venv_real) + [
        {"path": os.path.join(venv_real, rel), "reason": "sealed writable by group or others"}
        for rel in manifest.unsafe_entries(data)]
    manifest.attribute(facts["findings"], venv_real, site_packages)
    by_name = dict((distributions.canonical_name(d["name"]), d) for d in dists)
    for dist in dists:
        dist["tampered"] = []
    for finding in facts["findings"]:
        dist = by_name.get(finding.get("owner"))
        if dist is not None and finding.get("record_path"):
            # An installed package's file: reported under its name, as RECORD writes its path.
            finding["installed"] = True
            entry = dict((k, v) for k, v in finding.items() if k not in ("owner", "record_path", "installed"))
            dist["tampered"].append(dict(entry, path=finding["record_path"]))
    return facts, dists


RUNTIME_TAG = "LOCKSTEP-RUNTIME "


def runtime_facts(params, python, env, env_file):
    """What a rank on this host would run: the venv's Python once as the cluster user, in a
    login-like environment (cluster_smoke.login_command), reporting cluster_smoke.RUNTIME_SCRIPT's
    facts; ``expected_env``: what lockstep.env and ``environment`` set themselves."""
    facts = {"expected_env": dict((k, env[k]) for k in cluster_smoke.RUNTIME_VARS if env.get(k))}
    try:
        user = pwd.getpwnam(params["user"]) if params.get("user") else pwd.getpwuid(os.geteuid())
    except KeyError:
        user = pwd.getpwuid(os.geteuid())
        facts["note"] = "the cluster user %s does not exist here: checked as %s" % (params["user"], user.pw_name)
    facts["user"] = user.pw_name
    keys = cluster_smoke.forwarded(env, set(read_env_file(env_file)) if env_file else set(), params["environment"])
    script = cluster_smoke.RUNTIME_SCRIPT + (
        "\nimport json as _json\n_sys.stdout.write(%r + _json.dumps(runtime_facts(_os.path.realpath(_sys.prefix))) + '\\n')\n"
        % RUNTIME_TAG)
    argv, login_env = cluster_smoke.login_command(user, [python, "-c", script], dict((k, env[k]) for k in keys))
    result = proc.run(argv, login_env, params["timeout"], cwd="/")
    facts["seconds"] = result.seconds
    for line in (result.out or "").splitlines():
        if line.startswith(RUNTIME_TAG):
            try:
                facts.update(json.loads(line[len(RUNTIME_TAG):]))
            except ValueError:
                continue
            return facts
    described = proc.describe(result, "the venv's Python as %s" % user.pw_name, params["timeout"])
    facts["error"] = "%s: %s" % (described, proc.tail(result.err, 3).replace("\n", " | ") or "no output")
    return facts


# What the base interpreter's files are checked against: the packages owning it, by manager.
_VERIFY_LINE = re.compile(r"^(?:missing\s+|(?P<flags>\S{8,9})\s+)(?P<conf>c\s+)?(?P<path>/.*)$")
_SCANNED = (".py", ".pth", ".so")
DPKG_INFO = "/var/lib/dpkg/info"


def _md5(path):
    try:
        digest = hashlib.md5(usedforsecurity=False)
    except TypeError:  # Python < 3.9
        digest = hashlib.md5()
    return store_fs.file_digest(path, digest)


def _sha256(path):
    try:
        return store_fs.sha256_file(path)
    except (IOError, OSError):
        return None


def _base_roots(base):
    roots = []
    for path in [base.get("stdlib"), base.get("platstdlib")] + list(base.get("dynload") or []):
        if path and os.path.isdir(path) and path not in roots:
            roots.append(path)
    return roots


def _candidates(roots):
    """Files of the base's sys.path directories a package could own and Python would run:
    .py/.pth/.so and sitecustomize/usercustomize (no __pycache__, no site-packages: a venv
    does not see those)."""
    found, seen = [], set()
    for root in roots:
        for directory, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "site-packages", "dist-packages"))
            for name in sorted(files):
                path = os.path.join(directory, name)
                if (name.endswith(_SCANNED) or ".so." in name or name.startswith(("sitecustomize", "usercustomize"))) \
                        and path not in seen:  # lib-dynload is under the stdlib too
                    seen.add(path)
                    found.append(path)
    return found


def _dpkg_owned(prefixes):
    """Every path a dpkg package lists under ``prefixes`` (its ``*.list`` files: no dpkg run)."""
    owned = set()
    info = DPKG_INFO
    try:
        names = os.listdir(info)
    except OSError:
        return owned
    for name in names:
        if name.endswith(".list"):
            try:
                with open(os.path.join(info, name)) as handle:
                    owned.update(line.rstrip("\n") for line in handle if line.startswith(prefixes))
            except (IOError, OSError, UnicodeDecodeError):
                continue
    return owned


def _verify_lines(text):
    """``dpkg --verify`` / ``rpm -V`` output -> ``[{"path", "reason"}]``."""
    found = []
    for line in (text or "").splitlines():
        match = _VERIFY_LINE.match(line.strip())
        if not match:
            continue
        kind = "conffile " if match.group("conf") else ""
        if match.group("flags") is None:
            reason = "%smissing" % kind
        else:
            reason = "%schanged (%s)" % (kind, match.group("flags"))
        found.append({"path": match.group("path"), "reason": reason})
    return found


def _dpkg(targets, roots, env, timeout):
    out = {"manager": "dpkg", "packages": [], "findings": [], "owned": set(), "conffiles": {}}
    result = proc.run(["dpkg-query", "-S"] + targets, env, timeout)
    packages = []
    for line in (result.out or "").splitlines():
        names, sep, path = line.partition(": ")
        if sep and not line.startswith(("diversion ", "local diversion")):
            for name in names.split(", "):
                if name.strip() and name.strip() not in packages:
                    packages.append(name.strip())
            out["owned"].add(path.strip())
    out["packages"] = packages
    if targets[0] not in out["owned"]:
        return out
    verify = proc.run(["dpkg", "--verify"] + packages, env, timeout)
    if verify.rc not in (0, 1):
        out["error"] = proc.describe(verify, "dpkg --verify", timeout)
    out["findings"] = _verify_lines(verify.out)
    # Conffiles (Debian's sitecustomize.py is one): dpkg --verify's md5sums do not always cover
    # them, so each is compared with the md5 dpkg recorded.
    conf = proc.run(["dpkg-query", "-W", "-f=${Conffiles}\n"] + packages, env, timeout)
    for line in (conf.out or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/") and "obsolete" not in fields[2:]:
            out["conffiles"][fields[0]] = fields[1]
    reported = set(f["path"] for f in out["findings"])
    for path, md5 in sorted(out["conffiles"].items()):
        try:
            same = _md5(path) == md5
            reason = "conffile changed (its md5 is not the package's)"
        except (IOError, OSError):
            same, reason = False, "conffile missing"
        if not same and path not in reported:
            out["findings"].append({"path": path, "reason": reason})
    out["owned"].update(_dpkg_owned(tuple(r.rstrip("/") + "/" for r in roots)))
    out["owned"].update(out["conffiles"])
    # The recorded md5 of the packages' regular files: a customize file is accepted only when it
    # is one of them, unchanged (a link the package shipped, replaced by a file, is not).
    out["md5sums"] = dict(out["conffiles"])
    for name in packages:
        try:
            with open(os.path.join(DPKG_INFO, name + ".md5sums")) as handle:
                for line in handle:
                    md5, dummy, rel = line.rstrip("\n").partition("  ")
                    out["md5sums"]["/" + rel] = md5
        except (IOError, OSError, UnicodeDecodeError):
            continue
    return out


def _rpm(targets, roots, env, timeout):
    out = {"manager": "rpm", "packages": [], "findings": [], "owned": set(), "conffiles": {}, "md5sums": {}}
    result = proc.run(["rpm", "-qf", "--qf", "%{NAME}\n", targets[0]] + targets[1:], env, timeout)
    lines = (result.out or "").splitlines()
    for path, name in zip(targets, lines):
        if "not owned" not in name and "No such file" not in name:
            out["owned"].add(path)
            if name.strip() not in out["packages"]:
                out["packages"].append(name.strip())
    if targets[0] not in out["owned"]:
        return out
    verify = proc.run(["rpm", "-V"] + out["packages"], env, timeout)
    out["findings"] = _verify_lines(verify.out)
    files = _candidates(roots)
    if files:
        owners = proc.run(["rpm", "-qf", "--qf", "%{NAME}\n"] + files, env, timeout)
        for line in (owners.out or "").splitlines() + (owners.err or "").splitlines():
            match = re.match(r"^file (/.*) is not owned by any package$", line.strip())
            if not match:
                continue
            out["findings"].append({"path": match.group(1), "reason": "not owned by any package"})
        foreign = set(f["path"] for f in out["findings"])
        out["owned"].update(f for f in files if f not in foreign)
    return out


def _packaged(real, found):
    """A file a package shipped, unchanged: rpm -V checks types and link targets itself; for dpkg,
    its md5 must be the one recorded (md5sums or conffiles)."""
    if found["manager"] != "dpkg":
        return True
    try:
        return real in found["md5sums"] and _md5(real) == found["md5sums"][real]
    except (IOError, OSError):
        return False


def base_python(runtime, env, timeout):
    """The base interpreter the venv's Python runs on (its executable, stdlib and lib-dynload:
    ``runtime["base"]``) against its package manager: ``dpkg --verify`` / ``rpm -V`` of the few
    packages that own it, Debian's conffiles by their recorded md5, and every .py/.pth/.so in
    those directories that no package owns. ``clean_customize``: the sitecustomize/usercustomize
    files on the venv's sys.path that are a package's own, unchanged ({path: sha256}), which
    the audit then accepts. Nothing is cached: every audit asks the package manager again."""
    started = time.time()
    base = (runtime or {}).get("base") or {}
    out = {"manager": None, "packages": [], "findings": [], "clean_customize": {}}
    if not base.get("executable"):
        out["error"] = "not checked: %s" % ((runtime or {}).get("error") or "the base interpreter is unknown")
        return out
    roots = _base_roots(base)
    targets = [base["executable"]] + [os.path.join(r, "os.py") for r in roots[:1]] + roots[1:]
    if shutil.which("dpkg-query", path=env.get("PATH")) and os.path.isdir(DPKG_INFO):
        found = _dpkg(targets, roots, env, timeout)
    elif shutil.which("rpm", path=env.get("PATH")):
        found = _rpm(targets, roots, env, timeout)
    else:
        out["note"] = "neither dpkg nor rpm here: the base interpreter is not verified"
        return out
    out.update(manager=found["manager"], packages=found["packages"], findings=found["findings"])
    if found.get("error"):
        out["error"] = found["error"]
    if base["executable"] not in found["owned"]:
        out["note"] = "%s is no %s package's: the base interpreter is not verified" % (base["executable"], found["manager"])
        out["findings"] = []
        out["seconds"] = round(time.time() - started, 3)
        return out
    if found["manager"] == "dpkg":
        out["findings"] += [{"path": f, "reason": "not owned by any package"} for f in _candidates(roots)
                            if f not in found["owned"]]
    bad = set(f["path"] for f in out["findings"])
    for entry in (runtime or {}).get("customize") or ():
        path, real = entry.get("path"), entry.get("realpath") or entry.get("path")
        if not any(path.startswith(r.rstrip("/") + "/") for r in roots) or path in bad or real in bad:
            continue
        if found["manager"] == "dpkg" and os.path.islink(path) and real not in found["owned"]:  # rpm -V checks links
            out["findings"].append({"path": path, "reason": "a link to %s, which no package owns" % real})
        elif path in found["owned"] and _packaged(real, found):
            out["clean_customize"][path] = _sha256(path)
    out["seconds"] = round(time.time() - started, 3)
    return out


def collect(params, base_env):
    """Raw facts of one host: venv, the venv's files against its manifest, Python (with its
    marker environment), installed distributions, uv, MPI. Never modifies anything."""
    venv = params["venv"]
    venv_real = os.path.realpath(venv)
    env, env_file = venv_environment(venv, base_env, params["env_file"], params["environment"])
    # Read-only: importing mpi4py (probe, smoke ranks) must not write __pycache__ into the venv.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    python = os.path.join(venv, "bin", "python")
    facts = {
        "venv": {
            "path": venv,
            "realpath": venv_real,
            "exists": os.path.isfile(os.path.join(venv_real, "pyvenv.cfg")),
            "env_file": env_file,
        },
    }
    pyvenv_cfg = distributions.read_pyvenv_cfg(venv_real)
    # The files first, before any of the venv's code runs: the report shows the tree as found.
    guessed = distributions.guess_site_packages(venv_real)
    if guessed:
        facts["integrity"], facts["distributions"] = integrity_facts(venv_real, guessed, params)
    py_facts, raw_mpi, error = mpi.probe(python, env, params["timeout"], with_mpi=params["mpi"])
    facts["python"] = py_facts or {}
    if error and not py_facts:
        facts["python"]["error"] = error
    site_packages = (py_facts or {}).get("site_packages") or guessed
    facts["venv"]["site_packages"] = site_packages
    if not guessed:
        facts["integrity"], facts["distributions"] = integrity_facts(venv_real, site_packages, params)
    facts["uv"] = uv_facts(env, params["uv_path"], pyvenv_cfg, params["timeout"])
    if params["mpi"]:
        raw_mpi = raw_mpi if py_facts else {"python_error": error}
        facts["mpi"] = mpi.mpi_facts(raw_mpi or {"error": error}, [venv_real], facts["distributions"], env, python, params)
    if py_facts:
        facts["runtime"] = runtime_facts(params, python, env, env_file)
        facts["base_python"] = base_python(facts["runtime"], env, params["timeout"])
    return facts


def _section(name, given, answer):
    """One role's answer, exactly what its own module would say in check mode (read-only)."""
    params, error = settings(name, given)
    if error:
        return {"error": "%s: %s" % (name, error)}
    facts = answer["facts"]
    if name == "venv" and params.get("mpi_env") is None and "result" in answer.get("mpi", {}):
        # The venv's MPI variables are what the mpi role would hand it: this run's mpi answer.
        params["mpi_env"] = (answer["mpi"]["result"].get("runtime") or {}).get("env") or {}
    try:
        if name == "uv":
            result = uv.run(params, True, answer["diff"], facts)
        elif name == "mpi":
            result = mpi.run(params, True, answer["diff"], facts)
        elif name == "venv":
            result = venv.run(dict(params, stage="plan"), True, answer["env"], facts)
        else:
            return {"digest": digest(name, params), "snapshot": cluster.snapshot(params)}
    except (IOError, OSError, RuntimeError, ValueError, cluster.AccessError) as exc:
        return {"error": "%s: %s" % (name, exc)}
    return {"digest": digest(name, params), "result": result}


def run(params, base_env, module):
    """Every section that was asked for, in one module run: the OS facts the roles need, each
    role's answer (``uv``, ``mpi``, ``venv``: their check-mode plan; ``cluster``: a snapshot of
    the member's files), and the audit's facts (``validate``). A section that cannot be answered
    carries its ``error``; the others still are. Nothing is changed."""
    start = time.time()
    out = {"facts": distributions.os_facts(module), "diff": bool(getattr(module, "_diff", False)),
           "env": base_env}
    # Where a run's time goes on the host (the bench and an operator read it).
    seconds = {"facts": round(time.time() - start, 3)}
    for name in ("uv", "mpi", "venv", "cluster"):
        if params.get(name) is not None:
            begin = time.time()
            out[name] = _section(name, params[name], out)
            seconds[name] = round(time.time() - begin, 3)
    if params.get("validate"):
        begin = time.time()
        options = params["validate"]
        env_file = options.get("env_file")
        if env_file and not os.path.isfile(env_file):
            out["validate"] = {"error": "env_file %s does not exist" % env_file}
        else:
            try:
                out["validate"] = collect(options, base_env)
            except (IOError, OSError, RuntimeError, ValueError) as exc:
                out["validate"] = {"error": "the probe failed: %s" % exc}
        seconds["validate"] = round(time.time() - begin, 3)
    out["seconds"] = seconds
    out.pop("diff")
    out.pop("env")
    return out
