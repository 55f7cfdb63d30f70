#!/usr/bin/env bash
# Speed and memory goals, measured as ratios against a baseline run in the same invocation
# (adb push, dd, tar | gzip, ...). Not a test: it reports, it does not pass or fail.
# Each area has a script in scripts/bench.d/; run one with `scripts/bench.sh AREA`.
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-}
for f in scripts/bench.d/*.sh; do
  [ -e "$f" ] || continue
  area=$(basename "$f" .sh)
  [ -n "$only" ] && [ "$only" != "$area" ] && continue
  echo "== bench: $area =="
  bash "$f" || echo "bench: $area: FAILED (exit $?)"
done
