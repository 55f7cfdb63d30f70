//! `imagegen flash`: writes only the mapped blocks of an image (from its bmap) to a card, then
//! reads them back and compares checksums. Before opening a block device it refuses a partition,
//! a mounted device, a disk holding a mounted (or otherwise used) partition, the disk the
//! running system lives on, and a device smaller than the image; the device is then opened with
//! `O_EXCL`, so the kernel refuses it too if anything holds it.
//!
//! The copy itself is generic over `Read + Write + Seek` and never opens a path, so it is tested
//! on files.

use crate::bmap::{Bmap, hash_span};
use bootstrap::progress::{Event, Progress};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a flash was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The target is mounted.
    #[error(
        "{device} is mounted on {mountpoint}: unmount it first (umount {device}), then flash again"
    )]
    Mounted {
        /// The device.
        device: PathBuf,
        /// Where.
        mountpoint: String,
    },
    /// A partition of the target is mounted or in use.
    #[error(
        "{device} holds {partition}, which is {how}: unmount it (umount {partition}) or pick the right card"
    )]
    PartitionInUse {
        /// The disk.
        device: PathBuf,
        /// The partition.
        partition: String,
        /// "mounted on X", "in use by dm-0", "used as swap".
        how: String,
    },
    /// The target is the disk the running system lives on.
    #[error(
        "{device} is the disk the running system lives on (it holds {what}): refusing to overwrite it; pick the SD card (see `lsblk`)"
    )]
    SystemDisk {
        /// The device.
        device: PathBuf,
        /// What of the system is on it.
        what: String,
    },
    /// The target is a partition, not a whole disk.
    #[error("{device} is a partition: give the whole card, e.g. /dev/{parent}")]
    IsPartition {
        /// The partition.
        device: PathBuf,
        /// Its disk.
        parent: String,
    },
    /// The target is smaller than the image.
    #[error(
        "{device} holds {device_size} bytes but the image is {image_size} bytes: use a card of at least {image_mib} MiB"
    )]
    TooSmall {
        /// The device.
        device: PathBuf,
        /// Its size.
        device_size: u64,
        /// The image size.
        image_size: u64,
        /// The image size in MiB, rounded up.
        image_mib: u64,
    },
    /// The target is neither a block device nor a regular file.
    #[error("{0} is neither a block device nor a regular file")]
    NotATarget(PathBuf),
    /// A path under /dev that is no block device (or none at all): no card there.
    #[error(
        "{0} is not a block device (no card is there): plug the card in and check its name with `imagegen flash IMAGE` (which lists the cards) or `lsblk`"
    )]
    NoSuchDevice(PathBuf),
    /// A file target without `--to-file`.
    #[error(
        "{0} is not a block device: to write the image into a file, add --to-file; to write a card, give its device (e.g. /dev/sdb)"
    )]
    FileWithoutFlag(PathBuf),
    /// `--to-file` with a block device.
    #[error("{0} is a block device, but --to-file was given: drop --to-file to flash the card")]
    DeviceWithFileFlag(PathBuf),
    /// The target is the image (or its bmap) itself.
    #[error("{target} is {what} itself: give another target")]
    SameAsSource {
        /// The target.
        target: PathBuf,
        /// "the image" / "the bmap".
        what: &'static str,
    },
    /// The kernel refused exclusive access.
    #[error("{device} is busy (held by another program or mounted): close what uses it and retry")]
    Busy {
        /// The device.
        device: PathBuf,
    },
    /// The image does not match its bmap.
    #[error("{image}: {message}: rebuild the image, or give the .bmap that belongs to it")]
    ImageMismatch {
        /// The image.
        image: PathBuf,
        /// What differs.
        message: String,
    },
    /// The read-back differs from what was written.
    #[error(
        "verification failed on {device}: blocks {first}-{last} read back differently than written: the card may be faulty or counterfeit; try another card"
    )]
    VerifyFailed {
        /// The device.
        device: PathBuf,
        /// First block of the range.
        first: u64,
        /// Last block.
        last: u64,
    },
    /// The bmap is unusable.
    #[error(transparent)]
    Bmap(#[from] crate::ImageError),
    /// The user said no.
    #[error("not flashed: cancelled")]
    Cancelled,
    /// I/O on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A card that fails or is busy is the device's; a refusal is the user's to act on.
impl bootstrap::exit::Classify for FlashError {
    fn exit_class(&self) -> bootstrap::exit::ExitClass {
        use bootstrap::exit::ExitClass;
        match self {
            FlashError::Io { .. } | FlashError::Busy { .. } | FlashError::VerifyFailed { .. } => {
                ExitClass::Device
            }
            _ => ExitClass::Usage,
        }
    }
}

fn ioe(path: &Path) -> impl FnOnce(std::io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlashReport {
    /// Bytes written (and read back).
    pub bytes_written: u64,
    /// Ranges written.
    pub ranges: usize,
    /// Image size.
    pub image_size: u64,
}

/// Reads the mapped ranges of `image` and checks them against `bmap` (size and every range's
/// sha256), writing nothing: what a dry run can promise about the write.
pub fn check_image_matches(image: &Path, bmap: &Bmap) -> Result<(), FlashError> {
    let mut f = File::open(image).map_err(ioe(image))?;
    let len = f.seek(SeekFrom::End(0)).map_err(ioe(image))?;
    if len != bmap.image_size {
        return Err(FlashError::ImageMismatch {
            image: image.to_owned(),
            message: format!("it is {len} bytes but its bmap says {}", bmap.image_size),
        });
    }
    let mut buf = vec![0u8; 4 << 20];
    for r in &bmap.ranges {
        let (off, len) = r.span(bmap.block_size, bmap.image_size);
        if hash_span(&mut f, off, len, &mut buf).map_err(ioe(image))? != r.sha256 {
            return Err(FlashError::ImageMismatch {
                image: image.to_owned(),
                message: format!(
                    "blocks {}-{} do not match the checksum in the bmap",
                    r.first, r.last
                ),
            });
        }
    }
    Ok(())
}

/// Copies the mapped ranges of `image` to `target` (checking each range against the bmap as it
/// is read), calls `sync` (flush to the medium and drop cached pages), then reads every range
/// back and compares its sha256. The first block (the partition table) is written last, so an
/// interrupted flash does not leave a card that looks bootable.
pub fn copy_verified<R, W>(
    image: &mut R,
    image_name: &Path,
    bmap: &Bmap,
    target: &mut W,
    target_name: &Path,
    progress: &dyn Progress,
    mut sync: impl FnMut(&mut W) -> std::io::Result<()>,
) -> Result<FlashReport, FlashError>
where
    R: Read + Seek,
    W: Read + Write + Seek,
{
    let img_len = image.seek(SeekFrom::End(0)).map_err(ioe(image_name))?;
    if img_len != bmap.image_size {
        return Err(FlashError::ImageMismatch {
            image: image_name.to_owned(),
            message: format!(
                "it is {img_len} bytes but its bmap says {}",
                bmap.image_size
            ),
        });
    }
    let total = bmap.mapped_bytes();
    let step = "write".to_string();
    progress.event(Event::StepStarted {
        step: step.clone(),
        total: Some(total),
    });
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let mut first_block: Option<Vec<u8>> = None;
    for r in &bmap.ranges {
        let (off, len) = r.span(bmap.block_size, bmap.image_size);
        let sha = hash_span(image, off, len, &mut buf).map_err(ioe(image_name))?;
        if sha != r.sha256 {
            return Err(FlashError::ImageMismatch {
                image: image_name.to_owned(),
                message: format!(
                    "blocks {}-{} do not match the checksum in the bmap",
                    r.first, r.last
                ),
            });
        }
        image.seek(SeekFrom::Start(off)).map_err(ioe(image_name))?;
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let n = (buf.len() as u64).min(end - pos) as usize;
            image.read_exact(&mut buf[..n]).map_err(ioe(image_name))?;
            let mut chunk = &buf[..n];
            let mut at = pos;
            if at == 0 {
                let head = chunk.len().min(bmap.block_size as usize);
                first_block = Some(chunk[..head].to_vec());
                chunk = &chunk[head..];
                at = head as u64;
            }
            if !chunk.is_empty() {
                target.seek(SeekFrom::Start(at)).map_err(ioe(target_name))?;
                target.write_all(chunk).map_err(ioe(target_name))?;
            }
            pos += n as u64;
            done += n as u64;
            progress.event(Event::Bytes {
                step: step.clone(),
                done,
            });
        }
    }
    if let Some(head) = first_block {
        target.seek(SeekFrom::Start(0)).map_err(ioe(target_name))?;
        target.write_all(&head).map_err(ioe(target_name))?;
    }
    target.flush().map_err(ioe(target_name))?;
    sync(target).map_err(ioe(target_name))?;
    progress.event(Event::StepFinished {
        step: step.clone(),
        detail: format!("{} MiB", total >> 20),
    });
    let vstep = "verify".to_string();
    progress.event(Event::StepStarted {
        step: vstep.clone(),
        total: Some(total),
    });
    let mut checked = 0u64;
    for r in &bmap.ranges {
        let (off, len) = r.span(bmap.block_size, bmap.image_size);
        let sha = hash_span(target, off, len, &mut buf).map_err(ioe(target_name))?;
        if sha != r.sha256 {
            return Err(FlashError::VerifyFailed {
                device: target_name.to_owned(),
                first: r.first,
                last: r.last,
            });
        }
        checked += len;
        progress.event(Event::Bytes {
            step: vstep.clone(),
            done: checked,
        });
    }
    progress.event(Event::StepFinished {
        step: vstep,
        detail: "checksums match".into(),
    });
    Ok(FlashReport {
        bytes_written: total,
        ranges: bmap.ranges.len(),
        image_size: bmap.image_size,
    })
}

/// A checked target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    /// The path.
    pub path: PathBuf,
    /// Block device (else a regular file, created or truncated).
    pub block_device: bool,
    /// Its size (block devices).
    pub size: u64,
    /// Kernel name (`sdb`) for block devices.
    pub kernel_name: String,
    /// Model/vendor from sysfs, when known.
    pub model: String,
}

/// sysfs directory of a block device number.
fn sysfs_of(major: u64, minor: u64) -> Option<PathBuf> {
    std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

fn dev_numbers(rdev: u64) -> (u64, u64) {
    (libc::major(rdev) as u64, libc::minor(rdev) as u64)
}

/// Physical disks (sysfs paths) under a block device: itself if a whole disk, its parent if a
/// partition, and the disks under device-mapper/md devices (their `slaves`).
fn disks_under(sys: &Path, depth: u32) -> Vec<PathBuf> {
    if depth > 8 {
        return vec![];
    }
    let mut out = Vec::new();
    let base = if sys.join("partition").exists() {
        sys.parent()
            .map(|p| p.to_owned())
            .unwrap_or_else(|| sys.to_owned())
    } else {
        sys.to_owned()
    };
    let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        out.push(base);
    } else {
        for s in slaves {
            out.extend(disks_under(&s, depth + 1));
        }
    }
    out
}

struct Mount {
    sys: PathBuf,
    point: String,
    source: String,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>()) else {
            continue;
        };
        let source = f
            .iter()
            .position(|x| *x == "-")
            .and_then(|i| f.get(i + 2))
            .unwrap_or(&"")
            .to_string();
        let mut sys = if ma != 0 { sysfs_of(ma, mi) } else { None };
        // Bind mounts of loop files etc. report the real device; btrfs reports major 0: use the source path.
        if sys.is_none()
            && source.starts_with("/dev/")
            && let Ok(m) = std::fs::metadata(&source)
            && m.file_type().is_block_device()
        {
            let (a, b) = dev_numbers(m.rdev());
            sys = sysfs_of(a, b);
        }
        if let Some(sys) = sys {
            out.push(Mount {
                sys,
                point: f[4].replace("\\040", " "),
                source,
            });
        }
    }
    out
}

/// The disks (sysfs paths) holding the running system: those under `/`, `/usr`, `/boot`, `/var`
/// and `/home` mounts, and swap.
pub fn system_disks() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts() {
        if [
            "/",
            "/usr",
            "/boot",
            "/boot/efi",
            "/boot/firmware",
            "/var",
            "/home",
        ]
        .contains(&m.point.as_str())
        {
            out.extend(disks_under(&m.sys, 0));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A disk `imagegen flash` would accept: removable (an SD card reader, a USB stick) and not
/// holding the running system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// `/dev/NAME`.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Vendor and model from sysfs, when known.
    pub model: String,
    /// How it is attached: `usb`, `mmc` (a built-in card slot) or `removable`.
    pub bus: String,
    /// Where its partitions (or itself) are mounted: flash refuses it until they are unmounted.
    pub mounted: Vec<String>,
}

/// The removable disks of this machine, as [`removable_disks_in`] finds them under `/sys/block`.
pub fn removable_disks() -> Vec<Candidate> {
    let mounts: Vec<(PathBuf, String)> = mounts().into_iter().map(|m| (m.sys, m.point)).collect();
    removable_disks_in(Path::new("/sys/block"), &system_disks(), &mounts)
}

/// The disks under `sys_block` (a `/sys/block`) that are removable — the kernel says so, or they
/// sit on USB, or they are a built-in MMC card slot — not empty, not virtual (loop, ram, zram,
/// device-mapper, md, optical, network) and not one of `system` (sysfs paths, as
/// [`system_disks`] gives them). `mounts` pairs a mounted device's sysfs path with its mount point.
pub fn removable_disks_in(
    sys_block: &Path,
    system: &[PathBuf],
    mounts: &[(PathBuf, String)],
) -> Vec<Candidate> {
    const VIRTUAL: &[&str] = &["loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd"];
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if VIRTUAL.iter().any(|v| name.starts_with(v)) {
            continue;
        }
        let Ok(sys) = std::fs::canonicalize(e.path()) else {
            continue;
        };
        if system.contains(&sys) {
            continue;
        }
        let read = |rel: &str| {
            std::fs::read_to_string(sys.join(rel))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let on_usb = sys
            .components()
            .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with("usb")));
        // mmcblkNbootM and mmcblkNrpmb are an eMMC's hardware partitions, never a card.
        let mmc_slot =
            name.starts_with("mmcblk") && !name.contains("boot") && !name.contains("rpmb");
        let bus = if on_usb {
            "usb"
        } else if mmc_slot {
            "mmc"
        } else if read("removable") == "1" {
            "removable"
        } else {
            continue;
        };
        let size = read("size").parse::<u64>().unwrap_or(0) * 512;
        if size == 0 {
            // A card reader with no card in it.
            continue;
        }
        let model = format!("{} {}", read("device/vendor"), read("device/model"))
            .trim()
            .to_owned();
        let mounted = mounts
            .iter()
            .filter(|(m, _)| *m == sys || m.parent() == Some(sys.as_path()))
            .map(|(_, point)| point.clone())
            .collect();
        found.push(Candidate {
            path: Path::new("/dev").join(&name),
            size,
            model,
            bus: bus.to_owned(),
            mounted,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// What the user asked to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A card: the path must be a whole-disk block device.
    Device,
    /// A file (`--to-file`): created or overwritten, never a block device.
    File,
}

/// The files a flash reads from: a target may be none of them.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its bmap.
    pub bmap: &'a Path,
}

/// Checks that `device` may be overwritten with an image of `image_size` bytes. A path under
/// `/dev` must be an existing block device (a missing card must not turn into a file in /dev's
/// RAM); anything else is a file only with [`TargetKind::File`]; the target is never a source.
pub fn preflight(
    device: &Path,
    kind: TargetKind,
    sources: Sources<'_>,
    image_size: u64,
) -> Result<TargetInfo, FlashError> {
    let meta = match std::fs::metadata(device) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ioe(device)(e)),
    };
    if let Some(m) = &meta {
        for (path, what) in [(sources.image, "the image"), (sources.bmap, "the bmap")] {
            if let Ok(src) = std::fs::metadata(path)
                && (src.dev(), src.ino()) == (m.dev(), m.ino())
            {
                return Err(FlashError::SameAsSource {
                    target: device.to_owned(),
                    what,
                });
            }
        }
    }
    let is_block = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if device.starts_with("/dev") && !is_block {
        return Err(FlashError::NoSuchDevice(device.to_owned()));
    }
    match (kind, is_block) {
        (TargetKind::File, true) => return Err(FlashError::DeviceWithFileFlag(device.to_owned())),
        (TargetKind::Device, false) => return Err(FlashError::FileWithoutFlag(device.to_owned())),
        (TargetKind::File, false) => {
            if let Some(m) = &meta
                && !m.is_file()
            {
                return Err(FlashError::NotATarget(device.to_owned()));
            }
            return Ok(TargetInfo {
                path: device.to_owned(),
                block_device: false,
                size: meta.map(|m| m.len()).unwrap_or(0),
                kernel_name: String::new(),
                model: String::new(),
            });
        }
        (TargetKind::Device, true) => {}
    }
    let meta = meta.expect("a block device exists");
    if !meta.file_type().is_block_device() {
        return Err(FlashError::NotATarget(device.to_owned()));
    }
    let (ma, mi) = dev_numbers(meta.rdev());
    let sys = sysfs_of(ma, mi).ok_or_else(|| FlashError::NotATarget(device.to_owned()))?;
    let kernel_name = sys.file_name().unwrap().to_string_lossy().into_owned();
    if sys.join("partition").exists() {
        return Err(FlashError::IsPartition {
            device: device.to_owned(),
            parent: sys
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
    }
    // The running system first: its disk is mounted too, and this message says more.
    let all_mounts = mounts();
    for m in &all_mounts {
        if [
            "/",
            "/usr",
            "/boot",
            "/boot/efi",
            "/boot/firmware",
            "/var",
            "/home",
        ]
        .contains(&m.point.as_str())
            && disks_under(&m.sys, 0).contains(&sys)
        {
            return Err(FlashError::SystemDisk {
                device: device.to_owned(),
                what: format!("{} ({})", m.point, m.source),
            });
        }
    }
    for m in &all_mounts {
        if m.sys == sys {
            return Err(FlashError::Mounted {
                device: device.to_owned(),
                mountpoint: m.point.clone(),
            });
        }
        if m.sys.parent() == Some(sys.as_path()) {
            return Err(FlashError::PartitionInUse {
                device: device.to_owned(),
                partition: format!("/dev/{}", m.sys.file_name().unwrap().to_string_lossy()),
                how: format!("mounted on {}", m.point),
            });
        }
    }
    // Holders (device-mapper, md, LVM) of the disk or one of its partitions.
    let mut nodes = vec![sys.clone()];
    if let Ok(rd) = std::fs::read_dir(&sys) {
        nodes.extend(
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("partition").exists()),
        );
    }
    for n in &nodes {
        if let Ok(rd) = std::fs::read_dir(n.join("holders"))
            && let Some(h) = rd.filter_map(|e| e.ok()).next()
        {
            return Err(FlashError::PartitionInUse {
                device: device.to_owned(),
                partition: format!("/dev/{}", n.file_name().unwrap().to_string_lossy()),
                how: format!("in use by {}", h.file_name().to_string_lossy()),
            });
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(p) = line.split_whitespace().next()
            && let Ok(m) = std::fs::metadata(p)
            && m.file_type().is_block_device()
        {
            let (a, b) = dev_numbers(m.rdev());
            if let Some(s) = sysfs_of(a, b)
                && (s == sys || s.parent() == Some(sys.as_path()))
            {
                return Err(FlashError::PartitionInUse {
                    device: device.to_owned(),
                    partition: p.to_owned(),
                    how: "used as swap".into(),
                });
            }
        }
    }
    let size = std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 512;
    if size < image_size {
        return Err(FlashError::TooSmall {
            device: device.to_owned(),
            device_size: size,
            image_size,
            image_mib: image_size.div_ceil(1 << 20),
        });
    }
    let read = |f: &str| {
        std::fs::read_to_string(sys.join("device").join(f))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let model = format!("{} {}", read("vendor"), read("model"))
        .trim()
        .to_owned();
    Ok(TargetInfo {
        path: device.to_owned(),
        block_device: true,
        size,
        kernel_name,
        model,
    })
}

/// Flashes `image` (with `bmap`) to a checked target.
pub fn flash(
    image: &Path,
    bmap: &Bmap,
    target: &TargetInfo,
    progress: &dyn Progress,
) -> Result<FlashReport, FlashError> {
    let mut img = File::open(image).map_err(ioe(image))?;
    let mut out = if target.block_device {
        File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(&target.path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    FlashError::Busy {
                        device: target.path.clone(),
                    }
                } else {
                    ioe(&target.path)(e)
                }
            })?
    } else {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target.path)
            .map_err(ioe(&target.path))?;
        f.set_len(bmap.image_size).map_err(ioe(&target.path))?;
        f
    };
    copy_verified(
        &mut img,
        image,
        bmap,
        &mut out,
        &target.path,
        progress,
        |f: &mut File| {
            f.sync_all()?;
            // Drop the cached pages so the read-back comes from the medium, not from memory.
            // SAFETY: fadvise on a descriptor we own.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /sys/block of symlinks into a /sys/devices tree, as the kernel lays it out.
    fn fake_disk(root: &Path, bus_path: &str, name: &str, size_sectors: u64, removable: bool) {
        let dev = root.join("devices").join(bus_path).join("block").join(name);
        std::fs::create_dir_all(dev.join("device")).unwrap();
        std::fs::write(dev.join("size"), format!("{size_sectors}\n")).unwrap();
        std::fs::write(dev.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        std::fs::write(dev.join("device/vendor"), "Generic \n").unwrap();
        std::fs::write(dev.join("device/model"), "SD/MMC Reader\n").unwrap();
        std::fs::create_dir_all(root.join("block")).unwrap();
        std::os::unix::fs::symlink(&dev, root.join("block").join(name)).unwrap();
    }

    #[test]
    fn only_removable_disks_off_the_system_are_offered() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // The system disk (virtio), a second internal SATA disk, a USB card reader with a card,
        // one without, an SD slot, an eMMC boot partition, and virtual devices.
        fake_disk(root, "pci0000:00/virtio2", "vda", 500 << 21, false);
        fake_disk(root, "pci0000:00/ata1/host0", "sda", 1 << 30, false);
        fake_disk(
            root,
            "pci0000:00/usb1/1-2/1-2:1.0/host6",
            "sdb",
            62_333_952,
            true,
        );
        fake_disk(root, "pci0000:00/usb1/1-3/1-3:1.0/host7", "sdc", 0, true);
        fake_disk(
            root,
            "platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa",
            "mmcblk0",
            31_116_288,
            false,
        );
        fake_disk(
            root,
            "platform/emmc/mmc_host/mmc1/mmc1:0001",
            "mmcblk1boot0",
            8192,
            false,
        );
        fake_disk(root, "virtual", "loop0", 4096, false);
        fake_disk(root, "virtual", "zram0", 4096, false);
        let sys = |p: &str| std::fs::canonicalize(root.join("block").join(p)).unwrap();
        let system = vec![sys("vda")];
        let mounts = vec![(sys("sdb").join("sdb1"), "/media/me/bootfs".to_owned())];
        let found = removable_disks_in(&root.join("block"), &system, &mounts);
        let names: Vec<_> = found.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(names, ["/dev/mmcblk0", "/dev/sdb"]);
        let sdb = &found[1];
        assert_eq!(sdb.bus, "usb");
        assert_eq!(sdb.size, 62_333_952 * 512);
        assert_eq!(sdb.model, "Generic SD/MMC Reader");
        assert_eq!(sdb.mounted, ["/media/me/bootfs"]);
        assert_eq!(found[0].bus, "mmc");
        assert!(found[0].mounted.is_empty());
        // A removable disk that holds the system is still never offered.
        let usb_root = removable_disks_in(&root.join("block"), &[sys("sdb")], &[]);
        assert!(usb_root.iter().all(|c| c.path != Path::new("/dev/sdb")));
    }
    use std::io::Cursor;

    fn image_and_bmap(dir: &Path) -> (PathBuf, Bmap) {
        let p = dir.join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        for (off, b) in [(0u64, 1u8), (200_000, 2), (900_000, 3)] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&vec![b; 5000]).unwrap();
        }
        drop(f);
        let bmap = Bmap::from_image(&p).unwrap();
        (p, bmap)
    }

    #[test]
    fn copies_only_mapped_ranges_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (p, bmap) = image_and_bmap(dir.path());
        // A target full of 0xee: unmapped blocks stay as they were.
        let mut target = Cursor::new(vec![0xeeu8; 1 << 20]);
        let mut img = File::open(&p).unwrap();
        let r = copy_verified(
            &mut img,
            &p,
            &bmap,
            &mut target,
            Path::new("mem"),
            &crate::tests_support::Quiet,
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(r.bytes_written, bmap.mapped_bytes());
        let t = target.into_inner();
        let src = std::fs::read(&p).unwrap();
        for range in &bmap.ranges {
            let (o, l) = range.span(bmap.block_size, bmap.image_size);
            assert_eq!(
                t[o as usize..(o + l) as usize],
                src[o as usize..(o + l) as usize]
            );
        }
        assert_eq!(t[500_000], 0xee, "an unmapped block was not written");
    }

    /// A card that silently drops one byte: the read-back must catch it.
    struct Faulty(Cursor<Vec<u8>>);
    impl Read for Faulty {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Seek for Faulty {
        fn seek(&mut self, s: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(s)
        }
    }
    impl Write for Faulty {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let at = self.0.position();
            let n = self.0.write(b)?;
            if (at..at + n as u64).contains(&200_100) {
                self.0.get_mut()[200_100] ^= 0xff;
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn read_back_mismatch_is_reported_with_the_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (p, bmap) = image_and_bmap(dir.path());
        let mut target = Faulty(Cursor::new(vec![0u8; 1 << 20]));
        let mut img = File::open(&p).unwrap();
        let e = copy_verified(
            &mut img,
            &p,
            &bmap,
            &mut target,
            Path::new("card"),
            &crate::tests_support::Quiet,
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(
            matches!(e, FlashError::VerifyFailed { first: 48, .. }),
            "{e}"
        );
    }

    #[test]
    fn bmap_round_trips_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bmap) = image_and_bmap(dir.path());
        let xml = bmap.to_xml();
        assert_eq!(Bmap::parse(&xml, Path::new("b")).unwrap(), bmap);
        let edited = xml.replacen("<Range", "<Range x=\"1\"", 1);
        let e = Bmap::parse(&edited, Path::new("b")).unwrap_err();
        assert!(e.to_string().contains("BmapFileChecksum"), "{e}");
    }
}
