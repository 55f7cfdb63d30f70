#!/usr/bin/env bash
# The test command (README, CI's .ci/run): set-up, lint, unit + integration + end-to-end tests,
# cross-build. Run as root on Debian bookworm from a fresh clone; it installs what it needs.
#
#   scripts/test.sh            # everything
#   ARMFLEET_SKIP_SETUP=1 scripts/test.sh   # when setup.sh already ran on this machine
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
phase() { printf '\n== test: %s (%ss) ==\n' "$1" "$(($(date +%s) - started))"; }

if [ "${ARMFLEET_SKIP_SETUP:-}" != 1 ]; then
  phase "setup"
  bash scripts/setup.sh
fi

phase "lint (fmt, clippy -D warnings)"
bash ci/lint.sh

phase "cross-build node-runtime for aarch64-unknown-linux-musl (+ aarch64 test tools)"
bin=$(bash scripts/cross-build.sh --test-tools | tail -n1)
file "$bin"
echo "node-runtime through binfmt: $("$bin" --version)"

phase "tests (unit, integration, end-to-end tiers)"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# The end-to-end tests run the real binaries (phonectl, imagegen): build them once, up front.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --profile ci

phase "done in $(($(date +%s) - started))s"
