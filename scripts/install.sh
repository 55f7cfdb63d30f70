#!/usr/bin/env bash
# Installs armfleet's laptop tools from this checkout: phonectl and imagegen, the static aarch64
# node-runtime they send to workers (as node-runtime-aarch64 next to them, where both look for it
# first), shell completions (bash, zsh, fish) and man pages.
#
#   scripts/install.sh                          # into ~/.local (bin/, share/)
#   scripts/install.sh --prefix /usr/local      # system-wide (run as root)
#   scripts/install.sh --profile dev            # unoptimised, faster to build
#
# Needs what scripts/setup.sh installs (Rust, the aarch64 cross linker). Nothing is left half
# installed: each file is copied beside its destination and renamed into place.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${HOME:?HOME is not set; pass --prefix DIR}/.local"
profile=release
usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install: --prefix needs a directory" >&2; exit 2; }; prefix="$2"; shift 2 ;;
    --profile) [ $# -ge 2 ] || { echo "install: --profile needs release or dev" >&2; exit 2; }; profile="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) outdir=release ;;
  dev) outdir=debug ;;
  *) echo "install: --profile must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
case "$prefix" in
  /*) ;;
  *) prefix="$PWD/$prefix" ;;
esac

target_dir="${CARGO_TARGET_DIR:-target}"
echo "install: building phonectl and imagegen ($profile)" >&2
cargo build --locked --profile "$profile" -p phonectl --bin phonectl -p imagegen --bin imagegen
echo "install: building node-runtime for aarch64" >&2
node_runtime="$(scripts/cross-build.sh | tail -n1)"

# put SRC DEST MODE: copy beside DEST, then rename (never a half-written tool on PATH).
put() {
  local dir; dir="$(dirname "$2")"
  mkdir -p "$dir"
  install -m "$3" "$1" "$dir/.$(basename "$2").new"
  mv -f "$dir/.$(basename "$2").new" "$2"
}
# generated TOOL ARGS... DEST: the tool's own output (completions), installed like a file.
generated() {
  local tool="$1" dest="${*: -1}" tmp
  tmp="$(mktemp)"
  "$prefix/bin/$tool" "${@:2:$#-2}" > "$tmp"
  put "$tmp" "$dest" 0644
  rm -f "$tmp"
}

put "$target_dir/$outdir/phonectl" "$prefix/bin/phonectl" 0755
put "$target_dir/$outdir/imagegen" "$prefix/bin/imagegen" 0755
put "$node_runtime" "$prefix/bin/node-runtime-aarch64" 0755
for tool in phonectl imagegen; do
  generated "$tool" completions bash "$prefix/share/bash-completion/completions/$tool"
  generated "$tool" completions zsh "$prefix/share/zsh/site-functions/_$tool"
  generated "$tool" completions fish "$prefix/share/fish/vendor_completions.d/$tool.fish"
  mandir="$(mktemp -d)"
  "$prefix/bin/$tool" man --dir "$mandir"
  for page in "$mandir"/*.1; do put "$page" "$prefix/share/man/man1/$(basename "$page")" 0644; done
  rm -rf "$mandir"
done

echo "installed into $prefix: bin/phonectl, bin/imagegen, bin/node-runtime-aarch64, completions, man pages"
"$prefix/bin/phonectl" --version
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on your PATH: add  export PATH=\"$prefix/bin:\$PATH\"  to your shell's profile" ;;
esac
