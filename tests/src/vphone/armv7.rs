//! The userland of a 32-bit phone: Debian's armhf busybox and mksh, run through qemu-arm
//! (binfmt_misc), so `uname -m` and every binary are 32-bit ARM as on an armeabi-v7a phone.

use std::path::PathBuf;

/// The files of the armhf package `package`, extracted once under the target dir; needs armhf
/// as a dpkg foreign architecture and qemu-arm in binfmt_misc.
pub fn armhf_package_tree(package: &str) -> PathBuf {
    assert!(
        std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-arm").exists(),
        "the armv7 phone needs qemu-arm registered in binfmt_misc (flags PF), see scripts/setup.sh"
    );
    crate::debian::package_tree(package, "armhf")
}

/// The armhf mksh (Android's shell), static.
pub(crate) fn mksh() -> PathBuf {
    armhf_package_tree("mksh").join("usr/lib/arm-linux-musleabihf/bin/mksh")
}
