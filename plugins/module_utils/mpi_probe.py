# Host side: shipped to the host with the modules that import it (stdlib only).
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host side: the venv's Python and mpi4py against the system MPI (stdlib only).

The facts come from a script run by the venv's own interpreter with the venv's environment
(``LD_LIBRARY_PATH`` decides which libmpi loads), with ``mpi4py.rc.initialize = False`` so
no MPI_Init happens; ``/proc/self/maps`` then names the libmpi really loaded. Only a launch
proves the launcher matches the library, hence the separate ``mpiexec -n 2`` smoke test.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.lockstep.cluster.plugins.module_utils import proc
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi_ident import (
    family,
    flavor_of_path,
    parse_launcher_version,
    parse_library_version,
    root_env,
)

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
