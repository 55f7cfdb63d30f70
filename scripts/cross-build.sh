#!/usr/bin/env bash
# Builds node-runtime for the one worker target, aarch64-unknown-linux-musl: static, release,
# stripped. Uses `cross` when a container engine is present, else cargo with Debian's cross linker
# (configured in .cargo/config.toml). Prints the path of the binary last.
#
#   scripts/cross-build.sh                  # node-runtime
#   scripts/cross-build.sh --test-tools     # also the aarch64 test equipment (k3s stand-in)
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
bins=(-p node-runtime --bin node-runtime)
if [ "${1:-}" = "--test-tools" ]; then bins+=(-p k3s-standin --bin k3s-standin); fi

engine_up() { { command -v docker >/dev/null && docker info >/dev/null 2>&1; } ||
  { command -v podman >/dev/null && podman info >/dev/null 2>&1; }; }

if command -v cross >/dev/null 2>&1 && engine_up; then
  echo "cross-build: cross build --release --target $target" >&2
  cross build --locked --release --target "$target" "${bins[@]}"
else
  command -v aarch64-linux-gnu-gcc >/dev/null ||
    { echo "cross-build: aarch64-linux-gnu-gcc missing: run scripts/setup.sh (or install gcc-aarch64-linux-gnu)" >&2; exit 1; }
  rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    { echo "cross-build: rust target $target missing: run scripts/setup.sh (or rustup target add $target)" >&2; exit 1; }
  echo "cross-build: cargo build --release --target $target (Debian cross linker; no container engine)" >&2
  cargo build --locked --release --target "$target" "${bins[@]}"
fi
out="${CARGO_TARGET_DIR:-target}/$target/release/node-runtime"
file "$out" | grep -q 'ARM aarch64' || { echo "cross-build: $out is not an aarch64 binary" >&2; exit 1; }
file "$out" | grep -Eq 'statically linked|static-pie linked' || { echo "cross-build: $out is not static" >&2; exit 1; }
echo "$out"
