//! Where armfleet lives on a phone (agreed with node-runtime and the virtual phone), and the boot
//! hook phonectl installs.

/// Everything armfleet puts on a phone, except the boot hook module, lives under here.
pub const BASE: &str = "/data/armfleet";
/// The static aarch64 supervisor, run from Android's side.
pub const BIN: &str = "/data/armfleet/bin/node-runtime";
/// `node.toml` (with `chroot.root = ROOTFS`).
pub const CONFIG: &str = "/data/armfleet/node.toml";
/// The node rootfs (the chroot).
pub const ROOTFS: &str = "/data/armfleet/rootfs";
/// sha256 of the rootfs tarball installed at [`ROOTFS`], written after a successful unpack; how
/// a re-enroll knows the rootfs is current without sending it.
pub const ROOTFS_SHA: &str = "/data/armfleet/rootfs.sha256";
/// The k3s data loop image (created by node-runtime on its first run).
pub const DATA_IMAGE: &str = "/data/armfleet/k3s-data.img";
/// Present when the owner ran `phonectl stop`: the boot hook then leaves the worker stopped.
pub const DISABLED: &str = "/data/armfleet/disabled";
/// The Magisk/KernelSU module directory.
pub const MODULE_DIR: &str = "/data/adb/modules/armfleet";
/// Where the adb shell user (uid 2000) may write: the node-runtime binary is pushed here first.
pub const STAGING_BIN: &str = "/data/local/tmp/armfleet-node-runtime";

/// The module's `service.sh` (late_start, waits for boot, starts node-runtime).
pub const SERVICE_SH: &str = include_str!("../assets/service.sh");

/// The module's `module.prop`, for this phonectl version.
pub fn module_prop() -> String {
    include_str!("../assets/module.prop").replace("@VERSION@", env!("CARGO_PKG_VERSION"))
}
