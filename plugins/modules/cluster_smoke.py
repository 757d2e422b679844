#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""One MPI launch across the cluster, as the benchmark user (module_utils/cluster_smoke.py; plugins/action/cluster_smoke.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cluster_smoke
short_description: One MPI launch across the cluster, as the benchmark user
version_added: 0.2.0
description:
  - Runs on every member after M(lockstep.cluster.probe) ran there; the action plugin elects the
    launching host (the first checked member whose launcher is of the ABI family most members
    have, the rule M(lockstep.cluster.validate) blames by) and launches from it only; the other
    members skip without a host round trip. Read-only on every host.
  - A member that is a host already listed under another inventory name (the same SSH host key
    in its facts; without keys, the same C(machine_id) at the same C(ansible_host)) is left out
    of the election and the launch, and marked (C(same_as), C(same_by)) for the verdict.
  - First every hostfile name of the members is resolved on the launching host
    (C(getaddrinfo)); a name that does not resolve is named and left out, and the launch runs
    across the others (a launcher would abort the whole job on it).
  - Then one BatchMode C(ssh <host>) per other member, in parallel, as O(user), which also
    looks for the launcher's daemon there (C(orted)/C(prted) or C(hydra_pmi_proxy)). A host
    SSH cannot reach, that refuses the login, whose host key does not match or that lacks the
    daemon is named with that cause and left out of the launch.
  - "Then one C(mpiexec) across the remaining members, as O(user) (privileges dropped with
    C(setpriv)), with O(hostfile) (only its lines of the launched hosts) and the venv's own
    C(<venv>/bin/python) on every rank, one rank per host. Open MPI: C(--hostfile),
    C(--map-by node), C(--mca plm_rsh_args \"-o BatchMode=yes\"), the venv's variables
    forwarded with C(-x), C(--allow-run-as-root) only when O(user) is root. MPICH:
    C(-f hostfile -launcher ssh -ppn 1)."
  - Each rank reports, before C(MPI_Init), its host, the venv's real path, the Python and
    mpi4py versions, the libmpi it loaded, C(MPI.Get_library_version()) and a digest of the
    installed packages, and what its environment adds to the venv's Python (C(runtime) - where
    numpy, mpi4py and its C(MPI) extension come from, C(PYTHONPATH), C(PYTHONHOME),
    C(PYTHONSTARTUP), C(PYTHONUSERBASE), C(LD_PRELOAD), C(LD_LIBRARY_PATH) with the startup files
    that set them - C(/etc/environment), C(~/.bashrc), C(/etc/profile.d/*.sh)... - and
    sitecustomize/usercustomize/.pth files on its C(sys.path) outside the venv); then it does an
    allreduce and a ring exchange.
  - With O(shared_dirs), every rank then checks those directories (see O(shared_dirs)).
  - On O(timeout) the launcher's process group gets SIGTERM (the launcher tears down its
    remote daemons), then SIGKILL after O(grace). After any failed launch, every launched host
    is swept - rank processes of this launch (by its token) and the launcher's daemons
    (C(orted), C(prted), C(hydra_pmi_proxy) of O(user) that started since the launch began and
    name the launching host) still alive are killed by pid.
  - Only when the launch timed out or ranks did not finish, its inbound TCP is checked - a
    one-shot listener (port 0, C(python3) or the venv's) on each other launched host over SSH
    and a connect to it from the launching host, and a listener on the launching host that
    the first reachable member connects to; 5 s each. A host that cannot be reached is the
    one whose ranks never connected. Nothing of this runs when the launch passes.
  - M(lockstep.cluster.validate) judges the launch on the controller against each host's own
    M(lockstep.cluster.probe) result (O(probe_var)) and names one cause per host - another
    inventory name of a host already listed, name does not resolve, not reachable over SSH,
    host key mismatch, login refused, the venv's Python missing, mpi4py import error,
    launcher/flavor mismatch, the rank's environment adds to the venv's Python (C(rank_env),
    with the variable or file and where it was set), environment on the rank differs from the
    host's own report, inbound TCP blocked (ranks never connected), rank missing, rank failed.
    For the hosts it covers, the launch is their smoke
    test (one MPI launch per audit).
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
attributes:
  check_mode:
    support: full
    details: Changes nothing on any host, so check mode launches the same way.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with C(setpriv) (util-linux), C(ssh) and C(pgrep).
options:
  members:
    description: Every host of the group (inventory names), usually C(ansible_play_hosts_all).
    type: list
    elements: str
    required: true
  probe_var:
    description:
      - Variable each member registered its M(lockstep.cluster.probe) result in. Members
        without an audit there (unreachable, failed) are not launched on.
      - Empty to launch from the first member on every member.
    type: str
    default: _validate_probe
  venv:
    description: The venv whose C(bin/python) every rank runs (the same path on every host).
    type: path
    required: true
  user:
    description: The benchmark user the launch runs as.
    type: str
    default: bench
  hostfile:
    description: The hostfile the cluster role wrote (C(cluster.json) beside it names each member).
    type: path
    default: /etc/lockstep/hostfile
  launcher:
    description: The launcher. Default C(mpiexec), then C(mpirun), on the venv's C(PATH).
    type: path
  env_file:
    description: C(KEY=VALUE) file applied to the launch environment; default C(<venv>/lockstep.env) when present.
    type: path
  environment:
    description: Extra environment for the launch (forwarded to every rank).
    type: dict
    default: {}
  preflight:
    description: Check SSH to every other member before the launch (names unreachable hosts and host key mismatches).
    type: bool
    default: true
  ssh_timeout:
    description: Connect timeout (seconds) of each SSH check.
    type: int
    default: 10
  timeout:
    description: Seconds allowed for the launch.
    type: int
    default: 120
  grace:
    description: Seconds between SIGTERM and SIGKILL when the launch times out.
    type: int
    default: 10
  hosts:
    description: Internal, set by the action plugin; hostfile names of the members the controller reached.
    type: list
    elements: str
  shared_dirs:
    description:
      - Directories a benchmark run will share (data, results, checkpoints), the same absolute
        path on every host. After its collectives every rank checks each one as O(user) - it
        exists, a file can be created and fsynced there, free space (C(statvfs), what a non-root
        user may use), the filesystem type, source and mount options (C(/proc/self/mountinfo)).
      - Then whether it is the same storage on every host, proved by content and never by
        C(st_dev)/inode - the lowest rank that can write creates C(.lockstep-shared-<token>-<n>)
        with a random secret, an allgather (the barrier), every rank reads it back, an
        allgather, the writer removes it. Ranks that did not see it get a round of their own
        (up to 4 rounds), so a host that is the odd one out is told apart from the others.
      - Every rank reaches every collective whatever its directories do - a rank that cannot
        write only writes nothing. M(lockstep.cluster.validate) judges the reports.
    type: list
    elements: str
    default: []
  shared_min_free:
    description:
      - Free space each of O(shared_dirs) must have on every host, in bytes or with a unit -
        C(500M), C(20G), C(1.5T) (K, M, G, T, P are powers of 1024; C(G), C(Gi) and C(GiB) are
        the same). C(0) checks no amount (a full filesystem still fails the write check).
    type: raw
    default: "0"
  shared_timeout:
    description:
      - Seconds each step of the storage check (the local check, writing, reading, removing the
        file) may take on a rank; a directory still busy then (a hung mount) is reported as
        such and skipped by that rank from then on, and the rank goes on to the next collective.
      - Keep O(timeout) above a few times this when O(shared_dirs) may hang.
    type: int
    default: 10
notes:
  - Run it on every member (no C(run_once)); only the elected host contacts anyone.
seealso:
  - module: lockstep.cluster.cluster
  - module: lockstep.cluster.probe
"""

EXAMPLES = r"""
- name: Probe every host
  lockstep.cluster.probe:
    validate:
      venv: /opt/lockstep/venv
      smoke_test: false
  register: _validate_probe

- name: One launch across every host as bench
  lockstep.cluster.cluster_smoke:
    members: "{{ ansible_play_hosts_all }}"
    venv: /opt/lockstep/venv
  register: _validate_cluster

- name: The same, and the data and results directories shared by every host, 20 GiB free
  lockstep.cluster.cluster_smoke:
    members: "{{ ansible_play_hosts_all }}"
    venv: /opt/lockstep/venv
    shared_dirs: [/mnt/data, /mnt/results]
    shared_min_free: 20G
  register: _validate_cluster
"""

RETURN = r"""
launch_host:
  description: The elected launching host (null when no member was checked).
  returned: always
  type: str
election:
  description: C(host), C(family) (the ABI family most members' launchers have) and C(counts) per family.
  returned: always
  type: dict
launched:
  description: This host launched (the others skipped).
  returned: on the launching host
  type: bool
members:
  description:
    - Per member C(host), C(name) (its hostfile name) and C(aliases); a host listed again also
      C(same_as) (the first inventory name) and C(same_by) (the evidence, e.g. the SSH host key's fingerprint).
  returned: on the launching host
  type: list
  elements: dict
smoke:
  description:
    - What the launching host saw - C(launcher), C(preflight) per host, C(launched_hosts),
      C(command), C(returncode), C(timed_out), C(seconds), C(ranks) (each rank's tagged
      reports; with O(shared_dirs) a C(storage) phase per rank), C(stderr_tail), C(stragglers)
      (per host the pids killed after a failed launch), C(error), C(storage) (C(dirs), C(min_free) in bytes,
      C(timeout)) when O(shared_dirs) is set, C(rank_env_expected) (the interpreter variables the
      launch sets itself - the env file's and O(environment)'s, which the verdict does not blame).
    - C(resolved) (per name its C(addresses) or C(error)) and C(unresolved) (name -> the resolver's
      message) of the names resolved before the launch.
    - C(inbound), only after a launch that timed out or whose ranks did not finish - per launched
      host C(ok) (null when no listener started), C(port), C(from) (the host that connected),
      C(seconds) and C(error) (e.g. C(TCP to lab-2:41234 from lab-1 timed out after 5s)).
  returned: on the launching host
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster_smoke import ARGUMENT_SPEC, run, storage_plan


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        storage_plan(module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if module.params["env_file"] and not os.path.isfile(module.params["env_file"]):
        module.fail_json(msg="env_file %s does not exist" % module.params["env_file"])
    try:
        result = run(module.params, dict(os.environ))
    except (IOError, OSError, ValueError) as exc:
        module.fail_json(msg="cluster smoke test failed to run: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
