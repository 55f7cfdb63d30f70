//! Enrolment: a phone becomes a worker, or an enrolled one is brought up to date.
//!
//! Plan, then apply. [`probe_installed`] reads what the phone is and has (one probe); [`plan`] —
//! a pure function of that and of what is to be installed — decides what to send, whether to
//! stop the worker first and whether to start it; [`apply`] does the I/O.
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

use crate::device::{Device, as_root};
use crate::doctor::{self, Facts, Report, Verdict};
use crate::error::PhoneError;
use crate::hook;
use crate::lifecycle::{
    hashes_command, parse_hashes, remote, stop_worker, wait_running, write_files_command,
};
use bootstrap::NodeConfig;
use bootstrap::digest::sha256_hex;
use bootstrap::layout::phone;
use bootstrap::progress::{Progress, ProgressExt, human_bytes};
use bootstrap::status::{AgentState, Status};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to put on the phone.
pub struct EnrollSpec<'a> {
    /// node.toml for this phone (its chroot and data image at the phone layout's paths).
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
    /// Probe and plan, report the plan, change nothing.
    pub dry_run: bool,
    /// How long to wait for the agent to be ready.
    pub wait: Duration,
    /// The cluster to ask whether the Node is Ready (`--kubeconfig`), when given.
    pub cluster: Option<&'a bootstrap::kube::KubeClient>,
    /// The pinned k3s binary from the laptop's cache, brought over USB when the phone lacks it
    /// (else the phone fetches it itself, from the lab's mirror or upstream).
    pub k3s: Option<&'a LocalK3s>,
    /// The sha256 of the k3s inside the rootfs tarball (None: it has none), worked out on
    /// another thread like [`EnrollSpec::rootfs_sha256`]; asked only when k3s is brought.
    pub k3s_in_rootfs: &'a (dyn Fn() -> Result<Option<String>, String> + Sync),
}

/// The pinned k3s binary on the laptop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalK3s {
    /// The cached file.
    pub path: std::path::PathBuf,
    /// Its sha256 (the topology's pin).
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// What is known of the k3s binary the phone should end up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedK3s {
    /// The pin.
    pub sha256: String,
    /// Its size (for the space needed).
    pub size: u64,
    /// Where it lives on the phone (inside the rootfs, as Android's side sees it).
    pub dest: String,
    /// The sha256 of the k3s inside the rootfs tarball to be installed (None: it has none).
    pub in_rootfs: Option<String>,
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
    /// With `--dry-run`: what enroll would have done; nothing was changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Vec<String>>,
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

/// A node.toml written for a phone must put the chroot and the data image where enroll installs
/// them (a hand-written `--config` may not): refused with the key to fix rather than rewritten.
pub fn check_phone_layout(config: &NodeConfig, origin: &str) -> Result<(), PhoneError> {
    let bad = |key: &str, want: &str| {
        Err(PhoneError::Usage(format!(
            "{origin}: key `{key}` must be {want} on a phone (where phonectl installs it): fix the file, or enroll from the topology"
        )))
    };
    match &config.chroot {
        Some(c) if c.root == Path::new(phone::ROOTFS) => {}
        _ => return bad("chroot.root", phone::ROOTFS),
    }
    if let Some(img) = &config.k3s.data_image
        && img.path != Path::new(phone::DATA_IMAGE)
    {
        return bad("k3s.data_image.path", phone::DATA_IMAGE);
    }
    Ok(())
}

/// A file enroll keeps current on the phone: where, with which mode, and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedFile<'a> {
    /// The step it belongs to in the summary (`config`, `token`, `boot hook`).
    pub label: &'static str,
    /// Its path on the phone.
    pub path: String,
    /// Octal mode (`0600`).
    pub mode: &'static str,
    /// The bytes it must hold.
    pub content: &'a [u8],
}

/// What is to be installed, as hashes and sizes (the decision needs no more).
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// sha256 of the node-runtime binary.
    pub node_runtime_sha256: String,
    /// sha256 and size of the rootfs tarball.
    pub rootfs_sha256: String,
    /// Its size in bytes.
    pub rootfs_size: u64,
    /// Bytes of the k3s data image node-runtime creates on a first start.
    pub data_image_bytes: u64,
    /// The small files, in the order they are written.
    pub files: Vec<WantedFile<'a>>,
    /// The token file's path on the phone (it is also among `files`).
    pub token_path: String,
    /// The pinned k3s the laptop can bring, when it has it.
    pub k3s: Option<WantedK3s>,
}

/// What the phone has, from the probe.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// sha256 of each of armfleet's files that exists on the phone, by path (empty without root).
    pub hashes: BTreeMap<String, String>,
    /// The worker's status record as the phone's node-runtime reports it (liveness included).
    pub status: Option<Status>,
}

/// What [`apply`] will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Push the node-runtime binary.
    pub node_runtime: bool,
    /// Bring the pinned k3s binary from the laptop.
    pub k3s: bool,
    /// Stream the rootfs (and write its marker).
    pub rootfs: bool,
    /// The small files to write (config, token, boot hook, the rootfs marker last).
    pub writes: Vec<WantedFile<'a>>,
    /// Stop the running (or backing-off) worker before anything is replaced.
    pub stop_first: bool,
    /// Remove `phonectl stop`'s flag.
    pub clear_stopped_flag: bool,
    /// Start node-runtime (it is not running the current configuration).
    pub start: bool,
    /// Summary lines: what changes and what is already current.
    pub changed: Vec<String>,
    /// What is already current.
    pub unchanged: Vec<String>,
    /// Free bytes needed on /data for this plan.
    pub need_bytes: u64,
}

impl Plan<'_> {
    /// What applying this plan would do to the phone, one line per action, in order — what
    /// `phonectl enroll --dry-run` prints. File contents are never shown (one is the token).
    pub fn actions(&self, wanted: &Wanted) -> Vec<String> {
        let mut out = Vec::new();
        if self.node_runtime {
            out.push(format!(
                "push node-runtime (sha256 {}) to {}",
                short(&wanted.node_runtime_sha256),
                phone::BIN
            ));
        }
        if let (true, Some(k)) = (self.k3s, &wanted.k3s) {
            out.push(format!(
                "bring k3s ({}, sha256 {}) from this machine to {}",
                human_bytes(k.size),
                short(&k.sha256),
                k.dest
            ));
        }
        if self.stop_first {
            out.push("stop the running worker first".to_owned());
        }
        if self.rootfs {
            out.push(format!(
                "stream the rootfs ({}, sha256 {}) into {}, swapped in when complete",
                human_bytes(wanted.rootfs_size),
                short(&wanted.rootfs_sha256),
                phone::ROOTFS
            ));
        }
        for f in &self.writes {
            out.push(format!(
                "write {} ({}, mode {}, {} bytes)",
                f.path,
                f.label,
                f.mode,
                f.content.len()
            ));
        }
        if self.clear_stopped_flag {
            out.push(format!(
                "remove {} (`phonectl stop`'s flag)",
                phone::DISABLED
            ));
        }
        if self.start {
            out.push("start node-runtime and wait for the kubelet".to_owned());
        }
        if out.is_empty() {
            out.push("nothing: the phone runs this configuration already".to_owned());
        }
        out
    }
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// The marker file's content for a rootfs hash (what [`phone::ROOTFS_SHA`] holds).
pub fn rootfs_marker(rootfs_sha256: &str) -> String {
    format!("{rootfs_sha256}\n")
}

/// Decides what to send and do from what is wanted and what the phone has. Pure.
pub fn plan<'a>(wanted: &Wanted<'a>, installed: &Installed) -> Plan<'a> {
    let have = &installed.hashes;
    let same = |path: &str, want: &str| have.get(path).map(String::as_str) == Some(want);
    let mut changed: Vec<String> = Vec::new();
    let mut unchanged: Vec<String> = Vec::new();
    let note = |list: &mut Vec<String>, name: &str| {
        if !list.iter().any(|c| c == name) {
            list.push(name.to_owned());
        }
    };

    let node_runtime = !same(phone::BIN, &wanted.node_runtime_sha256);
    note(
        if node_runtime {
            &mut changed
        } else {
            &mut unchanged
        },
        "node-runtime",
    );
    let marker = rootfs_marker(&wanted.rootfs_sha256);
    let rootfs = !same(phone::ROOTFS_SHA, &sha256_hex(marker.as_bytes()));
    note(if rootfs { &mut changed } else { &mut unchanged }, "rootfs");
    // k3s: what the phone will have once the rootfs (if any) is in, against the pin.
    let k3s = wanted.k3s.as_ref().is_some_and(|k| {
        let after = if rootfs {
            k.in_rootfs.as_deref()
        } else {
            have.get(&k.dest).map(String::as_str)
        };
        after != Some(k.sha256.as_str())
    });
    if wanted.k3s.is_some() {
        note(if k3s { &mut changed } else { &mut unchanged }, "k3s");
    }
    let mut writes = Vec::new();
    for f in &wanted.files {
        // A fresh rootfs has no token in it.
        let stale =
            !same(&f.path, &sha256_hex(f.content)) || (rootfs && f.path == wanted.token_path);
        if stale {
            note(&mut changed, f.label);
            writes.push(f.clone());
        }
    }
    for f in &wanted.files {
        if !changed.iter().any(|c| c == f.label) {
            note(&mut unchanged, f.label);
        }
    }

    // Liveness as the phone judged it: a record left by a dead supervisor is not "running".
    let status = installed.status.as_ref().filter(|s| s.live());
    let running =
        status.is_some_and(|s| matches!(s.state, AgentState::Running | AgentState::Preparing));
    // Backing off or paused, a supervisor is still there (and its chroot mounted).
    let supervised = status.is_some_and(|s| s.state != AgentState::Stopped);
    let start = !(changed.is_empty() && running);
    let enrolled_before = have.contains_key(phone::CONFIG);
    // A worker must stop before its rootfs or config is replaced; a rootfs replaced under an
    // earlier enrolment is stopped for too (its chroot may still be mounted).
    let stop_first = start && (supervised || rootfs && enrolled_before);
    // A rootfs expands to about 3x its gzip size and the old one stays until the new one is in;
    // the data image is made on the first start.
    let need_bytes = if rootfs { wanted.rootfs_size * 3 } else { 0 }
        + if enrolled_before {
            0
        } else {
            wanted.data_image_bytes
        }
        // Staged, then copied into the rootfs.
        + match (&wanted.k3s, k3s) {
            (Some(w), true) => w.size * 2,
            _ => 0,
        };
    Plan {
        node_runtime,
        k3s,
        rootfs,
        writes,
        stop_first,
        clear_stopped_flag: have.contains_key(phone::DISABLED),
        start,
        changed,
        unchanged,
        need_bytes,
    }
}

/// Probes the phone (the doctor's facts) and reads what an earlier enroll installed, in the
/// probe's own root shell: the hashes of armfleet's files, and node-runtime's status record.
pub fn probe_installed(
    dev: &dyn Device,
    token_path: &str,
    k3s_path: &str,
) -> Result<(Facts, Installed), PhoneError> {
    let hashes = hashes_command(&[
        phone::BIN,
        phone::CONFIG,
        phone::ROOTFS_SHA,
        token_path,
        &hook::module_prop_path(),
        &hook::service_path(),
        phone::DISABLED,
        k3s_path,
    ]);
    let status = format!(
        "[ -x {b} ] && {b} status --json --config {c} 2>/dev/null",
        b = phone::BIN,
        c = phone::CONFIG
    );
    let (facts, extra) = doctor::probe_with(dev, &[&hashes, &status])?;
    let rooted = matches!(facts.root, doctor::Root::Granted(_));
    let installed = if rooted {
        Installed {
            hashes: parse_hashes(&extra[0]),
            status: serde_json::from_slice(&extra[1].stdout).ok(),
        }
    } else {
        Installed::default()
    };
    Ok((facts, installed))
}

/// Enrolls the phone: probe, plan, preflight verdict, apply, wait for the agent.
pub fn enroll(
    dev: &dyn Device,
    spec: &EnrollSpec,
    progress: &dyn Progress,
) -> Result<EnrollSummary, PhoneError> {
    let started = Instant::now();
    let sent0 = dev.bytes_sent();
    let serial = dev.serial().to_owned();
    let config = &spec.config;
    check_phone_layout(config, "node.toml")?;
    let config_text = config.to_toml_string();
    let token_path = config
        .host_path(&config.server.token_file)
        .display()
        .to_string();
    let module_prop = hook::module_prop();
    let mut laps = Laps::new();

    let k3s_path = config.host_path(&config.k3s.bin).display().to_string();
    progress.step("inspect", None);
    let (facts, installed) = probe_installed(dev, &token_path, &k3s_path)?;
    laps.lap("doctor probe, remote hashes, status");
    let local = |path: &Path| {
        let path = path.to_owned();
        move |source| PhoneError::Local { path, source }
    };
    let rootfs_sha256 =
        (spec.rootfs_sha256)().map_err(|e| local(spec.rootfs)(std::io::Error::other(e)))?;
    let wanted = Wanted {
        node_runtime_sha256: bootstrap::digest::sha256_file(spec.node_runtime)
            .map_err(local(spec.node_runtime))?,
        rootfs_sha256: rootfs_sha256.clone(),
        rootfs_size: std::fs::metadata(spec.rootfs)
            .map_err(local(spec.rootfs))?
            .len(),
        data_image_bytes: config
            .k3s
            .data_image
            .as_ref()
            .map(|i| i.size_mib << 20)
            .unwrap_or(0),
        files: vec![
            WantedFile {
                label: "config",
                path: phone::CONFIG.to_owned(),
                mode: "0644",
                content: config_text.as_bytes(),
            },
            WantedFile {
                label: "token",
                path: token_path.clone(),
                mode: "0600",
                content: spec.token.as_bytes(),
            },
            WantedFile {
                label: "boot hook",
                path: hook::module_prop_path(),
                mode: "0644",
                content: module_prop.as_bytes(),
            },
            WantedFile {
                label: "boot hook",
                path: hook::service_path(),
                mode: "0755",
                content: hook::SERVICE_SH.as_bytes(),
            },
        ],
        token_path,
        k3s: match spec.k3s {
            Some(k) => Some(WantedK3s {
                sha256: k.sha256.clone(),
                size: k.size,
                in_rootfs: (spec.k3s_in_rootfs)()
                    .map_err(|e| local(spec.rootfs)(std::io::Error::other(e)))?,
                dest: k3s_path,
            }),
            None => None,
        },
    };
    let plan = plan(&wanted, &installed);
    let report = doctor::assess(&facts, plan.need_bytes);
    progress.done("inspect", format!("doctor: {}", report.overall));
    let warnings: Vec<String> = report
        .items
        .iter()
        .filter(|i| i.verdict != Verdict::Ok)
        .map(|i| format!("{}: {}", i.name, i.detail))
        .collect();
    let blockers = report.failures().count();
    let rooted = matches!(facts.root, doctor::Root::Granted(_));
    // No root cannot be forced: nothing below can be done without it.
    if blockers > 0 && (!spec.force || !rooted) {
        return Err(not_ready(report, |n| {
            format!(" (and {n} more: run `phonectl doctor -s {serial}`; --force skips the check)")
        }));
    }
    if blockers > 0 {
        progress.note(format!(
            "{serial}: --force: going on despite: {}",
            warnings.join("; ")
        ));
    }
    laps.lap("assess");
    // A dry run stops here: the plan, as words, is its result.
    let dry_run = spec.dry_run.then(|| plan.actions(&wanted));
    if dry_run.is_none() {
        let status_after_start = apply(dev, spec, &wanted, &plan, progress, &mut laps)?;
        let waited = Instant::now();
        progress.step("wait", None);
        if !status_after_start.as_ref().is_some_and(Status::ready) {
            wait_running(dev, spec.wait)?;
        }
        progress.done("wait", "agent ready (kubelet healthy)".into());
        laps.lap("wait ready");
        if let Some(cluster) = spec.cluster {
            progress.step("node ready", None);
            let left = spec.wait.saturating_sub(waited.elapsed());
            crate::lifecycle::wait_node_ready(dev, cluster, &config.node.name, left)?;
            progress.done(
                "node ready",
                format!("{} Ready at {}", config.node.name, cluster.server()),
            );
            laps.lap("node ready");
        }
    }

    Ok(EnrollSummary {
        serial,
        node: config.node.name.clone(),
        changed: plan.changed,
        unchanged: plan.unchanged,
        bytes_sent: dev.bytes_sent() - sent0,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
        dry_run,
        timings: laps.laps,
    })
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> PhoneError + use<> {
    let path = path.to_owned();
    move |source| PhoneError::Local { path, source }
}

/// Carries out `plan`: the node-runtime push, then one root shell that installs it, streams the
/// rootfs into `node-runtime unpack`, writes the files, clears the stopped flag and starts the
/// worker. Returns the status record the start printed, when it started one.
fn apply(
    dev: &dyn Device,
    spec: &EnrollSpec,
    wanted: &Wanted,
    plan: &Plan,
    progress: &dyn Progress,
    laps: &mut Laps,
) -> Result<Option<Status>, PhoneError> {
    let local = local_err;
    let mut jobs: Vec<(String, String)> = Vec::new();
    // node-runtime: pushed where the shell user may write, then moved into place as root by the
    // one root shell below.
    if plan.node_runtime {
        let size = std::fs::metadata(spec.node_runtime).map(|m| m.len()).ok();
        progress.step("node-runtime", size);
        let mut f = std::fs::File::open(spec.node_runtime).map_err(local(spec.node_runtime))?;
        let sent = dev.push(&mut f, phone::STAGING_BIN, 0o755, &mut |n| {
            progress.bytes("node-runtime", n)
        })?;
        let bin_dir = Path::new(phone::BIN).parent().unwrap_or(Path::new("/"));
        jobs.push((
            "installing node-runtime".into(),
            format!(
                "mkdir -p {d} && cp {s} {b}.new && chmod 0755 {b}.new && mv -f {b}.new {b} && rm -f {s}",
                d = bin_dir.display(),
                s = phone::STAGING_BIN,
                b = phone::BIN
            ),
        ));
        progress.done("node-runtime", human_bytes(sent));
    } else {
        progress.skip("node-runtime", "unchanged (sha256 matches)");
    }
    laps.lap("node-runtime");
    let k3s_job = match (&wanted.k3s, spec.k3s, plan.k3s) {
        (Some(w), Some(local), true) => {
            progress.step("k3s", Some(local.size));
            let mut f = std::fs::File::open(&local.path).map_err(local_err(&local.path))?;
            let sent = dev.push(&mut f, phone::STAGING_K3S, 0o644, &mut |n| {
                progress.bytes("k3s", n)
            })?;
            progress.done("k3s", human_bytes(sent));
            laps.lap("k3s");
            // Hash-checked on the phone by node-runtime, then into the rootfs (after the
            // rootfs itself, which may carry another k3s).
            Some((
                "installing k3s".to_owned(),
                format!(
                    "{b} install --sha256 {h} --mode 0755 {s} {d} >/dev/null && rm -f {s}",
                    b = phone::BIN,
                    h = w.sha256,
                    s = phone::STAGING_K3S,
                    d = w.dest
                ),
            ))
        }
        _ => {
            if wanted.k3s.is_some() {
                progress.skip("k3s", "unchanged (sha256 matches the pin)");
            }
            None
        }
    };

    if plan.stop_first {
        stop_worker(dev)?;
    }
    // Everything else happens in one root shell (each `su` is a round trip and a hand-off to
    // the root daemon). `&&` between the jobs: a failure stops the rest, and every job leaves
    // what was there intact until its own atomic swap.
    let marker = rootfs_marker(&wanted.rootfs_sha256);
    let mut writes: Vec<(&str, &str, &[u8])> = plan
        .writes
        .iter()
        .map(|f| (f.path.as_str(), f.mode, f.content))
        .collect();
    if plan.rootfs {
        jobs.push((
            "installing the rootfs".into(),
            format!(
                "rm -f {m} && {b} unpack --bytes {n} --dest {r} --sha256 {h} >/dev/null",
                m = phone::ROOTFS_SHA,
                b = phone::BIN,
                n = wanted.rootfs_size,
                r = phone::ROOTFS,
                h = wanted.rootfs_sha256
            ),
        ));
        // The marker that says which rootfs is installed: written after the unpack.
        writes.push((phone::ROOTFS_SHA, "0644", marker.as_bytes()));
    } else {
        progress.skip("rootfs", "unchanged (sha256 matches)");
    }
    for label in &plan.unchanged {
        if label != "node-runtime" && label != "rootfs" && label != "k3s" {
            progress.skip(label, "unchanged (sha256 matches)");
        }
    }
    if !writes.is_empty() {
        let paths: Vec<&str> = writes.iter().map(|(p, _, _)| *p).collect();
        jobs.push((
            format!("writing {}", paths.join(", ")),
            write_files_command(&writes),
        ));
    }
    jobs.extend(k3s_job);
    if plan.clear_stopped_flag {
        jobs.push((
            "clearing the stopped flag".into(),
            format!("rm -f {}", phone::DISABLED),
        ));
    }
    if plan.start {
        // The status record closes the shell: when it already says running, the wait needs no
        // round trip of its own. Only it goes to stdout (the others' reports are dropped; their
        // errors stay on stderr).
        jobs.push((
            "starting node-runtime".into(),
            format!(
                "{b} run --detach --config {c} >/dev/null && {b} status --json --config {c}",
                b = phone::BIN,
                c = phone::CONFIG
            ),
        ));
    }
    if jobs.is_empty() {
        progress.skip("start", "already running");
        return Ok(None);
    }
    let files: Vec<u8> = writes
        .iter()
        .flat_map(|(_, _, c)| c.iter().copied())
        .collect();
    let names: Vec<&str> = plan
        .changed
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "node-runtime" && *c != "k3s")
        .collect();
    let names = if names.is_empty() {
        "start".to_owned()
    } else {
        names.join(", ")
    };
    let script = as_root(
        &jobs
            .iter()
            .map(|(_, c)| c.as_str())
            .collect::<Vec<_>>()
            .join(" && "),
    );
    // Progress counts the rootfs bytes when there is a rootfs, else the step as a whole.
    progress.step(&names, plan.rootfs.then_some(wanted.rootfs_size));
    let out = if plan.rootfs {
        let rootfs = std::fs::File::open(spec.rootfs).map_err(local(spec.rootfs))?;
        let size = wanted.rootfs_size;
        let mut input = rootfs.take(size).chain(&files[..]);
        dev.exec(&script, Some(&mut input), &mut |n| {
            progress.bytes(&names, n.min(size))
        })?
    } else {
        dev.exec(&script, Some(&mut &files[..]), &mut |_| {})?
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
    progress.done(
        &names,
        if plan.rootfs {
            human_bytes(wanted.rootfs_size)
        } else {
            String::new()
        },
    );
    laps.lap("rootfs, config, token, boot hook, start");
    Ok(plan
        .start
        .then(|| serde_json::from_slice::<Status>(&out.stdout).ok())
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"K10abc::server:pw";

    fn wanted() -> Wanted<'static> {
        Wanted {
            node_runtime_sha256: "1".repeat(64),
            rootfs_sha256: "2".repeat(64),
            rootfs_size: 100 << 20,
            data_image_bytes: 8 << 30,
            files: vec![
                WantedFile {
                    label: "config",
                    path: phone::CONFIG.into(),
                    mode: "0644",
                    content: b"[node]\n",
                },
                WantedFile {
                    label: "token",
                    path: "/data/armfleet/rootfs/etc/armfleet/token".into(),
                    mode: "0600",
                    content: TOKEN,
                },
                WantedFile {
                    label: "boot hook",
                    path: hook::service_path(),
                    mode: "0755",
                    content: b"#!/bin/sh\n",
                },
            ],
            token_path: "/data/armfleet/rootfs/etc/armfleet/token".into(),
            k3s: None,
        }
    }

    /// The phone as a complete enroll of `wanted` leaves it, its worker in `state`.
    fn enrolled(w: &Wanted, state: AgentState, live: bool) -> Installed {
        let mut hashes = BTreeMap::new();
        hashes.insert(phone::BIN.to_owned(), w.node_runtime_sha256.clone());
        hashes.insert(
            phone::ROOTFS_SHA.to_owned(),
            sha256_hex(rootfs_marker(&w.rootfs_sha256).as_bytes()),
        );
        for f in &w.files {
            hashes.insert(f.path.clone(), sha256_hex(f.content));
        }
        let status: Status = serde_json::from_value(serde_json::json!({
            "schema": 1, "version": "0", "node_name": "phone-1", "pid": 42, "started_at": 0,
            "updated_at": 0, "state": state, "agent_pid": 43, "healthy": true, "healthz": "ok",
            "restarts": 0, "last_exit": null, "node_ip": null, "battery": null, "message": null,
            "supervisor_running": live
        }))
        .unwrap();
        Installed {
            hashes,
            status: Some(status),
        }
    }

    fn labels<'a>(p: &'a Plan<'a>) -> Vec<&'static str> {
        p.writes.iter().map(|f| f.label).collect()
    }

    #[test]
    fn fresh_phone_gets_everything_and_a_start() {
        let w = wanted();
        let p = plan(&w, &Installed::default());
        assert!(p.node_runtime && p.rootfs && p.start);
        assert!(!p.stop_first, "nothing to stop on a fresh phone");
        assert_eq!(labels(&p), ["config", "token", "boot hook"]);
        assert_eq!(p.need_bytes, w.rootfs_size * 3 + w.data_image_bytes);
        assert!(p.unchanged.is_empty());
    }

    #[test]
    fn unchanged_running_worker_is_left_alone() {
        let w = wanted();
        let p = plan(&w, &enrolled(&w, AgentState::Running, true));
        assert!(!p.node_runtime && !p.rootfs && !p.start && !p.stop_first);
        assert!(p.writes.is_empty() && p.changed.is_empty());
        assert_eq!(p.need_bytes, 0);
        assert_eq!(
            p.unchanged,
            ["node-runtime", "rootfs", "config", "token", "boot hook"]
        );
    }

    #[test]
    fn a_new_rootfs_stops_the_worker_and_rewrites_the_token() {
        let w = wanted();
        let mut installed = enrolled(&w, AgentState::Running, true);
        installed
            .hashes
            .insert(phone::ROOTFS_SHA.into(), "9".repeat(64));
        let p = plan(&w, &installed);
        assert!(p.rootfs && p.stop_first && p.start && !p.node_runtime);
        // The token lives in the rootfs: a new rootfs needs it again, though its hash matched.
        assert_eq!(labels(&p), ["token"]);
        assert_eq!(p.need_bytes, w.rootfs_size * 3, "no new data image");
    }

    #[test]
    fn a_changed_config_restarts_without_sending_the_rootfs() {
        let w = wanted();
        let mut installed = enrolled(&w, AgentState::Running, true);
        installed
            .hashes
            .insert(phone::CONFIG.into(), "8".repeat(64));
        let p = plan(&w, &installed);
        assert!(!p.rootfs && !p.node_runtime);
        assert!(p.stop_first && p.start);
        assert_eq!(labels(&p), ["config"]);
        assert_eq!(p.changed, ["config"]);
    }

    #[test]
    fn a_stopped_worker_is_started_and_its_flag_cleared() {
        let w = wanted();
        let mut installed = enrolled(&w, AgentState::Stopped, false);
        installed
            .hashes
            .insert(phone::DISABLED.into(), "7".repeat(64));
        let p = plan(&w, &installed);
        assert!(p.start && p.clear_stopped_flag);
        assert!(!p.stop_first, "nothing runs to stop");
        assert!(p.writes.is_empty());
    }

    #[test]
    fn a_dead_supervisors_running_record_does_not_count() {
        let w = wanted();
        let p = plan(&w, &enrolled(&w, AgentState::Running, false));
        assert!(p.start, "the record says running, but its writer is dead");
        assert!(!p.stop_first);
    }

    #[test]
    fn k3s_is_brought_only_when_the_phone_would_not_have_the_pinned_one() {
        let dest = "/data/armfleet/rootfs/usr/local/bin/k3s".to_owned();
        let mut w = wanted();
        w.k3s = Some(WantedK3s {
            sha256: "5".repeat(64),
            size: 70 << 20,
            dest: dest.clone(),
            in_rootfs: None,
        });
        // A fresh phone with a rootfs that carries no k3s: brought, and counted in the space.
        let p = plan(&w, &Installed::default());
        assert!(p.k3s && p.changed.contains(&"k3s".to_owned()));
        assert_eq!(
            p.need_bytes,
            w.rootfs_size * 3 + w.data_image_bytes + (140 << 20)
        );
        // The rootfs to be installed carries the pinned one: nothing to bring.
        w.k3s.as_mut().unwrap().in_rootfs = Some("5".repeat(64));
        assert!(!plan(&w, &Installed::default()).k3s);
        // Enrolled, rootfs current, the phone has the pinned k3s: nothing; another one: brought.
        let mut installed = enrolled(&w, AgentState::Running, true);
        installed.hashes.insert(dest.clone(), "5".repeat(64));
        let p = plan(&w, &installed);
        assert!(!p.k3s && p.unchanged.contains(&"k3s".to_owned()));
        installed.hashes.insert(dest, "6".repeat(64));
        let p = plan(&w, &installed);
        assert!(
            p.k3s && p.start && p.stop_first,
            "a new k3s restarts the agent"
        );
    }

    #[test]
    fn a_dry_run_lists_the_plan_in_order_and_never_the_token() {
        let w = wanted();
        let fresh = plan(&w, &Installed::default()).actions(&w);
        assert_eq!(fresh.len(), 6, "{fresh:#?}");
        assert!(fresh[0].starts_with("push node-runtime (sha256 111111111111)"));
        assert!(fresh[1].starts_with("stream the rootfs (100.0 MiB, sha256 222222222222)"));
        assert!(fresh[3].contains("/data/armfleet/rootfs/etc/armfleet/token (token, mode 0600"));
        assert_eq!(fresh[5], "start node-runtime and wait for the kubelet");
        let token = std::str::from_utf8(TOKEN).unwrap();
        assert!(fresh.iter().all(|a| !a.contains(token)), "{fresh:#?}");

        let current = plan(&w, &enrolled(&w, AgentState::Running, true)).actions(&w);
        assert_eq!(
            current,
            ["nothing: the phone runs this configuration already"]
        );
    }

    #[test]
    fn a_hand_written_config_must_use_the_phone_layout() {
        let text = "[node]\nname = \"p\"\nkind = \"phone\"\n[server]\nurl = \"https://10.0.0.1:6443\"\n[chroot]\nroot = \"/data/elsewhere\"\n";
        let c = NodeConfig::from_toml_str(text, "n.toml").unwrap();
        let e = check_phone_layout(&c, "n.toml").unwrap_err().to_string();
        assert!(
            e.contains("chroot.root") && e.contains(phone::ROOTFS),
            "{e}"
        );
    }
}
