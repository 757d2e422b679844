# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Judge an audit and write its reports (documentation only: plugins/action/validate.py does the work)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: validate
short_description: Judge every host of an audit against the lock and each other, write the reports, fail in one place
version_added: 0.1.0
description:
  - Runs on the controller only (action plugin; nothing is executed on the hosts), once per play (C(run_once)).
  - "Reads each host's registered M(lockstep.cluster.probe) result and judges it against the lock
    O(lockfile), parsed here with C(packaging): packages missing, extra or of another version
    (PEP 440 equality, PEP 503 names, markers evaluated for the B(venv's) Python), files that
    differ from the venv's manifest, GPU packages, the Python version against the lock's header,
    uv against O(uv_version), mpi4py against the system MPI (a verdict of C(unknown) is a
    failure with its reasons), and the smoke test: the host's own C(mpiexec -n 2) or, when the
    cluster launch (M(lockstep.cluster.cluster_smoke), O(cluster_var)) covered the host, its rank
    there (one MPI launch per audit)."
  - "Check C(rank_env): what the cluster user's login environment adds to the venv's Python on the
    host (the probe's C(runtime)): C(numpy), C(mpi4py) or its C(MPI) extension (or any other module)
    imported from outside the venv, C(PYTHONPATH), C(PYTHONHOME), C(PYTHONSTARTUP), C(PYTHONUSERBASE),
    C(LD_PRELOAD) or C(LD_LIBRARY_PATH) beyond what the venv's env file and the validate role's C(environment)
    set, named with the startup file and line that sets it (C(/etc/environment), C(~/.bashrc),
    C(/etc/profile.d/x.sh)...), and sitecustomize/usercustomize/.pth files on its C(sys.path) outside
    the venv that are not the package manager's own unchanged file. Check C(base_python): the base
    interpreter's files changed or missing by C(dpkg --verify) / C(rpm -V) (conffiles by their md5),
    and files in its stdlib and lib-dynload no package owns, each by path."
  - "Then the hosts against each other, in one comparison: they must agree on the lock their
    venv was built from, the venv path, Python, the installed packages, files that differ from
    the manifest, the MPI library and launcher, mpi4py and its variant, and uv. A host that
    disagrees is named with the field. The cluster launch names one cause per host - among them
    C(duplicate_host) (another inventory name of a host already listed, naming both),
    C(name_unresolved) (its hostfile name does not resolve from the launching host),
    C(rank_env) (a rank imports from outside the venv, runs with such a variable or such a file -
    every rank reports them - with the variable or file and where it was set) and
    C(inbound_blocked) (its ranks never connected; TCP to it from the launching host failed) -
    and hosts whose rank a fault elsewhere brought down as C(aborted), naming that host."
  - Writes under O(dest)/O(run_id) one C(<host>.json) per host, C(summary.md) (the causes first,
    one row per host, the comparison, unreachable hosts, findings, the Cluster section),
    C(junit.xml) (one testcase per host and check, a C(cluster) testsuite) and C(cluster.json),
    then points O(dest)/C(latest) at that directory (a C(latest) that is not a symlink is left as it
    is and fails the task, naming it, since it would be stale).
  - A host without a probe (it left the play earlier) or whose probe failed is reported as such,
    never dropped. A check that was asked for and could not run is a failure, never a skip.
  - With O(fail_on_drift), the task fails after writing, and its message names every host that
    is not ok with its cause.
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
  - lockstep.cluster.lockstep.LOCKFILE
attributes:
  check_mode:
    support: full
    details: Reports are written in check mode too; the hosts are not touched.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Controller only.
options:
  hosts:
    description: Every host of the play, usually C(ansible_play_hosts_all).
    type: list
    elements: str
    required: true
  cluster:
    description:
      - The cluster role's settings (the C(lockstep.cluster.cluster) module's options). Given, each member's
        cluster files (hostfile, member file, the key pair, authorized_keys, known_hosts, ssh config) are
        compared with what that role would write now, from the probe's snapshot of them; an earlier
        cluster user that still holds the key is named.
    type: dict
  roles:
    description:
      - The provisioning roles whose work is checked as those roles would (C(uv), C(cluster)). One whose answer the
        probe does not carry (its settings were not loaded) is a failure with that reason, never a pass.
    type: list
    elements: str
    choices: [uv, cluster]
    default: []
  probe_var:
    description: Name of the variable each host registered its M(lockstep.cluster.probe) result in.
    type: str
    default: _validate_probe
  cluster_var:
    description:
      - Name of the variable the M(lockstep.cluster.cluster_smoke) results were registered in (the
        launching host's carries the launch; the others skipped).
    type: str
    default: _validate_cluster
  cluster_smoke:
    description:
      - The cluster launch was asked for. With more than one host, a launch that did not happen
        is a failure with its reason.
    type: bool
    default: true
  smoke_test:
    description: A smoke test was asked for (the host's own, or its rank in the cluster launch).
    type: bool
    default: true
  ignore_packages:
    description: Installed distributions never reported as extra (for example C(pip) in a seeded venv).
    type: list
    elements: str
    default: []
  uv_version:
    description:
      - The uv version the hosts must have. Not checked when omitted (the version is still
        reported); a uv that is found but does not run is a failure either way.
    type: str
  dest:
    description: Report directory on the controller (relative to the current directory).
    type: path
    required: true
  run_id:
    description: Name of this run's subdirectory.
    type: str
    required: true
  fail_on_drift:
    description:
      - Fail, after writing the reports, when a host drifted, was unreachable or its probe failed,
        or the hosts do not work as one cluster.
    type: bool
    default: false
  earlier_vars:
    description:
      - Variables a host registered while it was provisioned (name to what set it). For a host that
        left the play before the check, a failed one says why in the summary (for example the venv
        build killed on the host) instead of calling it unreachable.
    type: dict
    default: {_venv_sync: the venv role}
notes:
  - Use with C(run_once).
"""

EXAMPLES = r"""
- name: Probe every host
  lockstep.cluster.probe:
    validate:
      venv: /opt/lockstep/venv
  register: _validate_probe

- name: Judge the hosts and write the reports on the controller
  lockstep.cluster.validate:
    hosts: "{{ ansible_play_hosts_all }}"
    lockfile: lockfiles/smoke-cpu.txt
    cluster_smoke: false
    dest: reports
    run_id: "{{ now(utc=true, fmt='%Y%m%dT%H%M%SZ') }}"
    fail_on_drift: true
  run_once: true
"""

RETURN = r"""
directory:
  description: The run's report directory.
  returned: success
  type: str
files:
  description: Files written.
  returned: success
  type: list
  elements: str
table:
  description: One header line and one line per host (host, status, counts, MPI flavor, ABI verdict, smoke, fingerprint).
  returned: success
  type: list
  elements: str
statuses:
  description: Host -> C(ok), C(drift), C(error) or C(unreachable).
  returned: success
  type: dict
drifted_hosts:
  description: Hosts with status C(drift).
  returned: success
  type: list
  elements: str
unreachable_hosts:
  description: Hosts that could not be checked (unreachable, or the check failed).
  returned: success
  type: list
  elements: str
gate:
  description:
    - The cross-host comparison. C(passed), C(reference) (field -> the most common value), C(values) (host -> field ->
      value) and C(disagreements) (host -> list of C(field), C(value), C(reference)).
  returned: success
  type: dict
cluster:
  description: C(verdict) (C(pass) or C(fail)), C(failed_hosts) and C(problems).
  returned: success
  type: dict
reports:
  description:
    - Per host its C(status), C(problems), C(counts), C(checks) (per check C(outcome) and C(message)) and
      C(fingerprint); a host that could not be checked has C(status) and C(message). The whole facts are in
      C(<host>.json).
  returned: success
  type: dict
problems:
  description: One line per host that is not ok, naming the host and the cause, then the cluster's findings.
  returned: success
  type: list
  elements: str
"""
