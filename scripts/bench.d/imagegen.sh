#!/usr/bin/env bash
# imagegen benchmarks, each against a baseline run here on the same inputs:
#  1. image build from a cached rootfs + cached boot assets vs the reference shell pipeline
#     (truncate + sfdisk + mkfs.vfat + mcopy + tar x + mke2fs -d + dd into place);
#  2. flash of a 4 GiB image holding ~1 GiB of data (bmap: mapped blocks only, then read-back
#     verification) vs `dd` of the whole image to a file.
# Needs e2fsprogs >= 1.47.1 (both sides use the same mke2fs) and `script` (util-linux).
# Inputs: IMAGEGEN_BENCH_ROOTFS (a node rootfs .tar.gz), else the newest one in the armfleet
# cache or in the test cache. Needs root for the reference pipeline's `tar x` to keep owners.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build -q --release -p imagegen --bin imagegen
ig=$CARGO_TARGET_DIR/release/imagegen

rootfs=${IMAGEGEN_BENCH_ROOTFS:-}
if [ -z "$rootfs" ]; then
  rootfs=$(ls -t "${ARMFLEET_CACHE_DIR:-$HOME/.cache/armfleet}"/rootfs/*/rootfs.tar.gz \
    "$CARGO_TARGET_DIR"/armfleet-test-cache/node-rootfs-*/cache/rootfs/*/rootfs.tar.gz 2>/dev/null | head -n1 || true)
fi
[ -n "$rootfs" ] && [ -f "$rootfs" ] || { echo "bench: imagegen: no node rootfs found: set IMAGEGEN_BENCH_ROOTFS"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/imagegen-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The built-in lab without its k3s download URL: the bench measures image building, and reaches
# nothing outside this machine (k3s is then left for the worker to fetch on first boot).
grep -v '^url = "https://github.com/' bootstrap/topology/default.toml >"$work/topology.toml"
export ARMFLEET_TOPOLOGY=$work/topology.toml
now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Warm the boot-asset cache (apt-get download once) so both sides start from cached inputs.
"$ig" rpi4 --rootfs "$rootfs" -o "$work/warm.img" >/dev/null
size=$(stat -c %s "$work/warm.img")
rm -f "$work/warm.img" "$work/warm.img.bmap"

# On a terminal imagegen prints each phase with its time: run it under `script` to get them.
t0=$(now)
script -qec "\"$ig\" rpi4 --rootfs \"$rootfs\" -o \"$work/ig.img\"" /dev/null >"$work/ig.log"
t1=$(now)
ig_s=$(secs "$t0" "$t1")
tr '\r' '\n' <"$work/ig.log" | grep -oP '✓ [^:]*: .*?\(\d+\.\d s\)' | sed 's/^✓ \([^:]*\): .*(\([0-9.]*\) s)$/\1: \2 s/' | while IFS= read -r phase; do
  echo "bench: imagegen: phase $phase"
done

# The reference pipeline gets the same boot files (taken from imagegen's image beforehand) and
# the same rootfs + kernel modules tree, with the same partition layout.
mkdir -p "$work/bootfiles"
boot_off=$((4 << 20)); boot_len=$((256 << 20)); root_off=$((boot_off + boot_len)); root_len=$((size - root_off))
MTOOLS_SKIP_CHECK=1 mcopy -n -s -i "$work/ig.img@@$boot_off" '::*' "$work/bootfiles/"
modules=$(ls -d "${ARMFLEET_CACHE_DIR:-$HOME/.cache/armfleet}"/boot-assets/unpacked/*/lib/modules/* 2>/dev/null | head -n1)

t0=$(now)
truncate -s "$size" "$work/ref.img"
printf 'label: dos\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
  $((boot_off / 512)) $((boot_len / 512)) $((root_off / 512)) $((root_len / 512)) | sfdisk -q "$work/ref.img"
truncate -s "$boot_len" "$work/boot.fat"
mkfs.vfat -F 32 -n BOOT "$work/boot.fat" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$work/boot.fat" "$work/bootfiles/"* ::
mkdir "$work/stage"
tar -xzpf "$rootfs" -C "$work/stage" --numeric-owner
if [ -n "$modules" ]; then mkdir -p "$work/stage/usr/lib/modules" && cp -a "$modules" "$work/stage/usr/lib/modules/"; fi
truncate -s "$root_len" "$work/root.ext4"
mke2fs -q -F -t ext4 -L ROOT -d "$work/stage" "$work/root.ext4"
dd if="$work/boot.fat" of="$work/ref.img" bs=4M seek=$((boot_off / 4194304)) conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$work/ref.img" bs=4M seek=$((root_off / 4194304)) conv=notrunc,sparse status=none
sync -f "$work/ref.img"
t1=$(now)
ref_s=$(secs "$t0" "$t1")
echo "bench: imagegen: build rpi4 image ($((size >> 20)) MiB, rootfs $(basename "$(dirname "$rootfs")")): ${ig_s} s (baseline: shell pipeline ${ref_s} s, ratio $(ratio "$ig_s" "$ref_s"))"
rm -rf "$work/stage" "$work/boot.fat" "$work/root.ext4" "$work/ref.img" "$work/ig.img" "$work/ig.img.bmap" "$work/bootfiles"

# Flash: 4 GiB image, ~1 GiB of data in 64 chunks of 16 MiB spread over it.
big="$work/big.img"
truncate -s 4G "$big"
for i in $(seq 0 63); do
  head -c $((16 << 20)) /dev/urandom | dd of="$big" bs=1M seek=$((i * 64)) conv=notrunc status=none
done
"$ig" bmap "$big" >/dev/null
mapped=$(grep -o '<MappedBlocksCount> [0-9]*' "$big.bmap" | awk '{print $2 * 4096}')
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
"$ig" flash "$big" "$work/card-ig.img" --to-file --yes >/dev/null
t1=$(now)
fl_s=$(secs "$t0" "$t1")
rm -f "$work/card-ig.img"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
dd if="$big" of="$work/card-dd.img" bs=4M conv=fsync status=none
t1=$(now)
dd_s=$(secs "$t0" "$t1")
echo "bench: imagegen: flash 4 GiB image with $((mapped >> 20)) MiB data, bytes written: $mapped (baseline: dd $((4 << 30)), ratio $(ratio "$mapped" $((4 << 30))))"
echo "bench: imagegen: flash 4 GiB image with $((mapped >> 20)) MiB data, time incl. read-back verify: ${fl_s} s (baseline: dd ${dd_s} s, ratio $(ratio "$fl_s" "$dd_s"))"
