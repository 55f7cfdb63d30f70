//! imagegen end to end: images built by the real binary from the node rootfs and Debian's boot
//! packages, checked with independent tools (sfdisk, fsck.vfat, e2fsck, debugfs, mtools); flashing
//! to files and loop devices; every refusal and every user error.

use armfleet_tests::fixtures::mini_node_rootfs;
use armfleet_tests::util::{cache_dir, skip_for_missing};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOKEN: &str =
    "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:s3cr3tjointoken";

fn lock(path: &Path) -> bootstrap::digest::FileLock {
    armfleet_tests::debian::lock(path)
}

fn imagegen_bin() -> PathBuf {
    armfleet_tests::util::host_bin("imagegen", "imagegen")
}

/// imagegen with the shared boot-asset cache (fetched once through apt for all tests).
fn imagegen(args: &[&str]) -> Output {
    imagegen_env(args, &[])
}

fn imagegen_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(imagegen_bin());
    cmd.args(args)
        .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
        .env_remove("K3S_TOKEN")
        .env(
            "ARMFLEET_TOPOLOGY",
            armfleet_tests::fixtures::offline_topology(),
        )
        .env("ARMFLEET_WIFI_INFRA_PSK", "lab-wifi-passphrase")
        .env("SOURCE_DATE_EPOCH", "1704067200")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run imagegen")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Builds an image for `board` from the mini node rootfs into `dir`; returns its path.
fn build(board: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    build_env(board, dir, extra, &[])
}

/// [`build`] with more environment.
fn build_env(board: &str, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let rootfs = mini_node_rootfs();
    let out = dir.join(format!("{board}.img"));
    let mut args = vec![
        board,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = imagegen_env(&args, env);
    assert!(o.status.success(), "imagegen {args:?}: {}", text(&o));
    // The image holds the token, node.toml and the Wi-Fi key: owner-only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600, "image mode");
    assert_eq!(
        mode(Path::new(&format!("{}.bmap", out.display()))),
        0o644,
        "bmap mode"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let [.., digest, next] = lines.as_slice() else {
        panic!("no summary: {stdout}")
    };
    assert!(
        digest.contains(&format!("sha256 {}", sha256(&out))),
        "the line before the last names the image's sha256: {stdout}"
    );
    assert!(
        next.starts_with(&format!(
            "next:     imagegen flash {} /dev/sdX",
            out.display()
        )),
        "the last line is the next step: {stdout}"
    );
    out
}

/// The rpi4 image most tests look at, built once per imagegen binary and rootfs (under a lock,
/// shared by the test processes): `--token-file` given, default size. Read-only for the tests.
fn shared_rpi4() -> PathBuf {
    let dir = cache_dir("imagegen-shared");
    let _l = lock(&dir.join(".lock"));
    let bin = std::fs::metadata(imagegen_bin()).unwrap();
    let rootfs = mini_node_rootfs();
    let stamp = format!(
        "{:?} {} {} {:?}",
        bin.modified().unwrap(),
        bin.len(),
        rootfs.display(),
        std::fs::metadata(&rootfs).unwrap().modified().unwrap()
    );
    let image = dir.join("rpi4.img");
    if std::fs::read_to_string(dir.join("stamp")).ok().as_deref() == Some(stamp.as_str())
        && image.exists()
    {
        return image;
    }
    let token = token_file(&dir);
    // The lab's server (10.10.10.1) is not contacted from tests: no CA check here; it has its
    // own test against a server on 127.0.0.1.
    build(
        "rpi4",
        &dir,
        &["--token-file", token.to_str().unwrap(), "--no-ca-check"],
    );
    std::fs::write(dir.join("stamp"), stamp).unwrap();
    image
}

fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

#[derive(Debug, Clone)]
struct Part {
    start: u64,
    size: u64,
    kind: String,
    bootable: bool,
}

fn sfdisk(image: &Path) -> (String, Vec<Part>) {
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(image))).unwrap();
    let t = &json["partitiontable"];
    assert_eq!(t["label"], "dos", "MBR (the Pi 3 boots only from MBR)");
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
            kind: p["type"].as_str().unwrap().to_owned(),
            bootable: p["bootable"].as_bool().unwrap_or(false),
        })
        .collect();
    (
        t["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x")
            .to_owned(),
        parts,
    )
}

/// Copies one partition out of the image (sparse), for tools that want a whole filesystem.
fn extract(image: &Path, p: &Part, dest: &Path) {
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", dest.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", p.start >> 20))
        .arg(format!("count={}", p.size >> 20)));
}

fn debugfs(fs: &Path, cmd: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// (type and permission bits, uid, gid) of a path, from `debugfs stat`.
fn stat(fs: &Path, path: &str) -> Option<(u32, u64, u64)> {
    let out = debugfs(fs, &format!("stat \"{path}\""));
    let kind = match out.split("Type:").nth(1)?.split_whitespace().next()? {
        "regular" => 0o100000,
        "directory" => 0o040000,
        "symlink" => 0o120000,
        _ => 0,
    };
    let mode = out.split("Mode:").nth(1)?.split_whitespace().next()?;
    let user = out.split("User:").nth(1)?.split_whitespace().next()?;
    let group = out.split("Group:").nth(1)?.split_whitespace().next()?;
    Some((
        kind | u32::from_str_radix(mode, 8).ok()?,
        user.parse().ok()?,
        group.parse().ok()?,
    ))
}

fn mcopy_cat(image: &Path, p: &Part, name: &str) -> String {
    run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", image.display(), p.start))
        .arg(format!("::{name}")))
}

/// Every structural check on an image, with tools that are not imagegen.
fn check_structure(
    image: &Path,
    board_files: &[&str],
    dtb: &str,
    work: &Path,
) -> (Part, Part, PathBuf) {
    let (label_id, parts) = sfdisk(image);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (boot, root) = (&parts[0], &parts[1]);
    assert_eq!(boot.kind, "c", "boot partition is FAT32 LBA (0x0C)");
    assert!(boot.bootable);
    assert_eq!(root.kind, "83");
    for p in &parts {
        assert_eq!(p.start % (1 << 20), 0, "aligned to 1 MiB or more: {p:?}");
        assert_eq!(p.size % (1 << 20), 0, "{p:?}");
    }
    assert!(boot.start + boot.size <= root.start);
    let img_len = std::fs::metadata(image).unwrap().len();
    assert_eq!(root.start + root.size, img_len, "root fills the image");

    // FAT: fsck.vfat, real FAT32, files, config.txt, cmdline.txt.
    let fat = work.join("boot.fat");
    extract(image, boot, &fat);
    let o = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&fat)
        .output()
        .unwrap();
    assert!(o.status.success(), "fsck.vfat -n: {}", text(&o));
    let fsck_out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !fsck_out.to_lowercase().contains("uninitialized") && !fsck_out.contains("Dirty"),
        "{fsck_out}"
    );
    let info = run(Command::new("minfo")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&fat)
        .arg("::"));
    assert!(
        info.contains("FAT32") || info.contains("fat32") || info.contains("big FAT"),
        "really FAT32: {info}"
    );
    let listing = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&fat)
        .arg("::"));
    for f in board_files
        .iter()
        .chain(&[dtb, "vmlinuz", "initrd.img", "config.txt", "cmdline.txt"])
    {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_end().ends_with(&format!("/{f}"))),
            "{f} on the boot partition:\n{listing}"
        );
    }
    let config = mcopy_cat(image, boot, "config.txt");
    assert!(config.lines().any(|l| l == "arm_64bit=1"), "{config}");
    assert!(
        config.lines().any(|l| l == format!("device_tree={dtb}")),
        "{config}"
    );
    assert!(
        config
            .lines()
            .any(|l| l == "initramfs initrd.img followkernel"),
        "{config}"
    );
    let cmdline = mcopy_cat(image, boot, "cmdline.txt");
    assert_eq!(
        cmdline.lines().count(),
        1,
        "cmdline.txt is one line: {cmdline:?}"
    );
    let root_arg = format!("root=PARTUUID={label_id}-02");
    assert!(cmdline.contains(&root_arg), "{cmdline}");
    assert!(
        cmdline.contains("rootwait") && cmdline.contains("net.ifnames=0"),
        "{cmdline}"
    );
    assert!(cmdline.contains("console=ttyS1,115200"), "{cmdline}");
    assert!(
        cmdline
            .trim_end()
            .ends_with("cgroup_memory=1 cgroup_enable=memory"),
        "cgroup flags last: {cmdline}"
    );
    // The PARTUUID as the kernel computes it: blkid reads it from the MBR too.
    let blkid = run(Command::new("blkid")
        .args(["-p", "-o", "export", "--offset"])
        .arg(root.start.to_string())
        .arg(image));
    assert!(blkid.contains("TYPE=ext4"), "{blkid}");

    // ext4: e2fsck, owners and modes, the unit enabled, node.toml 0600.
    let ext = work.join("root.ext4");
    extract(image, root, &ext);
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(&ext)
        .output()
        .unwrap();
    assert!(o.status.success(), "e2fsck -fn: {}", text(&o));
    assert_eq!(
        stat(&ext, "/etc/armfleet/node.toml"),
        Some((0o100600, 0, 0)),
        "node.toml root-only"
    );
    let unit_link = debugfs(
        &ext,
        "stat /etc/systemd/system/multi-user.target.wants/node-runtime.service",
    );
    assert!(
        unit_link.contains("Type: symlink"),
        "node-runtime.service enabled: {unit_link}"
    );
    assert!(stat(&ext, "/etc/systemd/system/node-runtime.service").is_some());
    assert_eq!(
        stat(&ext, "/usr/local/bin/node-runtime").map(|s| s.0 & 0o777),
        Some(0o755)
    );
    let fstab = debugfs(&ext, "cat /etc/fstab");
    assert!(
        fstab.contains(&format!("PARTUUID={label_id}-02")) && fstab.contains("x-systemd.growfs"),
        "{fstab}"
    );
    let modules = debugfs(&ext, "ls -p /lib/modules");
    let kver = modules
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .find(|n| n.ends_with("-arm64"))
        .unwrap_or_else(|| panic!("kernel modules in /lib/modules: {modules}"))
        .to_owned();
    let dep = debugfs(&ext, &format!("stat /lib/modules/{kver}/modules.dep.bin"));
    assert!(
        dep.contains("Type: regular"),
        "depmod index in the rootfs: {dep}"
    );
    (boot.clone(), root.clone(), ext)
}

/// Every entry of the rootfs tarball has, in the image, the owner and mode the tarball says
/// (mke2fs reads the tarball itself: nothing is unpacked as the build user).
fn check_owners_match_tarball(ext: &Path, rootfs: &Path) {
    let f = std::fs::File::open(rootfs).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut script = String::new();
    let mut expected = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || h.entry_type() == tar::EntryType::Link {
            continue;
        }
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 0o040000,
            tar::EntryType::Symlink => 0o120000,
            tar::EntryType::Char => 0o020000,
            tar::EntryType::Block => 0o060000,
            tar::EntryType::Fifo => 0o010000,
            _ => 0o100000,
        };
        // Symlinks too: mke2fs keeps the tar's bits (Linux ignores a symlink's permissions).
        let mode = kind | (h.mode().unwrap() & 0o7777);
        expected.push((path.clone(), mode, h.uid().unwrap(), h.gid().unwrap()));
        script.push_str(&format!("stat \"/{path}\"\n"));
    }
    let sf = ext.with_extension("cmds");
    std::fs::write(&sf, script).unwrap();
    let out = run(Command::new("debugfs").arg("-f").arg(&sf).arg(ext));
    let stats: Vec<&str> = out.split("debugfs: stat ").skip(1).collect();
    assert_eq!(stats.len(), expected.len());
    let mut checked = 0;
    for ((path, mode, uid, gid), s) in expected.iter().zip(stats) {
        let field = |k: &str| {
            s.split(k)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(String::from)
        };
        // The overlay imagegen adds may replace a few files (hostname, fstab): same owner rules.
        let got_mode = field("Mode:").and_then(|m| u32::from_str_radix(&m, 8).ok());
        let type_bits = match s
            .split("Type:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            Some("directory") => 0o040000,
            Some("symlink") => 0o120000,
            Some("character") => 0o020000,
            Some("block") => 0o060000,
            Some("FIFO") => 0o010000,
            Some("regular") => 0o100000,
            other => panic!("{path}: no inode in the image ({other:?})"),
        };
        assert_eq!(type_bits | got_mode.unwrap(), *mode, "{path}: mode");
        assert_eq!(
            field("User:").unwrap().parse::<u64>().unwrap(),
            *uid,
            "{path}: owner"
        );
        assert_eq!(
            field("Group:").unwrap().parse::<u64>().unwrap(),
            *gid,
            "{path}: group"
        );
        checked += 1;
    }
    assert!(checked > 50, "checked {checked} entries");
}

#[test]
fn rpi4_image_structure_checked_by_independent_tools() {
    let dir = tempfile::tempdir().unwrap();
    let image = shared_rpi4();
    let (_boot, _root, ext) = check_structure(
        &image,
        &["start4.elf", "fixup4.dat"],
        "bcm2711-rpi-4-b.dtb",
        dir.path(),
    );
    let listing = debugfs(&ext, "ls /");
    assert!(!listing.is_empty());
    check_owners_match_tarball(&ext, &mini_node_rootfs());
    // The token is baked, root-only, and appears nowhere imagegen prints.
    assert_eq!(stat(&ext, "/etc/armfleet/token"), Some((0o100600, 0, 0)));
    assert_eq!(debugfs(&ext, "cat /etc/armfleet/token").trim(), TOKEN);
    assert_eq!(debugfs(&ext, "cat /etc/hostname").trim(), "rpi4-2");
    let net = debugfs(&ext, "cat /etc/systemd/network/20-armfleet-eth0.network");
    assert!(
        net.contains("Address=10.10.10.12/24") && net.contains("Gateway=10.10.10.1"),
        "{net}"
    );
    assert!(
        stat(&ext, "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf").is_none(),
        "no Wi-Fi on an Ethernet host"
    );

    let o = imagegen(&["inspect", image.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("hostname: rpi4-2"), "{out}");
    assert!(
        out.contains("start4.elf") && out.contains("device_tree=bcm2711-rpi-4-b.dtb"),
        "{out}"
    );
    assert!(out.contains("name = \"rpi4-2\""), "node.toml shown: {out}");
    assert!(out.contains("join token: baked in (redacted)"), "{out}");
    assert!(
        !out.contains("s3cr3tjointoken"),
        "token never printed: {out}"
    );
    let o = imagegen(&["inspect", "--json", image.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["partitions"][1]["partuuid"].as_str().unwrap(),
        format!("{}-02", j["disk_signature"].as_str().unwrap())
    );
    assert_eq!(j["token"], "baked");

    // The bmap: its own checksum, and each range's sha256 matches the image's bytes.
    let bmap = std::fs::read_to_string(format!("{}.bmap", image.display())).unwrap();
    assert!(bmap.contains("<bmap version=\"2.0\">"));
    let parsed = imagegen::bmap::Bmap::parse(&bmap, Path::new("x.bmap")).unwrap();
    assert_eq!(parsed.image_size, std::fs::metadata(&image).unwrap().len());
    let mut f = std::fs::File::open(&image).unwrap();
    for r in &parsed.ranges {
        use std::io::{Read, Seek, SeekFrom};
        let (off, len) = r.span(parsed.block_size, parsed.image_size);
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(bootstrap::digest::sha256_hex(&buf), r.sha256);
    }
    assert!(
        parsed.mapped_bytes() < parsed.image_size / 2,
        "sparse: {} of {}",
        parsed.mapped_bytes(),
        parsed.image_size
    );
}

#[test]
fn rpi3a_image_has_pi3_firmware_and_wifi() {
    let dir = tempfile::tempdir().unwrap();
    let image = build("rpi3a", dir.path(), &["--size", "2G"]);
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        2 << 30,
        "--size is the image size"
    );
    let (boot, _root, ext) = check_structure(
        &image,
        &["bootcode.bin", "start.elf", "fixup.dat"],
        "bcm2837-rpi-3-a-plus.dtb",
        dir.path(),
    );
    let cmdline = mcopy_cat(&image, &boot, "cmdline.txt");
    assert!(
        cmdline.contains("cfg80211.ieee80211_regdom=FR"),
        "{cmdline}"
    );
    assert_eq!(
        stat(&ext, "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf").map(|s| s.0),
        Some(0o100600)
    );
    let wpa = debugfs(&ext, "cat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf");
    assert!(
        wpa.contains("country=FR")
            && wpa.contains("ssid=\"armlab-infra\"")
            && wpa.contains("psk=\"lab-wifi-passphrase\""),
        "{wpa}"
    );
    let net = debugfs(&ext, "cat /etc/systemd/network/20-armfleet-wlan0.network");
    assert!(
        net.contains("Name=wlan0") && net.contains("Address=10.10.10.13/24"),
        "{net}"
    );
    assert!(
        debugfs(&ext, "stat /lib/firmware/cypress/cyfmac43455-sdio.bin").contains("Type: regular"),
        "Wi-Fi firmware"
    );
    // No token given and none in the environment: the image says where to drop it.
    assert!(stat(&ext, "/etc/armfleet/token").is_none());
    let node = debugfs(&ext, "cat /etc/armfleet/node.toml");
    assert!(
        node.contains("token_drop = \"/boot/firmware/armfleet-token\""),
        "{node}"
    );
    let o = imagegen(&["inspect", image.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("join token: none"),
        "{}",
        text(&o)
    );
}

/// The offline lab topology with one more Ethernet agent, `name`, of `board`.
fn topology_with_host(dir: &Path, board: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(armfleet_tests::fixtures::offline_topology()).unwrap();
    let p = dir.join("topology.toml");
    std::fs::write(
        &p,
        format!(
            "{text}\n[[host]]\nname = \"{name}\"\nboard = \"{board}\"\nrole = \"agent\"\nlink = \"ethernet\"\nvlan = \"INFRA\"\naddress = \"10.10.10.14\"\n"
        ),
    )
    .unwrap();
    p
}

/// The Pi 3 B+ is one file in images/boards/: `imagegen rpi3b-plus` makes its image, with the
/// Pi 3 boot files, its own device tree and both Ethernet and the Wi-Fi firmware.
#[test]
fn rpi3b_plus_image_from_its_board_file() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_with_host(dir.path(), "rpi3b-plus", "rpi3bp-1");
    let image = build(
        "rpi3b-plus",
        dir.path(),
        &["--topology", topo.to_str().unwrap()],
    );
    let (boot, _root, ext) = check_structure(
        &image,
        &["bootcode.bin", "start.elf", "fixup.dat"],
        "bcm2837-rpi-3-b-plus.dtb",
        dir.path(),
    );
    let config = mcopy_cat(&image, &boot, "config.txt");
    assert!(
        config.contains("(Raspberry Pi 3 Model B+)")
            && ["enable_uart=1", "upstream_kernel=1", "kernel=vmlinuz"]
                .iter()
                .all(|l| config.lines().any(|c| c == *l)),
        "{config}"
    );
    assert_eq!(debugfs(&ext, "cat /etc/hostname").trim(), "rpi3bp-1");
    let net = debugfs(&ext, "cat /etc/systemd/network/20-armfleet-eth0.network");
    assert!(
        net.contains("Name=eth0") && net.contains("Address=10.10.10.14/24"),
        "Ethernet host: {net}"
    );
    assert!(
        debugfs(
            &ext,
            "stat \"/lib/firmware/brcm/brcmfmac43455-sdio.raspberrypi,3-model-b-plus.txt\""
        )
        .contains("Type:"),
        "the board's Wi-Fi NVRAM"
    );
}

/// A board of the user's own is a file too: a copy of the rpi4 profile under another name in
/// `$ARMFLEET_BOARDS_DIR` is accepted by the topology and built by `imagegen NAME`; without the
/// directory the name is unknown.
#[test]
fn a_user_board_file_is_a_board() {
    let dir = tempfile::tempdir().unwrap();
    let boards = dir.path().join("boards");
    std::fs::create_dir(&boards).unwrap();
    let profile = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/boards/rpi4.toml"),
    )
    .unwrap()
    .replace("name = \"rpi4\"", "name = \"lab-pi4\"");
    std::fs::write(boards.join("lab-pi4.toml"), profile).unwrap();
    let topo = topology_with_host(dir.path(), "lab-pi4", "lab-1");
    let env = [("ARMFLEET_BOARDS_DIR", boards.to_str().unwrap())];

    let o = imagegen_env(&["boards"], &env);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains(&format!(
            "lab-pi4 — Raspberry Pi 4 Model B (user board: {})",
            boards.join("lab-pi4.toml").display()
        )) && listed.contains("rpi4 — Raspberry Pi 4 Model B (built in: images/boards/rpi4.toml)"),
        "{}",
        text(&o)
    );
    let image = build_env(
        "lab-pi4",
        dir.path(),
        &["--topology", topo.to_str().unwrap()],
        &env,
    );
    check_structure(
        &image,
        &["start4.elf", "fixup4.dat"],
        "bcm2711-rpi-4-b.dtb",
        dir.path(),
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("x.img");
    let o = imagegen(&[
        "lab-pi4",
        "--topology",
        topo.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, 2, "unknown board \"lab-pi4\"", elsewhere.path());
}

#[test]
fn same_inputs_give_the_same_image_bytes() {
    let ia = shared_rpi4();
    let b = tempfile::tempdir().unwrap();
    let token = token_file(b.path());
    let ib = build(
        "rpi4",
        b.path(),
        &["--token-file", token.to_str().unwrap(), "--no-ca-check"],
    );
    assert_eq!(
        sha256(&ia),
        sha256(&ib),
        "two builds from the same inputs differ"
    );
    assert_eq!(
        std::fs::read(format!("{}.bmap", ia.display())).unwrap(),
        std::fs::read(format!("{}.bmap", ib.display())).unwrap()
    );
}

/// mke2fs used to walk a staging directory in readdir order, which depends on the filesystem
/// holding it; now the ext4 content follows the tar order. The scratch space imagegen uses
/// (TMPDIR) is once a tmpfs and once the target dir's filesystem: the image bytes are the same.
#[test]
fn image_bytes_do_not_depend_on_the_scratch_filesystem() {
    let out = tempfile::tempdir().unwrap();
    let rootfs = mini_node_rootfs();
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let tmpfs = match &shm {
        Some(d)
            if run(Command::new("stat").args(["-f", "-c", "%T"]).arg(d.path())).trim()
                == "tmpfs" =>
        {
            d.path().to_owned()
        }
        _ => {
            // No tmpfs at /dev/shm: mount one.
            let d = tempfile::tempdir().unwrap().keep();
            run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&d));
            d
        }
    };
    let on_disk = tempfile::tempdir_in(cache_dir("imagegen-scratch")).unwrap();
    let fs_type = |d: &Path| {
        run(Command::new("stat").args(["-f", "-c", "%T"]).arg(d))
            .trim()
            .to_owned()
    };
    assert_ne!(
        fs_type(&tmpfs),
        fs_type(on_disk.path()),
        "two different filesystems"
    );
    let mut shas = Vec::new();
    for (i, scratch) in [tmpfs.as_path(), on_disk.path()].into_iter().enumerate() {
        let img = out.path().join(format!("{i}.img"));
        let o = imagegen_env(
            &args_for("rpi4", img.to_str().unwrap(), rootfs.to_str().unwrap()),
            &[("TMPDIR", scratch.to_str().unwrap())],
        );
        assert!(o.status.success(), "{}", text(&o));
        shas.push(sha256(&img));
    }
    if shm.is_none() {
        let _ = Command::new("umount").arg(&tmpfs).status();
        let _ = std::fs::remove_dir(&tmpfs);
    }
    assert_eq!(
        shas[0], shas[1],
        "built with scratch space on tmpfs vs on disk"
    );
}

/// One PAX extended header record: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

/// The mini rootfs plus `/opt/ping` carrying the file capability cap_net_raw+ep the way GNU tar
/// `--xattrs` and mmdebstrap store it: a PAX `SCHILY.xattr.security.capability` record.
fn rootfs_with_capability(dir: &Path) -> (PathBuf, Vec<u8>) {
    // vfs_cap_data revision 2: magic|effective, permitted = 1 << CAP_NET_RAW (13), inheritable 0.
    let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
    cap.extend_from_slice(&[0; 12]);
    let out = dir.join("rootfs-cap.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(mini_node_rootfs()).unwrap(),
    ));
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let mut h = e.header().clone();
        let path = e.path().unwrap().into_owned();
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e.link_name().unwrap().unwrap().into_owned();
                b.append_link(&mut h, &path, &target).unwrap();
            }
            _ => b.append_data(&mut h, &path, e).unwrap(),
        }
    }
    let new_header = || {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        h
    };
    let mut h = new_header();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "./opt/", std::io::empty()).unwrap();
    let pax = pax_record("SCHILY.xattr.security.capability", &cap);
    let mut h = new_header();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_size(pax.len() as u64);
    b.append_data(&mut h, "./opt/PaxHeaders/ping", &pax[..])
        .unwrap();
    let body = b"#!/bin/sh\necho ping\n";
    let mut h = new_header();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "./opt/ping", &body[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    (out, cap)
}

/// Extended attributes (here a file capability) in the rootfs tar reach the ext4, as read back
/// by debugfs; e2fsck finds the filesystem clean.
#[test]
fn file_capabilities_in_the_rootfs_tar_reach_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (rootfs, cap) = rootfs_with_capability(dir.path());
    let img = dir.path().join("cap.img");
    let o = imagegen(&args_for(
        "rpi4",
        img.to_str().unwrap(),
        rootfs.to_str().unwrap(),
    ));
    assert!(o.status.success(), "{}", text(&o));
    let (_, parts) = sfdisk(&img);
    let ext = dir.path().join("root.ext4");
    extract(&img, &parts[1], &ext);
    run(Command::new("e2fsck").args(["-fn"]).arg(&ext));
    let ea = debugfs(&ext, "ea_list /opt/ping");
    let hex: Vec<String> = cap.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        ea.contains(&format!(
            "security.capability ({}) = {} ",
            cap.len(),
            hex.join(" ")
        )),
        "ea_list /opt/ping: {ea}"
    );
    assert_eq!(stat(&ext, "/opt/ping"), Some((0o100755, 0, 0)));
    // A file without one has none.
    assert!(!debugfs(&ext, "ea_list /etc/hostname").contains("capability"));
}

// ---- flash ---------------------------------------------------------------------------------

/// A sparse test image with a few data ranges and its bmap (made by the library).
fn synthetic_image(dir: &Path, size: u64) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let p = dir.join("synthetic.img");
    let mut f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    for (i, off) in [0u64, 3 << 20, 17 << 20, size - 8192]
        .into_iter()
        .enumerate()
    {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&vec![0x41 + i as u8; 6000]).unwrap();
    }
    drop(f);
    let bmap = imagegen::bmap::Bmap::from_image(&p).unwrap();
    std::fs::write(format!("{}.bmap", p.display()), bmap.to_xml()).unwrap();
    p
}

/// A loop device over a fresh file of `size` bytes, detached on drop; `None` (with the reason
/// printed) when this machine cannot make one.
struct Loop {
    dev: String,
    _file: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Loop {
    fn new(size: u64, partitioned: bool) -> Option<Loop> {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk");
        let f = std::fs::File::create(&backing).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        if partitioned {
            let mut c = Command::new("sfdisk");
            c.arg("-q")
                .arg(&backing)
                .stdin(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"label: dos\nstart=2048, size=40960, type=83\n")
                .unwrap();
            assert!(child.wait().unwrap().success());
        }
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .args(if partitioned {
                &["--partscan"][..]
            } else {
                &[][..]
            })
            .arg(&backing)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Loop {
                dev: String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                _file: dir,
                mounts: Vec::new(),
            }),
            Ok(o) => {
                let why = format!(
                    "a loop device (losetup: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                assert!(skip_for_missing(&why));
                None
            }
            Err(e) => {
                assert!(skip_for_missing(&format!("losetup ({e})")));
                None
            }
        }
    }

    fn mount(&mut self, dev: &str) {
        // No lazy init and a read-only mount: the kernel then writes nothing to the device by
        // itself, so "the device is unchanged" measures only what imagegen did.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(dev));
        let mp = tempfile::tempdir().unwrap().keep();
        run(Command::new("mount").args(["-o", "ro"]).arg(dev).arg(&mp));
        self.mounts.push(mp);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg(&m).status();
            let _ = std::fs::remove_dir(&m);
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn flash(image: &Path, device: &str, yes: bool) -> Output {
    let mut args = vec!["flash", image.to_str().unwrap(), device];
    if yes {
        args.push("--yes");
    }
    imagegen(&args)
}

fn dev_sha(dev: &str, len: u64) -> String {
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {len} {dev} | sha256sum")));
    out.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn flash_real_image_to_a_file_and_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let image = shared_rpi4();
    let want = sha256(&image);
    let len = std::fs::metadata(&image).unwrap().len();
    let bmap = imagegen::bmap::Bmap::parse(
        &std::fs::read_to_string(format!("{}.bmap", image.display())).unwrap(),
        Path::new("b"),
    )
    .unwrap();

    let copy = dir.path().join("card.img");
    let o = imagegen(&[
        "flash",
        image.to_str().unwrap(),
        copy.to_str().unwrap(),
        "--to-file",
        "--yes",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("{} bytes written", bmap.mapped_bytes())),
        "only mapped blocks: {out}"
    );
    assert!(out.contains("verified"), "{out}");
    assert_eq!(sha256(&copy), want, "the file copy reads back as the image");

    let Some(lp) = Loop::new(len + (64 << 20), false) else {
        return;
    };
    let o = flash(&image, &lp.dev, true);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        dev_sha(&lp.dev, len),
        want,
        "the loop device reads back as the image"
    );
    let (_, parts) = sfdisk(Path::new(&lp.dev));
    assert_eq!(parts.len(), 2);
}

#[test]
fn flash_asks_before_writing_and_no_means_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 64 << 20);
    let target = dir.path().join("card.img");
    std::fs::write(&target, b"precious").unwrap();
    let o = Command::new(imagegen_bin())
        .args([
            "flash",
            image.to_str().unwrap(),
            target.to_str().unwrap(),
            "--to-file",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"n\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[y/N]") && err.contains("cancelled"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

/// Targets that are not what they seem: a /dev path with no card behind it (once written as a
/// file into /dev's RAM and reported "verified"), the image itself (once truncated), a file
/// named without --to-file, a card named with it.
#[test]
fn flash_refuses_a_missing_card_the_image_itself_and_an_unasked_file() {
    // The image in src/, targets (and what must not appear) in out/.
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let dir = out.as_path();
    let image = synthetic_image(&src, 32 << 20);
    let img = image.to_str().unwrap();
    let bmap = format!("{img}.bmap");
    let want = sha256(&image);

    let missing = "/dev/armfleet-test-no-such-card";
    let o = imagegen(&["flash", img, missing, "--yes"]);
    assert_fails_cleanly(&o, 2, "is not a block device (no card is there)", dir);
    assert!(!Path::new(missing).exists(), "a file was made in /dev");
    let o = imagegen(&["flash", img, missing, "--yes", "--to-file"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!Path::new(missing).exists(), "a file was made in /dev");

    for (target, what) in [
        (img, "the image itself"),
        (bmap.as_str(), "the bmap itself"),
    ] {
        let o = imagegen(&["flash", img, target, "--yes", "--to-file"]);
        assert_fails_cleanly(&o, 2, what, dir);
    }
    // A hard link to the image is the image too.
    let link = src.join("alias.img");
    std::fs::hard_link(&image, &link).unwrap();
    let o = imagegen(&["flash", img, link.to_str().unwrap(), "--yes", "--to-file"]);
    assert_fails_cleanly(&o, 2, "the image itself", dir);
    assert_eq!(sha256(&image), want, "the image was changed");

    let new = dir.join("new.img");
    let o = imagegen(&["flash", img, new.to_str().unwrap(), "--yes"]);
    assert_fails_cleanly(&o, 2, "add --to-file", dir);
    assert!(!new.exists());

    let Some(lp) = Loop::new(64 << 20, false) else {
        return;
    };
    let before = dev_sha(&lp.dev, 64 << 20);
    let o = imagegen(&["flash", img, &lp.dev, "--yes", "--to-file"]);
    assert_fails_cleanly(&o, 2, "drop --to-file", dir);
    assert_eq!(dev_sha(&lp.dev, 64 << 20), before);
}

#[test]
fn flash_refuses_a_mounted_device() {
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 32 << 20);
    let Some(mut lp) = Loop::new(64 << 20, false) else {
        return;
    };
    let dev = lp.dev.clone();
    lp.mount(&dev);
    let before = dev_sha(&dev, 64 << 20);
    let o = flash(&image, &dev, true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{dev} is mounted on")) && err.contains("umount"),
        "{err}"
    );
    assert_eq!(dev_sha(&dev, 64 << 20), before, "nothing written");
}

#[test]
fn flash_refuses_a_disk_holding_a_mounted_partition() {
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 32 << 20);
    let Some(mut lp) = Loop::new(64 << 20, true) else {
        return;
    };
    let part = format!("{}p1", lp.dev);
    // A kernel built without partition-table parsers (CONFIG_MSDOS_PARTITION unset, as on some
    // CI VMs) makes no partitions on --partscan; partx reads the table itself and adds them
    // through BLKPG, which gives the same kernel partition devices.
    if !Path::new(&part).exists() {
        let _ = Command::new("partx").arg("-a").arg(&lp.dev).status();
    }
    for _ in 0..50 {
        if Path::new(&part).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !Path::new(&part).exists()
        && skip_for_missing(&format!(
            "partition devices for loop devices (no {part} appeared)"
        ))
    {
        return;
    }
    lp.mount(&part);
    let o = flash(&image, &lp.dev, true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("holds {part}, which is mounted on")),
        "{err}"
    );
    // A partition is not a card either.
    let o = flash(&image, &part, true);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a partition: give the whole card"),
        "{}",
        text(&o)
    );
}

#[test]
fn flash_refuses_a_device_smaller_than_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 96 << 20);
    let Some(lp) = Loop::new(64 << 20, false) else {
        return;
    };
    let before = dev_sha(&lp.dev, 64 << 20);
    let o = flash(&image, &lp.dev, true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("use a card of at least 96 MiB"), "{err}");
    assert_eq!(dev_sha(&lp.dev, 64 << 20), before);
}

#[test]
fn flash_refuses_the_disk_the_system_runs_from() {
    let disks = imagegen::flash::system_disks();
    if disks.is_empty()
        && skip_for_missing("a root filesystem on a block device (not a container overlay)")
    {
        return;
    }
    for d in disks {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let dev = PathBuf::from(format!("/dev/{name}"));
        if !dev.exists() {
            continue;
        }
        // The check only: nothing is opened for writing.
        let sources = imagegen::flash::Sources {
            image: Path::new("/nonexistent.img"),
            bmap: Path::new("/nonexistent.img.bmap"),
        };
        let e =
            imagegen::flash::preflight(&dev, imagegen::flash::TargetKind::Device, sources, 1 << 20)
                .unwrap_err();
        assert!(
            matches!(e, imagegen::flash::FlashError::SystemDisk { .. }),
            "{dev:?}: {e}"
        );
        assert!(e.to_string().contains("the running system lives on"), "{e}");
    }
}

#[test]
fn flash_detects_a_damaged_image() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 32 << 20);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.seek(SeekFrom::Start((3 << 20) + 10)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let out = dir.path().join("out.img");
    let o = imagegen(&[
        "flash",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
        "--yes",
        "--to-file",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("do not match the checksum in the bmap"),
        "{}",
        text(&o)
    );
}

/// `--dry-run` runs every check a real flash runs (the target, the image against its bmap) and
/// writes nothing, to a file or to a disk; a damaged image fails the dry run as it would fail
/// the flash. It needs no `--yes`: it asks nothing.
#[test]
fn flash_dry_run_checks_everything_and_writes_nothing() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 32 << 20);
    let img = image.to_str().unwrap();

    let dry_run_into = |file: &Path| {
        imagegen(&[
            "flash",
            img,
            file.to_str().unwrap(),
            "--to-file",
            "--dry-run",
        ])
    };

    let file = dir.path().join("card.img");
    std::fs::write(&file, b"precious").unwrap();
    let o = dry_run_into(&file);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("dry run: would write") && said.contains("nothing written"),
        "{said}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    let absent = dir.path().join("new.img");
    let o = dry_run_into(&absent);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!absent.exists(), "a dry run created its target");

    if let Some(lp) = Loop::new(48 << 20, false) {
        let mut dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&lp.dev)
            .unwrap();
        dev.write_all(&vec![0x5a; 1 << 20]).unwrap();
        dev.sync_all().unwrap();
        drop(dev);
        let before = dev_sha(&lp.dev, 48 << 20);
        let o = imagegen(&["flash", img, &lp.dev, "--dry-run"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&lp.dev),
            "the dry run names the disk: {}",
            text(&o)
        );
        assert_eq!(
            dev_sha(&lp.dev, 48 << 20),
            before,
            "the dry run wrote to the disk"
        );
    }

    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.seek(SeekFrom::Start((17 << 20) + 100)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let o = dry_run_into(&file);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("do not match the checksum in the bmap"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

/// `imagegen flash IMG` names no target: it lists the removable disks (never the one the system
/// runs from) and ends with a usage error, writing nothing. This machine has no card reader, so
/// here the answer is the no-card line.
#[test]
fn flash_without_a_target_lists_cards_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 8 << 20);
    let o = imagegen(&["flash", image.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        err.contains("no removable disk found") || err.contains("no card given"),
        "{err}"
    );
    let offered = imagegen::flash::removable_disks();
    if offered.is_empty() {
        assert!(err.contains("no removable disk found"), "{err}");
        assert!(listed.is_empty(), "{listed}");
    }
    for system in imagegen::flash::system_disks() {
        let name = system.file_name().unwrap().to_str().unwrap();
        assert!(
            !listed.contains(&format!("/dev/{name} ")),
            "the system disk {name} was offered: {listed}"
        );
    }
}

// ---- user errors: message, exit code, nothing left under the output name ---------------------

fn assert_fails_cleanly(o: &Output, code: i32, needle: &str, out_dir: &Path) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("imagegen: "))
            .count(),
        1,
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".img"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The offline lab topology with its k3s server moved to `url`.
fn topology_with_server(dir: &Path, url: &str) -> PathBuf {
    let text = std::fs::read_to_string(armfleet_tests::fixtures::offline_topology()).unwrap();
    let lab = "server = \"https://10.10.10.1:6443\"";
    assert!(text.contains(lab), "the lab topology names its server");
    let p = dir.join("topology.toml");
    std::fs::write(&p, text.replace(lab, &format!("server = \"{url}\""))).unwrap();
    p
}

/// A secure token (K10<CA hash>::…) is checked against the server's `/cacerts` before anything
/// is built: a match is said in the summary, a mismatch is a one-line error with no image left,
/// an unreachable server is a note and the image is made.
#[test]
fn secure_token_is_checked_against_the_server_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (url, ca_pem) = armfleet_tests::k3s_server::k3s_cacerts_server();
    let rootfs = mini_node_rootfs();
    let good = bootstrap::digest::sha256_hex(ca_pem.as_bytes());
    let wrong = bootstrap::digest::sha256_hex(b"another cluster's CA");
    let out = dir.path().join("x.img");
    let run_with = |server: &str, hash: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        let topo = topology_with_server(&d, server);
        let token = d.join("token");
        std::fs::write(&token, format!("K10{hash}::server:s3cr3tjointoken\n")).unwrap();
        let out = d.join("x.img");
        let o = imagegen(&[
            "rpi4",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--topology",
            topo.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        (o, d)
    };

    let (o, d) = run_with(&url, &wrong, "mismatch");
    assert_fails_cleanly(
        &o,
        2,
        &format!("the CA served by {url}/cacerts has sha256 {good}"),
        &d,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("s3cr3t"), "{err}");
    // Progress lines may precede it (stderr is not a terminal); the error is one whole line.
    let line = err.lines().find(|l| l.starts_with("imagegen: ")).unwrap();
    assert!(
        line.contains(&wrong) && line.contains("the token was not sent"),
        "one line: {err}"
    );

    let (o, _) = run_with(&url, &good, "match");
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!("the CA served by {url} matches its hash")),
        "{said}"
    );

    // A port nothing listens on (bound, then closed): refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let (o, _) = run_with(&closed, &good, "unreachable");
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "its CA hash was not checked, {closed} is unreachable"
        )),
        "{said}"
    );
    assert!(!said.contains("s3cr3t") && !out.exists());
}

/// An mke2fs older than 1.47.1 (it cannot read a tar) is refused with one line saying how to get
/// a newer one, before anything is written. The old tool is stood in for by a script that
/// answers `-V` like bookworm's e2fsprogs 1.47.0 does; every other tool is the real one.
#[test]
fn error_mke2fs_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let shim = bin.join("mke2fs");
    std::fs::write(
        &shim,
        "#!/bin/sh\necho 'mke2fs 1.47.0 (5-Feb-2023)' >&2\necho '\tUsing EXT2FS Library version 1.47.0' >&2\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = dir.path().join("x.img");
    let rootfs = mini_node_rootfs();
    let o = imagegen_env(
        &args_for("rpi4", out.to_str().unwrap(), rootfs.to_str().unwrap()),
        &[("PATH", &path)],
    );
    assert_fails_cleanly(
        &o,
        3,
        "mke2fs 1.47.0 is too old: imagegen needs 1.47.1 or newer",
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("apt-get install -t bookworm-backports e2fsprogs libarchive13"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

fn args_for<'a>(board: &'a str, out: &'a str, rootfs: &'a str) -> Vec<&'a str> {
    vec![board, "--rootfs", rootfs, "-o", out]
}

#[test]
fn errors_unknown_board_host_and_wrong_board() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let out = out.to_str().unwrap();
    let o = imagegen(&["rpi5", "-o", out]);
    assert_fails_cleanly(
        &o,
        2,
        "unknown board \"rpi5\": known boards are rpi3a, rpi3b-plus, rpi4 (add one as a file in images/boards/ or $ARMFLEET_BOARDS_DIR)",
        dir.path(),
    );
    let o = imagegen(&["rpi4", "--host", "nosuch", "-o", out]);
    assert_fails_cleanly(&o, 2, "host \"nosuch\" is not in the topology", dir.path());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rpi4-2"),
        "names the hosts of the board: {}",
        text(&o)
    );
    let o = imagegen(&["rpi4", "--host", "rpi3a-ctl", "-o", out]);
    assert_fails_cleanly(
        &o,
        2,
        "is a rpi3a in the topology, not a rpi4: run `imagegen rpi3a --host rpi3a-ctl`",
        dir.path(),
    );
    // The server's image needs the pinned k3s: unreachable here, so it stops before any build.
    let o = imagegen(&["rpi4", "--host", "rpi4-1", "-o", out]);
    assert_fails_cleanly(
        &o,
        2,
        "the server's image must carry the pinned k3s",
        dir.path(),
    );
}

#[test]
fn error_invalid_topology() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topology.toml");
    std::fs::write(&topo, "[cluster]\nname = \"x\"\nserverr = 1\n").unwrap();
    let out = dir.path().join("x.img");
    let o = imagegen(&[
        "rpi4",
        "--topology",
        topo.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, 2, "topology.toml", dir.path());
}

#[test]
fn error_boot_assets_missing_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let rootfs = mini_node_rootfs();
    let out = dir.path().join("x.img");
    let mut args = args_for("rpi4", out.to_str().unwrap(), rootfs.to_str().unwrap());
    args.extend(["--boot-assets", debs.to_str().unwrap()]);
    let o = imagegen(&args);
    assert_fails_cleanly(&o, 3, "raspi-firmware", dir.path());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("apt-get download raspi-firmware"),
        "{}",
        text(&o)
    );
}

#[test]
fn error_rootfs_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let o = imagegen(&args_for(
        "rpi4",
        out.to_str().unwrap(),
        "/nonexistent/rootfs.tar.gz",
    ));
    assert_fails_cleanly(&o, 2, "/nonexistent/rootfs.tar.gz: not found", dir.path());
}

#[test]
fn error_size_too_small_for_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let rootfs = mini_node_rootfs();
    let mut args = args_for("rpi4", out.to_str().unwrap(), rootfs.to_str().unwrap());
    args.extend(["--size", "600M"]);
    let o = imagegen(&args);
    assert_fails_cleanly(&o, 2, "image size 600 MiB is too small", dir.path());
    let o = imagegen(&["rpi4", "--size", "lots", "-o", out.to_str().unwrap()]);
    assert_fails_cleanly(&o, 2, "invalid size \"lots\"", dir.path());
}

#[test]
fn error_no_space_for_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&small)
        .output()
        .unwrap();
    if !m.status.success()
        && skip_for_missing(&format!(
            "mounting a tmpfs ({})",
            String::from_utf8_lossy(&m.stderr).trim()
        ))
    {
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    let out = small.join("x.img");
    let rootfs = mini_node_rootfs();
    let o = imagegen(&args_for(
        "rpi4",
        out.to_str().unwrap(),
        rootfs.to_str().unwrap(),
    ));
    assert_fails_cleanly(&o, 3, "not enough space in", &small);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("MiB free"),
        "{}",
        text(&o)
    );
}
