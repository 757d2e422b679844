"""Measure site.yml and the venv role against their floors, on one lab container.

Prints ratios, asserts nothing:

  rerun     converged re-run of site.yml  vs  a one-task play on the same host
            (what the roles cost beyond Ansible's own per-play overhead)
  sync      the venv role syncing a new venv  vs  a bare `uv venv && uv pip sync` of the
            same lock, with a cold uv cache and with a warm one (the price of the lock
            policy, the uv --check calls, validation and the atomic flip)
  no-op     the venv role with nothing to do  vs  a bare `uv pip sync --check`

Usage: python3 bench/site_bench.py [--runs N] [--lock lockfiles/smoke-cpu.txt] [--image IMAGE] [--keep]
Needs podman (CONTAINERS_CONF=lab/containers.conf on the lab machine) and the controller venv
on PATH. Times are wall clock medians; the machine's other load shows up in them.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NAME = "lockstep-bench-site"
CA = "/etc/ssl/host-ca.crt"
UV = "/usr/local/bin/uv"
STATE = "/var/lib/lockstep"


def sh(argv, **kwargs):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kwargs)


def quiet(argv):
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def timed(argv, env=None):
    start = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                          check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit("bench: %s failed:\n%s" % (" ".join(argv[:6]), proc.stdout[-3000:]))
    return elapsed


def median_of(runs, fn):
    samples = [fn(i) for i in range(runs)]
    return statistics.median(samples), samples


def in_container(script):
    return ["podman", "exec", NAME, "bash", "-ec", script]


class Lab(object):
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="lockstep-bench-")
        self.inventory = os.path.join(self.work, "inventory.yml")
        self.lock = os.path.abspath(args.lock)
        host_vars = {
            "ansible_connection": "containers.podman.podman",
            "mpi_flavor": "openmpi",
            "mpi_allow_run_as_root": True,
            "uv_ca_bundle": CA,
            "venv_ca_bundle": CA,
            "venv_cache_dir": STATE + "/uv-cache",
            "venv_store_dir": STATE + "/venvs",
            "venv_lockfile": self.lock,
        }
        with open(self.inventory, "w") as handle:
            json.dump({"all": {"hosts": {NAME: host_vars}}}, handle)
        self.env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
                        ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".collections"))

    def start(self):
        quiet(["podman", "rm", "-f", "-t", "0", NAME])
        quiet(["podman", "volume", "rm", "-f", "lockstep-state-bench"])
        sh(["podman", "run", "-d", "--name", NAME, "--hostname", NAME, "--network", "host",
            "-v", "/etc/ssl/certs/ca-certificates.crt:%s:ro" % CA,
            "-v", "lockstep-apt-bench:/var/cache/apt/archives",
            "-v", "lockstep-apt-lists-bench:/var/lib/apt/lists",
            "-v", "lockstep-state-bench:%s" % STATE,
            self.args.image, "sleep", "infinity"])

    def stop(self):
        shutil.rmtree(self.work, ignore_errors=True)
        if not self.args.keep:
            quiet(["podman", "rm", "-f", "-t", "0", NAME])
            quiet(["podman", "volume", "rm", "-f", "lockstep-state-bench"])

    def playbook(self, text, name):
        path = os.path.join(self.work, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def play(self, playbook, *extra):
        return timed(["ansible-playbook", "-i", self.inventory, playbook] + list(extra), env=self.env)

    def play_module_time(self, playbook, *extra):
        """(wall time of the play, seconds spent in the commands uv_sync ran)."""
        env = dict(self.env, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
        start = time.monotonic()
        proc = subprocess.run(["ansible-playbook", "-i", self.inventory, playbook] + list(extra), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit("bench: %s failed:\n%s" % (playbook, proc.stdout[-3000:] + proc.stderr[-2000:]))
        inner = 0.0
        for play in json.loads(proc.stdout)["plays"]:
            for task in play["tasks"]:
                for res in task["hosts"].values():
                    for line in res.get("commands", []) if "Sync the venv" in task["task"]["name"] else []:
                        inner += float(line.split()[-2].rstrip("s"))
        return elapsed, inner


ONE_TASK = """\
- name: One task
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""

PYENV_ONLY = """\
- name: The venv role alone
  hosts: all
  gather_facts: true
  gather_subset: [min]
  roles:
    - role: lockstep.cluster.venv
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lock", default=os.path.join(REPO, "lockfiles", "smoke-cpu.txt"))
    parser.add_argument("--image", default=os.environ.get("LOCKSTEP_IMAGE_DEBIAN12", "localhost/lockstep-debian12:latest"))
    parser.add_argument("--keep", action="store_true", help="keep the container and its volume")
    args = parser.parse_args()
    os.environ.setdefault("CONTAINERS_CONF", os.path.join(REPO, "lab", "containers.conf"))

    lab = Lab(args)
    lab.start()
    try:
        site = os.path.join(REPO, "playbooks", "site.yml")
        one = lab.playbook(ONE_TASK, "one-task.yml")
        venv = lab.playbook(PYENV_ONLY, "venv.yml")
        lock_in = STATE + "/bench-lock.txt"
        sh(["podman", "cp", lab.lock, "%s:%s" % (NAME, lock_in)])

        first = lab.play(site)
        print("site.yml first converge (bare host): %.1f s" % first)

        site_t, site_s = median_of(args.runs, lambda i: lab.play(site))
        one_t, one_s = median_of(args.runs, lambda i: lab.play(one))

        bare_env = "export SSL_CERT_FILE=%s UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1;" % CA

        def bare(cold):
            def run(i):
                clear = "rm -rf %s/bare-cache;" % STATE if cold else ""
                return timed(in_container(
                    bare_env + clear + "rm -rf %s/bare-venv; %s venv -q --python /usr/bin/python3 %s/bare-venv; "
                    "%s pip sync -q --require-hashes --cache-dir %s/bare-cache --python %s/bare-venv/bin/python %s"
                    % (STATE, UV, STATE, UV, STATE, STATE, lock_in)))
            return run

        inner = {}

        def role(cold, label):
            def run(i):
                if cold:
                    timed(in_container("rm -rf %s/uv-cache" % STATE))
                # A fresh key each time: the role must build a new venv (never reuse one).
                wall, module = lab.play_module_time(
                    venv, "-e", json.dumps({"venv_env": {"BENCH_RUN": "%s-%d-%f" % (cold, i, time.time())}}))
                inner.setdefault(label, []).append(module)
                return wall
            return run

        # Prime the bare cache once so "warm" means warm for both.
        bare(True)(0)
        cold_role, cold_role_s = median_of(args.runs, role(True, "cold"))
        cold_bare, cold_bare_s = median_of(args.runs, bare(True))
        warm_role, warm_role_s = median_of(args.runs, role(False, "warm"))
        warm_bare, warm_bare_s = median_of(args.runs, bare(False))

        lab.play(venv)  # settle on the key of a plain venv run

        def noop(i):
            wall, module = lab.play_module_time(venv)
            inner.setdefault("noop", []).append(module)
            return wall
        noop_role, noop_role_s = median_of(args.runs, noop)
        noop_bare, noop_bare_s = median_of(args.runs, lambda i: timed(in_container(
            bare_env + "%s pip sync -q --check --require-hashes --cache-dir %s/uv-cache --python /opt/lockstep/venv/bin/python %s"
            % (UV, STATE, lock_in))))

        rows = [
            ("rerun", "site.yml converged re-run", site_t, "one-task play", one_t),
            ("sync cold", "venv role, new venv, cold cache", cold_role, "bare uv venv + pip sync", cold_bare),
            ("sync warm", "venv role, new venv, warm cache", warm_role, "bare uv venv + pip sync", warm_bare),
            ("no-op", "venv role, nothing to do", noop_role, "bare uv pip sync --check", noop_bare),
        ]
        print("lock: %s, runs: %d (medians, wall clock)" % (os.path.relpath(lab.lock, REPO), args.runs))
        print("%-10s %-36s %8s   %-26s %8s   %6s" % ("", "measured", "s", "floor", "s", "ratio"))
        for key, what, t, floor, f in rows:
            print("%-10s %-36s %8.2f   %-26s %8.2f   %6.1fx" % (key, what, t, floor, f, t / f))
        # The same comparison without Ansible's per-task cost: the time uv_sync spent in the
        # commands it ran (uv venv, sync, --check, the import validation, uv pip list).
        print("inside the module (uv + validation only):")
        for key, floor, label in (("sync cold", cold_bare, "cold"), ("sync warm", warm_bare, "warm"),
                                  ("no-op", noop_bare, "noop")):
            t = statistics.median(inner[label])
            print("%-10s %-36s %8.2f   %-26s %8.2f   %6.1fx"
                  % (key, "uv_sync's own commands", t, "same floor", floor, t / floor))
        print("samples: site=%s one=%s cold_role=%s cold_bare=%s warm_role=%s warm_bare=%s noop_role=%s noop_bare=%s"
              % tuple(["/".join("%.1f" % x for x in s) for s in
                       (site_s, one_s, cold_role_s, cold_bare_s, warm_role_s, warm_bare_s, noop_role_s, noop_bare_s)]))
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
