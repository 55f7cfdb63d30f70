//! The ext4 root partition, made without root and without mounting: the node rootfs tarball is
//! unpacked into a staging directory (as any user: ownership, modes and device nodes cannot be
//! set there), `mke2fs -d` copies the tree straight into the partition window of the image
//! (`-E offset=`), and `debugfs -w` then sets every inode's owner, mode and times from what the
//! tarball says and creates the device nodes. e2fsprogs 1.47.0 (bookworm) cannot read a tar
//! itself. UUID, hash seed, mke2fs settings and all times are fixed, so the bytes reproduce.

use crate::error::{ImageError, io};
use crate::util::run;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Owner, permissions and time of one inode, as the rootfs says they must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Modification time (also used for access, change and creation times).
    pub mtime: u64,
}

#[derive(Debug, Clone)]
struct Device {
    path: String,
    meta: Meta,
    kind: char,
    major: u32,
    minor: u32,
}

/// A root filesystem tree staged in a directory, with the metadata the directory cannot hold.
pub struct Tree {
    staging: tempfile::TempDir,
    meta: BTreeMap<String, Meta>,
    devices: Vec<Device>,
    data_bytes: u64,
    epoch: u64,
}

fn rootfs_err(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Rootfs {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Tree {
    /// An empty tree in a fresh directory under `tmp_parent`; `epoch` stamps files added later.
    pub fn new(tmp_parent: &Path, epoch: u64) -> Result<Tree, ImageError> {
        let staging = tempfile::Builder::new()
            .prefix(".imagegen-rootfs-")
            .tempdir_in(tmp_parent)
            .map_err(io(tmp_parent))?;
        Ok(Tree {
            staging,
            meta: BTreeMap::new(),
            devices: Vec::new(),
            data_bytes: 0,
            epoch,
        })
    }

    /// The staging directory.
    pub fn root(&self) -> &Path {
        self.staging.path()
    }

    /// Bytes of file data staged (for the size estimate).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Number of inodes staged.
    pub fn inodes(&self) -> u64 {
        self.meta.len() as u64 + self.devices.len() as u64
    }

    /// Resolves `path` (relative to the root, `/`-separated) following symlinks of its parent
    /// directories *inside* the root (a Debian rootfs has `lib -> usr/lib`): the real location
    /// of the entry, never outside the staging directory.
    pub fn resolve(&self, path: &str) -> Result<String, ImageError> {
        let mut parts: Vec<String> = Vec::new();
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(String::from)
            .rev()
            .collect();
        let mut hops = 0;
        while let Some(p) = todo.pop() {
            if p == ".." {
                parts.pop();
                continue;
            }
            if todo.is_empty() {
                parts.push(p);
                break;
            }
            let here = self.root().join(parts.join("/")).join(&p);
            match std::fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(rootfs_err(
                            Path::new(path),
                            "too many levels of symbolic links",
                        ));
                    }
                    let target = std::fs::read_link(&here).map_err(io(&here))?;
                    let t = target.to_string_lossy().into_owned();
                    if t.starts_with('/') {
                        parts.clear();
                    }
                    for c in t.split('/').filter(|c| !c.is_empty() && *c != ".").rev() {
                        todo.push(c.to_owned());
                    }
                }
                _ => parts.push(p),
            }
        }
        Ok(parts.join("/"))
    }

    fn staged(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn make_parents(&self, rel: &str) -> Result<(), ImageError> {
        if let Some(parent) = Path::new(rel).parent() {
            let p = self.staged(&parent.to_string_lossy());
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    fn remove_existing(&self, rel: &str) {
        let p = self.staged(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_dir() {
                return;
            }
            let _ = std::fs::remove_file(&p);
        }
    }

    /// Unpacks a rootfs `.tar.gz`, recording owners, modes, times and device nodes.
    pub fn unpack_tarball(&mut self, tarball: &Path) -> Result<(), ImageError> {
        let f = std::fs::File::open(tarball).map_err(|e| {
            rootfs_err(
                tarball,
                format!("{e}: build it first (bootstrap rootfs) or pass --rootfs FILE.tar.gz"),
            )
        })?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
        let bad = |e: std::io::Error| rootfs_err(tarball, format!("not a readable .tar.gz: {e}"));
        let mut count = 0u64;
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.into_owned();
            if raw.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(rootfs_err(
                    tarball,
                    format!("entry {} escapes the root (..)", raw.display()),
                ));
            }
            let h = entry.header();
            let uid = h.uid().map_err(bad)?;
            let gid = h.gid().map_err(bad)?;
            let perm = h.mode().map_err(bad)? & 0o7777;
            let mtime = h.mtime().map_err(bad)?;
            let kind = h.entry_type();
            let raw_s = raw.to_string_lossy().into_owned();
            if raw_s.contains(['"', '\n']) {
                return Err(rootfs_err(
                    tarball,
                    format!(
                        "entry {raw_s:?}: file names with a double quote or newline are not supported"
                    ),
                ));
            }
            let rel = self.resolve(&raw_s)?;
            count += 1;
            use tar::EntryType as T;
            let type_bits = match kind {
                T::Directory => 0o040000,
                T::Regular | T::Continuous => 0o100000,
                T::Symlink => 0o120000,
                T::Char => 0o020000,
                T::Block => 0o060000,
                T::Fifo => 0o010000,
                T::Link => 0,
                _ => continue,
            };
            let meta = Meta {
                uid,
                gid,
                mode: type_bits | perm,
                mtime,
            };
            if rel.is_empty() {
                if kind == T::Directory {
                    self.meta.insert(String::new(), meta);
                }
                continue;
            }
            let dest = self.staged(&rel);
            match kind {
                T::Directory => {
                    std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                    self.meta.insert(rel, meta);
                }
                T::Regular | T::Continuous => {
                    self.make_parents(&rel)?;
                    self.remove_existing(&rel);
                    let mut out = std::fs::File::create(&dest).map_err(io(&dest))?;
                    self.data_bytes += std::io::copy(&mut entry, &mut out).map_err(io(&dest))?;
                    self.meta.insert(rel, meta);
                }
                T::Symlink => {
                    let target = entry.link_name().map_err(bad)?.ok_or_else(|| {
                        rootfs_err(tarball, format!("symlink {raw_s} has no target"))
                    })?;
                    self.make_parents(&rel)?;
                    self.remove_existing(&rel);
                    std::os::unix::fs::symlink(&target, &dest).map_err(io(&dest))?;
                    self.meta.insert(
                        rel,
                        Meta {
                            mode: 0o120777,
                            ..meta
                        },
                    );
                }
                T::Link => {
                    let target = entry.link_name().map_err(bad)?.ok_or_else(|| {
                        rootfs_err(tarball, format!("hard link {raw_s} has no target"))
                    })?;
                    let target = self.resolve(&target.to_string_lossy())?;
                    self.make_parents(&rel)?;
                    self.remove_existing(&rel);
                    std::fs::hard_link(self.staged(&target), &dest).map_err(io(&dest))?;
                }
                T::Char | T::Block | T::Fifo => {
                    self.make_parents(&rel)?;
                    self.devices.push(Device {
                        path: rel,
                        meta,
                        kind: match kind {
                            T::Char => 'c',
                            T::Block => 'b',
                            _ => 'p',
                        },
                        major: h.device_major().ok().flatten().unwrap_or(0),
                        minor: h.device_minor().ok().flatten().unwrap_or(0),
                    });
                }
                _ => {}
            }
        }
        if count == 0 {
            return Err(rootfs_err(tarball, "the tarball is empty"));
        }
        Ok(())
    }

    /// Adds (or replaces) a file owned by root with permission bits `perm`.
    pub fn add_file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), ImageError> {
        let rel = self.resolve(path)?;
        self.make_parents(&rel)?;
        self.ensure_dirs_recorded(&rel);
        self.remove_existing(&rel);
        let dest = self.staged(&rel);
        std::fs::File::create(&dest)
            .and_then(|mut f| f.write_all(data))
            .map_err(io(&dest))?;
        self.data_bytes += data.len() as u64;
        self.meta.insert(
            rel,
            Meta {
                uid: 0,
                gid: 0,
                mode: 0o100000 | perm,
                mtime: self.epoch,
            },
        );
        Ok(())
    }

    /// Adds a directory owned by root.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), ImageError> {
        let rel = self.resolve(path)?;
        let dest = self.staged(&rel);
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        self.ensure_dirs_recorded(&rel);
        self.meta.insert(
            rel,
            Meta {
                uid: 0,
                gid: 0,
                mode: 0o040000 | perm,
                mtime: self.epoch,
            },
        );
        Ok(())
    }

    /// Adds (or replaces) a symbolic link owned by root.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        let rel = self.resolve(path)?;
        self.make_parents(&rel)?;
        self.ensure_dirs_recorded(&rel);
        self.remove_existing(&rel);
        let dest = self.staged(&rel);
        std::os::unix::fs::symlink(target, &dest).map_err(io(&dest))?;
        self.meta.insert(
            rel,
            Meta {
                uid: 0,
                gid: 0,
                mode: 0o120777,
                mtime: self.epoch,
            },
        );
        Ok(())
    }

    /// Whether `path` exists in the tree (following parent symlinks, not the last one).
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path)
            .map(|r| std::fs::symlink_metadata(self.staged(&r)).is_ok())
            .unwrap_or(false)
    }

    /// The metadata recorded for `path`.
    pub fn meta(&self, path: &str) -> Option<Meta> {
        self.resolve(path)
            .ok()
            .and_then(|r| self.meta.get(&r).copied())
    }

    /// Copies a host directory tree into the tree at `dest`, owned by root, keeping permission
    /// bits and symlinks (kernel modules, firmware).
    pub fn copy_dir(&mut self, src: &Path, dest: &str) -> Result<(), ImageError> {
        self.add_dir(dest, 0o755)?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(io(src))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let to = format!("{dest}/{name}");
            let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).map_err(io(&p))?;
                self.add_symlink(&to, &t.to_string_lossy())?;
            } else if m.is_dir() {
                self.copy_dir(&p, &to)?;
            } else {
                use std::os::unix::fs::PermissionsExt;
                self.link_or_copy(&p, &to, m.permissions().mode() & 0o7777, m.len())?;
            }
        }
        Ok(())
    }

    /// Adds a host file owned by root: hard-linked into the staging tree when it is on the same
    /// filesystem (kernel modules are hundreds of MiB; mke2fs only reads them), else copied. The
    /// source is never modified: owner and mode are set in the image by debugfs.
    fn link_or_copy(
        &mut self,
        src: &Path,
        path: &str,
        perm: u32,
        len: u64,
    ) -> Result<(), ImageError> {
        let rel = self.resolve(path)?;
        self.make_parents(&rel)?;
        self.ensure_dirs_recorded(&rel);
        self.remove_existing(&rel);
        let dest = self.staged(&rel);
        if std::fs::hard_link(src, &dest).is_err() {
            std::fs::copy(src, &dest).map_err(io(&dest))?;
        }
        self.data_bytes += len;
        self.meta.insert(
            rel,
            Meta {
                uid: 0,
                gid: 0,
                mode: 0o100000 | perm,
                mtime: self.epoch,
            },
        );
        Ok(())
    }

    fn ensure_dirs_recorded(&mut self, rel: &str) {
        let mut cur = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(p);
            self.meta.entry(cur.clone()).or_insert(Meta {
                uid: 0,
                gid: 0,
                mode: 0o040755,
                mtime: self.epoch,
            });
        }
    }

    /// The debugfs commands that give every inode its recorded owner, mode and times and
    /// create the device nodes.
    fn debugfs_script(&self) -> String {
        // debugfs takes a quoted argument literally (no backslash escapes: systemd's unit names
        // contain `\x2d`).
        let q = |p: &str| format!("\"/{p}\"");
        let mut s = String::new();
        for d in &self.devices {
            let (dir, name) = match d.path.rsplit_once('/') {
                Some((dir, name)) => (dir.to_owned(), name.to_owned()),
                None => (String::new(), d.path.clone()),
            };
            s.push_str(&format!("cd {}\n", q(&dir)));
            if d.kind == 'p' {
                s.push_str(&format!("mknod \"{name}\" p\n"));
            } else {
                s.push_str(&format!(
                    "mknod \"{name}\" {} {} {}\n",
                    d.kind, d.major, d.minor
                ));
            }
        }
        s.push_str("cd /\n");
        let root_default = Meta {
            uid: 0,
            gid: 0,
            mode: 0o040755,
            mtime: self.epoch,
        };
        let mut all: Vec<(String, Meta)> = self.meta.iter().map(|(k, v)| (k.clone(), *v)).collect();
        if !self.meta.contains_key("") {
            all.push((String::new(), root_default));
        }
        all.push((
            "lost+found".into(),
            Meta {
                mode: 0o040700,
                ..root_default
            },
        ));
        all.extend(self.devices.iter().map(|d| (d.path.clone(), d.meta)));
        for (path, m) in all {
            let p = q(&path);
            for (field, value) in [
                ("uid", m.uid.to_string()),
                ("gid", m.gid.to_string()),
                ("mode", format!("0{:o}", m.mode)),
                ("mtime", format!("@{}", m.mtime)),
                ("atime", format!("@{}", m.mtime)),
                ("ctime", format!("@{}", m.mtime)),
                ("crtime", format!("@{}", m.mtime)),
            ] {
                s.push_str(&format!("sif {p} {field} {value}\n"));
            }
        }
        s
    }

    /// Builds the ext4 filesystem into `len` bytes at `offset` of `image`.
    pub fn make_ext4(
        &self,
        image: &Path,
        offset: u64,
        len: u64,
        uuid: &str,
        label: &str,
    ) -> Result<(), ImageError> {
        let conf = self.root().with_extension("mke2fs.conf");
        // Our own mke2fs.conf: the host's would make the features (and bytes) depend on the
        // machine. No orphan_file or metadata_csum_seed, which older kernels and e2fsck lack.
        std::fs::write(
            &conf,
            "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\tdefault_mntopts = acl,user_xattr\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\n[fs_types]\n\text4 = {\n\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\t}\n",
        )
        .map_err(io(&conf))?;
        let blocks = len / 4096;
        let fake_time = self.epoch.to_string();
        let result = run(
            Command::new("mke2fs")
                .env("MKE2FS_CONFIG", &conf)
                .env("E2FSPROGS_FAKE_TIME", &fake_time)
                .args([
                    "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid, "-m", "1",
                ])
                .arg("-E")
                .arg(format!(
                    "hash_seed={uuid},offset={offset},root_owner=0:0,lazy_itable_init=1,nodiscard"
                ))
                .arg("-d")
                .arg(self.root())
                .arg(image)
                .arg(blocks.to_string()),
            "mke2fs",
        );
        let _ = std::fs::remove_file(&conf);
        if let Err(ImageError::Tool { message, .. }) = &result
            && (message.contains("Could not allocate block")
                || message.contains("No free space")
                || message.contains("Could not allocate inode"))
        {
            return Err(ImageError::SizeTooSmall {
                asked_mib: 0,
                needed_mib: 0,
            });
        }
        result?;
        let script_path = self.root().with_extension("debugfs");
        std::fs::write(&script_path, self.debugfs_script()).map_err(io(&script_path))?;
        let out = Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(format!("{}?offset={offset}", image.display()))
            .output()
            .map_err(|e| ImageError::Tool {
                tool: "debugfs".into(),
                message: e.to_string(),
            });
        let _ = std::fs::remove_file(&script_path);
        let out = out?;
        // debugfs exits 0 even when a command fails; failures are the stderr lines after the banner.
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = err
            .lines()
            .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        {
            return Err(ImageError::Tool {
                tool: "debugfs".into(),
                message: line.trim().to_owned(),
            });
        }
        if !out.status.success() {
            return Err(ImageError::Tool {
                tool: "debugfs".into(),
                message: format!("exit status {}", out.status),
            });
        }
        Ok(())
    }
}

/// Reads a file from the ext4 filesystem at `offset` of `image` (`debugfs -R cat`).
pub fn read_file(image: &Path, offset: u64, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::ToolMissing {
                    tool: "debugfs".into(),
                    package: "e2fsprogs".into(),
                }
            } else {
                io(image)(e)
            }
        })?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return Ok(None);
    }
    if !out.status.success() || err.contains("Bad magic") || err.contains("while trying to open") {
        return Err(ImageError::BadImage {
            path: image.to_owned(),
            message: format!(
                "the root partition is not a readable ext4 filesystem: {}",
                err.trim().replace('\n', " / ")
            ),
        });
    }
    Ok(Some(out.stdout))
}
