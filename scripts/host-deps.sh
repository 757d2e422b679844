#!/usr/bin/env bash
# Controller: make sure this (Debian/Ubuntu) machine has the packages the lab and the tests
# need. As root the missing ones are installed with apt; otherwise the exact command is
# printed and the script fails. Nothing happens when all are present.
set -euo pipefail

# Why each one:
#   podman runc                 containers (runc: lab/containers.conf; crun fails on hybrid cgroups)
#   netavark aardvark-dns       the lab's bridge network and name resolution between its hosts
#                               (podman alone may pick the CNI stack, which has neither)
#   iptables                    netavark's NAT rules (containers reach mirrors and PyPI)
#   debootstrap debian-archive-keyring   building the base images, with signature checks
#   ca-certificates             the host CA bundle mounted into the containers
#   openssh-client              reaching the lab over SSH, making its key pair
#   python3 python3-venv        the controller venv and uv's bootstrap
#   git make                    the build and the sanity tests
#   (the) shellcheck (package)  ansible-test sanity's shell test (skipped without it)
# Rootless-only helpers (uidmap, slirp4netns, fuse-overlayfs) are not needed: the lab runs
# rootful podman, whose containers' addresses the controller can route to.
pkgs=(podman runc netavark aardvark-dns iptables debootstrap debian-archive-keyring
  ca-certificates openssh-client python3 python3-venv git make shellcheck)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "host-deps: not a dpkg-based system; install the equivalents of: ${pkgs[*]}" >&2
  exit 1
fi

missing=()
installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${pkgs[@]}" 2>/dev/null || true)
for p in "${pkgs[@]}"; do
  grep -qx "$p installed" <<<"$installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "host-deps: missing packages: ${missing[*]}. Install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "host-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
