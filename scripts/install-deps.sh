#!/bin/bash
# Installs what building, testing and running opdbus-blockchain need on Debian 12 (as root).
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(
  dbus            # dbus-daemon: the private bus of the tests and the demo
  systemd         # busctl
  util-linux      # setpriv, mount
  btrfs-progs     # btrfs snapshots, send/receive
  openssh-server  # sshd in a network namespace: the backup-over-ssh test (skips without it)
  openssh-client  # ssh: backups to another host
  libhwloc-dev    # NUMA topology (hwlocality links the system libhwloc)
  libudev-dev
  libdbus-1-dev   # libdbus: the bench's second, independent D-Bus client (the dbus crate)
  pkg-config
  hwloc           # lstopo, for operators
  python3         # tools/verify-chain.py, the independent verifier
  python3-cryptography # tools/verify-checkpoint.py checks Ed25519 signatures with it
  gcc
  make
  ca-certificates
  systemd-container # systemd-nspawn: tests/systemd_nspawn.rs boots a real systemd
  debootstrap       # the minimal Debian those containers run
  e2fsprogs       # mkfs.ext4: the small filesystems of the full-disk tests
  nginx           # serves a published transparency log in tests/transparency_publish.rs
  redis-server    # the shared cache tier's tests start real Redis servers and a cluster
  redis-tools     # redis-cli --cluster create
  man-db          # man -l: tests/man_pages.rs renders the generated pages (groff with it)
  zsh             # zsh -n and fish -n check the generated completions (tests/man_pages.rs)
  fish
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ! command -v cargo >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
  # Debian 12's own rustc (1.63) is too old; rustc-web/cargo-web (bookworm-security) are new enough.
  missing+=(rustc-web cargo-web)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
