//! A byte window into a larger file (one partition of a disk image), so filesystem code that
//! wants a whole `Read + Write + Seek` device can work on a partition in place.

use std::io::{Read, Seek, SeekFrom, Write};

/// `len` bytes of `inner` starting at `base`.
pub struct Window<F> {
    inner: F,
    base: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Window<F> {
    /// A window of `len` bytes at `base`.
    pub fn new(inner: F, base: u64, len: u64) -> Self {
        Window {
            inner,
            base,
            len,
            pos: 0,
        }
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.base + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.base + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<F> Seek for Window<F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => o as i128,
            SeekFrom::End(o) => self.len as i128 + o as i128,
            SeekFrom::Current(o) => self.pos as i128 + o as i128,
        };
        if new < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
