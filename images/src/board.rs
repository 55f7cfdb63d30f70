//! What a board profile means on the boot partition: `config.txt` and `cmdline.txt`. The
//! profiles themselves are data in [`bootstrap::board`], one registry that the topology's board
//! check reads too.

pub use bootstrap::board::{Board, BoardError, Origin, Partitions, Profile, Registry};

/// Name of the kernel on the boot partition.
pub const KERNEL_FILE: &str = "vmlinuz";
/// Name of the initramfs on the boot partition.
pub const INITRD_FILE: &str = "initrd.img";

/// The kernel command line for a root partition, in the order the Pi firmware needs: the
/// cgroup flags come last, after any `cgroup_disable=memory` the firmware puts in front.
pub fn cmdline(board: &Board, root_partuuid: &str, wifi_country: Option<&str>) -> String {
    let mut args: Vec<String> = board
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
pub fn config_txt(board: &Board, host: &str) -> String {
    let mut out = format!(
        "# Written by imagegen for {host} ({}). Rebuild the image rather than editing it.\n[all]\n",
        board.model
    );
    for l in &board.config_txt {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!(
        "kernel={KERNEL_FILE}\ninitramfs {INITRD_FILE} followkernel\ndevice_tree={}\n",
        board.dtb
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_flags_come_last() {
        let r = Registry::builtin().unwrap();
        let c = cmdline(r.get("rpi4").unwrap(), "1234abcd-02", None);
        assert!(c.ends_with("cgroup_memory=1 cgroup_enable=memory"), "{c}");
        assert!(c.contains("root=PARTUUID=1234abcd-02 "), "{c}");
    }

    #[test]
    fn config_txt_ends_with_the_lines_imagegen_owns() {
        let r = Registry::builtin().unwrap();
        let c = config_txt(r.get("rpi3b-plus").unwrap(), "h");
        assert!(c.contains("(Raspberry Pi 3 Model B+)") && c.contains("\narm_64bit=1\n"));
        assert!(c.ends_with(
            "kernel=vmlinuz\ninitramfs initrd.img followkernel\ndevice_tree=bcm2837-rpi-3-b-plus.dtb\n"
        ));
    }
}
