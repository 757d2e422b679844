# Copyright: lockstep.cluster maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every member of a cluster must hold, computed from the play's hostvars.

The members, their names and addresses, their SSH host keys (from the facts site.yml already
gathered: no extra round trip), the hostfile in the MPI flavor's syntax, and the cluster's
own SSH key pair, generated once on the controller and never printed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.cluster.plugins.module_utils.cluster import KEY_NAME, layout, member_file, SSH_DIR
from ansible_collections.lockstep.cluster.plugins.module_utils.mpi import OMPI_ROOT_ENV
from ansible_collections.lockstep.cluster.plugins.module_utils.store_fs import (
    describe_problems,
    dir_problems,
    file_problems,
)

# cryptography is an ansible-core dependency, so every controller has it; ansible-test's plugin
# import check (Jinja2 and PyYAML only) does not, and ansible-lint refuses sanity ignores.
try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
except ImportError as exc:
    CRYPTOGRAPHY_ERROR = exc
else:
    CRYPTOGRAPHY_ERROR = None

# The facts `setup` gathers in its `ssh_pub_keys` subset (part of `min`), in preference order.
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
BEGIN = "# BEGIN lockstep.cluster (managed block: edits inside are replaced)"
END = "# END lockstep.cluster"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names and addresses that may go into a hostfile, known_hosts and an ssh_config Host line.
_HOST_TOKEN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:%-]*$")


class ClusterConfigError(ValueError):
    """Input that cannot make a working cluster (names the host and the variable)."""


def host_keys(facts):
    """``[(keytype, base64)]`` from one host's ``ansible_facts`` (``ssh_host_key_<t>_public``)."""
    keys = []
    for kind in HOST_KEY_TYPES:
        blob = (facts or {}).get("ssh_host_key_%s_public" % kind)
        keytype = (facts or {}).get("ssh_host_key_%s_public_keytype" % kind)
        if blob and keytype:
            keys.append((keytype, blob))
    return keys


def address_and_aliases(name, hostvars):
    """``(address, aliases)``: the name the hostfile gives a member (``cluster_address``, else its
    inventory name) and every name or address known_hosts carries and a rank may report."""
    address = str(hostvars.get("cluster_address") or name)
    aliases = []
    for token in (address, name, hostvars.get("ansible_host")):
        if token and str(token) not in aliases:
            aliases.append(str(token))
    return address, aliases


def member(name, hostvars, default_slots):
    """One member as the others see it: ``name`` (what the hostfile says and ssh dials),
    ``aliases`` (every name and address known_hosts carries), ``slots``, ``host_keys``, and
    ``facts`` (False when the host was never reached in this play)."""
    slots = slots_of(name, hostvars, default_slots)
    address, aliases = address_and_aliases(name, hostvars)
    for token in aliases:
        if not _HOST_TOKEN.match(token):
            raise ClusterConfigError("%s: %r cannot be a host name in a hostfile or known_hosts" % (name, token))
    facts = hostvars.get("ansible_facts") or {}
    return {"inventory_name": name, "name": address, "aliases": aliases, "slots": slots,
            "host_keys": host_keys(facts), "facts": bool(facts)}


def slots_of(name, hostvars, default_slots):
    """A member's slots in the hostfile: its own ``cluster_slots`` (uneven ranks per host), else
    its ``cluster_slots_per_host``, else the task's default; a positive integer, or an error
    naming the host and the variable."""
    variable, value = "cluster_slots_per_host", default_slots
    for candidate in ("cluster_slots", "cluster_slots_per_host"):
        if hostvars.get(candidate) not in (None, ""):
            variable, value = candidate, hostvars.get(candidate)
            break
    try:
        slots = 0 if isinstance(value, bool) else int(str(value).strip())
    except ValueError:
        slots = 0
    if slots < 1:
        raise ClusterConfigError("%s: %s must be a positive integer (got %r)" % (name, variable, value))
    return slots


def members(names, hostvars, default_slots=1):
    """``(members, left_out)``: hosts whose facts were gathered, in play order; hosts without
    facts (unreachable in this play) are left out and named. A reached host without any SSH
    host key cannot be pinned: an error when there is anyone to pin it for."""
    found, left_out = [], []
    for name in names:
        entry = member(name, hostvars.get(name) or {}, default_slots)
        if not entry["facts"]:
            left_out.append(name)
        else:
            found.append(entry)
    if len(found) > 1:
        keyless = [m["inventory_name"] for m in found if not m["host_keys"]]
        if keyless:
            raise ClusterConfigError(
                "no SSH host key in the facts of %s: is openssh-server installed and were its host keys "
                "generated? (facts must include the ssh_pub_keys subset, e.g. gather_subset: min)" % ", ".join(keyless))
    seen = {}
    for entry in found:
        if entry["name"] in seen:
            raise ClusterConfigError("%s and %s both use the cluster address %s"
                                     % (seen[entry["name"]], entry["inventory_name"], entry["name"]))
        seen[entry["name"]] = entry["inventory_name"]
    return found, left_out


def hostfile(cluster, flavor, entries):
    """The hostfile in the launcher's own syntax: Open MPI ``host slots=N``, MPICH/Hydra ``host:N``."""
    if flavor == "openmpi":
        lines = ["%s slots=%d" % (m["name"], m["slots"]) for m in entries]
    elif flavor == "mpich":
        lines = ["%s:%d" % (m["name"], m["slots"]) for m in entries]
    else:
        raise ClusterConfigError("no hostfile syntax for MPI flavor %r (openmpi or mpich)" % flavor)
    header = "# Written by lockstep.cluster: cluster %s, %s syntax, one line per host." % (cluster, flavor)
    return "\n".join([header] + lines) + "\n"


def known_hosts_block(entries):
    lines = ["%s %s %s" % (",".join(m["aliases"]), kind, blob) for m in entries for kind, blob in m["host_keys"]]
    return block(lines)


def authorized_keys_block(public_key):
    return block([public_key])


def ssh_config_block(entries, identity):
    """ssh_config for the members: never prompt (BatchMode), never accept an unknown host key,
    and the cluster key when lockstep manages it (``identity``: path relative to ~, or None)."""
    names = []
    for entry in entries:
        names += [a for a in entry["aliases"] if a not in names]
    lines = ["Host " + " ".join(names), "    BatchMode yes", "    StrictHostKeyChecking yes"]
    if identity:
        lines += ["    IdentityFile ~/%s" % identity, "    IdentitiesOnly yes"]
    return block(lines)


def root_env_block():
    """Open MPI's run-as-root switch for a cluster user that is root (at the top of ~/.bashrc,
    so non-interactive shells see it too)."""
    return block(["export " + " ".join("%s=%s" % item for item in sorted(OMPI_ROOT_ENV.items()))])


def block(lines):
    return "\n".join([BEGIN] + list(lines) + [END]) + "\n"


def key_paths(key_dir, cluster):
    if not _SAFE_NAME.match(cluster or ""):
        raise ClusterConfigError("cluster_name %r: letters, digits, '.', '_' and '-' only" % cluster)
    private = os.path.join(key_dir, "%s_ed25519" % cluster)
    return private, private + ".pub"


def ensure_key_pair(key_dir, cluster, create=True):
    """The cluster's key pair on the controller: ``(private_path, public_line, created)``.

    Made once (ed25519, OpenSSH format, mode 0600) under a lock, so the forks of one play all
    read the same pair. With ``create`` False (check mode) a missing pair is reported as
    ``(path, None, True)`` and nothing is written.
    """
    private, public = key_paths(key_dir, cluster)
    check_key_dir(key_dir)
    if os.path.lexists(private) and os.path.lexists(public):
        return private, verified_pair(private, public), False
    if not create:
        return private, None, True
    if CRYPTOGRAPHY_ERROR is not None:
        raise ClusterConfigError("the Python library 'cryptography' (an ansible-core dependency) is required on "
                                 "the controller to make the cluster key pair: %s" % CRYPTOGRAPHY_ERROR)
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    check_key_dir(key_dir)
    fd = os.open(os.path.join(key_dir, ".%s.lock" % cluster), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(private) and os.path.isfile(public):
            return private, verified_pair(private, public), False
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        line = line.decode("ascii") + " lockstep-cluster-%s" % cluster
        _write_private(private, pem)
        with open(public + ".tmp", "w") as handle:
            handle.write(line + "\n")
        os.chmod(public + ".tmp", 0o644)
        os.rename(public + ".tmp", public)
    return private, line, True


def _write_private(path, data):
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.rename(tmp, path)


def check_key_dir(key_dir):
    """As OpenSSH checks the path of a key: ``cluster_key_dir`` and every directory above it
    must be owned by root or the controller user and not writable by group or others (above
    it, a sticky directory such as /tmp is accepted). Another local user who could write
    there could swap the pair that site.yml installs on every host."""
    if not os.path.exists(key_dir):
        parent = os.path.dirname(os.path.abspath(key_dir))
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        problems = dir_problems(parent, strict=False)
    else:
        problems = dir_problems(key_dir)
    if problems:
        raise ClusterConfigError("refusing cluster_key_dir %s: %s (others could swap the cluster key pair)"
                                 % (key_dir, describe_problems(problems)))


def verified_pair(private, public):
    """The public line of a pair on the controller once both halves are safe and agree: files
    (never through a symlink) of the controller user that nobody else can write, a private
    half only its owner can read, that parses as an OpenSSH ed25519 key, and whose public
    half is the one in ``public``. Never shows key material."""
    problems = file_problems(private) + file_problems(public)
    if not problems and os.lstat(private).st_mode & 0o077:
        problems.append({"path": private, "reason": "readable by group or others (mode %04o; OpenSSH refuses it)"
                         % (os.lstat(private).st_mode & 0o7777)})
    if problems:
        raise ClusterConfigError("refusing the cluster key pair: %s" % describe_problems(problems))
    line = read_public(public)
    if CRYPTOGRAPHY_ERROR is not None:
        raise ClusterConfigError("the Python library 'cryptography' (an ansible-core dependency) is required on "
                                 "the controller to check the cluster key pair: %s" % CRYPTOGRAPHY_ERROR)
    fd = os.open(private, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, IndexError) as exc:
        reason = "it is encrypted (lockstep needs a key without a passphrase)" if isinstance(exc, TypeError) \
            else "it does not parse (truncated or corrupt?)"
        raise ClusterConfigError("the cluster private key %s cannot be used: %s; it was not pushed to any host. "
                                 "Remove %s and %s.pub to make a new pair" % (private, reason, private, private))
    if not isinstance(key, Ed25519PrivateKey):
        raise ClusterConfigError("the cluster private key %s is not an ed25519 key; it was not pushed to any host"
                                 % private)
    derived = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if derived.decode("ascii").split()[:2] != line.split()[:2]:
        raise ClusterConfigError("the cluster key pair does not match: %s is not the public half of %s; it was not "
                                 "pushed to any host. Remove both to make a new pair" % (public, private))
    return line


def read_public(path):
    with open(path) as handle:
        line = handle.read().strip()
    if not re.match(r"^ssh-ed25519 [A-Za-z0-9+/=]+( .*)?$", line):
        raise ClusterConfigError("%s is not an OpenSSH ed25519 public key" % path)
    return line


def contents(args, me, entries, public_line):
    """What each managed file of ``me`` holds, by path (the secret key is compared by sha256)."""
    names = [m["name"] for m in entries]
    identity = {"cluster": args["name"], "host": me["inventory_name"], "name": me["name"], "user": args["user"],
                "flavor": args["flavor"], "hostfile": args["hostfile"], "members": names}
    identity_file = "%s/%s" % (SSH_DIR, KEY_NAME) if args["manage_keys"] else None
    return {
        args["hostfile"]: hostfile(args["name"], args["flavor"], entries),
        member_file(args["hostfile"]): json.dumps(identity, indent=2, sort_keys=True) + "\n",
        "%s/%s.pub" % (SSH_DIR, KEY_NAME): (public_line or "") + "\n",
        "%s/authorized_keys" % SSH_DIR: authorized_keys_block(public_line or ""),
        "%s/known_hosts" % SSH_DIR: known_hosts_block(entries),
        "%s/config" % SSH_DIR: ssh_config_block(entries, identity_file),
        ".bashrc": root_env_block(),
    }


def member_specs(args, me, entries, key_sha256, public_line):
    """The files ``me`` must hold (module_utils.cluster.layout), with their content: what the
    cluster role writes, and what the audit compares a member's snapshot with."""
    found = contents(args, me, entries, public_line)
    specs = []
    for spec in layout(args):
        if spec["kind"] == "secret":
            specs.append(dict(spec, sha256=key_sha256))
        else:
            specs.append(dict(spec, content=found[spec["path"]]))
    return specs


def key_sha256(private):
    with open(private, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def expected_files(settings, hostvars, spec):
    """``({host: files}, error)``: the files the cluster role would write on every member with
    facts, as it would write them now (``settings``: its module options, checked against
    ``spec``). The key pair is read, never made: a missing one makes every key file differ."""
    checked = ArgumentSpecValidator(spec).validate(dict(settings))
    if checked.error_messages:
        return None, "; ".join(checked.error_messages)
    args = checked.validated_parameters
    try:
        entries, dummy_left_out = members(args["hosts"], hostvars, args["slots"])
        private, public_line, missing = ensure_key_pair(args["key_dir"], args["name"], create=False) \
            if args["manage_keys"] else (None, None, False)
        digest = key_sha256(private) if private and not missing else "0" * 64
    except (ClusterConfigError, OSError) as exc:
        return None, str(exc)
    public_line = public_line or "ssh-ed25519 (no key pair on the controller) lockstep-cluster-%s" % args["name"]
    return dict((m["inventory_name"], member_specs(args, m, entries, digest, public_line)) for m in entries), None
