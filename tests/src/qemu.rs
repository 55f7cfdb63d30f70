//! QEMU boot checks for SD card images made by `imagegen`: the image's own kernel, initramfs and
//! command line (read from its FAT partition with mtools, independently of imagegen), booted on
//! `qemu-system-aarch64`, with the serial console read line by line until a wanted line shows.
//!
//! Machines: `virt` (virtio disk; the image's initramfs loads virtio_blk like it loads the SD
//! controller on a Pi), or `raspi3b` (the emulated SD controller; the image must be a power of
//! two in size, so a copy is grown). Pi 4 images are booted on `virt`: on QEMU 10's `raspi4b`,
//! Debian's 6.1 kernel with the mainline `bcm2711-rpi-4-b.dtb` dies 2 s in, in
//! `brcmstb_l2_intc_of_init` (synchronous external abort: the tree's brcmstb L2 interrupt
//! controller is not emulated), before any disk is probed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which emulated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M virt`, virtio-blk disk, PL011 console `ttyAMA0`.
    Virt,
    /// `-M raspi3b`, the image as SD card, PL011 console `ttyAMA0`.
    Raspi3b,
}

/// A running QEMU with its serial console captured. Killed on drop.
pub struct QemuBoot {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    _work: tempfile::TempDir,
}

/// Byte offset of partition `n` (1-based) from the image's MBR.
pub fn partition_offset(image: &Path, n: usize) -> u64 {
    let data = std::fs::read(image)
        .map(|d| d[..512].to_vec())
        .unwrap_or_else(|_| {
            use std::io::Read;
            let mut b = vec![0u8; 512];
            std::fs::File::open(image)
                .unwrap()
                .read_exact(&mut b)
                .unwrap();
            b
        });
    let e = 446 + 16 * (n - 1);
    u32::from_le_bytes(data[e + 8..e + 12].try_into().unwrap()) as u64 * 512
}

/// Copies `name` out of the image's FAT partition (partition 1) with `mcopy`.
pub fn fat_file(image: &Path, name: &str, dest: &Path) {
    let off = partition_offset(image, 1);
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(format!("::{name}"))
        .arg(dest)
        .output()
        .expect("run mcopy (mtools)");
    assert!(
        out.status.success(),
        "mcopy ::{name} from {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl QemuBoot {
    /// Boots a sparse copy of `image` (grown to `disk_size` bytes, so the first-boot growth of the
    /// root partition is exercised) with the image's `vmlinuz`, `initrd.img` and `cmdline.txt`.
    pub fn start(image: &Path, machine: Machine, disk_size: u64) -> QemuBoot {
        QemuBoot::start_on(image, machine, disk_size, None)
    }

    /// [`QemuBoot::start`] with the `virt` machine's NIC on a socket network: connected to
    /// `127.0.0.1:port` (a [`crate::vswitch::Switch`] port), with its own MAC address. No user
    /// network: the guest reaches only what the switch connects it to.
    pub fn start_switched(image: &Path, disk_size: u64, port: u16, mac: &str) -> QemuBoot {
        QemuBoot::start_on(image, Machine::Virt, disk_size, Some((port, mac)))
    }

    fn start_on(
        image: &Path,
        machine: Machine,
        disk_size: u64,
        switched: Option<(u16, &str)>,
    ) -> QemuBoot {
        let work = tempfile::tempdir().expect("temp dir");
        let w = |n: &str| work.path().join(n);
        for f in ["vmlinuz", "initrd.img", "cmdline.txt"] {
            fat_file(image, f, &w(f));
        }
        let disk = w("disk.img");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&disk)
            .status()
            .unwrap();
        assert!(st.success(), "copy the image");
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(disk_size.max(len)).unwrap();
        drop(f);
        // The Pi consoles (tty1, ttyS1) do not exist on these machines: the PL011 is ttyAMA0.
        let cmdline = std::fs::read_to_string(w("cmdline.txt")).unwrap();
        let args: Vec<&str> = cmdline
            .split_whitespace()
            .filter(|a| !a.starts_with("console="))
            .collect();
        let append = format!("console=ttyAMA0,115200 {}", args.join(" "));
        let mut cmd = Command::new("qemu-system-aarch64");
        match machine {
            Machine::Virt => {
                cmd.args([
                    "-M",
                    "virt",
                    "-cpu",
                    "cortex-a72",
                    "-smp",
                    "2",
                    "-m",
                    "1024",
                ])
                .arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
                .args(["-device", "virtio-blk-pci,drive=d0"]);
                match switched {
                    Some((port, mac)) => {
                        cmd.arg("-netdev")
                            .arg(format!("socket,id=n0,connect=127.0.0.1:{port}"))
                            .arg("-device")
                            .arg(format!("virtio-net-pci,netdev=n0,mac={mac},romfile="));
                    }
                    // A NIC so eth0 exists and systemd's network-online.target is reached as
                    // on a cabled Pi; restrict=on: the guest reaches nothing outside itself.
                    None => {
                        cmd.args([
                            "-netdev",
                            "user,id=n0,restrict=on",
                            "-device",
                            "virtio-net-pci,netdev=n0,romfile=",
                        ]);
                    }
                }
            }
            Machine::Raspi3b => {
                let dtb = w("bcm2837-rpi-3-b.dtb");
                // The 3A+ tree names no SD card for QEMU's 3B model; use the 3B tree of the same kernel.
                let kernel_tree = find_dtb("bcm2837-rpi-3-b.dtb");
                std::fs::copy(kernel_tree, &dtb).unwrap();
                cmd.args(["-M", "raspi3b"])
                    .arg("-dtb")
                    .arg(&dtb)
                    .arg("-sd")
                    .arg(&disk);
            }
        }
        cmd.arg("-kernel")
            .arg(w("vmlinuz"))
            .arg("-initrd")
            .arg(w("initrd.img"))
            .arg("-append")
            .arg(&append)
            .args([
                "-nographic",
                "-no-reboot",
                "-monitor",
                "none",
                "-serial",
                "stdio",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("start qemu-system-aarch64 (run scripts/setup.sh)");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let s = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx2.send(format!("qemu: {line}")).is_err() {
                    break;
                }
            }
        });
        QemuBoot {
            child,
            lines: rx,
            log: Vec::new(),
            _work: work,
        }
    }

    /// Waits for a console line containing `needle`; returns it, or `None` at the timeout or
    /// when QEMU exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The console so far (for assertion messages), last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let start = self.log.len().saturating_sub(n);
        self.log[start..].join("\n")
    }

    /// Every console line so far.
    pub fn log(&self) -> &[String] {
        &self.log
    }
}

impl Drop for QemuBoot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device tree from the kernel package in the boot-asset cache the imagegen tests use
/// (`ARMFLEET_CACHE_DIR=<test cache>/imagegen-cache`).
fn find_dtb(name: &str) -> PathBuf {
    let root = crate::util::cache_dir("imagegen-cache").join("boot-assets/unpacked");
    for e in std::fs::read_dir(&root)
        .expect("boot assets unpacked")
        .flatten()
    {
        let lib = e.path().join("usr/lib");
        if let Ok(rd) = std::fs::read_dir(&lib) {
            for k in rd.flatten() {
                let p = k.path().join("broadcom").join(name);
                if p.exists() {
                    return p;
                }
            }
        }
    }
    panic!("{name} not found under {}", root.display());
}
