# Controller side: documentation only, read by ansible-doc and validate-modules.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the O(lockfile) option every module that takes a lock shares."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
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
