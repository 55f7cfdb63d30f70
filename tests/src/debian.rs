//! Real Debian arm64 (and armhf) packages as test material, fetched through the host's own apt configuration
//! (`apt-get download`, so no mirror is named here) and cached under the target dir.

use crate::util::cache_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Blocks until the lock on `path` (created if missing) is held: the same lock the tools use on
/// their caches ([`bootstrap::digest::FileLock`]), so tests and tools never fill a cache at once.
pub fn lock(path: &Path) -> bootstrap::digest::FileLock {
    bootstrap::digest::FileLock::acquire(path)
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()))
}

/// The `.deb` of `package` for arm64 (e.g. `busybox-static`), downloaded once.
pub fn arm64_deb(package: &str) -> PathBuf {
    deb(package, "arm64")
}

/// The `.deb` of `package` for the Debian architecture `arch`, downloaded once.
pub fn deb(package: &str, arch: &str) -> PathBuf {
    let dir = cache_dir("debs");
    let _lock = lock(&dir.join(".lock"));
    if let Some(found) = find_deb(&dir, package, arch) {
        return found;
    }
    let out = Command::new("apt-get")
        .args(["download", "-q", &format!("{package}:{arch}")])
        .current_dir(&dir)
        .output()
        .expect("run apt-get download");
    assert!(
        out.status.success(),
        "apt-get download {package}:{arch} failed (scripts/setup.sh adds the arm64 and armhf \
         architectures): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    find_deb(&dir, package, arch)
        .unwrap_or_else(|| panic!("{package}:{arch} .deb not found after download"))
}

fn find_deb(dir: &Path, package: &str, arch: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(&format!("_{arch}.deb"))
        })
        .collect();
    debs.sort();
    debs.pop()
}

/// The files of the arm64 package `package`, extracted once (`dpkg-deb -x`); do not modify them:
/// copy what you need.
pub fn arm64_package_tree(package: &str) -> PathBuf {
    package_tree(package, "arm64")
}

/// The files of `package` for the Debian architecture `arch`, extracted once; do not modify them.
pub fn package_tree(package: &str, arch: &str) -> PathBuf {
    let deb = deb(package, arch);
    let root = cache_dir("pkgtrees");
    let _lock = lock(&root.join(".lock"));
    let tree = root.join(if arch == "arm64" {
        package.to_owned()
    } else {
        format!("{package}_{arch}")
    });
    if tree.join(".complete").exists() {
        return tree;
    }
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

/// Lays out a minimal aarch64 userland at `dest`: Debian's static busybox as `/bin/busybox` with
/// its applets linked in `/bin`, plus the usual empty top-level directories. Enough for a chroot
/// in which aarch64 programs run (through binfmt) and a shell can script.
pub fn busybox_rootfs(dest: &Path) {
    let tree = arm64_package_tree("busybox-static");
    for dir in [
        "bin",
        "sbin",
        "etc",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "var/lib",
        "var/log",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "root",
    ] {
        std::fs::create_dir_all(dest.join(dir)).unwrap();
    }
    let busybox = dest.join("bin/busybox");
    std::fs::copy(tree.join("bin/busybox"), &busybox).expect("copy busybox");
    let out = Command::new(&busybox).arg("--list").output().expect(
        "run aarch64 busybox through binfmt (is qemu-aarch64 registered? run scripts/setup.sh)",
    );
    assert!(out.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = dest.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).unwrap();
        }
    }
}
