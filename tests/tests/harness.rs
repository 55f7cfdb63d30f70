//! The harness' own material is real: Debian's arm64 busybox runs here through binfmt.

use armfleet_tests::debian::busybox_rootfs;
use std::process::Command;

#[test]
fn busybox_rootfs_runs_aarch64_shell() {
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    let out = Command::new(dir.path().join("bin/sh"))
        .args(["-c", "uname -m; echo $((6*7))"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "aarch64\n42\n");
}
