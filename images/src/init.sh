#!/bin/sh
# armfleet initramfs /init (written by imagegen). Loads the SD card / virtio and ext4 drivers,
# finds the root partition by the disk signature in root=PARTUUID=<signature>-<n>, grows that
# partition to the end of the card if it is the last one (first boot; systemd then grows the
# ext4 online through x-systemd.growfs), and switches to the root filesystem.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "armfleet-initramfs: $*" >/dev/kmsg 2>/dev/null || echo "armfleet-initramfs: $*"; }

for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null
done

root=""; init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=PARTUUID=*) root="${arg#root=PARTUUID=}" ;;
        init=*) init="${arg#init=}" ;;
    esac
done
sig="${root%-*}"; partnum=$((0x${root##*-}))
[ -n "$root" ] || { say "no root=PARTUUID= on the kernel command line"; exec sh; }

find_root() {
    for d in /sys/block/*; do
        disk="${d##*/}"
        [ -b "/dev/$disk" ] || continue
        s=$(od -A n -t x4 -j 440 -N 4 "/dev/$disk" 2>/dev/null | tr -d ' \n')
        [ "$s" = "$sig" ] || continue
        for p in "$d/$disk"*; do
            [ "$(cat "$p/partition" 2>/dev/null)" = "$partnum" ] && { rootdev="${p##*/}"; return 0; }
        done
    done
    return 1
}

tries=0
until find_root; do
    tries=$((tries + 1))
    [ $tries -gt 300 ] && { say "root partition PARTUUID=$root not found after 30 s"; exec sh; }
    sleep 0.1
done
say "root is /dev/$rootdev on /dev/$disk"

# Grow the root partition to the end of the disk when it is the last primary partition.
start=$(cat "/sys/block/$disk/$rootdev/start"); size=$(cat "/sys/block/$disk/$rootdev/size")
total=$(cat "/sys/block/$disk/size"); last=1
for p in "/sys/block/$disk/$disk"*; do
    [ -f "$p/start" ] && [ "$(cat "$p/start")" -gt "$start" ] && last=0
done
max=$((total - start)); [ $max -gt 4294967295 ] && max=4294967295
if [ $last = 1 ] && [ $partnum -le 4 ] && [ $max -gt $((size + 2048)) ]; then
    o() { printf '%03o' $(( ($1 >> $2) & 255 )); }
    printf "\\$(o $max 0)\\$(o $max 8)\\$(o $max 16)\\$(o $max 24)" |
        dd of="/dev/$disk" bs=1 seek=$((446 + 16 * (partnum - 1) + 12)) count=4 conv=notrunc 2>/dev/null
    sync
    blockdev --rereadpt "/dev/$disk" && say "root partition grown to $((max / 2048)) MiB"
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b "/dev/$rootdev" ] && break; sleep 0.1; done
fi

mount -t ext4 -o rw "/dev/$rootdev" /root || { say "cannot mount /dev/$rootdev"; exec sh; }
mount --move /dev /root/dev 2>/dev/null || umount /dev
umount /proc /sys
exec switch_root /root "$init"
