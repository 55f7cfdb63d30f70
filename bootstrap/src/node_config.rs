//! `node.toml`: the one config file `node-runtime` reads on every worker.
//!
//! `phonectl` and `imagegen` write it (from the topology), `node-runtime` reads it. Paths in it are
//! paths *inside the worker's root filesystem*: on a Pi that is `/`; on a phone it is the chroot at
//! [`Chroot::root`], and [`NodeConfig::host_path`] turns such a path into one valid outside the chroot.
//!
//! Unknown keys are errors (a typo must not silently drop a setting), and every error names the
//! file, the line and the key.

use crate::layout::worker;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The longest wait `node.toml` may ask for (a stop grace, a backoff cap), in seconds: a day. Beyond
/// it a value is a typo, and timers built from it must not overflow.
pub const MAX_WAIT_SECS: u64 = 86_400;

/// The whole of `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Who this worker is.
    pub node: Node,
    /// The k3s server it joins.
    pub server: Server,
    /// The k3s agent binary and how to run it.
    #[serde(default)]
    pub k3s: K3s,
    /// Network facts k3s cannot guess on these devices.
    #[serde(default)]
    pub network: Network,
    /// Node labels, `key = "value"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints, `key=value:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// Set on phones: the chroot the agent runs in. Absent on Pis (run in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chroot: Option<Chroot>,
    /// Set on phones: wakelock and battery care.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
    /// Supervision of the agent process.
    #[serde(default)]
    pub supervise: Supervise,
    /// Where the agent's output goes.
    #[serde(default)]
    pub logs: Logs,
    /// Where `node-runtime run` writes its health, which `node-runtime status` prints.
    #[serde(default = "default_status_file")]
    pub status_file: PathBuf,
}

/// What kind of machine a worker is; decides the defaults that differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A Raspberry Pi running Debian; systemd starts node-runtime.
    Pi,
    /// A rooted Android phone; a Magisk/KernelSU boot script starts node-runtime.
    Phone,
}

/// Identity of the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Kubernetes node name (`--node-name`); phones all call themselves `localhost`, so it is explicit.
    pub name: String,
    /// Pi or phone.
    pub kind: NodeKind,
}

/// The server side of the join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `https://host:6443`.
    pub url: String,
    /// The join token file, mode 0600, passed as `--token-file` (never on a command line).
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// A token dropped here (e.g. on a Pi's FAT boot partition after flashing) is moved to
    /// `token_file` with mode 0600 at start, then deleted from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_drop: Option<PathBuf>,
}

/// The k3s binary and its agent flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    /// k3s release, e.g. `v1.31.4+k3s1` (informational; the pin is `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the binary lives.
    #[serde(default = "default_k3s_bin")]
    pub bin: PathBuf,
    /// sha256 of the arm64 binary; when set, a binary that differs is replaced from `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where to fetch the binary when it is absent or differs (upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The lab's mirror of the same file (the router's artifact mirror), tried before `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// `--data-dir`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// On phones: an ext4 loop image mounted on `data_dir` (f2fs breaks overlayfs and cadvisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_image: Option<DataImage>,
    /// `--snapshotter`, when the default (overlayfs) cannot work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<String>,
    /// Extra `--kubelet-arg` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubelet_args: Vec<String>,
    /// Further agent arguments, appended as given (must not carry the token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// `k3s agent` (every worker) or `k3s server` (the lab's router).
    #[serde(default, skip_serializing_if = "K3sRole::is_agent")]
    pub role: K3sRole,
    /// The release's airgap images archive on the lab's mirror: put into
    /// `<data_dir>/agent/images/` before k3s starts, which imports it instead of pulling the
    /// system images over the uplink. Best effort: without it k3s pulls them as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airgap: Option<Airgap>,
}

/// A pinned archive fetched from one URL (the lab's mirror).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Airgap {
    /// Where it is served, e.g. `http://rpi4-1.lab.home.arpa:8080/k3s-airgap-images-arm64.tar.zst`.
    pub url: String,
    /// Its sha256; anything else is not kept.
    pub sha256: String,
}

impl Airgap {
    /// The archive's file name (the URL's last segment), as k3s finds it in its images dir.
    pub fn file_name(&self) -> &str {
        self.url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("k3s-airgap-images-arm64.tar.zst")
    }
}

/// Which k3s a node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum K3sRole {
    /// `k3s agent`: joins `server.url`.
    #[default]
    Agent,
    /// `k3s server`: is the server at `server.url`.
    Server,
}

impl K3sRole {
    /// True for the agent (the default, left out of node.toml).
    pub fn is_agent(&self) -> bool {
        *self == K3sRole::Agent
    }

    /// The k3s subcommand: `agent` or `server`.
    pub fn command(&self) -> &'static str {
        match self {
            K3sRole::Agent => "agent",
            K3sRole::Server => "server",
        }
    }
}

/// An ext4 filesystem image holding the k3s data dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataImage {
    /// Path of the image file, *outside* the chroot (e.g. `/data/armfleet/k3s-data.img`).
    pub path: PathBuf,
    /// Size to create it with on first run.
    pub size_mib: u64,
}

/// Network settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The interface the node talks on (`--flannel-iface`); its address is the node IP unless pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// `--node-ip`, when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<IpAddr>,
    /// Name servers written to the chroot's `resolv.conf` (Android has none) and passed as `--resolv-conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains for that `resolv.conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Keep the policy-routing rules the agent needs beside Android's (phones; see
    /// node-runtime's `routing`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub policy_routing: bool,
    /// The cluster's pod network (the server's `--cluster-cidr`).
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    /// The cluster's service network (the server's `--service-cidr`).
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// k3s' default pod network.
pub const DEFAULT_POD_CIDR: &str = "10.42.0.0/16";
/// k3s' default service network.
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";

fn default_pod_cidr() -> String {
    DEFAULT_POD_CIDR.into()
}
fn default_service_cidr() -> String {
    DEFAULT_SERVICE_CIDR.into()
}

impl Default for Network {
    fn default() -> Self {
        Network {
            iface: None,
            node_ip: None,
            nameservers: Vec::new(),
            search: Vec::new(),
            policy_routing: false,
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
        }
    }
}

/// Whether `s` is an IPv4 network in CIDR form (`10.42.0.0/16`).
pub fn is_ipv4_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

/// The phone chroot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chroot {
    /// The node rootfs on the phone, e.g. `/data/armfleet/rootfs`.
    pub root: PathBuf,
    /// Hostname set in the chroot's UTS namespace (defaults to the node name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Battery care and sleep prevention on phones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Hold `/sys/power/wake_lock` while running.
    #[serde(default = "yes")]
    pub wakelock: bool,
    /// Stop charging at or above this percentage (where the kernel offers a charging switch).
    #[serde(default = "default_charge_stop")]
    pub charge_stop_above: u8,
    /// Resume charging at or below this percentage.
    #[serde(default = "default_charge_resume")]
    pub charge_resume_below: u8,
    /// Stop the agent gracefully at or below this percentage when not charging.
    #[serde(default = "default_agent_stop")]
    pub agent_stop_below: u8,
    /// Start it again at or above this percentage.
    #[serde(default = "default_agent_resume")]
    pub agent_resume_above: u8,
    /// Where the kernel exposes batteries and chargers (overridable for tests).
    #[serde(default = "default_power_supply_dir")]
    pub power_supply_dir: PathBuf,
}

/// Restart and stop behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervise {
    /// First restart delay.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Restart delay cap.
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// After running this long the backoff starts again from the first delay.
    #[serde(default = "default_healthy_after_secs")]
    pub healthy_after_secs: u64,
    /// Between SIGTERM and SIGKILL when stopping the agent.
    #[serde(default = "default_stop_grace_secs")]
    pub stop_grace_secs: u64,
    /// The kubelet healthz port probed for health.
    #[serde(default = "default_healthz_port")]
    pub healthz_port: u16,
}

/// Agent log capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Directory for `k3s-agent.log` and its rotations.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
    /// Rotate when the current file reaches this size.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_log_keep")]
    pub keep: u32,
}

fn yes() -> bool {
    true
}
fn default_status_file() -> PathBuf {
    worker::STATUS_FILE.into()
}
fn default_token_file() -> PathBuf {
    worker::TOKEN_FILE.into()
}
fn default_k3s_bin() -> PathBuf {
    worker::K3S_BIN.into()
}
fn default_data_dir() -> PathBuf {
    worker::K3S_DATA_DIR.into()
}
fn default_charge_stop() -> u8 {
    80
}
fn default_charge_resume() -> u8 {
    60
}
fn default_agent_stop() -> u8 {
    15
}
fn default_agent_resume() -> u8 {
    30
}
fn default_power_supply_dir() -> PathBuf {
    "/sys/class/power_supply".into()
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_secs() -> u64 {
    60
}
fn default_healthy_after_secs() -> u64 {
    120
}
fn default_stop_grace_secs() -> u64 {
    20
}
fn default_healthz_port() -> u16 {
    10248
}
fn default_log_dir() -> PathBuf {
    worker::LOG_DIR.into()
}
fn default_log_max_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    3
}

impl Default for K3s {
    fn default() -> Self {
        K3s {
            version: None,
            bin: default_k3s_bin(),
            sha256: None,
            url: None,
            mirror: None,
            data_dir: default_data_dir(),
            data_image: None,
            snapshotter: None,
            kubelet_args: Vec::new(),
            extra_args: Vec::new(),
            role: K3sRole::Agent,
            airgap: None,
        }
    }
}

impl Default for Power {
    fn default() -> Self {
        Power {
            wakelock: true,
            charge_stop_above: default_charge_stop(),
            charge_resume_below: default_charge_resume(),
            agent_stop_below: default_agent_stop(),
            agent_resume_above: default_agent_resume(),
            power_supply_dir: default_power_supply_dir(),
        }
    }
}

impl Default for Supervise {
    fn default() -> Self {
        Supervise {
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_secs: default_backoff_max_secs(),
            healthy_after_secs: default_healthy_after_secs(),
            stop_grace_secs: default_stop_grace_secs(),
            healthz_port: default_healthz_port(),
        }
    }
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            dir: default_log_dir(),
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
        }
    }
}

/// Why a `node.toml` could not be used. The message names the file, and the line and key where
/// the file says something wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}: check the path, or pass --config FILE")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has a wrong or unknown key (toml's message carries line and key).
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// toml's message, one line, with line number and key.
        message: String,
    },
    /// A value parses but makes no sense.
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// Dotted key, e.g. `power.charge_stop_above`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl NodeConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: one_line_toml_error(&e, text),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Serialises to TOML (what `phonectl` and `imagegen` write on the worker).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("NodeConfig always serialises")
    }

    /// Checks what serde cannot: names, URL scheme, pins, the power marks' order.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        if !is_dns_label(&self.node.name) {
            return Err(bad(
                "node.name",
                format!(
                    "{:?} is not a valid node name: use lowercase letters, digits and '-', at most 63 characters",
                    self.node.name
                ),
            ));
        }
        if !self.server.url.starts_with("https://") || self.server.url.len() <= "https://".len() {
            return Err(bad(
                "server.url",
                format!(
                    "{:?} is not an https URL: k3s agents join over https, e.g. https://10.10.0.1:6443",
                    self.server.url
                ),
            ));
        }
        if let Some(sha) = &self.k3s.sha256
            && !is_sha256_hex(sha)
        {
            return Err(bad(
                "k3s.sha256",
                format!("{sha:?} is not a sha256: expected 64 lowercase hex digits"),
            ));
        }
        for (key, url) in [("k3s.url", &self.k3s.url), ("k3s.mirror", &self.k3s.mirror)] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(bad(key, format!("{url:?} is not an http(s) URL")));
            }
        }
        if let Some(a) = &self.k3s.airgap {
            if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
                return Err(bad(
                    "k3s.airgap.url",
                    format!("{:?} is not an http(s) URL", a.url),
                ));
            }
            if !is_sha256_hex(&a.sha256) {
                return Err(bad(
                    "k3s.airgap.sha256",
                    format!(
                        "{:?} is not a sha256: expected 64 lowercase hex digits",
                        a.sha256
                    ),
                ));
            }
        }
        if (self.k3s.url.is_some() || self.k3s.mirror.is_some()) && self.k3s.sha256.is_none() {
            return Err(bad(
                "k3s.sha256",
                "k3s.url is set without a sha256 pin: a downloaded binary must be verified; add the pin".into(),
            ));
        }
        // Paths inside the worker's root: `..` would reach out of a phone's chroot (a token file
        // written to `../../x` lands outside the rootfs), so each must be absolute and plain.
        let mut paths: Vec<(&str, &Path)> = vec![
            ("server.token_file", &self.server.token_file),
            ("k3s.bin", &self.k3s.bin),
            ("k3s.data_dir", &self.k3s.data_dir),
            ("logs.dir", &self.logs.dir),
            ("status_file", &self.status_file),
        ];
        if let Some(drop) = &self.server.token_drop {
            paths.push(("server.token_drop", drop));
        }
        if let Some(di) = &self.k3s.data_image {
            paths.push(("k3s.data_image.path", &di.path));
        }
        if let Some(c) = &self.chroot {
            paths.push(("chroot.root", &c.root));
        }
        if let Some(p) = &self.power {
            paths.push(("power.power_supply_dir", &p.power_supply_dir));
        }
        for (key, path) in paths {
            if !path.is_absolute() {
                return Err(bad(
                    key,
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            if path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad(
                    key,
                    format!(
                        "{} contains `..`: give the path without it (it must stay inside the worker's root)",
                        path.display()
                    ),
                ));
            }
        }
        for arg in self.k3s.extra_args.iter().chain(&self.k3s.kubelet_args) {
            if arg.starts_with("--token") && !arg.starts_with("--token-file")
                || arg.starts_with("K10")
            {
                return Err(bad(
                    "k3s.extra_args",
                    "a token must not be passed as an argument (it would show in `ps`): use server.token_file".into(),
                ));
            }
        }
        if let Some(di) = &self.k3s.data_image {
            if !di.path.is_absolute() {
                return Err(bad(
                    "k3s.data_image.path",
                    format!("{} is not an absolute path", di.path.display()),
                ));
            }
            if di.size_mib < 256 {
                return Err(bad(
                    "k3s.data_image.size_mib",
                    format!(
                        "{} MiB is too small for k3s images and containers: use at least 256",
                        di.size_mib
                    ),
                ));
            }
        }
        if let Some(chroot) = &self.chroot {
            if !chroot.root.is_absolute() || chroot.root == Path::new("/") {
                return Err(bad(
                    "chroot.root",
                    format!(
                        "{} must be an absolute path other than /",
                        chroot.root.display()
                    ),
                ));
            }
            if let Some(h) = &chroot.hostname
                && !is_dns_label(h)
            {
                return Err(bad(
                    "chroot.hostname",
                    format!("{h:?} is not a valid hostname"),
                ));
            }
        }
        if let Some(p) = &self.power {
            for (key, v) in [
                ("power.charge_stop_above", p.charge_stop_above),
                ("power.charge_resume_below", p.charge_resume_below),
                ("power.agent_stop_below", p.agent_stop_below),
                ("power.agent_resume_above", p.agent_resume_above),
            ] {
                if v > 100 {
                    return Err(bad(key, format!("{v} is not a percentage (0-100)")));
                }
            }
            if p.charge_resume_below >= p.charge_stop_above {
                return Err(bad(
                    "power.charge_resume_below",
                    format!(
                        "{} must be below charge_stop_above ({}), or charging would flap",
                        p.charge_resume_below, p.charge_stop_above
                    ),
                ));
            }
            if p.agent_stop_below >= p.agent_resume_above {
                return Err(bad(
                    "power.agent_stop_below",
                    format!(
                        "{} must be below agent_resume_above ({}), or the agent would flap",
                        p.agent_stop_below, p.agent_resume_above
                    ),
                ));
            }
        }
        for (key, cidr) in [
            ("network.pod_cidr", &self.network.pod_cidr),
            ("network.service_cidr", &self.network.service_cidr),
        ] {
            if !is_ipv4_cidr(cidr) {
                return Err(bad(
                    key,
                    format!("{cidr:?} is not an IPv4 network such as 10.42.0.0/16"),
                ));
            }
        }
        if self.logs.max_bytes < 4096 {
            return Err(bad(
                "logs.max_bytes",
                format!("{} is too small: use at least 4096", self.logs.max_bytes),
            ));
        }
        for (key, v, max) in [
            (
                "supervise.stop_grace_secs",
                self.supervise.stop_grace_secs,
                MAX_WAIT_SECS,
            ),
            (
                "supervise.backoff_max_secs",
                self.supervise.backoff_max_secs,
                MAX_WAIT_SECS,
            ),
            (
                "supervise.healthy_after_secs",
                self.supervise.healthy_after_secs,
                MAX_WAIT_SECS,
            ),
        ] {
            if v > max {
                return Err(bad(
                    key,
                    format!("{v} s is more than {max} s: use a value up to {max}"),
                ));
            }
        }
        if self.supervise.backoff_initial_ms == 0 || self.supervise.backoff_initial_ms > 1000 {
            return Err(bad(
                "supervise.backoff_initial_ms",
                format!(
                    "{} must be between 1 and 1000 (the first retry comes within a second)",
                    self.supervise.backoff_initial_ms
                ),
            ));
        }
        Ok(())
    }

    /// The hostname the worker should carry.
    pub fn hostname(&self) -> &str {
        self.chroot
            .as_ref()
            .and_then(|c| c.hostname.as_deref())
            .unwrap_or(&self.node.name)
    }

    /// Turns a path inside the worker's root into one valid where node-runtime starts: on a phone
    /// that is outside the chroot (`chroot.root` joined), on a Pi the path itself.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        match &self.chroot {
            Some(c) => c.root.join(inside.strip_prefix("/").unwrap_or(inside)),
            None => inside.to_owned(),
        }
    }
}

/// toml's errors span several lines with a source excerpt; keep the first line and the location.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// RFC 1123 label: what Kubernetes accepts as a node name and Linux as a hostname.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = r#"
status_file = "/var/lib/armfleet/status.json"
[node]
name = "phone-1"
kind = "phone"
[server]
url = "https://10.10.0.1:6443"
[k3s]
data_image = { path = "/data/armfleet/k3s-data.img", size_mib = 4096 }
[network]
iface = "wlan0"
nameservers = ["10.10.0.1"]
[labels]
"armfleet.io/kind" = "phone"
[chroot]
root = "/data/armfleet/rootfs"
[power]
"#;

    #[test]
    fn phone_config_round_trips_with_defaults() {
        let c = NodeConfig::from_toml_str(PHONE, "node.toml").unwrap();
        assert_eq!(c.node.kind, NodeKind::Phone);
        assert_eq!(c.power.as_ref().unwrap().charge_stop_above, 80);
        assert_eq!(c.supervise.healthz_port, 10248);
        assert_eq!(
            c.host_path(Path::new("/etc/armfleet/token")),
            PathBuf::from("/data/armfleet/rootfs/etc/armfleet/token")
        );
        let again = NodeConfig::from_toml_str(&c.to_toml_string(), "again").unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = PHONE.replace("iface = \"wlan0\"", "iface = \"wlan0\"\nifcae = \"x\"");
        let err = NodeConfig::from_toml_str(&text, "/etc/armfleet/node.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/armfleet/node.toml: line 12:"),
            "{err}"
        );
        assert!(err.contains("ifcae"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn airgap_archive_round_trips_and_bad_pins_are_refused() {
        let with = |a: &str| {
            NodeConfig::from_toml_str(
                &PHONE.replace("[k3s]\n", &format!("[k3s]\nairgap = {a}\n")),
                "n.toml",
            )
        };
        let sha = "0f".repeat(32);
        let c = with(&format!(
            "{{ url = \"http://rpi4-1.lab.home.arpa:8080/k3s-airgap-images-arm64.tar.zst\", sha256 = \"{sha}\" }}"
        ))
        .unwrap();
        let a = c.k3s.airgap.as_ref().unwrap();
        assert_eq!(a.file_name(), "k3s-airgap-images-arm64.tar.zst");
        assert_eq!(
            NodeConfig::from_toml_str(&c.to_toml_string(), "again").unwrap(),
            c
        );
        let e = with("{ url = \"http://m/a.tar.zst\", sha256 = \"xyz\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k3s.airgap.sha256"), "{e}");
        let e = with(&format!(
            "{{ url = \"/srv/a.tar.zst\", sha256 = \"{sha}\" }}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("k3s.airgap.url"), "{e}");
        // A URL ending in a slash or `..` never names a file outside the images dir.
        let dots = Airgap {
            url: "http://m/..".into(),
            sha256: sha.clone(),
        };
        assert_eq!(dots.file_name(), "k3s-airgap-images-arm64.tar.zst");
    }

    #[test]
    fn plain_http_server_is_refused() {
        let text = PHONE.replace("https://10.10.0.1", "http://10.10.0.1");
        let err = NodeConfig::from_toml_str(&text, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `server.url`") && err.contains("https"),
            "{err}"
        );
    }

    #[test]
    fn flapping_power_marks_are_refused() {
        let text = PHONE.replace(
            "[power]",
            "[power]\ncharge_stop_above = 50\ncharge_resume_below = 60",
        );
        let err = NodeConfig::from_toml_str(&text, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("power.charge_resume_below"), "{err}");
    }

    #[test]
    fn paths_with_parent_components_are_refused() {
        for (from, to, key) in [
            (
                "status_file = \"/var/lib/armfleet/status.json\"",
                "status_file = \"/var/lib/armfleet/../../x\"",
                "status_file",
            ),
            (
                "url = \"https://10.10.0.1:6443\"",
                "url = \"https://10.10.0.1:6443\"\ntoken_file = \"/etc/../../../data/token\"",
                "server.token_file",
            ),
            (
                "url = \"https://10.10.0.1:6443\"",
                "url = \"https://10.10.0.1:6443\"\ntoken_drop = \"/boot/../../sdcard/t\"",
                "server.token_drop",
            ),
            (
                "/data/armfleet/k3s-data.img",
                "/data/armfleet/../k3s-data.img",
                "k3s.data_image.path",
            ),
            (
                "root = \"/data/armfleet/rootfs\"",
                "root = \"/data/armfleet/rootfs/..\"",
                "chroot.root",
            ),
        ] {
            let text = PHONE.replace(from, to);
            assert_ne!(text, PHONE, "{key}: the replacement did not apply");
            let err = NodeConfig::from_toml_str(&text, "n.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains("`..`"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn waits_beyond_a_day_are_refused() {
        let text = format!("{PHONE}[supervise]\nstop_grace_secs = 18446744073709551615\n");
        let err = NodeConfig::from_toml_str(&text, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("supervise.stop_grace_secs"), "{err}");
    }

    #[test]
    fn token_in_extra_args_is_refused() {
        let text = PHONE.replace("[network]", "extra_args = [\"--token=abc\"]\n[network]");
        let err = NodeConfig::from_toml_str(&text, "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_file"), "{err}");
    }
}
