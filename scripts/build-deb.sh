#!/bin/bash
# Builds the opdbus-blockchain .deb (Debian 12) from the files scripts/install.sh installs.
#
#   scripts/build-deb.sh [--bin-dir DIR] [--out DIR] [--no-strip]
#
# The files come from `DESTDIR=… scripts/install.sh install`, so the package and install.sh
# install the same list; the maintainer scripts in debian/ do what install.sh does around the
# copy (group, reloads, catalog, restart on upgrade). Without --bin-dir, install.sh runs
# `cargo build --release` first. The package lands in --out (default target/debian) as
# opdbus-blockchain_VERSION_ARCH.deb, VERSION from Cargo.toml; the last line printed is its
# path. Binaries are stripped as Debian ships them; --no-strip keeps the line tables of the
# release profile (readable backtraces, a much larger package). Needs dpkg-deb; runs lintian
# on the result when it is installed. No root needed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "opdbus build-deb: $*"; }
die() { echo "opdbus build-deb: $*" >&2; exit 1; }

bin_args=() out=$repo/target/debian strip=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir)
      [ $# -ge 2 ] || die "--bin-dir needs a directory"
      bin_args=(--bin-dir "$(cd "$2" && pwd)"); shift 2 ;;
    --out)
      [ $# -ge 2 ] || die "--out needs a directory"
      out=$2; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (accepted: --bin-dir DIR, --out DIR, --no-strip)" ;;
  esac
done
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

package=opdbus-blockchain
version=$(awk -F'"' '/^\[/ { section = $0 } section == "[package]" && /^version *=/ { print $2; exit }' \
  "$repo/Cargo.toml")
[ -n "$version" ] || die "no version in the [package] section of $repo/Cargo.toml"
arch=$(dpkg --print-architecture)

umask 022
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
DESTDIR=$root "$repo/scripts/install.sh" install "${bin_args[@]}" >/dev/null

if [ "$strip" = 1 ]; then
  for binary in "$root"/usr/bin/*; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$binary"
  done
fi

doc=$root/usr/share/doc/$package
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $package

Files: *
Copyright: op-dbus maintainers
License: MIT or Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

mkdir -p "$root/DEBIAN"
for script in preinst postinst prerm postrm; do
  # The preinst creates the users from the sysusers file itself (see debian/preinst).
  sed -e "/^#SYSUSERS#\$/{r $repo/systemd/opdbus-blockchain.sysusers" -e 'd}' \
    "$repo/debian/$script" >"$root/DEBIAN/$script"
  chmod 0755 "$root/DEBIAN/$script"
done
echo /etc/default/opdbus-blockchain >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-op-dbus maintainers <root@localhost>}
Installed-Size: $installed_size
Pre-Depends: systemd
Depends: libc6, libgcc-s1, libhwloc15, dbus | dbus-broker, systemd
Recommends: btrfs-progs
Section: admin
Priority: optional
Description: tamper-evident audit trail of op-dbus on the system bus
 opdbus-blockchaind keeps op-dbus's audit trail: every footprint a plugin adds
 becomes a SHA-256 hash-linked block, durable before the call returns, served
 on the system bus as org.opdbus.Blockchain. opdbus-chain verifies, searches
 and reads the chain offline.
EOF

mkdir -p "$out"
deb=$(cd "$out" && pwd)/${package}_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1))"
if command -v lintian >/dev/null; then
  lintian "$deb" || say "lintian reported the findings above"
fi
echo "$deb"
