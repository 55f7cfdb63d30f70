#!/usr/bin/env bash
# node-runtime figures: stripped static aarch64 binary size (goal <= 4 MiB), resident memory of
# the supervisor while it supervises the k3s stand-in (goal <= 8 MiB; measured on a NATIVE x86_64
# release build next to the native stand-in, because RSS under qemu-user is qemu's, not ours),
# and the supervisor's idle CPU over 10 s (goal ~0: it sleeps in sigtimedwait between events).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"

# 1. Size of what ships: the cross-built static aarch64 binary.
scripts/cross-build.sh >/dev/null
bin="$target/aarch64-unknown-linux-musl/release/node-runtime"
size=$(stat -c %s "$bin")
goal=$((4 * 1024 * 1024))
awk -v s="$size" -v g="$goal" 'BEGIN { printf "bench: node-runtime: aarch64 static stripped binary: %.2f MiB (baseline: goal %.2f MiB, ratio %.2f)\n", s/1048576, g/1048576, s/g }'

# 2./3. RSS and idle CPU of the native build supervising the native stand-in.
cargo build --release -q -p node-runtime --bin node-runtime -p k3s-standin --bin k3s-standin
nr="$target/release/node-runtime"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$target/release/k3s-standin" "$work/k3s"
printf 'K10bench::server:benchtoken\n' >"$work/token"; chmod 600 "$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/node.toml" <<TOML
status_file = "$work/status.json"
[node]
name = "bench"
kind = "pi"
[server]
url = "https://10.10.0.1:6443"
token_file = "$work/token"
[k3s]
bin = "$work/k3s"
data_dir = "$work/data"
kubelet_args = ["healthz-port=$port"]
[network]
node_ip = "127.0.0.1"
[supervise]
healthz_port = $port
[logs]
dir = "$work/log"
TOML
"$nr" run --config "$work/node.toml" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q '"healthy": true' "$work/status.json" 2>/dev/null && break; sleep 0.1; done
agent=$(python3 -c "import json; print(json.load(open('$work/status.json'))['agent_pid'])")
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
r_nr=$(rss "$pid"); r_agent=$(rss "$agent")
awk -v a="$r_nr" -v b="$r_agent" 'BEGIN { printf "bench: node-runtime: supervisor RSS while supervising (native x86_64 build): %.2f MiB (baseline: the stand-in it supervises %.2f MiB, ratio %.2f; goal <= 8 MiB)\n", a/1024, b/1024, a/b }'

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
sleep 60 & sl=$!  # outlives the window, so its /proc entry is still there at the end
t0=$(ticks "$pid"); s0=$(ticks "$sl")
sleep 10
t1=$(ticks "$pid"); s1=$(ticks "$sl") || s1=$s0
hz=$(getconf CLK_TCK)
awk -v d="$((t1 - t0))" -v b="$((s1 - s0))" -v hz="$hz" 'BEGIN { printf "bench: node-runtime: supervisor CPU over 10 s idle: %.3f s (baseline: sleep(1) %.3f s, ratio %s)\n", d/hz, b/hz, (b > 0 ? sprintf("%.2f", d/b) : "n/a (baseline 0)") }'
kill "$sl" 2>/dev/null || true
kill -TERM "$pid"; wait "$pid" || true

# 4. The router's artifact mirror: a 256 MiB file (k3s-arm64 is ~70 MiB, the airgap archive
# more) fetched over 127.0.0.1 with curl, best of 3, against Python's http.server serving the
# same directory; and the mirror's resident memory after serving it.
command -v curl >/dev/null || { echo "bench: node-runtime: mirror: needs curl (apt-get install curl)"; exit 1; }
mdir="$work/mirror"; mkdir -p "$mdir"
head -c $((256 << 20)) /dev/urandom >"$mdir/blob"
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$nr" mirror --quiet --dir "$mdir" --listen "127.0.0.1:$mport" & mpid=$!
(cd "$mdir" && exec python3 -m http.server --bind 127.0.0.1 "$bport" >/dev/null 2>&1) & bpid=$!
for p in "$mport" "$bport"; do
  for _ in $(seq 100); do curl -sfI "http://127.0.0.1:$p/blob" >/dev/null && break; sleep 0.1; done
done
best() {
  local url=$1 b=999999 t
  for _ in 1 2 3; do
    t=$(curl -sf -o /dev/null -w '%{time_total}' "$url")
    b=$(awk -v a="$t" -v b="$b" 'BEGIN { print (a < b ? a : b) }')
  done
  echo "$b"
}
t_m=$(best "http://127.0.0.1:$mport/blob"); t_b=$(best "http://127.0.0.1:$bport/blob")
awk -v m="$t_m" -v b="$t_b" 'BEGIN { printf "bench: node-runtime: mirror serves 256 MiB over 127.0.0.1: %.3f s, %.0f MiB/s (baseline: python3 http.server %.3f s, ratio %.2f)\n", m, 256/m, b, m/b }'
awk -v a="$(rss "$mpid")" 'BEGIN { printf "bench: node-runtime: mirror RSS after serving 3 x 256 MiB: %.2f MiB (baseline: goal <= 8 MiB, ratio %.2f)\n", a/1024, a/1024/8 }'
kill "$mpid" "$bpid" 2>/dev/null || true
