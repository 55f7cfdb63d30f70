//! The node rootfs: one Debian arm64 tree for every worker, phone or Pi.
//!
//! - **Base**: Debian bookworm arm64 made by `mmdebstrap` (minbase + [`BASE_PACKAGES`]), from the
//!   mirror the host's apt already uses, or a base tarball given by path or pinned URL.
//!   The kernel is *not* in it: phones bring their own, and `imagegen` installs the kernel and its
//!   modules from the same pinned Debian package it boots, so they always match.
//! - **Overlay**: a tar-to-tar transformation, no root and no unpacking of files: the base entries
//!   are indexed (headers only, seeking over data), merged in sorted path order with the overlay
//!   entries (node-runtime, optional k3s, the systemd unit and its enablement link, armfleet's
//!   directories) and copied byte for byte; overlay entries have fixed owners (root), modes and
//!   mtimes (`SOURCE_DATE_EPOCH`). Output goes through the parallel gzip of [`crate::pgz`].
//! - **Cache**: the output is keyed by the sha256 of every input; a build with nothing changed
//!   hashes the inputs, finds the manifest and returns.

use crate::digest::{FileLock, HashingWriter, sha256_file, sync_parent};
use crate::download::DownloadError;
use crate::layout;
use crate::pgz::ParallelGzWriter;
use crate::progress::{Event, Progress, human_bytes};
use crate::unit;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Packages on top of minbase: what k3s and the workers need.
pub const BASE_PACKAGES: &[&str] = &[
    "ca-certificates",
    // k3s ships its own iptables, but the host's is used for the legacy/nft choice.
    "iptables",
    "iproute2",
    "kmod",
    "systemd",
    "systemd-sysv",
    // Pis have no RTC: without NTP the clock is wrong and TLS to the server fails.
    "systemd-timesyncd",
    "udev",
    "openssh-server",
    "wpasupplicant",
    "e2fsprogs",
    "procps",
    // The router (`role = "server"`) is made from this same rootfs: DHCP/DNS per VLAN and the
    // zero-trust rules between them. Neither starts on a worker: dnsmasq-base ships no unit and
    // Debian does not enable nftables.service.
    "dnsmasq-base",
    "nftables",
];

/// dpkg path filters for the base (`--dpkgopt`, kept in the rootfs's dpkg.cfg.d so later
/// installs on the node follow them too): documentation, manuals and translations are a third
/// of a minbase system's files and a sixth of its bytes, and no worker reads them. Copyright
/// files stay (the licences travel with the binaries).
pub const DPKG_PATH_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];

/// Run in the finished base: for reproducibility, no host name or resolver from the build
/// machine; and the info index install-info generates (the pages themselves are filtered out).
const CUSTOMIZE_HOOK: &str =
    "rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\" \"$1/usr/share/info/dir\"";

/// Debian suite of the base.
pub const DEFAULT_SUITE: &str = "bookworm";

/// Used for overlay mtimes (and passed to mmdebstrap) when `SOURCE_DATE_EPOCH` is not set.
pub const DEFAULT_EPOCH: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// Bumped whenever the overlay or the output format changes, so old cache entries are not reused.
const FORMAT_VERSION: u32 = 1;

/// What goes wrong building a rootfs. Messages say which file or program, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The base tarball is not a tar (or tar.gz) archive we can read.
    #[error(
        "base tarball {path}: {message}: give a .tar or .tar.gz of a Debian arm64 root filesystem"
    )]
    BadBase {
        /// The tarball.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An overlay input (node-runtime, k3s) is missing.
    #[error(
        "{what} {path}: {source}: build it first (scripts/cross-build.sh) or pass the right path"
    )]
    Input {
        /// Which input.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `mmdebstrap` is not installed.
    #[error(
        "mmdebstrap is not installed: install it (apt-get install mmdebstrap arch-test qemu-user-static binfmt-support) or pass a base tarball with --base FILE"
    )]
    NoMmdebstrap,
    /// `mmdebstrap` failed.
    #[error("mmdebstrap failed ({status}): {tail}; full log: {log}")]
    Mmdebstrap {
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        tail: String,
        /// Where the whole log is.
        log: PathBuf,
    },
    /// Downloading a pinned base failed.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// The cache directory is unusable.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// No node-runtime to build a rootfs with, and no earlier build to fall back on.
    #[error("no node rootfs in the cache and {why}; or pass --rootfs FILE.tar.gz")]
    NothingToBuildFrom {
        /// Why no node-runtime was found (the places tried).
        why: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the base comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// Built with mmdebstrap (cached by its spec; rebuilt only when asked).
    Mmdebstrap(MmdebstrapSpec),
    /// A `.tar` or `.tar.gz` on disk.
    Tarball(PathBuf),
    /// A `.tar` or `.tar.gz` fetched from a URL and checked against a sha256 pin.
    Pinned {
        /// Where to fetch it.
        url: String,
        /// Its sha256.
        sha256: String,
    },
}

/// How to run mmdebstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmdebstrapSpec {
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// Packages on top of minbase.
    pub packages: Vec<String>,
    /// apt source lines (`deb URI SUITE COMPONENTS`); empty = mmdebstrap's own default.
    pub sources: Vec<String>,
}

impl MmdebstrapSpec {
    /// bookworm + [`BASE_PACKAGES`], from the host's apt sources (see [`host_debian_sources`]).
    pub fn default_for_host() -> MmdebstrapSpec {
        MmdebstrapSpec {
            suite: DEFAULT_SUITE.into(),
            packages: BASE_PACKAGES.iter().map(|s| s.to_string()).collect(),
            sources: host_debian_sources(DEFAULT_SUITE),
        }
    }
}

/// The apt source lines for `suite` built from the mirrors this host's apt is configured with
/// (`/etc/apt/sources.list` and `sources.list.d/*.list|*.sources`), or `ARMFLEET_DEBIAN_MIRROR`
/// when set. The mirror that serves `suite` gives `suite` and `suite-updates`; the one serving
/// `suite-security` gives that. Empty when nothing is found (mmdebstrap then uses its default).
pub fn host_debian_sources(suite: &str) -> Vec<String> {
    if let Ok(mirror) = std::env::var("ARMFLEET_DEBIAN_MIRROR")
        && !mirror.is_empty()
    {
        return vec![
            format!("deb {mirror} {suite} main"),
            format!("deb {mirror} {suite}-updates main"),
        ];
    }
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let deb822 = p.extension().is_some_and(|e| e == "sources");
            let list = p.extension().is_some_and(|e| e == "list");
            if (deb822 || list)
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                texts.push((deb822, t));
            }
        }
    }
    let entries: Vec<(String, Vec<String>, Vec<String>)> = texts
        .iter()
        .flat_map(|(deb822, t)| {
            if *deb822 {
                parse_deb822(t)
            } else {
                parse_one_line(t)
            }
        })
        .collect();
    let serving = |wanted: &str| {
        entries
            .iter()
            .find(|(_, suites, comps)| {
                suites.iter().any(|s| s == wanted) && comps.iter().any(|c| c == "main")
            })
            .map(|(uri, _, _)| uri.clone())
    };
    let mut out = Vec::new();
    if let Some(uri) = serving(suite) {
        out.push(format!("deb {uri} {suite} main"));
        out.push(format!("deb {uri} {suite}-updates main"));
    }
    if let Some(uri) = serving(&format!("{suite}-security")) {
        out.push(format!("deb {uri} {suite}-security main"));
    }
    out
}

fn parse_one_line(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?;
            let mut words = rest.split_whitespace().peekable();
            if words.peek()?.starts_with('[') {
                // Options like [arch=amd64 signed-by=...] may contain spaces until ']'.
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some((uri, vec![suite], words.map(str::to_owned).collect()))
        })
        .collect()
}

fn parse_deb822(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<String, String> = HashMap::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let enabled = fields.get("enabled").is_none_or(|v| v != "no");
        let is_deb = fields
            .get("types")
            .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if let (true, true, Some(uris), Some(suites)) =
            (enabled, is_deb, fields.get("uris"), fields.get("suites"))
        {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            let comps: Vec<String> = fields
                .get("components")
                .map(|c| c.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            for uri in uris.split_whitespace() {
                out.push((uri.to_owned(), suites.clone(), comps.clone()));
            }
        }
    }
    out
}

/// What the overlay adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInputs {
    /// The cross-built static aarch64 `node-runtime`.
    pub node_runtime: PathBuf,
    /// The k3s arm64 binary, when it goes into the rootfs (else node-runtime fetches it).
    pub k3s: Option<PathBuf>,
    /// mtime of every overlay entry.
    pub epoch: u64,
}

/// `SOURCE_DATE_EPOCH` from the environment, else [`DEFAULT_EPOCH`].
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// One entry the overlay writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OverlayKind {
    Dir,
    File(FileSource),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileSource {
    Path(PathBuf),
    Text(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OverlayEntry {
    path: String,
    mode: u32,
    kind: OverlayKind,
}

fn overlay_entries(inputs: &OverlayInputs) -> Vec<OverlayEntry> {
    let rel = |p: &str| p.trim_start_matches('/').to_owned();
    let mut out: Vec<OverlayEntry> = layout::worker::OVERLAY_DIRS
        .iter()
        .map(|d| OverlayEntry {
            path: d.to_string(),
            mode: 0o755,
            kind: OverlayKind::Dir,
        })
        .collect();
    out.push(OverlayEntry {
        path: rel(layout::worker::NODE_RUNTIME_BIN),
        mode: 0o755,
        kind: OverlayKind::File(FileSource::Path(inputs.node_runtime.clone())),
    });
    if let Some(k3s) = &inputs.k3s {
        out.push(OverlayEntry {
            path: "usr/local/bin/k3s".into(),
            mode: 0o755,
            kind: OverlayKind::File(FileSource::Path(k3s.clone())),
        });
    }
    out.push(OverlayEntry {
        path: rel(layout::worker::UNIT_PATH),
        mode: 0o644,
        kind: OverlayKind::File(FileSource::Text(unit::SYSTEMD_UNIT)),
    });
    out.push(OverlayEntry {
        path: rel(layout::worker::UNIT_WANTS_LINK),
        mode: 0o777,
        kind: OverlayKind::Symlink(layout::worker::UNIT_PATH.into()),
    });
    out
}

/// What [`overlay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayStats {
    /// Entries copied from the base.
    pub base_entries: u64,
    /// Base entries dropped because the overlay replaces them.
    pub replaced: Vec<String>,
    /// Entries the overlay added (including missing parent directories).
    pub added: Vec<String>,
    /// Uncompressed tar bytes written.
    pub tar_bytes: u64,
    /// Packages found in the base's dpkg status (name, version, architecture).
    pub packages: Vec<Package>,
}

/// One installed Debian package of the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
}

/// One entry of the base tar: where its bytes are (extension headers included).
#[derive(Debug)]
struct BaseEntry {
    key: String,
    start: u64,
    end: u64,
    hardlink_to: Option<String>,
}

/// `./usr/bin/` → `usr/bin`; `./` → ``.
fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut s: &str = &s;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    if s == "." {
        s = "";
    }
    s.trim_end_matches('/').to_owned()
}

/// Tree order (depth first, children sorted bytewise), the same as GNU tar's `--sort=name`.
fn tree_cmp(a: &str, b: &str) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    a.split('/').cmp(b.split('/'))
}

fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
        };
        if let (Some(name), Some(version), Some(arch), Some(status)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Status"),
        ) && status.ends_with(" installed")
        {
            out.push(Package {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
            });
        }
    }
    out.sort();
    out
}

/// Reads the headers of an uncompressed tar, seeking over the data.
fn index_base(path: &Path) -> Result<(Vec<BaseEntry>, bool, Vec<Package>), RootfsError> {
    let bad = |message: String| RootfsError::BadBase {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(io_at(path))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(64 * 1024, file));
    let mut entries = Vec::new();
    let mut dot_slash = None;
    let mut packages = Vec::new();
    let mut start = 0u64;
    for entry in archive
        .entries_with_seek()
        .map_err(|e| bad(e.to_string()))?
    {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        if dot_slash.is_none() {
            dot_slash = Some(raw.starts_with(b"./"));
        }
        // A pax global header applies to what follows it: it keeps its place at the front.
        let key = if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
            String::new()
        } else {
            normalize(&raw)
        };
        let size = entry.size();
        let end = entry.raw_file_position() + size.div_ceil(512) * 512;
        let hardlink_to = if entry.header().entry_type() == tar::EntryType::Link {
            entry.link_name_bytes().map(|l| normalize(&l))
        } else {
            None
        };
        if key == "var/lib/dpkg/status" && entry.header().entry_type().is_file() {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("var/lib/dpkg/status: {e}")))?;
            packages = parse_dpkg_status(&text);
        }
        entries.push(BaseEntry {
            key,
            start,
            end,
            hardlink_to,
        });
        start = end;
    }
    if entries.is_empty() {
        return Err(bad("it holds no entries".into()));
    }
    Ok((entries, dot_slash.unwrap_or(true), packages))
}

enum Item {
    Base(usize),
    Overlay(usize),
}

/// Writes base + overlay as one sorted tar into `out` (uncompressed; wrap `out` to compress).
/// `base_tar` must be an uncompressed tar file (see [`uncompressed_base`]).
pub fn overlay(
    base_tar: &Path,
    inputs: &OverlayInputs,
    out: impl Write,
) -> Result<OverlayStats, RootfsError> {
    let (base, dot_slash, packages) = index_base(base_tar)?;
    let mut overlay = overlay_entries(inputs);
    let base_keys: BTreeSet<&str> = base.iter().map(|e| e.key.as_str()).collect();
    // Directories the base already has are kept as they are; files and links are replaced.
    overlay.retain(|e| !(e.kind == OverlayKind::Dir && base_keys.contains(e.path.as_str())));
    let mut parents: BTreeSet<String> = BTreeSet::new();
    for e in &overlay {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !base_keys.contains(parent) && !overlay.iter().any(|o| o.path == parent) {
                parents.insert(parent.to_owned());
            }
            p = parent;
        }
    }
    overlay.extend(parents.into_iter().map(|path| OverlayEntry {
        path,
        mode: 0o755,
        kind: OverlayKind::Dir,
    }));
    let replacing: BTreeSet<String> = overlay.iter().map(|e| e.path.clone()).collect();

    let mut items: Vec<(String, Item)> = Vec::with_capacity(base.len() + overlay.len());
    let mut stats = OverlayStats {
        packages,
        ..OverlayStats::default()
    };
    for (i, e) in base.iter().enumerate() {
        if replacing.contains(&e.key) {
            stats.replaced.push(e.key.clone());
        } else {
            items.push((e.key.clone(), Item::Base(i)));
        }
    }
    for (i, e) in overlay.iter().enumerate() {
        stats.added.push(e.path.clone());
        items.push((e.path.clone(), Item::Overlay(i)));
    }
    // Stable: duplicate paths in the base keep their relative order (the last one wins on unpack).
    items.sort_by(|a, b| tree_cmp(&a.0, &b.0));

    let mut src = File::open(base_tar).map_err(io_at(base_tar))?;
    let out_path = PathBuf::from("<rootfs output>");
    let mut builder = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    let prefix = if dot_slash { "./" } else { "" };
    let mut emitted: BTreeSet<String> = BTreeSet::new();
    let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, item) in &items {
        match item {
            Item::Base(i) => {
                let e = &base[*i];
                // A hard link must come after its target or unpacking fails.
                if let Some(target) = &e.hardlink_to
                    && !emitted.contains(target)
                    && base_keys.contains(target.as_str())
                {
                    waiting.entry(target.clone()).or_default().push(*i);
                    continue;
                }
                copy_range(&mut src, e, builder.get_mut(), base_tar)?;
                stats.base_entries += 1;
            }
            Item::Overlay(i) => {
                append_overlay(&mut builder, &overlay[*i], prefix, inputs.epoch)?;
            }
        }
        emitted.insert(key.clone());
        let mut released = vec![key.clone()];
        while let Some(k) = released.pop() {
            for i in waiting.remove(&k).unwrap_or_default() {
                copy_range(&mut src, &base[i], builder.get_mut(), base_tar)?;
                stats.base_entries += 1;
                emitted.insert(base[i].key.clone());
                released.push(base[i].key.clone());
            }
        }
    }
    // Links whose target never came (or was replaced by the overlay) go last, as in the base.
    for (_, list) in std::mem::take(&mut waiting) {
        for i in list {
            copy_range(&mut src, &base[i], builder.get_mut(), base_tar)?;
            stats.base_entries += 1;
        }
    }
    let counting = builder.into_inner().map_err(io_at(&out_path))?;
    stats.tar_bytes = counting.count;
    Ok(stats)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn copy_range(
    src: &mut File,
    e: &BaseEntry,
    out: &mut impl Write,
    path: &Path,
) -> Result<(), RootfsError> {
    src.seek(SeekFrom::Start(e.start)).map_err(io_at(path))?;
    let len = e.end - e.start;
    let copied = io::copy(&mut (&mut *src).take(len), out).map_err(io_at(path))?;
    if copied != len {
        return Err(RootfsError::BadBase {
            path: path.to_owned(),
            message: format!("entry {} is cut short", e.key),
        });
    }
    Ok(())
}

fn append_overlay<W: Write>(
    builder: &mut tar::Builder<W>,
    e: &OverlayEntry,
    prefix: &str,
    epoch: u64,
) -> Result<(), RootfsError> {
    let mut header = tar::Header::new_ustar();
    header.set_mode(e.mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    let name = match e.kind {
        OverlayKind::Dir => format!("{prefix}{}/", e.path),
        _ => format!("{prefix}{}", e.path),
    };
    let out_err = |source| RootfsError::Io {
        path: PathBuf::from(&name),
        source,
    };
    match &e.kind {
        OverlayKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &name, io::empty())
                .map_err(out_err)?;
        }
        OverlayKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &name, target)
                .map_err(out_err)?;
        }
        OverlayKind::File(FileSource::Text(text)) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(text.len() as u64);
            builder
                .append_data(&mut header, &name, text.as_bytes())
                .map_err(out_err)?;
        }
        OverlayKind::File(FileSource::Path(path)) => {
            let what = if e.path.ends_with("/k3s") {
                "k3s binary"
            } else {
                "node-runtime binary"
            };
            let input_err = |source| RootfsError::Input {
                what,
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(input_err)?;
            let len = file.metadata().map_err(input_err)?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            builder
                .append_data(&mut header, &name, BufReader::new(file).take(len))
                .map_err(out_err)?;
        }
    }
    Ok(())
}

/// An uncompressed view of `base`: the file itself when it is a plain tar, else a decompressed
/// copy kept next to it in the cache (`<cache>/base/unpacked-<sha>.tar`), made once.
pub fn uncompressed_base(
    base: &Path,
    base_sha256: &str,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, RootfsError> {
    let mut magic = [0u8; 2];
    let mut f = File::open(base).map_err(io_at(base))?;
    let n = f.read(&mut magic).map_err(io_at(base))?;
    if n < 2 || magic != [0x1f, 0x8b] {
        return Ok(base.to_owned());
    }
    let dir = cache.join("base");
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let out = dir.join(format!("unpacked-{}.tar", &base_sha256[..16]));
    let _lock = FileLock::acquire(&dir.join(".unpack.lock")).map_err(io_at(&dir))?;
    if out.exists() {
        return Ok(out);
    }
    let step = "decompress base".to_string();
    progress.event(Event::StepStarted {
        step: step.clone(),
        total: None,
    });
    let tmp = out.with_extension("tar.tmp");
    let mut writer = BufWriter::new(File::create(&tmp).map_err(io_at(&tmp))?);
    f.seek(SeekFrom::Start(0)).map_err(io_at(base))?;
    let mut gz = flate2::read::MultiGzDecoder::new(BufReader::new(f));
    let n = io::copy(&mut gz, &mut writer).map_err(|e| RootfsError::BadBase {
        path: base.to_owned(),
        message: format!("cannot decompress: {e}"),
    })?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(io_at(&out))?;
    progress.event(Event::StepFinished {
        step,
        detail: human_bytes(n),
    });
    Ok(out)
}

/// The manifest written next to `rootfs.tar.gz` (`manifest.json`); `imagegen` and `phonectl`
/// read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest/overlay format version.
    pub format: u32,
    /// The hash of all inputs: the cache key.
    pub key: String,
    /// The tarball.
    pub tarball: Artifact,
    /// The inputs.
    pub inputs: Inputs,
    /// mtime of the overlay entries.
    pub source_date_epoch: u64,
    /// Installed Debian packages of the base (from its dpkg status).
    pub packages: Vec<Package>,
    /// Paths the overlay added or replaced.
    pub overlay: Vec<String>,
    /// Whether a kernel is in the rootfs: never, by design (imagegen adds the Pi's).
    pub kernel_included: bool,
}

/// A file and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name (relative to the manifest) or the path given.
    pub file: String,
    /// sha256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// The inputs a rootfs was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The base tarball, and how it was made (`mmdebstrap …`, a path or a URL).
    pub base: Artifact,
    /// Where the base came from.
    pub base_origin: String,
    /// node-runtime.
    pub node_runtime: Artifact,
    /// k3s, when included.
    pub k3s: Option<Artifact>,
    /// sha256 of the systemd unit text.
    pub unit_sha256: String,
}

/// A request to build (or find in the cache) a node rootfs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The base.
    pub base: Base,
    /// The overlay.
    pub overlay: OverlayInputs,
    /// The cache root (`cache::cache_root()` in the tools; a test dir in tests).
    pub cache: PathBuf,
    /// Build the mmdebstrap base again even if one is cached.
    pub refresh_base: bool,
}

/// A built node rootfs.
#[derive(Debug, Clone)]
pub struct Built {
    /// `<cache>/rootfs/<key>/rootfs.tar.gz`.
    pub tarball: PathBuf,
    /// `<cache>/rootfs/<key>/manifest.json`.
    pub manifest_path: PathBuf,
    /// Its content.
    pub manifest: Manifest,
    /// True when it came from the cache without building.
    pub cached: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct BaseRecord {
    sha256: String,
    size: u64,
    origin: String,
}

/// Resolves the base to a local tarball and its hash (building or downloading it when needed).
pub fn resolve_base(
    base: &Base,
    cache: &Path,
    refresh: bool,
    epoch: u64,
    progress: &dyn Progress,
) -> Result<(PathBuf, Artifact, String), RootfsError> {
    match base {
        Base::Tarball(path) => {
            let (sha, size) = tarball_hash(path, cache)?;
            let art = Artifact {
                file: path.display().to_string(),
                sha256: sha,
                size,
            };
            Ok((path.clone(), art, format!("tarball {}", path.display())))
        }
        Base::Pinned { url, sha256 } => {
            let dir = cache.join("downloads");
            let dest = crate::cache::artifact_path(&dir, url, &sha256.to_ascii_lowercase());
            let got = crate::download::fetch_pinned(url, sha256, &dest, progress)?;
            let art = Artifact {
                file: dest.display().to_string(),
                sha256: got.sha256,
                size: got.size,
            };
            Ok((dest, art, format!("pinned {url}")))
        }
        Base::Mmdebstrap(spec) => {
            let spec_json = serde_json::json!({ "spec": spec, "epoch": epoch, "arch": "arm64", "variant": "minbase", "dpkg": DPKG_PATH_FILTERS, "hook": CUSTOMIZE_HOOK });
            let key = crate::digest::sha256_hex(spec_json.to_string().as_bytes());
            let dir = cache
                .join("base")
                .join(format!("mmdebstrap-{}", &key[..16]));
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            let _lock = FileLock::acquire(&dir.join(".lock")).map_err(io_at(&dir))?;
            let tar = dir.join("base.tar");
            let record_path = dir.join("base.json");
            let origin = format!(
                "mmdebstrap --variant=minbase --arch=arm64 {} +{}",
                spec.suite,
                spec.packages.join(",")
            );
            if !refresh
                && tar.exists()
                && let Ok(text) = std::fs::read_to_string(&record_path)
                && let Ok(rec) = serde_json::from_str::<BaseRecord>(&text)
                && std::fs::metadata(&tar).map(|m| m.len()).ok() == Some(rec.size)
            {
                progress.event(Event::StepSkipped {
                    step: "mmdebstrap base".into(),
                    reason: format!("cached in {}", dir.display()),
                });
                let art = Artifact {
                    file: tar.display().to_string(),
                    sha256: rec.sha256,
                    size: rec.size,
                };
                return Ok((tar, art, rec.origin));
            }
            run_mmdebstrap(spec, epoch, &dir, &tar, progress)?;
            let sha = sha256_file(&tar).map_err(io_at(&tar))?;
            let size = std::fs::metadata(&tar).map_err(io_at(&tar))?.len();
            let rec = BaseRecord {
                sha256: sha.clone(),
                size,
                origin: origin.clone(),
            };
            write_atomic(
                &record_path,
                serde_json::to_string_pretty(&rec)
                    .expect("record serialises")
                    .as_bytes(),
            )?;
            let art = Artifact {
                file: tar.display().to_string(),
                sha256: sha,
                size,
            };
            Ok((tar, art, origin))
        }
    }
}

/// What the hash of a base tarball was when it had this size, mtime and inode: a second build
/// with an unchanged 300 MB base then costs a `stat`, not a full read.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HashMemo {
    path: String,
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

fn tarball_hash(path: &Path, cache: &Path) -> Result<(String, u64), RootfsError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |e: io::Error| RootfsError::BadBase {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(bad)?;
    let abs = std::fs::canonicalize(path).map_err(bad)?;
    let memo_path = cache.join("base").join(format!(
        "hash-{}.json",
        &crate::digest::sha256_hex(abs.as_os_str().as_encoded_bytes())[..16]
    ));
    let now = HashMemo {
        path: abs.display().to_string(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
        sha256: String::new(),
    };
    if let Ok(text) = std::fs::read_to_string(&memo_path)
        && let Ok(memo) = serde_json::from_str::<HashMemo>(&text)
        && (&memo.path, memo.size, memo.mtime_ns, memo.inode)
            == (&now.path, now.size, now.mtime_ns, now.inode)
    {
        return Ok((memo.sha256, now.size));
    }
    let sha = sha256_file(path).map_err(bad)?;
    if std::fs::create_dir_all(cache.join("base")).is_ok() {
        let memo = HashMemo {
            sha256: sha.clone(),
            ..now
        };
        // A memo that cannot be written only costs the next build a full hash.
        let _ = write_atomic(
            &memo_path,
            serde_json::to_string(&memo)
                .expect("memo serialises")
                .as_bytes(),
        );
    }
    Ok((sha, meta.len()))
}

fn run_mmdebstrap(
    spec: &MmdebstrapSpec,
    epoch: u64,
    dir: &Path,
    tar: &Path,
    progress: &dyn Progress,
) -> Result<(), RootfsError> {
    let which = crate::process::command("mmdebstrap")
        .arg("--version")
        .output();
    if which.is_err() {
        return Err(RootfsError::NoMmdebstrap);
    }
    let step = "mmdebstrap base".to_string();
    progress.event(Event::StepStarted {
        step: step.clone(),
        total: None,
    });
    let started = Instant::now();
    let log = dir.join("mmdebstrap.log");
    let log_file = File::create(&log).map_err(io_at(&log))?;
    let tmp = dir.join("base.tar.tmp");
    let mut cmd = crate::process::command("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg("--arch=arm64")
        .arg("--format=tar")
        .arg(format!("--include={}", spec.packages.join(",")))
        .args(DPKG_PATH_FILTERS.iter().map(|f| format!("--dpkgopt={f}")))
        // Snapshot or proxied mirrors may serve Release files past their Valid-Until.
        .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
        .arg(format!("--customize-hook={CUSTOMIZE_HOOK}"))
        .arg(&spec.suite)
        .arg(&tmp)
        .args(&spec.sources)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().map_err(io_at(&log))?)
        .stderr(log_file);
    let status = cmd.status().map_err(|_| RootfsError::NoMmdebstrap)?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(3)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(RootfsError::Mmdebstrap {
            status: status.to_string(),
            tail: tail.join(" | "),
            log,
        });
    }
    std::fs::rename(&tmp, tar).map_err(io_at(tar))?;
    progress.event(Event::StepFinished {
        step,
        detail: format!("in {:.0} s", started.elapsed().as_secs_f64()),
    });
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RootfsError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(bytes).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))?;
    sync_parent(path);
    Ok(())
}

fn artifact_of(path: &Path, what: &'static str) -> Result<Artifact, RootfsError> {
    let input_err = |source| RootfsError::Input {
        what,
        path: path.to_owned(),
        source,
    };
    let sha = sha256_file(path).map_err(input_err)?;
    let size = std::fs::metadata(path).map_err(input_err)?.len();
    Ok(Artifact {
        file: path.display().to_string(),
        sha256: sha,
        size,
    })
}

/// The node rootfs the tools use when the user names none (`imagegen BOARD`, `phonectl enroll`,
/// `imagegen rootfs`): built from `base` (default: a Debian arm64 base made with mmdebstrap from
/// the host's apt mirror) and the static aarch64 node-runtime, in the user's cache, keyed by the
/// hash of its inputs — minutes the first time, a hash check after, and safe when several tools
/// ask at once (the build of one key holds its lock). With no node-runtime to be found (an
/// installed tool without its companion), the newest complete build in the cache is used.
pub fn default_node_rootfs(
    base: Option<&Path>,
    node_runtime: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Built, RootfsError> {
    let cache = crate::cache::cache_root()?;
    let node_runtime = match crate::cache::find_node_runtime(node_runtime) {
        Ok(p) => p,
        Err(why) if base.is_none() => {
            return newest_build(&cache).ok_or(RootfsError::NothingToBuildFrom { why });
        }
        Err(why) => return Err(RootfsError::NothingToBuildFrom { why }),
    };
    let request = BuildRequest {
        base: match base {
            Some(b) => Base::Tarball(b.to_owned()),
            None => Base::Mmdebstrap(MmdebstrapSpec::default_for_host()),
        },
        overlay: OverlayInputs {
            node_runtime,
            k3s: None,
            epoch: source_date_epoch(),
        },
        cache,
        refresh_base: false,
    };
    build(&request, progress)
}

/// The most recently built or reused complete build under `<cache>/rootfs/` (its manifest read
/// and its tarball the size the manifest says).
pub fn newest_build(cache: &Path) -> Option<Built> {
    let mut found: Vec<(std::time::SystemTime, Built)> = std::fs::read_dir(cache.join("rootfs"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let built = read_build(&e.path())?;
            let when = std::fs::metadata(&built.manifest_path)
                .ok()?
                .modified()
                .ok()?;
            Some((when, built))
        })
        .collect();
    found.sort_by_key(|entry| entry.0);
    found.pop().map(|(_, b)| b)
}

/// The build in `dir` (`<cache>/rootfs/<key>/`) when it is complete.
pub fn read_build(dir: &Path) -> Option<Built> {
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).ok()?).ok()?;
    let tarball = dir.join(&manifest.tarball.file);
    (std::fs::metadata(&tarball).ok()?.len() == manifest.tarball.size).then_some(Built {
        tarball,
        manifest_path,
        manifest,
        cached: true,
    })
}

/// Builds the node rootfs, or returns the cached one when every input is unchanged.
pub fn build(req: &BuildRequest, progress: &dyn Progress) -> Result<Built, RootfsError> {
    let (base_path, base_art, base_origin) = resolve_base(
        &req.base,
        &req.cache,
        req.refresh_base,
        req.overlay.epoch,
        progress,
    )?;
    let node_runtime = artifact_of(&req.overlay.node_runtime, "node-runtime binary")?;
    let k3s = match &req.overlay.k3s {
        Some(p) => Some(artifact_of(p, "k3s binary")?),
        None => None,
    };
    let unit_sha256 = crate::digest::sha256_hex(unit::SYSTEMD_UNIT.as_bytes());
    let key_material = serde_json::json!({
        "format": FORMAT_VERSION,
        "base": base_art.sha256,
        "node_runtime": node_runtime.sha256,
        "k3s": k3s.as_ref().map(|a| a.sha256.clone()),
        "unit": unit_sha256,
        "epoch": req.overlay.epoch,
        "gzip_level": 6,
        "gzip_chunk": crate::pgz::CHUNK,
    });
    let key = crate::digest::sha256_hex(key_material.to_string().as_bytes());
    let dir = req.cache.join("rootfs").join(&key[..32]);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let _lock = FileLock::acquire(&dir.join(".lock")).map_err(io_at(&dir))?;
    let tarball = dir.join("rootfs.tar.gz");
    let manifest_path = dir.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(&manifest_path)
        && let Ok(manifest) = serde_json::from_str::<Manifest>(&text)
        && manifest.key == key
        && std::fs::metadata(&tarball).map(|m| m.len()).ok() == Some(manifest.tarball.size)
    {
        // The manifest's mtime says when the build was last used: `newest_build` (what a
        // command without a base finds) and `imagegen cache --prune` (what it keeps) go by it.
        if let Ok(file) = std::fs::File::options().write(true).open(&manifest_path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        progress.event(Event::StepSkipped {
            step: "node rootfs".into(),
            reason: format!("unchanged inputs (cached as {})", tarball.display()),
        });
        return Ok(Built {
            tarball,
            manifest_path,
            manifest,
            cached: true,
        });
    }

    let base_tar = uncompressed_base(&base_path, &base_art.sha256, &req.cache, progress)?;
    let step = "node rootfs".to_string();
    progress.event(Event::StepStarted {
        step: step.clone(),
        total: None,
    });
    let started = Instant::now();
    let tmp = dir.join("rootfs.tar.gz.tmp");
    let file = File::create(&tmp).map_err(io_at(&tmp))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut gz = ParallelGzWriter::with_default_threads(hashing);
    let stats = overlay(&base_tar, &req.overlay, &mut gz)?;
    let hashing = gz.finish().map_err(io_at(&tmp))?;
    let (writer, sha, size) = hashing.finish();
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &tarball).map_err(io_at(&tarball))?;
    let mut overlay_paths = stats.added.clone();
    overlay_paths.sort();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        key,
        tarball: Artifact {
            file: "rootfs.tar.gz".into(),
            sha256: sha,
            size,
        },
        inputs: Inputs {
            base: base_art,
            base_origin,
            node_runtime,
            k3s,
            unit_sha256,
        },
        source_date_epoch: req.overlay.epoch,
        packages: stats.packages.clone(),
        overlay: overlay_paths,
        kernel_included: false,
    };
    write_atomic(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)
            .expect("manifest serialises")
            .as_bytes(),
    )?;
    progress.event(Event::StepFinished {
        step,
        detail: format!(
            "{} entries, {} tar → {} gz in {:.1} s",
            stats.base_entries + stats.added.len() as u64,
            human_bytes(stats.tar_bytes),
            human_bytes(size),
            started.elapsed().as_secs_f64()
        ),
    });
    Ok(Built {
        tarball,
        manifest_path,
        manifest,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_order_matches_gnu_tar_sort_name() {
        let mut v = vec!["a-c", "a/b", "", "a", "b", "a/b/c", "a.d"];
        v.sort_by(|a, b| tree_cmp(a, b));
        assert_eq!(v, vec!["", "a", "a/b", "a/b/c", "a-c", "a.d", "b"]);
    }

    #[test]
    fn normalize_strips_dot_slash_and_trailing_slash() {
        assert_eq!(normalize(b"./usr/bin/"), "usr/bin");
        assert_eq!(normalize(b"./"), "");
        assert_eq!(normalize(b"/etc/x"), "etc/x");
        assert_eq!(normalize(b"."), "");
    }

    #[test]
    fn host_sources_are_parsed_from_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let e = parse_deb822(deb822);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "http://mirror.example/debian");
        let one = "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n";
        let e = parse_one_line(one);
        assert_eq!(e[0].0, "http://m.example/debian");
        assert_eq!(e[0].1, vec!["bookworm"]);
        assert_eq!(e[0].2, vec!["main", "contrib"]);
    }

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let s = "Package: a\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n\nPackage: b\nStatus: deinstall ok config-files\nArchitecture: arm64\nVersion: 2\n";
        let p = parse_dpkg_status(s);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "a");
    }
}
