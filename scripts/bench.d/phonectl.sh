#!/usr/bin/env bash
# phonectl against virtual phones through one real adb server (a private one on a free port):
# - first enroll of a realistic-size rootfs (the mini node rootfs + a 160 MiB k3s-sized binary
#   blob) vs `adb push` of the same bytes with the real adb client (goal: ratio <= 1.2, unpack
#   included), over loopback and over a link paced at USB 2's rate;
# - re-enroll with nothing changed (goal: <= 2 s, <= 1 MiB sent);
# - three phones enrolled in parallel (--all) vs one (ratio).
# The first enroll is broken down into phonectl's steps (its --json `timings`), the rootfs unpack
# alone on the phone, and that unpack on the host as aarch64 under qemu-user vs a native build:
# the virtual phone runs node-runtime emulated, a real phone does not.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q -p armfleet-tests --bin vphone
# A release build, as users run it (the laptop side hashes the rootfs).
cargo build -q --release -p phonectl --bin phonectl
# A native build of node-runtime: the baseline that shows what qemu-user adds to the unpack.
cargo build -q --release -p node-runtime --bin node-runtime
native=$CARGO_TARGET_DIR/release/node-runtime
vphone=$CARGO_TARGET_DIR/debug/vphone
phonectl=$CARGO_TARGET_DIR/release/phonectl
nr=$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/node-runtime
[ -x "$nr" ] || bash scripts/cross-build.sh --test-tools >/dev/null
# The mini node rootfs fixture (built and cached by the test harness).
mini=$(find "$CARGO_TARGET_DIR/armfleet-test-cache/node-rootfs-mini" -name '*.tar.gz' -printf '%T@ %p\n' 2>/dev/null |
  sort -n | tail -n1 | cut -d' ' -f2-)
[ -n "$mini" ] || { echo "bench: phonectl: no mini node rootfs cached: run the phonectl tests once" >&2; exit 1; }

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
adbport=$(free_port)
"$vphone" rooted-magisk rooted-magisk rooted-magisk --port "$port" >"$work/vphone.out" 2>&1 &
vpid=$!
upid=
cleanup() {
  HOME=$work adb -P "$adbport" kill-server >/dev/null 2>&1 || true
  [ -z "$upid" ] || kill -INT "$upid" 2>/dev/null || true
  kill -INT "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 300); do [ "$(grep -c 'adb connect' "$work/vphone.out" 2>/dev/null || true)" -ge 3 ] 2>/dev/null && break; sleep 0.1; done
export HOME=$work
adb -P "$adbport" start-server >/dev/null 2>&1
serials=()
for i in 0 1 2; do
  s="127.0.0.1:$((port + i))"
  serials+=("$s")
  adb -P "$adbport" connect "$s" >/dev/null
  adb -P "$adbport" -s "$s" wait-for-device
done

# A realistic rootfs: the mini one plus a k3s-sized binary (random bytes compress like a binary
# does not: the worst case for the transfer).
python3 - "$mini" "$work/rootfs.tar.gz" <<'EOF'
import gzip, io, os, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
with tarfile.open(src, "r:gz") as a, gzip.open(dst, "wb", compresslevel=1) as g, \
        tarfile.open(fileobj=g, mode="w|") as b:
    for m in a:
        b.addfile(m, a.extractfile(m) if m.isfile() else None)
    blob = os.urandom(96 << 20) + bytes(64 << 20)
    info = tarfile.TarInfo("usr/local/lib/k3s-sized-blob"); info.size = len(blob); info.mode = 0o644
    b.addfile(info, io.BytesIO(blob))
EOF
size=$(stat -c %s "$work/rootfs.tar.gz")
echo 'K10aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999::server:bench-token' >"$work/token"
mkdir "$work/configs"
# node.toml for phone SERIAL named NAME (its own health port: the phones share the host's network).
write_config() {
  local hp
  hp=$(free_port)
  cat >"$work/configs/$1.toml" <<EOF
[node]
name = "$2"
kind = "phone"
[server]
url = "https://127.0.0.1:$(free_port)"
[k3s]
kubelet_args = ["healthz-port=$hp"]
[network]
iface = "lo"
nameservers = ["10.10.0.1"]
[chroot]
root = "/data/armfleet/rootfs"
[supervise]
healthz_port = $hp
EOF
}
for i in 0 1 2; do write_config "${serials[$i]}" "bench-$i"; done
pc() { "$phonectl" --adb-port "$adbport" "$@"; }
enroll_args=(--config "$work/configs" --rootfs "$work/rootfs.tar.gz" --node-runtime "$nr"
  --token-file "$work/token" --force --wait 120)
now() { date +%s.%N; }
py() { python3 -c "print($1)"; }

s0=${serials[0]}
t=$(now); adb -P "$adbport" -s "$s0" push "$work/rootfs.tar.gz" /data/local/tmp/bench.tar.gz >/dev/null; t_push=$(py "$(now)-$t")
t=$(now); pc -s "$s0" enroll "${enroll_args[@]}" --json >"$work/e1.json" 2>"$work/e1.err" || { cat "$work/e1.err" >&2; exit 1; }; t_one=$(py "$(now)-$t")
mib=$(py "round($size/1048576)")
# Where the first enroll's time goes: phonectl's own step laps, plus the laptop side before the
# phone is touched (config, token check, process start; the rootfs is hashed during the probe)
# as the rest of the wall time.
python3 - "$work/e1.json" "$t_one" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))[0]["summary"]
wall = float(sys.argv[2])
print(f"bench: phonectl: first enroll step: laptop side before the phone (config, token check, process start): {wall - s['seconds']:.2f} s")
for name, secs in s["timings"]:
    print(f"bench: phonectl: first enroll step: {name}: {secs:.2f} s")
EOF
echo "bench: phonectl: first enroll, ${mib} MiB rootfs incl. unpack and start: $(py "round($t_one,2)") s (baseline: adb push $(py "round($t_push,2)") s, ratio $(py "round($t_one/$t_push,2)"))"

# The rootfs step split: the unpack alone on the phone, from the file pushed above (no transfer).
sha=$(sha256sum "$work/rootfs.tar.gz" | cut -d' ' -f1)
t=$(now)
adb -P "$adbport" -s "$s0" shell "su -c '/data/armfleet/bin/node-runtime unpack --dest /data/armfleet/bench-rootfs --sha256 $sha < /data/local/tmp/bench.tar.gz'" >/dev/null
t_unpack_phone=$(py "$(now)-$t")
adb -P "$adbport" -s "$s0" shell "su -c 'rm -rf /data/armfleet/bench-rootfs /data/local/tmp/bench.tar.gz'"
echo "bench: phonectl: rootfs unpack alone on the virtual phone (no transfer): $(py "round($t_unpack_phone,2)") s (baseline: adb push $(py "round($t_push,2)") s, ratio $(py "round($t_unpack_phone/$t_push,2)"))"
# What of that is emulation: the same unpack on the host, aarch64 under qemu-user (binfmt) vs a
# native build of the same code. A phone runs it natively.
t=$(now); "$nr" unpack --dest "$work/unpack-aarch64" --sha256 "$sha" <"$work/rootfs.tar.gz" >/dev/null; t_emu=$(py "$(now)-$t")
t=$(now); "$native" unpack --dest "$work/unpack-native" --sha256 "$sha" <"$work/rootfs.tar.gz" >/dev/null; t_nat=$(py "$(now)-$t")
rm -rf "$work/unpack-aarch64" "$work/unpack-native"
echo "bench: phonectl: node-runtime unpack on the host, aarch64 under qemu-user: $(py "round($t_emu,2)") s (baseline: native x86_64 build $(py "round($t_nat,2)") s, ratio $(py "round($t_emu/$t_nat,2)"))"
t_est=$(py "max($t_one - ($t_emu - $t_nat), 0)")
echo "bench: phonectl: first enroll without the emulation overhead (estimate: enroll - (emulated - native unpack)): $(py "round($t_est,2)") s (baseline: adb push $(py "round($t_push,2)") s, ratio $(py "round($t_est/$t_push,2)"))"

# The same comparison over a link paced like USB 2 (adb push over USB 2 measured at 38 MB/s on
# a Mi 11: ya-webadb PR 510): a fourth virtual phone whose adbd takes host bytes at that rate.
# There the transfer, not the phone's CPU, is the slow part, as with a real phone on a cable;
# the unpack still runs emulated.
usbport=$(free_port)
"$vphone" rooted-magisk --link-rate 38 --port "$usbport" >"$work/vphone-usb.out" 2>&1 &
upid=$!
for _ in $(seq 300); do grep -q 'adb connect' "$work/vphone-usb.out" 2>/dev/null && break; sleep 0.1; done
su2="127.0.0.1:$usbport"
adb -P "$adbport" connect "$su2" >/dev/null
adb -P "$adbport" -s "$su2" wait-for-device
write_config "$su2" bench-usb2
t=$(now); adb -P "$adbport" -s "$su2" push "$work/rootfs.tar.gz" /data/local/tmp/bench.tar.gz >/dev/null; t_upush=$(py "$(now)-$t")
adb -P "$adbport" -s "$su2" shell rm -f /data/local/tmp/bench.tar.gz
t=$(now); pc -s "$su2" enroll "${enroll_args[@]}" --json >"$work/eu.json" 2>"$work/eu.err" || { cat "$work/eu.err" >&2; exit 1; }; t_uone=$(py "$(now)-$t")
python3 - "$work/eu.json" "$t_uone" <<'EOF2'
import json, sys
s = json.load(open(sys.argv[1]))[0]["summary"]
steps = ", ".join(f"{n} {v:.2f}" for n, v in s["timings"])
print(f"bench: phonectl: first enroll at USB 2 rate, steps (s): laptop side {float(sys.argv[2]) - s['seconds']:.2f}, {steps}")
EOF2
echo "bench: phonectl: first enroll at USB 2 rate (38 MB/s link), ${mib} MiB rootfs incl. unpack and start: $(py "round($t_uone,2)") s (baseline: adb push over the same link $(py "round($t_upush,2)") s, ratio $(py "round($t_uone/$t_upush,2)"); goal <= 1.2)"
pc -s "$su2" unenroll >/dev/null
adb -P "$adbport" disconnect "$su2" >/dev/null
kill -INT "$upid" 2>/dev/null || true
wait "$upid" 2>/dev/null || true
upid=
rm -f "$work/configs/$su2.toml"

t=$(now); out=$(pc -s "$s0" enroll "${enroll_args[@]}" --json 2>/dev/null); t_re=$(py "$(now)-$t")
sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0]["summary"]["bytes_sent"])' "$out")
echo "bench: phonectl: re-enroll unchanged: $(py "round($t_re,2)") s, $sent bytes sent (baseline: first enroll $(py "round($t_one,2)") s, ratio $(py "round($t_re/$t_one,3)"); goal <= 2 s, <= 1048576 bytes)"

pc -s "$s0" unenroll >/dev/null
t=$(now); pc enroll --all "${enroll_args[@]}" >/dev/null 2>"$work/e3.err" || { cat "$work/e3.err" >&2; exit 1; }; t_all=$(py "$(now)-$t")
echo "bench: phonectl: three phones in parallel (--all): $(py "round($t_all,2)") s (baseline: one phone $(py "round($t_one,2)") s, ratio $(py "round($t_all/$t_one,2)"))"
