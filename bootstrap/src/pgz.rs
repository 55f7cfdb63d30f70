//! Parallel gzip, the way pigz does it: the input is cut into fixed 1 MiB chunks, each chunk is
//! deflated on its own thread (primed with the previous 32 KiB of input as dictionary, so the
//! ratio stays that of one stream) and ends on a sync flush, so the pieces join into **one** gzip
//! member that any decoder reads (including flate2's single-member `GzDecoder`). The CRC32s of the
//! chunks are combined.
//!
//! The output depends only on the input and the level, never on the thread count or timing:
//! chunk boundaries and dictionaries are fixed.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const DICT: usize = 32 * 1024;

struct Job {
    index: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

struct Done {
    index: u64,
    deflated: Vec<u8>,
    crc: Crc,
}

/// A `Write` that gzips into `inner` using `threads` worker threads. Call [`finish`](Self::finish).
pub struct ParallelGzWriter<W: Write> {
    inner: Option<W>,
    level: u32,
    buf: Vec<u8>,
    dict: Vec<u8>,
    next_index: u64,
    next_to_write: u64,
    pending: BTreeMap<u64, Done>,
    crc: Crc,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<io::Result<Done>>,
    workers: Vec<JoinHandle<()>>,
    header_written: bool,
}

impl<W: Write> ParallelGzWriter<W> {
    /// A writer with `threads` workers (at least 1) at gzip `level` (0-9).
    pub fn new(inner: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = match job_rx.lock().map(|rx| rx.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        let result = deflate_chunk(&job, level);
                        if done_tx.send(result).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelGzWriter {
            inner: Some(inner),
            level,
            buf: Vec::with_capacity(CHUNK),
            dict: Vec::new(),
            next_index: 0,
            next_to_write: 0,
            pending: BTreeMap::new(),
            crc: Crc::new(),
            in_flight: 0,
            // Bounded: memory stays a few MiB per thread whatever the input size.
            max_in_flight: threads * 2,
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            header_written: false,
        }
    }

    /// A writer using every available core at level 6 (gzip's default).
    pub fn with_default_threads(inner: W) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self::new(inner, 6, threads)
    }

    /// The compression level.
    pub fn level(&self) -> u32 {
        self.level
    }

    fn inner(&mut self) -> &mut W {
        self.inner.as_mut().expect("writer used after finish")
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // magic, deflate, no flags, mtime 0, no extra flags, OS unknown: reproducible.
            let xfl = match self.level {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            self.inner()
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        self.write_header()?;
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let dict = std::mem::take(&mut self.dict);
        self.dict = data[data.len().saturating_sub(DICT)..].to_vec();
        let job = Job {
            index: self.next_index,
            data,
            dict,
            last,
        };
        self.next_index += 1;
        self.in_flight += 1;
        self.jobs
            .as_ref()
            .expect("jobs channel open")
            .send(job)
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        Ok(())
    }

    /// Waits for one finished chunk and writes out every chunk that is next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let done = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker threads stopped"))??;
        self.in_flight -= 1;
        self.pending.insert(done.index, done);
        while let Some(done) = self.pending.remove(&self.next_to_write) {
            self.inner().write_all(&done.deflated)?;
            self.crc.combine(&done.crc);
            self.next_to_write += 1;
        }
        Ok(())
    }

    /// Compresses what is buffered, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        let crc = self.crc.sum();
        let size = self.crc.amount();
        let mut inner = self.inner.take().expect("finish once");
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&size.to_le_bytes())?;
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunk boundaries must not depend on when callers flush, or the bytes would vary.
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn deflate_chunk(job: &Job, level: u32) -> io::Result<Done> {
    let mut compress = Compress::new(Compression::new(level), false);
    if !job.dict.is_empty() {
        compress
            .set_dictionary(&job.dict)
            .map_err(io::Error::other)?;
    }
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    loop {
        let consumed = compress.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let status = compress
            .compress_vec(&job.data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = compress.total_in() as usize == job.data.len();
        let room_left = out.capacity() > out.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and deflate stopped with room left.
            Status::Ok | Status::BufError if !job.last && all_in && room_left => break,
            Status::Ok | Status::BufError => continue,
        }
    }
    let mut crc = Crc::new();
    crc.update(&job.data);
    Ok(Done {
        index: job.index,
        deflated: out,
        crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like with varying numbers.
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} value {}\n", i * 7919 % 1013).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn gz(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), 6, threads);
        // Odd write sizes: chunking must not depend on them.
        for piece in data.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn output_is_one_member_any_decoder_reads_and_independent_of_threads() {
        for len in [0, 1, 1000, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            let data = sample(len);
            let one = gz(&data, 1);
            let four = gz(&data, 4);
            assert_eq!(one, four, "len {len}");
            // Single-member decoder must see everything.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
            if len > 1000 {
                assert!(one.len() < data.len() / 3, "len {len}: {}", one.len());
            }
        }
    }

    #[test]
    fn system_gzip_accepts_it() {
        let data = sample(2 * CHUNK + 99);
        let packed = gz(&data, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &packed).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .output()
            .expect("run gzip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
