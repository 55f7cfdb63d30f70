//! The overlay as a tar-to-tar transformation, on a base tarball made here with the shapes a real
//! mmdebstrap base has: `./` paths, device entries first (out of order), a hard link, xattrs.

use bootstrap::progress::Silent;
use bootstrap::rootfs::{Base, BuildRequest, OverlayInputs, build};
use std::io::Read;
use std::path::{Path, PathBuf};

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A base like mmdebstrap's: /dev first, then sorted; an old node-runtime to be replaced.
fn write_base(path: &Path, gz: bool) {
    let file = std::fs::File::create(path).unwrap();
    let out: Box<dyn std::io::Write> = if gz {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut b = tar::Builder::new(out);
    let mut dev = header(tar::EntryType::Char, 0o666, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "./dev/",
        std::io::empty(),
    )
    .unwrap();
    b.append_data(&mut dev, "./dev/null", std::io::empty())
        .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "./",
        std::io::empty(),
    )
    .unwrap();
    for d in [
        "./bin/",
        "./etc/",
        "./usr/",
        "./usr/bin/",
        "./usr/local/",
        "./usr/local/bin/",
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )
        .unwrap();
    }
    let data = b"#!/bin/sh\necho old\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o700, data.len() as u64),
        "./usr/local/bin/node-runtime",
        &data[..],
    )
    .unwrap();
    let ping = b"ping binary";
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..])])
        .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, ping.len() as u64),
        "./bin/ping",
        &ping[..],
    )
    .unwrap();
    let mut link = header(tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut link, "./usr/bin/ping", "./bin/ping")
        .unwrap();
    let os = b"ID=debian\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, os.len() as u64),
        "./etc/os-release",
        &os[..],
    )
    .unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

struct Seen {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    link: Option<String>,
    xattr: bool,
}

fn read_back(path: &Path) -> Vec<Seen> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut a = tar::Archive::new(gz);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let xattr = e
            .pax_extensions()
            .unwrap()
            .map(|exts| {
                exts.into_iter()
                    .any(|x| x.unwrap().key().unwrap().starts_with("SCHILY.xattr"))
            })
            .unwrap_or(false);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Seen {
            path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            kind: e.header().entry_type(),
            mode: e.header().mode().unwrap(),
            uid: e.header().uid().unwrap(),
            gid: e.header().gid().unwrap(),
            mtime: e.header().mtime().unwrap(),
            data,
            link: e.link_name().unwrap().map(|l| l.display().to_string()),
            xattr,
        });
    }
    out
}

fn norm(p: &str) -> &str {
    p.trim_start_matches("./").trim_end_matches('/')
}

#[test]
fn overlay_is_sorted_deterministic_and_has_the_intended_owners_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.tar.gz");
    write_base(&base, true);
    let node_runtime = dir.path().join("node-runtime");
    std::fs::write(&node_runtime, b"\x7fELF new node-runtime").unwrap();
    let k3s = dir.path().join("k3s");
    std::fs::write(&k3s, b"\x7fELF k3s").unwrap();
    let req = |cache: &Path| BuildRequest {
        base: Base::Tarball(base.clone()),
        overlay: OverlayInputs {
            node_runtime: node_runtime.clone(),
            k3s: Some(k3s.clone()),
            epoch: 1_700_000_000,
        },
        cache: cache.to_owned(),
        refresh_base: false,
    };
    let one = build(&req(&dir.path().join("cache-a")), &Silent).unwrap();
    let two = build(&req(&dir.path().join("cache-b")), &Silent).unwrap();
    assert!(!one.cached && !two.cached);
    assert_eq!(
        std::fs::read(&one.tarball).unwrap(),
        std::fs::read(&two.tarball).unwrap(),
        "two builds from the same inputs differ"
    );
    assert_eq!(one.manifest.tarball.sha256, two.manifest.tarball.sha256);
    assert_eq!(
        one.manifest.tarball.sha256,
        bootstrap::digest::sha256_file(&one.tarball).unwrap()
    );

    let entries = read_back(&one.tarball);
    let paths: Vec<&str> = entries.iter().map(|e| norm(&e.path)).collect();
    // Sorted in tree order, root first, /dev moved into place.
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| {
        if a.is_empty() || b.is_empty() {
            a.len().cmp(&b.len())
        } else {
            a.split('/').cmp(b.split('/'))
        }
    });
    // The hard link may only move later than its place, never before its target.
    let link_at = paths.iter().position(|p| *p == "usr/bin/ping").unwrap();
    let target_at = paths.iter().position(|p| *p == "bin/ping").unwrap();
    assert!(target_at < link_at);
    assert_eq!(paths, sorted, "{paths:?}");
    assert_eq!(paths[0], "");
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "usr/local/bin/node-runtime")
            .count(),
        1,
        "old node-runtime not dropped"
    );

    let get = |p: &str| entries.iter().find(|e| norm(&e.path) == p).unwrap();
    let nr = get("usr/local/bin/node-runtime");
    assert_eq!((nr.mode, nr.uid, nr.gid), (0o755, 0, 0));
    assert_eq!(nr.mtime, 1_700_000_000);
    assert_eq!(nr.data, b"\x7fELF new node-runtime");
    let k = get("usr/local/bin/k3s");
    assert_eq!(
        (k.mode, k.uid, k.gid, k.kind),
        (0o755, 0, 0, tar::EntryType::Regular)
    );
    let unit = get("etc/systemd/system/node-runtime.service");
    assert_eq!(unit.mode, 0o644);
    assert_eq!(unit.data, bootstrap::unit::SYSTEMD_UNIT.as_bytes());
    let wants = get("etc/systemd/system/multi-user.target.wants/node-runtime.service");
    assert_eq!(wants.kind, tar::EntryType::Symlink);
    assert_eq!(
        wants.link.as_deref(),
        Some("/etc/systemd/system/node-runtime.service")
    );
    for d in [
        "etc/armfleet",
        "var/lib/armfleet",
        "var/log/armfleet",
        "etc/systemd",
        "etc/systemd/system/multi-user.target.wants",
        "var",
    ] {
        let e = get(d);
        assert_eq!(
            (e.kind, e.mode, e.uid),
            (tar::EntryType::Directory, 0o755, 0),
            "{d}"
        );
    }
    // Base entries are copied untouched: device node, xattr, mtime, the hard link.
    let null = get("dev/null");
    assert_eq!(null.kind, tar::EntryType::Char);
    assert!(get("bin/ping").xattr, "xattr lost");
    assert_eq!(get("etc/os-release").mtime, 1_600_000_000);
    assert_eq!(get("usr/bin/ping").kind, tar::EntryType::Link);
    assert!(
        one.manifest
            .overlay
            .contains(&"usr/local/bin/k3s".to_string())
    );
    assert!(!one.manifest.kernel_included);

    // The system tar unpacks it (as a user would, or imagegen's tools would).
    let out = std::process::Command::new("tar")
        .arg("-tzvf")
        .arg(&one.tarball)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unchanged_inputs_cost_a_hash_check_and_a_changed_input_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.tar");
    write_base(&base, false);
    let node_runtime = dir.path().join("node-runtime");
    std::fs::write(&node_runtime, vec![7u8; 4 << 20]).unwrap();
    let req = BuildRequest {
        base: Base::Tarball(base.clone()),
        overlay: OverlayInputs {
            node_runtime: node_runtime.clone(),
            k3s: None,
            epoch: 1,
        },
        cache: dir.path().join("cache"),
        refresh_base: false,
    };
    let first = build(&req, &Silent).unwrap();
    assert!(!first.cached);
    let t = std::time::Instant::now();
    let second = build(&req, &Silent).unwrap();
    assert!(second.cached);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(second.tarball, first.tarball);
    assert_eq!(second.manifest, first.manifest);
    assert!(
        read_back(&first.tarball)
            .iter()
            .all(|e| norm(&e.path) != "usr/local/bin/k3s")
    );

    std::fs::write(&node_runtime, vec![8u8; 4 << 20]).unwrap();
    let third = build(&req, &Silent).unwrap();
    assert!(!third.cached);
    assert_ne!(third.manifest.tarball.sha256, first.manifest.tarball.sha256);

    // The base rewritten in place (here: the same tree, gzipped) is noticed, not taken from memo.
    write_base(&base, true);
    let fourth = build(&req, &Silent).unwrap();
    assert!(!fourth.cached);
    assert_ne!(
        fourth.manifest.inputs.base.sha256,
        third.manifest.inputs.base.sha256
    );
    assert_eq!(
        fourth.manifest.inputs.base.sha256,
        bootstrap::digest::sha256_file(&base).unwrap()
    );
}

#[test]
fn missing_node_runtime_and_garbage_base_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.tar");
    write_base(&base, false);
    let request = |base: &Path, node_runtime: PathBuf| BuildRequest {
        base: Base::Tarball(base.to_owned()),
        overlay: OverlayInputs {
            node_runtime,
            k3s: None,
            epoch: 1,
        },
        cache: dir.path().join("cache"),
        refresh_base: false,
    };
    let req = request(&base, dir.path().join("nope/node-runtime"));
    let err = build(&req, &Silent).unwrap_err().to_string();
    assert!(
        err.contains("nope/node-runtime") && err.contains("cross-build"),
        "{err}"
    );

    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"\x1f\x8bnot really gzip").unwrap();
    std::fs::write(dir.path().join("nr"), b"x").unwrap();
    let req = request(&junk, dir.path().join("nr"));
    let err = build(&req, &Silent).unwrap_err().to_string();
    assert!(err.contains("junk.tar.gz"), "{err}");
    assert!(
        !dir.path()
            .join("cache/rootfs")
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().path().join("rootfs.tar.gz").exists())
    );
}

mod support;

#[test]
fn pinned_base_is_downloaded_checked_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.tar.gz");
    write_base(&base, true);
    let bytes = std::fs::read(&base).unwrap();
    let pin = bootstrap::digest::sha256_hex(&bytes);
    let server = support::HttpServer::start();
    server.put("/bases/bookworm-arm64.tar.gz", bytes);
    std::fs::write(dir.path().join("nr"), b"node-runtime").unwrap();
    let req = |sha256: String| BuildRequest {
        base: Base::Pinned {
            url: server.url("/bases/bookworm-arm64.tar.gz"),
            sha256,
        },
        overlay: OverlayInputs {
            node_runtime: dir.path().join("nr"),
            k3s: None,
            epoch: 1,
        },
        cache: dir.path().join("cache"),
        refresh_base: false,
    };
    let wrong = "0".repeat(64);
    let err = build(&req(wrong.clone()), &Silent).unwrap_err().to_string();
    assert!(err.contains(&pin) && err.contains(&wrong), "{err}");
    let built = build(&req(pin.clone()), &Silent).unwrap();
    assert_eq!(built.manifest.inputs.base.sha256, pin);
    assert!(
        read_back(&built.tarball)
            .iter()
            .any(|e| norm(&e.path) == "etc/os-release")
    );
    // Again: no second download, a cache hit.
    let requests = server.seen().len();
    assert!(build(&req(pin), &Silent).unwrap().cached);
    assert_eq!(server.seen().len(), requests);
}
