//! phonectl: rooted Android phones as k3s workers, over ADB.
//!
//! - [`adb`]: the adb server's host protocol (shell v2 with real exit codes, sync push/pull).
//! - [`device`]: the [`device::Device`] trait everything else goes through.
//! - [`doctor`]: the read-only preflight and its verdicts.
//! - [`enroll`]: enroll, start/stop, status, unenroll.
//! - [`layout`]: where armfleet lives on a phone; the boot hook.
#![deny(missing_docs)]

pub mod adb;
pub mod device;
pub mod doctor;
pub mod enroll;
pub mod layout;

/// The kernel checker phonectl uses: `node-runtime`'s own, run on the host.
pub fn check_kernel(config_gz: &[u8]) -> Result<doctor::KernelMissing, String> {
    let text = node_runtime::kernel::read_config_gz(config_gz).map_err(|e| e.to_string())?;
    let report = node_runtime::kernel::check_kernel_config(&text);
    Ok(doctor::KernelMissing {
        required: report
            .required_missing
            .iter()
            .map(|o| o.name.clone())
            .collect(),
        optional: report
            .optional_missing
            .iter()
            .map(|o| o.name.clone())
            .collect(),
    })
}
