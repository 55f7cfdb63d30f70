//! Board profiles as data: one TOML file per board in `images/boards/`, embedded at build time.
//! A new board (a Pi 5) is a new file; the code only reads what the file says.

use crate::error::ImageError;
use serde::{Deserialize, Serialize};

const BUILTIN: &[(&str, &str)] = &[
    ("rpi4.toml", include_str!("../boards/rpi4.toml")),
    ("rpi3a.toml", include_str!("../boards/rpi3a.toml")),
];

/// What a board needs on its card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name used on the command line and in the topology (`rpi4`).
    pub name: String,
    /// Human model name.
    pub model: String,
    /// Firmware files from Debian's `raspi-firmware` copied to the FAT partition.
    pub firmware: Vec<String>,
    /// The device tree blob (from the kernel package) the firmware must load.
    pub dtb: String,
    /// Kernel consoles, in order; the last one receives systemd's output.
    pub consoles: Vec<String>,
    /// `config.txt` lines, in order, before the kernel/initramfs/device_tree lines imagegen adds.
    pub config_txt: Vec<String>,
    /// Kernel modules the initramfs loads (with their dependencies) before mounting the root.
    pub initramfs_modules: Vec<String>,
    /// Whether the board has wired Ethernet (`eth0`).
    pub ethernet: bool,
    /// Whether the board has Wi-Fi (`wlan0`).
    pub wifi: bool,
    /// Files under `/lib/firmware` the root filesystem needs (Wi-Fi), from `firmware-brcm80211`
    /// or `raspi-firmware`.
    #[serde(default)]
    pub rootfs_firmware: Vec<String>,
    /// Partition sizes.
    pub partitions: Partitions,
}

/// Partition sizes of a board's image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// FAT32 boot partition, MiB.
    pub boot_mib: u64,
    /// Smallest root partition, MiB (the image grows to the card on first boot).
    pub root_min_mib: u64,
}

impl Board {
    /// Parses and validates a profile; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Board, ImageError> {
        let board: Board = toml::from_str(text).map_err(|e| ImageError::BadBoard {
            origin: origin.to_owned(),
            message: e.message().trim().replace('\n', " "),
        })?;
        board.validate(origin)?;
        Ok(board)
    }

    /// Checks what serde cannot.
    pub fn validate(&self, origin: &str) -> Result<(), ImageError> {
        let bad = |message: String| ImageError::BadBoard {
            origin: origin.to_owned(),
            message,
        };
        if !bootstrap::node_config::is_dns_label(&self.name) {
            return Err(bad(format!(
                "name {:?} must be a lowercase word",
                self.name
            )));
        }
        if self.firmware.is_empty() {
            return Err(bad(
                "firmware lists no files: the Pi cannot boot without start*.elf".into(),
            ));
        }
        if !self
            .firmware
            .iter()
            .any(|f| f.starts_with("start") && f.ends_with(".elf"))
        {
            return Err(bad("firmware needs a start*.elf".into()));
        }
        if !self
            .firmware
            .iter()
            .any(|f| f.starts_with("fixup") && f.ends_with(".dat"))
        {
            return Err(bad(
                "firmware needs the fixup*.dat matching its start*.elf".into()
            ));
        }
        if !self.dtb.ends_with(".dtb") || self.dtb.contains('/') {
            return Err(bad(format!(
                "dtb {:?} must be a file name ending in .dtb",
                self.dtb
            )));
        }
        if self.consoles.is_empty() {
            return Err(bad("consoles is empty".into()));
        }
        if !self.config_txt.iter().any(|l| l.trim() == "arm_64bit=1") {
            return Err(bad(
                "config_txt must contain arm_64bit=1 (the kernel is arm64)".into(),
            ));
        }
        for l in &self.config_txt {
            let key = l.split(['=', ' ']).next().unwrap_or("");
            if ["kernel", "initramfs", "device_tree"].contains(&key) {
                return Err(bad(format!(
                    "config_txt sets {key}: imagegen writes that line itself"
                )));
            }
        }
        if !self.initramfs_modules.iter().any(|m| m == "ext4") {
            return Err(bad(
                "initramfs_modules must include ext4 (the root filesystem)".into(),
            ));
        }
        if !self.ethernet && !self.wifi {
            return Err(bad(
                "a board without ethernet and wifi cannot join the cluster".into(),
            ));
        }
        if self.partitions.boot_mib < 256 {
            return Err(bad(format!(
                "partitions.boot_mib = {}: use at least 256 so the boot partition is a real FAT32",
                self.partitions.boot_mib
            )));
        }
        if self.partitions.root_min_mib < 256 {
            return Err(bad("partitions.root_min_mib must be at least 256".into()));
        }
        Ok(())
    }

    /// The boards built into imagegen, sorted by name.
    pub fn builtin() -> Vec<Board> {
        let mut boards: Vec<Board> = BUILTIN
            .iter()
            .map(|(file, text)| {
                Board::from_toml(text, file).expect("built-in board profiles are valid")
            })
            .collect();
        boards.sort_by(|a, b| a.name.cmp(&b.name));
        boards
    }

    /// The built-in board called `name`.
    pub fn by_name(name: &str) -> Result<Board, ImageError> {
        let boards = Board::builtin();
        let known = boards
            .iter()
            .map(|b| b.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        boards
            .into_iter()
            .find(|b| b.name == name)
            .ok_or(ImageError::UnknownBoard {
                name: name.to_owned(),
                known,
            })
    }

    /// The kernel command line for a root partition, in the order the Pi firmware needs: the
    /// cgroup flags come last, after any `cgroup_disable=memory` the firmware puts in front.
    pub fn cmdline(&self, root_partuuid: &str, wifi_country: Option<&str>) -> String {
        let mut args: Vec<String> = self
            .consoles
            .iter()
            .map(|c| format!("console={c}"))
            .collect();
        args.push(format!("root=PARTUUID={root_partuuid}"));
        args.extend(
            [
                "rootfstype=ext4",
                "rw",
                "rootwait",
                "fsck.repair=yes",
                "net.ifnames=0",
            ]
            .map(String::from),
        );
        if let Some(cc) = wifi_country {
            args.push(format!("cfg80211.ieee80211_regdom={cc}"));
        }
        args.extend(["cgroup_memory=1", "cgroup_enable=memory"].map(String::from));
        args.join(" ")
    }

    /// `config.txt`: the board's lines, then the kernel, initramfs and device tree imagegen installs.
    pub fn config_txt(&self, host: &str) -> String {
        let mut out = format!(
            "# Written by imagegen for {host} ({}). Rebuild the image rather than editing it.\n[all]\n",
            self.model
        );
        for l in &self.config_txt {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!(
            "kernel={KERNEL_FILE}\ninitramfs {INITRD_FILE} followkernel\ndevice_tree={}\n",
            self.dtb
        ));
        out
    }
}

/// Name of the kernel on the boot partition.
pub const KERNEL_FILE: &str = "vmlinuz";
/// Name of the initramfs on the boot partition.
pub const INITRD_FILE: &str = "initrd.img";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_differ_where_the_hardware_does() {
        let rpi4 = Board::by_name("rpi4").unwrap();
        let rpi3a = Board::by_name("rpi3a").unwrap();
        assert!(rpi4.firmware.contains(&"start4.elf".to_string()));
        assert!(!rpi4.firmware.contains(&"bootcode.bin".to_string()));
        assert!(rpi3a.firmware.contains(&"bootcode.bin".to_string()));
        assert_eq!(rpi3a.dtb, "bcm2837-rpi-3-a-plus.dtb");
        assert!(!rpi3a.ethernet);
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let e = Board::by_name("rpi9").unwrap_err().to_string();
        assert!(e.contains("rpi3a, rpi4"), "{e}");
    }

    #[test]
    fn cgroup_flags_come_last() {
        let b = Board::by_name("rpi4").unwrap();
        let c = b.cmdline("1234abcd-02", None);
        assert!(c.ends_with("cgroup_memory=1 cgroup_enable=memory"), "{c}");
        assert!(c.contains("root=PARTUUID=1234abcd-02 "), "{c}");
    }

    #[test]
    fn profile_without_fixup_is_refused() {
        let text = include_str!("../boards/rpi4.toml").replace("\"fixup4.dat\"", "");
        let e = Board::from_toml(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("fixup"), "{e}");
    }
}
