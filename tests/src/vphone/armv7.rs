//! The userland of a 32-bit phone: Debian's armhf busybox and mksh, run through qemu-arm
//! (binfmt_misc), so `uname -m` and every binary are 32-bit ARM as on an armeabi-v7a phone.

use crate::util::cache_dir;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

/// The files of the armhf package `package` (`apt-get download PKG:armhf`, `dpkg-deb -x`),
/// extracted once under the target dir; needs armhf as a dpkg foreign architecture.
pub fn armhf_package_tree(package: &str) -> PathBuf {
    assert!(
        std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-arm").exists(),
        "the armv7 phone needs qemu-arm registered in binfmt_misc (flags PF), see scripts/setup.sh"
    );
    let dir = cache_dir("armhf");
    let lock = std::fs::File::create(dir.join(".lock")).expect("create lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", dir.display());
    let tree = dir.join(package);
    if tree.join(".complete").exists() {
        return tree;
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let out = Command::new("apt-get")
        .args(["download", "-q", &format!("{package}:armhf")])
        .current_dir(&debs)
        .output()
        .expect("run apt-get download");
    assert!(
        out.status.success(),
        "apt-get download {package}:armhf failed (the armv7 phone needs `dpkg --add-architecture \
         armhf && apt-get update`, see scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(&debs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("{package}_")) && n.ends_with("_armhf.deb")
        })
        .expect("downloaded .deb");
    let _ = std::fs::remove_dir_all(&tree);
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .status()
        .expect("run dpkg-deb");
    assert!(status.success(), "dpkg-deb -x {} failed", deb.display());
    std::fs::write(tree.join(".complete"), b"").unwrap();
    tree
}

/// The armhf mksh (Android's shell), static.
pub(crate) fn mksh() -> PathBuf {
    armhf_package_tree("mksh").join("usr/lib/arm-linux-musleabihf/bin/mksh")
}
