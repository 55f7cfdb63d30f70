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

# The run builds once from scratch: incremental state would only add gigabytes to target/.
export CARGO_INCREMENTAL=0
# CI machines share a disk whose free space varies; a run that dies of ENOSPC should say so at once.
# Measured (2026-12-04, fresh clone on a fresh machine): target/ ends at 3.9 GiB (test rootfs and boot
# assets included), cargo's registry takes 0.2 GiB; the whole run, setup's packages included, grew the
# disk by 6 GiB, of which the run itself (packages already installed) about 4.3 GiB.
disk_need_gib=6
free_gib=$(($(df --output=avail -k . | tail -n1) / 1024 / 1024))
echo "free disk here: ${free_gib} GiB (a whole run needs about ${disk_need_gib} GiB)"
if [ "$free_gib" -lt "$disk_need_gib" ]; then
  echo "warning: only ${free_gib} GiB free on $(df --output=target . | tail -n1); builds or image tests may fail with 'No space left on device'" >&2
fi

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

echo "disk used by target/: $(du -sh "${CARGO_TARGET_DIR:-target}" | cut -f1); free now: $(df -h --output=avail . | tail -n1 | tr -d ' ')"
phase "done in $(($(date +%s) - started))s"
