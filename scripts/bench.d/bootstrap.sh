#!/usr/bin/env bash
# bootstrap: the node rootfs overlay + recompression, against GNU tar + gzip on the same input
# (the Debian base and the same overlay files), time and peak memory; then the cached rebuild.
#
# The base is the mmdebstrap arm64 base the slow test tier caches (or $ARMFLEET_BENCH_BASE, a
# .tar or .tar.gz); without either it is built here once (mmdebstrap, several minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
work="$target/bench-bootstrap"
mkdir -p "$work"

[ -x /usr/bin/time ] || { echo "bench: bootstrap: /usr/bin/time missing (apt-get install time)"; exit 1; }

cargo build -q --release -p bootstrap --example rootfs
tool="$target/release/examples/rootfs"
node_runtime=$(scripts/cross-build.sh 2>/dev/null | tail -n1)

base=${ARMFLEET_BENCH_BASE:-}
if [ -z "$base" ]; then
  base=$(ls -1 "$target"/armfleet-test-cache/node-rootfs-real/cache/base/mmdebstrap-*/base.tar 2>/dev/null | head -n1 || true)
fi
if [ -z "$base" ]; then
  base=$(ls -1 "$work"/cache/base/mmdebstrap-*/base.tar 2>/dev/null | head -n1 || true)
fi
if [ -z "$base" ]; then
  echo "bench: bootstrap: building the mmdebstrap base once (minutes)" >&2
  "$tool" build --cache "$work/cache" --node-runtime "$node_runtime" --mmdebstrap >/dev/null
  base=$(ls -1 "$work"/cache/base/mmdebstrap-*/base.tar | head -n1)
fi
base_mib=$(( $(stat -c %s "$base") / 1048576 ))

# peak RSS (KiB) and wall seconds of a command, from GNU time.
measure() {
  /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" >/dev/null 2>"$work/stderr.txt" ||
    { cat "$work/stderr.txt" >&2; return 1; }
  read -r secs kib < "$work/time.txt"
  echo "$secs $kib"
}

# Baseline: GNU tar appends the same overlay files to a copy of the base (tar -r), gzip -6
# compresses it.
ovl="$work/overlay-tree"
rm -rf "$ovl" && mkdir -p "$ovl/usr/local/bin" "$ovl/etc/systemd/system/multi-user.target.wants" "$ovl/etc/armfleet"
cp "$node_runtime" "$ovl/usr/local/bin/node-runtime"
"$tool" unit > "$ovl/etc/systemd/system/node-runtime.service"
ln -sf /etc/systemd/system/node-runtime.service "$ovl/etc/systemd/system/multi-user.target.wants/node-runtime.service"
case "$base" in
  *.gz) unpack="gzip -dc '$base' > '$work/baseline.tar'" ;;
  *) unpack="cp '$base' '$work/baseline.tar'" ;;
esac
read -r base_s base_kib < <(measure bash -c "$unpack && tar -rf '$work/baseline.tar' --owner=0 --group=0 -C '$ovl' usr etc && gzip -6 -c '$work/baseline.tar' > '$work/baseline.tar.gz'")
rm -f "$work/baseline.tar"

# armfleet: streaming overlay (sorted merge, byte copies) + parallel gzip, uncached.
read -r ours_s ours_kib < <(measure "$tool" overlay "$base" "$node_runtime" "$work/ours.tar.gz")
ratio=$(awk -v a="$ours_s" -v b="$base_s" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
echo "bench: bootstrap: overlay+recompress ${base_mib} MiB base, wall s: $ours_s (baseline: $base_s tar|gzip, ratio ${ratio}x faster)"
mem_ratio=$(awk -v a="$ours_kib" -v b="$base_kib" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
echo "bench: bootstrap: overlay+recompress peak RSS KiB: $ours_kib (baseline: $base_kib tar|gzip, ratio $mem_ratio)"
ours_size=$(stat -c %s "$work/ours.tar.gz"); base_size=$(stat -c %s "$work/baseline.tar.gz")
size_ratio=$(awk -v a="$ours_size" -v b="$base_size" 'BEGIN { printf "%.3f", a / b }')
echo "bench: bootstrap: output bytes: $ours_size (baseline: $base_size, ratio $size_ratio)"

# Memory flat whatever the size: the same run on a small base (busybox-sized) for comparison.
small="$work/small-base.tar"
tar -cf "$small" --format=pax -C "$ovl" usr etc
read -r _ small_kib < <(measure "$tool" overlay "$small" "$node_runtime" "$work/small.tar.gz")
echo "bench: bootstrap: peak RSS KiB, ${base_mib} MiB base vs tiny base: $ours_kib (baseline: $small_kib tiny base, ratio $(awk -v a="$ours_kib" -v b="$small_kib" 'BEGIN { printf "%.2f", a / b }'))"

# Cached rebuild: nothing changed, so a hash check of the inputs.
"$tool" build --cache "$work/cache" --node-runtime "$node_runtime" --base "$base" >/dev/null 2>&1
read -r cached_s _ < <(measure "$tool" build --cache "$work/cache" --node-runtime "$node_runtime" --base "$base")
echo "bench: bootstrap: cached rebuild wall s: $cached_s (baseline: 1.0 goal, ratio $(awk -v a="$cached_s" 'BEGIN { printf "%.2f", a / 1.0 }'))"
