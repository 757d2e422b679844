# Controller side: documentation only, read by ansible-doc and validate-modules.
# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the package source options of the modules that run uv on a host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
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
