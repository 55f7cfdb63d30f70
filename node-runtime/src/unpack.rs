//! `node-runtime unpack`: a rootfs `.tar.gz` on stdin becomes `DEST`, atomically.
//!
//! Extraction goes into a temporary sibling of `DEST` (same filesystem, so the swap is a rename)
//! keeping owners, modes, symlinks, hard links, device nodes and xattrs. Entries are written
//! beneath that directory only ([`crate::beneath`]): an archive whose entries would reach outside
//! it (a `..`, a path through a symlink an earlier entry made, a hard link out of the tree) is
//! refused whole. The sha256 of the whole compressed stream is checked before the swap. Any
//! failure — a cut stream, a corrupted one, a wrong hash, an unsafe entry — removes the temporary
//! tree and leaves `DEST` as it was; the one error after which it is not says so and where the old
//! tree is.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};

/// Why an unpack failed (`DEST` is untouched in every case).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The stream ended early or is not a valid tar.gz.
    #[error(
        "the rootfs stream is broken after {bytes} bytes ({reason}); {dest} was left as it was: send the archive again"
    )]
    Broken {
        /// Bytes read.
        bytes: u64,
        /// What the decoder said.
        reason: String,
        /// The destination.
        dest: PathBuf,
    },
    /// The hash does not match.
    #[error(
        "the rootfs stream has sha256 {got}, expected {expected}; {dest} was left as it was: the archive was corrupted in transit or is not the one meant"
    )]
    Mismatch {
        /// What was read.
        got: String,
        /// What was expected.
        expected: String,
        /// The destination.
        dest: PathBuf,
    },
    /// An entry could not be written.
    #[error("cannot extract {entry} into {dest}: {source}; {dest} was left as it was")]
    Entry {
        /// The entry's path in the archive.
        entry: String,
        /// The destination.
        dest: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An entry would write outside the destination (through a symlink the archive made, a
    /// `..`, a hard link out of the tree): the whole archive is refused.
    #[error(
        "the rootfs archive is unsafe: its entry {entry} {reason}; nothing was written outside the temporary tree and {dest} was left as it was: rebuild the archive (armfleet's own are never like this)"
    )]
    Unsafe {
        /// The entry's path in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
        /// The destination.
        dest: PathBuf,
    },
    /// The old tree was moved aside for the swap and could not be moved back.
    #[error(
        "{dest} could not be replaced ({source}) and the previous tree could not be put back: it is at {aside}; move it back with `mv {aside} {dest}` before anything else"
    )]
    SwapLost {
        /// The destination, now missing.
        dest: PathBuf,
        /// Where the old tree is.
        aside: PathBuf,
        /// Why the new tree could not go in.
        source: io::Error,
    },
    /// Setting up (before anything was replaced) failed.
    #[error("{path}: {source}; nothing was replaced")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `--sha256` is not a sha256.
    #[error("--sha256 {0:?} is not 64 hex digits")]
    BadHash(String),
    /// `DEST` is unusable.
    #[error("--dest {0}: must be an absolute path other than / whose parent exists")]
    BadDest(PathBuf),
}

/// What [`unpack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The previous tree, swapped out but not removed (removal failed: the next unpack removes
    /// it). The new tree is in place either way.
    pub leftover: Option<PathBuf>,
    /// sha256 of the compressed stream.
    pub sha256: String,
    /// Compressed bytes read.
    pub bytes: u64,
    /// Entries extracted.
    pub entries: u64,
    /// A previous tree was replaced.
    pub replaced: bool,
}

/// Size of the chunks passed between the pipeline's stages: big enough that per-chunk costs
/// (a channel hand-off, a hasher call) vanish, small enough that a few in flight cost little RAM.
const CHUNK: usize = 1 << 20;
/// Chunks queued between two stages: lets a stage run ahead while the next one waits on the disk.
const DEPTH: usize = 4;

/// The receiving end of a stage as a `Read`: ends (Ok(0)) when the sender is dropped.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: Receiver<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.cur = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads up to one [`CHUNK`] (less only at the end of the stream).
fn read_chunk(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0;
    while len < CHUNK {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Extracts the tar.gz `reader` into `dest` atomically (see the module docs). With
/// `expected_len`, the stream must be exactly that long (a sender that says how much it sends
/// catches a cut that happens to fall between two gzip members).
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    expected_sha256: Option<&str>,
    expected_len: Option<u64>,
) -> Result<Unpacked, UnpackError> {
    let expected = expected_sha256.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &expected
        && !bootstrap::node_config::is_sha256_hex(h)
    {
        return Err(UnpackError::BadHash(h.clone()));
    }
    let parent = match dest.parent() {
        Some(p) if dest.is_absolute() && dest != Path::new("/") && p.is_dir() => p,
        _ => return Err(UnpackError::BadDest(dest.to_owned())),
    };
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.unpack-{}", std::process::id()));
    // Left-overs of an earlier killed unpack (a different pid) are garbage: remove them.
    clean_leftovers(parent, &name);
    // 0700 while it is filled: nobody else can add to it or swap names in it meanwhile.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|source| UnpackError::Io {
            path: tmp.clone(),
            source,
        })?;
    let result = extract_verify(reader, &tmp, dest, expected.as_deref(), expected_len);
    let (sha256, bytes, entries) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // The new tree must be on disk before it becomes the live one, so a power cut leaves the old
    // tree or the whole new one, never files that a rename made visible before their data landed.
    // One syncfs for the whole tree: per-file fsyncs would cost a flush each.
    if let Err(e) = sync_filesystem(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let swapped = swap_into_place(&tmp, dest)?;
    Ok(Unpacked {
        sha256,
        bytes,
        entries,
        replaced: swapped.replaced,
        leftover: swapped.leftover,
    })
}

fn clean_leftovers(parent: &Path, name: &str) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let is_ours =
            n.starts_with(&format!(".{name}.unpack-")) || n.starts_with(&format!(".{name}.old-"));
        if is_ours
            && let Some(pid) = n.rsplit('-').next().and_then(|p| p.parse::<u32>().ok())
            && !crate::pidfile::pid_alive(pid)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Three stages run at once, joined by bounded channels: this thread reads the stream and hashes
/// it, one thread inflates the gzip, one writes the tar entries. On a phone's many cores (and under
/// emulation) the hash and the inflate then cost no wall time beside the writes.
fn extract_verify(
    mut reader: impl Read,
    tmp: &Path,
    dest: &Path,
    expected: Option<&str>,
    expected_len: Option<u64>,
) -> Result<(String, u64, u64), UnpackError> {
    let broken = |bytes: u64, reason: String| UnpackError::Broken {
        bytes,
        reason,
        dest: dest.to_owned(),
    };
    let (gz_tx, gz_rx) = sync_channel::<Vec<u8>>(DEPTH);
    let (tar_tx, tar_rx) = sync_channel::<Vec<u8>>(DEPTH);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let (read_err, inflated, extracted) = std::thread::scope(|s| {
        let inflate = s.spawn(move || -> io::Result<()> {
            let mut gz = flate2::read::MultiGzDecoder::new(ChunkReader::new(gz_rx));
            loop {
                let chunk = read_chunk(&mut gz)?;
                // A send fails only when the extractor stopped: its error is the one to tell.
                if chunk.is_empty() || tar_tx.send(chunk).is_err() {
                    return Ok(());
                }
            }
        });
        // Early writeback: while the extractor runs, this thread asks for a syncfs every
        // FLUSH_PERIOD, so the disk writes while the stream still arrives and the final syncfs
        // (before the swap) has little left. Without it the whole tree (a k3s binary is one
        // big entry) sits in the page cache until the end — a phone starts writeback only at
        // 10 % of its RAM — and is flushed while nothing else happens. Errors are left to the
        // final syncfs.
        let (extracting, done) = sync_channel::<()>(0);
        s.spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(FLUSH_PERIOD) {
                let _ = sync_filesystem(tmp);
            }
        });
        let extract = s.spawn(move || {
            let entries = extract_entries(ChunkReader::new(tar_rx), tmp, dest);
            drop(extracting);
            entries
        });
        let mut read_err = None;
        loop {
            match read_chunk(&mut reader) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    hasher.update(&chunk);
                    bytes += chunk.len() as u64;
                    if gz_tx.send(chunk).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        drop(gz_tx);
        let inflated = inflate.join().expect("inflate thread panicked");
        let extracted = extract.join().expect("extract thread panicked");
        (read_err, inflated, extracted)
    });
    // The earliest stage's failure is the cause; the later stages only saw their input end.
    if let Some(e) = read_err {
        return Err(broken(bytes, e.to_string()));
    }
    if let Err(e) = inflated {
        return Err(broken(bytes, e.to_string()));
    }
    let entries = extracted.map_err(|e| match e {
        UnpackError::Broken { reason, dest, .. } => UnpackError::Broken {
            bytes,
            reason,
            dest,
        },
        other => other,
    })?;
    if let Some(want) = expected_len
        && bytes != want
    {
        return Err(broken(bytes, format!("expected {want} bytes")));
    }
    let got = hex::encode(hasher.finalize());
    if let Some(exp) = expected
        && got != exp
    {
        return Err(UnpackError::Mismatch {
            got,
            expected: exp.to_owned(),
            dest: dest.to_owned(),
        });
    }
    if entries == 0 {
        return Err(broken(bytes, "the archive is empty".into()));
    }
    Ok((got, bytes, entries))
}

/// How often the tree being extracted is written back to disk (see extract_verify).
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// Writes the tar entries read from `tar` into `tmp`; the entry count. Every entry goes through
/// [`crate::beneath::Tree`], which creates it relative to the directory holding it and walks no
/// symlink: whatever the archive contains, nothing outside `tmp` is touched.
fn extract_entries(tar: impl Read, tmp: &Path, dest: &Path) -> Result<u64, UnpackError> {
    use crate::beneath::{Kind, PlaceError, Tree};
    use std::os::unix::ffi::OsStrExt;
    let mut archive = tar::Archive::new(tar);
    let broken = |e: io::Error| UnpackError::Broken {
        bytes: 0,
        reason: e.to_string(),
        dest: dest.to_owned(),
    };
    let mut tree = Tree::open(tmp).map_err(|source| UnpackError::Io {
        path: tmp.to_owned(),
        source,
    })?;
    let mut count = 0u64;
    let mut saw_root = false;
    let iter = archive.entries().map_err(broken)?;
    for entry in iter {
        let mut entry = entry.map_err(broken)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let path_bytes = entry.path_bytes().into_owned();
        let path_text = String::from_utf8_lossy(&path_bytes).into_owned();
        let entry_err = |source: io::Error| UnpackError::Entry {
            entry: path_text.clone(),
            dest: dest.to_owned(),
            source,
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&path_bytes));
        let link = entry
            .link_name_bytes()
            .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)));
        let meta = entry_meta(&mut entry).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                broken(e)
            } else {
                entry_err(e)
            }
        })?;
        let no_link = || entry_err(io::Error::other("a link entry without a target"));
        let place_kind = if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            Kind::File
        } else if kind.is_dir() {
            Kind::Dir
        } else if kind.is_symlink() {
            Kind::Symlink(link.as_deref().ok_or_else(no_link)?)
        } else if kind.is_hard_link() {
            Kind::HardLink(link.as_deref().ok_or_else(no_link)?)
        } else if kind.is_character_special() || kind.is_block_special() {
            let h = entry.header();
            let major = h.device_major().map_err(entry_err)?.unwrap_or(0);
            let minor = h.device_minor().map_err(entry_err)?.unwrap_or(0);
            if kind.is_character_special() {
                Kind::CharDevice { major, minor }
            } else {
                Kind::BlockDevice { major, minor }
            }
        } else if kind.is_fifo() {
            // A FIFO has no device numbers: never read them (Python's tarfile leaves them empty).
            Kind::Fifo
        } else {
            return Err(entry_err(io::Error::other(format!(
                "unsupported tar entry type {:?}",
                kind.as_byte() as char
            ))));
        };
        if kind.is_dir() && crate::beneath::components(&path).is_ok_and(|c| c.is_empty()) {
            saw_root = true;
        }
        match tree.place(&path, place_kind, &meta, &mut entry) {
            Ok(()) => {}
            Err(PlaceError::Refused(why)) => {
                return Err(UnpackError::Unsafe {
                    entry: path_text,
                    reason: why.to_string(),
                    dest: dest.to_owned(),
                });
            }
            // A stream cut inside a file body shows up here as an I/O error.
            Err(PlaceError::Io(e))
                if e.kind() == io::ErrorKind::UnexpectedEof
                    || e.kind() == io::ErrorKind::InvalidData =>
            {
                return Err(broken(e));
            }
            Err(PlaceError::Io(e)) => return Err(entry_err(e)),
        }
        count += 1;
    }
    // Drain the rest (tar padding, then whatever the inflater still sends) so the inflater reaches
    // the gzip trailer, checks its CRC, and the reader hashes the whole stream.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(broken)?;
    let tmp_io = |source| UnpackError::Io {
        path: tmp.to_owned(),
        source,
    };
    tree.finish().map_err(|e| match e {
        PlaceError::Io(source) => tmp_io(source),
        PlaceError::Refused(why) => tmp_io(io::Error::other(why.to_string())),
    })?;
    if !saw_root {
        // The temporary root was made 0700; an archive without `./` gets the usual 0755.
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(tmp_io)?;
    }
    Ok(count)
}

/// Owner, mode, mtime and `SCHILY.xattr.*` attributes of an entry, as numbers (user and group
/// names are not looked up: the rootfs has its own passwd).
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<crate::beneath::Meta> {
    use std::os::unix::ffi::OsStrExt;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((
                    std::ffi::OsStr::from_bytes(name).to_owned(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    let h = entry.header();
    Ok(crate::beneath::Meta {
        mode: h.mode()?,
        uid: u32::try_from(h.uid()?).map_err(|_| io::Error::other("uid out of range"))?,
        gid: u32::try_from(h.gid()?).map_err(|_| io::Error::other("gid out of range"))?,
        mtime: i64::try_from(h.mtime()?).unwrap_or(0),
        xattrs,
    })
}

/// syncfs(2) on the filesystem holding `dir`.
fn sync_filesystem(dir: &Path) -> Result<(), UnpackError> {
    use std::os::fd::AsRawFd;
    let io = |source| UnpackError::Io {
        path: dir.to_owned(),
        source,
    };
    let d = std::fs::File::open(dir).map_err(io)?;
    // SAFETY: syncfs on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io(io::Error::last_os_error()));
    }
    Ok(())
}

/// renameat2(RENAME_EXCHANGE) as a raw system call (musl's libc has no wrapper).
fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    const RENAME_EXCHANGE: libc::c_uint = 2;
    // SAFETY: two valid NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the swap did.
struct Swapped {
    replaced: bool,
    leftover: Option<PathBuf>,
}

/// Puts `tmp` at `dest`: an atomic exchange where the filesystem supports it, else rename the
/// old tree aside, the new one in, and remove the old. Each error says what state it left.
fn swap_into_place(tmp: &Path, dest: &Path) -> Result<Swapped, UnpackError> {
    let untouched = |source| {
        let _ = std::fs::remove_dir_all(tmp);
        UnpackError::Io {
            path: dest.to_owned(),
            source,
        }
    };
    if std::fs::symlink_metadata(dest).is_err() {
        std::fs::rename(tmp, dest).map_err(untouched)?;
        return Ok(Swapped {
            replaced: false,
            leftover: None,
        });
    }
    let old = match rename_exchange(tmp, dest) {
        // `tmp` now holds the old tree.
        Ok(()) => tmp.to_owned(),
        Err(_) => {
            let name = dest.file_name().unwrap_or_default().to_string_lossy();
            let aside = dest.with_file_name(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(dest, &aside).map_err(untouched)?;
            if let Err(source) = std::fs::rename(tmp, dest) {
                if std::fs::rename(&aside, dest).is_err() {
                    let _ = std::fs::remove_dir_all(tmp);
                    return Err(UnpackError::SwapLost {
                        dest: dest.to_owned(),
                        aside,
                        source,
                    });
                }
                return Err(untouched(source));
            }
            aside
        }
    };
    // The new tree is live: failing to remove the old one is no failure of the install (the next
    // unpack removes leftovers of dead runs).
    let leftover = std::fs::remove_dir_all(&old).err().map(|_| old);
    Ok(Swapped {
        replaced: true,
        leftover,
    })
}
