#!/usr/bin/python
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make the hosts of a play one MPI cluster reachable over SSH as a benchmark user (module_utils/cluster.py; plugins/action/cluster.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cluster
short_description: Make the hosts of a play one MPI cluster reachable over SSH as a benchmark user
version_added: 0.2.0
description:
  - For every host of O(hosts) that was reached in this play, writes the same view of the
    cluster, so one C(mpiexec) on any member can start ranks on all of them as O(user).
  - "The hostfile O(hostfile) in the syntax of O(flavor): Open MPI C(host slots=N), MPICH/Hydra
    C(host:N). A member is named by its C(cluster_address) host variable (default its inventory
    name), with its C(cluster_slots) slots (uneven ranks per host), else its
    C(cluster_slots_per_host), else O(slots); C(cluster.json) beside the
    hostfile names the member itself (the cluster smoke test maps ranks to hosts with it)."
  - "Passwordless SSH for O(user) between every pair of members (O(manage_keys)): one ed25519
    key pair per cluster, generated once on the controller under O(key_dir) and pushed as
    C(~/.ssh/id_lockstep) only when the host's copy differs (only its sha256 is compared, the
    key is never in module arguments or results); its public key in a managed block of
    C(~/.ssh/authorized_keys)."
  - "C(known_hosts) pinned from the members' real host keys (O(manage_known_hosts)): the keys
    come from the facts the play already gathered (C(ssh_host_key_*_public), part of the
    C(min) subset), under every name and address of the member. A managed block in
    C(~/.ssh/config) makes SSH to the members non-interactive (C(BatchMode yes)) and strict
    (C(StrictHostKeyChecking yes)), and selects the cluster key."
  - O(user) is created with M(ansible.builtin.user) when missing and O(manage_user) is set.
    When O(user) is C(root), Open MPI's run-as-root switch is exported at the top of C(~/.bashrc).
  - Lines outside the managed blocks are never touched. Files are written through a temp
    file and C(rename(2)), never through a symlink.
  - One module run on a converged host; the action plugin computes everything on the controller.
author:
  - lockstep.cluster maintainers (@lockstep)
extends_documentation_fragment:
  - lockstep.cluster.lockstep
  - lockstep.cluster.lockstep.ACTION
  - lockstep.cluster.lockstep.PLATFORM
attributes:
  check_mode:
    support: full
    details: Predicts every change; a key pair not yet generated on the controller is not generated.
  diff_mode:
    support: full
    details: Shows the hostfile and the managed blocks; never the private key.
  platform:
    platforms: posix
options:
  hosts:
    description: The members of the cluster, usually C(ansible_play_hosts_all). Hosts without facts in this play are left out (and named).
    type: list
    elements: str
    required: true
  user:
    description: The benchmark user MPI ranks run as.
    type: str
    default: bench
  name:
    description: Name of the cluster (the key pair's file name under O(key_dir) and its comment).
    type: str
    required: true
  key_dir:
    description: Controller directory of the cluster key pairs (created with mode 0700).
    type: path
    required: true
  hostfile:
    description: Path of the hostfile on every member.
    type: path
    default: /etc/lockstep/hostfile
  flavor:
    description: MPI flavor whose launcher reads the hostfile.
    type: str
    choices: [openmpi, mpich]
    required: true
  slots:
    description: Slots of a member that sets neither C(cluster_slots) nor C(cluster_slots_per_host).
    type: int
    default: 1
  manage_user:
    description: Create O(user) when missing. When false a missing user is an error.
    type: bool
    default: true
  manage_keys:
    description: Manage the cluster key pair and C(authorized_keys). Turn off where users and keys are managed elsewhere (LDAP, shared home).
    type: bool
    default: true
  manage_known_hosts:
    description: Pin the members' host keys in O(user)'s C(known_hosts).
    type: bool
    default: true
  user_shell:
    description: Login shell of a created O(user).
    type: str
    default: /bin/bash
  stage:
    description: Internal, set by the action plugin. V(plan) only looks; V(apply) writes.
    type: str
    choices: [plan, apply]
    default: plan
  files:
    description:
      - Internal, set by the action plugin; the files computed on the controller (path, kind,
        content or sha256, owner, mode).
    type: list
    elements: dict
  private_key_src:
    description: Internal, set by the action plugin; where it pushed the private key on the host.
    type: path
  stale_users:
    description:
      - Internal, set by the action plugin; users other than O(user) that still hold the cluster key or its
        blocks (an earlier cluster user). Their key pair and managed blocks are removed.
    type: list
    elements: str
notes:
  - Needs the facts of the members (site.yml gathers C(min), which includes the SSH host keys).
  - Members are the hosts given, so C(--limit) shrinks the cluster on the hosts it runs on;
    pass a fixed group (for example C(groups['clients'])) to keep it.
seealso:
  - module: lockstep.cluster.cluster_smoke
"""

EXAMPLES = r"""
- name: One cluster of the play's hosts, benchmarks run as bench
  lockstep.cluster.cluster:
    hosts: "{{ ansible_play_hosts_all }}"
    name: storage-clients
    key_dir: "{{ lookup('ansible.builtin.env', 'HOME') }}/.lockstep/cluster-keys"
    flavor: "{{ mpi_runtime.flavor }}"

- name: LDAP users with shared homes, only the hostfile
  lockstep.cluster.cluster:
    hosts: "{{ groups['clients'] }}"
    user: alice
    name: clients
    key_dir: /srv/lockstep/keys
    flavor: mpich
    manage_user: false
    manage_keys: false
    manage_known_hosts: false
"""

RETURN = r"""
hostfile:
  description: Path of the hostfile.
  returned: always
  type: str
members:
  description: Hostfile names of the members, in order.
  returned: always
  type: list
  elements: str
left_out:
  description: Hosts of O(hosts) without facts in this play (unreachable), not in the hostfile.
  returned: always
  type: list
  elements: str
changes:
  description: What was (or in check mode would be) created or updated.
  returned: always
  type: list
  elements: str
  sample: ["create user bench", "update /home/bench/.ssh/known_hosts (content)"]
user:
  description: The user as found on the host (C(name), C(exists), C(uid), C(gid), C(home)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import (
    ARGUMENT_SPEC,
    AccessError,
    apply,
    plan,
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["stage"] == "apply" and module.check_mode:
        module.fail_json(msg="stage=apply cannot run in check mode")
    if not module.params["files"]:
        module.fail_json(msg="files is set by the action plugin: run this module through its action")
    try:
        if module.params["stage"] == "plan":
            result = plan(module.params)
            module.exit_json(changed=False, **result)
        result = apply(module.params)
    except (AccessError, IOError, OSError) as exc:
        module.fail_json(msg="cluster: %s" % exc)
    module.exit_json(changed=bool(result["files"] or result["directories"] or any(result["cleaned"].values())), **result)


if __name__ == "__main__":
    main()
