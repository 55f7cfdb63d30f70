//! bmap 2.0 files (the format of bmaptool and Raspberry Pi OS images): which 4 KiB blocks of a
//! sparse image hold data, with a sha256 per range, so a flasher writes only those. Generated
//! from the image's holes (`SEEK_DATA` / `SEEK_HOLE`), so make it before compressing the image.

use crate::error::{ImageError, io};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Feeds `len` bytes at `off` of `f` to every hasher.
fn hash_span_at(f: &File, off: u64, len: u64, hashers: &mut [&mut Sha256]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (buf.len() as u64).min(len - done) as usize;
        f.read_exact_at(&mut buf[..n], off + done)?;
        for h in hashers.iter_mut() {
            h.update(&buf[..n]);
        }
        done += n as u64;
    }
    Ok(())
}

/// Block size of the map.
pub const BLOCK_SIZE: u64 = 4096;

/// A parsed, checked bmap.
#[derive(Debug, Clone, PartialEq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the image.
    pub blocks_count: u64,
    /// Ranges of mapped blocks (first, last inclusive) with their sha256.
    pub ranges: Vec<Range>,
}

/// A run of mapped blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// sha256 of the bytes of these blocks (the last block cut at the image end).
    pub sha256: String,
}

impl Range {
    /// Byte offset and length of the range within an image of `image_size` bytes.
    pub fn span(&self, block_size: u64, image_size: u64) -> (u64, u64) {
        let start = self.first * block_size;
        let end = ((self.last + 1) * block_size).min(image_size);
        (start, end - start)
    }
}

impl Bmap {
    /// Mapped blocks.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes a flasher writes.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.span(self.block_size, self.image_size).1)
            .sum()
    }

    /// Scans `image` for data ranges and hashes them.
    pub fn from_image(image: &Path) -> Result<Bmap, ImageError> {
        Ok(Self::from_image_with_sha256(image)?.0)
    }

    /// [`from_image`](Self::from_image), and the sha256 of the whole image. The data is read
    /// once per hash, on two threads: one hashes each range, the other the whole image (holes
    /// hashed as zeros without being read).
    pub fn from_image_with_sha256(image: &Path) -> Result<(Bmap, String), ImageError> {
        let f = File::open(image).map_err(io(image))?;
        let size = f.metadata().map_err(io(image))?.len();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (start, end) in data_segments(&f, size).map_err(io(image))? {
            // Round out to whole blocks; neighbouring segments that touch the same block merge.
            let first = start / BLOCK_SIZE;
            let last = (end - 1) / BLOCK_SIZE;
            match ranges.last_mut() {
                Some((_, l)) if *l + 1 >= first => *l = (*l).max(last),
                _ => ranges.push((first, last)),
            }
        }
        let spans: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(first, last)| {
                Range {
                    first,
                    last,
                    sha256: String::new(),
                }
                .span(BLOCK_SIZE, size)
            })
            .collect();
        let (whole, per_range) = std::thread::scope(|s| {
            let whole = s.spawn(|| -> std::io::Result<String> {
                let mut h = Sha256::new();
                let zeros = vec![0u8; 1 << 20];
                let mut pos = 0u64;
                let feed_zeros = |h: &mut Sha256, mut n: u64| {
                    while n > 0 {
                        let k = n.min(zeros.len() as u64) as usize;
                        h.update(&zeros[..k]);
                        n -= k as u64;
                    }
                };
                for &(off, len) in &spans {
                    feed_zeros(&mut h, off - pos);
                    hash_span_at(&f, off, len, &mut [&mut h])?;
                    pos = off + len;
                }
                feed_zeros(&mut h, size - pos);
                Ok(hex::encode(h.finalize()))
            });
            let per_range = spans
                .iter()
                .map(|&(off, len)| {
                    let mut h = Sha256::new();
                    hash_span_at(&f, off, len, &mut [&mut h]).map(|_| hex::encode(h.finalize()))
                })
                .collect::<std::io::Result<Vec<String>>>();
            (whole.join().expect("hash thread"), per_range)
        });
        let out = ranges
            .into_iter()
            .zip(per_range.map_err(io(image))?)
            .map(|((first, last), sha256)| Range {
                first,
                last,
                sha256,
            })
            .collect();
        Ok((
            Bmap {
                image_size: size,
                block_size: BLOCK_SIZE,
                blocks_count: size.div_ceil(BLOCK_SIZE),
                ranges: out,
            },
            whole.map_err(io(image))?,
        ))
    }

    /// The bmap 2.0 XML, with `BmapFileChecksum` filled in.
    pub fn to_xml(&self) -> String {
        let zeros = "0".repeat(64);
        let body = |checksum: &str| {
            let mut s = String::new();
            s.push_str("<?xml version=\"1.0\" ?>\n");
            s.push_str("<!-- Written by armfleet imagegen. Block map of the image: only the ranges\n     below hold data; flash with `imagegen flash` or `bmaptool copy`. -->\n");
            s.push_str("<bmap version=\"2.0\">\n");
            s.push_str(&format!(
                "    <ImageSize> {} </ImageSize>\n",
                self.image_size
            ));
            s.push_str(&format!(
                "    <BlockSize> {} </BlockSize>\n",
                self.block_size
            ));
            s.push_str(&format!(
                "    <BlocksCount> {} </BlocksCount>\n",
                self.blocks_count
            ));
            s.push_str(&format!(
                "    <MappedBlocksCount> {} </MappedBlocksCount>\n",
                self.mapped_blocks()
            ));
            s.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
            s.push_str(&format!(
                "    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n"
            ));
            s.push_str("    <BlockMap>\n");
            for r in &self.ranges {
                let range = if r.first == r.last {
                    r.first.to_string()
                } else {
                    format!("{}-{}", r.first, r.last)
                };
                s.push_str(&format!(
                    "        <Range chksum=\"{}\"> {range} </Range>\n",
                    r.sha256
                ));
            }
            s.push_str("    </BlockMap>\n</bmap>\n");
            s
        };
        let sum = bootstrap::digest::sha256_hex(body(&zeros).as_bytes());
        body(&sum)
    }

    /// Parses and checks a bmap 2.0 (or 1.4) XML with sha256 checksums, including its
    /// `BmapFileChecksum`; `origin` names the file in errors.
    pub fn parse(xml: &str, origin: &Path) -> Result<Bmap, ImageError> {
        let bad = |m: String| ImageError::BadImage {
            path: origin.to_owned(),
            message: format!("{m}: regenerate the .bmap with the image"),
        };
        let tag = |name: &str| -> Result<String, ImageError> {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let a = xml.find(&open).ok_or_else(|| bad(format!("no <{name}>")))? + open.len();
            let b = xml[a..]
                .find(&close)
                .ok_or_else(|| bad(format!("<{name}> not closed")))?
                + a;
            Ok(xml[a..b].trim().to_owned())
        };
        let num = |name: &str| -> Result<u64, ImageError> {
            tag(name)?
                .parse()
                .map_err(|_| bad(format!("<{name}> is not a number")))
        };
        if !xml.contains("<bmap version=\"2.") && !xml.contains("<bmap version=\"1.4") {
            return Err(bad("not a bmap 2.0 file".into()));
        }
        let ctype = tag("ChecksumType")?;
        if ctype != "sha256" {
            return Err(bad(format!(
                "checksum type {ctype} is not supported (sha256 only)"
            )));
        }
        let file_sum = tag("BmapFileChecksum")?;
        let zeroed = xml.replacen(&file_sum, &"0".repeat(file_sum.len()), 1);
        if bootstrap::digest::sha256_hex(zeroed.as_bytes()) != file_sum {
            return Err(bad(
                "BmapFileChecksum does not match: the .bmap is damaged or was edited".into(),
            ));
        }
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        let blocks_count = num("BlocksCount")?;
        if block_size == 0 || blocks_count != image_size.div_ceil(block_size) {
            return Err(bad(
                "BlockSize and BlocksCount do not match ImageSize".into()
            ));
        }
        let mut ranges = Vec::new();
        let mut rest = xml;
        while let Some(i) = rest.find("<Range") {
            rest = &rest[i + 6..];
            let end = rest
                .find("</Range>")
                .ok_or_else(|| bad("<Range> not closed".into()))?;
            let el = &rest[..end];
            let sum = el
                .split("chksum=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .ok_or_else(|| bad("a <Range> has no chksum".into()))?;
            let text = el.split('>').nth(1).unwrap_or("").trim();
            let (a, b) = match text.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (text, text),
            };
            let first: u64 = a.parse().map_err(|_| bad(format!("bad range {text:?}")))?;
            let last: u64 = b.parse().map_err(|_| bad(format!("bad range {text:?}")))?;
            if last < first || last >= blocks_count {
                return Err(bad(format!("range {text:?} is outside the image")));
            }
            if !bootstrap::node_config::is_sha256_hex(sum) {
                return Err(bad(format!("range {text:?} has a malformed sha256")));
            }
            ranges.push(Range {
                first,
                last,
                sha256: sum.to_owned(),
            });
            rest = &rest[end..];
        }
        Ok(Bmap {
            image_size,
            block_size,
            blocks_count,
            ranges,
        })
    }
}

/// sha256 of `len` bytes at `off`.
pub(crate) fn hash_span<R: Read + Seek>(
    f: &mut R,
    off: u64,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<String> {
    f.seek(SeekFrom::Start(off))?;
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// Data segments (start, end) of a file, from `SEEK_DATA` / `SEEK_HOLE`; the whole file when
/// the filesystem does not report holes.
pub fn data_segments(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(vec![(0, size)]);
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.push((data as u64, (hole as u64).min(size)));
        pos = hole;
    }
    Ok(out)
}
