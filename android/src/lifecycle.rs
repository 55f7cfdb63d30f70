//! A worker's lifecycle on a phone once it is enrolled — status, start, stop, restart, logs, a
//! shell in its chroot, unenroll — and the root-command helpers every phone operation shares.
//! Everything goes through [`Device`]: no operation knows how bytes reach the phone.

use crate::device::{Device, ShellOutput, as_root, sh_quote};
use crate::error::PhoneError;
use bootstrap::kube::{KubeClient, NodeState};
use bootstrap::layout::phone;
use bootstrap::progress::{Progress, ProgressExt};
use bootstrap::status::Status;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Runs `cmd` as root and fails with a message naming `what` when it exits non-zero.
pub fn root_ok(dev: &dyn Device, cmd: &str, what: &str) -> Result<ShellOutput, PhoneError> {
    let out = dev.shell(&as_root(cmd))?;
    if !out.success() {
        return Err(remote(dev, what, &out, ""));
    }
    Ok(out)
}

pub(crate) fn remote(dev: &dyn Device, what: &str, out: &ShellOutput, hint: &str) -> PhoneError {
    PhoneError::Remote {
        serial: dev.serial().to_owned(),
        what: what.to_owned(),
        message: out.err_line(),
        hint: hint.to_owned(),
    }
}

/// Writes `content` to `path` as root with `mode` (an octal string), through stdin — never a
/// command line — and `node-runtime write-files`, which renames it into place whole. The phone
/// must have node-runtime.
pub fn write_root_file(
    dev: &dyn Device,
    path: &str,
    mode: &str,
    content: &[u8],
) -> Result<(), PhoneError> {
    let cmd = as_root(&write_files_command(&[(path, mode, content)]));
    let out = dev.exec(&cmd, Some(&mut &content[..]), &mut |_| {})?;
    if !out.success() {
        return Err(remote(dev, &format!("writing {path}"), &out, ""));
    }
    Ok(())
}

/// The `node-runtime write-files` command taking `files` (path, octal mode, contents) from
/// stdin, one after the other, each exactly its length.
pub(crate) fn write_files_command(files: &[(&str, &str, &[u8])]) -> String {
    let specs: Vec<String> = files
        .iter()
        .map(|(path, mode, content)| sh_quote(&format!("{path}:{mode}:{}", content.len())))
        .collect();
    format!(
        "{} write-files --file {}",
        phone::BIN,
        specs.join(" --file ")
    )
}

/// The sha256 of each existing file among `paths` on the phone (root), by path.
pub fn remote_hashes(
    dev: &dyn Device,
    paths: &[&str],
) -> Result<BTreeMap<String, String>, PhoneError> {
    let out = dev.shell(&as_root(&hashes_command(paths)))?;
    Ok(parse_hashes(&out))
}

/// The (root) command behind [`remote_hashes`].
pub(crate) fn hashes_command(paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
    // sha256sum exits non-zero when some file is missing; the lines it did print are what exists.
    format!("sha256sum {} 2>/dev/null", list.join(" "))
}

pub(crate) fn parse_hashes(out: &ShellOutput) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((hash, path)) = line.split_once(char::is_whitespace) {
            let path = path.trim_start().trim_start_matches('*');
            if bootstrap::node_config::is_sha256_hex(hash) {
                map.insert(path.to_owned(), hash.to_owned());
            }
        }
    }
    map
}

/// The root command that prints `node-runtime status --json`.
fn status_cmd() -> String {
    as_root(&format!(
        "{} status --json --config {}",
        phone::BIN,
        phone::CONFIG
    ))
}

/// Reads node-runtime's status record, None when there is none (never started, or not enrolled).
pub fn read_status(dev: &dyn Device) -> Result<Option<Status>, PhoneError> {
    let out = dev.shell(&status_cmd())?;
    Ok(serde_json::from_slice::<Status>(&out.stdout).ok())
}

/// True when the phone carries node-runtime and its config.
pub fn is_enrolled(dev: &dyn Device) -> Result<bool, PhoneError> {
    let h = remote_hashes(dev, &[phone::BIN, phone::CONFIG])?;
    Ok(h.len() == 2)
}

/// `node-runtime stop` (no error when it is not running).
pub fn stop_worker(dev: &dyn Device) -> Result<(), PhoneError> {
    let out = dev.shell(&as_root(&format!(
        "{} stop --config {}",
        phone::BIN,
        phone::CONFIG
    )))?;
    if !out.success() {
        // Distinguish "was not running" from a real failure by asking for the status again.
        if let Some(s) = read_status(dev)?
            && s.live()
        {
            return Err(remote(dev, "stopping the worker", &out, ""));
        }
    }
    Ok(())
}

/// `node-runtime run --detach`.
pub fn start_worker(dev: &dyn Device) -> Result<(), PhoneError> {
    root_ok(
        dev,
        &format!("{} run --detach --config {}", phone::BIN, phone::CONFIG),
        "starting node-runtime",
    )?;
    Ok(())
}

/// Polls `node-runtime status` until the agent is ready — its kubelet answers its health
/// endpoint inside the phone — or fails after `wait`.
pub fn wait_running(dev: &dyn Device, wait: Duration) -> Result<Status, PhoneError> {
    let until = Instant::now() + wait;
    let mut last = "no status yet".to_owned();
    loop {
        if let Some(s) = read_status(dev)? {
            if s.ready() {
                return Ok(s);
            }
            if s.agent_up() {
                // Running, its kubelet not answering yet: say what the probe got.
                last = format!(
                    "running, kubelet health: {}",
                    s.healthz.as_deref().unwrap_or("not probed yet")
                );
                if Instant::now() >= until {
                    return Err(PhoneError::NotRunning {
                        serial: dev.serial().to_owned(),
                        secs: wait.as_secs(),
                        state: last,
                    });
                }
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            let note = s
                .message
                .as_ref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default();
            last = if s.live() {
                format!("{:?}{note}", s.state).to_lowercase()
            } else {
                format!(
                    "node-runtime (pid {}) is not running; its last record says {:?}{note}",
                    s.pid, s.state
                )
                .to_lowercase()
            };
        }
        if Instant::now() >= until {
            return Err(PhoneError::NotRunning {
                serial: dev.serial().to_owned(),
                secs: wait.as_secs(),
                state: last,
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Removes everything enroll put on the phone. Safe to rerun.
pub fn unenroll(dev: &dyn Device, progress: &dyn Progress) -> Result<(), PhoneError> {
    let serial = dev.serial().to_owned();
    progress.step("stop", None);
    if remote_hashes(dev, &[phone::BIN])?.contains_key(phone::BIN) {
        stop_worker(dev)?;
    }
    progress.done("stop", String::new());
    // rm -rf does not stop at mount points: refuse while anything is mounted below the base.
    let mounts = root_ok(dev, "cat /proc/mounts", "reading mounts")?.out();
    let below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m == phone::BASE || m.starts_with(&format!("{}/", phone::BASE)))
        .collect();
    if !below.is_empty() {
        return Err(PhoneError::StillMounted {
            serial,
            base: phone::BASE,
            mounts: below.join(", "),
        });
    }
    progress.step("remove", None);
    root_ok(
        dev,
        &format!(
            "rm -rf {} {} {}",
            phone::MODULE_DIR,
            phone::BASE,
            phone::STAGING_BIN
        ),
        "removing armfleet",
    )?;
    progress.done("remove", String::new());
    Ok(())
}

/// Fails with [`PhoneError::NotEnrolled`] unless the phone carries a worker.
pub fn require_enrolled(dev: &dyn Device) -> Result<(), PhoneError> {
    if !is_enrolled(dev)? {
        return Err(PhoneError::NotEnrolled {
            serial: dev.serial().to_owned(),
        });
    }
    Ok(())
}

/// `phonectl stop`: the worker stops, and stays stopped across reboots (the boot hook obeys the
/// flag) until `start`.
pub fn stop(dev: &dyn Device) -> Result<(), PhoneError> {
    require_enrolled(dev)?;
    write_root_file(dev, phone::DISABLED, "0644", b"stopped by phonectl\n")?;
    stop_worker(dev)
}

/// What `phonectl stop` would do, read from the phone without changing it (`--dry-run`).
pub fn plan_stop(dev: &dyn Device) -> Result<Vec<String>, PhoneError> {
    require_enrolled(dev)?;
    let mut actions = Vec::new();
    if remote_hashes(dev, &[phone::DISABLED])?.is_empty() {
        actions.push(format!(
            "write {} so the boot hook leaves the worker stopped after reboots",
            phone::DISABLED
        ));
    }
    match read_status(dev)?.filter(Status::live) {
        Some(s) => actions.push(format!(
            "stop node-runtime (pid {}) and its k3s agent ({}), unmount its chroot, give charging back",
            s.pid,
            s.agent_pid
                .map_or_else(|| "not running".to_owned(), |p| format!("pid {p}"))
        )),
        None => actions.push("nothing to stop: node-runtime is not running".to_owned()),
    }
    Ok(actions)
}

/// What `phonectl unenroll` would remove, read from the phone without changing it
/// (`--dry-run`): the worker stopped first when it runs, then each of armfleet's paths that
/// exists, with its size.
pub fn plan_unenroll(dev: &dyn Device) -> Result<Vec<String>, PhoneError> {
    let mut actions = Vec::new();
    if read_status(dev)?.is_some_and(|s| s.live()) {
        actions.push("stop the worker".to_owned());
    }
    let paths = [phone::MODULE_DIR, phone::BASE, phone::STAGING_BIN];
    let quoted: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
    // `du -skx` prints "KIB<tab>PATH" for each path that exists (and nothing for the others);
    // -x keeps it off what a running worker has mounted in its chroot (/proc, /sys, /dev).
    let out = dev.shell(&as_root(&format!(
        "for p in {}; do [ -e \"$p\" ] && du -skx \"$p\"; done; true",
        quoted.join(" ")
    )))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((kib, path)) = line.split_once(char::is_whitespace)
            && let Ok(kib) = kib.parse::<u64>()
        {
            actions.push(format!(
                "remove {} ({})",
                path.trim(),
                bootstrap::progress::human_bytes(kib * 1024)
            ));
        }
    }
    if actions.is_empty() {
        actions.push("nothing: armfleet is not on this phone".to_owned());
    }
    Ok(actions)
}

/// Undoes `stop`'s flag: the boot hook starts the worker again after a reboot.
fn clear_stopped_flag(dev: &dyn Device) -> Result<(), PhoneError> {
    root_ok(
        dev,
        &format!("rm -f {}", phone::DISABLED),
        "clearing the stopped flag",
    )?;
    Ok(())
}

/// `phonectl start`: starts the supervisor unless one already runs the agent (as the phone
/// judges it: a dead supervisor's record does not count), then waits until it is ready (and, with
/// a cluster to ask, until its Node is Ready).
pub fn start(
    dev: &dyn Device,
    wait: Duration,
    cluster: Option<&KubeClient>,
) -> Result<Status, PhoneError> {
    require_enrolled(dev)?;
    clear_stopped_flag(dev)?;
    if !read_status(dev)?.is_some_and(|s| s.agent_up()) {
        start_worker(dev)?;
    }
    let started = Instant::now();
    let st = wait_running(dev, wait)?;
    if let Some(k) = cluster {
        wait_node_ready(
            dev,
            k,
            &st.node_name,
            wait.saturating_sub(started.elapsed()),
        )?;
    }
    Ok(st)
}

/// `phonectl restart`: stop, start, wait.
pub fn restart(
    dev: &dyn Device,
    wait: Duration,
    cluster: Option<&KubeClient>,
) -> Result<Status, PhoneError> {
    require_enrolled(dev)?;
    clear_stopped_flag(dev)?;
    stop_worker(dev)?;
    start_worker(dev)?;
    let started = Instant::now();
    let st = wait_running(dev, wait)?;
    if let Some(k) = cluster {
        wait_node_ready(
            dev,
            k,
            &st.node_name,
            wait.saturating_sub(started.elapsed()),
        )?;
    }
    Ok(st)
}

/// Polls the API until the Node `node` is Ready, or fails after `wait` (at least a few seconds:
/// a Node registers a moment after its kubelet answers).
pub fn wait_node_ready(
    dev: &dyn Device,
    cluster: &KubeClient,
    node: &str,
    wait: Duration,
) -> Result<(), PhoneError> {
    let until = Instant::now() + wait.max(Duration::from_secs(5));
    loop {
        let last = match cluster.node_state(node) {
            Ok(NodeState::Ready) => return Ok(()),
            Ok(NodeState::NotReady(why)) => format!("NotReady: {why}"),
            Ok(NodeState::Missing) => "not registered yet".to_owned(),
            // The API may be briefly unreachable; keep the error for the message.
            Err(e) => e.to_string(),
        };
        if Instant::now() >= until {
            return Err(PhoneError::NodeNotReady {
                serial: dev.serial().to_owned(),
                node: node.to_owned(),
                secs: wait.as_secs(),
                state: last,
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The root command that prints the worker's logs (`tail` of each log file).
pub fn logs_command(lines: u32, follow: bool) -> String {
    as_root(&format!(
        "cd {}{} 2>/dev/null && tail -n {lines} {}*.log",
        phone::ROOTFS,
        bootstrap::layout::worker::LOG_DIR,
        if follow { "-f " } else { "" }
    ))
}

/// The root command for `phonectl shell`: `argv` (or a login shell) in the worker's chroot, inside
/// the live supervisor's mount namespace when there is one (so /proc, /dev and the data image are
/// there). nsenter is probed first (it can be missing or refused) rather than retrying the user's
/// command, which must run exactly once.
pub fn shell_command(status: Option<&Status>, argv: &[String]) -> String {
    let inner = if argv.is_empty() {
        "/bin/sh -l".to_owned()
    } else {
        let q: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
        format!("/bin/sh -c {}", sh_quote(&q.join(" ")))
    };
    let plain = format!("chroot {} {inner}", phone::ROOTFS);
    let chroot = match status.filter(|s| s.live()).map(|s| s.pid) {
        Some(pid) => format!(
            "if nsenter -t {pid} -m -- true 2>/dev/null; then nsenter -t {pid} -m -- {plain}; else {plain}; fi"
        ),
        None => plain,
    };
    as_root(&format!("export HOME=/root; {chroot}"))
}

/// One row of `phonectl devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    /// The serial.
    pub serial: String,
    /// The adb state (`device`, `unauthorized`, ...).
    pub state: String,
    /// `ro.product.model` (or the banner's model).
    pub model: Option<String>,
    /// `ro.build.version.release`.
    pub android: Option<String>,
    /// `ro.product.cpu.abi`.
    pub abi: Option<String>,
    /// `yes` / `no`, when the phone answered.
    pub root: Option<String>,
    /// Whether it carries a worker (known only with root).
    pub enrolled: Option<bool>,
}

/// Describes a listed phone: what adb says, and what the phone itself says when it is ready.
pub fn describe(
    serial: &str,
    state: &str,
    banner_model: Option<&str>,
    dev: Option<&dyn Device>,
) -> DeviceRow {
    let mut row = DeviceRow {
        serial: serial.to_owned(),
        state: state.to_owned(),
        model: banner_model.map(str::to_owned),
        android: None,
        abi: None,
        root: None,
        enrolled: None,
    };
    if let Some(dev) = dev {
        let prop = |k: &str| {
            dev.shell(&format!("getprop {k}"))
                .ok()
                .map(|o| o.out())
                .filter(|s| !s.is_empty())
        };
        row.android = prop("ro.build.version.release");
        row.abi = prop("ro.product.cpu.abi");
        row.model = prop("ro.product.model").or(row.model);
        let rooted = dev
            .shell(&as_root("id -u"))
            .is_ok_and(|o| o.success() && o.out() == "0");
        row.root = Some(if rooted { "yes" } else { "no" }.into());
        if rooted {
            row.enrolled = is_enrolled(dev).ok();
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_enters_only_a_live_supervisors_namespace() {
        let mut st: Status = serde_json::from_str(
            r#"{"schema":1,"version":"0","node_name":"p","pid":4242,"started_at":0,"updated_at":0,
            "state":"running","agent_pid":7,"healthy":true,"healthz":null,"restarts":0,
            "last_exit":null,"node_ip":null,"battery":null,"message":null,"supervisor_running":true}"#,
        )
        .unwrap();
        let argv = vec!["cat".to_owned(), "/etc/os-release".to_owned()];
        let cmd = shell_command(Some(&st), &argv);
        assert!(cmd.contains("nsenter -t 4242 -m"), "{cmd}");
        assert!(cmd.contains("chroot /data/armfleet/rootfs"), "{cmd}");
        st.supervisor_running = Some(false);
        let cmd = shell_command(Some(&st), &argv);
        assert!(
            !cmd.contains("nsenter"),
            "a dead supervisor's namespace: {cmd}"
        );
        assert!(shell_command(None, &[]).contains("/bin/sh -l"));
    }

    #[test]
    fn logs_read_the_worker_log_dir() {
        assert!(logs_command(5, true).contains("/data/armfleet/rootfs/var/log/armfleet"));
        assert!(logs_command(5, true).contains("tail -n 5 -f"));
        assert!(!logs_command(5, false).contains("-f"));
    }
}
