//! The phone itself: its root directory, its "kernel" (a PID + mount namespace whose PID 1 is
//! busybox init, chrooted into the root; a network namespace too for `network = "android"`),
//! its boot sequence (Magisk's post-fs-data and
//! late_start service stages), the root daemon behind `su`, and the adbd listener.

use super::profile::{Profile, RootKind};
use super::transport;
use super::{cgroups, netd, rootfs};
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The shell user adbd runs commands as on a production phone.
pub const AID_SHELL: u32 = 2000;
/// The shell user's supplementary groups (input, log, adb, sdcard_rw, sdcard_r, ext_data_rw,
/// ext_obb_rw, net_bt_admin, net_bt, inet, net_bw_stats, readproc, uhid), as `id` shows them.
pub const SHELL_GROUPS: &[u32] = &[
    1004, 1007, 1011, 1015, 1028, 1078, 1079, 3001, 3002, 3003, 3006, 3009, 3011,
];

/// How a test starts a phone. `Default` is a phone on a free port.
#[derive(Debug, Clone, Default)]
pub struct PhoneOptions {
    /// TCP port for adbd (must be outside 5555–5585); `None` picks a free one.
    pub port: Option<u16>,
    /// Extra system properties (override the profile's).
    pub props: Vec<(String, String)>,
    /// Bytes per second the link carries from the host to the phone, as a USB cable limits
    /// it; `None`: as fast as loopback goes. Shared by all of the phone's connections.
    pub link_rate: Option<u64>,
}

#[derive(Default)]
struct BootState {
    /// Host pid of the phone's PID 1 and the `unshare` holding it.
    init: Option<(i32, Child)>,
    adbd_up: bool,
    boot_completed: bool,
    boots: u32,
    shutting_down: bool,
}

/// State shared by the phone's threads (adbd connections, streams, the su daemon).
pub(crate) struct Inner {
    pub(crate) profile: Profile,
    root: PathBuf,
    port: u16,
    props: Vec<(String, String)>,
    state: Mutex<BootState>,
    state_cv: Condvar,
    reboot_lock: Mutex<()>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    cut: Mutex<Option<u64>>,
    /// The link-rate limit (bytes/s) and when the link is next free: each read from the host
    /// books its bytes' transfer time after the previous ones'.
    link: Option<(u64, Mutex<Instant>)>,
    log: Mutex<Option<std::fs::File>>,
    stopping: AtomicBool,
    keeper: Mutex<std::sync::mpsc::Sender<KeeperJob>>,
}

/// A request to the keeper thread: spawn this command, or stop.
enum KeeperJob {
    Spawn(
        Box<Command>,
        std::sync::mpsc::Sender<std::io::Result<Child>>,
    ),
    Stop,
}

/// The phone's PID 1 is spawned by one long-lived thread with PR_SET_PDEATHSIG, so if the test
/// process dies without dropping the phone (a crash, SIGKILL), the kernel kills the phone too
/// (the death signal follows the spawning thread, hence one thread for every boot).
fn keeper(jobs: std::sync::mpsc::Receiver<KeeperJob>) {
    while let Ok(KeeperJob::Spawn(mut cmd, reply)) = jobs.recv() {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _ = reply.send(cmd.spawn());
    }
}

/// A virtual phone: a real ADB device over TCP on 127.0.0.1 whose shell runs in an aarch64
/// sandbox shaped like Android. Dropping it kills every process it started and unmounts
/// everything it mounted.
pub struct VirtualPhone {
    inner: Arc<Inner>,
    listener: TcpListener,
    su_listener: Option<UnixListener>,
    threads: Vec<std::thread::JoinHandle<()>>,
    host_mounts: Vec<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl VirtualPhone {
    /// Starts the phone described by `tests/profiles/PROFILE.toml`: builds its root, boots it
    /// and listens for adb on 127.0.0.1. Panics with a clear message if that is impossible
    /// (test equipment: a broken phone is a failed test).
    pub fn start(profile_name: &str, opts: PhoneOptions) -> VirtualPhone {
        let profile = Profile::load(profile_name).unwrap_or_else(|e| panic!("{e}"));
        if let Err(why) = cgroups::supported(profile.cgroups) {
            panic!("virtual phone {profile_name}: {why}");
        }
        // Without a chosen port the kernel picks one and the listener is kept from that moment:
        // picking a free port and binding it later lets a parallel test take it in between.
        let listener =
            TcpListener::bind(("127.0.0.1", opts.port.unwrap_or(0))).unwrap_or_else(|e| {
                panic!(
                    "virtual phone: cannot listen on 127.0.0.1:{}: {e}",
                    opts.port.unwrap_or(0)
                )
            });
        let port = listener.local_addr().expect("bound listener").port();
        assert!(
            !(5555..=5585).contains(&port),
            "virtual phone port {port} is in 5555–5585, which the adb server scans for emulators: \
             pick a port outside it"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("vphone-{port}-"))
            .tempdir()
            .expect("create phone dir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut host_mounts = Vec::new();
        if let Some(mib) = profile.data_size_mib {
            // A small /data of its own, on the host side so it survives the phone's reboots
            // (it is the phone's disk).
            let data = root.join("data");
            std::fs::create_dir(&data).unwrap();
            run_ok(
                Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={mib}m,mode=0771,uid=1000,gid=1000"),
                        "vphone-data",
                    ])
                    .arg(&data),
            );
            host_mounts.push(data);
        }
        rootfs::build(&root, &profile);
        let (keeper_tx, keeper_rx) = std::sync::mpsc::channel();
        let keeper_thread = std::thread::spawn(move || keeper(keeper_rx));
        let inner = Arc::new(Inner {
            profile,
            root,
            port,
            props: opts.props,
            state: Mutex::new(BootState::default()),
            state_cv: Condvar::new(),
            reboot_lock: Mutex::new(()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            cut: Mutex::new(None),
            link: opts
                .link_rate
                .map(|r| (r.max(1), Mutex::new(Instant::now()))),
            log: Mutex::new(None),
            stopping: AtomicBool::new(false),
            keeper: Mutex::new(keeper_tx),
        });
        *inner.log.lock().unwrap() = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(inner.root.join(".vphone/adbd.log"))
            .ok();
        let mut threads = vec![keeper_thread];
        let su_listener = if inner.profile.root != RootKind::None {
            let sock = inner.root.join(".vphone/su.sock");
            let l = UnixListener::bind(&sock).expect("bind su daemon socket");
            std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .unwrap();
            let l2 = l.try_clone().unwrap();
            let phone = inner.clone();
            threads.push(std::thread::spawn(move || su_daemon(l2, phone)));
            Some(l)
        } else {
            None
        };
        let mut phone = VirtualPhone {
            inner: inner.clone(),
            listener,
            su_listener,
            threads,
            host_mounts,
            dir: Some(dir),
        };
        inner.boot();
        let l = phone.listener.try_clone().unwrap();
        phone.threads.push(std::thread::spawn(move || {
            for conn in l.incoming() {
                if inner.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let inner = inner.clone();
                std::thread::spawn(move || {
                    if inner.wait_adbd() {
                        transport::serve(conn, inner);
                    }
                });
            }
        }));
        phone
    }

    /// The adb serial the host sees: `127.0.0.1:PORT`.
    pub fn serial(&self) -> String {
        format!("127.0.0.1:{}", self.inner.port)
    }

    /// The TCP port adbd listens on.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The phone's root directory on the host (its `/`). Mounts made inside the phone (`/proc`,
    /// `/sys`, `/dev`, `/storage/emulated`) are not visible here; files are.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The profile the phone was started from.
    pub fn profile(&self) -> &Profile {
        &self.inner.profile
    }

    /// Reboots the phone as `adb reboot` does: connections drop, every process dies, every mount
    /// made inside goes, then it boots (post-fs-data, service.d and module service.sh scripts)
    /// and accepts connections again. Returns once the boot completed.
    pub fn reboot(&self) {
        self.inner.reboot();
    }

    /// Waits until `sys.boot_completed` is 1 (after a reboot the host asked for). Panics after
    /// 60 s.
    pub fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = self.inner.state.lock().unwrap();
        while !st.boot_completed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "phone {} did not finish booting in 60 s",
                self.serial()
            );
            st = self.inner.state_cv.wait_timeout(st, left).unwrap().0;
        }
    }

    /// How many times the phone has booted (1 after start).
    pub fn boot_count(&self) -> u32 {
        self.inner.state.lock().unwrap().boots
    }

    /// Fault injection: after `bytes` more bytes arrive from the host (over all connections),
    /// the connection carrying them is dropped, as if the cable was pulled. One shot.
    pub fn cut_transport_after(&self, bytes: u64) {
        *self.inner.cut.lock().unwrap() = Some(bytes);
    }

    /// Host pids of every process running in the phone (its PID 1 included).
    pub fn processes(&self) -> Vec<u32> {
        self.inner.processes()
    }

    /// Runs `command` in the phone's shell as root (uid 0), as boot scripts run; returns
    /// (exit code, stdout, stderr). For test set-up, not a path a host has on a real phone.
    pub fn root_shell(&self, command: &str) -> (i32, String, String) {
        let out = self
            .inner
            .shell_command(command, true)
            .process_group(0)
            .stdin(Stdio::null())
            .output()
            .expect("run a command in the phone");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The phone's logs (adbd, boot scripts), for test failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for f in ["adbd.log", "boot.log", "init.log"] {
            if let Ok(t) = std::fs::read_to_string(self.inner.root.join(".vphone").join(f)) {
                text.push_str(&format!("--- {f}\n{t}"));
            }
        }
        text
    }
}

impl Drop for VirtualPhone {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on sockets we own wakes the threads blocked in accept().
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
            if let Some(l) = &self.su_listener {
                libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        {
            let mut st = self.inner.state.lock().unwrap();
            st.shutting_down = true;
            self.inner.state_cv.notify_all();
        }
        self.inner.drop_connections();
        self.inner.power_off();
        let _ = self.inner.keeper.lock().unwrap().send(KeeperJob::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for m in self.host_mounts.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The phone's init: what Android's init and ueventd provide, run by its PID 1 as a host shell
/// (host tools, `$1` the phone's root) before it becomes busybox init inside the root. The
/// profile picks the `/dev`, cgroup and network parts.
fn init_script(profile: &Profile) -> String {
    let dev = if cgroups::own_dev(profile.cgroups) {
        // Android's /dev is a tmpfs that ueventd fills; here it gets the machine's device nodes
        // (copies) and its /dev directories (binds: pts, shm, ...), so what the phone's init
        // makes in it (the cgroup mount points) never lands in the machine's /dev.
        r#"mount -t tmpfs -o nosuid,relatime,mode=755 tmpfs "$R/dev"
for e in /dev/*; do
  n="${e#/dev/}"
  if [ -d "$e" ] && [ ! -L "$e" ]; then
    mkdir "$R/dev/$n"
    mount --rbind "$e" "$R/dev/$n"
  else
    cp -a "$e" "$R/dev/$n"
  fi
done
"#
    } else {
        "mount --rbind /dev \"$R/dev\"\n"
    };
    let network = if netd::own_namespace(profile) {
        netd::setup_script()
    } else {
        String::new()
    };
    format!(
        r#"
set -e
R="$1"
# Its own host name (and IPC): what root does inside never renames the build machine.
hostname localhost
# The phone's / is a mount point, as on Android (mount --make-rprivate / works inside).
mount --rbind "$R" "$R"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# procfs cannot hold new files: the kernel config fixture is bind-mounted over the real entry.
mount --bind "$R/.vphone/config.gz" "$R/proc/config.gz"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o mode=0755 power_supply "$R/sys/class/power_supply"
cp -a "$R/.vphone/power_supply/." "$R/sys/class/power_supply/"
{dev}{cgroups}{network}mount --bind "$R/system" "$R/system"
mount -o remount,bind,ro "$R/system"
mount --bind "$R/data/media" "$R/storage/emulated"
# "ready" comes from inside the root, so the host never sees PID 1 before its chroot.
exec chroot "$R" /bin/busybox sh -c \
  'echo ready; exec /bin/busybox init >>/.vphone/init.log 2>&1 </dev/null'
"#,
        cgroups = cgroups::mount_script(profile.cgroups),
    )
}

impl Inner {
    pub(crate) fn log(&self, line: &str) {
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    pub(crate) fn banner(&self) -> String {
        let props = self.all_props();
        let get = |k: &str| {
            props
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        format!(
            "device::ro.product.name={};ro.product.model={};ro.product.device={};features={}",
            get("ro.product.name"),
            get("ro.product.model"),
            get("ro.product.device"),
            super::FEATURES
        )
    }

    fn all_props(&self) -> Vec<(String, String)> {
        let mut props = self.profile.build_props();
        for (k, v) in &self.props {
            props.retain(|(key, _)| key != k);
            props.push((k.clone(), v.clone()));
        }
        props
    }

    pub(crate) fn register_connection(&self, tcp: TcpStream) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap().insert(id, tcp);
        id
    }

    pub(crate) fn unregister_connection(&self, id: u64) {
        self.conns.lock().unwrap().remove(&id);
    }

    /// Marks the phone as shutting down for a reboot (no longer booted, adbd down).
    pub(crate) fn going_down(&self) {
        let mut st = self.state.lock().unwrap();
        st.boot_completed = false;
        st.adbd_up = false;
        self.state_cv.notify_all();
    }

    fn drop_connections(&self) {
        for (_, c) in self.conns.lock().unwrap().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(crate) fn cut_budget(&self) -> Option<u64> {
        *self.cut.lock().unwrap()
    }

    pub(crate) fn spend_cut_budget(&self, n: u64) {
        if let Some(b) = self.cut.lock().unwrap().as_mut() {
            *b = b.saturating_sub(n);
        }
    }

    /// Paces the link: `n` bytes just arrived from the host; returns once a link of the
    /// configured rate would have carried them (at once without a limit).
    pub(crate) fn pace_link(&self, n: usize) {
        let Some((rate, free_at)) = &self.link else {
            return;
        };
        let wait_until = {
            let mut free_at = free_at.lock().unwrap();
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / *rate as f64);
            *free_at
        };
        let now = Instant::now();
        if wait_until > now {
            std::thread::sleep(wait_until - now);
        }
    }

    pub(crate) fn disarm_cut(&self) {
        self.log("adbd: transport cut (fault injection)");
        *self.cut.lock().unwrap() = None;
    }

    /// Blocks a new connection until adbd is up; false when the phone is going away.
    fn wait_adbd(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        while !st.adbd_up && !st.shutting_down {
            st = self.state_cv.wait(st).unwrap();
        }
        !st.shutting_down
    }

    fn init_pid(&self) -> Option<i32> {
        self.state.lock().unwrap().init.as_ref().map(|(p, _)| *p)
    }

    /// A command running `command` with the phone's `/system/bin/sh` inside the phone (its
    /// mount and PID namespaces and root), as the shell user, or as root for `root`.
    pub(crate) fn shell_command(&self, command: &str, root: bool) -> Command {
        let mut args: Vec<String> = Vec::new();
        if !command.is_empty() {
            args.push("-c".into());
            args.push(command.into());
        }
        self.phone_command(&args, root)
    }

    /// `/system/bin/sh ARGS` inside the phone. Callers put it in its own process group (or
    /// session, for a terminal) so hanging it up reaches everything it started.
    fn phone_command(&self, sh_args: &[String], root: bool) -> Command {
        let pid = self.init_pid().unwrap_or(0);
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-p", "-u", "-i"]);
        // What runs on the phone is in its network namespace; adbd (this process) stays in the
        // machine's, where the host's adb reaches it.
        if netd::own_namespace(&self.profile) {
            cmd.arg("-n");
        }
        cmd.args(["--", "/usr/sbin/chroot"]);
        if root {
            cmd.args(["--userspec=0:0", "--groups=0"]);
        } else {
            let groups: Vec<String> = SHELL_GROUPS.iter().map(u32::to_string).collect();
            cmd.arg(format!("--userspec={AID_SHELL}:{AID_SHELL}"))
                .arg(format!("--groups={}", groups.join(",")));
        }
        cmd.arg(&self.root).arg("/system/bin/sh").args(sh_args);
        cmd.env_clear()
            .envs(rootfs::android_env(&self.profile, root));
        cmd
    }

    /// Makes the calling thread see the phone as adbd's sync service does: the phone's mount
    /// namespace and root, with the shell user's filesystem identity (uid/gid 2000 and its
    /// groups; the capabilities that bypass file permissions drop with the fsuid change).
    pub(crate) fn enter_as_shell_user(&self) -> std::io::Result<()> {
        let pid = self
            .init_pid()
            .ok_or_else(|| std::io::Error::other("phone is not running"))?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
        let root = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).unwrap();
        let groups: Vec<libc::gid_t> = SHELL_GROUPS.to_vec();
        // SAFETY: thread-local credential and namespace calls on valid arguments. CLONE_FS is
        // unshared first so setns/chroot change this thread only; setgroups goes through the
        // raw syscall because glibc's wrapper would apply it to every thread of the process.
        unsafe {
            if libc::unshare(libc::CLONE_FS) != 0
                || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                || libc::chroot(root.as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
                || libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::setfsgid(AID_SHELL);
            libc::setfsuid(AID_SHELL);
        }
        Ok(())
    }

    fn processes(&self) -> Vec<u32> {
        let Some(pid) = self.init_pid() else {
            return vec![];
        };
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
            return vec![];
        };
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|p| {
                        std::fs::read_link(format!("/proc/{p}/ns/pid"))
                            .ok()
                            .as_ref()
                            == Some(&ns)
                    })
                    .collect()
            })
            .unwrap_or_default();
        pids.sort();
        pids
    }

    /// Kills the phone's PID 1, which takes every process of its PID namespace with it (daemons
    /// that setsid included); its mount namespace, and so every mount made inside, goes with
    /// the last process.
    fn power_off(&self) {
        let init = {
            let mut st = self.state.lock().unwrap();
            st.adbd_up = false;
            st.boot_completed = false;
            self.state_cv.notify_all();
            st.init.take()
        };
        if let Some((pid, mut unshare)) = init {
            // SAFETY: signalling the phone's PID 1, a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // The kernel lets PID 1 finish dying only once every other process of its namespace
            // is gone; unshare reaps it, so when unshare exits the phone is empty.
            let _ = unshare.wait();
        }
    }

    pub(crate) fn reboot(self: &Arc<Self>) {
        let _serial = self.reboot_lock.lock().unwrap();
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        self.log("phone: rebooting");
        self.drop_connections();
        self.power_off();
        self.boot();
    }

    /// Boots: PID 1 and the mounts, then Magisk's stages: post-fs-data (blocking), adbd up,
    /// late_start service (non-blocking), then `sys.boot_completed=1`.
    fn boot(self: &Arc<Self>) {
        std::fs::write(self.root.join(".vphone/runtime.prop"), "").unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--uts", "--ipc"]);
        if netd::own_namespace(&self.profile) {
            cmd.arg("--net");
        }
        cmd.args([
            "--propagation",
            "private",
            "--kill-child=SIGKILL",
            "--",
            "/bin/sh",
            "-c",
            &init_script(&self.profile),
            "vphone-init",
        ])
        .arg(&self.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let (tx, rx) = std::sync::mpsc::channel();
        self.keeper
            .lock()
            .unwrap()
            .send(KeeperJob::Spawn(Box::new(cmd), tx))
            .expect("keeper thread alive");
        let mut unshare = rx.recv().unwrap().expect("run unshare");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(unshare.stdout.take().unwrap());
        let _ = out.read_line(&mut line);
        if line.trim() != "ready" {
            let mut err = String::new();
            let _ = unshare.stderr.take().unwrap().read_to_string(&mut err);
            let _ = unshare.wait();
            panic!("virtual phone {}: boot failed: {err}", self.port);
        }
        let upid = unshare.id();
        let children = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
            .expect("read unshare's child");
        let pid: i32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("unshare has a child");
        {
            let mut st = self.state.lock().unwrap();
            st.init = Some((pid, unshare));
            st.boots += 1;
            self.watch_init(upid, st.boots);
        }
        self.set_runtime_props(&[("ro.boottime.init", "1"), ("init.svc.bootanim", "running")]);
        self.run_boot_stage("post-fs-data", true);
        {
            let mut st = self.state.lock().unwrap();
            st.adbd_up = true;
            self.state_cv.notify_all();
        }
        self.run_boot_stage("service", false);
        self.set_runtime_props(&[
            ("init.svc.bootanim", "stopped"),
            ("dev.bootcomplete", "1"),
            ("sys.boot_completed", "1"),
        ]);
        let mut st = self.state.lock().unwrap();
        st.boot_completed = true;
        self.state_cv.notify_all();
    }

    /// If PID 1 dies on its own (`reboot` run as root inside the phone, or a crash), the phone
    /// reboots, as Android's init would bring the device back.
    fn watch_init(self: &Arc<Self>, unshare_pid: u32, boot: u32) {
        let phone = Arc::downgrade(self);
        std::thread::spawn(move || {
            // SAFETY: waitid with WNOWAIT only observes the exit; power_off still reaps the child.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            unsafe {
                libc::waitid(
                    libc::P_PID,
                    unshare_pid,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            let Some(phone) = phone.upgrade() else { return };
            let spontaneous = {
                let st = phone.state.lock().unwrap();
                st.boots == boot && st.init.is_some() && !st.shutting_down
            };
            if spontaneous && !phone.stopping.load(Ordering::SeqCst) {
                phone.log("phone: init exited (reboot from inside the phone): booting again");
                phone.reboot();
            }
        });
    }

    fn set_runtime_props(&self, props: &[(&str, &str)]) {
        let path = self.root.join(".vphone/runtime.prop");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        for (k, v) in props {
            text.push_str(&format!("{k}={v}\n"));
        }
        // Write-then-rename: getprop in the phone never sees a half-written file.
        let tmp = self.root.join(".vphone/runtime.prop.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// Runs Magisk's general scripts (`/data/adb/STAGE.d/*.sh`, executable ones) and the enabled
    /// modules' `STAGE.sh`, as root with the phone's shell. post-fs-data blocks; service does not.
    fn run_boot_stage(&self, stage: &str, blocking: bool) {
        let mut scripts = Vec::new();
        let general = self.root.join(format!("data/adb/{stage}.d"));
        if let Ok(dir) = std::fs::read_dir(&general) {
            let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                let exec = std::fs::metadata(&f)
                    .map(|m| {
                        m.is_file()
                            && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111
                                != 0
                    })
                    .unwrap_or(false);
                if exec {
                    scripts.push(format!(
                        "/data/adb/{stage}.d/{}",
                        f.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(self.root.join("data/adb/modules")) {
            let mut mods: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            mods.sort();
            for m in mods {
                if m.join("disable").exists() || m.join("remove").exists() {
                    continue;
                }
                if m.join(format!("{stage}.sh")).is_file() {
                    let name = m.file_name().unwrap().to_string_lossy().into_owned();
                    scripts.push(format!("/data/adb/modules/{name}/{stage}.sh"));
                }
            }
        }
        for script in scripts {
            self.log(&format!("boot: {stage}: {script}"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join(".vphone/boot.log"))
                .expect("open boot log");
            let mut cmd = self.phone_command(std::slice::from_ref(&script), true);
            cmd.process_group(0);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            match cmd.spawn() {
                Ok(mut child) if blocking => {
                    let _ = child.wait();
                }
                Ok(mut child) => {
                    std::thread::spawn(move || {
                        let _ = child.wait();
                    });
                }
                Err(e) => self.log(&format!("boot: cannot run {script}: {e}")),
            }
        }
    }
}

/// The root daemon behind the phone's `su` (Magisk's magiskd, or KernelSU's grant): receives a
/// client's argv, cwd and stdio descriptors, runs the request as root, answers its exit status.
fn su_daemon(listener: UnixListener, phone: Arc<Inner>) {
    for conn in listener.incoming() {
        if phone.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let phone = phone.clone();
        std::thread::spawn(move || {
            if let Err(e) = su_request(conn, &phone) {
                phone.log(&format!("su daemon: {e}"));
            }
        });
    }
}

fn recv_with_fds(sock: &UnixStream) -> std::io::Result<(u32, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut iov = libc::iovec {
        iov_base: len.as_mut_ptr().cast(),
        iov_len: 4,
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: a zeroed msghdr is valid; we point it at buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _; // usize on glibc, u32 on musl
    // SAFETY: recvmsg on our socket with the buffers above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n != 4 {
        return Err(std::io::Error::other("short su request header"));
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((u32::from_le_bytes(len), fds))
}

fn su_request(mut sock: UnixStream, phone: &Inner) -> std::io::Result<()> {
    let (len, mut fds) = recv_with_fds(&sock)?;
    if fds.len() != 3 {
        return Err(std::io::Error::other("su client sent no stdio"));
    }
    let mut body = vec![0u8; len as usize];
    sock.read_exact(&mut body)?;
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos + 4 <= body.len() {
        let n = u32::from_le_bytes(body[pos..pos + 4].try_into().unwrap()) as usize;
        fields.push(body.get(pos + 4..pos + 4 + n).unwrap_or_default().to_vec());
        pos += 4 + n;
    }
    let argc = fields
        .first()
        .and_then(|f| f.get(..4))
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        .unwrap_or(0);
    let argv: Vec<String> = fields
        .iter()
        .skip(1)
        .take(argc)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = fields
        .get(1 + argc)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_else(|| "/".into());
    let stderr = fds.pop().unwrap();
    let stdout = fds.pop().unwrap();
    let stdin = fds.pop().unwrap();
    let status = match super::su::parse_args(&argv[1.min(argv.len())..]) {
        super::su::Request::Version => {
            let mut out = std::fs::File::from(stdout);
            let _ = writeln!(out, "{}", phone.profile.su_version);
            0
        }
        super::su::Request::VersionCode => {
            let mut out = std::fs::File::from(stdout);
            let _ = writeln!(out, "{}", phone.profile.su_version_code);
            0
        }
        super::su::Request::Usage(msg, code) => {
            let mut err = std::fs::File::from(stderr);
            let _ = write!(err, "{msg}");
            code
        }
        super::su::Request::Run { .. } if phone.profile.su_denies => {
            // What Magisk's su client prints when the daemon's policy denies the uid.
            let mut err = std::fs::File::from(stderr);
            let _ = writeln!(err, "Permission denied");
            1
        }
        super::su::Request::Run { sh_args } => {
            // cd to the client's directory first, as magiskd does.
            let mut args = vec![
                "-c".to_owned(),
                "cd \"$1\" 2>/dev/null; shift; exec /system/bin/sh \"$@\"".to_owned(),
                "su".to_owned(),
                cwd,
            ];
            args.extend(sh_args);
            let mut cmd = phone.phone_command(&args, true);
            cmd.process_group(0);
            cmd.stdin(Stdio::from(stdin))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
            match cmd.status() {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
                }
                Err(_) => 1,
            }
        }
    };
    sock.write_all(&status.to_le_bytes())
}
