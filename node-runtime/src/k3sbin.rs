//! The k3s binary: used as is when it matches the config's sha256 pin, else fetched from the
//! configured mirror (resumable, verified, renamed into place by `bootstrap::download`).

use bootstrap::NodeConfig;
use bootstrap::progress::{Event, Progress};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why there is no usable k3s binary.
#[derive(Debug, thiserror::Error)]
pub enum K3sBinError {
    /// No binary and nothing to fetch it from.
    #[error(
        "k3s binary {0} does not exist and node.toml has no k3s.url/k3s.sha256 to fetch it: install it there or set both keys"
    )]
    Missing(PathBuf),
    /// The binary differs from the pin and there is no URL.
    #[error(
        "k3s binary {path} has sha256 {got}, not the pinned k3s.sha256 {pin}, and k3s.url is not set: set k3s.url to a mirror of the pinned release"
    )]
    Differs {
        /// The binary.
        path: PathBuf,
        /// Its hash.
        got: String,
        /// The pin.
        pin: String,
    },
    /// The download failed (unreachable mirror, wrong file…); the message says which.
    #[error("k3s.url: {0}")]
    Download(#[from] bootstrap::download::DownloadError),
    /// I/O on the binary.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Makes sure `bin` (a path valid where we run now) is the pinned k3s; fetches it when needed.
/// Returns true when it was downloaded.
pub fn ensure_k3s(
    config: &NodeConfig,
    bin: &Path,
    progress: &dyn Progress,
) -> Result<bool, K3sBinError> {
    let io = |source| K3sBinError::Io {
        path: bin.to_owned(),
        source,
    };
    let urls: Vec<String> = config
        .k3s
        .mirror
        .iter()
        .chain(config.k3s.url.iter())
        .cloned()
        .collect();
    match (&config.k3s.sha256, urls.is_empty()) {
        (None, _) => {
            if bin.is_file() {
                Ok(false)
            } else {
                Err(K3sBinError::Missing(bin.to_owned()))
            }
        }
        (Some(pin), true) => {
            if !bin.is_file() {
                return Err(K3sBinError::Missing(bin.to_owned()));
            }
            let got = bootstrap::digest::sha256_file(bin).map_err(io)?;
            if &got != pin {
                return Err(K3sBinError::Differs {
                    path: bin.to_owned(),
                    got,
                    pin: pin.clone(),
                });
            }
            Ok(false)
        }
        (Some(pin), false) => {
            // The lab's mirror first (the LAN), upstream last (the uplink, maybe 4G).
            let fetched = bootstrap::download::fetch_pinned_from(
                &urls,
                pin,
                bin,
                bootstrap::download::K3S_MAX_BYTES,
                progress,
            )?;
            let mut perm = std::fs::metadata(bin).map_err(io)?.permissions();
            if perm.mode() & 0o111 != 0o111 {
                perm.set_mode(0o755);
                std::fs::set_permissions(bin, perm).map_err(io)?;
            }
            if !fetched.already_present {
                progress.event(Event::Note(format!(
                    "k3s binary {} fetched ({} bytes{})",
                    bin.display(),
                    fetched.size,
                    if fetched.resumed { ", resumed" } else { "" }
                )));
            }
            Ok(!fetched.already_present)
        }
    }
}

/// Puts the pinned airgap images archive into k3s' images dir (`<data_dir>/agent/images/`,
/// a path valid where we run now) from the lab's mirror, so that k3s imports the system images
/// at start instead of pulling them over the uplink. Best effort: returns what to tell the
/// user, and a failure only means k3s pulls the images as it would without the archive.
pub fn ensure_airgap(config: &NodeConfig, progress: &dyn Progress) -> Option<String> {
    let airgap = config.k3s.airgap.as_ref()?;
    let dest = config
        .k3s
        .data_dir
        .join("agent/images")
        .join(airgap.file_name());
    if let Some(dir) = dest.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Some(format!(
            "airgap images not placed ({}: {e}); k3s pulls the images it needs",
            dir.display()
        ));
    }
    match bootstrap::download::fetch_pinned_capped(
        &airgap.url,
        &airgap.sha256,
        &dest,
        bootstrap::download::AIRGAP_MAX_BYTES,
        progress,
    ) {
        Ok(f) if f.already_present => None,
        Ok(f) => Some(format!(
            "airgap images {} fetched from {} ({} bytes{}): k3s imports them at start",
            dest.display(),
            airgap.url,
            f.size,
            if f.resumed { ", resumed" } else { "" }
        )),
        Err(e) => Some(format!(
            "airgap images not fetched ({e}); k3s pulls the images it needs"
        )),
    }
}
