//! Enrolment and the worker's lifecycle on a phone: enroll, status, start/stop, logs, unenroll.
//!
//! Every write compares hashes first, so a re-enroll with nothing changed sends almost nothing.
//! Root work goes through `su -c`: adbd runs as the shell user, which can write only to
//! /data/local/tmp. Secrets and file contents go through the stdin of `su -c` to
//! `node-runtime write-files`, which reads every file's announced length before writing any
//! and renames each into place whole: the token never appears on a command line, and a cut
//! connection changes nothing. The rootfs is streamed into `node-runtime unpack --sha256`, which
//! swaps it in only after the whole archive arrived and matched its hash: a cable pulled
//! mid-push leaves the old rootfs in place. Streaming (rather than pushing the tarball, then
//! unpacking it) lets the unpack run during the transfer, which over USB is the slow part.

use crate::adb::{AdbDevice, AdbError};
use crate::device::{Device, ShellOutput, as_root, sh_quote};
use crate::doctor::{self, KernelChecker, Report, Verdict};
use crate::layout;
use bootstrap::NodeConfig;
use bootstrap::exit::ExitClass;
use bootstrap::node_config::Chroot;
use bootstrap::progress::{Event, Progress};
use node_runtime::status::{AgentState, Status};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a phone operation failed. Each message names the phone and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// ADB failed (no server, no phone, unauthorized, connection lost...).
    #[error(transparent)]
    Adb(#[from] AdbError),
    /// The preflight found a blocker.
    #[error("phone {serial}: {first}{more}")]
    NotReady {
        /// The phone.
        serial: String,
        /// The first failing item, with its fix.
        first: String,
        /// " (and N more: run `phonectl doctor -s SERIAL`)" or empty.
        more: String,
        /// The full report.
        report: Box<Report>,
    },
    /// A remote command failed.
    #[error("phone {serial}: {what} failed: {message}{hint}")]
    Remote {
        /// The phone.
        serial: String,
        /// What was being done.
        what: String,
        /// The command's last error line.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The agent did not come up.
    #[error(
        "phone {serial}: the k3s agent is not running {secs} s after start (node-runtime says: {state}): see `phonectl logs -s {serial}`"
    )]
    NotRunning {
        /// The phone.
        serial: String,
        /// How long we waited.
        secs: u64,
        /// The last state seen.
        state: String,
    },
    /// The phone carries no armfleet worker.
    #[error("phone {serial} is not enrolled: run `phonectl enroll -s {serial}` first")]
    NotEnrolled {
        /// The phone.
        serial: String,
    },
    /// Something is still mounted under /data/armfleet; removing it would reach through the mount.
    #[error(
        "phone {serial}: still mounted under {base}: {mounts}: reboot the phone and run unenroll again"
    )]
    StillMounted {
        /// The phone.
        serial: String,
        /// The base directory.
        base: &'static str,
        /// The mount points.
        mounts: String,
    },
}

impl PhoneError {
    /// The exit class for this error.
    pub fn exit_class(&self) -> ExitClass {
        match self {
            PhoneError::Adb(AdbError::SeveralDevices { .. } | AdbError::UnknownSerial { .. }) => {
                ExitClass::Usage
            }
            PhoneError::Local { .. } => ExitClass::Usage,
            PhoneError::Adb(AdbError::Protocol { .. }) => ExitClass::Internal,
            _ => ExitClass::Device,
        }
    }
}

/// What to put on the phone.
pub struct EnrollSpec<'a> {
    /// node.toml for this phone (its chroot and data image paths are set to the phone layout).
    pub config: NodeConfig,
    /// The k3s join token (written 0600, never on a command line).
    pub token: &'a str,
    /// The node rootfs tarball (`rootfs.tar.gz`).
    pub rootfs: &'a Path,
    /// Its sha256, hashed on another thread while the phone is probed (a rootfs is ~100 MB):
    /// the first call waits for it, `Err` says why the file could not be read.
    pub rootfs_sha256: &'a (dyn Fn() -> Result<String, String> + Sync),
    /// The static aarch64 node-runtime binary.
    pub node_runtime: &'a Path,
    /// Go on despite failing preflight verdicts.
    pub force: bool,
    /// How long to wait for the agent to run.
    pub wait: Duration,
    /// The kernel config checker.
    pub kernel: KernelChecker,
}

/// What an enroll did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnrollSummary {
    /// The phone.
    pub serial: String,
    /// The node name.
    pub node: String,
    /// Steps that changed something on the phone.
    pub changed: Vec<String>,
    /// Steps skipped because the phone already had it.
    pub unchanged: Vec<String>,
    /// Bytes sent to the adb server for this phone.
    pub bytes_sent: u64,
    /// Wall time.
    pub seconds: f64,
    /// Doctor warnings (and failures overridden by --force).
    pub warnings: Vec<String>,
    /// Wall time of each step in order, seconds (the profile `scripts/bench.d/phonectl.sh` prints).
    pub timings: Vec<(String, f64)>,
}

/// Splits an enroll's wall time into named laps.
struct Laps {
    last: Instant,
    laps: Vec<(String, f64)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends the current lap under `name`.
    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.laps
            .push((name.to_owned(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// The refusal for a report with failing items, naming the first blocker and its fix (root first:
/// nothing else can be fixed without it). `more` words the note on the N other failures.
pub fn not_ready(report: Report, more: impl Fn(usize) -> String) -> PhoneError {
    let blockers: Vec<_> = report.failures().collect();
    let pick = blockers
        .iter()
        .find(|i| i.name == "root")
        .or(blockers.first())
        .copied();
    let first = match pick {
        Some(i) => match &i.fix {
            Some(fix) => format!("{}: {}", i.detail, fix),
            None => i.detail.clone(),
        },
        None => "the preflight failed".to_owned(),
    };
    let more = if blockers.len() > 1 {
        more(blockers.len() - 1)
    } else {
        String::new()
    };
    PhoneError::NotReady {
        serial: report.serial.clone(),
        first,
        more,
        report: Box::new(report),
    }
}

/// Runs `cmd` as root and fails with a message naming `what` when it exits non-zero.
pub fn root_ok(dev: &dyn Device, cmd: &str, what: &str) -> Result<ShellOutput, PhoneError> {
    let out = dev.shell(&as_root(cmd))?;
    if !out.success() {
        return Err(remote(dev, what, &out, ""));
    }
    Ok(out)
}

fn remote(dev: &dyn Device, what: &str, out: &ShellOutput, hint: &str) -> PhoneError {
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
fn write_files_command(files: &[(&str, &str, &[u8])]) -> String {
    let specs: Vec<String> = files
        .iter()
        .map(|(path, mode, content)| sh_quote(&format!("{path}:{mode}:{}", content.len())))
        .collect();
    format!(
        "{} write-files --file {}",
        layout::BIN,
        specs.join(" --file ")
    )
}

/// The commands of `jobs`, each run only if the ones before succeeded.
fn joined(jobs: &[(String, String)]) -> String {
    let cmds: Vec<&str> = jobs.iter().map(|(_, c)| c.as_str()).collect();
    cmds.join(" && ")
}

/// sha256 hex of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 hex of a local file.
pub fn sha256_file(path: &Path) -> Result<String, PhoneError> {
    let local = |source| PhoneError::Local {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(local)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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
fn hashes_command(paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
    // sha256sum exits non-zero when some file is missing; the lines it did print are what exists.
    format!("sha256sum {} 2>/dev/null", list.join(" "))
}

fn parse_hashes(out: &ShellOutput) -> BTreeMap<String, String> {
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

/// Puts the phone layout into a node.toml made from the topology.
pub fn phone_config(mut config: NodeConfig) -> NodeConfig {
    let hostname = config.chroot.as_ref().and_then(|c| c.hostname.clone());
    config.chroot = Some(Chroot {
        root: layout::ROOTFS.into(),
        hostname,
    });
    if let Some(img) = &mut config.k3s.data_image {
        img.path = layout::DATA_IMAGE.into();
    }
    config
}

/// The root command that prints `node-runtime status --json`.
fn status_cmd() -> String {
    as_root(&format!(
        "{} status --json --config {}",
        layout::BIN,
        layout::CONFIG
    ))
}

/// Reads node-runtime's status record, None when there is none (never started, or not enrolled).
pub fn read_status(dev: &dyn Device) -> Result<Option<Status>, PhoneError> {
    let out = dev.shell(&status_cmd())?;
    Ok(serde_json::from_slice::<Status>(&out.stdout).ok())
}

/// True when the phone carries node-runtime and its config.
pub fn is_enrolled(dev: &dyn Device) -> Result<bool, PhoneError> {
    let h = remote_hashes(dev, &[layout::BIN, layout::CONFIG])?;
    Ok(h.len() == 2)
}

fn step(progress: &dyn Progress, name: &str, total: Option<u64>) {
    progress.event(Event::StepStarted {
        step: name.to_owned(),
        total,
    });
}
fn done(progress: &dyn Progress, name: &str, detail: String) {
    progress.event(Event::StepFinished {
        step: name.to_owned(),
        detail,
    });
}
fn skip(progress: &dyn Progress, name: &str, reason: &str) {
    progress.event(Event::StepSkipped {
        step: name.to_owned(),
        reason: reason.to_owned(),
    });
}

/// Enrolls the phone: preflight, then each piece only when it differs, then start and wait.
pub fn enroll(
    dev: &AdbDevice,
    spec: &EnrollSpec,
    progress: &dyn Progress,
) -> Result<EnrollSummary, PhoneError> {
    let started = Instant::now();
    let sent0 = dev.bytes_sent();
    let serial = dev.serial().to_owned();
    let config = phone_config(spec.config.clone());
    let config_text = config.to_toml_string();
    let token_path = config
        .host_path(&config.server.token_file)
        .display()
        .to_string();
    let module_prop = layout::module_prop();
    let prop_path = format!("{}/module.prop", layout::MODULE_DIR);
    let service_path = format!("{}/service.sh", layout::MODULE_DIR);
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    let mut laps = Laps::new();

    // What is there already (read-only): decides the space needed and what to send.
    step(progress, "inspect", None);
    // The hashes of what an earlier enroll installed come back with the probe's root commands.
    let installed = hashes_command(&[
        layout::BIN,
        layout::CONFIG,
        layout::ROOTFS_SHA,
        &token_path,
        &prop_path,
        &service_path,
        layout::DISABLED,
    ]);
    let (facts, hashes) = doctor::probe_with(dev, Some(&installed))?;
    laps.lap("doctor probe, remote hashes");
    let rooted = matches!(facts.root, doctor::Root::Granted(_));
    let have = if rooted {
        parse_hashes(&hashes)
    } else {
        BTreeMap::new()
    };
    let same = |path: &str, want: &str| have.get(path).map(String::as_str) == Some(want);
    let rootfs_sha256 = (spec.rootfs_sha256)().map_err(|e| PhoneError::Local {
        path: spec.rootfs.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let rootfs_marker = format!("{rootfs_sha256}\n");
    let rootfs_current = same(layout::ROOTFS_SHA, &sha256_hex(rootfs_marker.as_bytes()));
    let rootfs_size = std::fs::metadata(spec.rootfs)
        .map_err(|source| PhoneError::Local {
            path: spec.rootfs.to_owned(),
            source,
        })?
        .len();
    let image_bytes = config
        .k3s
        .data_image
        .as_ref()
        .map(|i| i.size_mib << 20)
        .unwrap_or(0);
    // A rootfs expands to about 3x its gzip size; the old one stays until the new one is in.
    let need = if rootfs_current { 0 } else { rootfs_size * 3 }
        + if have.contains_key(layout::CONFIG) {
            0
        } else {
            image_bytes
        };
    let report = doctor::assess(&facts, need, spec.kernel);
    done(progress, "inspect", format!("doctor: {}", report.overall));
    let warnings: Vec<String> = report
        .items
        .iter()
        .filter(|i| i.verdict != Verdict::Ok)
        .map(|i| format!("{}: {}", i.name, i.detail))
        .collect();
    let blockers = report.failures().count();
    // No root cannot be forced: nothing below can be done without it.
    if blockers > 0 && (!spec.force || !rooted) {
        return Err(not_ready(report, |n| {
            format!(" (and {n} more: run `phonectl doctor -s {serial}`; --force skips the check)")
        }));
    }
    if blockers > 0 {
        progress.event(Event::Note(format!(
            "{serial}: --force: going on despite: {}",
            warnings.join("; ")
        )));
    }

    laps.lap("assess");
    let mut install_bin: Option<String> = None;
    // node-runtime: pushed where the shell user may write, then moved into place as root.
    let nr_hash = sha256_file(spec.node_runtime)?;
    if same(layout::BIN, &nr_hash) {
        skip(progress, "node-runtime", "unchanged (sha256 matches)");
        unchanged.push("node-runtime".to_owned());
    } else {
        let size = std::fs::metadata(spec.node_runtime).map(|m| m.len()).ok();
        step(progress, "node-runtime", size);
        let mut f = std::fs::File::open(spec.node_runtime).map_err(|source| PhoneError::Local {
            path: spec.node_runtime.to_owned(),
            source,
        })?;
        let sent = dev.push(&mut f, layout::STAGING_BIN, 0o755, &mut |n| {
            progress.event(Event::Bytes {
                step: "node-runtime".into(),
                done: n,
            })
        })?;
        let bin_dir = Path::new(layout::BIN)
            .parent()
            .unwrap()
            .display()
            .to_string();
        // Moved into place by the one root shell below, not one of its own.
        install_bin = Some(format!(
            "mkdir -p {d} && cp {s} {b}.new && chmod 0755 {b}.new && mv -f {b}.new {b} && rm -f {s}",
            d = bin_dir,
            s = layout::STAGING_BIN,
            b = layout::BIN
        ));
        done(progress, "node-runtime", doctor::human(sent));
        changed.push("node-runtime".to_owned());
    }

    laps.lap("node-runtime");
    // Everything else happens in one root shell (each `su` is a round trip and a hand-off to
    // the root daemon): node-runtime moved into place, the rootfs streamed straight into
    // `node-runtime unpack` (swapped in only when complete), then node.toml, the token, the
    // boot hook and the rootfs marker by `node-runtime write-files` from the same stdin, the
    // stopped flag cleared, the worker started. `&&` between them: a failure stops the rest,
    // and every step leaves what was there intact until its own atomic swap.
    let install_rootfs = !rootfs_current;
    if install_rootfs {
        changed.push("rootfs".to_owned());
    } else {
        skip(progress, "rootfs", "unchanged (sha256 matches)");
        unchanged.push("rootfs".to_owned());
    }
    // A fresh rootfs has no token in it.
    let token_needed = install_rootfs || !same(&token_path, &sha256_hex(spec.token.as_bytes()));
    let mut writes: Vec<(String, &str, &[u8])> = Vec::new();
    for (name, path, mode, content, need) in [
        (
            "config",
            layout::CONFIG.to_owned(),
            "0644",
            config_text.as_bytes(),
            !same(layout::CONFIG, &sha256_hex(config_text.as_bytes())),
        ),
        (
            "token",
            token_path.clone(),
            "0600",
            spec.token.as_bytes(),
            token_needed,
        ),
        (
            "boot hook",
            prop_path.clone(),
            "0644",
            module_prop.as_bytes(),
            !same(&prop_path, &sha256_hex(module_prop.as_bytes())),
        ),
        (
            "boot hook",
            service_path.clone(),
            "0755",
            layout::SERVICE_SH.as_bytes(),
            !same(&service_path, &sha256_hex(layout::SERVICE_SH.as_bytes())),
        ),
    ] {
        if need {
            if !changed.iter().any(|c| c == name) {
                changed.push(name.to_owned());
            }
            writes.push((path, mode, content));
        } else {
            skip(progress, name, "unchanged (sha256 matches)");
            if !unchanged.iter().any(|c| c == name) && !changed.iter().any(|c| c == name) {
                unchanged.push(name.to_owned());
            }
        }
    }
    // The marker that says which rootfs is installed: written with the files, after the unpack.
    if install_rootfs {
        writes.push((
            layout::ROOTFS_SHA.to_owned(),
            "0644",
            rootfs_marker.as_bytes(),
        ));
    }

    // A worker must stop before its rootfs or config is replaced. Only a phone that had
    // node-runtime can run one: a first enroll need not ask.
    let status = if have.contains_key(layout::BIN) {
        read_status(dev)?
    } else {
        None
    };
    // Liveness as the phone judged it: a record left by a dead supervisor is not "running".
    let running = status.as_ref().is_some_and(|s| {
        s.live() && (s.state == AgentState::Running || s.state == AgentState::Preparing)
    });
    // Backing off or paused, a supervisor is still there (and its chroot mounted).
    let supervised = status.is_some_and(|s| s.live() && s.state != AgentState::Stopped);
    let start = !(changed.is_empty() && running);
    if start && (supervised || install_rootfs && have.contains_key(layout::CONFIG)) {
        stop_worker(dev)?;
    }

    let mut jobs: Vec<(String, String)> = Vec::new();
    if let Some(install) = install_bin.take() {
        jobs.push(("installing node-runtime".into(), install));
    }
    if install_rootfs {
        jobs.push((
            "installing the rootfs".into(),
            format!(
                "rm -f {m} && {b} unpack --bytes {n} --dest {r} --sha256 {h} >/dev/null",
                m = layout::ROOTFS_SHA,
                b = layout::BIN,
                n = rootfs_size,
                r = layout::ROOTFS,
                h = rootfs_sha256
            ),
        ));
    }
    if !writes.is_empty() {
        let files: Vec<(&str, &str, &[u8])> = writes
            .iter()
            .map(|(p, m, c)| (p.as_str(), *m, *c))
            .collect();
        let paths: Vec<&str> = files.iter().map(|(p, _, _)| *p).collect();
        jobs.push((
            format!("writing {}", paths.join(", ")),
            write_files_command(&files),
        ));
    }
    if have.contains_key(layout::DISABLED) {
        jobs.push((
            "clearing the stopped flag".into(),
            format!("rm -f {}", layout::DISABLED),
        ));
    }
    if start {
        // The status record closes the shell: when it already says running, the wait below
        // needs no round trip of its own. Only it goes to stdout (the others' reports are
        // dropped; their errors stay on stderr).
        jobs.push((
            "starting node-runtime".into(),
            format!(
                "{b} run --detach --config {c} >/dev/null && {b} status --json --config {c}",
                b = layout::BIN,
                c = layout::CONFIG
            ),
        ));
    }
    let mut status_after_start: Option<Status> = None;
    if !jobs.is_empty() {
        let files: Vec<u8> = writes
            .iter()
            .flat_map(|(_, _, c)| c.iter().copied())
            .collect();
        let names: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|c| *c != "node-runtime")
            .collect();
        let names = if names.is_empty() {
            "start".to_owned()
        } else {
            names.join(", ")
        };
        // Progress counts the rootfs bytes when there is a rootfs, else the step as a whole.
        step(progress, &names, install_rootfs.then_some(rootfs_size));
        let out = if install_rootfs {
            let rootfs = std::fs::File::open(spec.rootfs).map_err(|source| PhoneError::Local {
                path: spec.rootfs.to_owned(),
                source,
            })?;
            let mut input = rootfs.take(rootfs_size).chain(&files[..]);
            let step_name = names.clone();
            dev.exec(&as_root(&joined(&jobs)), Some(&mut input), &mut |n| {
                progress.event(Event::Bytes {
                    step: step_name.clone(),
                    done: n.min(rootfs_size),
                })
            })?
        } else {
            dev.exec(&as_root(&joined(&jobs)), Some(&mut &files[..]), &mut |_| {})?
        };
        if !out.success() {
            let what: Vec<&str> = jobs.iter().map(|(w, _)| w.as_str()).collect();
            return Err(remote(
                dev,
                &what.join(", "),
                &out,
                ": each part swaps in whole or not at all (a failed unpack leaves the previous rootfs); rerun enroll",
            ));
        }
        if start {
            status_after_start = serde_json::from_slice::<Status>(&out.stdout).ok();
        }
        let detail = if install_rootfs {
            doctor::human(rootfs_size)
        } else {
            String::new()
        };
        done(progress, &names, detail);
    } else {
        skip(progress, "start", "already running");
    }
    laps.lap("rootfs, config, token, boot hook, start");
    step(progress, "wait", None);
    if !status_after_start.as_ref().is_some_and(Status::agent_up) {
        wait_running(dev, spec.wait)?;
    }
    done(progress, "wait", "agent running".into());
    laps.lap("wait running");

    Ok(EnrollSummary {
        serial,
        node: config.node.name.clone(),
        changed,
        unchanged,
        bytes_sent: dev.bytes_sent() - sent0,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
        timings: laps.laps,
    })
}

/// `node-runtime stop` (no error when it is not running).
pub fn stop_worker(dev: &dyn Device) -> Result<(), PhoneError> {
    let out = dev.shell(&as_root(&format!(
        "{} stop --config {}",
        layout::BIN,
        layout::CONFIG
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
        &format!("{} run --detach --config {}", layout::BIN, layout::CONFIG),
        "starting node-runtime",
    )?;
    Ok(())
}

/// Polls `node-runtime status` until the agent runs, or fails after `wait`.
pub fn wait_running(dev: &dyn Device, wait: Duration) -> Result<Status, PhoneError> {
    let until = Instant::now() + wait;
    let mut last = "no status yet".to_owned();
    loop {
        if let Some(s) = read_status(dev)? {
            if s.agent_up() {
                return Ok(s);
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
    step(progress, "stop", None);
    if remote_hashes(dev, &[layout::BIN])?.contains_key(layout::BIN) {
        stop_worker(dev)?;
    }
    done(progress, "stop", String::new());
    // rm -rf does not stop at mount points: refuse while anything is mounted below the base.
    let mounts = root_ok(dev, "cat /proc/mounts", "reading mounts")?.out();
    let below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m == layout::BASE || m.starts_with(&format!("{}/", layout::BASE)))
        .collect();
    if !below.is_empty() {
        return Err(PhoneError::StillMounted {
            serial,
            base: layout::BASE,
            mounts: below.join(", "),
        });
    }
    step(progress, "remove", None);
    root_ok(
        dev,
        &format!(
            "rm -rf {} {} {}",
            layout::MODULE_DIR,
            layout::BASE,
            layout::STAGING_BIN
        ),
        "removing armfleet",
    )?;
    done(progress, "remove", String::new());
    Ok(())
}
