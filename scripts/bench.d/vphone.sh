#!/usr/bin/env bash
# The virtual phone's transfer speed: `adb push`/`adb pull` of 256 MiB through the real adb server
# to a virtual phone, against copying the same file on the same disk with cp (the baseline).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q -p armfleet-tests --bin vphone
vphone=$CARGO_TARGET_DIR/debug/vphone
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
adbport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$vphone" rooted-magisk --port "$port" >"$work/vphone.out" 2>&1 &
vpid=$!
cleanup() {
  adb -P "$adbport" kill-server >/dev/null 2>&1 || true
  kill -INT "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q 'adb connect' "$work/vphone.out" && break; sleep 0.1; done
root=$(sed -n 's/.*(root dir \(.*\))$/\1/p' "$work/vphone.out")
HOME=$work adb -P "$adbport" start-server >/dev/null 2>&1
HOME=$work adb -P "$adbport" connect "127.0.0.1:$port" >/dev/null
HOME=$work adb -P "$adbport" -s "127.0.0.1:$port" wait-for-device
head -c 256M /dev/urandom >"$work/file"
sync
mbps() { python3 -c "print(f'{256/$1:.0f} MB/s')"; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); python3 -c "print($e-$s)"; }
t_cp=$(secs cp "$work/file" "$root/data/local/tmp/baseline")
t_push=$(secs env HOME="$work" adb -P "$adbport" -s "127.0.0.1:$port" push "$work/file" /data/local/tmp/file)
t_pull=$(secs env HOME="$work" adb -P "$adbport" -s "127.0.0.1:$port" pull /data/local/tmp/file "$work/back")
cmp -s "$work/file" "$work/back" || { echo "bench: vphone: pull differs from push" >&2; exit 1; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "bench: vphone: adb push 256 MiB: $(mbps "$t_push") (baseline: cp $(mbps "$t_cp"), ratio $(ratio "$t_cp" "$t_push"))"
echo "bench: vphone: adb pull 256 MiB: $(mbps "$t_pull") (baseline: cp $(mbps "$t_cp"), ratio $(ratio "$t_cp" "$t_pull"))"
