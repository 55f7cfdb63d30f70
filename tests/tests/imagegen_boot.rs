//! Boot proof (slow tier): QEMU boots images made by imagegen from the real node rootfs (Debian
//! bookworm arm64 with systemd) with the image's own kernel, initramfs and command line.
//!
//! - Pi 4 image on `virt` (QEMU's raspi4b cannot read an SD card with the mainline device
//!   tree): the initramfs finds the root by PARTUUID, grows it to the disk, systemd starts
//!   `node-runtime.service`, and node-runtime's own output reaches the serial console.
//! - Pi 3A+ image on `raspi3b`: the emulated SD controller, so the Pi 3 driver path (sdhost +
//!   mmc) of the initramfs is proven, then systemd from the SD card's root partition up to
//!   node-runtime's own line on the console (after the Wi-Fi waits time out: no wlan0 in QEMU).

use armfleet_tests::qemu::{Machine, QemuBoot};
use armfleet_tests::util::cache_dir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn imagegen_bin() -> PathBuf {
    armfleet_tests::util::host_bin("imagegen", "imagegen")
}

fn build(board: &str, dir: &Path, rootfs: &Path) -> PathBuf {
    let out = dir.join(format!("{board}.img"));
    let token = dir.join("token");
    std::fs::write(
        &token,
        "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:bootproof\n",
    )
    .unwrap();
    let o = Command::new(imagegen_bin())
        .args([board, "--rootfs"])
        .arg(rootfs)
        .arg("-o")
        .arg(&out)
        .arg("--token-file")
        .arg(&token)
        // The token's server (10.10.10.1) is not contacted from tests.
        .arg("--no-ca-check")
        // The k3s stand-in (aarch64) as the agent binary: nothing to download, and node-runtime
        // has an agent to start.
        .arg("--k3s")
        .arg(armfleet_tests::util::aarch64_bin("k3s-standin"))
        .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
        .env("ARMFLEET_WIFI_INFRA_PSK", "lab-wifi-passphrase")
        .env(
            "ARMFLEET_TOPOLOGY",
            armfleet_tests::fixtures::offline_topology(),
        )
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "imagegen {board}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn rpi4_image_boots_to_node_runtime_on_qemu_virt() {
    let rootfs = armfleet_tests::fixtures::real_node_rootfs();
    let dir = tempfile::tempdir().unwrap();
    let image = build("rpi4", dir.path(), &rootfs);
    let started = Instant::now();
    let mut vm = QemuBoot::start(&image, Machine::Virt, 3 << 30);
    let grown = vm.wait_for(
        "armfleet-initramfs: root partition grown",
        Duration::from_secs(90),
    );
    assert!(
        grown.is_some(),
        "the initramfs grew the root partition:\n{}",
        vm.tail(60)
    );
    // systemd starts node-runtime.service once the network is online; node-runtime's own output
    // goes to the console (imagegen's drop-in), its lines start with "node-runtime:".
    let own = vm.wait_for("node-runtime:", Duration::from_secs(300));
    let line = own.unwrap_or_else(|| {
        panic!(
            "no output from node-runtime on the console:\n{}",
            vm.tail(80)
        )
    });
    println!("node-runtime on the serial console: {line}");
    println!(
        "boot to node-runtime took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        vm.log()
            .iter()
            .any(|l| l.contains("EXT4-fs") && l.contains("vda2")),
        "root mounted from the image's second partition"
    );
}

#[test]
fn rpi3a_image_boots_from_the_sd_card_on_qemu_raspi3b() {
    let rootfs = armfleet_tests::fixtures::real_node_rootfs();
    let dir = tempfile::tempdir().unwrap();
    let image = build("rpi3a", dir.path(), &rootfs);
    let started = Instant::now();
    // raspi3b wants an SD card of a power-of-two size.
    let mut vm = QemuBoot::start(&image, Machine::Raspi3b, 4 << 30);
    let root = vm.wait_for(
        "armfleet-initramfs: root is /dev/mmcblk0p2",
        Duration::from_secs(120),
    );
    assert!(
        root.is_some(),
        "the initramfs found the root on the SD card:\n{}",
        vm.tail(60)
    );
    let sd = vm.wait_for("EXT4-fs (mmcblk0p2): mounted", Duration::from_secs(60));
    assert!(
        sd.is_some(),
        "root mounted from the SD card:\n{}",
        vm.tail(60)
    );
    let systemd = vm.wait_for("systemd", Duration::from_secs(120));
    assert!(
        systemd.is_some(),
        "systemd runs from the SD card:\n{}",
        vm.tail(60)
    );
    println!(
        "raspi3b: systemd up after {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        systemd.unwrap()
    );
    // The same proof as the Pi 4: node-runtime's own line on the serial console. QEMU's raspi3b
    // has no SDIO Wi-Fi, so wlan0 never appears (and a usb-net stand-in does not enumerate on
    // its dwc2 with the mainline driver): systemd gives up on the wlan0 device after 90 s and
    // networkd-wait-online after 120 s, as on a 3A+ whose Wi-Fi is down, then
    // network-online.target is reached and node-runtime starts — about 3.5 min in.
    let own = vm.wait_for("node-runtime:", Duration::from_secs(420));
    let line = own.unwrap_or_else(|| {
        panic!(
            "no output from node-runtime on the console:\n{}",
            vm.tail(80)
        )
    });
    println!(
        "raspi3b: node-runtime after {:.0} s: {line}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        vm.log()
            .iter()
            .any(|l| l.contains("Hostname set to <rpi3a-ctl>")),
        "the image's host name"
    );
}

/// The README's command for a new user: `imagegen rpi4` with no `--rootfs` builds the node rootfs
/// itself (mmdebstrap base + the cross-built node-runtime found beside the checkout's binaries),
/// cached by its inputs. Pointed at the real-rootfs fixture's cache, whose inputs are the same, it
/// must find that build instead of running mmdebstrap again, and make a complete image from it.
#[test]
fn slow_imagegen_without_rootfs_builds_and_reuses_the_node_rootfs() {
    let fixture = armfleet_tests::fixtures::real_node_rootfs_build();
    let cache = cache_dir("node-rootfs-real").join("cache");
    let builds = || -> Vec<std::path::PathBuf> {
        let mut dirs: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        dirs.sort();
        dirs
    };
    let before = builds();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rpi4-2.img");
    let started = Instant::now();
    let o = Command::new(imagegen_bin())
        .args(["rpi4", "-o"])
        .arg(&out)
        .env("ARMFLEET_CACHE_DIR", &cache)
        .env(
            "ARMFLEET_TOPOLOGY",
            armfleet_tests::fixtures::offline_topology(),
        )
        .env("ARMFLEET_WIFI_INFRA_PSK", "lab-wifi-passphrase")
        .env(
            "SOURCE_DATE_EPOCH",
            armfleet_tests::fixtures::FIXTURE_EPOCH.to_string(),
        )
        .env_remove("ARMFLEET_NODE_RUNTIME")
        .env_remove("K3S_TOKEN")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "imagegen rpi4: {said}");
    assert!(
        out.exists() && out.with_extension("img.bmap").exists(),
        "{said}"
    );
    // The node rootfs was the fixture's own build, found by its input hash: no new rootfs dir.
    assert_eq!(builds(), before, "a second node rootfs was built: {said}");
    assert!(before.contains(&fixture.tarball.parent().unwrap().to_owned()));
    // No token at build time is not an error: the summary says where to drop it.
    assert!(said.contains("armfleet-token"), "{said}");
    // Output going to a file (as under a CI log or `> build.log`) is plain lines: the cached
    // rootfs said once, each step on a line of its own with its time, the next step last.
    assert!(said.contains("node rootfs: unchanged inputs"), "{said}");
    for step in [
        "boot assets",
        "root filesystem tree",
        "initramfs",
        "boot (FAT32) and root (ext4) partitions",
        "bmap and checksum",
    ] {
        assert!(
            said.lines()
                .any(|l| l.starts_with(&format!("{step}: done ")) && l.ends_with(" s)")),
            "no timed line for {step}: {said}"
        );
    }
    assert!(
        !said.contains('\r') && !said.contains('\x1b'),
        "no bars or colours in a file"
    );
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    assert_eq!(
        last,
        format!(
            "next:     imagegen flash {0} /dev/sdX   (`imagegen flash {0}` lists the cards)",
            out.display()
        )
    );
    let inspect = Command::new(imagegen_bin())
        .arg("inspect")
        .arg(&out)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{shown}");
    assert!(shown.contains("rpi4-2"), "{shown}");
    eprintln!(
        "image from the cached node rootfs in {:?}",
        started.elapsed()
    );
}
