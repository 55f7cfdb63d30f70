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

/// The kernel checker phonectl uses: `node-runtime`'s own, run on the host. With the phone's
/// module listing, a `=m` option whose module the phone does not have counts as missing (stock
/// GKI builds `br_netfilter` as a module but does not ship it).
pub fn check_kernel(
    config_gz: &[u8],
    modules: Option<&doctor::ModuleListing>,
) -> Result<doctor::KernelMissing, String> {
    use node_runtime::kernel::{ModuleIndex, OptionState};
    let text = node_runtime::kernel::read_config_gz(config_gz).map_err(|e| e.to_string())?;
    let index = modules.map(|m| {
        let mut index = ModuleIndex::default();
        index.add_paths(&m.files);
        index.add_loaded(&m.loaded);
        index
    });
    let report = node_runtime::kernel::check_kernel_config_with_modules(&text, index.as_ref());
    let names = |list: &[OptionState]| list.iter().map(|o| o.name.clone()).collect();
    Ok(doctor::KernelMissing {
        required: names(&report.required_missing),
        optional: names(&report.optional_missing),
        not_shipped: report
            .required_missing
            .iter()
            .chain(&report.optional_missing)
            .filter_map(|o| Some((o.name.clone(), o.module_not_shipped.clone()?)))
            .collect(),
    })
}
