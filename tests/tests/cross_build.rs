//! The one worker binary: static aarch64, and it runs here through binfmt + qemu-user.

use armfleet_tests::util::aarch64_bin;
use std::process::Command;

#[test]
fn node_runtime_is_static_aarch64_and_runs_through_binfmt() {
    let bin = aarch64_bin("node-runtime");
    let file = Command::new("file")
        .arg(&bin)
        .output()
        .expect("run file(1)");
    let described = String::from_utf8_lossy(&file.stdout);
    assert!(described.contains("ARM aarch64"), "{described}");
    assert!(
        described.contains("statically linked") || described.contains("static-pie linked"),
        "{described}"
    );
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run node-runtime");
    assert!(out.status.success(), "{out:?}");
    // The version names the commit the binary was built from, as the host tools' do.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(armfleet_tests::util::workspace_root())
        .output()
        .expect("run git");
    assert!(head.status.success(), "{head:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "node-runtime {} (git {})",
            env!("CARGO_PKG_VERSION"),
            String::from_utf8_lossy(&head.stdout).trim()
        )
    );
}
