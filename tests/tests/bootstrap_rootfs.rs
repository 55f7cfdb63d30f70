//! The node rootfs as phonectl and imagegen get it: the mini fixture (busybox base) in the fast
//! tier, the real mmdebstrap Debian arm64 base in the slow tier. The tarballs are read back.

use armfleet_tests::fixtures::{mini_node_rootfs, real_node_rootfs_build};
use armfleet_tests::util::{aarch64_bin, cache_dir};
use bootstrap::progress::Silent;
use bootstrap::rootfs::{Base, BuildRequest, OverlayInputs, build};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
    sha256: String,
}

fn read_back(path: &Path) -> HashMap<String, Entry> {
    let gz =
        flate2::read::GzDecoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut archive = tar::Archive::new(gz);
    let mut out = HashMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let key = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            key,
            Entry {
                kind: e.header().entry_type(),
                mode: e.header().mode().unwrap(),
                uid: e.header().uid().unwrap(),
                gid: e.header().gid().unwrap(),
                link: e.link_name().unwrap().map(|l| l.display().to_string()),
                sha256: bootstrap::digest::sha256_hex(&data),
            },
        );
    }
    out
}

fn assert_overlay(entries: &HashMap<String, Entry>, with_k3s: bool) {
    let nr = &entries["usr/local/bin/node-runtime"];
    assert_eq!(
        (nr.kind, nr.mode, nr.uid, nr.gid),
        (tar::EntryType::Regular, 0o755, 0, 0)
    );
    assert_eq!(
        nr.sha256,
        bootstrap::digest::sha256_file(&aarch64_bin("node-runtime")).unwrap()
    );
    if with_k3s {
        let k3s = &entries["usr/local/bin/k3s"];
        assert_eq!((k3s.mode, k3s.uid), (0o755, 0));
        assert_eq!(
            k3s.sha256,
            bootstrap::digest::sha256_file(&aarch64_bin("k3s-standin")).unwrap()
        );
    }
    let unit = &entries["etc/systemd/system/node-runtime.service"];
    assert_eq!((unit.mode, unit.uid), (0o644, 0));
    assert_eq!(
        unit.sha256,
        bootstrap::digest::sha256_hex(bootstrap::unit::SYSTEMD_UNIT.as_bytes())
    );
    let wants = &entries["etc/systemd/system/multi-user.target.wants/node-runtime.service"];
    assert_eq!(wants.kind, tar::EntryType::Symlink);
    assert_eq!(
        wants.link.as_deref(),
        Some("/etc/systemd/system/node-runtime.service")
    );
    for dir in ["etc/armfleet", "var/lib/armfleet", "var/log/armfleet"] {
        assert_eq!(entries[dir].kind, tar::EntryType::Directory, "{dir}");
    }
}

#[test]
fn mini_node_rootfs_carries_node_runtime_the_standin_and_the_unit() {
    let tarball = mini_node_rootfs();
    let entries = read_back(&tarball);
    assert_overlay(&entries, true);
    assert_eq!(entries["bin/busybox"].kind, tar::EntryType::Regular);
    assert_eq!(entries["bin/sh"].kind, tar::EntryType::Symlink);
    // Asking again is a cache hit: same file, same bytes.
    let again = mini_node_rootfs();
    assert_eq!(again, tarball);
}

/// Build, rebuild from the same base into an empty cache (same bytes), cached rebuild (≤ 1 s),
/// and the content: Debian packages, overlay owners and modes, the unit enabled.
#[test]
fn slow_real_node_rootfs_is_reproducible_and_complete() {
    let built = real_node_rootfs_build();
    let entries = read_back(&built.tarball);
    assert_overlay(&entries, false);
    assert!(!entries.contains_key("usr/local/bin/k3s"));
    // The base is a real Debian arm64 system with what k3s and the Pis need.
    let systemd = built.manifest.packages.iter().find(|p| p.name == "systemd");
    assert_eq!(systemd.map(|p| p.arch.as_str()), Some("arm64"));
    for pkg in [
        "systemd",
        "systemd-sysv",
        "udev",
        "iptables",
        "iproute2",
        "kmod",
        "ca-certificates",
        "openssh-server",
        "wpasupplicant",
        "e2fsprogs",
    ] {
        let p = built
            .manifest
            .packages
            .iter()
            .find(|p| p.name == pkg)
            .unwrap_or_else(|| panic!("{pkg} missing from the manifest"));
        assert!(p.arch == "arm64" || p.arch == "all", "{pkg}: {}", p.arch);
    }
    assert!(
        entries.contains_key("usr/lib/systemd/systemd")
            || entries.contains_key("lib/systemd/systemd")
    );
    assert_eq!(
        entries["usr/sbin/iptables-legacy"].kind,
        tar::EntryType::Symlink
    );
    assert_eq!(entries["dev/null"].kind, tar::EntryType::Char);
    // The dpkg path filters: no manuals, info pages or translations; of the docs, copyrights only.
    let files_under = |dir: &str| -> Vec<&String> {
        entries
            .iter()
            .filter(|(p, e)| p.starts_with(dir) && e.kind == tar::EntryType::Regular)
            .map(|(p, _)| p)
            .collect()
    };
    for dir in ["usr/share/man/", "usr/share/info/", "usr/share/locale/"] {
        assert!(files_under(dir).is_empty(), "{dir}: {:?}", files_under(dir));
    }
    let docs = files_under("usr/share/doc/");
    assert!(docs.iter().all(|p| p.ends_with("/copyright")), "{docs:?}");
    assert!(entries.contains_key("usr/share/doc/systemd/copyright"));
    assert!(!built.manifest.kernel_included);

    // Rebuild from the same base into an empty cache: the same bytes.
    let fresh = tempfile::tempdir_in(cache_dir("node-rootfs-real")).unwrap();
    let again = build(
        &BuildRequest {
            base: Base::Tarball(built.manifest.inputs.base.file.clone().into()),
            overlay: OverlayInputs {
                node_runtime: aarch64_bin("node-runtime"),
                k3s: None,
                epoch: built.manifest.source_date_epoch,
            },
            cache: fresh.path().to_owned(),
            refresh_base: false,
        },
        &Silent,
    )
    .unwrap();
    assert!(!again.cached);
    assert_eq!(again.manifest.tarball.sha256, built.manifest.tarball.sha256);

    // Nothing changed: a hash check.
    let t = std::time::Instant::now();
    let cached = real_node_rootfs_build();
    assert!(cached.cached);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "cached rebuild took {:?}",
        t.elapsed()
    );
    assert_eq!(cached.manifest, built.manifest);
}
