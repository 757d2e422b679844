"""Render a role's defaults + vars the way Ansible would, for unit tests of the variables
(the RHEL family cannot be run here, so its vars are checked by rendering them)."""

import os

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles")


def _trust(value):
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return dict((k, _trust(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_trust(v) for v in value]
    return value


def load(role, *files):
    loader = DataLoader()
    variables = {}
    for name in files:
        path = os.path.join(ROLES, role, name)
        variables.update(_trust(loader.load_from_file(path) or {}))
    return loader, variables


def render(role, files, facts=None, **extra):
    """A function name -> rendered value, over ``files`` of ``role`` plus ``extra`` vars."""
    loader, variables = load(role, *files)
    variables["ansible_facts"] = dict({"architecture": "x86_64", "os_family": "Debian"}, **(facts or {}))
    variables["role_path"] = os.path.join(ROLES, role)
    variables.update(extra)
    templar = Templar(loader=loader, variables=variables)
    return lambda name: templar.template(variables[name])
