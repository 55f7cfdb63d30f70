//! Small helpers: running tools, atomic writes, sizes.

use crate::error::{ImageError, io};
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

/// Writes `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Copies `from` to `to` through a temporary file beside `to` and a rename: `to` is either
/// absent, as it was, or complete.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<(), ImageError> {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = to.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(to)(e)
    })
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
