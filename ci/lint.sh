#!/usr/bin/env bash
# Lint steps shared by the local test command (scripts/test.sh) and the public CI workflow.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
