# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe's answer on the controller: kept as the host's fact ``lockstep_probe`` for this run,
reused by every role's action plugin (no host round trip when nothing differs) until a role
changes the host, and by the audit.

A run is this ansible-playbook process (its pid and start time): an answer from an earlier run,
as a persistent fact cache would keep it, is never reused. Any change a lockstep role makes to
a host marks that host (``lockstep_changed``), and from then on its roles and the audit ask the
host again instead of trusting the earlier answer.
"""

from __future__ import annotations

import os

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.cluster.plugins.module_utils.probe import digest, settings

FACT = "lockstep_probe"
CHANGED = "lockstep_changed"
ROLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")
_SPECS = {}


def role_spec(role):
    """A role's ``main`` entry point options, from its meta/argument_specs.yml (read once)."""
    if role not in _SPECS:
        with open(os.path.join(ROLES, role, "meta", "argument_specs.yml")) as handle:
            _SPECS[role] = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    return _SPECS[role]


def role_argument_errors(roles, task_vars, template):
    """What each role's own argument check would say, in one task (site.yml runs its roles with
    rolespec_validate off: a check task per role per host cost the controller more than the
    whole converged role). ``template`` renders the variables as the role would see them."""
    errors = []
    for role in roles:
        spec = role_spec(role)
        given = template(dict((name, task_vars[name]) for name in spec if name in task_vars))
        found = ArgumentSpecValidator(spec).validate(given, validate_role_argument_spec=True)
        errors.extend("role %s: %s" % (role, message) for message in found.error_messages)
    return errors


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (IOError, OSError, IndexError):
        return "?"


def run_id():
    """This playbook run: the ansible-playbook process that forked the worker running the action."""
    parent = os.getppid()
    return "%d-%s" % (parent, _start_time(parent))


def _fact(task_vars, name):
    facts = task_vars.get("ansible_facts") or {}
    return facts.get(name) if name in facts else task_vars.get(name)


def changed_since(task_vars):
    """Roles that changed this host in this run (after its probe)."""
    marker = _fact(task_vars, CHANGED) or {}
    return list(marker.get("roles") or []) if marker.get("run") == run_id() else []


def current(task_vars):
    """This host's probe answer of this run, or None (none yet, from another run, or a role
    changed the host since)."""
    answer = _fact(task_vars, FACT)
    if not answer or answer.get("run") != run_id() or changed_since(task_vars):
        return None
    return answer


def section(task_vars, name, given=None):
    """A section of this run's answer, when it answers exactly these options (same digest);
    else None and the caller asks the host itself."""
    answer = current(task_vars)
    found = (answer or {}).get("sections", {}).get(name)
    if not found or found.get("error"):
        return None
    if given is not None:
        params, error = settings(name, given)
        if error or digest(name, params) != found.get("digest"):
            return None
    return found


def answer(task_vars, name, given, check_mode):
    """What a role whose module plans and applies in one run returns from this run's probe, as
    is: the host is converged (or, in check mode, the probe's prediction). None: ask the host."""
    found = section(task_vars, name, given)
    result = dict((found or {}).get("result") or {})
    if not result or result.get("failed") or result.get("unreachable") or (result.get("changed") and not check_mode):
        return None
    result.pop("needs", None)
    return result


def changed_fact(task_vars, role):
    """The fact a role returns when it changed the host: later roles and the audit ask again."""
    roles = changed_since(task_vars) + [role]
    return {CHANGED: {"run": run_id(), "roles": sorted(set(roles))}}
