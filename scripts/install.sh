#!/bin/bash
# Installs or removes opdbus-blockchain as a system service (Debian 12, as root).
#
#   scripts/install.sh [install] [--bin-dir DIR] [--enable]   binaries, unit, bus policy,
#                                                            activation file, default config
#   scripts/install.sh uninstall [--purge]                   stops the service, removes them
#
# install builds `cargo build --release` first unless --bin-dir names a directory that already
# holds opdbus-blockchaind and opdbus-chain. An existing /etc/default/opdbus-blockchain is never
# overwritten. uninstall keeps /etc/default/opdbus-blockchain when it was changed (--purge
# removes it anyway) and never touches the chain in /var/lib/op-dbus: it is the audit trail.
# DESTDIR=/some/root stages the files there instead (packaging): nothing is started or reloaded.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}

BIN_DIR=/usr/bin
UNIT_DIR=/usr/lib/systemd/system
POLICY_DIR=/usr/share/dbus-1/system.d
ACTIVATION_DIR=/usr/share/dbus-1/system-services
DOC_DIR=/usr/share/doc/opdbus-blockchain
CONFIG=/etc/default/opdbus-blockchain
UNIT=opdbus-blockchaind.service

# Everything install puts in place except the config (see above), as "source destination".
files() {
  echo "$build_dir/opdbus-blockchaind $BIN_DIR/opdbus-blockchaind 0755"
  echo "$build_dir/opdbus-chain $BIN_DIR/opdbus-chain 0755"
  echo "$repo/systemd/$UNIT $UNIT_DIR/$UNIT 0644"
  echo "$repo/systemd/opdbus-blockchain.sysusers /usr/lib/sysusers.d/opdbus-blockchain.conf 0644"
  echo "$repo/dbus/org.opdbus.Blockchain.conf $POLICY_DIR/org.opdbus.Blockchain.conf 0644"
  echo "$repo/dbus/org.opdbus.Blockchain.service $ACTIVATION_DIR/org.opdbus.Blockchain.service 0644"
  echo "$repo/README.md $DOC_DIR/README.md 0644"
}

say() { echo "opdbus install: $*"; }
die() { echo "opdbus install: $*" >&2; exit 1; }

live() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

reload_managers() {
  live || return 0
  systemctl daemon-reload
  # Let the system bus see the new (or removed) policy and activation files.
  busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig \
    >/dev/null 2>&1 || systemctl reload dbus 2>/dev/null || say "could not reload the bus configuration"
}

do_install() {
  local enable=0 build_dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --bin-dir) build_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
      --enable) enable=1; shift ;;
      *) die "unknown option '$1' (install accepts --bin-dir DIR, --enable)" ;;
    esac
  done
  if [ -z "$build_dir" ]; then
    (cd "$repo" && cargo build --release --bins)
    build_dir=${CARGO_TARGET_DIR:-$repo/target}/release
  fi
  for binary in opdbus-blockchaind opdbus-chain; do
    [ -x "$build_dir/$binary" ] || die "$build_dir/$binary is missing; build first or pass --bin-dir"
  done

  files | while read -r source destination mode; do
    install -D -m "$mode" "$source" "$DESTDIR$destination"
    say "installed $destination"
    if [ "${destination##*/}" = opdbus-blockchain.conf ] && [ -z "$DESTDIR" ]; then systemd-sysusers "$destination"; fi
  done
  if [ -e "$DESTDIR$CONFIG" ]; then
    say "kept the existing $CONFIG"
  else
    install -D -m 0644 "$repo/config/opdbus-blockchain" "$DESTDIR$CONFIG"
    say "installed $CONFIG"
  fi
  # Members of this group may call AddFootprint by bus policy (the daemon checks uids too:
  # OPDBUS_WRITER_UIDS).
  if [ -z "$DESTDIR" ] && ! getent group opdbus >/dev/null; then
    groupadd --system opdbus && say "created the system group opdbus"
  fi
  reload_managers
  if [ "$enable" = 1 ] && live; then
    systemctl enable --now "$UNIT"
    say "enabled and started $UNIT"
  else
    say "done; start with 'systemctl enable --now $UNIT' (or let the first D-Bus call start it)"
  fi
}

do_uninstall() {
  local purge=0 build_dir=/nonexistent
  while [ $# -gt 0 ]; do
    case "$1" in
      --purge) purge=1; shift ;;
      *) die "unknown option '$1' (uninstall accepts --purge)" ;;
    esac
  done
  if live && systemctl list-unit-files "$UNIT" >/dev/null 2>&1; then
    systemctl disable --now "$UNIT" 2>/dev/null || true
  fi
  files | while read -r _ destination _; do
    if [ -e "$DESTDIR$destination" ]; then
      rm -f "$DESTDIR$destination"
      say "removed $destination"
    fi
  done
  rmdir "$DESTDIR$DOC_DIR" 2>/dev/null || true
  if [ -e "$DESTDIR$CONFIG" ]; then
    if [ "$purge" = 1 ] || cmp -s "$repo/config/opdbus-blockchain" "$DESTDIR$CONFIG"; then
      rm -f "$DESTDIR$CONFIG"
      say "removed $CONFIG"
    else
      say "kept $CONFIG: it was changed (--purge removes it)"
    fi
  fi
  reload_managers
  say "the chain in /var/lib/op-dbus was left in place (it is the audit trail)"
}

[ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "run as root (or set DESTDIR to stage the files)"
command="install"
case "${1:-}" in
  install|uninstall) command=$1; shift ;;
esac
"do_$command" "$@"
