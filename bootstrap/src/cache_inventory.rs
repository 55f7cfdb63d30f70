//! What the cache holds (`imagegen cache`) and pruning it (`imagegen cache --prune`).
//!
//! Pruning keeps what the next build needs to be a hash check — the newest complete node rootfs
//! and the base it was made from — plus the pinned downloads and the Pi boot packages, which are
//! small next to a rootfs and cost a download to get back. Everything else goes: older rootfs
//! builds, other bases, and what interrupted runs left (`*.tmp`). A build that is running holds
//! its directory's lock; pruning skips a directory it cannot lock rather than pull it from under
//! a build.

use crate::digest::FileLock;
use crate::rootfs::read_build;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One thing in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheEntry {
    /// `rootfs`, `base`, `download`, `boot-assets`, `partial` (left by an interrupted run) or
    /// `other`.
    pub kind: &'static str,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes on disk (a directory: everything in it).
    pub bytes: u64,
    /// Seconds since the epoch of its last change.
    pub modified: u64,
    /// What it is, for a person: for a rootfs, the inputs it was made from.
    pub about: String,
    /// Whether `--prune` keeps it.
    pub kept_by_prune: bool,
}

/// Everything under `cache`, largest kinds first as the layout lists them; empty when the cache
/// does not exist yet.
pub fn inventory(cache: &Path) -> Vec<CacheEntry> {
    let newest = crate::rootfs::newest_build(cache);
    let keep_rootfs = newest
        .as_ref()
        .map(|b| b.manifest_path.parent().map(Path::to_owned));
    let keep_rootfs = keep_rootfs.flatten();
    let keep_base_sha = newest
        .as_ref()
        .map(|b| b.manifest.inputs.base.sha256.clone());
    let keep_base_file = newest
        .as_ref()
        .map(|b| PathBuf::from(&b.manifest.inputs.base.file));
    let mut entries = Vec::new();
    for (top, path) in children(cache) {
        match top.as_str() {
            "rootfs" => {
                for (_, dir) in children(&path) {
                    let (kind, about) = match read_build(&dir) {
                        Some(b) => ("rootfs", describe_rootfs(&b.manifest)),
                        None => ("partial", "an unfinished node rootfs build".to_owned()),
                    };
                    let kept = Some(&dir) == keep_rootfs.as_ref();
                    entries.push(entry(kind, dir, about, kept));
                }
            }
            "base" => {
                for (name, p) in children(&path) {
                    let kept = keep_base_file.as_ref().is_some_and(|f| f.starts_with(&p))
                        || keep_base_sha
                            .as_ref()
                            .is_some_and(|sha| name == format!("unpacked-{}.tar", &sha[..16]));
                    let about = if name.starts_with("mmdebstrap-") {
                        std::fs::read_to_string(p.join("base.json"))
                            .ok()
                            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                            .and_then(|v| v["origin"].as_str().map(str::to_owned))
                            .map(|o| format!("Debian base: {o}"))
                            .unwrap_or_else(|| "an unfinished Debian base build".to_owned())
                    } else if name.starts_with("unpacked-") {
                        "a decompressed copy of a base tarball".to_owned()
                    } else if name.starts_with("hash-") {
                        "the remembered hash of a base tarball".to_owned()
                    } else {
                        name.clone()
                    };
                    let kind = if name.ends_with(".tmp") {
                        "partial"
                    } else {
                        "base"
                    };
                    // Hash memos are a few bytes and spare a full read of a base: kept.
                    let kept = kept || name.starts_with("hash-");
                    entries.push(entry(kind, p, about, kept && kind != "partial"));
                }
            }
            "downloads" => {
                for (name, p) in children(&path) {
                    let partial = name.ends_with(".tmp") || name.contains(".part");
                    let kind = if partial { "partial" } else { "download" };
                    entries.push(entry(kind, p, name, !partial));
                }
            }
            "boot-assets" => entries.push(entry(
                "boot-assets",
                path,
                "Raspberry Pi boot packages (.deb) and their unpacked files".into(),
                true,
            )),
            _ => {
                let kind = if top.ends_with(".tmp") {
                    "partial"
                } else {
                    "other"
                };
                entries.push(entry(kind, path, top, kind != "partial"));
            }
        }
    }
    entries
}

/// What `prune` removed and what it could not.
#[derive(Debug, Default, Serialize)]
pub struct Pruned {
    /// Removed entries.
    pub removed: Vec<CacheEntry>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Entries skipped because a build holds them, or that could not be removed, and why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Removes every entry of [`inventory`] that pruning does not keep.
pub fn prune(cache: &Path) -> Pruned {
    let mut pruned = Pruned::default();
    for e in inventory(cache) {
        if e.kept_by_prune {
            continue;
        }
        // A build or download in progress holds the lock of what it writes: leave that alone.
        let lock = lock_of(&e.path);
        let _held = if lock.exists() {
            match FileLock::try_acquire(&lock) {
                Ok(Some(l)) => Some(l),
                Ok(None) => {
                    pruned
                        .skipped
                        .push((e.path.clone(), "a build is using it".into()));
                    continue;
                }
                Err(err) => {
                    pruned.skipped.push((e.path.clone(), err.to_string()));
                    continue;
                }
            }
        } else {
            None
        };
        let gone = if e.path.is_dir() {
            std::fs::remove_dir_all(&e.path)
        } else {
            std::fs::remove_file(&e.path)
        };
        match gone {
            Ok(()) => {
                pruned.freed_bytes += e.bytes;
                pruned.removed.push(e);
            }
            Err(err) => pruned.skipped.push((e.path.clone(), err.to_string())),
        }
    }
    pruned
}

/// The lock a writer of `path` holds: `<dir>/.lock` of a build directory; for a file being
/// written, the lock of what it becomes (`.NAME.lock` of a download's `NAME.part`, the base
/// directory's `.unpack.lock` for a base being decompressed).
fn lock_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.join(".lock");
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("unpacked-") {
        return path.with_file_name(".unpack.lock");
    }
    let target = name
        .strip_suffix(".part")
        .or_else(|| name.strip_suffix(".tmp"))
        .unwrap_or(&name);
    crate::download::lock_path(&path.with_file_name(target))
}

fn describe_rootfs(m: &crate::rootfs::Manifest) -> String {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    format!(
        "node rootfs {} ({}; node-runtime {}; k3s {})",
        short(&m.tarball.sha256),
        m.inputs.base_origin,
        short(&m.inputs.node_runtime.sha256),
        m.inputs
            .k3s
            .as_ref()
            .map(|k| short(&k.sha256))
            .unwrap_or_else(|| "not included".into()),
    )
}

fn entry(kind: &'static str, path: PathBuf, about: String, kept_by_prune: bool) -> CacheEntry {
    let modified = std::fs::symlink_metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    CacheEntry {
        kind,
        bytes: disk_bytes(&path),
        path,
        modified,
        about,
        kept_by_prune,
    }
}

/// The entries of `dir` but hidden ones (locks and such bookkeeping), sorted by name (none
/// when it cannot be read).
fn children(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(name, _)| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Bytes a file or a tree takes on disk (allocated blocks: a sparse file counts what it uses).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let all = std::fs::read_dir(path).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()));
    own + all
        .map(|ps| ps.map(|p| disk_bytes(&p)).sum::<u64>())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn partial_files_are_listed_as_partial_and_pruned_and_downloads_stay() {
        let cache = tempfile::tempdir().unwrap();
        let c = cache.path();
        write(&c.join("downloads/c920abcd-k3s-arm64"), &[1; 5000]);
        write(&c.join("downloads/c920abcd-k3s-arm64.tmp"), &[1; 100]);
        write(&c.join("rootfs/0123/rootfs.tar.gz.tmp"), &[2; 100]);
        write(&c.join("base/mmdebstrap-77/base.tar.tmp"), &[3; 100]);
        let inv = inventory(c);
        let kind_of = |suffix: &str| {
            inv.iter()
                .find(|e| e.path.ends_with(suffix))
                .map(|e| (e.kind, e.kept_by_prune))
        };
        assert_eq!(
            kind_of("downloads/c920abcd-k3s-arm64"),
            Some(("download", true))
        );
        assert_eq!(
            kind_of("downloads/c920abcd-k3s-arm64.tmp"),
            Some(("partial", false))
        );
        assert_eq!(kind_of("rootfs/0123"), Some(("partial", false)));
        assert_eq!(kind_of("base/mmdebstrap-77"), Some(("base", false)));
        assert!(inv.iter().all(|e| e.bytes > 0), "{inv:?}");

        let pruned = prune(c);
        assert_eq!(pruned.removed.len(), 3, "{pruned:?}");
        assert!(pruned.skipped.is_empty(), "{pruned:?}");
        assert!(c.join("downloads/c920abcd-k3s-arm64").exists());
        assert!(!c.join("rootfs/0123").exists());
        assert!(!c.join("base/mmdebstrap-77").exists());
    }

    #[test]
    fn a_directory_a_build_holds_is_skipped_not_removed() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("rootfs/0123");
        write(&dir.join("rootfs.tar.gz.tmp"), &[2; 100]);
        let _building = FileLock::acquire(&dir.join(".lock")).unwrap();
        let pruned = prune(cache.path());
        assert!(pruned.removed.is_empty());
        assert_eq!(pruned.skipped.len(), 1, "{pruned:?}");
        assert!(dir.join("rootfs.tar.gz.tmp").exists());
    }

    #[test]
    fn a_file_being_written_is_skipped_while_its_writer_holds_the_lock() {
        let cache = tempfile::tempdir().unwrap();
        let part = cache.path().join("downloads/c920abcd-k3s-arm64.part");
        write(&part, &[1; 100]);
        let unpacking = cache.path().join("base/unpacked-0123456789abcdef.tar.tmp");
        write(&unpacking, &[2; 100]);
        let downloading =
            FileLock::acquire(&cache.path().join("downloads/.c920abcd-k3s-arm64.lock")).unwrap();
        let decompressing = FileLock::acquire(&cache.path().join("base/.unpack.lock")).unwrap();
        let pruned = prune(cache.path());
        assert!(pruned.removed.is_empty(), "{pruned:?}");
        assert_eq!(pruned.skipped.len(), 2, "{pruned:?}");
        assert!(part.exists() && unpacking.exists());
        drop((downloading, decompressing));
        let pruned = prune(cache.path());
        assert_eq!(pruned.removed.len(), 2, "{pruned:?}");
        assert!(!part.exists() && !unpacking.exists());
    }

    #[test]
    fn a_missing_cache_is_empty() {
        assert!(inventory(Path::new("/nonexistent/armfleet-cache")).is_empty());
    }
}
