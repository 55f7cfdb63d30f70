//! Paths and one-time builds shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Cargo's target directory for this build (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// A scratch/cache directory under the target dir that survives between test runs
/// (downloaded Debian packages, built rootfs trees). Created on first use.
pub fn cache_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("armfleet-test-cache").join(name);
    std::fs::create_dir_all(&dir).expect("create test cache dir");
    dir
}

/// The cross-built static aarch64 binary `name` (`node-runtime` or `k3s-standin`).
///
/// `scripts/test.sh` builds them before the tests run; when a test is run on its own and the
/// binary is missing, it is built here once (`scripts/cross-build.sh --test-tools`) under a file
/// lock, so parallel tests do not build it twice.
pub fn aarch64_bin(name: &str) -> PathBuf {
    let path = target_dir()
        .join("aarch64-unknown-linux-musl/release")
        .join(name);
    if path.exists() && std::env::var_os("ARMFLEET_REBUILD_AARCH64").is_none() {
        return path;
    }
    let lock_path = target_dir().join("armfleet-cross-build.lock");
    std::fs::create_dir_all(target_dir()).ok();
    let lock = std::fs::File::create(&lock_path).expect("create build lock");
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if !path.exists() || std::env::var_os("ARMFLEET_REBUILD_AARCH64").is_some() {
        let status = Command::new(workspace_root().join("scripts/cross-build.sh"))
            .arg("--test-tools")
            .current_dir(workspace_root())
            .status()
            .expect("run scripts/cross-build.sh");
        assert!(
            status.success(),
            "scripts/cross-build.sh --test-tools failed"
        );
    }
    drop(lock);
    assert!(
        path.exists(),
        "{} missing after cross-build",
        path.display()
    );
    path
}

/// The host (x86_64) binary `bin` of workspace package `package`, built once per test process
/// (cargo is a no-op when it is current, and `scripts/test.sh` builds every binary beforehand),
/// so a test never runs a stale binary.
pub fn host_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", target_dir())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
        built.push(bin.to_owned());
    }
    target_dir().join("debug").join(bin)
}

/// Called by a test that cannot run on this machine because it lacks `what` (root, a loop device,
/// a block-device root filesystem). It fails the test — a missing capability in CI must fail the
/// run, not pass silently — unless the developer asked to skip with `ARMFLEET_ALLOW_SKIP=1`;
/// then it says so and the test returns early. Returns whether to skip.
#[must_use = "return from the test when it says to skip"]
pub fn skip_for_missing(what: &str) -> bool {
    if std::env::var_os("ARMFLEET_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (ARMFLEET_ALLOW_SKIP=1): this test needs {what}");
        return true;
    }
    panic!(
        "this test needs {what}, which this machine lacks: run the tests as root on a machine that has it (scripts/test.sh sets it up), or set ARMFLEET_ALLOW_SKIP=1 to skip such tests deliberately"
    );
}

/// A finished command's exit code, stdout and stderr, for an assertion's message.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `debugfs -R CMD` on the image's root filesystem (partition 2), copied out to `scratch`.
pub fn root_fs_debugfs(image: &Path, scratch: &Path, cmd: &str) -> String {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let root = &json["partitiontable"]["partitions"][1];
    let (start, size) = (
        root["start"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
    );
    let dd = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", scratch.display()))
        .args([
            "bs=512",
            "conv=sparse",
            "status=none",
            "iflag=count_bytes,skip_bytes",
        ])
        .arg(format!("skip={}", start * 512))
        .arg(format!("count={}", size * 512))
        .status()
        .unwrap();
    assert!(dd.success());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(scratch)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(scratch);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
