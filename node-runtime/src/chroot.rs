//! The phone's chroot, prepared in a private mount namespace so that nothing it mounts is seen
//! by Android (and everything vanishes with the supervisor): proc, sys, dev, dev/pts, dev/shm, a
//! tmpfs /run, the cgroups (v2 bind of /sys/fs/cgroup when it carries the controllers, else the
//! v1 controllers Android keeps under /dev), resolv.conf, /dev/kmsg, the hostname (own UTS
//! namespace), and the k3s data dir on an ext4 loop image (f2fs breaks overlayfs and cadvisor).
//!
//! Everything that can be checked is checked before the first change, so a refusal leaves the
//! phone as it was.

use bootstrap::NodeConfig;
use nix::mount::{MsFlags, mount};
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the chroot could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// The root is not a rootfs.
    #[error(
        "chroot.root {0} is not a node rootfs (no bin/ or usr/): install it with `phonectl enroll` (node-runtime unpack)"
    )]
    NotARootfs(PathBuf),
    /// No cgroup hierarchy at all.
    #[error(
        "this kernel has no usable cgroups (no cgroup2 at /sys/fs/cgroup with cpuset, cpu and memory, no v1 controllers mounted; /proc/filesystems: {filesystems}): k3s needs them; run `node-runtime check-kernel` and use a kernel with CONFIG_CGROUPS, CPUSETS, MEMCG"
    )]
    NoCgroups {
        /// The cgroup lines of /proc/filesystems.
        filesystems: String,
    },
    /// Not enough room for the data image.
    #[error(
        "no space for the k3s data image {path} (k3s.data_image.size_mib = {size_mib}, {free_mib} MiB free there): free space or lower size_mib; nothing was created"
    )]
    NoSpace {
        /// The image.
        path: PathBuf,
        /// Wanted size.
        size_mib: u64,
        /// Free space.
        free_mib: u64,
    },
    /// No mke2fs.
    #[error(
        "cannot format the k3s data image {path}: no mke2fs found (tried {tried}): install e2fsprogs in the node rootfs, or create it yourself with `mke2fs -t ext4 {path}`"
    )]
    NoMkfs {
        /// The image.
        path: PathBuf,
        /// Where we looked.
        tried: String,
    },
    /// mke2fs failed.
    #[error("mke2fs {path} failed: {output}; nothing was created")]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// Its stderr.
        output: String,
    },
    /// Loop devices are not available.
    #[error(
        "cannot attach the k3s data image {path} to a loop device ({reason}): the kernel needs CONFIG_BLK_DEV_LOOP and /dev/loop-control"
    )]
    Loop {
        /// The image.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A system call failed.
    #[error("{what} {path}: {errno}")]
    Sys {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn sys<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> ChrootError + 'a {
    move |errno| ChrootError::Sys {
        what,
        path: path.to_owned(),
        errno,
    }
}
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChrootError + '_ {
    move |source| ChrootError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Superblock options.
    pub super_options: Vec<String>,
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let _source = r.next()?;
            let super_options = r
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype,
                super_options,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// cgroup v1 controllers k3s cares about (others are bound too when found).
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "memory",
    "blkio",
    "devices",
    "freezer",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "schedtune",
];

/// How the chroot gets its cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPlan {
    /// Bind the unified hierarchy at `/sys/fs/cgroup`.
    V2,
    /// A tmpfs at `/sys/fs/cgroup` with each v1 hierarchy bound under its controllers' name
    /// (e.g. Android's `/dev/memcg` as `memory`), plus the v2 hierarchy at `unified` when present.
    V1 {
        /// (host mount point, name under /sys/fs/cgroup).
        hierarchies: Vec<(PathBuf, String)>,
        /// A cgroup2 mount to expose as `/sys/fs/cgroup/unified`.
        unified: Option<PathBuf>,
        /// Controllers the kernel has but nothing here mounts (Android mounts no `pids`, which
        /// k3s cannot run without): mounted as their own v1 hierarchy inside the chroot only.
        mount_v1: Vec<String>,
    },
}

impl CgroupPlan {
    /// What the agent sees: the kubelet treats anything but a cgroup2 `/sys/fs/cgroup` as v1.
    pub fn layout(&self) -> bootstrap::status::CgroupLayout {
        use bootstrap::status::CgroupLayout;
        match self {
            CgroupPlan::V2 => CgroupLayout::V2,
            CgroupPlan::V1 { unified: None, .. } => CgroupLayout::V1,
            CgroupPlan::V1 {
                unified: Some(_), ..
            } => CgroupLayout::Hybrid,
        }
    }
}

/// Controllers of `/proc/cgroups` that are enabled, known to k3s, not among `mounted`, and not
/// taken by the cgroup2 hierarchy (`v2_controllers`: a controller bound there cannot also be
/// mounted as v1). Controllers that already share a v1 hierarchy elsewhere (same hierarchy id,
/// e.g. `cpu,cpuacct`) can only be mounted together: they come as one comma-joined entry.
fn unmounted_v1_controllers(
    proc_cgroups: &str,
    mounted: &BTreeSet<&str>,
    v2_controllers: &BTreeSet<&str>,
) -> Vec<String> {
    let mut groups: Vec<(u32, Vec<&str>)> = Vec::new();
    for l in proc_cgroups.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        // subsys_name hierarchy num_cgroups enabled
        if f.len() < 4 || f[3] != "1" {
            continue;
        }
        let (name, hierarchy) = (f[0], f[1].parse::<u32>().unwrap_or(0));
        if !V1_CONTROLLERS.contains(&name)
            || mounted.contains(name)
            || v2_controllers.contains(name)
        {
            continue;
        }
        match groups
            .iter_mut()
            .find(|(h, _)| hierarchy != 0 && *h == hierarchy)
        {
            Some((_, names)) => names.push(name),
            None => groups.push((hierarchy, vec![name])),
        }
    }
    groups.into_iter().map(|(_, n)| n.join(",")).collect()
}

/// Decides the cgroup layout from the host's mountinfo and the controllers the v2 root offers
/// (`/sys/fs/cgroup/cgroup.controllers`, when it is cgroup2). Pure, so Android layouts are tested
/// from fixtures.
pub fn plan_cgroups(
    mountinfo: &str,
    v2_controllers: Option<&str>,
    proc_filesystems: &str,
    proc_cgroups: &str,
) -> Result<CgroupPlan, ChrootError> {
    let mounts = parse_mountinfo(mountinfo);
    let v2_root = mounts
        .iter()
        .any(|m| m.fstype == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"));
    if v2_root {
        let have: BTreeSet<&str> = v2_controllers.unwrap_or("").split_whitespace().collect();
        if ["cpuset", "cpu", "memory"].iter().all(|c| have.contains(c)) {
            return Ok(CgroupPlan::V2);
        }
    }
    let mut hierarchies = Vec::new();
    let mut seen = BTreeSet::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        let mut ctrls: Vec<&str> = m
            .super_options
            .iter()
            .map(String::as_str)
            .filter(|o| V1_CONTROLLERS.contains(o))
            .collect();
        if ctrls.is_empty() {
            // A named hierarchy (name=systemd) keeps its name.
            if let Some(n) = m.super_options.iter().find_map(|o| o.strip_prefix("name=")) {
                ctrls.push(n);
            } else {
                continue;
            }
        }
        let name = ctrls.join(",");
        if seen.insert(name.clone()) {
            hierarchies.push((m.mount_point.clone(), name));
        }
    }
    let has = |c: &str| {
        hierarchies
            .iter()
            .any(|(_, n)| n.split(',').any(|x| x == c))
    };
    if has("cpuset") && has("memory") {
        let unified = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.mount_point.clone());
        let mounted: BTreeSet<&str> = hierarchies.iter().flat_map(|(_, n)| n.split(',')).collect();
        let v2: BTreeSet<&str> = v2_controllers.unwrap_or("").split_whitespace().collect();
        let mount_v1 = unmounted_v1_controllers(proc_cgroups, &mounted, &v2);
        return Ok(CgroupPlan::V1 {
            hierarchies,
            unified,
            mount_v1,
        });
    }
    // No usable hierarchy is mounted here (a v2 root without the controllers, or none): mount
    // the kernel's v1 controllers inside the chroot when it has cpuset and memory to give.
    let v2: BTreeSet<&str> = v2_controllers.unwrap_or("").split_whitespace().collect();
    let mounted: BTreeSet<&str> = hierarchies.iter().flat_map(|(_, n)| n.split(',')).collect();
    let mount_v1 = unmounted_v1_controllers(proc_cgroups, &mounted, &v2);
    let offered =
        |c: &str| mounted.contains(c) || mount_v1.iter().any(|g| g.split(',').any(|x| x == c));
    if offered("cpuset") && offered("memory") {
        let unified = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.mount_point.clone());
        return Ok(CgroupPlan::V1 {
            hierarchies,
            unified,
            mount_v1,
        });
    }
    if v2_root {
        // A v2 root without cpuset/memory delegated: k3s will say what it misses; bind it.
        return Ok(CgroupPlan::V2);
    }
    let fs: Vec<&str> = proc_filesystems
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|f| f.contains("cgroup"))
        .collect();
    Err(ChrootError::NoCgroups {
        filesystems: if fs.is_empty() {
            "no cgroup filesystem".into()
        } else {
            fs.join(" ")
        },
    })
}

/// The host's cgroup plan, read from /proc.
pub fn host_cgroup_plan() -> Result<CgroupPlan, ChrootError> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io(Path::new("/proc/self/mountinfo")))?;
    let ctrls = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    plan_cgroups(&mi, ctrls.as_deref(), &fs, &cgroups)
}

/// Mount points of this mount namespace.
pub fn mount_points() -> BTreeSet<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            parse_mountinfo(&t)
                .into_iter()
                .map(|m| m.mount_point)
                .collect()
        })
        .unwrap_or_default()
}

/// `root` joined with an absolute path inside it.
fn inside(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

fn bind(src: &Path, dst: &Path, recursive: bool) -> Result<(), ChrootError> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), dst, None::<&str>, flags, None::<&str>).map_err(sys("bind mount on", dst))
}

fn mount_fs(
    fstype: &str,
    dst: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), ChrootError> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    mount(Some(fstype), dst, Some(fstype), flags, data).map_err(sys("mount", dst))
}

/// Checks done before any change: the root looks like a rootfs; the cgroups can be provided.
pub fn preflight(config: &NodeConfig) -> Result<CgroupPlan, ChrootError> {
    let Some(c) = &config.chroot else {
        return host_cgroup_plan();
    };
    if !(c.root.join("bin").exists() || c.root.join("usr").is_dir()) {
        return Err(ChrootError::NotARootfs(c.root.clone()));
    }
    host_cgroup_plan()
}

/// Enters a private mount + UTS namespace, mounts everything the agent needs under
/// `chroot.root`, sets the hostname, and chroots there. After this, paths of node.toml are
/// valid as they are.
pub fn enter(config: &NodeConfig, plan: &CgroupPlan) -> Result<(), ChrootError> {
    let Some(c) = &config.chroot else {
        return Ok(());
    };
    let root = c.root.as_path();
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(sys("unshare (mount, uts namespaces) for", root))?;
    // Nothing mounted from here on may propagate back to Android's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make private", Path::new("/")))?;

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &inside(root, "/proc"), nosuid, None)?;
    bind(Path::new("/sys"), &inside(root, "/sys"), false)?;
    mount_cgroups(root, plan)?;
    bind(Path::new("/dev"), &inside(root, "/dev"), true)?;
    let points = mount_points();
    let pts = inside(root, "/dev/pts");
    if !points.contains(&pts) {
        mount_fs(
            "devpts",
            &pts,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        )?;
    }
    let shm = inside(root, "/dev/shm");
    if !points.contains(&shm) {
        mount_fs(
            "tmpfs",
            &shm,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )?;
    }
    let kmsg = inside(root, "/dev/kmsg");
    if std::fs::symlink_metadata(&kmsg).is_err() {
        // kubelet's OOM watcher reads /dev/kmsg; some Android kernels hide it.
        std::os::unix::fs::symlink("console", &kmsg).map_err(io(&kmsg))?;
    }
    mount_fs(
        "tmpfs",
        &inside(root, "/run"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    if let Some(text) = crate::agent::resolv_conf_text(config) {
        for p in ["/etc/resolv.conf", crate::agent::RESOLV_CONF] {
            let dst = inside(root, p);
            if let Some(d) = dst.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            // A dangling symlink (systemd-resolved's) would send the write elsewhere.
            let _ = std::fs::remove_file(&dst);
            std::fs::write(&dst, &text).map_err(io(&dst))?;
        }
    }
    if let Some(img) = &config.k3s.data_image {
        let dir = inside(root, &config.k3s.data_dir.to_string_lossy());
        ensure_data_image(&img.path, img.size_mib, root)?;
        attach_and_mount(&img.path, &dir)?;
    }
    nix::unistd::sethostname(config.hostname()).map_err(sys("sethostname", root))?;
    nix::unistd::chroot(root).map_err(sys("chroot", root))?;
    std::env::set_current_dir("/").map_err(io(Path::new("/")))?;
    Ok(())
}

fn mount_cgroups(root: &Path, plan: &CgroupPlan) -> Result<(), ChrootError> {
    let target = inside(root, "/sys/fs/cgroup");
    match plan {
        CgroupPlan::V2 => bind(Path::new("/sys/fs/cgroup"), &target, false),
        CgroupPlan::V1 {
            hierarchies,
            unified,
            mount_v1,
        } => {
            mount_fs(
                "tmpfs",
                &target,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            )?;
            for (src, name) in hierarchies {
                bind(src, &target.join(name), false)?;
                link_single_names(&target, name)?;
            }
            for ctrl in mount_v1 {
                let dst = target.join(ctrl);
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                // Not fatal: k3s names what it misses, and Android's own hierarchies are intact.
                if let Err(e) = mount_fs("cgroup", &dst, flags, Some(ctrl)) {
                    tracing::warn!("cannot mount the {ctrl} cgroup controller: {e}");
                    let _ = std::fs::remove_dir(&dst);
                    continue;
                }
                link_single_names(&target, ctrl)?;
            }
            if let Some(u) = unified {
                bind(u, &target.join("unified"), false)?;
            }
            Ok(())
        }
    }
}

/// Runtimes look for single-controller names too: `cpu` and `cpuacct` → `cpu,cpuacct`.
fn link_single_names(target: &Path, name: &str) -> Result<(), ChrootError> {
    if name.contains(',') {
        for part in name.split(',') {
            let link = target.join(part);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(name, &link).map_err(io(&link))?;
            }
        }
    }
    Ok(())
}

/// mke2fs candidates outside the chroot, most likely first (Android ships one in /system/bin).
const HOST_MKFS: &[&str] = &["/system/bin/mke2fs", "/sbin/mke2fs", "/usr/sbin/mke2fs"];
/// Inside the node rootfs (e2fsprogs); run chrooted.
const ROOTFS_MKFS: &[&str] = &["/sbin/mke2fs", "/usr/sbin/mke2fs"];

/// Creates the ext4 image at `path` when it does not exist: reserve the whole size first
/// (fallocate: no space means a clear refusal, not a filesystem that fails later), format,
/// then rename into place; any failure removes the partial file.
pub fn ensure_data_image(path: &Path, size_mib: u64, rootfs: &Path) -> Result<bool, ChrootError> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    let tmp = path.with_file_name(name);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let len = (size_mib * 1024 * 1024) as i64;
        if let Err(e) = nix::fcntl::posix_fallocate(&file, 0, len) {
            if e == nix::errno::Errno::ENOSPC || e == nix::errno::Errno::EFBIG {
                let free_mib = nix::sys::statvfs::statvfs(dir)
                    .map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024))
                    .unwrap_or(0);
                return Err(ChrootError::NoSpace {
                    path: path.to_owned(),
                    size_mib,
                    free_mib,
                });
            }
            // Filesystems without fallocate: a sparse file; mke2fs will still complain if full.
            file.set_len(len as u64).map_err(io(&tmp))?;
        }
        run_mke2fs(&tmp, &file, rootfs)?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

fn run_mke2fs(tmp: &Path, file: &std::fs::File, rootfs: &Path) -> Result<(), ChrootError> {
    use std::os::unix::process::CommandExt;
    let args = ["-q", "-F", "-t", "ext4", "-L", "k3s-data", "-m", "0"];
    let mut cmd = if let Some(m) = HOST_MKFS.iter().find(|m| Path::new(m).is_file()) {
        let mut c = bootstrap::process::command(m);
        c.args(args).arg(tmp);
        c
    } else if let Some(m) = ROOTFS_MKFS.iter().find(|m| inside(rootfs, m).is_file()) {
        // The rootfs' mke2fs is linked against the rootfs' libc: run it chrooted, on the image
        // handed over as fd 3 (the image lives outside the rootfs).
        let mut c = bootstrap::process::command(m);
        c.args(args).arg("/proc/self/fd/3");
        let root = rootfs.to_owned();
        let fd = file.as_raw_fd();
        // SAFETY: only async-signal-safe calls (chroot, chdir, dup2) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                nix::unistd::chroot(&root)?;
                nix::unistd::chdir("/")?;
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    } else {
        let tried: Vec<String> = HOST_MKFS
            .iter()
            .map(|s| s.to_string())
            .chain(
                ROOTFS_MKFS
                    .iter()
                    .map(|m| inside(rootfs, m).display().to_string()),
            )
            .collect();
        return Err(ChrootError::NoMkfs {
            path: tmp.to_owned(),
            tried: tried.join(", "),
        });
    };
    let out = cmd.output().map_err(io(tmp))?;
    if !out.status.success() {
        return Err(ChrootError::Mkfs {
            path: tmp.to_owned(),
            output: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        });
    }
    Ok(())
}

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches `image` to a free loop device (auto-clearing: it detaches when unmounted, i.e. when
/// this mount namespace ends) and mounts it as ext4 on `dir`.
pub fn attach_and_mount(image: &Path, dir: &Path) -> Result<PathBuf, ChrootError> {
    let loop_err = |reason: String| ChrootError::Loop {
        path: image.to_owned(),
        reason,
    };
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io(image))?;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| loop_err(format!("/dev/loop-control: {e}")))?;
    for _attempt in 0..8 {
        // SAFETY: ioctl on a descriptor we own; LOOP_CTL_GET_FREE takes no argument.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(loop_err(format!(
                "LOOP_CTL_GET_FREE: {}",
                std::io::Error::last_os_error()
            )));
        }
        let dev = loop_node(n as u32).map_err(|e| loop_err(format!("loop{n}: {e}")))?;
        let devf = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| loop_err(format!("{}: {e}", dev.display())))?;
        // SAFETY: both descriptors are open and owned for the duration of the call.
        let rc = unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_SET_FD as _, img.as_raw_fd()) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue; // another process took it between GET_FREE and SET_FD
            }
            return Err(loop_err(format!("LOOP_SET_FD {}: {e}", dev.display())));
        }
        // SAFETY: LoopInfo64 is plain old data; all-zero is valid.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = image.as_os_str().as_encoded_bytes();
        let k = name.len().min(63);
        info.lo_file_name[..k].copy_from_slice(&name[..k]);
        // SAFETY: pointer to a properly laid-out loop_info64 living across the call.
        let rc = unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: detach what we attached.
            unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_CLR_FD as _, 0) };
            return Err(loop_err(format!("LOOP_SET_STATUS64: {e}")));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if let Err(e) = mount(
            Some(dev.as_path()),
            dir,
            Some("ext4"),
            MsFlags::MS_NOATIME,
            None::<&str>,
        ) {
            // SAFETY: detach what we attached.
            unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_CLR_FD as _, 0) };
            return Err(sys("mount ext4 data image on", dir)(e));
        }
        return Ok(dev);
    }
    Err(loop_err(
        "every free loop device was taken by others".into(),
    ))
}

/// `/dev/loopN` (Linux) or `/dev/block/loopN` (Android); made when udev/ueventd has not yet.
fn loop_node(n: u32) -> std::io::Result<PathBuf> {
    for p in [format!("/dev/loop{n}"), format!("/dev/block/loop{n}")] {
        if Path::new(&p).exists() {
            return Ok(p.into());
        }
    }
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let p = PathBuf::from(format!("/dev/loop{n}"));
    mknod(
        &p,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(7, u64::from(n)),
    )?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANDROID_V1: &str = "\
20 1 0:19 / /dev rw,nosuid,relatime - tmpfs tmpfs rw,seclabel,mode=755
30 20 0:25 / /dev/cpuctl rw,nosuid,nodev,noexec,relatime - cgroup none rw,cpu
31 20 0:26 / /dev/cpuset rw,nosuid,nodev,noexec,relatime - cgroup none rw,cpuset,noprefix,release_agent=/sbin/cpuset_release_agent
32 20 0:27 / /dev/memcg rw,nosuid,nodev,noexec,relatime - cgroup none rw,memory
33 20 0:28 / /dev/blkio rw,nosuid,nodev,noexec,relatime - cgroup none rw,blkio
34 20 0:29 / /dev/cg2_bpf rw,nosuid,nodev,noexec,relatime - cgroup2 none rw
35 1 0:30 / /sys/fs/cgroup/cpu\\040acct rw,nosuid,nodev,noexec,relatime - cgroup none rw,cpuacct
";

    #[test]
    fn android_v1_controllers_under_dev_are_planned() {
        let proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t5\t1\ncpu\t3\t9\t1\nmemory\t4\t60\t1\npids\t0\t1\t1\ndevices\t0\t1\t0\n";
        let plan = plan_cgroups(
            ANDROID_V1,
            None,
            "nodev\tcgroup\nnodev\tcgroup2\n",
            proc_cgroups,
        )
        .unwrap();
        assert_eq!(plan.layout(), bootstrap::status::CgroupLayout::Hybrid);
        let CgroupPlan::V1 {
            hierarchies,
            unified,
            mount_v1,
        } = plan
        else {
            panic!("expected v1: {plan:?}")
        };
        // Android mounts no pids hierarchy; k3s needs one: mounted in the chroot. A disabled
        // controller (devices here) is not.
        assert_eq!(mount_v1, vec!["pids".to_owned()]);
        assert!(hierarchies.contains(&(PathBuf::from("/dev/memcg"), "memory".into())));
        assert!(hierarchies.contains(&(PathBuf::from("/dev/cpuset"), "cpuset".into())));
        assert!(hierarchies.contains(&(PathBuf::from("/dev/cpuctl"), "cpu".into())));
        assert!(
            hierarchies.contains(&(PathBuf::from("/sys/fs/cgroup/cpu acct"), "cpuacct".into()))
        );
        assert_eq!(unified, Some(PathBuf::from("/dev/cg2_bpf")));
    }

    #[test]
    fn a_v2_root_without_controllers_gets_the_kernels_v1_ones_mounted() {
        // What a container or a phone may show: cgroup2 at /sys/fs/cgroup offering hugetlb only,
        // while the kernel's v1 controllers live in hierarchies mounted elsewhere.
        let mi = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t1\t1\t1\nmemory\t4\t12\t1\nhugetlb\t0\t1\t1\npids\t8\t1\t1\n";
        let plan = plan_cgroups(
            mi,
            Some("hugetlb"),
            "nodev\tcgroup\nnodev\tcgroup2\n",
            proc_cgroups,
        )
        .unwrap();
        let CgroupPlan::V1 {
            hierarchies,
            unified,
            mount_v1,
        } = plan
        else {
            panic!("expected v1 mounts: {plan:?}")
        };
        assert!(hierarchies.is_empty());
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup")));
        // cpu and cpuacct share a hierarchy: mounted together. hugetlb belongs to cgroup2.
        assert_eq!(mount_v1, ["cpuset", "cpu,cpuacct", "memory", "pids"]);
    }

    #[test]
    fn v2_root_with_controllers_is_bound() {
        let mi = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            plan_cgroups(
                mi,
                Some("cpuset cpu io memory pids"),
                "nodev\tcgroup2\n",
                ""
            )
            .unwrap(),
            CgroupPlan::V2
        );
    }

    #[test]
    fn kernel_without_cgroups_is_refused_clearly() {
        let mi = "20 1 0:19 / /dev rw - tmpfs tmpfs rw\n";
        let e = plan_cgroups(mi, None, "nodev\tsysfs\nnodev\tproc\n", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no usable cgroups") && e.contains("check-kernel"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
