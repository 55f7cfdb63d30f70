//! The ext4 root partition, made without root, without mounting and without a staging
//! directory: `mke2fs -d -` (e2fsprogs >= 1.47.1, which reads tar through libarchive) takes one
//! tar stream — the node rootfs tarball byte for byte (owners, modes, device nodes, hard links,
//! extended attributes such as file capabilities), then imagegen's additions — and writes the
//! filesystem straight into the partition window of the image (`-E offset=`).
//!
//! mke2fs creates the inodes in tar order, so the bytes depend only on the inputs, never on the
//! host's directory order or filesystem. A later entry for a path replaces an earlier one; a
//! later directory entry only changes the directory's owner, mode and time. UUID, hash seed,
//! mke2fs settings and the clock (`E2FSPROGS_FAKE_TIME`) are fixed, so the bytes reproduce.

use crate::error::{ImageError, io};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

/// The oldest e2fsprogs whose `mke2fs -d` reads a tar archive.
pub const MKE2FS_MIN: (u32, u32, u32) = (1, 47, 1);

/// Owner, permissions and time of one inode, as the rootfs says they must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Modification time.
    pub mtime: u64,
}

/// What a path is, in the rootfs tarball or after imagegen's additions.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dir,
    File,
    Symlink(String),
    /// Device node or FIFO.
    Special,
}

/// Where an added file's bytes come from.
#[derive(Debug, Clone)]
enum Content {
    Bytes(Vec<u8>),
    /// A host file, read while streaming (kernel modules are hundreds of MiB).
    Host(PathBuf, u64),
}

#[derive(Debug, Clone)]
struct Added {
    kind: Kind,
    content: Option<Content>,
    meta: Meta,
}

/// A root filesystem: the rootfs tarball (kept as it is) plus imagegen's additions on top.
pub struct Tree {
    /// The uncompressed rootfs tar, up to (without) its end-of-archive blocks.
    base: Vec<u8>,
    /// The tarball's entries by path (relative, `/`-separated; the root is `""`).
    index: HashMap<String, (Kind, Meta)>,
    /// Additions in path order (a directory sorts before everything inside it).
    added: BTreeMap<String, Added>,
    base_data_bytes: u64,
    epoch: u64,
}

fn rootfs_err(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Rootfs {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// `a/b/c` from a tar entry path (`./a/b/c`, `/a/b/c`, `a/b/c/`).
fn normalize(p: &Path) -> String {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Tree {
    /// Reads a rootfs tarball (`.tar.gz` or plain `.tar`) into memory and indexes its entries;
    /// `epoch` stamps everything added later.
    pub fn from_tarball(tarball: &Path, epoch: u64) -> Result<Tree, ImageError> {
        let f = std::fs::File::open(tarball).map_err(|e| {
            rootfs_err(
                tarball,
                format!("{e}: build it first (bootstrap rootfs) or pass --rootfs FILE.tar.gz"),
            )
        })?;
        let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let bad = |e: std::io::Error| rootfs_err(tarball, format!("not a readable .tar.gz: {e}"));
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let gz = std::io::BufRead::fill_buf(&mut r)
            .map_err(bad)?
            .starts_with(&[0x1f, 0x8b]);
        let mut base = Vec::new();
        if gz {
            // gzip's trailer holds the uncompressed size (mod 4 GiB): one allocation, no regrowth.
            let mut hint = 0u64;
            if file_len >= 4 {
                use std::os::unix::fs::FileExt;
                let mut t = [0u8; 4];
                if r.get_ref().read_exact_at(&mut t, file_len - 4).is_ok() {
                    hint = u32::from_le_bytes(t) as u64;
                }
            }
            base.reserve(hint as usize);
            flate2::read::MultiGzDecoder::new(r)
                .read_to_end(&mut base)
                .map_err(bad)?;
        } else {
            base.reserve(file_len as usize);
            r.read_to_end(&mut base).map_err(bad)?;
        }
        let mut tree = Tree {
            base,
            index: HashMap::new(),
            added: BTreeMap::new(),
            base_data_bytes: 0,
            epoch,
        };
        let end = tree.index_base(tarball)?;
        tree.base.truncate(end);
        Ok(tree)
    }

    /// Indexes the tar in `self.base`; returns where its last entry ends.
    fn index_base(&mut self, tarball: &Path) -> Result<usize, ImageError> {
        let bad = |e: std::io::Error| rootfs_err(tarball, format!("not a readable tar: {e}"));
        let mut ar = tar::Archive::new(std::io::Cursor::new(&self.base[..]));
        let mut end = 0u64;
        let mut count = 0u64;
        let mut data = 0u64;
        let mut index = HashMap::new();
        for entry in ar.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.into_owned();
            if raw.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(rootfs_err(
                    tarball,
                    format!("entry {} escapes the root (..)", raw.display()),
                ));
            }
            end = end.max(entry.raw_file_position() + entry.size().div_ceil(512) * 512);
            count += 1;
            let h = entry.header();
            use tar::EntryType as T;
            let kind = match h.entry_type() {
                T::Directory => Kind::Dir,
                T::Regular | T::Continuous => {
                    data += entry.size();
                    Kind::File
                }
                T::Link => Kind::File,
                T::Symlink => Kind::Symlink(
                    entry
                        .link_name()
                        .map_err(bad)?
                        .map(|l| l.to_string_lossy().into_owned())
                        .ok_or_else(|| {
                            rootfs_err(tarball, format!("symlink {} has no target", raw.display()))
                        })?,
                ),
                T::Char | T::Block | T::Fifo => Kind::Special,
                T::GNUSparse => {
                    // Its stored size differs from its file size: where the next entry starts
                    // would be guessed, and the stream to mke2fs cut in the wrong place.
                    return Err(rootfs_err(
                        tarball,
                        format!(
                            "entry {} is a GNU sparse file, which imagegen does not take: make the tarball without --sparse",
                            raw.display()
                        ),
                    ));
                }
                _ => continue,
            };
            let type_bits = match kind {
                Kind::Dir => 0o040000,
                Kind::File => 0o100000,
                Kind::Symlink(_) => 0o120000,
                Kind::Special => 0,
            };
            let meta = Meta {
                uid: h.uid().map_err(bad)?,
                gid: h.gid().map_err(bad)?,
                mode: type_bits | (h.mode().map_err(bad)? & 0o7777),
                mtime: h.mtime().map_err(bad)?,
            };
            index.insert(normalize(&raw), (kind, meta));
        }
        if count == 0 {
            return Err(rootfs_err(tarball, "the tarball is empty"));
        }
        // Only the end-of-archive blocks may follow: anything else means the entries were not
        // all seen, and the additions appended after `end` would be lost or misread.
        let end = end as usize;
        if self
            .base
            .get(end..)
            .is_some_and(|rest| rest.iter().any(|&b| b != 0))
            || end > self.base.len()
        {
            return Err(rootfs_err(
                tarball,
                "data after the last tar entry: the archive is damaged or in a form imagegen does not read",
            ));
        }
        self.index = index;
        self.base_data_bytes = data;
        Ok(end)
    }

    /// Bytes of file data (for the size estimate).
    pub fn data_bytes(&self) -> u64 {
        let added: u64 = self
            .added
            .values()
            .map(|a| match &a.content {
                Some(Content::Bytes(b)) => b.len() as u64,
                Some(Content::Host(_, len)) => *len,
                None => 0,
            })
            .sum();
        self.base_data_bytes + added
    }

    /// Number of inodes.
    pub fn inodes(&self) -> u64 {
        let new = self
            .added
            .keys()
            .filter(|k| !self.index.contains_key(*k))
            .count();
        (self.index.len() + new) as u64
    }

    fn lookup(&self, rel: &str) -> Option<(&Kind, Meta)> {
        match self.added.get(rel) {
            Some(a) => Some((&a.kind, a.meta)),
            None => self.index.get(rel).map(|(k, m)| (k, *m)),
        }
    }

    /// Resolves `path` (relative to the root, `/`-separated) following symlinks of its parent
    /// directories *inside* the root (a Debian rootfs has `lib -> usr/lib`): the real location
    /// of the entry, never outside the root.
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
            let mut here = parts.join("/");
            if !here.is_empty() {
                here.push('/');
            }
            here.push_str(&p);
            match self.lookup(&here) {
                Some((Kind::Symlink(target), _)) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(rootfs_err(
                            Path::new(path),
                            "too many levels of symbolic links",
                        ));
                    }
                    if target.starts_with('/') {
                        parts.clear();
                    }
                    for c in target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .rev()
                    {
                        todo.push(c.to_owned());
                    }
                }
                _ => parts.push(p),
            }
        }
        Ok(parts.join("/"))
    }

    fn root_meta(&self, type_bits: u32, perm: u32) -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: type_bits | perm,
            mtime: self.epoch,
        }
    }

    /// Adds the missing parent directories of `rel` (root-owned, 0755).
    fn make_parents(&mut self, rel: &str) -> Result<(), ImageError> {
        let mut cur = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(p);
            match self.lookup(&cur) {
                Some((Kind::Dir, _)) => {}
                None => {
                    let meta = self.root_meta(0o040000, 0o755);
                    self.added.insert(
                        cur.clone(),
                        Added {
                            kind: Kind::Dir,
                            content: None,
                            meta,
                        },
                    );
                }
                Some(_) => {
                    return Err(rootfs_err(
                        Path::new(&format!("/{cur}")),
                        format!("is not a directory in the rootfs, but imagegen must write /{rel}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        path: &str,
        kind: Kind,
        content: Option<Content>,
        meta: Meta,
    ) -> Result<(), ImageError> {
        let rel = self.resolve(path)?;
        if rel.is_empty() {
            return Err(rootfs_err(
                Path::new("/"),
                "imagegen cannot replace the root directory",
            ));
        }
        self.make_parents(&rel)?;
        self.added.insert(
            rel,
            Added {
                kind,
                content,
                meta,
            },
        );
        Ok(())
    }

    /// Adds (or replaces) a file owned by root with permission bits `perm`.
    pub fn add_file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), ImageError> {
        let meta = self.root_meta(0o100000, perm);
        self.add(path, Kind::File, Some(Content::Bytes(data.to_vec())), meta)
    }

    /// Adds (or replaces) a file owned by root whose bytes are the host file `src`, read while
    /// the image is written rather than held in memory (mirror archives are hundreds of MiB).
    /// Returns its size.
    pub fn add_host_file(&mut self, path: &str, perm: u32, src: &Path) -> Result<u64, ImageError> {
        let len = std::fs::metadata(src).map_err(io(src))?.len();
        let meta = self.root_meta(0o100000, perm);
        self.add(
            path,
            Kind::File,
            Some(Content::Host(src.to_owned(), len)),
            meta,
        )?;
        Ok(len)
    }

    /// Adds a directory owned by root (an existing one keeps its contents).
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), ImageError> {
        let meta = self.root_meta(0o040000, perm);
        self.add(path, Kind::Dir, None, meta)
    }

    /// Adds (or replaces) a symbolic link owned by root.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        let meta = self.root_meta(0o120000, 0o777);
        self.add(path, Kind::Symlink(target.to_owned()), None, meta)
    }

    /// Whether `path` exists in the tree (following parent symlinks, not the last one).
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path)
            .map(|r| self.lookup(&r).is_some())
            .unwrap_or(false)
    }

    /// The metadata recorded for `path`.
    pub fn meta(&self, path: &str) -> Option<Meta> {
        self.resolve(path)
            .ok()
            .and_then(|r| self.lookup(&r).map(|(_, m)| m))
    }

    /// Copies a host directory tree into the tree at `dest`, owned by root, keeping permission
    /// bits and symlinks (kernel modules, firmware). File bytes are read when streaming.
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
                let meta = self.root_meta(0o100000, m.permissions().mode() & 0o7777);
                self.add(&to, Kind::File, Some(Content::Host(p, m.len())), meta)?;
            }
        }
        Ok(())
    }

    /// Writes the whole tree as one tar stream: the rootfs as it came, then the additions.
    pub fn write_tar(&self, out: impl Write) -> Result<(), ImageError> {
        let pipe = |e: std::io::Error| ImageError::Tool {
            tool: "mke2fs".into(),
            message: format!("stopped reading the root filesystem: {e}"),
        };
        let mut b = tar::Builder::new(out);
        b.get_mut().write_all(&self.base).map_err(pipe)?;
        for (rel, a) in &self.added {
            let path = format!("./{rel}");
            let mut h = tar::Header::new_gnu();
            h.set_uid(a.meta.uid);
            h.set_gid(a.meta.gid);
            h.set_mode(a.meta.mode & 0o7777);
            h.set_mtime(a.meta.mtime);
            match (&a.kind, &a.content) {
                (Kind::Dir, _) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(pipe)?;
                }
                (Kind::Symlink(target), _) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &path, target).map_err(pipe)?;
                }
                (_, Some(Content::Bytes(data))) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &path, &data[..]).map_err(pipe)?;
                }
                (_, Some(Content::Host(src, _))) => {
                    let f = std::fs::File::open(src).map_err(io(src))?;
                    // The length now, not when listed: a file that changed size would corrupt the stream.
                    let len = f.metadata().map_err(io(src))?.len();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(len);
                    b.append_data(&mut h, &path, f.take(len)).map_err(pipe)?;
                }
                (_, None) => {}
            }
        }
        b.into_inner().and_then(|mut w| w.flush()).map_err(pipe)?;
        Ok(())
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
        // Our own mke2fs.conf: the host's would make the features (and bytes) depend on the
        // machine. No orphan_file or metadata_csum_seed, which older kernels and e2fsck lack.
        let mut conf = tempfile::Builder::new()
            .prefix(".imagegen-mke2fs-")
            .suffix(".conf")
            .tempfile()
            .map_err(io(&std::env::temp_dir()))?;
        conf.write_all(
            b"[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\tdefault_mntopts = acl,user_xattr\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\n[fs_types]\n\text4 = {\n\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\t}\n",
        )
        .map_err(io(conf.path()))?;
        let blocks = len / 4096;
        let mut child = bootstrap::process::command("mke2fs")
            .env("MKE2FS_CONFIG", conf.path())
            .env("E2FSPROGS_FAKE_TIME", self.epoch.to_string())
            .env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid, "-m", "1",
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},offset={offset},root_owner=0:0,lazy_itable_init=1,nodiscard"
            ))
            .args(["-d", "-"])
            .arg(image)
            .arg(blocks.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    ImageError::ToolMissing {
                        tool: "mke2fs".into(),
                        package: "e2fsprogs".into(),
                    }
                } else {
                    io(Path::new("mke2fs"))(e)
                }
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let (written, out) = std::thread::scope(|s| {
            let writer =
                s.spawn(move || self.write_tar(std::io::BufWriter::with_capacity(1 << 20, stdin)));
            let out = child.wait_with_output();
            (writer.join().expect("tar writer"), out)
        });
        let out = out.map_err(io(Path::new("mke2fs")))?;
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        if !out.status.success() {
            if first.contains("Could not allocate block")
                || first.contains("No free space")
                || first.contains("Could not allocate inode")
            {
                return Err(ImageError::SizeTooSmall {
                    asked_mib: 0,
                    needed_mib: 0,
                });
            }
            if first.contains("No space left") {
                return Err(ImageError::Tool {
                    tool: "mke2fs".into(),
                    message: first,
                });
            }
            if first.contains("libarchive") {
                return Err(ImageError::Tool {
                    tool: "mke2fs".into(),
                    message: format!(
                        "{first}: install libarchive (apt-get install libarchive13), which mke2fs needs to read a tar"
                    ),
                });
            }
            return Err(ImageError::Tool {
                tool: "mke2fs".into(),
                message: if first.is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    first
                },
            });
        }
        written
    }
}

/// Checks that the host's mke2fs reads tar archives (e2fsprogs >= 1.47.1).
pub fn check_mke2fs() -> Result<(), ImageError> {
    let out = bootstrap::process::command("mke2fs")
        .arg("-V")
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::ToolMissing {
                    tool: "mke2fs".into(),
                    package: "e2fsprogs".into(),
                }
            } else {
                io(Path::new("mke2fs"))(e)
            }
        })?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let found = text
        .split_whitespace()
        .skip_while(|w| *w != "mke2fs")
        .nth(1)
        .unwrap_or("(unknown version)")
        .to_owned();
    if parse_version(&found).is_none_or(|v| v < MKE2FS_MIN) {
        let (a, b, c) = MKE2FS_MIN;
        return Err(ImageError::ToolTooOld {
            tool: "mke2fs".into(),
            found,
            needed: format!("{a}.{b}.{c}"),
            why: "its `-d` reads the rootfs tar with owners, device nodes and file capabilities".into(),
            help: "on Debian 12 install it from backports: apt-get install -t bookworm-backports e2fsprogs libarchive13".into(),
        });
    }
    Ok(())
}

/// `1.47.2` (or `1.47.2-rc1`) as numbers.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split(['.', '-', '~', '+']);
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    Some((a, b, c))
}

/// Reads a file from the ext4 filesystem at `offset` of `image` (`debugfs -R cat`).
pub fn read_file(image: &Path, offset: u64, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
    let out = bootstrap::process::command("debugfs")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path) -> PathBuf {
        let p = dir.join("rootfs.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let h = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_size(size);
            h
        };
        b.append_data(
            &mut h(tar::EntryType::Directory, 0o755, 0),
            "./",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut h(tar::EntryType::Directory, 0o755, 0),
            "./usr/",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut h(tar::EntryType::Directory, 0o755, 0),
            "./usr/lib/",
            std::io::empty(),
        )
        .unwrap();
        b.append_link(
            &mut h(tar::EntryType::Symlink, 0o777, 0),
            "./lib",
            "usr/lib",
        )
        .unwrap();
        b.append_data(
            &mut h(tar::EntryType::Directory, 0o755, 0),
            "./etc/",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut h(tar::EntryType::Regular, 0o644, 4),
            "./etc/hostname",
            &b"old\n"[..],
        )
        .unwrap();
        b.into_inner().unwrap().finish().unwrap();
        p
    }

    #[test]
    fn additions_follow_rootfs_symlinks_and_come_after_the_rootfs_in_one_tar() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::from_tarball(&tarball(dir.path()), 7).unwrap();
        assert_eq!(
            t.resolve("lib/modules/x/a.ko").unwrap(),
            "usr/lib/modules/x/a.ko"
        );
        assert!(t.exists("etc/hostname") && !t.exists("etc/fstab"));
        t.add_file("lib/modules/x/a.ko", 0o644, b"ko").unwrap();
        t.add_file("etc/hostname", 0o644, b"new\n").unwrap();
        assert!(t.exists("usr/lib/modules/x/a.ko"));
        assert_eq!(t.meta("etc/hostname").unwrap().mtime, 7);
        let mut out = Vec::new();
        t.write_tar(&mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let listed: Vec<(String, Vec<u8>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (normalize(&e.path().unwrap()), data)
            })
            .collect();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        // The rootfs as it was (its end-of-archive blocks dropped), then the additions with the
        // missing parent directories before their children.
        assert_eq!(
            names,
            [
                "",
                "usr",
                "usr/lib",
                "lib",
                "etc",
                "etc/hostname",
                "etc/hostname",
                "usr/lib/modules",
                "usr/lib/modules/x",
                "usr/lib/modules/x/a.ko"
            ]
        );
        assert_eq!(listed[6].1, b"new\n");
    }

    #[test]
    fn mke2fs_versions_compare() {
        assert!(parse_version("1.47.0").unwrap() < MKE2FS_MIN);
        assert!(parse_version("1.47.1").unwrap() >= MKE2FS_MIN);
        assert!(parse_version("1.47.2-rc1").unwrap() >= MKE2FS_MIN);
        assert!(parse_version("1.48").unwrap() >= MKE2FS_MIN);
        assert_eq!(parse_version("(unknown"), None);
    }
}
