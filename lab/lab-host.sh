# shellcheck shell=sh
# Host (a lab container, run as root through `podman exec -i NAME sh -s -- USER KEY DRY`):
# make the admin user the controller logs in as over SSH (its authorized key, NOPASSWD sudo),
# then print the container's host keys. One "changed: WHAT" line per change; with DRY=True
# nothing is written, the lines say what would change. Host keys print as "hostkey: TYPE KEY".
set -eu
user=$1 key=$2 dry=$3
sudoers=/etc/sudoers.d/lockstep-lab
rule="$user ALL=(ALL:ALL) NOPASSWD: ALL"

change() { echo "changed: $1"; [ "$dry" != True ]; }
# Content and owner:group:mode of a file, to compare with what it should be.
state() { printf '%s|%s\n' "$(cat "$1" 2>/dev/null)" "$(stat -c %U:%G:%a "$1" 2>/dev/null)"; }

if ! id -u "$user" >/dev/null 2>&1; then
  if change "user $user"; then
    useradd --create-home --shell /bin/bash "$user"
  else
    # Nothing below exists yet either.
    echo "changed: authorized_keys of $user"
    echo "changed: $sudoers"
  fi
fi

if id -u "$user" >/dev/null 2>&1; then
  home=$(getent passwd "$user" | cut -d: -f6)
  if [ "$(stat -c %U:%a "$home/.ssh" 2>/dev/null)" != "$user:700" ] \
    || [ "$(state "$home/.ssh/authorized_keys")" != "$key|$user:$user:600" ]; then
    if change "authorized_keys of $user"; then
      install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
      printf '%s\n' "$key" >"$home/.ssh/authorized_keys.new"
      chown "$user:$user" "$home/.ssh/authorized_keys.new"
      chmod 0600 "$home/.ssh/authorized_keys.new"
      mv "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"
    fi
  fi
  if [ "$(state "$sudoers")" != "$rule|root:root:440" ] && change "$sudoers"; then
    printf '%s\n' "$rule" >"$sudoers.new"
    chmod 0440 "$sudoers.new"
    visudo -qcf "$sudoers.new"
    mv "$sudoers.new" "$sudoers"
  fi
fi

for pub in /etc/ssh/ssh_host_*_key.pub; do
  read -r type blob _ <"$pub"
  echo "hostkey: $type $blob"
done
