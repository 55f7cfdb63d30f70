//! What the real agent finds out about its host before it runs, and the words it uses when it
//! cannot: the data dir lock, the token file, the cgroup layout and pids controller, /dev/kmsg.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h: what `statfs` says of a cgroup2 mount.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// An OS error as Go prints it: the errno's text, lower-case, without Rust's `(os error N)`.
/// Go keeps its own table of these strings; the ones a file open can meet are spelled out (musl's
/// strerror words some differently), the rest lower-cased from strerror.
pub fn go_errno(e: &std::io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let known = match code {
        libc::EPERM => "operation not permitted",
        libc::ENOENT => "no such file or directory",
        libc::EIO => "input/output error",
        libc::ENXIO => "no such device or address",
        libc::EACCES => "permission denied",
        libc::EEXIST => "file exists",
        libc::ENODEV => "no such device",
        libc::ENOTDIR => "not a directory",
        libc::EISDIR => "is a directory",
        libc::EINVAL => "invalid argument",
        libc::ENOSPC => "no space left on device",
        libc::EROFS => "read-only file system",
        libc::ELOOP => "too many levels of symbolic links",
        libc::ENAMETOOLONG => "file name too long",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => text.to_owned(),
    }
}

/// k3s' extract step (cmd/k3s/main.go): `mkdir -p DATA_DIR/data` (its error ignored), then an
/// exclusive lock on `DATA_DIR/data/.lock`, opened `O_CREAT|O_RDWR` mode 0600, held while it
/// extracts: the caller drops the file (and the lock) once past this step, so a child that
/// outlives the agent (as containerd may) never keeps the next start waiting on it.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    let data = data_dir.join("data");
    let _ = std::fs::create_dir_all(&data);
    let lock = data.join(".lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| go_errno(&e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        return Err(go_errno(&std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// What reading the token file gave.
pub enum TokenRead {
    /// Its content, trimmed (k3s' `util.ReadFile` trims).
    Token(String),
    /// It does not exist (yet): k3s waits.
    Missing,
    /// Any other error, as Go words it (`open PATH: permission denied`): k3s gives up at once.
    Failed(String),
}

/// One attempt at the token file, as k3s' `util.ReadFile` does it.
pub fn read_token(path: &str) -> TokenRead {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return TokenRead::Missing,
        Err(e) => return TokenRead::Failed(format!("open {path}: {}", go_errno(&e))),
    };
    let mut text = String::new();
    if let Err(e) = f.read_to_string(&mut text) {
        return TokenRead::Failed(format!("read {path}: {}", go_errno(&e)));
    }
    TokenRead::Token(text.trim().to_owned())
}

/// The token file as it is, for the run record (armfleet's tests assert its mode; k3s itself does
/// not care).
pub fn token_file_facts(path: &str) -> serde_json::Value {
    let md = std::fs::metadata(path);
    serde_json::json!({
        "path": path,
        "mode": md.as_ref().ok().map(|m| m.permissions().mode() & 0o777),
        "uid": md.as_ref().ok().map(|m| m.uid()),
        "gid": md.as_ref().ok().map(|m| m.gid()),
    })
}

/// How `/sys/fs/cgroup` looks, as containerd's `cgroups.Mode()` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `statfs` failed: no `/sys/fs/cgroup` at all.
    Unavailable,
    /// Something else at `/sys/fs/cgroup` (a tmpfs of v1 hierarchies), no cgroup2 at `unified`.
    V1,
    /// v1 hierarchies plus a cgroup2 at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// cgroup2 at `/sys/fs/cgroup` (the kubelet's `IsCgroup2UnifiedMode`).
    V2,
}

impl Layout {
    /// The name in the run record.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Unavailable => "unavailable",
            Layout::V1 => "v1",
            Layout::Hybrid => "hybrid",
            Layout::V2 => "v2",
        }
    }
}

fn fs_magic(path: &str) -> Option<u64> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: statfs into a zeroed struct we own, on a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st) == 0).then_some(st.f_type as u64)
    }
}

/// The cgroup layout of this mount namespace.
pub fn layout() -> Layout {
    match fs_magic("/sys/fs/cgroup") {
        None => Layout::Unavailable,
        Some(CGROUP2_SUPER_MAGIC) => Layout::V2,
        Some(_) if fs_magic("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC) => {
            Layout::Hybrid
        }
        Some(_) => Layout::V1,
    }
}

/// What the pids check saw.
pub struct Pids {
    /// k3s' own check (`pkg/cgroups` `CheckCgroups`): on v2 `cgroup.controllers` of
    /// `/sys/fs/cgroup` names pids; on v1 a line of `/proc/self/cgroup` does (a pids hierarchy
    /// exists somewhere on the machine).
    pub k3s_sees: bool,
    /// On v1/hybrid, a pids hierarchy is mounted under `/sys/fs/cgroup` in this namespace, where
    /// the kubelet's cgroup manager looks it up. Without it the kubelet later fails with "failed to
    /// find subsystem mount for required subsystem: pids"; the stand-in folds that into k3s' own
    /// refusal, so a chroot that leaves pids out is refused with one known line. (Always true on
    /// v2, where k3s' check covers it.)
    pub mounted: bool,
    /// `cgroup.controllers` on v2.
    pub v2_controllers: Option<String>,
}

impl Pids {
    /// Both hold.
    pub fn ok(&self) -> bool {
        self.k3s_sees && self.mounted
    }
}

/// Looks for the pids controller as k3s and the kubelet would.
pub fn pids(layout: Layout) -> Pids {
    if layout == Layout::V2 {
        let ctrls = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
        let k3s_sees = ctrls
            .as_deref()
            .is_some_and(|c| c.split_whitespace().any(|x| x == "pids"));
        return Pids {
            k3s_sees,
            mounted: true,
            v2_controllers: ctrls.map(|c| c.trim().to_owned()),
        };
    }
    let k3s_sees = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| {
            t.lines().any(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|x| x == "pids"))
            })
        })
        .unwrap_or(false);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines().any(|l| {
                let Some((pre, post)) = l.split_once(" - ") else {
                    return false;
                };
                let mut pre = pre.split(' ');
                let dev = pre.nth(2).unwrap_or("");
                let point = pre.nth(1).unwrap_or("");
                let mut post = post.split(' ');
                let fstype = post.next().unwrap_or("");
                let super_opts = post.nth(1).unwrap_or("");
                fstype == "cgroup"
                    && point.starts_with("/sys/fs/cgroup/")
                    && super_opts.split(',').any(|o| o == "pids")
                    && visible(point, dev)
            })
        })
        .unwrap_or(false);
    Pids {
        k3s_sees,
        mounted,
        v2_controllers: None,
    }
}

/// True when the mount listed with device `major:minor` is what `point` shows now: mountinfo
/// also lists mounts hidden under a later one (a tmpfs mounted over /sys/fs/cgroup), which the
/// kubelet cannot use.
fn visible(point: &str, dev: &str) -> bool {
    let Some((major, minor)) = dev.split_once(':') else {
        return false;
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return false;
    };
    std::fs::metadata(point.replace("\\040", " "))
        .is_ok_and(|m| m.dev() == libc::makedev(major, minor))
}

/// The `--kubelet-arg` value for `name` (the last one wins, as k3s builds a map; a leading `--`
/// is dropped as k3s drops it).
pub fn kubelet_arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().rev().find_map(|a| {
        let a = a.strip_prefix("--").unwrap_or(a);
        let (k, v) = a.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The kubelet opens /dev/kmsg for its OOM watcher (cadvisor's kmsgparser); what that gave.
pub fn open_kmsg() -> Result<String, String> {
    let target = std::fs::read_link("/dev/kmsg")
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    std::fs::File::open("/dev/kmsg")
        .map(|_| target)
        .map_err(|e| go_errno(&e))
}
