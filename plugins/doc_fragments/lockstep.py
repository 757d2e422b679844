# Controller side: documentation only, read by ansible-doc and validate-modules.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the descriptions of the ``attributes`` every lockstep.cluster module declares
(each module states its own ``support``)."""

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
