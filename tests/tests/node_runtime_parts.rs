//! node-runtime's parts, driven through the cross-built aarch64 binary (binfmt/qemu-user) where
//! the binary matters: check-kernel on real kernel configs, unpack of cut/corrupted streams, the
//! k3s fetch from a local HTTP mirror, the battery policy over a fake power_supply dir, each bad
//! input of the issue, and the phone chroot as root into a busybox aarch64 rootfs.

use armfleet_tests::netns::NetNs;
use armfleet_tests::standin::{KillOnDrop, Node, alive, set_mode, signal, wait_exit, wait_for};
use armfleet_tests::util::{aarch64_bin, skip_for_missing, workspace_root};
use bootstrap::digest::sha256_hex;
use bootstrap::status::AgentState;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/data/kernel-configs")
        .join(name)
}

fn stderr_line(out: &std::process::Output) -> String {
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(e.trim_end().lines().count(), 1, "want one line, got: {e}");
    e
}

// ---------------------------------------------------------------- check-kernel

#[test]
fn debian_arm64_kernel_passes_check_kernel() {
    let out = Command::new(aarch64_bin("node-runtime"))
        .args(["check-kernel", "--config-gz"])
        .arg(fixture("debian-6.1.0-56-arm64.config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok: all") && text.contains("kernel 6.1"),
        "{text}"
    );
}

#[test]
fn stock_gki_kernel_fails_with_the_missing_options_named() {
    let text = std::fs::read_to_string(fixture("android14-6.1-gki_defconfig")).unwrap()
        + &std::fs::read_to_string(fixture("android14-6.1-gki.kconfig-defaults")).unwrap();
    // Through the binary, gzip-compressed as /proc/config.gz is.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("config.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let out = Command::new(aarch64_bin("node-runtime"))
        .args(["check-kernel", "--json", "--config-gz"])
        .arg(&gz)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let report: bootstrap::kernel::KernelReport = serde_json::from_slice(&out.stdout).unwrap();
    let missing: Vec<&str> = report
        .required_missing
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    for want in [
        "PID_NS",
        "IPC_NS",
        "POSIX_MQUEUE",
        "CGROUP_PIDS",
        "CGROUP_DEVICE",
        "NETFILTER_XT_MATCH_ADDRTYPE",
        "NETFILTER_XT_MATCH_IPVS",
    ] {
        assert!(
            missing.contains(&want),
            "{want} not reported missing: {missing:?}"
        );
    }
    for present in ["NET_NS", "MEMCG", "CPUSETS", "VETH", "BRIDGE", "SECCOMP"] {
        assert!(!missing.contains(&present), "{present} wrongly missing");
    }
    // Only a module in GKI (not shipped): reported with its value so the reader sees it.
    let bnf = report
        .ok
        .iter()
        .find(|o| o.name == "BRIDGE_NETFILTER")
        .unwrap();
    assert_eq!(bnf.value.as_deref(), Some("m"));
    let opt: Vec<&str> = report
        .optional_missing
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert!(
        opt.contains(&"VXLAN") && opt.contains(&"USER_NS"),
        "{opt:?}"
    );

    // The library call phonectl doctor makes on the host.
    let r = bootstrap::kernel::check_kernel_config(&text);
    assert!(!r.passes());
    assert!(r.render().contains("FAIL:") && r.render().contains("CONFIG_PID_NS"));

    // With the modules a stock GKI phone ships, `=m` no longer passes for br_netfilter.
    let mut shipped = bootstrap::kernel::ModuleIndex::default();
    shipped.add_paths(&std::fs::read_to_string(fixture("android14-6.1-gki-modules.txt")).unwrap());
    let r = bootstrap::kernel::check_kernel_config_with_modules(&text, Some(&shipped));
    let bnf = r
        .required_missing
        .iter()
        .find(|o| o.name == "BRIDGE_NETFILTER")
        .expect("br_netfilter is not shipped by GKI");
    assert_eq!(bnf.module_not_shipped.as_deref(), Some("br_netfilter"));
    assert!(
        r.render()
            .contains("built as module br_netfilter, which this kernel does not ship"),
        "{}",
        r.render()
    );
    // Built-in options stay present whatever the module list says.
    assert!(
        r.ok.iter()
            .any(|o| o.name == "BRIDGE" && o.value.as_deref() == Some("y"))
    );
}

#[test]
fn kernel_without_cgroups_and_non_configs_are_refused() {
    let text = std::fs::read_to_string(fixture("debian-6.1.0-56-arm64.config"))
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("CONFIG_CGROUP")
                && !l.starts_with("CONFIG_MEMCG")
                && !l.starts_with("CONFIG_CPUSETS")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let r = bootstrap::kernel::check_kernel_config(&text);
    let names = r.missing_required_names();
    assert!(
        names.contains("CONFIG_CGROUPS") && names.contains("CONFIG_MEMCG"),
        "{names}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "hello\n").unwrap();
    let out = Command::new(aarch64_bin("node-runtime"))
        .args(["check-kernel", "--config-gz"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("not a kernel config"));
}

// ---------------------------------------------------------------- unpack

/// A header with every numeric field set (tar-rs leaves them empty).
fn base_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A rootfs-like tar.gz with every entry kind `unpack` must keep.
fn sample_rootfs_tgz() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let dir = |path: &str, mode: u32| {
        let mut h = base_header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_cksum();
        (h, path.to_owned())
    };
    for (p, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("tmp", 0o1777),
    ] {
        let (mut h, p) = dir(p, m);
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    }
    let file = |b: &mut tar::Builder<_>, path: &str, body: &[u8], mode: u32, uid: u64| {
        let mut h = base_header();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_cksum();
        b.append_data(&mut h, path, body).unwrap();
    };
    // Enough data that a cut in the middle lands inside a file body.
    let big: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
    file(&mut b, "bin/busybox", &big, 0o755, 0);
    file(&mut b, "etc/shadow", b"root:*:1::::::\n", 0o640, 0);
    file(&mut b, "etc/owned-by-1000", b"x\n", 0o600, 1000);
    let mut h = base_header();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let mut h = base_header();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_link(&mut h, "bin/ls", "bin/busybox").unwrap();
    for (path, kind, major, minor, mode) in [
        ("dev/null", tar::EntryType::Char, 1, 3, 0o666),
        ("dev/loop0", tar::EntryType::Block, 7, 0, 0o660),
        ("dev/initctl", tar::EntryType::Fifo, 0, 0, 0o600),
    ] {
        let mut h = base_header();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    }
    // An xattr (security.capability-like data as a user.* attribute any fs here accepts).
    let mut h = base_header();
    b.append_pax_extensions([("SCHILY.xattr.user.armfleet", b"kept".as_slice())])
        .unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "etc/xattr-file", &b"xa\n"[..])
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn run_unpack(dest: &Path, data: &[u8], sha: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(aarch64_bin("node-runtime"));
    cmd.args(["unpack", "--dest"]).arg(dest);
    if let Some(s) = sha {
        cmd.args(["--sha256", s]);
    }
    output_with_stdin(&mut cmd, data)
}

/// Runs `cmd` with `data` on its stdin (written from another thread: the command may stop
/// reading early) and returns its output.
fn output_with_stdin(cmd: &mut Command, data: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

fn siblings(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unpack_keeps_every_entry_kind_and_swaps_atomically() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old-marker"), "old").unwrap();
    let tgz = sample_rootfs_tgz();
    let out = run_unpack(&dest, &tgz, Some(&sha256_hex(&tgz)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replacing the old tree"));
    assert!(!dest.join("old-marker").exists());
    assert_eq!(siblings(parent.path()), vec!["rootfs"], "no temp dirs left");
    let m = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(m("bin/busybox").permissions().mode() & 0o7777, 0o755);
    assert_eq!(m("etc/shadow").permissions().mode() & 0o7777, 0o640);
    assert_eq!(m("tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(m("etc/owned-by-1000").uid(), 1000);
    assert_eq!(
        std::fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(m("bin/ls").ino(), m("bin/busybox").ino(), "hard link");
    let null = m("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    assert!(m("dev/loop0").file_type().is_block_device());
    assert!(m("dev/initctl").file_type().is_fifo());
    let x = nix_getxattr(&dest.join("etc/xattr-file"), "user.armfleet");
    assert_eq!(x.as_deref(), Some(&b"kept"[..]));
}

fn nix_getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

#[test]
fn broken_streams_leave_the_old_tree_and_no_temp_dir() {
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old-marker"), "old").unwrap();
    let tgz = sample_rootfs_tgz();
    let good_sha = sha256_hex(&tgz);

    let cut = &tgz[..tgz.len() / 2];
    let out = run_unpack(&dest, cut, Some(&good_sha));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains("was left as it was"));

    let mut corrupt = tgz.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x5a;
    let out = run_unpack(&dest, &corrupt, None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A stream that is fine but not the one pinned.
    let out = run_unpack(&dest, &tgz, Some(&"0".repeat(64)));
    assert_eq!(out.status.code(), Some(3));
    let e = stderr_line(&out);
    assert!(e.contains(&good_sha) && e.contains("expected 0000"), "{e}");

    assert_eq!(
        std::fs::read_to_string(dest.join("old-marker")).unwrap(),
        "old"
    );
    assert_eq!(siblings(parent.path()), vec!["rootfs"], "no temp dirs left");
    assert_eq!(siblings(&dest), vec!["old-marker"]);
}

/// A tar.gz of raw entries: (path, kind, link target or data).
fn hostile_tgz(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, extra) in entries {
        let mut h = base_header();
        h.set_entry_type(*kind);
        h.set_mode(0o666);
        if kind.is_symlink() || kind.is_hard_link() {
            h.set_size(0);
            // append_link would refuse `..`; the raw name fields take anything, as an attacker's do.
            h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_link_name_literal(extra).unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            let body = if kind.is_file() {
                extra.as_bytes()
            } else {
                b""
            };
            h.set_size(body.len() as u64);
            if kind.is_character_special() {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            }
            h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Every entry kind tried through a symlink the archive made, and out through `..` and hard links:
/// each archive is refused whole with one line, the installed tree stays, nothing outside changes.
#[test]
fn unpack_refuses_entries_that_reach_outside_the_tree() {
    use tar::EntryType as E;
    let parent = tempfile::tempdir().unwrap();
    let outside = parent.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "precious").unwrap();
    let out_s = outside.to_str().unwrap();
    let dest = parent.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old-marker"), "old").unwrap();
    /// One tar entry: path, kind, link target or file body.
    type Entry<'a> = (&'a str, E, &'a str);
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "a device through the archive's own symlink",
            vec![("esc", E::Symlink, out_s), ("esc/victim", E::Char, "")],
        ),
        (
            "a FIFO through the symlink",
            vec![("esc", E::Symlink, out_s), ("esc/victim", E::Fifo, "")],
        ),
        (
            "a file through the symlink",
            vec![
                ("esc", E::Symlink, out_s),
                ("esc/victim", E::Regular, "evil"),
            ],
        ),
        (
            "a directory through the symlink",
            vec![("esc", E::Symlink, out_s), ("esc/newdir", E::Directory, "")],
        ),
        (
            "a file under a new directory through the symlink",
            vec![("esc", E::Symlink, out_s), ("esc/a/b", E::Regular, "evil")],
        ),
        (
            "a symlink through the symlink",
            vec![("esc", E::Symlink, out_s), ("esc/victim", E::Symlink, "/x")],
        ),
        (
            "a parent component",
            vec![("../outside/victim", E::Regular, "evil")],
        ),
        (
            "a hard link out of the tree",
            vec![("stolen", E::Link, "../outside/victim")],
        ),
        (
            "a hard link through the symlink",
            vec![
                ("esc", E::Symlink, out_s),
                ("stolen", E::Link, "esc/victim"),
            ],
        ),
    ];
    for (what, entries) in cases {
        let tgz = hostile_tgz(&entries);
        let out = run_unpack(&dest, &tgz, None);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e = stderr_line(&out);
        assert!(
            e.contains("unsafe") && e.contains("left as it was"),
            "{what}: {e}"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "precious",
            "{what}: the file outside was changed"
        );
        let m = std::fs::symlink_metadata(outside.join("victim")).unwrap();
        assert!(m.is_file(), "{what}: the file outside was replaced");
        assert_eq!(
            siblings(&outside),
            vec!["victim"],
            "{what}: written outside"
        );
        assert_eq!(siblings(&dest), vec!["old-marker"], "{what}: tree changed");
        assert_eq!(
            siblings(parent.path()),
            vec!["outside", "rootfs"],
            "{what}: temp dir left"
        );
    }
}

/// Python's tarfile (a real, common archiver) writes a FIFO with empty device-number fields.
#[test]
fn unpack_takes_a_fifo_without_device_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("fifo.tar.gz");
    let script = format!(
        "import tarfile\n\
         with tarfile.open('{}', 'w:gz', format=tarfile.GNU_FORMAT) as t:\n\
         \x20   i = tarfile.TarInfo('dev/initctl'); i.type = tarfile.FIFOTYPE; i.mode = 0o600\n\
         \x20   t.addfile(i)\n",
        tgz.display()
    );
    let py = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let data = std::fs::read(&tgz).unwrap();
    // The fields really are empty (NULs), which is what once failed to parse as a number.
    let raw = {
        let mut s = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut s)
            .unwrap();
        s
    };
    assert!(
        raw[329..345].iter().all(|&b| b == 0),
        "{:?}",
        &raw[329..345]
    );
    let dest = dir.path().join("rootfs");
    let out = run_unpack(&dest, &data, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let m = std::fs::symlink_metadata(dest.join("dev/initctl")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
}

// ---------------------------------------------------------------- k3s fetch

/// A one-file HTTP mirror on 127.0.0.1 that honours Range and can cut the first response.
struct Mirror {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn mirror(body: Vec<u8>, cut_first_after: Option<usize>) -> Mirror {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!(
        "http://127.0.0.1:{}/k3s-arm64",
        listener.local_addr().unwrap().port()
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let reqs = Arc::clone(&requests);
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let req = String::from_utf8_lossy(&buf[..got]).into_owned();
            reqs.lock().unwrap().push(req.clone());
            let start = req
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(str::to_owned)
                })
                .and_then(|r| r.trim_end_matches('-').trim().parse::<usize>().ok())
                .unwrap_or(0);
            let part = &body[start.min(body.len())..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    start,
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            let _ = s.write_all(head.as_bytes());
            match cut_first_after {
                Some(n) if first => {
                    let _ = s.write_all(&part[..n.min(part.len())]);
                    // Dropped mid-body: the client sees a short read.
                }
                _ => {
                    let _ = s.write_all(part);
                }
            }
            first = false;
        }
    });
    Mirror { url, requests }
}

fn fetch_node(url: &str, sha: &str) -> Node {
    let mut node = Node::new();
    std::fs::remove_file(node.path("k3s")).unwrap();
    node.k3s_keys = format!("url = \"{url}\"\nsha256 = \"{sha}\"\n");
    node
}

#[test]
fn missing_k3s_is_fetched_from_the_mirror_and_run() {
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let sha = sha256_hex(&standin);
    let m = mirror(standin.clone(), None);
    let node = fetch_node(&m.url, &sha);
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_runs(1, T);
    assert_eq!(std::fs::read(node.path("k3s")).unwrap(), standin);
    assert_eq!(m.requests.lock().unwrap().len(), 1);
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
    // Second start: the binary matches the pin, nothing fetched.
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_runs(2, T);
    assert_eq!(m.requests.lock().unwrap().len(), 1);
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn interrupted_fetch_is_resumed_with_range() {
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let sha = sha256_hex(&standin);
    let m = mirror(standin.clone(), Some(100_000));
    let node = fetch_node(&m.url, &sha);
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_runs(1, T);
    assert_eq!(std::fs::read(node.path("k3s")).unwrap(), standin);
    let reqs = m.requests.lock().unwrap().clone();
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert!(
        reqs[1]
            .to_ascii_lowercase()
            .contains("range: bytes=100000-"),
        "second request did not resume: {}",
        reqs[1]
    );
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn mirror_serving_another_file_is_refused_and_nothing_replaced() {
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let pin = sha256_hex(&standin);
    let m = mirror(b"not the pinned k3s".to_vec(), None);
    let node = fetch_node(&m.url, &pin);
    // An old binary in place (differs from the pin): must survive the refused download.
    std::fs::write(node.path("k3s"), b"old k3s").unwrap();
    let mut rt = node.spawn_run();
    let code = wait_exit(&mut rt, T);
    assert_eq!(code.code(), Some(3));
    let err = node.stderr();
    assert!(err.contains(&m.url) && err.contains(&pin), "{err}");
    assert_eq!(std::fs::read(node.path("k3s")).unwrap(), b"old k3s");
    assert!(!node.path("k3s.part").exists());
    assert!(node.runs().is_empty());
    assert!(node.status().unwrap().message.unwrap().contains(&pin));
}

#[test]
fn airgap_images_are_fetched_into_k3s_images_dir_once() {
    let archive = b"airgap images archive stand-in ".repeat(4000);
    let sha = sha256_hex(&archive);
    let m = mirror(archive.clone(), None);
    let url = m
        .url
        .replace("/k3s-arm64", "/k3s-airgap-images-arm64.tar.zst");
    let mut node = Node::new();
    node.k3s_keys = format!("airgap = {{ url = \"{url}\", sha256 = \"{sha}\" }}\n");
    let placed = node.path("k3s-data/agent/images/k3s-airgap-images-arm64.tar.zst");
    for run in 1..=2 {
        let mut rt = KillOnDrop(node.spawn_run());
        node.wait_runs(run, T);
        signal(rt.0.id(), Signal::SIGTERM);
        assert!(wait_exit(&mut rt.0, T).success());
        // In place, whole and verified, before k3s started; fetched by the first start only.
        assert_eq!(std::fs::read(&placed).unwrap(), archive);
        assert_eq!(m.requests.lock().unwrap().len(), 1);
        let said = node.stderr();
        assert_eq!(
            said.contains(&format!(
                "airgap images {} fetched from {url}",
                placed.display()
            )),
            run == 1,
            "{said}"
        );
    }
}

#[test]
fn an_unreachable_airgap_archive_does_not_hold_k3s_back() {
    let port = armfleet_tests::standin::free_port();
    let url = format!("http://127.0.0.1:{port}/k3s-airgap-images-arm64.tar.zst");
    let mut node = Node::new();
    node.k3s_keys = format!(
        "airgap = {{ url = \"{url}\", sha256 = \"{}\" }}\n",
        "c".repeat(64)
    );
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_runs(1, T);
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
    let err = node.stderr();
    assert!(
        err.contains("airgap images not fetched") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        !node
            .path("k3s-data/agent/images/k3s-airgap-images-arm64.tar.zst")
            .exists()
    );
}

#[test]
fn unreachable_mirror_is_one_clear_line() {
    let port = armfleet_tests::standin::free_port();
    let node = fetch_node(&format!("http://127.0.0.1:{port}/k3s"), &"a".repeat(64));
    let out = node.node_runtime(&["run", "--config", node.write_config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("node-runtime: ") && last.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_configs_and_tokens_give_one_line_and_exit_2() {
    let node = Node::new();
    let cfg = node.write_config();
    let run = |path: &Path| {
        Command::new(aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = run(&node.path("missing.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("missing.toml"));

    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(node.path("malformed.toml"), text.replace("[node]", "[node")).unwrap();
    let out = run(&node.path("malformed.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("line "));

    std::fs::write(
        node.path("unknown.toml"),
        text.replace("kind = \"pi\"", "kind = \"pi\"\nknd = 1"),
    )
    .unwrap();
    let out = run(&node.path("unknown.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("knd"));

    set_mode(&node.path("token"), 0o644);
    let out = run(&cfg);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr_line(&out);
    assert!(e.contains("chmod 600") && !e.contains("s3cr3t"), "{e}");
    // Nothing started, nothing left claiming the node.
    assert!(node.runs().is_empty());
    let pidfile = std::fs::read_to_string(node.path("node-runtime.pid")).unwrap_or_default();
    assert_eq!(pidfile, "", "the pidfile still names a supervisor");
}

/// `unpack` with no stdin at all (fd 0 closed, as a careless service unit or `<&-` leaves it):
/// one line and an exit code, never a panic, and no tree made.
#[test]
fn unpack_with_stdin_closed_fails_with_one_line() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs");
    let mut cmd = Command::new(aarch64_bin("node-runtime"));
    cmd.args(["unpack", "--bytes", "4096", "--dest"])
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: close(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(2) | Some(3)),
        "exit {:?}: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("node-runtime: "), "{err}");
    assert!(!dest.exists(), "a tree was made from no input");
}

// ---------------------------------------------------------------- power policy

#[test]
fn battery_policy_drives_charging_switch_and_agent_pause() {
    let mut node = Node::new();
    let ps = node.path("power_supply");
    let w = |p: &str, v: &str| {
        let f = ps.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, format!("{v}\n")).unwrap();
    };
    w("battery/type", "Battery");
    w("battery/capacity", "70");
    w("battery/status", "Charging");
    w("battery/temp", "312");
    w("battery/charging_enabled", "1");
    w("usb/type", "USB");
    w("usb/online", "1");
    let sys_power = node.path("sys_power");
    std::fs::create_dir_all(&sys_power).unwrap();
    std::fs::write(sys_power.join("wake_lock"), "").unwrap();
    std::fs::write(sys_power.join("wake_unlock"), "").unwrap();
    node.extra_toml = format!(
        "[power]\ncharge_stop_above = 80\ncharge_resume_below = 60\nagent_stop_below = 15\nagent_resume_above = 30\npower_supply_dir = \"{}\"\n",
        ps.display()
    );
    let config = node.write_config();
    let err = std::fs::File::create(node.path("runtime.err")).unwrap();
    let mut rt = KillOnDrop(
        Command::new(aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(&config)
            .env("ARMFLEET_POWER_POLL_MS", "100")
            .env("ARMFLEET_SYS_POWER", &sys_power)
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    let first = node.wait_runs(1, T)[0]["pid"].as_u64().unwrap() as u32;
    assert!(
        std::fs::read_to_string(sys_power.join("wake_lock"))
            .unwrap()
            .contains("armfleet")
    );
    let st = node.wait_status("battery reported", T, |s| s.battery.is_some());
    let b = st.battery.unwrap();
    assert_eq!(b.percent, Some(70));
    assert!((b.temperature_c.unwrap() - 31.2).abs() < 0.01);
    assert_eq!(b.charge_switch.as_deref(), Some("battery/charging_enabled"));

    let read = |p: &str| {
        std::fs::read_to_string(ps.join(p))
            .unwrap()
            .trim()
            .to_owned()
    };
    w("battery/capacity", "85");
    wait_for("charging stopped at 85%", T, || {
        (read("battery/charging_enabled") == "0").then_some(())
    });
    w("battery/capacity", "70");
    w("battery/status", "Not charging");
    // Between the marks: stays off (no flapping).
    node.wait_status("reading at 70%", T, |s| {
        s.battery.as_ref().is_some_and(|b| b.percent == Some(70))
    });
    assert_eq!(read("battery/charging_enabled"), "0");
    w("battery/capacity", "55");
    wait_for("charging resumed at 55%", T, || {
        (read("battery/charging_enabled") == "1").then_some(())
    });

    // Unplugged and low: the agent is stopped gracefully, not restarted.
    w("usb/online", "0");
    w("battery/status", "Discharging");
    w("battery/capacity", "12");
    let st = node.wait_status("paused", T, |s| {
        s.state == AgentState::PausedLowBattery && s.agent_pid.is_none()
    });
    assert!(st.message.unwrap().contains("battery 12%"));
    assert!(!alive(first));
    assert_eq!(node.runs().len(), 1);
    // Charging again but still below the resume mark: stays paused.
    w("usb/online", "1");
    w("battery/status", "Charging");
    w("battery/capacity", "25");
    node.wait_status("reading at 25%", T, |s| {
        s.battery.as_ref().is_some_and(|b| b.percent == Some(25))
    });
    assert_eq!(node.runs().len(), 1);
    w("battery/capacity", "31");
    node.wait_runs(2, T);
    node.wait_status("running again", T, |s| s.state == AgentState::Running);

    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
    assert!(
        std::fs::read_to_string(sys_power.join("wake_unlock"))
            .unwrap()
            .contains("armfleet")
    );
}

/// Charging held off by the policy is given back on every way a supervisor goes: a stop, and —
/// through `node-runtime stop`, which unenroll and re-enroll run — a supervisor killed outright.
/// A new supervisor reads the switch's real state rather than assuming charging is on.
#[test]
fn charging_is_given_back_when_the_supervisor_goes() {
    let mut node = Node::new();
    let ps = node.path("power_supply");
    let w = |p: &str, v: &str| {
        let f = ps.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, format!("{v}\n")).unwrap();
    };
    let read = |p: &str| {
        std::fs::read_to_string(ps.join(p))
            .unwrap()
            .trim()
            .to_owned()
    };
    w("battery/type", "Battery");
    w("battery/capacity", "85");
    w("battery/status", "Charging");
    w("battery/charging_enabled", "1");
    w("usb/type", "USB");
    w("usb/online", "1");
    node.extra_toml = format!(
        "[power]\nwakelock = false\npower_supply_dir = \"{}\"\n",
        ps.display()
    );
    let config = node.write_config();
    let cfg = config.to_str().unwrap();
    let start = || {
        KillOnDrop(
            Command::new(aarch64_bin("node-runtime"))
                .args(["run", "--config", cfg])
                .env("ARMFLEET_POWER_POLL_MS", "100")
                .stderr(std::fs::File::create(node.path("runtime.err")).unwrap())
                .spawn()
                .unwrap(),
        )
    };

    // 1. Held off at 85 %, then a clean stop gives it back.
    let mut rt = start();
    wait_for("charging stopped at 85%", T, || {
        (read("battery/charging_enabled") == "0").then_some(())
    });
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success(), "{}", node.stderr());
    assert_eq!(
        read("battery/charging_enabled"),
        "1",
        "a stop left charging off"
    );

    // 2. Between the marks with the switch found off: the record says off (the real state), and
    //    the stop gives it back.
    w("battery/capacity", "70");
    w("battery/charging_enabled", "0");
    let mut rt = start();
    let pid = rt.0.id();
    let st = node.wait_status("battery read", T, |s| s.pid == pid && s.battery.is_some());
    assert_eq!(st.battery.unwrap().charging_allowed, Some(false));
    assert_eq!(
        read("battery/charging_enabled"),
        "0",
        "between the marks: left as it is"
    );
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success(), "{}", node.stderr());
    assert_eq!(read("battery/charging_enabled"), "1");

    // 3. Killed outright while holding it off: `node-runtime stop` gives it back.
    w("battery/capacity", "85");
    let mut rt = start();
    wait_for("charging stopped again", T, || {
        (read("battery/charging_enabled") == "0").then_some(())
    });
    let pid = rt.0.id();
    let agent = node
        .wait_status("agent", T, |s| s.pid == pid && s.agent_pid.is_some())
        .agent_pid
        .unwrap();
    let _ = rt.0.kill();
    let _ = rt.0.wait();
    assert_eq!(read("battery/charging_enabled"), "0");
    let out = node.node_runtime(&["stop", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read("battery/charging_enabled"),
        "1",
        "stop after a kill left charging off"
    );
    signal(agent, Signal::SIGKILL);
}

// ---------------------------------------------------------------- phone chroot

fn mountinfo_points() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn loop_devices_of(img: &Path) -> String {
    let out = Command::new("losetup").arg("-j").arg(img).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A phone-style worker: busybox aarch64 rootfs with the stand-in as /usr/local/bin/k3s.
fn phone_rootfs(base: &Path, port: u16, data_image: &Path, size_mib: u64) -> PathBuf {
    let root = base.join("rootfs");
    armfleet_tests::debian::busybox_rootfs(&root);
    std::fs::copy(aarch64_bin("k3s-standin"), root.join("usr/local/bin/k3s")).unwrap();
    std::fs::create_dir_all(root.join("etc/armfleet")).unwrap();
    let token = root.join("etc/armfleet/token");
    std::fs::write(&token, format!("{}\n", armfleet_tests::standin::TOKEN)).unwrap();
    set_mode(&token, 0o600);
    let cfg = format!(
        r#"[node]
name = "phone-7"
kind = "phone"
[server]
url = "https://10.10.0.1:6443"
[k3s]
kubelet_args = ["healthz-port={port}"]
data_image = {{ path = "{img}", size_mib = {size_mib} }}
[network]
node_ip = "127.0.0.1"
nameservers = ["10.10.0.1"]
[chroot]
root = "{root}"
[supervise]
healthz_port = {port}
stop_grace_secs = 3
"#,
        img = data_image.display(),
        root = root.display()
    );
    std::fs::write(base.join("node.toml"), cfg).unwrap();
    root
}

#[test]
fn phone_chroot_mounts_inside_only_and_nothing_leaks() {
    if !nix::unistd::Uid::effective().is_root() && skip_for_missing("root (it mounts and chroots)")
    {
        return;
    }
    let loop_ok = Command::new("losetup")
        .arg("-f")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !loop_ok && skip_for_missing("a free loop device (losetup -f failed)") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let port = armfleet_tests::standin::free_port();
    let img = base.path().join("k3s-data.img");
    let root = phone_rootfs(base.path(), port, &img, 256);
    let before = mountinfo_points();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let err = std::fs::File::create(base.path().join("runtime.err")).unwrap();
    let mut rt = KillOnDrop(
        Command::new(aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(base.path().join("node.toml"))
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    let runs_file = root.join("usr/local/bin/k3s.runs");
    let run: serde_json::Value = wait_for(
        "stand-in start in the chroot",
        Duration::from_secs(60),
        || {
            armfleet_tests::standin::run_records(&runs_file)
                .into_iter()
                .next()
        },
    );
    let mounts: Vec<&str> = run["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for want in [
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/run",
        "/sys/fs/cgroup",
        "/var/lib/rancher/k3s",
    ] {
        assert!(
            mounts.contains(&want),
            "{want} not mounted inside: {mounts:?}"
        );
    }
    assert!(
        mounts.iter().any(|m| m.starts_with("/sys/fs/cgroup/")),
        "{mounts:?}"
    );
    assert_eq!(run["hostname"], "phone-7");
    assert_eq!(
        run["env"]["PATH"],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(run["token_file"]["ok"], true, "{run}");
    assert!(
        std::fs::read_to_string(root.join("etc/resolv.conf"))
            .unwrap()
            .contains("nameserver 10.10.0.1")
    );
    assert!(img.exists() && loop_devices_of(&img).contains("k3s-data.img"));
    // Outside: nothing of it (other tests and tools mount things meanwhile: look at ours).
    let ours = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|m| Path::new(m).starts_with(base.path()))
            .cloned()
            .collect()
    };
    assert_eq!(
        ours(&mountinfo_points()),
        Vec::<String>::new(),
        "mounts leaked into the host namespace"
    );
    assert!(ours(&before).is_empty());
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    // The status file is on disk, readable from outside the namespace. The supervisor writes it
    // right after starting the agent, so it may trail the stand-in's own record by a moment.
    let status_path = root.join("var/lib/armfleet/status.json");
    let st = wait_for("status file", Duration::from_secs(30), || {
        bootstrap::status::read(&status_path).ok()
    });
    assert_eq!(st.node_name, "phone-7");
    let out = Command::new(aarch64_bin("node-runtime"))
        .args(["status", "--config"])
        .arg(base.path().join("node.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("node phone-7"));

    signal(rt.0.id(), Signal::SIGTERM);
    let code = wait_exit(&mut rt.0, T);
    assert!(
        code.success(),
        "{}",
        std::fs::read_to_string(base.path().join("runtime.err")).unwrap()
    );
    assert_eq!(ours(&mountinfo_points()), Vec::<String>::new());
    wait_for("loop device released", T, || {
        loop_devices_of(&img).is_empty().then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/armfleet/node-runtime.pid")).unwrap(),
        "",
        "a stopped supervisor leaves its pidfile naming nobody"
    );
}

#[test]
fn no_space_for_the_data_image_is_clear_and_leaves_nothing() {
    if !nix::unistd::Uid::effective().is_root()
        && skip_for_missing("root (it mounts a small tmpfs)")
    {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let small = base.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    let img = small.join("k3s-data.img");
    let root = phone_rootfs(base.path(), armfleet_tests::standin::free_port(), &img, 256);
    let before = mountinfo_points();
    let out = Command::new(aarch64_bin("node-runtime"))
        .args(["run", "--config"])
        .arg(base.path().join("node.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let e = stderr_line(&out);
    assert!(
        e.contains("no space for the k3s data image") && e.contains("size_mib = 256"),
        "{e}"
    );
    assert_eq!(
        siblings(&small),
        Vec::<String>::new(),
        "half-made image left"
    );
    let ours: Vec<String> = mountinfo_points()
        .into_iter()
        .filter(|m| Path::new(m).starts_with(base.path()) && !before.contains(m))
        .collect();
    assert!(ours.is_empty(), "leaked: {ours:?}");
    assert!(!root.join("usr/local/bin/k3s.runs").exists());
}

/// What phonectl sends on one stdin: the rootfs (`unpack --bytes N` takes exactly its N bytes),
/// then the small files (`write-files`), run by one shell as on the phone.
#[test]
fn unpack_bytes_leaves_the_rest_of_stdin_to_write_files() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("rootfs");
    let tgz = sample_rootfs_tgz();
    let nr = aarch64_bin("node-runtime");
    let token = dest.join("etc/armfleet/token");
    let marker = parent.path().join("rootfs.sha256");
    let marker_text = format!("{}\n", sha256_hex(&tgz));
    let script = |bytes: usize| {
        format!(
            "{nr} unpack --bytes {bytes} --dest {d} --sha256 {h} >/dev/null && {nr} write-files --file {m}:0644:{ml} --file {t}:0600:6",
            nr = nr.display(),
            d = dest.display(),
            h = sha256_hex(&tgz),
            m = marker.display(),
            ml = marker_text.len(),
            t = token.display(),
        )
    };
    let run = |script: String, input: Vec<u8>| {
        output_with_stdin(Command::new("sh").args(["-c", &script]), &input)
    };
    let mut input = tgz.clone();
    input.extend_from_slice(marker_text.as_bytes());
    input.extend_from_slice(b"s3cr3t");

    // Announced one byte more than the archive: the unpack refuses, nothing is installed.
    let out = run(script(tgz.len() + 1), input.clone());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.exists() && !marker.exists());

    let out = run(script(tgz.len()), input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join("bin/busybox").exists());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), marker_text);
    assert_eq!(std::fs::read(&token).unwrap(), b"s3cr3t");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
}

// ---------------------------------------------------------------- policy routing

/// The phone's rule listing, in a namespace made by the test.
fn rule_list(ns: &NetNs) -> String {
    ns.ip("-4 rule show")
}

/// Loads netd's rules (a real phone's listing, as the virtual phone has them) into `ns`, with a `wlan0` whose
/// routes live in its own table (1030) and a main table without a default route, as on a phone.
fn android_network(ns: &NetNs) {
    ns.ip("link set lo up");
    for (dev, addr) in [("wlan0", "192.168.50.20/24"), ("rmnet1", "100.64.0.2/24")] {
        // veth pairs (the peer stays unused): kernels without the dummy module have veth, which
        // k3s needs anyway.
        ns.ip(&format!("link add {dev} type veth peer name {dev}-peer"));
        ns.ip(&format!("link set {dev} up"));
        ns.ip(&format!("link set {dev}-peer up"));
        ns.ip(&format!("addr add {addr} dev {dev}"));
    }
    ns.ip("route add 192.168.50.0/24 dev wlan0 table 1030");
    ns.ip("route add default via 192.168.50.1 dev wlan0 onlink table 1030");
    ns.ip("route add default via 100.64.0.1 dev rmnet1 onlink table 1021");
    // netd keeps connected routes out of main.
    ns.ip("route del 192.168.50.0/24 dev wlan0 table main");
    ns.ip("route del 100.64.0.0/24 dev rmnet1 table main");
    // Linux's own rules go; netd's come from the listing.
    ns.ip("rule del pref 32766");
    ns.ip("rule del pref 32767");
    // The virtual phone's rule set (a Pixel 7a's listing; tests/data/README.md names it).
    for (pref, rule) in armfleet_tests::vphone::netd::rules() {
        let rule = rule.trim_start_matches("from all ").trim();
        ns.ip(&format!("rule add pref {pref} {rule}"));
    }
    // What flannel leaves in main: the pod network behind cni0 and flannel.1.
    for (dev, peer) in [("cni0", "cni0-peer"), ("flannel.1", "flannel-peer")] {
        ns.ip(&format!("link add {dev} type veth peer name {peer}"));
        ns.ip(&format!("link set {dev} up"));
        ns.ip(&format!("link set {peer} up"));
    }
    ns.ip("addr add 10.42.0.1/24 dev cni0");
    // A node forwards (k3s turns it on; Android does for tethering).
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    ns.ip("route add 10.42.1.0/24 dev flannel.1");
}

/// The agent's rules beside netd's, in a network namespace shaped like a phone's: installed at
/// start (pods reach the cluster through main and the world through wlan0's table), put back
/// when netd drops them, moved when the uplink's table moves, and exactly they removed at stop.
#[test]
fn policy_rules_for_the_agent_live_beside_netds_and_leave_with_it() {
    if !nix::unistd::Uid::effective().is_root() && skip_for_missing("root (network namespaces)") {
        return;
    }
    let ns = NetNs::new("rt");
    android_network(&ns);
    let netd_rules = rule_list(&ns);
    // On an Android rule set, forwarded pod traffic has nowhere to go.
    let before = Command::new("ip")
        .args([
            "-n",
            ns.name(),
            "route",
            "get",
            "1.1.1.1",
            "from",
            "10.42.0.9",
            "iif",
            "cni0",
        ])
        .output()
        .unwrap();
    assert!(
        !before.status.success(),
        "pod egress should be unreachable before the rules"
    );

    let mut node = Node::new();
    node.iface = "wlan0".into();
    node.network_keys = "policy_routing = true\n".into();
    let config = node.write_config();
    let mut rt = KillOnDrop(
        // nsenter, not `ip netns exec`: that also remounts /sys, hiding the cgroup mounts.
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(node.path("runtime.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let st = wait_for("rules installed", T, || {
        node.status()
            .filter(|s| s.routing.as_ref().is_some_and(|r| r.rules.len() == 5))
            .or_else(|| {
                // Say what the supervisor said when it gives up.
                (rt.0.try_wait().ok().flatten().is_some())
                    .then(|| panic!("node-runtime exited: {}", node.stderr()))
            })
    });
    let routing = st.routing.unwrap();
    assert_eq!(routing.uplink_table.as_deref(), Some("1030"));
    let rules = rule_list(&ns);
    for want in [
        "6090:\tfrom all to 10.42.0.0/16 lookup main",
        "6090:\tfrom all to 10.43.0.0/16 lookup main",
        "6090:\tfrom all iif cni0 lookup main",
        "6090:\tfrom all iif flannel.1 lookup main",
        "6100:\tfrom all iif cni0 lookup 1030",
    ] {
        assert!(rules.contains(want), "{want:?} missing from:\n{rules}");
    }
    let route = |args: &str| ns.ip(&format!("route get {args}"));
    assert!(route("1.1.1.1 from 10.42.0.9 iif cni0").contains("via 192.168.50.1 dev wlan0"));
    assert!(
        route("10.42.1.7").contains("dev flannel.1"),
        "to the pod network through main"
    );

    // netd rewrites its rules when the network changes: a lost rule comes back at the next tick.
    ns.ip("rule del pref 6100 iif cni0 lookup 1030");
    wait_for("the egress rule put back", T, || {
        rule_list(&ns)
            .contains("6100:\tfrom all iif cni0 lookup 1030")
            .then_some(())
    });
    // The phone moves to mobile data: wlan0's rules go, the default network is rmnet1's table.
    ns.ip("rule del pref 17000 iif lo oif wlan0 lookup 1030");
    ns.ip("rule del pref 11000 iif lo oif wlan0 uidrange 0-0 lookup 1030");
    ns.ip("rule del pref 31000 fwmark 0x0/0xffff iif lo lookup 1030");
    ns.ip("rule add pref 31000 fwmark 0x0/0xffff iif lo lookup 1021");
    let moved = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        rule_list(&ns).contains("6100:\tfrom all iif cni0 lookup 1021")
    });
    assert!(
        moved,
        "egress did not move to 1021:\n{}\nnode-runtime:\n{}\nstatus: {:?}",
        rule_list(&ns),
        node.stderr(),
        node.status().map(|s| s.routing)
    );
    assert!(!rule_list(&ns).contains("6100:\tfrom all iif cni0 lookup 1030"));
    ns.ip("rule del pref 31000 fwmark 0x0/0xffff iif lo lookup 1021");
    ns.ip("rule add pref 31000 fwmark 0x0/0xffff iif lo lookup 1030");
    ns.ip("rule add pref 17000 iif lo oif wlan0 lookup 1030");
    ns.ip("rule add pref 11000 iif lo oif wlan0 uidrange 0-0 lookup 1030");

    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success(), "{}", node.stderr());
    let after = rule_list(&ns);
    let sorted = |t: &str| {
        let mut v: Vec<String> = t.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&after),
        sorted(&netd_rules),
        "netd's rules as they were, ours gone"
    );
}

/// The router's mirror as systemd runs it: serves a file of its directory, and a stop (SIGTERM)
/// ends it at once rather than after systemd's 90 s and a SIGKILL.
#[test]
fn the_mirror_serves_its_directory_and_stops_on_sigterm() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-arm64"), b"pinned bytes").unwrap();
    let port = armfleet_tests::standin::free_port();
    let mut mirror = KillOnDrop(
        Command::new(aarch64_bin("node-runtime"))
            .args(["mirror", "--quiet", "--dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .unwrap(),
    );
    let answer = wait_for("the mirror answers", T, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /k3s-arm64 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    });
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("pinned bytes"),
        "{answer}"
    );
    signal(mirror.0.id(), Signal::SIGTERM);
    let status = wait_exit(&mut mirror.0, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}
