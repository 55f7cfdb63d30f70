//! Size-rotated log files: `NAME.log`, then `NAME.log.1` (newest) … `NAME.log.KEEP`. Rotation
//! happens at line boundaries where possible so a rotated file does not end mid-line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An append-only log file that rotates itself when it reaches `max_bytes`.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens (appending to) `dir/name`, creating `dir`.
    pub fn open(dir: &Path, name: &str, max_bytes: u64, keep: u32) -> io::Result<RotatingLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            max_bytes,
            keep,
            file,
            size,
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name of rotation `n` (1 = newest).
    pub fn rotated(&self, n: u32) -> PathBuf {
        rotation_name(&self.path, n)
    }

    /// Appends `data`, rotating first when it would overflow the current file.
    pub fn write_chunk(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let take = if data.len() <= room {
                data.len()
            } else {
                // Cut after the last newline that fits; a line longer than a file is cut hard.
                match data[..room].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if self.size > 0 => {
                        self.rotate()?;
                        continue;
                    }
                    None => room,
                }
            };
            self.file.write_all(&data[..take])?;
            self.size += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        shift_rotations(&self.path, self.keep)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Rotates `dir/name` once when it has grown past `max_bytes`. For logs written through a plain
/// file descriptor (the detached supervisor's own stderr), which cannot rotate while open: the
/// supervisor calls this each time it starts, so its log is bounded per start.
pub fn rotate_if_larger(dir: &Path, name: &str, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > max_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if keep == 0 {
        std::fs::remove_file(&path)?;
    } else {
        shift_rotations(&path, keep)?;
    }
    Ok(true)
}

fn rotation_name(path: &Path, n: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

/// `path.KEEP` is dropped, `path.N` becomes `path.N+1`, `path` becomes `path.1`.
fn shift_rotations(path: &Path, keep: u32) -> io::Result<()> {
    let _ = std::fs::remove_file(rotation_name(path, keep));
    for n in (1..keep).rev() {
        let from = rotation_name(path, n);
        if from.exists() {
            std::fs::rename(&from, rotation_name(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotation_name(path, 1))
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_size_and_keeps_n() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(d.path(), "a.log", 100, 2).unwrap();
        for i in 0..50 {
            log.write_chunk(format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        let cur = std::fs::read_to_string(d.path().join("a.log")).unwrap();
        let r1 = std::fs::read_to_string(d.path().join("a.log.1")).unwrap();
        assert!(d.path().join("a.log.2").exists());
        assert!(!d.path().join("a.log.3").exists());
        assert!(cur.len() <= 100 && r1.len() <= 100);
        assert!(cur.ends_with("line 0049\n"), "{cur}");
        assert!(r1.ends_with('\n') && r1.starts_with("line "));
    }

    #[test]
    fn rotate_if_larger_moves_only_an_oversized_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("s.log");
        std::fs::write(&log, "small\n").unwrap();
        assert!(!rotate_if_larger(d.path(), "s.log", 100, 2).unwrap());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "small\n");
        std::fs::write(&log, "x".repeat(101)).unwrap();
        std::fs::write(d.path().join("s.log.1"), "older").unwrap();
        assert!(rotate_if_larger(d.path(), "s.log", 100, 2).unwrap());
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("s.log.1"))
                .unwrap()
                .len(),
            101
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("s.log.2")).unwrap(),
            "older"
        );
        assert!(!rotate_if_larger(d.path(), "missing.log", 1, 2).unwrap());
    }
}
