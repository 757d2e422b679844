#!/usr/bin/env bash
# Controller: build the test base images without a registry: debootstrap -> podman import ->
# add the recipe's packages -> commit. The image carries a hash of its recipe
# (label lockstep.recipe): an image whose recipe is current is kept, any other is rebuilt.
# LOCKSTEP_IMAGE_<SUITE>=<registry>/image:tag starts from that (Debian-based) image instead
# of debootstrap. DEBIAN_MIRROR overrides debootstrap's default mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/lab/containers.conf}
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

declare -A tag=([bookworm]=lockstep-debian12 [trixie]=lockstep-debian13)

# What every image gets on top of the base. openssh-server/-client, procps and iproute2 make
# a lab host an SSH (and later MPI-over-SSH) node. The package scripts generate host keys:
# they are removed so that each container makes its own at start (ssh-keygen -A).
# ca-certificates' postinst must run against the container's own bundle (never mount over it).
recipe='set -e
printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  python3 sudo ca-certificates openssh-server openssh-client procps iproute2 >/dev/null
rm -f /usr/sbin/policy-rc.d /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/*'
changes='CMD ["sleep", "infinity"]'

for suite in "${suites[@]}"; do
  name=${tag[$suite]:-}
  [ -n "$name" ] || { echo "build-images: unknown suite '$suite' (bookworm|trixie)" >&2; exit 2; }
  image=localhost/$name:latest
  override_var=LOCKSTEP_IMAGE_${suite^^}
  base_src=${!override_var:-debootstrap $suite}
  want=$(printf '%s\n' "$base_src" "$recipe" "$changes" | sha256sum | cut -c1-16)

  old=
  if podman image exists "$image"; then
    have=$(podman image inspect --format '{{ index .Labels "lockstep.recipe" }}' "$image")
    if [ "$have" = "$want" ]; then
      echo "build-images: $image is current (recipe $want), kept"
      continue
    fi
    old=$(podman image inspect --format '{{ .Id }}' "$image")
    echo "build-images: $image has recipe '${have:-none}', want $want: rebuilding"
  fi

  work=$(mktemp -d)
  trap 'rm -rf "$work"; podman rm -f "$name-build" >/dev/null 2>&1 || true' EXIT
  if [ -n "${!override_var:-}" ]; then
    base=${!override_var}
    echo "build-images: $image <- $base (override)"
    podman image exists "$base" || podman pull "$base"
  else
    base=localhost/$name-base:latest
    mirror=()
    [ -z "${DEBIAN_MIRROR:-}" ] || mirror=("$DEBIAN_MIRROR")
    echo "build-images: debootstrap $suite"
    debootstrap --variant=minbase "$suite" "$work/rootfs" "${mirror[@]}" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/rootfs" -c . | podman import -q - "$base" >/dev/null
    rm -rf "$work/rootfs"
  fi
  podman rm -f "$name-build" >/dev/null 2>&1 || true
  podman run --name "$name-build" --network host "$base" sh -c "$recipe"
  podman commit -q --change "$changes" --change "LABEL lockstep.recipe=$want" \
    "$name-build" "$image" >/dev/null
  podman rm -f "$name-build" >/dev/null
  [ -n "${!override_var:-}" ] || podman rmi "$base" >/dev/null
  # The superseded image goes unless a container still uses it.
  if [ -n "$old" ] && ! podman rmi "$old" >/dev/null 2>&1; then
    echo "build-images: previous image ${old:0:12} is still in use, left in place"
  fi
  trap - EXIT
  rm -rf "$work"
  echo "build-images: built $image (recipe $want)"
done
