//! Small helpers: running tools, hashing, locking, atomic writes.

use crate::error::{ImageError, io};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// The Debian package that provides a tool, for "install X" messages.
fn package_of_tool(tool: &str) -> &'static str {
    match tool {
        "mke2fs" | "debugfs" | "e2fsck" => "e2fsprogs",
        "depmod" => "kmod",
        "dpkg-deb" => "dpkg",
        "apt-get" => "apt",
        "sfdisk" => "fdisk",
        _ => "the package providing it",
    }
}

/// Runs a command to completion; stdout on success, else an error carrying stderr.
pub(crate) fn run(cmd: &mut Command, tool: &str) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::ToolMissing {
                tool: tool.to_owned(),
                package: package_of_tool(tool).to_owned(),
            }
        } else {
            ImageError::Tool {
                tool: tool.to_owned(),
                message: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err
            .trim()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ");
        return Err(ImageError::Tool {
            tool: tool.to_owned(),
            message: if msg.is_empty() {
                format!("exit status {}", out.status)
            } else {
                msg
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sha256 of a file, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// An exclusive `flock` held until dropped (serialises cache fills between processes).
pub(crate) struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, ImageError> {
        let file = std::fs::File::create(path).map_err(io(path))?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(path)(std::io::Error::last_os_error()));
        }
        Ok(FileLock(file))
    }
}

/// Parses `2G`, `1536M`, `1073741824` into bytes.
pub fn parse_size(s: &str) -> Result<u64, ImageError> {
    let t = s.trim();
    let bad = || ImageError::BadSize(s.to_owned());
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim_end_matches(['B', 'b']).trim_end_matches(['i']);
            let m = match unit.to_ascii_uppercase().as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1536M").unwrap(), 1536 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("two").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5X").is_err());
    }
}
