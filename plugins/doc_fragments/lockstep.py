# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared documentation of the lockstep.cluster modules: the ``attributes`` every module declares
(each states its own ``support``), the lock option and uv's package source options."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return a changed status prediction without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or would change in C(check_mode)) when run with C(--diff).
"""

    PLATFORM = r"""
options: {}
attributes:
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    ACTION = r"""
options: {}
attributes:
  action:
    description: Runs an action plugin on the controller that does part of the work (finds and parses
      controller files, transfers them, compares results).
    support: full
"""

    # The lock every module that takes one shares.
    LOCKFILE = r"""
options:
  lockfile:
    description:
      - Path of the lock on the B(controller), a hash-pinned C(requirements.txt) from
        C(uv pip compile --generate-hashes), or a PEP 751 lock named C(pylock.toml) or
        C(pylock.<name>.toml) (C(uv pip compile -o pylock.NAME.toml), C(uv export --format pylock.toml)).
        It is parsed there with C(packaging) (C(packaging.pylock) for PEP 751); the same policy
        and drift rules apply to both.
      - An absolute path is used as is. A relative one is searched like C(copy)'s C(src) (the
        role's C(files/), the playbook directory and its C(files/)), then in the current directory,
        by the same rule in M(lockstep.cluster.venv), M(lockstep.cluster.probe) and
        M(lockstep.cluster.lock_policy).
    type: path
    required: true
"""

    # The package sources of the modules that run uv on a host.
    UV = r"""
options:
  index_url:
    description:
      - Package index URL. Unset, uv uses its own default index (or the C(--index-url) in the lock).
      - May carry credentials (C(https://user:TOKEN@index.example/simple), from Ansible Vault or
        C(lookup('env', ...))). They reach uv through its environment (C(UV_DEFAULT_INDEX)), never
        its command line, and are masked in results, errors and uv's output.
    type: str
  extra_index_urls:
    description: Extra package index URLs (given to uv as C(UV_INDEX)); credentials are handled like O(index_url)'s.
    type: list
    elements: str
    default: []
  find_links:
    description: Wheelhouse directories or URLs on the host (C(--find-links)).
    type: list
    elements: str
    default: []
  offline:
    description: Never touch the network; every package must be in the uv cache or a local O(find_links).
    type: bool
    default: false
  ca_bundle:
    description: CA bundle on the host for HTTPS (given to uv as C(SSL_CERT_FILE)), for a TLS-inspecting proxy.
    type: path
  cache_dir:
    description: uv cache directory on the host (never on NFS; on the venvs' filesystem for hardlinks).
    type: path
"""
