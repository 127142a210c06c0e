#!/bin/bash
# Installs what is needed, builds, and shows the daemon's main job on a private system-like bus
# and a temporary directory: footprints added with busctl become hash-linked durable blocks,
# read back, verified, and tampering is found. Run as root on Debian 12. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bins
BIN=$PWD/target/release

WORK=$(mktemp -d /tmp/opdbus-demo.XXXXXX)
BUS_PID= ; DAEMON_PID=
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  [ -n "$BUS_PID" ] && kill "$BUS_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a private bus as strict as the system bus, with our policy"
sed -e "s|@SOCKET@|$WORK/bus|" -e "s|@POLICY@|$PWD/dbus/org.opdbus.Blockchain.conf|" \
  dbus/test-system-bus.conf.in > "$WORK/bus.conf"
dbus-daemon --config-file="$WORK/bus.conf" --nofork 2>/dev/null & BUS_PID=$!
for _ in $(seq 100); do [ -S "$WORK/bus" ] && break; sleep 0.05; done
ADDRESS="unix:path=$WORK/bus"
call() { busctl --address="$ADDRESS" call org.opdbus.Blockchain /org/opdbus/Blockchain org.opdbus.Blockchain "$@"; }

step "opdbus-blockchaind --bus $ADDRESS --chain-dir $WORK/chain"
OPDBUS_SIGNING_KEY="$WORK/keys/signing.key" OPDBUS_CHECKPOINT_INTERVAL=200ms \
  "$BIN/opdbus-blockchaind" --bus "$ADDRESS" --chain-dir "$WORK/chain" --cache-dir "$WORK/cache" \
  2> "$WORK/daemon.log" & DAEMON_PID=$!
for _ in $(seq 200); do busctl --address="$ADDRESS" status org.opdbus.Blockchain >/dev/null 2>&1 && break; sleep 0.05; done

step "AddFootprint (returns height and hash once the block is on disk)"
call AddFootprint sss network create '{"interface":"br0","type":"bridge","mtu":1500}'
call AddFootprint sss systemd restart '{"unit":"nginx.service","result":"done"}'
REPLY=$(call AddFootprint sss firewall add_rule '{"chain":"input","port":22,"action":"accept"}')
echo "$REPLY"
HASH=$(echo "$REPLY" | awk '{print $3}' | tr -d '"')

step "GetBlock $HASH"
busctl --address="$ADDRESS" --json=pretty call org.opdbus.Blockchain /org/opdbus/Blockchain \
  org.opdbus.Blockchain GetBlock s "$HASH"

step "GetCheckpoint: the signed Merkle tree head (published in $WORK/chain/tlog), its verifier key"
sleep 0.5
busctl --address="$ADDRESS" get-property org.opdbus.Blockchain /org/opdbus/Blockchain \
  org.opdbus.Blockchain VerifyingKey
busctl --address="$ADDRESS" --json=short call org.opdbus.Blockchain /org/opdbus/Blockchain \
  org.opdbus.Blockchain GetCheckpoint | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0])'
step "GetInclusionProof 2 4: the audit path of block 2 in the tree of 4 blocks"
call GetInclusionProof tt 2 4

step "FindSimilar: the blocks most like a new footprint (cosine of block vectors)"
call AddFootprint sss network create '{"interface":"br1","type":"bridge","mtu":9000}' >/dev/null
"$BIN/opdbus-chain" similar --bus "$ADDRESS" -k 3 \
  '{"plugin":"network","operation":"create","data":{"interface":"br2","type":"bridge"}}'

step "CacheStats and NumaInfo"
"$BIN/opdbus-chain" stats --bus "$ADDRESS" | grep -E "total_entries|hits|compression_ratio|write_failures"
"$BIN/opdbus-chain" numa --bus "$ADDRESS"

step "refused input gets a typed error, nothing is added"
dbus-send --bus="$ADDRESS" --print-reply --dest=org.opdbus.Blockchain /org/opdbus/Blockchain \
  org.opdbus.Blockchain.AddFootprint string:network string:create string:'{broken' 2>&1 || true

step "Verify over D-Bus, then stop the daemon (SIGTERM drains and exits 0)"
call Verify
kill "$DAEMON_PID"; wait "$DAEMON_PID"; echo "daemon exit status: $?"; DAEMON_PID=

step "opdbus-chain tail / verify, offline"
"$BIN/opdbus-chain" tail --chain-dir "$WORK/chain"
"$BIN/opdbus-chain" verify --chain-dir "$WORK/chain"

step "the signed checkpoint, kept elsewhere, checked against the chain offline"
VKEY=$("$BIN/opdbus-chain" key show --key "$WORK/keys/signing.key")
echo "verifier key: $VKEY"
"$BIN/opdbus-chain" checkpoint --chain-dir "$WORK/chain" --vkey "$VKEY" --out "$WORK/saved.checkpoint"
"$BIN/opdbus-chain" verify --chain-dir "$WORK/chain" --checkpoint "$WORK/saved.checkpoint" --vkey "$VKEY"
"$BIN/opdbus-chain" prove 2 --chain-dir "$WORK/chain"

step "tamper with a copy: verify names the height"
cp -r "$WORK/chain" "$WORK/tampered"
sed -i 's/"port":22/"port":23/' "$WORK/tampered"/segment-*.chain
"$BIN/opdbus-chain" verify --chain-dir "$WORK/tampered" || echo "(exit status $?, as expected)"
