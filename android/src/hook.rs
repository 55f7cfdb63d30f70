//! The boot hook phonectl installs: a Magisk/KernelSU module whose `service.sh` starts
//! node-runtime after boot. Where everything else lives on a phone is
//! [`bootstrap::layout::phone`].

/// The module's `service.sh` (late_start, waits for boot, starts node-runtime).
pub const SERVICE_SH: &str = include_str!("../assets/service.sh");

/// The module's `module.prop`, for this phonectl version.
pub fn module_prop() -> String {
    include_str!("../assets/module.prop").replace("@VERSION@", env!("CARGO_PKG_VERSION"))
}

/// `module.prop`'s path on the phone.
pub fn module_prop_path() -> String {
    format!("{}/module.prop", bootstrap::layout::phone::MODULE_DIR)
}

/// `service.sh`'s path on the phone.
pub fn service_path() -> String {
    format!("{}/service.sh", bootstrap::layout::phone::MODULE_DIR)
}
