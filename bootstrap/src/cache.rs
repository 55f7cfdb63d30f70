//! Where armfleet keeps what it downloads and builds: `$ARMFLEET_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/armfleet`, else `~/.cache/armfleet`.
//!
//! Layout: `downloads/` (pinned artifacts, named `<sha256 prefix>-<file name>`), `base/` (Debian
//! base tarballs), `rootfs/<input hash>/` (built node rootfs + manifest).

use crate::download::{DownloadError, Fetched, fetch_pinned};
use crate::progress::Progress;
use std::path::{Path, PathBuf};

/// Environment variable overriding the cache directory.
pub const CACHE_ENV: &str = "ARMFLEET_CACHE_DIR";

/// The cache directory was not found or cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `ARMFLEET_CACHE_DIR`, `XDG_CACHE_HOME` nor `HOME` is set.
    #[error(
        "no cache directory: set {CACHE_ENV} (or XDG_CACHE_HOME or HOME) to a writable directory"
    )]
    NoHome,
    /// The directory cannot be created.
    #[error(
        "cannot create the cache directory {path}: {source}; set {CACHE_ENV} to a writable directory"
    )]
    Create {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The cache root, from the environment (not created).
pub fn cache_root() -> Result<PathBuf, CacheError> {
    cache_root_from(|name| std::env::var_os(name))
}

/// The cache root given an environment lookup (tests pass their own).
pub fn cache_root_from(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, CacheError> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(CACHE_ENV) {
        return Ok(dir);
    }
    // XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("armfleet"));
    }
    match non_empty("HOME") {
        Some(home) => Ok(home.join(".cache").join("armfleet")),
        None => Err(CacheError::NoHome),
    }
}

/// `<cache root>/<sub>`, created.
pub fn cache_subdir(sub: &str) -> Result<PathBuf, CacheError> {
    let dir = cache_root()?.join(sub);
    std::fs::create_dir_all(&dir).map_err(|source| CacheError::Create {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Path in `dir` for a pinned artifact: the file name of the URL prefixed with the pin, so two
/// versions never overwrite each other and a changed pin means a new file.
pub fn artifact_path(dir: &Path, url: &str, sha256: &str) -> PathBuf {
    let name = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("artifact");
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let prefix = &sha256[..sha256.len().min(16)];
    dir.join(format!("{prefix}-{safe}"))
}

/// Fetches a pinned artifact into `dir` (usually `cache_subdir("downloads")`).
pub fn fetch_into(
    dir: &Path,
    url: &str,
    sha256: &str,
    progress: &dyn Progress,
) -> Result<Fetched, DownloadError> {
    fetch_pinned(url, sha256, &artifact_path(dir, url, sha256), progress)
}

/// Why the pinned k3s binary cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The topology does not pin k3s.
    #[error(
        "{origin}: the k3s binary is not pinned: set cluster.k3s.url and cluster.k3s.sha256 (from the release's sha256sum-arm64.txt)"
    )]
    NotPinned {
        /// The topology file.
        origin: String,
    },
    /// No cache directory.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The download failed or did not match its pin.
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// The topology's pinned k3s arm64 binary, from the cache or downloaded into `<cache>/downloads`
/// (from the lab's mirror first when the topology names one, then upstream).
pub fn fetch_k3s(
    topology: &crate::topology::Topology,
    progress: &dyn Progress,
) -> Result<Fetched, ArtifactError> {
    let urls = topology.k3s_fetch_urls();
    let (Some(upstream), Some(sha256)) = (urls.last(), &topology.cluster.k3s.sha256) else {
        return Err(ArtifactError::NotPinned {
            origin: topology.origin.clone(),
        });
    };
    let dir = cache_subdir("downloads")?;
    // Cached under the upstream name whichever source gave it: the pin says it is the same file.
    let dest = artifact_path(&dir, upstream, sha256);
    Ok(crate::download::fetch_pinned_from(
        &urls,
        sha256,
        &dest,
        crate::download::K3S_MAX_BYTES,
        progress,
    )?)
}

/// File name of the static aarch64 node-runtime when it sits next to the laptop tools or in the cache.
pub const NODE_RUNTIME_FILE: &str = "node-runtime-aarch64";

/// Finds the static aarch64 `node-runtime` that `phonectl` pushes and `imagegen` bakes in:
/// `explicit` (a flag or `ARMFLEET_NODE_RUNTIME`), else `node-runtime-aarch64` next to the running
/// binary, else the cross-build output of a source checkout
/// (`<target>/aarch64-unknown-linux-musl/release/node-runtime` beside `<target>/release/`), else
/// `<cache>/node-runtime-aarch64`. The error lists where it looked and how to get one.
pub fn find_node_runtime(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!(
                "node-runtime {}: no such file (build it with scripts/cross-build.sh)",
                p.display()
            ))
        };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        tried.push(dir.join(NODE_RUNTIME_FILE));
        if let Some(target) = dir.parent() {
            tried.push(target.join("aarch64-unknown-linux-musl/release/node-runtime"));
        }
    }
    if let Ok(cache) = cache_root() {
        tried.push(cache.join(NODE_RUNTIME_FILE));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no aarch64 node-runtime found (tried {}): build it with scripts/cross-build.sh, or pass --node-runtime PATH",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn cache_root_prefers_override_then_xdg_then_home() {
        let all = [
            ("ARMFLEET_CACHE_DIR", "/srv/af"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            cache_root_from(env(&all)).unwrap(),
            PathBuf::from("/srv/af")
        );
        assert_eq!(
            cache_root_from(env(&all[1..])).unwrap(),
            PathBuf::from("/x/armfleet")
        );
        assert_eq!(
            cache_root_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")])).unwrap(),
            PathBuf::from("/home/u/.cache/armfleet")
        );
        let err = cache_root_from(env(&[])).unwrap_err().to_string();
        assert!(err.contains("ARMFLEET_CACHE_DIR"), "{err}");
    }

    #[test]
    fn artifact_names_carry_the_pin() {
        let p = artifact_path(
            Path::new("/c"),
            "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s-arm64?x=1",
            &"ab".repeat(32),
        );
        assert_eq!(p, PathBuf::from("/c/abababababababab-k3s-arm64"));
    }
}
