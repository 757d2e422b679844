#!/usr/bin/env bash
# Build the test base images without a registry: debootstrap -> podman import -> add
# python3/sudo/ca-certificates -> commit. An image that already exists is kept.
# LOCKSTEP_IMAGE_<SUITE>=registry/image:tag uses that image instead (pulled, not built).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/lab/containers.conf}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

declare -A tag=([bookworm]=lockstep-debian12 [trixie]=lockstep-debian13)

for suite in "${suites[@]}"; do
  name=${tag[$suite]:-}
  [ -n "$name" ] || { echo "build-images: unknown suite '$suite' (bookworm|trixie)" >&2; exit 2; }
  image=localhost/$name:latest
  override_var=LOCKSTEP_IMAGE_${suite^^}
  if [ -n "${!override_var:-}" ]; then
    echo "build-images: $image <- ${!override_var} (override)"
    podman image exists "${!override_var}" || podman pull "${!override_var}"
    podman tag "${!override_var}" "$image"
    continue
  fi
  if podman image exists "$image"; then
    echo "build-images: $image exists, kept"
    continue
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "build-images: debootstrap $suite"
  debootstrap --variant=minbase "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/rootfs" -c . | podman import - "localhost/$name-base:latest" >/dev/null
  rm -rf "$work/rootfs"
  # ca-certificates' postinst must run against the container's own bundle (do not mount over it).
  podman run --name "$name-build" --network host "localhost/$name-base:latest" sh -ec '
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 sudo ca-certificates >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/*'
  podman commit --change 'CMD ["sleep", "infinity"]' "$name-build" "$image" >/dev/null
  podman rm -f "$name-build" >/dev/null
  podman rmi "localhost/$name-base:latest" >/dev/null
  trap - EXIT
  rm -rf "$work"
  echo "build-images: built $image"
done
