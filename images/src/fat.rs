//! The FAT32 boot partition, formatted and filled with the `fatfs` crate straight inside the
//! image file (no mkfs.vfat, no mtools, no mount). Without the `chrono` feature fatfs stamps
//! every file 1980-01-01, and the volume id is fixed by us, so the bytes are reproducible.

use crate::error::ImageError;
use crate::window::Window;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Volume label of the boot partition.
pub const BOOT_LABEL: &str = "BOOT";

fn fat_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::WriteZero {
            ImageError::BadImage {
                path: path.to_owned(),
                message: "the boot files do not fit the boot partition: raise partitions.boot_mib in the board profile".into(),
            }
        } else {
            crate::error::io(path)(e)
        }
    }
}

/// Formats `len` bytes at `offset` of `image` as FAT32 and writes `files` (path with `/`, bytes),
/// creating directories as needed, in the order given.
pub fn write_boot_partition(
    image: &mut File,
    image_path: &Path,
    offset: u64,
    len: u64,
    volume_id: u32,
    files: &[(String, Vec<u8>)],
) -> Result<(), ImageError> {
    let err = fat_err(image_path);
    let mut win = Window::new(&mut *image, offset, len);
    let mut label = [b' '; 11];
    label[..BOOT_LABEL.len()].copy_from_slice(BOOT_LABEL.as_bytes());
    fatfs::format_volume(
        &mut win,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            // 2 KiB clusters: 512-byte ones make a slow volume; 4 KiB ones leave a 256 MiB
            // partition under FAT32's minimum cluster count.
            .bytes_per_cluster(2048)
            .volume_id(volume_id)
            .volume_label(label),
    )
    .map_err(&err)?;
    let fs = fatfs::FileSystem::new(win, fatfs::FsOptions::new().update_accessed_date(false))
        .map_err(&err)?;
    if fs.fat_type() != fatfs::FatType::Fat32 {
        return Err(ImageError::BadImage {
            path: image_path.to_owned(),
            message: format!(
                "the boot partition came out as {:?}, not FAT32: raise partitions.boot_mib in the board profile",
                fs.fat_type()
            ),
        });
    }
    {
        let root = fs.root_dir();
        for (path, data) in files {
            let mut dir = root.clone();
            let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let name = parts.pop().expect("file name");
            for p in parts {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(p).map_err(&err)?,
                };
            }
            let mut f = dir.create_file(name).map_err(&err)?;
            f.truncate().map_err(&err)?;
            f.write_all(data).map_err(&err)?;
            f.flush().map_err(&err)?;
        }
    }
    let free = fs.stats().map_err(&err)?.free_clusters();
    fs.unmount().map_err(&err)?;
    write_fsinfo_free_count(image, offset, free).map_err(&err)?;
    Ok(())
}

/// fatfs 0.3 leaves the FSInfo free-cluster count "unknown"; `fsck.vfat` then reports it. Fill it
/// in (primary and backup FSInfo sectors), as mkfs.vfat does.
fn write_fsinfo_free_count(image: &mut File, offset: u64, free: u32) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bpb = [0u8; 64];
    image.seek(SeekFrom::Start(offset))?;
    image.read_exact(&mut bpb)?;
    let fsinfo = u16::from_le_bytes([bpb[48], bpb[49]]) as u64;
    let backup = u16::from_le_bytes([bpb[50], bpb[51]]) as u64;
    let mut sectors = vec![fsinfo];
    if backup != 0 {
        sectors.push(backup + fsinfo);
    }
    for sector in sectors {
        let at = offset + sector * 512;
        let mut sig = [0u8; 4];
        image.seek(SeekFrom::Start(at))?;
        image.read_exact(&mut sig)?;
        if &sig == b"RRaA" {
            image.seek(SeekFrom::Start(at + 0x1e8))?;
            image.write_all(&free.to_le_bytes())?;
        }
    }
    image.flush()
}

/// A file listed on the boot partition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BootFile {
    /// Path with `/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A file asked for by name, and its contents when it exists.
pub type NamedContents = (String, Option<Vec<u8>>);

/// Lists the files of a FAT partition and reads the ones named in `want` (path → contents).
pub fn read_boot_partition(
    image: &mut File,
    image_path: &Path,
    offset: u64,
    len: u64,
    want: &[&str],
) -> Result<(Vec<BootFile>, Vec<NamedContents>), ImageError> {
    use std::io::Read;
    let bad = |e: std::io::Error| ImageError::BadImage {
        path: image_path.to_owned(),
        message: format!("the boot partition is not a readable FAT filesystem: {e}"),
    };
    let win = Window::new(&mut *image, offset, len);
    let fs = fatfs::FileSystem::new(win, fatfs::FsOptions::new()).map_err(bad)?;
    let mut listing = Vec::new();
    let mut stack = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = stack.pop() {
        for e in dir.iter() {
            let e = e.map_err(bad)?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if e.is_dir() {
                stack.push((format!("{path}/"), e.to_dir()));
            } else {
                listing.push(BootFile {
                    path,
                    size: e.len(),
                });
            }
        }
    }
    listing.sort_by(|a, b| a.path.cmp(&b.path));
    let mut read = Vec::new();
    for w in want {
        let data = match fs.root_dir().open_file(w) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(bad)?;
                Some(buf)
            }
            Err(_) => None,
        };
        read.push((w.to_string(), data));
    }
    Ok((listing, read))
}
