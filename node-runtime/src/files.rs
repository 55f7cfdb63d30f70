//! `node-runtime write-files`: small files (node.toml, the join token, the boot hook) read from
//! stdin, each exactly as long as declared, put in place all or nothing.
//!
//! phonectl sends them in the same root shell as the rootfs (after it on the same stdin), so a
//! first enroll is one `su` on the phone rather than one per step, and one program instead of a
//! `dd`, `chmod` and `mv` per file.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One file to write: where, with which permission bits, how many bytes of stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute destination path.
    pub path: PathBuf,
    /// Permission bits (e.g. 0o600), applied whatever the umask.
    pub mode: u32,
    /// Bytes of input that make up the file.
    pub len: u64,
}

/// Why the files were not written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A `--file` argument is malformed.
    #[error(
        "--file {0}: expected ABSOLUTE_PATH:OCTAL_MODE:LENGTH, e.g. /data/armfleet/node.toml:0644:312"
    )]
    BadSpec(String),
    /// The input ended before every file was read.
    #[error(
        "stdin ended after {got} of the {want} bytes declared for {path}: nothing was written; send the files again"
    )]
    Short {
        /// The file being read.
        path: PathBuf,
        /// Bytes of it that arrived.
        got: u64,
        /// Bytes declared.
        want: u64,
    },
    /// More input followed the declared files (the sender's framing is off).
    #[error(
        "stdin has more bytes than the --file lengths declare: nothing was written; the sender's lengths are wrong"
    )]
    Extra,
    /// Writing or renaming failed.
    #[error("{path}: {source}; the files already in place are unchanged")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl FileSpec {
    /// Parses `PATH:MODE:LEN` (the path may itself contain `:`; the mode is octal).
    pub fn parse(arg: &str) -> Result<FileSpec, FilesError> {
        let bad = || FilesError::BadSpec(arg.to_owned());
        let mut parts = arg.rsplitn(3, ':');
        let len = parts.next().and_then(|l| l.parse::<u64>().ok());
        let mode = parts
            .next()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .filter(|m| *m <= 0o7777);
        let path = parts.next().map(PathBuf::from).filter(|p| p.is_absolute());
        match (path, mode, len) {
            (Some(path), Some(mode), Some(len)) if path.file_name().is_some() => {
                Ok(FileSpec { path, mode, len })
            }
            _ => Err(bad()),
        }
    }
}

/// Reads each file's bytes from `input` in order, then writes them: each to `PATH.new` (parent
/// directories made 0700 if missing), synced, then all renamed into place. Nothing is written
/// unless the input holds exactly the declared bytes.
pub fn write_files(mut input: impl Read, files: &[FileSpec]) -> Result<(), FilesError> {
    let mut contents = Vec::with_capacity(files.len());
    for f in files {
        let mut buf = Vec::new();
        let got = (&mut input)
            .take(f.len)
            .read_to_end(&mut buf)
            .map_err(|source| FilesError::Io {
                path: PathBuf::from("stdin"),
                source,
            })? as u64;
        if got < f.len {
            return Err(FilesError::Short {
                path: f.path.clone(),
                got,
                want: f.len,
            });
        }
        contents.push(buf);
    }
    let mut probe = [0u8; 1];
    if input.read(&mut probe).unwrap_or(0) > 0 {
        return Err(FilesError::Extra);
    }
    let staged: Vec<PathBuf> = files.iter().map(|f| staging_path(&f.path)).collect();
    let result = files
        .iter()
        .zip(&contents)
        .zip(&staged)
        .try_for_each(|((f, bytes), tmp)| stage(f, bytes, tmp));
    if let Err(e) = result {
        for tmp in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    for (f, tmp) in files.iter().zip(&staged) {
        std::fs::rename(tmp, &f.path).map_err(|source| FilesError::Io {
            path: f.path.clone(),
            source,
        })?;
    }
    // The renames themselves reach the disk with their directories.
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.path.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Ok(dir) = std::fs::File::open(d) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

fn stage(f: &FileSpec, bytes: &[u8], tmp: &Path) -> Result<(), FilesError> {
    let io = |source| FilesError::Io {
        path: f.path.clone(),
        source,
    };
    if let Some(parent) = f.path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io)?;
    }
    let _ = std::fs::remove_file(tmp);
    // Created with no access for others from the start (a token must never be readable, not
    // even between the create and the chmod); the exact mode is set once it is written.
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io)?;
    out.write_all(bytes).map_err(io)?;
    out.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(io)?;
    out.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            FileSpec::parse("/a/b:c/tok:0600:42").unwrap(),
            FileSpec {
                path: "/a/b:c/tok".into(),
                mode: 0o600,
                len: 42
            }
        );
        for bad in [
            "rel/path:0644:1",
            "/a:0999:1",
            "/a:0644:x",
            "/a:0644",
            "/:0644:1",
        ] {
            assert!(FileSpec::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn files_land_with_their_modes_and_nothing_on_short_or_long_input() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("etc/secret/token");
        let conf = dir.path().join("node.toml");
        let specs = [
            FileSpec {
                path: conf.clone(),
                mode: 0o644,
                len: 5,
            },
            FileSpec {
                path: tok.clone(),
                mode: 0o600,
                len: 3,
            },
        ];
        // Short: nothing written, not even the first file.
        assert!(matches!(
            write_files(&b"hellos"[..], &specs),
            Err(FilesError::Short {
                got: 1,
                want: 3,
                ..
            })
        ));
        assert!(!conf.exists() && !tok.exists());
        // Too long: refused the same way.
        assert!(matches!(
            write_files(&b"hellosecX"[..], &specs),
            Err(FilesError::Extra)
        ));
        assert!(!conf.exists());
        write_files(&b"hellosec"[..], &specs).unwrap();
        assert_eq!(std::fs::read(&conf).unwrap(), b"hello");
        assert_eq!(std::fs::read(&tok).unwrap(), b"sec");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(&conf), mode(&tok)), (0o644, 0o600));
        assert_eq!(mode(tok.parent().unwrap()), 0o700);
        // Replaced in place, no staging file left.
        write_files(&b"HELLOSEC"[..], &specs).unwrap();
        assert_eq!(std::fs::read(&conf).unwrap(), b"HELLO");
        assert!(!dir.path().join("node.toml.new").exists());
    }
}

/// Why a file could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The copy is not the file meant.
    #[error(
        "{src} has sha256 {got}, not the expected {want}: {dest} was left as it was; send the file again"
    )]
    Mismatch {
        /// The source.
        src: PathBuf,
        /// The destination.
        dest: PathBuf,
        /// Its hash.
        got: String,
        /// The expected hash.
        want: String,
    },
    /// I/O.
    #[error("{path}: {source}; {dest} was left as it was")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The destination.
        dest: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Copies `src` to `dest` with `mode` only when its sha256 is `sha256`: through `DEST.new`
/// (hashed while copied, synced), renamed over `dest` once it matched. A big file pushed to a
/// phone's staging area (the k3s binary phonectl brings from the laptop) lands whole or not at all.
pub fn install_file(src: &Path, dest: &Path, mode: u32, sha256: &str) -> Result<(), InstallError> {
    use sha2::Digest;
    let tmp = with_suffix(dest, ".new");
    let io_at = |path: &Path| {
        let path = path.to_owned();
        let dest = dest.to_owned();
        move |source| InstallError::Io { path, dest, source }
    };
    let result = (|| {
        if let Some(dir) = dest.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_at(dir))?;
        }
        let mut input = std::fs::File::open(src).map_err(io_at(src))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at(src)(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_at(&tmp))?;
        }
        let got = hex::encode(hasher.finalize());
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(InstallError::Mismatch {
                src: src.to_owned(),
                dest: dest.to_owned(),
                got,
                want: sha256.to_owned(),
            });
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&tmp))?;
        out.sync_all().map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_at(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
