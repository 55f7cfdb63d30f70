//! The decisions of an image build, made without touching a file so that each is unit-tested:
//! what goes on the boot partition, where the partitions go and how big they are, the disk
//! signature, and whether the join token is baked in or left to be dropped on the card.
//! [`crate::build`] gathers the content, asks for the layout, then writes it.

use crate::assets::BootAssets;
use crate::board::{self, Board, INITRD_FILE, KERNEL_FILE};
use crate::error::ImageError;
use bootstrap::layout::pi::{BOOT_MOUNT, TOKEN_DROP, TOKEN_DROP_NAME};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// Partitions start and end on 4 MiB boundaries (SD card allocation units).
pub const ALIGN_MIB: u64 = 4;
const ALIGN: u64 = ALIGN_MIB * MIB;
/// Room the FAT32 itself takes on the boot partition beside its files.
const FAT_ROOM: u64 = 8 * MIB;
/// The smallest root partition a `--size` may leave, checked before any work is done.
const ROOT_FLOOR: u64 = 256 * MIB;

/// MBR disk signature for a host: the first 4 bytes of sha256("armfleet-disk:" + name), never 0.
pub fn disk_signature(host: &str) -> u32 {
    let h = Sha256::digest(format!("armfleet-disk:{host}").as_bytes());
    let v = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if v == 0 { 1 } else { v }
}

/// The PARTUUID of the root partition (the second) on a disk with signature `sig`.
pub fn root_partuuid(sig: u32) -> String {
    format!("{sig:08x}-02")
}

/// ext4 filesystem UUID for a host (also its directory hash seed), derived from the name.
pub fn root_uuid(host: &str) -> String {
    let h = Sha256::digest(format!("armfleet-root:{host}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The fstab imagegen writes.
pub fn fstab(sig: u32) -> String {
    format!(
        "# Written by imagegen. The root partition is grown to the card by the initramfs on first\n# boot and the filesystem follows (x-systemd.growfs).\nPARTUUID={sig:08x}-02  /               ext4  defaults,noatime,x-systemd.growfs  0  1\nPARTUUID={sig:08x}-01  {BOOT_MOUNT}  vfat  defaults,noatime,umask=0077,nofail  0  2\n"
    )
}

/// Where a file of the boot partition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// A file of a Debian package in the boot-asset cache.
    Asset {
        /// The file.
        path: PathBuf,
        /// Its package, named when the file is missing.
        package: &'static str,
    },
    /// The initramfs made for this image.
    Initramfs,
    /// Text imagegen writes.
    Text(String),
}

/// One file of the boot partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Its name on the FAT.
    pub name: String,
    /// Where its bytes come from.
    pub source: BootSource,
}

/// What goes on the boot partition, in the order it is written: the board's firmware, its
/// device tree, the kernel, the initramfs, `config.txt`, `cmdline.txt` and the list of packages.
pub fn boot_files(
    board: &Board,
    assets: &BootAssets,
    host: &str,
    sig: u32,
    wifi_country: Option<&str>,
) -> Vec<BootFile> {
    let file = |name: &str, source| BootFile {
        name: name.to_owned(),
        source,
    };
    let asset = |path: PathBuf, package| BootSource::Asset { path, package };
    let mut files: Vec<BootFile> = board
        .firmware
        .iter()
        .map(|f| file(f, asset(assets.firmware_dir.join(f), "raspi-firmware")))
        .collect();
    files.push(file(
        &board.dtb,
        asset(assets.dtb_dir.join(&board.dtb), "linux-image-arm64"),
    ));
    files.push(file(
        KERNEL_FILE,
        asset(assets.kernel_image.clone(), "linux-image-arm64"),
    ));
    files.push(file(INITRD_FILE, BootSource::Initramfs));
    files.push(file(
        "config.txt",
        BootSource::Text(board::config_txt(board, host)),
    ));
    files.push(file(
        "cmdline.txt",
        BootSource::Text(format!(
            "{}\n",
            board::cmdline(board, &root_partuuid(sig), wifi_country)
        )),
    ));
    let mut manifest = format!(
        "# Boot assets of this image (imagegen).\nkernel {}\n",
        assets.kernel_version
    );
    for p in &assets.packages {
        manifest.push_str(&format!("{} {} sha256:{}\n", p.package, p.file, p.sha256));
    }
    files.push(file("armfleet-assets.txt", BootSource::Text(manifest)));
    files
}

/// The `node.toml` the image carries: the host's, with the path where a token dropped on the
/// boot partition appears when the topology names none.
pub fn node_config(node: &bootstrap::NodeConfig) -> bootstrap::NodeConfig {
    let mut node = node.clone();
    if node.server.token_drop.is_none() {
        node.server.token_drop = Some(PathBuf::from(TOKEN_DROP));
    }
    node
}

/// How the join token reaches the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlan {
    /// Written into the image (0600).
    Baked,
    /// Not in the image: the user copies it to the card's boot partition under this name.
    Drop(&'static str),
}

/// Baked in when the build has a token, else left to be dropped on the card after flashing.
pub fn token_plan(token: Option<&[u8]>) -> TokenPlan {
    match token {
        Some(_) => TokenPlan::Baked,
        None => TokenPlan::Drop(TOKEN_DROP_NAME),
    }
}

/// Root partition bytes needed for a tree of `data_bytes` in `inodes` files: data (small files
/// rounded up to blocks), inode tables, journal and reserve, rounded up to the alignment.
pub fn root_bytes(data_bytes: u64, inodes: u64) -> u64 {
    let data = data_bytes + inodes * 4096 / 4;
    let inode_tables = (data / 16384).max(inodes * 2) * 256;
    let est = (data + inode_tables) * 110 / 100 + 64 * MIB;
    est.div_ceil(ALIGN) * ALIGN
}

/// Checks a requested image size before any work: it must hold the boot partition and a
/// minimal root (the real need is known once the root tree is read, see [`layout`]).
pub fn check_size(board: &Board, size: Option<u64>) -> Result<(), ImageError> {
    let Some(size) = size else { return Ok(()) };
    let min = ALIGN + board.partitions.boot_mib * MIB + ROOT_FLOOR;
    if size < min {
        return Err(ImageError::SizeTooSmall {
            asked_mib: size / MIB,
            needed_mib: min / MIB,
        });
    }
    Ok(())
}

/// The sizes of what goes into an image, measured once it is gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Bytes of the boot partition's files.
    pub boot_bytes: u64,
    /// The root partition the root tree needs ([`root_bytes`]).
    pub root_bytes: u64,
    /// Bytes of file data in the root tree.
    pub data_bytes: u64,
}

/// A byte range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where everything goes in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// MBR disk signature ([`disk_signature`]).
    pub disk_signature: u32,
    /// The FAT32 boot partition.
    pub boot: Extent,
    /// The ext4 root partition, to the end of the image.
    pub root: Extent,
    /// Image size.
    pub size: u64,
    /// Bytes the build writes (for the free-space check): the files and some metadata.
    pub data_estimate: u64,
}

/// Lays out the image of `host`: the boot partition at 4 MiB with the board's size, the root
/// after it to the end of the image. The image is `size` rounded down to 4 MiB, else just
/// enough for the root tree and the board's smallest root (the card grows it on first boot).
pub fn layout(
    board: &Board,
    host: &str,
    size: Option<u64>,
    m: &Measured,
) -> Result<Layout, ImageError> {
    let boot = Extent {
        start: ALIGN,
        len: board.partitions.boot_mib * MIB,
    };
    let root_start = boot.start + boot.len;
    let size = match size {
        Some(s) => {
            let s = s / ALIGN * ALIGN;
            if s < root_start + m.root_bytes {
                return Err(ImageError::SizeTooSmall {
                    asked_mib: s / MIB,
                    needed_mib: (root_start + m.root_bytes) / MIB,
                });
            }
            s
        }
        None => root_start + m.root_bytes.max(board.partitions.root_min_mib * MIB),
    };
    if m.boot_bytes + FAT_ROOM > boot.len {
        return Err(ImageError::BootTooSmall {
            board: board.name.clone(),
            files_mib: (m.boot_bytes + FAT_ROOM).div_ceil(MIB),
            boot_mib: board.partitions.boot_mib,
        });
    }
    Ok(Layout {
        disk_signature: disk_signature(host),
        boot,
        root: Extent {
            start: root_start,
            len: size - root_start,
        },
        size,
        data_estimate: m.boot_bytes + m.data_bytes + 80 * MIB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Registry;

    fn board(name: &str) -> Board {
        Registry::builtin().unwrap().get(name).unwrap().clone()
    }

    fn measured(root_mib: u64) -> Measured {
        Measured {
            boot_bytes: 40 * MIB,
            root_bytes: root_mib * MIB,
            data_bytes: 300 * MIB,
        }
    }

    #[test]
    fn default_size_is_just_enough_and_at_least_the_boards_smallest_root() {
        let b = board("rpi4");
        let small = layout(&b, "h", None, &measured(400)).unwrap();
        assert_eq!(
            small.boot,
            Extent {
                start: 4 * MIB,
                len: 256 * MIB
            }
        );
        assert_eq!(small.root.start, 260 * MIB);
        assert_eq!(small.root.len, 1024 * MIB, "the board's root_min_mib");
        assert_eq!(small.size, small.root.start + small.root.len);
        let big = layout(&b, "h", None, &measured(1500)).unwrap();
        assert_eq!(big.root.len, 1500 * MIB, "the tree's need");
        assert_eq!(big.data_estimate, 40 * MIB + 300 * MIB + 80 * MIB);
    }

    #[test]
    fn every_partition_is_4_mib_aligned() {
        for name in Registry::builtin().unwrap().names() {
            let b = board(name);
            let root = root_bytes(123_456_789, 4321);
            assert_eq!(root % (4 * MIB), 0);
            for size in [None, Some(2 << 30), Some((2 << 30) + 3 * MIB + 17)] {
                let l = layout(&b, "h", size, &measured(root / MIB)).unwrap();
                for x in [l.boot.start, l.boot.len, l.root.start, l.root.len, l.size] {
                    assert_eq!(x % (4 * MIB), 0, "{name} {size:?}: {l:?}");
                }
                assert_eq!(l.root.start + l.root.len, l.size, "root to the end");
            }
        }
    }

    #[test]
    fn a_given_size_is_rounded_down_and_may_leave_less_than_root_min() {
        let b = board("rpi3a");
        let l = layout(&b, "h", Some((1 << 30) + 5 * MIB), &measured(400)).unwrap();
        assert_eq!(l.size, (1 << 30) + 4 * MIB);
        assert_eq!(l.root.len, l.size - 260 * MIB);
    }

    #[test]
    fn a_size_too_small_for_the_tree_says_what_is_needed() {
        let b = board("rpi4");
        let e = layout(&b, "h", Some(600 * MIB), &measured(500)).unwrap_err();
        match e {
            ImageError::SizeTooSmall {
                asked_mib,
                needed_mib,
            } => assert_eq!((asked_mib, needed_mib), (600, 760)),
            e => panic!("{e}"),
        }
        assert!(
            check_size(&b, Some(600 * MIB)).is_ok(),
            "holds a minimal root"
        );
        let e = check_size(&b, Some(500 * MIB)).unwrap_err().to_string();
        assert!(
            e.contains("at least 516 MiB") && e.contains("--size 516M"),
            "{e}"
        );
    }

    #[test]
    fn boot_files_that_outgrow_the_boot_partition_are_refused() {
        let b = board("rpi4");
        let mut m = measured(400);
        m.boot_bytes = 250 * MIB;
        let e = layout(&b, "h", None, &m).unwrap_err().to_string();
        assert!(
            e.contains("258 MiB") && e.contains("rpi4 profile's partitions.boot_mib = 256"),
            "{e}"
        );
    }

    #[test]
    fn the_disk_signature_is_the_hosts() {
        let l = layout(&board("rpi4"), "rpi4-2", None, &measured(400)).unwrap();
        assert_eq!(l.disk_signature, disk_signature("rpi4-2"));
        assert_ne!(disk_signature("rpi4-2"), disk_signature("rpi4-3"));
        assert_eq!(
            root_partuuid(0xabc),
            "00000abc-02",
            "the kernel's PARTUUID form"
        );
    }

    #[test]
    fn the_token_is_baked_when_given_else_dropped_on_the_card() {
        assert_eq!(token_plan(Some(b"K10x::server:y\n")), TokenPlan::Baked);
        assert_eq!(token_plan(None), TokenPlan::Drop("armfleet-token"));
        let t = bootstrap::Topology::embedded_default();
        let node = bootstrap::NodeConfig::for_host(&t, "rpi4-2").unwrap();
        assert_eq!(
            node_config(&node).server.token_drop.as_deref(),
            Some(std::path::Path::new(TOKEN_DROP))
        );
    }

    #[test]
    fn the_boot_partition_holds_firmware_dtb_kernel_initramfs_and_config() {
        let b = board("rpi3b-plus");
        let assets = BootAssets {
            kernel_version: "6.1.0-1-arm64".into(),
            kernel_image: "/k/vmlinuz".into(),
            dtb_dir: "/k/broadcom".into(),
            modules_dir: "/k/modules".into(),
            system_map: "/k/System.map".into(),
            firmware_dir: "/fw".into(),
            lib_firmware: Vec::new(),
            busybox: "/bb".into(),
            packages: Vec::new(),
        };
        let files = boot_files(&b, &assets, "h", 0x1234_5678, Some("FR"));
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bootcode.bin",
                "start.elf",
                "fixup.dat",
                "bcm2837-rpi-3-b-plus.dtb",
                "vmlinuz",
                "initrd.img",
                "config.txt",
                "cmdline.txt",
                "armfleet-assets.txt"
            ]
        );
        assert_eq!(
            files[3].source,
            BootSource::Asset {
                path: "/k/broadcom/bcm2837-rpi-3-b-plus.dtb".into(),
                package: "linux-image-arm64"
            }
        );
        let BootSource::Text(cmdline) = &files[7].source else {
            panic!("{:?}", files[7])
        };
        assert!(
            cmdline.contains("root=PARTUUID=12345678-02 ")
                && cmdline.contains("cfg80211.ieee80211_regdom=FR"),
            "{cmdline}"
        );
    }
}
