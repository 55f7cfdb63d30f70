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
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{n}"));
        self.path.with_file_name(name)
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
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
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
}
