//! The health record: written by `node-runtime run`, printed by `node-runtime status`, parsed by
//! `phonectl status` (over ADB, from outside a phone's mount namespace: the file is on disk).
//! Here, below both, so phonectl reads the record without linking the supervisor.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the supervisor is doing with the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Preparing (chroot, binary, token) before the first start.
    Preparing,
    /// The agent process is running.
    Running,
    /// The agent exited; waiting out the backoff before the next start.
    Backoff,
    /// Stopped on purpose because the battery is low and not charging.
    PausedLowBattery,
    /// Stopping (SIGTERM sent).
    Stopping,
    /// node-runtime stopped and the agent with it.
    Stopped,
}

/// How the agent's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// When (seconds since the epoch).
    pub at: u64,
    /// How long it had run, in milliseconds.
    pub ran_ms: u64,
}

/// Battery facts from `/sys/class/power_supply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Battery {
    /// Charge in percent.
    pub percent: Option<u8>,
    /// Kernel's status word (`Charging`, `Discharging`, `Full`, `Not charging`).
    pub status: Option<String>,
    /// An external supply (USB, mains, wireless) is online.
    pub external_power: bool,
    /// Battery temperature in °C.
    pub temperature_c: Option<f32>,
    /// The charging switch in use (relative to the power_supply dir), when the kernel has one.
    pub charge_switch: Option<String>,
    /// Whether node-runtime currently lets the battery charge (None: no switch).
    pub charging_allowed: Option<bool>,
}

/// How the cgroup hierarchies look to the agent. Kubernetes 1.35+ refuses anything but `v2`
/// unless told otherwise (`failCgroupV1`), so the difference decides the kubelet's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Only v1 controllers (Android 7-9: memcg, cpuctl, cpuset under /dev).
    V1,
    /// v1 controllers beside a cgroup2 (Android 10+, Debian with systemd's hybrid mode).
    Hybrid,
    /// The unified hierarchy only.
    V2,
}

impl std::fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::Hybrid => "hybrid",
            CgroupLayout::V2 => "v2",
        })
    }
}

/// The iptables backend in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iptables {
    /// `legacy`, `nft`, or `default` (Debian's choice left alone).
    pub backend: String,
    /// Why, in words.
    pub reason: String,
}

/// The policy-routing rules kept for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The rules as `ip rule` shows them (`6090: to 10.42.0.0/16 lookup main`).
    pub rules: Vec<String>,
    /// The table egress from the pods goes to (the uplink's), when one was found.
    pub uplink_table: Option<String>,
}

/// The JSON record in the status file (`status_file` in node.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Format version of this record.
    pub schema: u32,
    /// node-runtime's version.
    pub version: String,
    /// The Kubernetes node name.
    pub node_name: String,
    /// pid of the supervisor (in the initial pid namespace).
    pub pid: u32,
    /// When the supervisor started (seconds since the epoch).
    pub started_at: u64,
    /// When this record was written.
    pub updated_at: u64,
    /// What it does with the agent.
    pub state: AgentState,
    /// pid of the running agent.
    pub agent_pid: Option<u32>,
    /// The kubelet healthz answered `ok` at the last probe.
    pub healthy: bool,
    /// Last probe result in words (`ok`, `connection refused`, …).
    pub healthz: Option<String>,
    /// Agent restarts since the supervisor started.
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<LastExit>,
    /// The node IP handed to the agent.
    pub node_ip: Option<String>,
    /// Battery, on phones.
    pub battery: Option<Battery>,
    /// A short note for the human (the last problem, the reason for a pause).
    pub message: Option<String>,
    /// Since when (seconds since the epoch) the kubelet has answered healthy without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<u64>,
    /// The cgroup layout the agent runs on (decided from what node-runtime mounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<CgroupLayout>,
    /// The iptables backend the agent and the rootfs use, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables: Option<Iptables>,
    /// The policy-routing rules node-runtime keeps for the agent (phones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// Whether the supervisor that wrote this record still runs, as `node-runtime status` judged
    /// it on the worker (the pidfile's lock is held by that pid, and it is node-runtime). Never in
    /// the file itself: only a reader on the worker can tell, never one on a laptop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_running: Option<bool>,
    /// `server` when the supervised k3s is the server (absent for an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Status {
    /// Same content ignoring `updated_at` (to write on change only).
    pub fn same_as(&self, other: &Status) -> bool {
        let mut a = self.clone();
        a.updated_at = other.updated_at;
        if let (Some(x), Some(y)) = (&mut a.battery, &other.battery) {
            // Temperature jitters by tenths: not a reason to wear an SD card.
            if let (Some(t1), Some(t2)) = (x.temperature_c, y.temperature_c)
                && (t1 - t2).abs() < 1.0
            {
                x.temperature_c = y.temperature_c;
            }
        }
        &a == other
    }

    /// The supervisor was seen running (see [`Status::supervisor_running`]).
    pub fn live(&self) -> bool {
        self.supervisor_running == Some(true)
    }

    /// A live supervisor reports its agent process running.
    pub fn agent_up(&self) -> bool {
        self.live() && self.state == AgentState::Running && self.agent_pid.is_some()
    }

    /// Ready: the agent runs and its kubelet answers its health endpoint.
    pub fn ready(&self) -> bool {
        self.agent_up() && self.healthy
    }

    /// A short human view; `stale` when the supervisor is gone.
    pub fn render(&self) -> String {
        let now = unix_now();
        let mut out = String::new();
        let liveness = match self.supervisor_running {
            Some(true) => String::new(),
            Some(false) if self.state == AgentState::Stopped => String::new(),
            Some(false) => format!(
                " (stale: node-runtime pid {} is not running; record from {} s ago)",
                self.pid,
                now.saturating_sub(self.updated_at)
            ),
            None => " (not checked whether node-runtime still runs)".to_owned(),
        };
        out.push_str(&format!(
            "node {}: {} {}{liveness}\n",
            self.node_name,
            self.role.as_deref().unwrap_or("agent"),
            state_word(self.state),
        ));
        if let Some(pid) = self.agent_pid {
            out.push_str(&format!("  agent pid {pid}\n"));
        }
        let since = match (self.healthy, self.healthy_since) {
            (true, Some(t)) => format!(" for {}", human_secs(now.saturating_sub(t))),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  health: {}{since}{}\n",
            if self.healthy {
                "healthy"
            } else {
                "not healthy"
            },
            self.healthz
                .as_deref()
                .map(|h| format!(" (healthz: {h})"))
                .unwrap_or_default()
        ));
        out.push_str(&format!("  restarts: {}\n", self.restarts));
        if let Some(e) = &self.last_exit {
            let how = match (e.code, e.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "unknown".into(),
            };
            out.push_str(&format!(
                "  last exit: {how} after {:.1} s, {} s ago\n",
                e.ran_ms as f64 / 1000.0,
                now.saturating_sub(e.at)
            ));
        }
        if let Some(ip) = &self.node_ip {
            out.push_str(&format!("  node ip: {ip}\n"));
        }
        if let Some(c) = self.cgroups {
            let note = if c == CgroupLayout::V2 {
                ""
            } else {
                " (kubelet told fail-cgroupv1=false)"
            };
            out.push_str(&format!("  cgroups: {c}{note}\n"));
        }
        if let Some(i) = &self.iptables {
            out.push_str(&format!("  iptables: {} ({})\n", i.backend, i.reason));
        }
        if let Some(r) = &self.routing {
            out.push_str(&format!(
                "  routing: {} rule(s), pod egress via table {}\n",
                r.rules.len(),
                r.uplink_table.as_deref().unwrap_or("none")
            ));
        }
        if let Some(b) = &self.battery {
            out.push_str(&format!(
                "  battery: {}% {}{}{}\n",
                b.percent.map(|p| p.to_string()).unwrap_or("?".into()),
                b.status.as_deref().unwrap_or("?"),
                b.temperature_c
                    .map(|t| format!(", {t:.1} °C"))
                    .unwrap_or_default(),
                match b.charging_allowed {
                    Some(false) => ", charging held off by policy",
                    _ => "",
                }
            ));
        }
        if let Some(m) = &self.message {
            out.push_str(&format!("  note: {m}\n"));
        }
        out.push_str(&format!(
            "  node-runtime {} pid {}, up since {} s, updated {} s ago\n",
            self.version,
            self.pid,
            now.saturating_sub(self.started_at),
            now.saturating_sub(self.updated_at)
        ));
        out
    }
}

fn state_word(s: AgentState) -> &'static str {
    match s {
        AgentState::Preparing => "preparing",
        AgentState::Running => "running",
        AgentState::Backoff => "restarting (backoff)",
        AgentState::PausedLowBattery => "paused (battery low, not charging)",
        AgentState::Stopping => "stopping",
        AgentState::Stopped => "stopped",
    }
}

/// Why the status file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No file: node-runtime never ran with this config.
    #[error(
        "no status at {0}: node-runtime has not run with this config (start it: node-runtime run --detach)"
    )]
    Missing(PathBuf),
    /// The file is not a status record.
    #[error(
        "{path}: not a node-runtime status record ({message}): it will be rewritten by the next run"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads a status file.
pub fn read(path: &Path) -> Result<Status, StatusError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StatusError::Missing(path.to_owned())
        } else {
            StatusError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| StatusError::Malformed {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes `status` to `path` atomically (temp file in the same dir, fsync, rename), mode 0644.
pub fn write_atomic(path: &Path, status: &Status) -> Result<(), StatusError> {
    let mut body = serde_json::to_vec_pretty(status).expect("status serialises");
    body.push(b'\n');
    write_file_atomic(path, &body, 0o644).map_err(|source| StatusError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Atomic replace of a small file: write `.name.tmp`, fsync, rename over.
pub fn write_file_atomic(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    // Per process: two writers (a run and a detached run starting) must not share a temp file.
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Seconds since the Unix epoch, for status records.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `42 s`, `3 min`, `2 h 5 min`: an age for people.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
