#!/bin/bash
# Runs every check and test of opdbus-blockchain on Debian 12 (as root, so the btrfs, mount and
# unprivileged-caller tests run too). Installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo --version
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets --locked -- -D warnings; fi
cargo test --workspace --locked --all-targets -- --test-threads=2
