//! `imagegen inspect`: what an image holds, read straight from the file (the MBR with mbrman,
//! the boot partition with fatfs, the root partition with `debugfs -R cat`).

use crate::error::{ImageError, io};
use crate::fat::BootFile;
use std::path::Path;

/// One MBR partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Partition {
    /// 1-based number.
    pub number: u8,
    /// MBR type byte.
    pub type_id: u8,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Bootable flag.
    pub bootable: bool,
    /// PARTUUID (`<disk signature>-<nn>`).
    pub partuuid: String,
}

/// What `inspect` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// Image size.
    pub size: u64,
    /// Disk signature, hex.
    pub disk_signature: String,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Files on the boot partition.
    pub boot_files: Vec<BootFile>,
    /// `config.txt`.
    pub config_txt: Option<String>,
    /// `cmdline.txt`.
    pub cmdline_txt: Option<String>,
    /// `/etc/armfleet/node.toml` from the root partition.
    pub node_toml: Option<String>,
    /// `/etc/hostname`.
    pub hostname: Option<String>,
    /// Whether a join token is baked in (its value is never shown).
    pub token: TokenState,
}

/// The join token's presence, redacted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// In the root filesystem at the configured token file.
    Baked,
    /// Dropped on the boot partition, waiting for first boot.
    OnBootPartition,
    /// None yet.
    Absent,
}

/// Reads `image`.
pub fn inspect(image: &Path) -> Result<Inspection, ImageError> {
    let mut f = std::fs::File::open(image).map_err(io(image))?;
    let size = f.metadata().map_err(io(image))?.len();
    let bad = |m: String| ImageError::BadImage {
        path: image.to_owned(),
        message: m,
    };
    let mbr = mbrman::MBR::read_from(&mut f, 512).map_err(|e| {
        bad(format!(
            "no readable MBR partition table ({e}): is this an imagegen image?"
        ))
    })?;
    let sig = u32::from_le_bytes(mbr.header.disk_signature);
    let mut partitions = Vec::new();
    for (i, p) in mbr.iter() {
        if p.is_used() {
            partitions.push(Partition {
                number: i as u8,
                type_id: p.sys,
                start: p.starting_lba as u64 * 512,
                size: p.sectors as u64 * 512,
                bootable: p.boot == mbrman::BOOT_ACTIVE,
                partuuid: format!("{sig:08x}-{i:02x}"),
            });
        }
    }
    let boot = partitions
        .iter()
        .find(|p| matches!(p.type_id, 0x0b | 0x0c | 0x0e | 0x06))
        .ok_or_else(|| bad("no FAT boot partition in the MBR".into()))?
        .clone();
    let root = partitions
        .iter()
        .find(|p| p.type_id == 0x83)
        .ok_or_else(|| bad("no Linux root partition in the MBR".into()))?
        .clone();
    if boot.start + boot.size > size || root.start + root.size > size {
        return Err(bad(
            "a partition ends beyond the end of the file: the image is truncated".into(),
        ));
    }
    let (boot_files, read) = crate::fat::read_boot_partition(
        &mut f,
        image,
        boot.start,
        boot.size,
        &[
            "config.txt",
            "cmdline.txt",
            bootstrap::layout::pi::TOKEN_DROP_NAME,
        ],
    )?;
    let text = |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let node_toml = crate::ext4::read_file(image, root.start, bootstrap::layout::worker::CONFIG)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let hostname = crate::ext4::read_file(image, root.start, "/etc/hostname")?
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let token_file = node_toml
        .as_deref()
        .and_then(|t| bootstrap::NodeConfig::from_toml_str(t, "node.toml").ok())
        .map(|c| c.server.token_file.to_string_lossy().into_owned())
        .unwrap_or_else(|| bootstrap::layout::worker::TOKEN_FILE.into());
    let token = if crate::ext4::read_file(image, root.start, &token_file)?.is_some() {
        TokenState::Baked
    } else if read[2].1.is_some() {
        TokenState::OnBootPartition
    } else {
        TokenState::Absent
    };
    Ok(Inspection {
        size,
        disk_signature: format!("{sig:08x}"),
        partitions,
        boot_files,
        config_txt: text(&read[0].1),
        cmdline_txt: text(&read[1].1),
        node_toml,
        hostname,
        token,
    })
}

impl Inspection {
    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "image: {} bytes, disk signature {}\npartitions:\n",
            self.size, self.disk_signature
        );
        for p in &self.partitions {
            s.push_str(&format!(
                "  {}: type 0x{:02x}{} start {} MiB, size {} MiB, PARTUUID={}\n",
                p.number,
                p.type_id,
                if p.bootable { " (boot)" } else { "" },
                p.start >> 20,
                p.size >> 20,
                p.partuuid
            ));
        }
        s.push_str("boot files:\n");
        for f in &self.boot_files {
            s.push_str(&format!("  {:<32} {:>10}\n", f.path, f.size));
        }
        let block = |name: &str, v: &Option<String>| match v {
            Some(t) => format!(
                "{name}:\n{}\n",
                t.lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            None => format!("{name}: (missing)\n"),
        };
        s.push_str(&block("config.txt", &self.config_txt));
        s.push_str(&block("cmdline.txt", &self.cmdline_txt));
        s.push_str(&format!(
            "hostname: {}\n",
            self.hostname.as_deref().unwrap_or("(missing)")
        ));
        s.push_str(&block(
            "node.toml (/etc/armfleet/node.toml)",
            &self.node_toml,
        ));
        s.push_str(match self.token {
            TokenState::Baked => "join token: baked in (redacted)\n",
            TokenState::OnBootPartition => "join token: dropped on the boot partition (redacted), moved in place at first boot\n",
            TokenState::Absent => "join token: none: copy it to the boot partition as `armfleet-token` after flashing\n",
        });
        s
    }
}
