# Controller side: documentation only, the work is done by plugins/action/drift_report.py.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: drift_report
short_description: Write the cluster drift reports from every host's env_drift result
version_added: 0.1.0
description:
  - Runs on the controller only (action plugin; nothing is executed on the hosts).
  - Reads each host's registered M(lockstep.cluster.env_drift) result from C(hostvars) and
    writes under O(dest)/O(run_id) one C(<host>.json) per host, C(summary.md) (one row per
    host, cross-host consistency, unreachable hosts, findings) and C(junit.xml) (one testcase
    per host and check), then points O(dest)/C(latest) at that directory (a C(latest) that is not
    a symlink is left as it is and fails the task, naming it, since it would be stale).
  - A host without a result (it left the play earlier) or with an unreachable or failed
    result is reported as such, never dropped.
  - Hosts are grouped by fingerprint; hosts outside the largest group are called out with
    what differs from it.
author:
  - lockstep.cluster maintainers (@lockstep)
attributes:
  check_mode:
    support: full
    description: Reports are written in check mode too; the hosts are not touched.
  diff_mode:
    support: none
    description: No diff.
  action:
    support: full
    description: Implemented by the action plugin.
  platform:
    support: full
    platforms: posix
    description: Controller only.
options:
  hosts:
    description: Every host of the play, usually C(ansible_play_hosts_all).
    type: list
    elements: str
    required: true
  result_var:
    description: Name of the variable each host registered the env_drift result in.
    type: str
    default: _validate_result
  dest:
    description: Report directory on the controller (relative to the current directory).
    type: path
    required: true
  run_id:
    description: Name of this run's subdirectory.
    type: str
    required: true
  fail_on_drift:
    description: Fail when a host drifted, was unreachable or its check failed, or the cluster check failed (after writing).
    type: bool
    default: false
  cluster_var:
    description:
      - Name of the variable the M(lockstep.cluster.cluster_smoke) result was registered in
        (with C(run_once), on every host). Its verdict goes into the Cluster section.
      - Whether or not it ran, the hosts that were checked are compared (the cross-host gate).
    type: str
    default: _validate_cluster
  earlier_vars:
    description:
      - Variables a host registered while it was provisioned (name to what set it). For a host that
        left the play before the check, a failed one says why in the summary (for example the venv
        build killed on the host) instead of calling it unreachable.
    type: dict
    default: {_venv_sync: the venv role (uv_sync)}
notes:
  - Use with C(run_once).
  - "The Cluster section of C(summary.md) and the C(cluster) testsuite of C(junit.xml): the
    gate (every host must agree on lock sha256, venv path, Python, MPI library, MPI launcher,
    mpi4py and its variant, uv; a host that disagrees is named with the field) and the smoke
    test (per host: status or cause, ranks, timings)."
"""

EXAMPLES = r"""
- name: Write the drift reports on the controller
  lockstep.cluster.drift_report:
    hosts: "{{ ansible_play_hosts_all }}"
    result_var: drift
    dest: reports
    run_id: "{{ now(utc=true, fmt='%Y%m%dT%H%M%SZ') }}"
  run_once: true
  register: report
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
consistency:
  description: C(consistent), C(groups) (fingerprint and hosts, largest first) and C(outliers) (host -> reference host and differences).
  returned: success
  type: dict
cluster:
  description: C(verdict) (C(pass) or C(fail)), C(failed_hosts) and C(problems) (one line per disagreeing field or failing host).
  returned: success
  type: dict
"""
