# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Check a lock against the fleet's policy (documentation only: plugins/action/lock_policy.py does the work)."""

DOCUMENTATION = r"""
---
module: lock_policy
short_description: Check a hash-pinned Python lockfile against the fleet's lock policy
version_added: 0.1.0
author:
  - lockstep.cluster maintainers (@lockstep)
description:
  - Parses a C(requirements.txt)-format lockfile as written by C(uv pip compile --generate-hashes)
    on the B(controller) and fails, naming the file, line and reason of every violation, unless
    every requirement is pinned with C(==) and carries at least one C(--hash).
  - With O(cpu_only=true) (the default) GPU packages are violations too, among them
    C(nvidia-*) (CUDA runtime, DALI), local versions C(+cuXXX), C(+rocmX) and C(+xpu),
    C(tensorflow) and C(tf-nightly) (use C(tensorflow-cpu)), C(tensorflow-gpu), C(onnxruntime-gpu),
    C(paddlepaddle-gpu), C(cupy-cuda*), C(mxnet-cu*), C(jax-cuda*), GPU extras such as
    C(jax[cuda12]), C(triton) and C(pytorch-triton*).
  - C(torch), C(torchvision) and C(torchaudio) must be the C(+cpu) builds, because the PyPI builds
    for Linux x86_64 are the CUDA builds and pull C(nvidia-*) wheels.
  - Unreadable or malformed lockfiles (editable or URL requirements, C(-r)/C(-c) includes, bad
    hashes, dangling continuations) fail with a message naming C(path:line) and the reason.
  - Runs only on the controller; the target host is not contacted.
options:
  lockfile:
    description:
      - Path of the lockfile on the controller.
      - An absolute path is used as is. A relative one is searched like C(copy)'s C(src) (the
        role's C(files/), the playbook directory and its C(files/)), then in the current directory,
        by the same rule as M(lockstep.cluster.venv) and M(lockstep.cluster.probe).
    type: path
    required: true
    aliases: [path]
  cpu_only:
    description:
      - Also fail on GPU packages (see the description).
    type: bool
    default: true
  python_version:
    description:
      - Also fail unless the lock was resolved for this Python version (for example V(3.11) or
        V(3.13.5)), typically the version of the hosts' interpreter.
      - Best effort, from the C(uv pip compile) command in the lock header
        (C(--universal --python-version 3.11) serves 3.11 and later, C(--python-version 3.11)
        without C(--universal) serves 3.11 only). A lock without such a header passes.
    type: str
attributes:
  check_mode:
    support: full
    description: Only reads the lockfile, so check mode runs the same checks.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
  platform:
    support: full
    platforms: all
    description: Runs on the controller; the target's platform does not matter.
  action:
    support: full
    description: Implemented by an action plugin that runs on the controller.
  async:
    support: none
    description: The check is quick and local to the controller.
  bypass_host_loop:
    support: none
    description: Runs once per host; use the C(run_once) keyword to check a shared lock once.
notes:
  - Requires the Python library C(packaging) on the controller (ansible-core depends on it).
seealso:
  - name: uv pip compile
    description: How the lockfiles are generated.
    link: https://docs.astral.sh/uv/pip/compile/
"""

EXAMPLES = r"""
- name: Refuse to roll out a lock that is not hash-pinned and CPU-only
  lockstep.cluster.lock_policy:
    lockfile: lockfiles/mlperf-storage-cpu.txt
  run_once: true

- name: Check the lock also fits the hosts' Python
  lockstep.cluster.lock_policy:
    lockfile: "{{ venv_lockfile }}"
    python_version: "{{ ansible_facts['python_version'] }}"

- name: A GPU lock is allowed on GPU nodes, but it must still be pinned and hashed
  lockstep.cluster.lock_policy:
    lockfile: lockfiles/gpu.txt
    cpu_only: false
"""

RETURN = r"""
path:
  description: The lockfile that was checked, as found on the controller.
  returned: always
  type: str
  sample: /srv/lockstep/lockfiles/mlperf-storage-cpu.txt
entries:
  description: Number of requirement entries in the lock (a package with per-Python markers counts once per entry).
  returned: when the lockfile could be parsed
  type: int
  sample: 53
sha256:
  description: SHA-256 of the lockfile's bytes, usable as a key for venv directories.
  returned: when the lockfile could be parsed
  type: str
  sample: 5d0e5c9a1f3b2e8d7c6a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e
python_specifier:
  description: The Pythons the lock was resolved for, from its header command; null if unknown.
  returned: when the lockfile could be parsed
  type: str
  sample: ">=3.11"
violations:
  description: Every policy violation; the task fails when this is not empty.
  returned: when the lockfile could be parsed
  type: list
  elements: dict
  contains:
    path:
      description: The lockfile.
      type: str
      sample: lockfiles/mlperf-storage-cpu.txt
    line:
      description: 1-based line where the requirement starts (0 for the file as a whole).
      type: int
      sample: 112
    name:
      description: Canonical (PEP 503) package name, or V(python) for an unserved Python version.
      type: str
      sample: nvidia-cublas-cu12
    code:
      description: Kind of violation.
      type: str
      choices: [not-pinned, no-hash, gpu, python, empty]
      sample: gpu
    message:
      description: Why the entry violates the policy.
      type: str
      sample: nvidia-cublas-cu12 is an NVIDIA CUDA/DALI package
"""
