//! Node rootfs tarballs for the end-to-end tests, built with the real `bootstrap::rootfs` overlay
//! and cached under the target dir (flock-protected: parallel test processes build once).
//!
//! - [`mini_node_rootfs`]: seconds to build; Debian's static busybox as the userland, the
//!   cross-built `node-runtime` and the k3s stand-in as `/usr/local/bin/k3s`. For the fast tests
//!   of phonectl and imagegen.
//! - [`real_node_rootfs`]: the real thing, a Debian bookworm arm64 base from mmdebstrap (minutes
//!   the first time, then cached) with the same overlay. For the slow tier.

use crate::debian::{busybox_rootfs, lock};
use crate::util::{aarch64_bin, cache_dir};
use bootstrap::progress::Silent;
use bootstrap::rootfs::{Base, BuildRequest, MmdebstrapSpec, OverlayInputs, build};
use std::path::{Path, PathBuf};

/// Fixed so the fixtures' bytes do not depend on the environment (`SOURCE_DATE_EPOCH` of the real rootfs).
pub const FIXTURE_EPOCH: u64 = 1_700_000_000;

/// Writes `dir` as an uncompressed tar with `./` paths, sorted, owners root, fixed mtimes.
fn tar_tree(dir: &Path, out: &Path) {
    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).expect("create base tar");
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths);
    paths.sort_by(|a, b| a.components().cmp(b.components()));
    builder.append_dir(".", dir).expect("append root directory");
    for rel in paths {
        let full = dir.join(&rel);
        builder
            .append_path_with_name(&full, Path::new(".").join(&rel))
            .unwrap_or_else(|e| panic!("append {}: {e}", full.display()));
    }
    builder
        .into_inner()
        .expect("finish tar")
        .into_inner()
        .expect("flush tar")
        .sync_all()
        .unwrap();
    std::fs::rename(&tmp, out).unwrap();
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read tree") {
        let entry = entry.unwrap();
        let path = entry.path();
        out.push(path.strip_prefix(root).unwrap().to_owned());
        if entry.file_type().unwrap().is_dir() {
            collect(root, &path, out);
        }
    }
}

/// A small node rootfs (`rootfs.tar.gz`): busybox userland + node-runtime + the k3s stand-in as
/// `/usr/local/bin/k3s` + the systemd unit and armfleet's directories. Built once, then cached
/// (rebuilt when node-runtime or the stand-in change).
pub fn mini_node_rootfs() -> PathBuf {
    let dir = cache_dir("node-rootfs-mini");
    let _lock = lock(&dir.join(".lock"));
    let base = mini_base_tarball();
    let req = BuildRequest {
        base: Base::Tarball(base),
        overlay: OverlayInputs {
            node_runtime: aarch64_bin("node-runtime"),
            k3s: Some(aarch64_bin("k3s-standin")),
            epoch: FIXTURE_EPOCH,
        },
        cache: dir.join("cache"),
        refresh_base: false,
    };
    build(&req, &Silent)
        .unwrap_or_else(|e| panic!("building the mini node rootfs: {e}"))
        .tarball
}

/// [`mini_node_rootfs`] without a k3s binary: what a phone gets when k3s comes separately (from
/// the laptop over USB, or fetched by node-runtime).
pub fn mini_node_rootfs_without_k3s() -> PathBuf {
    let dir = cache_dir("node-rootfs-mini-no-k3s");
    let _lock = lock(&dir.join(".lock"));
    let base = mini_base_tarball();
    let req = BuildRequest {
        base: Base::Tarball(base),
        overlay: OverlayInputs {
            node_runtime: aarch64_bin("node-runtime"),
            k3s: None,
            epoch: FIXTURE_EPOCH,
        },
        cache: dir.join("cache"),
        refresh_base: false,
    };
    build(&req, &Silent)
        .unwrap_or_else(|e| panic!("building the mini node rootfs without k3s: {e}"))
        .tarball
}

/// The busybox base of the mini rootfs (an uncompressed tar), built once: what `--base` takes in
/// tests that build a node rootfs through the tools themselves.
pub fn mini_base_tarball() -> PathBuf {
    let dir = cache_dir("node-rootfs-mini");
    let base = dir.join("busybox-base.tar");
    let _lock = lock(&dir.join(".base-lock"));
    if !base.exists() {
        let tree = tempfile::tempdir_in(&dir).expect("temp dir");
        busybox_rootfs(tree.path());
        tar_tree(tree.path(), &base);
    }
    base
}

/// The real node rootfs: Debian bookworm arm64 from mmdebstrap (host's apt mirror) + node-runtime
/// (no k3s binary: node-runtime fetches the pinned one). Slow the first time (several minutes under
/// qemu-user), then cached under the target dir.
pub fn real_node_rootfs() -> PathBuf {
    real_node_rootfs_build().tarball
}

/// [`real_node_rootfs`] with its manifest and whether it came from the cache.
pub fn real_node_rootfs_build() -> bootstrap::rootfs::Built {
    let dir = cache_dir("node-rootfs-real");
    let _lock = lock(&dir.join(".lock"));
    let req = BuildRequest {
        base: Base::Mmdebstrap(MmdebstrapSpec::default_for_host()),
        overlay: OverlayInputs {
            node_runtime: aarch64_bin("node-runtime"),
            k3s: None,
            epoch: FIXTURE_EPOCH,
        },
        cache: dir.join("cache"),
        refresh_base: false,
    };
    build(&req, &Silent).unwrap_or_else(|e| panic!("building the real node rootfs: {e}"))
}

/// The embedded default topology with its k3s download pointed at a closed port on 127.0.0.1:
/// tests build real images and configs from the default lab, but never reach past this machine.
pub fn offline_topology() -> PathBuf {
    let text = bootstrap::topology::DEFAULT_TOPOLOGY;
    let start = text
        .find("https://github.com/")
        .expect("the default topology pins a k3s URL");
    let end = start + text[start..].find('"').expect("quoted URL");
    let offline = format!(
        "{}http://127.0.0.1:9/k3s-arm64{}",
        &text[..start],
        &text[end..]
    );
    let path = cache_dir("topology").join("offline-default.toml");
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, offline).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}
