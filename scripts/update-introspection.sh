#!/bin/bash
# Regenerates the interface part of dbus/org.opdbus.Blockchain.xml from the built daemon
# (tests/daemon_dbus.rs checks that they match). Run after adding or changing a D-Bus member:
#   cargo build && bash scripts/update-introspection.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/debug"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
sed -e "s|@SOCKET@|$work/bus|" -e "s|@POLICY@|$PWD/dbus/org.opdbus.Blockchain.conf|" \
    dbus/test-system-bus.conf.in > "$work/bus.conf"
dbus-daemon --config-file="$work/bus.conf" --nofork &
for _ in $(seq 100); do [ -S "$work/bus" ] && break; sleep 0.05; done
address="unix:path=$work/bus"
OPDBUS_NUMA=off OPDBUS_SIGNING_KEY="$work/keys/signing.key" "$target/opdbus-blockchaind" --bus "$address" --chain-dir "$work/chain" \
    --cache-dir "$work/cache" 2>"$work/daemon.log" &
for _ in $(seq 200); do
    busctl --address="$address" status org.opdbus.Blockchain >/dev/null 2>&1 && break
    sleep 0.05
done
busctl --address="$address" --xml-interface introspect org.opdbus.Blockchain \
    /org/opdbus/Blockchain > "$work/live.xml"
python3 - "$work/live.xml" dbus/org.opdbus.Blockchain.xml <<'PY'
import sys
live = open(sys.argv[1]).read()
shipped = open(sys.argv[2]).read()
tag = '<interface name="org.opdbus.Blockchain">'
def span(xml):
    start = xml.index(tag)
    return start, xml.index("</interface>", start)
ls, le = span(live)
ss, se = span(shipped)
open(sys.argv[2], "w").write(shipped[:ss] + live[ls:le] + shipped[se:])
PY
echo "dbus/org.opdbus.Blockchain.xml updated"
