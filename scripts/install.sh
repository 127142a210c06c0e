#!/bin/bash
# Installs, upgrades or removes opdbus-blockchain as a system service (Debian 12, as root).
# `scripts/install.sh --help` says what it does and where each file goes; scripts/build-deb.sh
# stages the same files (DESTDIR) into the .deb.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}

BIN_DIR=/usr/bin
UNIT_DIR=/usr/lib/systemd/system
POLICY_DIR=/usr/share/dbus-1/system.d
ACTIVATION_DIR=/usr/share/dbus-1/system-services
INTERFACE_DIR=/usr/share/dbus-1/interfaces
CATALOG_DIR=/usr/lib/systemd/catalog
DOC_DIR=/usr/share/doc/opdbus-blockchain
MAN_DIR=/usr/share/man
BASH_COMPLETION_DIR=/usr/share/bash-completion/completions
ZSH_COMPLETION_DIR=/usr/share/zsh/vendor-completions
FISH_COMPLETION_DIR=/usr/share/fish/vendor_completions.d
CONFIG=/etc/default/opdbus-blockchain
UNIT=opdbus-blockchaind.service
CATALOG=opdbus-blockchain.catalog

usage() {
  cat <<'EOF'
NAME
    install.sh - install, upgrade or remove opdbus-blockchain as a system service

SYNOPSIS
    scripts/install.sh [install] [--bin-dir DIR] [--enable]
    scripts/install.sh uninstall [--purge]
    scripts/install.sh help | --help | -h

DESCRIPTION
    For Debian 12 with systemd and a system bus (dbus-daemon or dbus-broker); run as root.

    install (the default command) builds the binaries with 'cargo build --release' unless
    --bin-dir names a directory that holds them. Before copying anything it checks that:
      - every shared library the binaries need is present (ldd); a missing one is named
        with its Debian package, e.g. libhwloc.so.15: apt-get install libhwloc15;
      - a system bus (dbus-daemon or dbus-broker) and systemd are installed; when systemd
        is not running as PID 1 (a chroot, a plain container), the files are installed
        and nothing is reloaded or started;
      - every file to install exists and the binaries generate their man pages and shell
        completions (opdbus-chain generate-docs, opdbus-blockchaind --generate-docs).
    A failed check exits 1 with one line saying why; nothing has been installed then.
    Install creates the system group opdbus before the bus policy that names it, copies
    each file below that differs from the installed one, and reloads systemd, the system
    bus and the journal's message catalog.

    Upgrade is the same command. When opdbus-blockchaind.service is running and its binary
    or unit file changed, install restarts it (systemctl try-restart, after daemon-reload)
    so that the new binary runs; a stopped unit stays stopped. The chain in
    /var/lib/op-dbus is kept and continued. Install says what it installed, what was up to
    date and whether it restarted the daemon (old and new PID).

    uninstall stops and disables the unit and removes every file install put in place,
    except /etc/default/opdbus-blockchain when it was changed. It never removes the chain
    in /var/lib/op-dbus (the audit trail) nor the group opdbus.

COMMANDS
    install      install or upgrade (the default)
    uninstall    remove the installed files
    help         print this text

OPTIONS
    --bin-dir DIR
        install opdbus-blockchaind and opdbus-chain from DIR instead of building them
    --enable
        also systemctl enable --now opdbus-blockchaind.service; without it the first
        D-Bus call to org.opdbus.Blockchain starts the unit (bus activation)
    --purge
        (uninstall) remove /etc/default/opdbus-blockchain even when it was changed
    -h, --help
        print this text

FILES
    /usr/bin/opdbus-blockchaind, /usr/bin/opdbus-chain
        the daemon and the command-line tool
    /usr/lib/systemd/system/opdbus-blockchaind.service
        the systemd unit
    /usr/share/dbus-1/system.d/org.opdbus.Blockchain.conf
        the bus policy (writes: root and the group opdbus)
    /usr/share/dbus-1/system-services/org.opdbus.Blockchain.service
        bus activation
    /usr/share/dbus-1/interfaces/org.opdbus.Blockchain.xml
        the D-Bus interface, as introspection returns it
    /usr/lib/systemd/catalog/opdbus-blockchain.catalog
        the journal's explanations of the daemon's messages (journalctl -x)
    /usr/share/doc/opdbus-blockchain/
        README.md and docs/*.md (operations.md: running it)
    /usr/share/man/man1/opdbus-chain*.1.gz, /usr/share/man/man8/opdbus-blockchaind*.8.gz
        man pages
    /usr/share/bash-completion/completions/, /usr/share/zsh/vendor-completions/,
    /usr/share/fish/vendor_completions.d/
        shell completions of both commands
    /etc/default/opdbus-blockchain
        the settings; installed once, never overwritten
    /var/lib/op-dbus/
        the chain, created by the unit; never removed

ENVIRONMENT
    DESTDIR=DIR
        stage the files under DIR (packaging, see scripts/build-deb.sh): no root needed,
        no bus or systemd check, no group created, nothing reloaded, started or restarted
    CARGO_TARGET_DIR
        where cargo build puts the binaries when --bin-dir is not given

EXIT STATUS
    0   done, also when everything was already up to date
    1   a check failed (a missing library, no system bus, no systemd, not root, a missing
        file; nothing installed), or a step failed
    2   an unknown command or option

EXAMPLES
    scripts/install.sh --enable
        build, install, start now and at boot
    scripts/install.sh --bin-dir target/release
        install or upgrade binaries built before
    DESTDIR=/tmp/stage scripts/install.sh --bin-dir target/release
        stage the files for a package (scripts/build-deb.sh does this)
    scripts/install.sh uninstall --purge
        remove everything but the chain

SEE ALSO
    opdbus-blockchaind(8), opdbus-chain(1), /usr/share/doc/opdbus-blockchain/operations.md
EOF
}

# Everything install puts in place except the config (never overwritten), one
# "source destination mode" a line. Install, uninstall and scripts/build-deb.sh all follow it.
files() {
  echo "$build_dir/opdbus-blockchaind $BIN_DIR/opdbus-blockchaind 0755"
  echo "$build_dir/opdbus-chain $BIN_DIR/opdbus-chain 0755"
  echo "$repo/systemd/$UNIT $UNIT_DIR/$UNIT 0644"
  echo "$repo/systemd/opdbus-blockchain.sysusers /usr/lib/sysusers.d/opdbus-blockchain.conf 0644"
  echo "$repo/dbus/org.opdbus.Blockchain.conf $POLICY_DIR/org.opdbus.Blockchain.conf 0644"
  echo "$repo/dbus/org.opdbus.Blockchain.service $ACTIVATION_DIR/org.opdbus.Blockchain.service 0644"
  echo "$repo/dbus/org.opdbus.Blockchain.xml $INTERFACE_DIR/org.opdbus.Blockchain.xml 0644"
  echo "$repo/systemd/$CATALOG $CATALOG_DIR/$CATALOG 0644"
  echo "$repo/README.md $DOC_DIR/README.md 0644"
  local doc
  for doc in "$repo"/docs/*.md; do
    echo "$doc $DOC_DIR/${doc##*/} 0644"
  done
  generated_files
}

# The man pages and completions the binaries generate: at install what they wrote to
# $generated (man pages already gzipped), at uninstall what an earlier install left, found by
# the binaries' names (the set of pages may differ between versions).
generated_files() {
  local subdir destination file name
  while read -r subdir destination; do
    if [ -n "$generated" ]; then
      for file in "$generated/$subdir"/*; do
        if [ -f "$file" ]; then echo "$file $destination/${file##*/} 0644"; fi
      done
    else
      for file in "$DESTDIR$destination"/*; do
        name=${file##*/}
        case "${name#_}" in
          opdbus-chain | opdbus-chain[.-]* | opdbus-blockchaind | opdbus-blockchaind[.-]*)
            echo "- $destination/$name 0644" ;;
        esac
      done
    fi
  done <<EOF
man1 $MAN_DIR/man1
man8 $MAN_DIR/man8
completions/bash $BASH_COMPLETION_DIR
completions/zsh $ZSH_COMPLETION_DIR
completions/fish $FISH_COMPLETION_DIR
EOF
}

say() { echo "opdbus install: $*"; }
die() { echo "opdbus install: $*" >&2; exit 1; }
usage_error() { echo "opdbus install: $* (see scripts/install.sh --help)" >&2; exit 2; }

live() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# The Debian package of a shared library the binaries link (ldd names the library only);
# empty when unknown.
library_package() {
  case "$1" in
    libhwloc.so.15) echo libhwloc15 ;;
    libudev.so.1) echo libudev1 ;;
    libgcc_s.so.1) echo libgcc-s1 ;;
    libc.so.6 | libm.so.6 | ld-linux*) echo libc6 ;;
  esac
}

# A binary without its libraries is installed fine and then fails at every start (status
# 127, five times): refuse before copying anything.
check_libraries() {
  local binary missing="" library
  command -v ldd >/dev/null || { say "ldd not found: shared libraries not checked"; return 0; }
  for binary in opdbus-blockchaind opdbus-chain; do
    for library in $(ldd "$build_dir/$binary" 2>/dev/null | awk '/=> not found/ { print $1 }'); do
      case " $missing " in *" $library "*) continue ;; esac
      missing="$missing $library"
    done
  done
  [ -z "$missing" ] && return 0
  local list="" packages="" package
  for library in $missing; do
    package=$(library_package "$library")
    if [ -n "$package" ]; then
      list="${list:+$list, }$library (Debian package $package)"
      packages="$packages $package"
    else
      list="${list:+$list, }$library (find its package: apt-file search $library)"
    fi
  done
  die "missing shared libraries: $list;${packages:+ apt-get install$packages, then run install.sh again;} nothing was installed"
}

check_system() {
  command -v dbus-daemon >/dev/null || command -v dbus-broker >/dev/null ||
    die "no system bus: install dbus (or dbus-broker) first; nothing was installed"
  command -v systemctl >/dev/null ||
    die "systemd is not installed (the service runs under it); nothing was installed"
  live || say "systemd is not running as PID 1 here: the files are installed, nothing is reloaded or started"
}

# Man pages (gzipped as Debian ships them) and completions into $generated.
generate_docs() {
  local out
  out=$("$build_dir/opdbus-chain" generate-docs "$generated" 2>&1) ||
    die "opdbus-chain generate-docs failed: $(echo "$out" | head -n 1); nothing was installed"
  out=$("$build_dir/opdbus-blockchaind" --generate-docs "$generated" 2>&1) ||
    die "opdbus-blockchaind --generate-docs failed: $(echo "$out" | head -n 1); nothing was installed"
  local page
  for page in "$generated"/man1/*.1 "$generated"/man8/*.8; do
    if [ -f "$page" ]; then gzip -9n "$page"; fi
  done
  ls "$generated"/man8/opdbus-blockchaind.8.gz "$generated"/man1/opdbus-chain.1.gz >/dev/null 2>&1 ||
    die "the binaries generated no man pages in $generated"
}

# Members of this group may call AddFootprint by bus policy (the daemon checks uids too:
# OPDBUS_WRITER_UIDS). It must exist before the policy lands: dbus-daemon reloads a changed
# policy directory at once and logs 'Unknown group "opdbus"' otherwise.
# The service's user and the writers' group (systemd/opdbus-blockchain.sysusers), made before
# the bus policy that names them lands: the bus rereads its policy directory at once and logs
# "Unknown user/group" otherwise. Applied from the source file, so the order of files() does
# not matter.
create_group() {
  [ -z "$DESTDIR" ] || return 0
  local had_user=1 had_group=1
  getent passwd opdbus-blockchain >/dev/null || had_user=0
  getent group opdbus >/dev/null || had_group=0
  systemd-sysusers "$repo/systemd/opdbus-blockchain.sysusers" ||
    die "systemd-sysusers could not create the user opdbus-blockchain; nothing was installed"
  [ "$had_user" = 1 ] || say "created the system user opdbus-blockchain (member of adm)"
  [ "$had_group" = 1 ] || say "created the system group opdbus"
}

reload_managers() {
  [ -z "$DESTDIR" ] || return 0
  # The catalog database is a file; it can be rebuilt without a running journald.
  journalctl --update-catalog 2>/dev/null || say "could not update the journal's message catalog"
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
      --bin-dir)
        [ $# -ge 2 ] || usage_error "--bin-dir needs a directory"
        build_dir=$2; shift 2 ;;
      --enable) enable=1; shift ;;
      *) usage_error "unknown option '$1' (install accepts --bin-dir DIR, --enable)" ;;
    esac
  done
  if [ -z "$build_dir" ]; then
    (cd "$repo" && cargo build --release --bins)
    build_dir=${CARGO_TARGET_DIR:-$repo/target}/release
  fi
  local binary
  for binary in opdbus-blockchaind opdbus-chain; do
    [ -x "$build_dir/$binary" ] || die "$build_dir/$binary is missing; build first or pass --bin-dir"
  done

  check_libraries
  [ -n "$DESTDIR" ] || check_system
  generated=$(mktemp -d)
  trap 'rm -rf "$generated"' EXIT
  generate_docs
  local source destination mode
  while read -r source destination mode; do
    [ -f "$source" ] || die "$source is missing; nothing was installed"
  done < <(files)

  create_group
  local unchanged=0 daemon_changed=0
  while read -r source destination mode; do
    if [ -z "$DESTDIR" ] && cmp -s "$source" "$destination" &&
      [ "$(stat -c %a "$destination")" = "${mode#0}" ]; then
      # Replacing an identical binary would leave the running daemon on a deleted file.
      unchanged=$((unchanged + 1))
      continue
    fi
    install -D -m "$mode" "$source" "$DESTDIR$destination"
    say "installed $destination"
    case "$destination" in
      "$BIN_DIR/opdbus-blockchaind" | "$UNIT_DIR/$UNIT") daemon_changed=1 ;;
    esac
  done < <(files)
  [ "$unchanged" = 0 ] || say "$unchanged files were already up to date"
  if [ -e "$DESTDIR$CONFIG" ]; then
    say "kept the existing $CONFIG"
  else
    install -D -m 0644 "$repo/config/opdbus-blockchain" "$DESTDIR$CONFIG"
    say "installed $CONFIG"
  fi
  reload_managers
  restart_if_upgraded "$daemon_changed"
  if [ "$enable" = 1 ] && live; then
    systemctl enable --now "$UNIT"
    say "enabled and started $UNIT"
  elif live && ! systemctl is-active --quiet "$UNIT"; then
    say "done; start with 'systemctl enable --now $UNIT' (or let the first D-Bus call start it)"
  else
    say "done"
  fi
}

# Upgrade: a running daemon keeps executing the binary it started from until restarted. One
# whose binary was replaced before (an earlier installer) runs a deleted file: restart it too.
restart_if_upgraded() {
  live || return 0
  systemctl is-active --quiet "$UNIT" || return 0
  local before after
  before=$(systemctl show --value -p MainPID "$UNIT")
  case "$(readlink "/proc/$before/exe" 2>/dev/null)" in *" (deleted)") set -- 1 ;; esac
  if [ "$1" = 0 ]; then
    say "$UNIT is running and its binary and unit are unchanged: not restarted"
    return 0
  fi
  systemctl try-restart "$UNIT"
  after=$(systemctl show --value -p MainPID "$UNIT")
  say "restarted $UNIT to run the new version (PID $before -> $after); the chain continues"
}

do_uninstall() {
  local purge=0 build_dir=/nonexistent
  while [ $# -gt 0 ]; do
    case "$1" in
      --purge) purge=1; shift ;;
      *) usage_error "unknown option '$1' (uninstall accepts --purge)" ;;
    esac
  done
  if live && systemctl list-unit-files "$UNIT" >/dev/null 2>&1; then
    systemctl disable --now "$UNIT" 2>/dev/null || true
  fi
  local destination
  while read -r _ destination _; do
    if [ -e "$DESTDIR$destination" ]; then
      rm -f "$DESTDIR$destination"
      say "removed $destination"
    fi
  done < <(files)
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

command="install"
case "${1:-}" in
  install | uninstall) command=$1; shift ;;
  help | --help | -h) usage; exit 0 ;;
  -*) ;;
  "") ;;
  *) usage_error "unknown command '$1' (install, uninstall or help)" ;;
esac
for arg in "$@"; do
  case "$arg" in --help | -h) usage; exit 0 ;; esac
done
[ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "run as root (or set DESTDIR to stage the files)"
generated=""
"do_$command" "$@"
