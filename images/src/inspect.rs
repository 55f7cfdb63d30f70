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
    /// The router's part (VLANs, leases, policy, mirror), when the image is the router's.
    pub router: Option<RouterInspection>,
}

/// The router's `router.json`, with each mirror file checked in the image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouterInspection {
    /// What imagegen recorded.
    #[serde(flatten)]
    pub summary: crate::router::RouterSummary,
    /// Per mirror file: `ok` when the image holds it with the recorded sha256, else what is wrong.
    pub mirror_check: Vec<String>,
    /// The nftables ruleset as it is in the image.
    pub nftables: Option<String>,
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
    let router =
        match crate::ext4::read_file(image, root.start, bootstrap::layout::router::ROUTER_JSON)? {
            None => None,
            Some(raw) => {
                let summary: crate::router::RouterSummary =
                    serde_json::from_slice(&raw).map_err(|e| {
                        bad(format!(
                            "{} does not parse: {e}",
                            bootstrap::layout::router::ROUTER_JSON
                        ))
                    })?;
                let mut mirror_check = Vec::new();
                for f in &summary.mirror {
                    let path = format!("{}/{}", bootstrap::layout::router::MIRROR_DIR, f.name);
                    let state = match crate::ext4::read_file(image, root.start, &path)? {
                        None => "MISSING".to_string(),
                        Some(d) if bootstrap::digest::sha256_hex(&d) == f.sha256 => "ok".into(),
                        Some(d) => {
                            format!("DIFFERS (sha256 {})", bootstrap::digest::sha256_hex(&d))
                        }
                    };
                    mirror_check.push(format!("{}: {state}", f.name));
                }
                let nftables = crate::ext4::read_file(
                    image,
                    root.start,
                    bootstrap::layout::router::NFTABLES_CONF,
                )?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
                Some(RouterInspection {
                    summary,
                    mirror_check,
                    nftables,
                })
            }
        };
    Ok(Inspection {
        router,
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
        if let Some(r) = &self.router {
            let list = |s: &mut String, name: &str, items: &[String]| {
                s.push_str(&format!("{name}:\n"));
                if items.is_empty() {
                    s.push_str("  (none)\n");
                }
                for i in items {
                    s.push_str(&format!("  {i}\n"));
                }
            };
            s.push_str(&format!("router (from {}):\n", r.summary.topology));
            list(&mut s, "  VLANs", &r.summary.vlans);
            list(&mut s, "  uplinks", &r.summary.uplinks);
            list(&mut s, "  fixed leases", &r.summary.leases);
            list(&mut s, "  firewall policy", &r.summary.policy);
            s.push_str(&format!(
                "  mirror: {}\n",
                r.summary.mirror_url.as_deref().unwrap_or("none")
            ));
            for (f, check) in r.summary.mirror.iter().zip(&r.mirror_check) {
                s.push_str(&format!(
                    "    {}  {} bytes  sha256 {}  [{}]\n",
                    f.name,
                    f.size,
                    f.sha256,
                    check.rsplit(": ").next().unwrap_or("")
                ));
            }
            s.push_str(&format!("  k3s server CA: {}\n", r.summary.server_ca));
            list(&mut s, "  nodes' own join tokens", &r.summary.node_tokens);
            s.push_str(&block(
                "  nftables ruleset (/etc/nftables.conf)",
                &r.nftables,
            ));
        }
        s
    }
}
