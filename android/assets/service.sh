#!/system/bin/sh
# armfleet boot hook (Magisk/KernelSU module, late_start service stage; installed by
# `phonectl enroll`). late_start is non-blocking, but wait for Android to finish booting anyway:
# /data is decrypted and the network stack is up only then.
ARMFLEET=/data/armfleet
until [ "$(getprop sys.boot_completed)" = "1" ]; do sleep 2; done
[ -x "$ARMFLEET/bin/node-runtime" ] || exit 0
[ -f "$ARMFLEET/disabled" ] && exit 0
exec "$ARMFLEET/bin/node-runtime" run --detach --config "$ARMFLEET/node.toml" \
  >>"$ARMFLEET/boot.log" 2>&1
