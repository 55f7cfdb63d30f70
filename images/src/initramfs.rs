//! The initramfs imagegen builds for each image, made for this root filesystem: Debian's kernel
//! has the SD controller, ext4 and virtio drivers as modules, so something must load them before
//! the root can be mounted. This one holds Debian's static busybox, exactly those modules (with
//! their dependencies, read from each module's `.modinfo`), and an `/init` that loads them, finds
//! the root partition by the disk signature in `root=PARTUUID=`, grows it to the end of the card
//! on first boot, and switches to it. Written as a `newc` cpio archive in Rust (device nodes need
//! no root), gzip-compressed with a fixed header, so it is byte-for-byte reproducible.

use crate::error::{ImageError, io};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `/init` script.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// A `newc` cpio archive being written.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            if name == "TRAILER!!!" { 0 } else { self.ino },
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name_len,
            0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.written += b.len() as u64;
        self.out.write_all(b)
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }
    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100000 | perm, (0, 0), data)
    }
    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, 0o120777, (0, 0), target.as_bytes())
    }
    /// A character device node.
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.entry(name, 0o020000 | perm, (major, minor), &[])
    }
    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// Kernel modules by normalised name (`-` as `_`) → path of the `.ko` under `modules_dir`.
fn index_modules(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut map = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let p = e.map_err(io(&dir))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name.strip_suffix(".ko")
            {
                map.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    Ok(map)
}

/// The `.modinfo` strings of an ELF64 little-endian kernel module.
pub fn modinfo(ko: &[u8]) -> Option<Vec<String>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(ko.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(ko.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(ko.get(o..o + 8)?.try_into().ok()?));
    if ko.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(sh(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let name_off = strtab + u32_at(sh(i))? as usize;
        let name_end = name_off + ko.get(name_off..)?.iter().position(|b| *b == 0)?;
        if &ko[name_off..name_end] == b".modinfo" {
            let off = u64_at(sh(i) + 0x18)? as usize;
            let size = u64_at(sh(i) + 0x20)? as usize;
            let data = ko.get(off..off + size)?;
            return Some(
                data.split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            );
        }
    }
    None
}

/// The modules to load, dependencies first, for the `wanted` names; modules built into the
/// kernel (`modules.builtin`) are left out. Returns (name, path) in load order.
pub fn resolve_modules(
    modules_dir: &Path,
    wanted: &[String],
) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let index = index_modules(modules_dir)?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin: BTreeSet<String> = std::fs::read_to_string(&builtin_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|n| n.trim_end_matches(".ko").replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        modules_dir: &Path,
    ) -> Result<(), ImageError> {
        let name = name.replace('-', "_");
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            return Ok(());
        }
        let path = index.get(&name).ok_or_else(|| ImageError::AssetMissing {
            what: format!("kernel module {name} in {}", modules_dir.display()),
            help: "the board profile's initramfs_modules names a module this kernel does not have: fix the profile or use another linux-image-arm64".into(),
        })?;
        let data = std::fs::read(path).map_err(io(path))?;
        let info = modinfo(&data).unwrap_or_default();
        for dep in info
            .iter()
            .filter_map(|s| s.strip_prefix("depends="))
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
        {
            visit(dep, index, builtin, seen, order, modules_dir)?;
        }
        order.push((name, path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &builtin, &mut seen, &mut order, modules_dir)?;
    }
    Ok(order)
}

/// Builds the gzip-compressed initramfs: busybox, the resolved modules, `/init`.
pub fn build(busybox: &Path, modules_dir: &Path, wanted: &[String]) -> Result<Vec<u8>, ImageError> {
    let modules = resolve_modules(modules_dir, wanted)?;
    let bb = std::fs::read(busybox).map_err(io(busybox))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::new(6));
    let mut c = Cpio::new(gz);
    let w = |e: std::io::Error| ImageError::Io {
        path: "initramfs".into(),
        source: e,
    };
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "root",
        "run",
        "tmp",
        "lib",
        "lib/modules",
    ] {
        c.dir(d).map_err(w)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1).map_err(w)?;
    c.char_dev("dev/null", 0o666, 1, 3).map_err(w)?;
    c.char_dev("dev/kmsg", 0o644, 1, 11).map_err(w)?;
    c.file("bin/busybox", 0o755, &bb).map_err(w)?;
    for applet in [
        "sh",
        "mount",
        "umount",
        "insmod",
        "switch_root",
        "sleep",
        "cat",
        "od",
        "tr",
        "dd",
        "printf",
        "blockdev",
        "echo",
        "ls",
        "mkdir",
        "sync",
        "grep",
        "sed",
    ] {
        c.symlink(&format!("bin/{applet}"), "busybox").map_err(w)?;
    }
    let mut load_order = String::new();
    for (name, path) in &modules {
        let data = std::fs::read(path).map_err(io(path))?;
        c.file(&format!("lib/modules/{name}.ko"), 0o644, &data)
            .map_err(w)?;
        load_order.push_str(name);
        load_order.push('\n');
    }
    c.file("lib/modules/load-order", 0o644, load_order.as_bytes())
        .map_err(w)?;
    c.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(w)?;
    let gz = c.finish().map_err(w)?;
    gz.finish().map_err(w)
}
