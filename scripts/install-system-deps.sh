#!/usr/bin/env bash
# Installs (as root, with apt) the real tools the tests build and check images with,
# and configures Nix to work offline. Safe to run again.
set -euo pipefail
packages=(nix-bin podman skopeo umoci runc docker-registry apache2-utils python3-pip-whl busybox-static patchelf jq zip python3.11-minimal libpython3.11-stdlib libpython3.11-dev binutils gcc zlib1g-dev containerd docker.io curl shellcheck systemd zstd pigz)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "install-system-deps: run as root to install: ${missing[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Offline Nix: no sandbox, no build users, no binary cache (else every build waits on the internet first).
if [ "$(id -u)" = 0 ]; then
  mkdir -p /etc/nix
  conf=/etc/nix/nix.conf
  touch "$conf"
  for line in 'sandbox = false' 'build-users-group =' 'substituters =' 'experimental-features = nix-command'; do
    key=${line%% =*}
    if grep -q "^$key *=" "$conf"; then sed -i "s|^$key *=.*|$line|" "$conf"; else echo "$line" >>"$conf"; fi
  done
fi
