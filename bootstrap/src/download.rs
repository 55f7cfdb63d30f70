//! Pinned downloads: a file is used only once its sha256 matches the pin.
//!
//! The body goes to `DEST.part` and is renamed to `DEST` only after the hash matched, so `DEST`
//! is either absent, the old file, or the verified new one — never half of something. A `.part`
//! left by a cut connection is resumed with an HTTP `Range` request (by this call's own retries
//! or the next run); a server that ignores `Range` simply sends the whole file again.

use crate::digest::{FileLock, copy_into_hasher, sync_parent};
use crate::progress::{Event, Progress, human_bytes};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Attempts per call: the first request plus resumes after a cut connection.
const ATTEMPTS: u32 = 4;

/// The most [`fetch_pinned`] writes for one file: far above anything armfleet pins (a Debian base
/// tarball is ~300 MB), low enough that a broken or hostile mirror streaming without end cannot
/// fill the disk before the hash check would refuse what it sent.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The cap for a k3s binary (k3s-arm64 is about 70 MB).
pub const K3S_MAX_BYTES: u64 = 256 << 20;

/// The most a k3s airgap images archive may be (the arm64 one is a few hundred MB).
pub const AIRGAP_MAX_BYTES: u64 = 2 << 30;

/// What [`fetch_pinned`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The verified file (the `dest` given).
    pub path: PathBuf,
    /// Its sha256 (equal to the pin).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Body bytes received over the network by this call (0 when already in place).
    pub transferred: u64,
    /// True when `dest` was already there with the pinned hash and nothing was fetched.
    pub already_present: bool,
    /// True when a previous partial download was continued rather than started over.
    pub resumed: bool,
}

/// Why a pinned download failed. Each message names the URL (and the file where it matters).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The pin is not a sha256.
    #[error("the sha256 pin for {url} is {pin:?}, which is not 64 hex digits: fix the pin")]
    BadPin {
        /// The URL.
        url: String,
        /// The pin as given.
        pin: String,
    },
    /// The URL is neither http:// nor https://.
    #[error("cannot download {url}: only http:// and https:// URLs are supported")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// The server sent something whose hash is not the pin. The partial file was deleted.
    #[error(
        "{url} gave sha256 {got}, but the pin is {expected}: the file was deleted and nothing replaced; check the mirror or the pin"
    )]
    Mismatch {
        /// The URL.
        url: String,
        /// sha256 of what it served.
        got: String,
        /// The pin.
        expected: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}: check the URL, or that the mirror serves this file")]
    Status {
        /// The URL.
        url: String,
        /// HTTP status code.
        status: u16,
    },
    /// Connecting or receiving failed, even after retries. What arrived is kept for a resume.
    #[error(
        "downloading {url} failed after {attempts} attempts: {reason}; {kept} bytes are kept in {part} and the next run resumes from there"
    )]
    Transfer {
        /// The URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// The last error.
        reason: String,
        /// The partial file.
        part: PathBuf,
        /// Its size.
        kept: u64,
    },
    /// The server sends more than the file can be. The partial file was deleted.
    #[error(
        "{url} sends more than {limit} bytes, more than the pinned file can be: the download was stopped and deleted; check the mirror's URL"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The HTTP client could not be built (a TLS set-up problem).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Installs rustls' ring provider once per process (reqwest is built without a default one so
/// that static aarch64 builds need no cmake). "Already installed" is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The blocking HTTP client armfleet uses for pinned downloads.
pub(crate) fn http_client() -> Result<reqwest::blocking::Client, DownloadError> {
    install_crypto_provider();
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        // Per read, not for the whole body: a 70 MB k3s binary on a slow uplink takes minutes.
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("armfleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DownloadError::Client(error_chain(&e)))
}

/// `DEST.part`: where the body goes until its hash is checked.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".part");
    dest.with_file_name(name)
}

/// `.DEST.lock`: held by whoever fills `DEST` (its `.part` included).
pub(crate) fn lock_path(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(".lock");
    dest.with_file_name(name)
}

/// Downloads `url` to `dest` unless `dest` already has sha256 `sha256`; resumes a partial
/// download; verifies the hash; renames into place. Blocking. At most [`DEFAULT_MAX_BYTES`].
pub fn fetch_pinned(
    url: &str,
    sha256: &str,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Fetched, DownloadError> {
    fetch_pinned_capped(url, sha256, dest, DEFAULT_MAX_BYTES, progress)
}

/// [`fetch_pinned_capped`] from the first of `urls` that gives the pinned file (a lab mirror
/// first, upstream last): a source that fails or serves something else is said as a note and the
/// next one is tried. The error of the last one is returned when none gives it.
pub fn fetch_pinned_from(
    urls: &[String],
    sha256: &str,
    dest: &Path,
    max_bytes: u64,
    progress: &dyn Progress,
) -> Result<Fetched, DownloadError> {
    let mut last = None;
    for (i, url) in urls.iter().enumerate() {
        match fetch_pinned_capped(url, sha256, dest, max_bytes, progress) {
            Ok(f) => return Ok(f),
            Err(e) => {
                if let Some(next) = urls.get(i + 1) {
                    progress.event(Event::Note(format!("{e}; trying {next}")));
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| DownloadError::BadUrl {
        url: "(no URL given)".into(),
    }))
}

/// [`fetch_pinned`] with its own size cap: a server announcing or sending more than `max_bytes`
/// is cut off and what it sent deleted.
pub fn fetch_pinned_capped(
    url: &str,
    sha256: &str,
    dest: &Path,
    max_bytes: u64,
    progress: &dyn Progress,
) -> Result<Fetched, DownloadError> {
    let pin = sha256.to_ascii_lowercase();
    if !crate::node_config::is_sha256_hex(&pin) {
        return Err(DownloadError::BadPin {
            url: url.to_owned(),
            pin: sha256.to_owned(),
        });
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DownloadError::BadUrl {
            url: url.to_owned(),
        });
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| url.to_owned());
    let step = format!("download {name}");
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // Two tools filling the same cache must not write the same .part at once.
    let lock = lock_path(dest);
    let _lock = FileLock::acquire(&lock).map_err(io_err(&lock))?;

    if let Ok(meta) = std::fs::metadata(dest)
        && meta.is_file()
    {
        let have = crate::digest::sha256_file(dest).map_err(io_err(dest))?;
        if have == pin {
            progress.event(Event::StepSkipped {
                step,
                reason: "already present (sha256 matches)".into(),
            });
            return Ok(Fetched {
                path: dest.to_owned(),
                sha256: have,
                size: meta.len(),
                transferred: 0,
                already_present: true,
                resumed: false,
            });
        }
        tracing::info!(dest = %dest.display(), "present but its sha256 differs from the pin; downloading again");
    }

    let client = http_client()?;
    let part = part_path(dest);
    let started = Instant::now();
    let mut transferred = 0u64;
    let mut resumed = false;
    let mut last_error = String::new();
    let mut restarted_fresh = false;
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            // A short pause lets a flapping uplink come back; the resume makes retries cheap.
            std::thread::sleep(Duration::from_millis(250 * u64::from(attempt - 1)));
        }
        match fetch_once(&client, url, &part, &step, max_bytes, progress) {
            Ok(outcome) => {
                transferred += outcome.received;
                resumed |= outcome.resumed;
                let size = std::fs::metadata(&part).map_err(io_err(&part))?.len();
                if outcome.sha256 != pin && outcome.resumed && !restarted_fresh {
                    // The .part may be left from an older file at this path: start over once.
                    let _ = std::fs::remove_file(&part);
                    restarted_fresh = true;
                    last_error = "a resumed download did not match; started over".into();
                    continue;
                }
                if outcome.sha256 != pin {
                    let _ = std::fs::remove_file(&part);
                    return Err(DownloadError::Mismatch {
                        url: url.to_owned(),
                        got: outcome.sha256,
                        expected: pin,
                    });
                }
                std::fs::rename(&part, dest).map_err(io_err(dest))?;
                sync_parent(dest);
                progress.event(Event::StepFinished {
                    step,
                    detail: format!(
                        "{} in {:.1} s{}",
                        human_bytes(size),
                        started.elapsed().as_secs_f64(),
                        if resumed { " (resumed)" } else { "" }
                    ),
                });
                return Ok(Fetched {
                    path: dest.to_owned(),
                    sha256: pin,
                    size,
                    transferred,
                    already_present: false,
                    resumed,
                });
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry { reason, received }) => {
                transferred += received;
                tracing::warn!(url, attempt, %reason, "download interrupted; will resume");
                last_error = reason;
            }
        }
    }
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    Err(DownloadError::Transfer {
        url: url.to_owned(),
        attempts: ATTEMPTS,
        reason: last_error,
        part,
        kept,
    })
}

struct Outcome {
    sha256: String,
    received: u64,
    resumed: bool,
}

enum Failure {
    Fatal(DownloadError),
    Retry { reason: String, received: u64 },
}

/// One request: continue `part` if it has bytes and the server honours `Range`, else start over.
fn fetch_once(
    client: &reqwest::blocking::Client,
    url: &str,
    part: &Path,
    step: &str,
    max_bytes: u64,
    progress: &dyn Progress,
) -> Result<Outcome, Failure> {
    let too_large = || {
        let _ = std::fs::remove_file(part);
        Failure::Fatal(DownloadError::TooLarge {
            url: url.to_owned(),
            limit: max_bytes,
        })
    };
    let fatal_io = |source: io::Error| {
        Failure::Fatal(DownloadError::Io {
            path: part.to_owned(),
            source,
        })
    };
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().map_err(|e| Failure::Retry {
        reason: error_chain(&e),
        received: 0,
    })?;
    let status = response.status().as_u16();
    let (mut file, mut hasher, start) = match status {
        206 if have > 0 && content_range_start(&response) == Some(have) => {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(part)
                .map_err(fatal_io)?;
            let mut hasher = Sha256::new();
            file.seek(io::SeekFrom::Start(0)).map_err(fatal_io)?;
            let n = copy_into_hasher(&mut (&mut file).take(have), &mut hasher).map_err(fatal_io)?;
            if n != have {
                return Err(Failure::Retry {
                    reason: format!("{} shrank while resuming", part.display()),
                    received: 0,
                });
            }
            (file, hasher, have)
        }
        // Range not satisfiable: the .part is as long as the file or longer; it will be judged
        // by its hash, and a wrong one is deleted by the caller.
        416 if have > 0 => {
            let mut file = File::open(part).map_err(fatal_io)?;
            let mut hasher = Sha256::new();
            copy_into_hasher(&mut file, &mut hasher).map_err(fatal_io)?;
            return Ok(Outcome {
                sha256: hex::encode(hasher.finalize()),
                received: 0,
                resumed: true,
            });
        }
        200 | 206 => {
            // 206 with an unexpected range is treated as unusable: start over without Range.
            if status == 206 {
                let _ = std::fs::remove_file(part);
                return Err(Failure::Retry {
                    reason: "the server answered a resume with the wrong byte range".into(),
                    received: 0,
                });
            }
            let file = File::create(part).map_err(fatal_io)?;
            (file, Sha256::new(), 0)
        }
        _ => {
            return Err(Failure::Fatal(DownloadError::Status {
                url: url.to_owned(),
                status,
            }));
        }
    };
    let total = response.content_length().map(|len| len + start);
    if total.is_some_and(|t| t > max_bytes) {
        return Err(too_large());
    }
    progress.event(Event::StepStarted {
        step: step.to_owned(),
        total,
    });
    if start > 0 {
        progress.event(Event::Note(format!(
            "resuming {url} from byte {start} ({})",
            human_bytes(start)
        )));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    let mut last_report = Instant::now();
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_data();
                return Err(Failure::Retry {
                    reason: e.to_string(),
                    received,
                });
            }
        };
        if start + received + n as u64 > max_bytes {
            drop(file);
            return Err(too_large());
        }
        file.write_all(&buf[..n]).map_err(fatal_io)?;
        hasher.update(&buf[..n]);
        received += n as u64;
        if last_report.elapsed() >= Duration::from_millis(100) {
            last_report = Instant::now();
            progress.event(Event::Bytes {
                step: step.to_owned(),
                done: start + received,
            });
        }
    }
    if let Some(total) = total
        && start + received != total
    {
        let _ = file.sync_data();
        return Err(Failure::Retry {
            reason: format!(
                "the connection closed after {} of {total} bytes",
                start + received
            ),
            received,
        });
    }
    file.sync_all().map_err(fatal_io)?;
    progress.event(Event::Bytes {
        step: step.to_owned(),
        done: start + received,
    });
    Ok(Outcome {
        sha256: hex::encode(hasher.finalize()),
        received,
        resumed: start > 0,
    })
}

/// The first byte position of a `Content-Range: bytes A-B/N` header.
fn content_range_start(response: &reqwest::blocking::Response) -> Option<u64> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// reqwest's Display hides the cause ("error sending request"); join the chain into one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}
