//! `topology.toml`: the lab's one source of truth — the cluster, its VLANs, the Pis and the phones.
//! `phonectl` and `imagegen` read it and turn an entry into the `node.toml` of that worker
//! ([`NodeConfig::for_host`], [`NodeConfig::for_phone`]).
//!
//! With no file the tools use the embedded default (the lab this project was made for, see
//! `bootstrap/topology/default.toml`); `--topology FILE` or `ARMFLEET_TOPOLOGY` choose another.
//! Every error names the file, the line and the key.

use crate::layout;
use crate::node_config::{
    Chroot, DataImage, K3s, K3sRole, Logs, Network, Node, NodeConfig, NodeKind, Power, Server,
    Supervise, is_dns_label, is_sha256_hex,
};
use crate::token::SecretSource;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;

pub mod router;
pub use router::Router;

/// The embedded default topology (text).
pub const DEFAULT_TOPOLOGY: &str = include_str!("../topology/default.toml");

/// Environment variable naming a topology file when `--topology` is not given.
pub const TOPOLOGY_ENV: &str = "ARMFLEET_TOPOLOGY";

/// Taint every phone carries: only workloads that tolerate phones land there.
pub const PHONE_TAINT: &str = "armfleet.io/phone=true:NoSchedule";

/// Why a topology cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file cannot be read.
    #[error(
        "cannot read the topology {path}: {source}: check the path given with --topology or {TOPOLOGY_ENV}"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown or has the wrong type.
    #[error("{origin}:{line}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// 1-based line.
        line: usize,
        /// toml's message, one line.
        message: String,
    },
    /// A value parses but is wrong.
    #[error("{origin}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// 1-based line.
        line: usize,
        /// Dotted key, e.g. `host[1].address`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// No host of that name.
    #[error("{origin}: no host named {name:?}; the hosts are: {known}")]
    UnknownHost {
        /// The file.
        origin: String,
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// No phone of that name.
    #[error(
        "{origin}: no phone named {name:?} (phones: {known}); add a [[phone]] entry, or pass --name to enroll it with the cluster's defaults"
    )]
    UnknownPhone {
        /// The file.
        origin: String,
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A phone name that is not a valid node name.
    #[error(
        "{name:?} is not a valid node name: use lowercase letters, digits and '-', at most 63 characters (e.g. phone-2)"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// The node.toml made from the topology does not validate (a bug or an odd topology).
    #[error(transparent)]
    Config(#[from] crate::node_config::ConfigError),
}

/// An IP subnet, `10.10.10.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        let host_bits = u32::from(width - self.prefix);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }

    /// True when `ip` is in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let (a, _) = Self::bits(self.addr);
        let (b, _) = Self::bits(ip);
        a & self.mask() == b & self.mask()
    }

    /// True for the network and (IPv4) broadcast addresses, which a host cannot have.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        let (b, width) = Self::bits(ip);
        let host = b
            & !self.mask()
            & if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
        let host_max = !self.mask()
            & if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
        self.prefix < width - 1 && (host == 0 || (width == 32 && host == host_max))
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no prefix length (write it like 10.10.10.0/24)"))?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= width)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (0-{width})"))?;
        let subnet = Subnet { addr, prefix };
        let (a, _) = Subnet::bits(addr);
        if a & subnet.mask() != a {
            return Err(format!(
                "{s} has host bits set: the network address is not {ip}"
            ));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A host's or phone's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// Assigned by DHCP.
    Dhcp,
    /// Static, in the VLAN's subnet (the prefix is the subnet's).
    Static(IpAddr),
}

/// The k3s release workers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sPin {
    /// e.g. `v1.36.4+k3s1`.
    pub version: Option<String>,
    /// sha256 of the arm64 binary.
    pub sha256: Option<String>,
    /// Where to fetch it (upstream release URL).
    pub url: Option<String>,
    /// The release's airgap images archive (`k3s-airgap-images-arm64.tar.zst`), which the
    /// router's mirror serves beside the binary when pinned.
    pub airgap: Option<Pinned>,
}

/// A file pinned by its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Where to fetch it.
    pub url: String,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// The cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// A name for the lab.
    pub name: String,
    /// `https://host:6443`.
    pub server: String,
    /// The k3s pin.
    pub k3s: K3sPin,
    /// A mirror serving the artifacts (the k3s binary under its upstream file name), e.g. on the
    /// router; workers fetch from it instead of upstream.
    pub mirror: Option<String>,
    /// Where the join token comes from.
    pub token: SecretSource,
    /// DNS search domains.
    pub search: Vec<String>,
    /// Wi-Fi regulatory domain.
    pub wifi_country: String,
    /// The VLAN of phones that have no entry.
    pub phone_vlan: String,
    /// The pod network (the server's `--cluster-cidr`).
    pub pod_cidr: String,
    /// The service network (the server's `--service-cidr`).
    pub service_cidr: String,
    /// Arguments for every agent's kubelet, and for every `k3s agent`.
    pub args: AgentArgs,
}

/// Extra arguments for the agent: `kubelet_args` (each becomes a `--kubelet-arg`) and
/// `agent_args` (added to `k3s agent` as given). Cluster-wide, per host and per phone; an entry's
/// come after the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentArgs {
    /// `key=value` kubelet settings.
    pub kubelet: Vec<String>,
    /// `--flag[=value]` agent flags.
    pub agent: Vec<String>,
}

/// A VLAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vlan {
    /// `INFRA`.
    pub name: String,
    /// 802.1Q id.
    pub id: u16,
    /// Its subnet.
    pub subnet: Subnet,
    /// Default gateway.
    pub gateway: Option<IpAddr>,
    /// Name servers.
    pub dns: Vec<IpAddr>,
}

/// What a host does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The k3s server.
    Server,
    /// A k3s agent (worker).
    Agent,
}

/// How a host is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Wired.
    Ethernet,
    /// Wi-Fi.
    Wifi,
}

/// A Wi-Fi network a host joins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// SSID.
    pub ssid: String,
    /// Where the passphrase comes from (none: open network).
    #[serde(default)]
    pub passphrase: Option<SecretSource>,
}

/// A Raspberry Pi.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Hostname and node name.
    pub name: String,
    /// Board profile (`rpi4`, `rpi3a`).
    pub board: String,
    /// Server or agent.
    pub role: Role,
    /// Ethernet or Wi-Fi.
    pub link: Link,
    /// VLAN name.
    pub vlan: String,
    /// Whether its Ethernet port carries the VLAN tagged (a trunk) rather than untagged.
    pub tagged: bool,
    /// Its address.
    pub address: Address,
    /// SSH public keys for root.
    pub ssh_keys: Vec<String>,
    /// Wi-Fi, for `link = "wifi"`.
    pub wifi: Option<Wifi>,
    /// Its own join token (a k3s bootstrap token made for it alone), instead of `cluster.token`.
    pub token: Option<SecretSource>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Extra node taints.
    pub taints: Vec<String>,
    /// Its own agent and kubelet arguments (after the cluster's).
    pub args: AgentArgs,
}

impl Host {
    /// The interface carrying the node's address: `eth0`, `eth0.10` (tagged) or `wlan0`.
    pub fn iface(&self, vlan_id: u16) -> String {
        match (self.link, self.tagged) {
            (Link::Wifi, _) => "wlan0".into(),
            (Link::Ethernet, true) => format!("eth0.{vlan_id}"),
            (Link::Ethernet, false) => "eth0".into(),
        }
    }
}

/// A phone.
#[derive(Debug, Clone, PartialEq)]
pub struct Phone {
    /// Node name.
    pub name: String,
    /// ADB serial, when known.
    pub serial: Option<String>,
    /// VLAN name (of the Wi-Fi network it is on).
    pub vlan: String,
    /// Its address on that network.
    pub address: Address,
    /// The interface k3s uses (`wlan0`).
    pub iface: String,
    /// Its own join token (a k3s bootstrap token made for it alone), instead of `cluster.token`.
    pub token: Option<SecretSource>,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Extra taints (the phone taint is always added).
    pub taints: Vec<String>,
    /// Battery care.
    pub power: Power,
    /// Size of the k3s data image.
    pub data_image_mib: u64,
    /// Its own agent and kubelet arguments (after the cluster's).
    pub args: AgentArgs,
}

/// The lab.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The file it came from (or `<embedded default topology>`).
    pub origin: String,
    /// Folder relative paths in it (token files) are taken from.
    pub base_dir: PathBuf,
    /// The cluster.
    pub cluster: Cluster,
    /// The VLANs.
    pub vlans: Vec<Vlan>,
    hosts: Vec<Host>,
    phones: Vec<Phone>,
    /// The router between the VLANs (`[router]`), when the lab has one.
    pub router: Option<Router>,
}

// ---- raw (spanned) form ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    cluster: RawCluster,
    #[serde(default)]
    vlan: Vec<RawVlan>,
    #[serde(default)]
    host: Vec<RawHost>,
    #[serde(default)]
    phone: Vec<RawPhone>,
    #[serde(default)]
    router: Option<Spanned<router::RawRouter>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    name: Option<String>,
    server: Spanned<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    wifi_country: Option<Spanned<String>>,
    #[serde(default)]
    phone_vlan: Option<Spanned<String>>,
    #[serde(default)]
    token: Option<Spanned<SecretSource>>,
    #[serde(default)]
    mirror: Option<Spanned<String>>,
    #[serde(default)]
    k3s: Option<RawK3s>,
    #[serde(default)]
    pod_cidr: Option<Spanned<String>>,
    #[serde(default)]
    service_cidr: Option<Spanned<String>>,
    #[serde(default)]
    kubelet_args: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    agent_args: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinned {
    url: Spanned<String>,
    sha256: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawK3s {
    #[serde(default)]
    airgap: Option<RawPinned>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVlan {
    name: Spanned<String>,
    id: Spanned<u16>,
    subnet: Spanned<String>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    board: Spanned<String>,
    role: Role,
    link: Spanned<Link>,
    vlan: Spanned<String>,
    #[serde(default)]
    tagged: bool,
    address: Spanned<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
    #[serde(default)]
    wifi: Option<Spanned<RawWifi>>,
    #[serde(default)]
    token: Option<Spanned<SecretSource>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<String>,
    #[serde(default)]
    kubelet_args: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    agent_args: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWifi {
    #[serde(default)]
    ssid: Option<Spanned<String>>,
    #[serde(default)]
    passphrase: Option<Spanned<SecretSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhone {
    name: Spanned<String>,
    #[serde(default)]
    serial: Option<Spanned<String>>,
    #[serde(default)]
    vlan: Option<Spanned<String>>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    iface: Option<String>,
    #[serde(default)]
    token: Option<Spanned<SecretSource>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<String>,
    #[serde(default)]
    power: Option<Power>,
    #[serde(default)]
    data_image_mib: Option<u64>,
    #[serde(default)]
    kubelet_args: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    agent_args: Option<Spanned<Vec<String>>>,
}

struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
    fn bad(&self, span: std::ops::Range<usize>, key: String, message: String) -> TopologyError {
        TopologyError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line(span.start),
            key,
            message,
        }
    }

    /// A secret source as far as it can be checked unread (the key path of a sops file), so a
    /// typo is reported with its line now rather than when the secret is needed.
    fn secret(
        &self,
        raw: &Spanned<SecretSource>,
        key: &str,
    ) -> Result<SecretSource, TopologyError> {
        raw.get_ref().check().map_err(|m| {
            let sub = if matches!(raw.get_ref(), SecretSource::Sops { .. }) {
                ".sops.key"
            } else {
                ""
            };
            self.bad(raw.span(), format!("{key}{sub}"), m)
        })?;
        Ok(raw.get_ref().clone())
    }
}

/// Checks extra agent arguments: armfleet passes the server, the token, the node name and the
/// data dir itself (a token on a command line would show in `ps`), and kubelet settings are
/// `key=value` without dashes (each becomes one `--kubelet-arg`).
fn validate_args(
    ctx: &Ctx<'_>,
    kubelet: &Option<Spanned<Vec<String>>>,
    agent: &Option<Spanned<Vec<String>>>,
    key: &dyn Fn(&str) -> String,
) -> Result<AgentArgs, TopologyError> {
    const MANAGED: &[&str] = &[
        "--token",
        "-t",
        "--token-file",
        "--server",
        "-s",
        "--node-name",
        "--data-dir",
        "-d",
        "--vpn-auth",
    ];
    let mut out = AgentArgs::default();
    if let Some(k) = kubelet {
        for a in k.get_ref() {
            if a.starts_with('-') || !a.contains('=') || a.contains("K10") {
                return Err(ctx.bad(
                    k.span(),
                    key("kubelet_args"),
                    format!("{a:?} is not a kubelet setting: write key=value without dashes, e.g. \"max-pods=30\""),
                ));
            }
        }
        out.kubelet = k.get_ref().clone();
    }
    if let Some(ag) = agent {
        for a in ag.get_ref() {
            let name = a.split('=').next().unwrap_or(a);
            if !a.starts_with('-') {
                return Err(ctx.bad(
                    ag.span(),
                    key("agent_args"),
                    format!("{a:?} is not a flag: write each as --flag or --flag=value"),
                ));
            }
            if MANAGED.contains(&name) || a.starts_with("K10") || a.contains("::server:") {
                return Err(ctx.bad(
                    ag.span(),
                    key("agent_args"),
                    format!("{name} is set by armfleet (the token only ever goes in a 0600 file, never on a command line): remove it"),
                ));
            }
        }
        out.agent = ag.get_ref().clone();
    }
    Ok(out)
}

fn parse_address(
    ctx: &Ctx<'_>,
    raw: &Spanned<String>,
    key: &str,
    vlan: &Vlan,
) -> Result<Address, TopologyError> {
    let text = raw.get_ref().trim();
    if text.eq_ignore_ascii_case("dhcp") {
        return Ok(Address::Dhcp);
    }
    let ip: IpAddr = text.parse().map_err(|_| {
        ctx.bad(
            raw.span(),
            key.to_owned(),
            format!("{text:?} is neither \"dhcp\" nor an IP address (write it without /prefix: the VLAN's subnet gives it)"),
        )
    })?;
    if !vlan.subnet.contains(ip) {
        return Err(ctx.bad(
            raw.span(),
            key.to_owned(),
            format!(
                "{ip} is outside VLAN {} ({}): pick an address in {} or change the VLAN",
                vlan.name, vlan.subnet, vlan.subnet
            ),
        ));
    }
    if vlan.subnet.is_reserved(ip) {
        return Err(ctx.bad(
            raw.span(),
            key.to_owned(),
            format!(
                "{ip} is the network or broadcast address of {}: pick a host address",
                vlan.subnet
            ),
        ));
    }
    Ok(Address::Static(ip))
}

/// The cluster section.
fn validate_cluster(v: &Validator<'_>, rc: &RawCluster) -> Result<Cluster, TopologyError> {
    let ctx = v.ctx;
    let server = rc.server.get_ref().trim_end_matches('/').to_owned();
    let host_part = server.strip_prefix("https://").unwrap_or("");
    if host_part.is_empty() || host_part.contains(['/', ' ']) {
        return Err(ctx.bad(
            rc.server.span(),
            "cluster.server".into(),
            format!(
                "{server:?} is not an https:// URL of the k3s server (e.g. https://10.10.10.1:6443); k3s agents only join over https"
            ),
        ));
    }
    let mut k3s = K3sPin {
        version: None,
        sha256: None,
        url: None,
        airgap: None,
    };
    if let Some(rk) = &rc.k3s {
        k3s.version = rk.version.clone();
        if let Some(sha) = &rk.sha256 {
            let s = sha.get_ref().to_ascii_lowercase();
            if !is_sha256_hex(&s) {
                return Err(ctx.bad(
                    sha.span(),
                    "cluster.k3s.sha256".into(),
                    "is not 64 hex digits: copy the k3s-arm64 line of the release's sha256sum-arm64.txt".into(),
                ));
            }
            k3s.sha256 = Some(s);
        }
        if let Some(url) = &rk.url {
            if !(url.get_ref().starts_with("https://") || url.get_ref().starts_with("http://")) {
                return Err(ctx.bad(
                    url.span(),
                    "cluster.k3s.url".into(),
                    format!("{:?} is not an http(s) URL", url.get_ref()),
                ));
            }
            k3s.url = Some(url.get_ref().clone());
        }
        if let Some(a) = &rk.airgap {
            let sha = a.sha256.get_ref().to_ascii_lowercase();
            if !is_sha256_hex(&sha) {
                return Err(ctx.bad(
                    a.sha256.span(),
                    "cluster.k3s.airgap.sha256".into(),
                    "is not 64 hex digits: copy the archive's line of the release's sha256sum-arm64.txt".into(),
                ));
            }
            let url = a.url.get_ref();
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
                return Err(ctx.bad(
                    a.url.span(),
                    "cluster.k3s.airgap.url".into(),
                    format!("{url:?} is not an http(s) URL of a file"),
                ));
            }
            k3s.airgap = Some(Pinned {
                url: url.clone(),
                sha256: sha,
            });
        }
    }
    let mirror = match &rc.mirror {
        Some(m) if !(m.get_ref().starts_with("http://") || m.get_ref().starts_with("https://")) => {
            return Err(ctx.bad(
                m.span(),
                "cluster.mirror".into(),
                format!("{:?} is not an http(s) URL", m.get_ref()),
            ));
        }
        Some(m) => Some(m.get_ref().trim_end_matches('/').to_owned()),
        None => None,
    };
    let wifi_country = match &rc.wifi_country {
        Some(c) => {
            let v = c.get_ref();
            if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ctx.bad(
                    c.span(),
                    "cluster.wifi_country".into(),
                    format!("{v:?} is not a two-letter ISO 3166 code such as FR"),
                ));
            }
            v.clone()
        }
        None => "US".into(),
    };
    let token = match &rc.token {
        Some(t) => ctx.secret(t, "cluster.token")?,
        None => SecretSource::Env("K3S_TOKEN".into()),
    };

    let phone_vlan = match &rc.phone_vlan {
        Some(pv) => v.vlan(pv, "cluster.phone_vlan".into())?.name,
        None => v.vlans.first().map(|v| v.name.clone()).unwrap_or_default(),
    };
    let cidr = |raw: &Option<Spanned<String>>, key: &str, default: &str| match raw {
        Some(c) if crate::node_config::is_ipv4_cidr(c.get_ref()) => Ok(c.get_ref().clone()),
        Some(c) => Err(ctx.bad(
            c.span(),
            key.into(),
            format!(
                "{:?} is not an IPv4 network such as {default}: give the server's value",
                c.get_ref()
            ),
        )),
        None => Ok(default.to_owned()),
    };
    let pod_cidr = cidr(
        &rc.pod_cidr,
        "cluster.pod_cidr",
        crate::node_config::DEFAULT_POD_CIDR,
    )?;
    let service_cidr = cidr(
        &rc.service_cidr,
        "cluster.service_cidr",
        crate::node_config::DEFAULT_SERVICE_CIDR,
    )?;
    let args = validate_args(ctx, &rc.kubelet_args, &rc.agent_args, &|k| {
        format!("cluster.{k}")
    })?;
    Ok(Cluster {
        name: rc.name.clone().unwrap_or_else(|| "armfleet".into()),
        server,
        k3s,
        mirror,
        token,
        search: rc.search.clone(),
        wifi_country,
        phone_vlan,
        pod_cidr,
        service_cidr,
        args,
    })
}

/// The VLANs: unique names, ids and non-overlapping subnets; gateways inside their subnet.
fn validate_vlans(ctx: &Ctx<'_>, raw: &[RawVlan]) -> Result<Vec<Vlan>, TopologyError> {
    let mut vlans: Vec<Vlan> = Vec::new();
    for (i, rv) in raw.iter().enumerate() {
        let key = |k: &str| format!("vlan[{i}].{k}");
        let name = rv.name.get_ref().clone();
        if let Some(other) = vlans.iter().find(|v| v.name == name) {
            return Err(ctx.bad(
                rv.name.span(),
                key("name"),
                format!("VLAN {:?} is defined twice: rename one", other.name),
            ));
        }
        let id = *rv.id.get_ref();
        if !(1..=4094).contains(&id) {
            return Err(ctx.bad(rv.id.span(), key("id"), format!("{id} is outside 1-4094")));
        }
        if let Some(other) = vlans.iter().find(|v| v.id == id) {
            return Err(ctx.bad(
                rv.id.span(),
                key("id"),
                format!("id {id} is already VLAN {}", other.name),
            ));
        }
        let subnet: Subnet = rv
            .subnet
            .get_ref()
            .parse()
            .map_err(|m| ctx.bad(rv.subnet.span(), key("subnet"), m))?;
        if let Some(other) = vlans
            .iter()
            .find(|v| v.subnet.contains(subnet.addr) || subnet.contains(v.subnet.addr))
        {
            return Err(ctx.bad(
                rv.subnet.span(),
                key("subnet"),
                format!("{subnet} overlaps VLAN {} ({})", other.name, other.subnet),
            ));
        }
        let gateway = match &rv.gateway {
            Some(g) => {
                let ip: IpAddr = g.get_ref().parse().map_err(|_| {
                    ctx.bad(
                        g.span(),
                        key("gateway"),
                        format!("{:?} is not an IP address", g.get_ref()),
                    )
                })?;
                if !subnet.contains(ip) {
                    return Err(ctx.bad(
                        g.span(),
                        key("gateway"),
                        format!("{ip} is outside the VLAN's subnet {subnet}"),
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let mut dns = Vec::new();
        for (j, d) in rv.dns.iter().enumerate() {
            dns.push(d.get_ref().parse().map_err(|_| {
                ctx.bad(
                    d.span(),
                    format!("vlan[{i}].dns[{j}]"),
                    format!("{:?} is not an IP address", d.get_ref()),
                )
            })?);
        }
        vlans.push(Vlan {
            name,
            id,
            subnet,
            gateway,
            dns,
        });
    }
    Ok(vlans)
}

/// What the host and phone validators share: the VLANs, and the names and addresses taken so
/// far (unique across hosts and phones).
struct Validator<'a> {
    ctx: &'a Ctx<'a>,
    vlans: &'a [Vlan],
    /// Name → the line it was first used on.
    names: HashMap<String, usize>,
    /// Static address → its owner.
    addresses: HashMap<IpAddr, String>,
}

impl Validator<'_> {
    /// The VLAN a key names, or an error listing the VLANs.
    fn vlan(&self, raw: &Spanned<String>, key: String) -> Result<Vlan, TopologyError> {
        self.vlans
            .iter()
            .find(|v| v.name == *raw.get_ref())
            .cloned()
            .ok_or_else(|| {
                self.ctx.bad(
                    raw.span(),
                    key,
                    format!(
                        "no VLAN named {:?}; the VLANs are: {}",
                        raw.get_ref(),
                        self.vlans
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// A node name: a DNS label, not used before.
    fn name(&mut self, raw: &Spanned<String>, key: String) -> Result<String, TopologyError> {
        let name = raw.get_ref().clone();
        if !is_dns_label(&name) {
            return Err(self.ctx.bad(
                raw.span(),
                key,
                format!("{name:?} is not a valid node name: use lowercase letters, digits and '-', at most 63 characters"),
            ));
        }
        if let Some(line) = self.names.get(&name) {
            return Err(self.ctx.bad(
                raw.span(),
                key,
                format!("the name {name:?} is already used on line {line}: names must be unique"),
            ));
        }
        self.names
            .insert(name.clone(), self.ctx.line(raw.span().start));
        Ok(name)
    }

    /// An address in `vlan`, not used before when static.
    fn address(
        &mut self,
        raw: &Spanned<String>,
        key: String,
        owner: &str,
        vlan: &Vlan,
    ) -> Result<Address, TopologyError> {
        let a = parse_address(self.ctx, raw, &key, vlan)?;
        if let Address::Static(ip) = a {
            if let Some(other) = self.addresses.get(&ip) {
                return Err(self.ctx.bad(
                    raw.span(),
                    key,
                    format!("{ip} is already the address of {other}: addresses must be unique"),
                ));
            }
            self.addresses.insert(ip, owner.to_owned());
        }
        Ok(a)
    }

    /// The Pis: one server at most, a known board, Wi-Fi hosts with an SSID and no tags.
    fn hosts(&mut self, raw: &[RawHost]) -> Result<Vec<Host>, TopologyError> {
        let ctx = self.ctx;
        let mut hosts = Vec::new();
        let mut server_seen: Option<String> = None;
        for (i, rh) in raw.iter().enumerate() {
            let key = |k: &str| format!("host[{i}].{k}");
            let name = self.name(&rh.name, key("name"))?;
            let board = rh.board.get_ref().clone();
            if let Err(e) = crate::board::check_known(&board) {
                return Err(ctx.bad(rh.board.span(), key("board"), e.to_string()));
            }
            if rh.role == Role::Server {
                if let Some(first) = &server_seen {
                    return Err(ctx.bad(
                        rh.name.span(),
                        key("role"),
                        format!("{first} is already the server: one k3s server per topology"),
                    ));
                }
                server_seen = Some(name.clone());
            }
            let vlan = self.vlan(&rh.vlan, key("vlan"))?;
            let address = self.address(&rh.address, key("address"), &name, &vlan)?;
            let link = *rh.link.get_ref();
            let wifi = match (&rh.wifi, link) {
                (Some(w), _) => {
                    let ssid = match &w.get_ref().ssid {
                        Some(s) => match ssid_problem(s.get_ref()) {
                            None => s.get_ref().clone(),
                            Some(why) => {
                                return Err(ctx.bad(s.span(), key("wifi.ssid"), why.into()));
                            }
                        },
                        None => {
                            return Err(ctx.bad(
                            w.span(),
                            key("wifi.ssid"),
                            format!("host {name} is on Wi-Fi but has no SSID: add ssid = \"...\" to its wifi table"),
                        ));
                        }
                    };
                    let passphrase = match &w.get_ref().passphrase {
                        Some(p) => Some(ctx.secret(p, &key("wifi.passphrase"))?),
                        None => None,
                    };
                    Some(Wifi { ssid, passphrase })
                }
                (None, Link::Wifi) => {
                    return Err(ctx.bad(
                    rh.link.span(),
                    key("wifi.ssid"),
                    format!("host {name} is on Wi-Fi but has no SSID: add wifi = {{ ssid = \"...\", passphrase = {{ env = \"...\" }} }}"),
                ));
                }
                (None, Link::Ethernet) => None,
            };
            if link == Link::Wifi && rh.tagged {
                return Err(ctx.bad(
                    rh.link.span(),
                    key("tagged"),
                    "a Wi-Fi host cannot carry tagged VLANs: the SSID maps to the VLAN".into(),
                ));
            }
            let token = match &rh.token {
                Some(t) if rh.role == Role::Server => {
                    return Err(ctx.bad(
                        t.span(),
                        key("token"),
                        "the server runs with cluster.token; per-node tokens are for agents (bootstrap tokens, which the server's image registers)".into(),
                    ));
                }
                Some(t) => Some(ctx.secret(t, &key("token"))?),
                None => None,
            };
            hosts.push(Host {
                token,
                name,
                board,
                role: rh.role,
                link,
                vlan: vlan.name.clone(),
                tagged: rh.tagged,
                address,
                ssh_keys: rh.ssh_keys.clone(),
                wifi,
                labels: rh.labels.clone(),
                taints: rh.taints.clone(),
                args: validate_args(ctx, &rh.kubelet_args, &rh.agent_args, &key)?,
            });
        }

        Ok(hosts)
    }

    /// The phones: unique serials, a VLAN (the cluster's phone VLAN by default), DHCP unless
    /// an address is given.
    fn phones(&mut self, raw: &[RawPhone], phone_vlan: &str) -> Result<Vec<Phone>, TopologyError> {
        let ctx = self.ctx;
        let mut phones: Vec<Phone> = Vec::new();
        for (i, rp) in raw.iter().enumerate() {
            let key = |k: &str| format!("phone[{i}].{k}");
            let name = self.name(&rp.name, key("name"))?;
            if let Some(serial) = &rp.serial
                && let Some(other) = phones
                    .iter()
                    .find(|p| p.serial.as_deref() == Some(serial.get_ref()))
            {
                return Err(ctx.bad(
                    serial.span(),
                    key("serial"),
                    format!(
                        "serial {:?} is already phone {}",
                        serial.get_ref(),
                        other.name
                    ),
                ));
            }
            let vlan = match &rp.vlan {
                Some(v) => self.vlan(v, key("vlan"))?,
                None => self
                    .vlans
                    .iter()
                    .find(|v| v.name == phone_vlan)
                    .cloned()
                    .ok_or_else(|| {
                        ctx.bad(
                            rp.name.span(),
                            key("vlan"),
                            "no VLAN for this phone: add vlan = \"...\"".into(),
                        )
                    })?,
            };
            let address = match &rp.address {
                Some(a) => self.address(a, key("address"), &name, &vlan)?,
                None => Address::Dhcp,
            };
            let token = match &rp.token {
                Some(t) => Some(ctx.secret(t, &key("token"))?),
                None => None,
            };
            phones.push(Phone {
                token,
                name,
                serial: rp.serial.as_ref().map(|s| s.get_ref().clone()),
                vlan: vlan.name.clone(),
                address,
                iface: rp.iface.clone().unwrap_or_else(|| "wlan0".into()),
                labels: rp.labels.clone(),
                taints: rp.taints.clone(),
                power: rp.power.clone().unwrap_or_default(),
                data_image_mib: rp.data_image_mib.unwrap_or(layout::phone::DATA_IMAGE_MIB),
                args: validate_args(ctx, &rp.kubelet_args, &rp.agent_args, &key)?,
            });
        }

        Ok(phones)
    }
}

/// Under the router's policy, every node can reach the k3s API (else its agent never joins) and
/// flannel's VXLAN port of the nodes on other VLANs (else their pods cannot talk): a node put on
/// a VLAN the rules keep away from the cluster is refused here, at its `vlan` key, rather than
/// found later as an agent that never joins.
fn nodes_reach_the_cluster(
    ctx: &Ctx<'_>,
    raw: &RawTopology,
    topo: &Topology,
    r: &Router,
) -> Result<(), TopologyError> {
    use router::{FLANNEL_VXLAN_PORT, Proto};
    let Some((api, api_port)) = topo.api_endpoint() else {
        // A server named by a name the topology cannot place: nothing to judge it by.
        return Ok(());
    };
    // (name, VLAN, address, where its VLAN is set, key): every node but the router, which is on
    // every VLAN.
    let mut nodes = Vec::new();
    for (i, rh) in raw.host.iter().enumerate() {
        if let Some(h) = topo.host(rh.name.get_ref())
            && h.name != r.host
        {
            let at = (rh.vlan.span(), format!("host[{i}].vlan"));
            nodes.push((h.name.as_str(), h.vlan.as_str(), h.address, at));
        }
    }
    for (i, rp) in raw.phone.iter().enumerate() {
        if let Some(p) = topo.phone(rp.name.get_ref()) {
            let span = rp.vlan.as_ref().map_or(rp.name.span(), |v| v.span());
            nodes.push((
                p.name.as_str(),
                p.vlan.as_str(),
                p.address,
                (span, format!("phone[{i}].vlan")),
            ));
        }
    }
    let api_vlan = topo
        .vlans
        .iter()
        .find(|v| v.subnet.contains(api))
        .map_or("the API's VLAN".to_owned(), |v| format!("VLAN {}", v.name));
    for (name, vlan, address, (span, key)) in &nodes {
        if *address == Address::Static(api) {
            continue;
        }
        if !r.allows(topo, vlan, api, Proto::Tcp, api_port) {
            return Err(ctx.bad(
                span.clone(),
                key.clone(),
                format!(
                    "{name} is on VLAN {vlan}, and no [[router.allow]] lets {vlan} reach the k3s API ({api} tcp/{api_port}): its agent could never join. Allow it (from = \"{vlan}\", to = \"{}\", ports = [\"tcp/{api_port}\"]) or put {name} on {api_vlan}",
                    r.host
                ),
            ));
        }
    }
    if let Some(pv) = &raw.cluster.phone_vlan {
        let vlan = &topo.cluster.phone_vlan;
        if !r.allows(topo, vlan, api, Proto::Tcp, api_port) {
            return Err(ctx.bad(
                pv.span(),
                "cluster.phone_vlan".into(),
                format!(
                    "phones enrolled without an entry join VLAN {vlan}, and no [[router.allow]] lets {vlan} reach the k3s API ({api} tcp/{api_port}): their agents could never join. Allow it or choose another VLAN"
                ),
            ));
        }
    }
    // Pods on nodes of different VLANs meet through the router: flannel's VXLAN must pass both
    // ways. A node on DHCP is represented by the first address of its VLAN's pool.
    for (a, a_vlan, _, (span, key)) in &nodes {
        for (b, b_vlan, b_address, _) in &nodes {
            if a_vlan == b_vlan {
                continue;
            }
            let dest = match b_address {
                Address::Static(ip) => *ip,
                Address::Dhcp => match r.dhcp.get(*b_vlan).copied().flatten() {
                    Some((first, _)) => first,
                    None => continue,
                },
            };
            if !r.allows(topo, a_vlan, dest, Proto::Udp, FLANNEL_VXLAN_PORT) {
                return Err(ctx.bad(
                    span.clone(),
                    key.clone(),
                    format!(
                        "{a} (VLAN {a_vlan}) and {b} (VLAN {b_vlan}) are both nodes, but no [[router.allow]] lets {a_vlan} reach {b_vlan} on udp/{FLANNEL_VXLAN_PORT} (flannel's VXLAN): their pods could not reach each other. Allow udp/{FLANNEL_VXLAN_PORT} between the two VLANs both ways, or put the nodes on one VLAN"
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Topology {
    /// The k3s API's address and port, from `cluster.server`: an IP address, or the name of a
    /// host with a fixed address (its first label; the search domain may follow). `None` when
    /// the name is none of the topology's.
    pub fn api_endpoint(&self) -> Option<(IpAddr, u16)> {
        let url = crate::url::split(&self.cluster.server)?;
        let port = match url.port {
            Some(p) => p.parse().ok()?,
            None => 443,
        };
        let host = url.host;
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let short = host.split('.').next()?;
                match self.host(short).map(|h| h.address) {
                    Some(Address::Static(ip)) => ip,
                    _ => return None,
                }
            }
        };
        Some((ip, port))
    }

    /// The embedded default lab.
    pub fn embedded_default() -> Topology {
        Topology::from_toml_str(
            DEFAULT_TOPOLOGY,
            "<embedded default topology>",
            Path::new("."),
        )
        .expect("the embedded default topology validates")
    }

    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Topology::from_toml_str(&text, &path.display().to_string(), base)
    }

    /// The topology the tools use: the `--topology` file, else `$ARMFLEET_TOPOLOGY`, else the
    /// embedded default.
    pub fn resolve(cli: Option<&Path>) -> Result<Topology, TopologyError> {
        if let Some(p) = cli {
            return Topology::load(p);
        }
        match std::env::var_os(TOPOLOGY_ENV) {
            Some(p) if !p.is_empty() => Topology::load(Path::new(&p)),
            _ => Ok(Topology::embedded_default()),
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors, `base_dir` anchors relative
    /// paths. Each section has its own validator; names and addresses are checked for
    /// uniqueness across hosts and phones as they come.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        base_dir: &Path,
    ) -> Result<Topology, TopologyError> {
        let ctx = Ctx { origin, text };
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::Parse {
            origin: origin.to_owned(),
            line: e.span().map(|s| ctx.line(s.start)).unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        let vlans = validate_vlans(&ctx, &raw.vlan)?;
        let mut v = Validator {
            ctx: &ctx,
            vlans: &vlans,
            names: HashMap::new(),
            addresses: HashMap::new(),
        };
        let cluster = validate_cluster(&v, &raw.cluster)?;
        let hosts = v.hosts(&raw.host)?;
        let phones = v.phones(&raw.phone, &cluster.phone_vlan)?;
        let mut topology = Topology {
            origin: origin.to_owned(),
            base_dir: base_dir.to_owned(),
            cluster,
            vlans,
            hosts,
            phones,
            router: None,
        };
        if let Some(raw_router) = &raw.router {
            let r = router::validate(&ctx, raw_router, &topology)?;
            nodes_reach_the_cluster(&ctx, &raw, &topology, &r)?;
            topology.router = Some(r);
        }
        // Every entry must make a valid node.toml; say so now rather than at enroll time.
        for h in &topology.hosts {
            NodeConfig::for_host(&topology, &h.name)?;
        }
        for p in &topology.phones {
            NodeConfig::for_phone(&topology, &p.name)?;
        }
        Ok(topology)
    }

    /// The Pis.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The Pi named `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The phones.
    pub fn phones(&self) -> &[Phone] {
        &self.phones
    }

    /// The phone named `name`.
    pub fn phone(&self, name: &str) -> Option<&Phone> {
        self.phones.iter().find(|p| p.name == name)
    }

    /// The phone with ADB serial `serial`.
    pub fn phone_by_serial(&self, serial: &str) -> Option<&Phone> {
        self.phones
            .iter()
            .find(|p| p.serial.as_deref() == Some(serial))
    }

    /// The first agent host of a board (`rpi4`), for `imagegen rpi4` without `--host`.
    pub fn first_host_of_board(&self, board: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|h| h.board == board && h.role == Role::Agent)
    }

    /// The VLAN named `name`.
    pub fn vlan(&self, name: &str) -> Option<&Vlan> {
        self.vlans.iter().find(|v| v.name == name)
    }

    /// Where the join token of the host or phone `name` comes from: its own `token` (a bootstrap
    /// token made for it alone, so it can be revoked alone), else `cluster.token`.
    pub fn token_source(&self, name: &str) -> &SecretSource {
        self.host(name)
            .and_then(|h| h.token.as_ref())
            .or_else(|| self.phone(name).and_then(|p| p.token.as_ref()))
            .unwrap_or(&self.cluster.token)
    }

    /// The pinned k3s on the lab's mirror (its upstream file name under `cluster.mirror`).
    pub fn k3s_mirror_url(&self) -> Option<String> {
        let upstream = self.cluster.k3s.url.as_deref()?;
        let mirror = self.cluster.mirror.as_deref()?;
        let file = upstream.rsplit('/').next().unwrap_or("k3s-arm64");
        Some(format!("{mirror}/{file}"))
    }

    /// The pinned airgap images archive as the lab's mirror serves it (the router's image puts
    /// it there under the upstream file name).
    pub fn airgap_mirror(&self) -> Option<crate::node_config::Airgap> {
        let pin = self.cluster.k3s.airgap.as_ref()?;
        let mirror = self.cluster.mirror.as_deref()?;
        Some(crate::node_config::Airgap {
            url: format!("{mirror}/{}", airgap_file_name(&pin.url)),
            sha256: pin.sha256.clone(),
        })
    }

    /// Where the pinned k3s is fetched from, in order: the lab's mirror, then upstream.
    pub fn k3s_fetch_urls(&self) -> Vec<String> {
        self.k3s_mirror_url()
            .into_iter()
            .chain(self.cluster.k3s.url.clone())
            .collect()
    }

    /// The `[k3s]` section of a worker: the pin, the mirror then upstream, and the cluster's
    /// arguments followed by the entry's own.
    fn k3s_section(&self, own: &AgentArgs) -> K3s {
        let mut kubelet_args = self.cluster.args.kubelet.clone();
        kubelet_args.extend(own.kubelet.iter().cloned());
        let mut extra_args = self.cluster.args.agent.clone();
        extra_args.extend(own.agent.iter().cloned());
        K3s {
            version: self.cluster.k3s.version.clone(),
            sha256: self.cluster.k3s.sha256.clone(),
            url: self.cluster.k3s.url.clone(),
            mirror: self.k3s_mirror_url(),
            airgap: self.airgap_mirror(),
            kubelet_args,
            extra_args,
            ..K3s::default()
        }
    }

    /// The network settings every worker shares (cluster networks, name resolution).
    fn network_section(&self) -> Network {
        Network {
            pod_cidr: self.cluster.pod_cidr.clone(),
            service_cidr: self.cluster.service_cidr.clone(),
            search: self.cluster.search.clone(),
            ..Network::default()
        }
    }

    fn nameservers(&self, vlan: &Vlan) -> Vec<IpAddr> {
        if vlan.dns.is_empty() {
            vlan.gateway.into_iter().collect()
        } else {
            vlan.dns.clone()
        }
    }
}

/// The name the airgap archive has in the router's mirror: the upstream URL's last segment.
pub fn airgap_file_name(url: &str) -> String {
    match url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .replace("%2B", "+")
    {
        f if f.is_empty() || f == "." || f == ".." => "k3s-airgap-images-arm64.tar.zst".to_owned(),
        f => f,
    }
}

fn vlan_label(v: &Vlan) -> String {
    v.name.to_ascii_lowercase()
}

impl NodeConfig {
    /// The `node.toml` of the Pi `name`: an agent, or the server (`k3s server` under the same
    /// node-runtime).
    pub fn for_host(topology: &Topology, name: &str) -> Result<NodeConfig, TopologyError> {
        let host = topology
            .host(name)
            .ok_or_else(|| TopologyError::UnknownHost {
                origin: topology.origin.clone(),
                name: name.to_owned(),
                known: topology
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let vlan = topology.vlan(&host.vlan).expect("validated VLAN");
        let mut labels = BTreeMap::from([
            ("armfleet.io/kind".to_string(), "pi".to_string()),
            ("armfleet.io/board".to_string(), host.board.clone()),
            ("armfleet.io/vlan".to_string(), vlan_label(vlan)),
            (
                "armfleet.io/link".to_string(),
                match host.link {
                    Link::Ethernet => "ethernet",
                    Link::Wifi => "wifi",
                }
                .to_string(),
            ),
        ]);
        labels.extend(host.labels.clone());
        let config = NodeConfig {
            node: Node {
                name: host.name.clone(),
                kind: NodeKind::Pi,
            },
            server: Server {
                url: topology.cluster.server.clone(),
                token_file: layout::worker::TOKEN_FILE.into(),
                token_drop: Some(layout::pi::TOKEN_DROP.into()),
            },
            k3s: K3s {
                role: match host.role {
                    Role::Server => K3sRole::Server,
                    Role::Agent => K3sRole::Agent,
                },
                // The server's image has the archive in its own images dir (from its mirror).
                airgap: match host.role {
                    Role::Server => None,
                    Role::Agent => topology.airgap_mirror(),
                },
                ..topology.k3s_section(&host.args)
            },
            network: Network {
                iface: Some(host.iface(vlan.id)),
                node_ip: match host.address {
                    Address::Static(ip) => Some(ip),
                    Address::Dhcp => None,
                },
                // systemd-resolved is not in the rootfs; node-runtime writes these for k3s.
                nameservers: topology.nameservers(vlan),
                ..topology.network_section()
            },
            labels,
            taints: host.taints.clone(),
            chroot: None,
            power: None,
            supervise: Supervise::default(),
            logs: Logs::default(),
            status_file: layout::worker::STATUS_FILE.into(),
        };
        config.validate(&format!("{} (host {name})", topology.origin))?;
        Ok(config)
    }

    /// The `node.toml` of the phone `name` of the topology.
    pub fn for_phone(topology: &Topology, name: &str) -> Result<NodeConfig, TopologyError> {
        let phone = topology
            .phone(name)
            .ok_or_else(|| TopologyError::UnknownPhone {
                origin: topology.origin.clone(),
                name: name.to_owned(),
                known: if topology.phones.is_empty() {
                    "none".into()
                } else {
                    topology
                        .phones
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        phone_config(topology, phone)
    }

    /// The `node.toml` for a phone the topology has no entry for, named on the command line
    /// (`phonectl enroll --name phone-7`): the cluster's defaults (phone VLAN, DHCP, `wlan0`).
    /// A name that *is* in the topology gets its entry.
    pub fn for_new_phone(topology: &Topology, name: &str) -> Result<NodeConfig, TopologyError> {
        if topology.phone(name).is_some() {
            return NodeConfig::for_phone(topology, name);
        }
        if !is_dns_label(name) {
            return Err(TopologyError::BadName {
                name: name.to_owned(),
            });
        }
        if topology.host(name).is_some() {
            return Err(TopologyError::BadName {
                name: format!("{name} (already a host in {})", topology.origin),
            });
        }
        let phone = Phone {
            name: name.to_owned(),
            serial: None,
            vlan: topology.cluster.phone_vlan.clone(),
            address: Address::Dhcp,
            iface: "wlan0".into(),
            token: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            power: Power::default(),
            data_image_mib: layout::phone::DATA_IMAGE_MIB,
            args: AgentArgs::default(),
        };
        phone_config(topology, &phone)
    }
}

fn phone_config(topology: &Topology, phone: &Phone) -> Result<NodeConfig, TopologyError> {
    let vlan = topology.vlan(&phone.vlan);
    let mut labels = BTreeMap::from([("armfleet.io/kind".to_string(), "phone".to_string())]);
    if let Some(v) = vlan {
        labels.insert("armfleet.io/vlan".into(), vlan_label(v));
    }
    labels.extend(phone.labels.clone());
    let mut taints = vec![PHONE_TAINT.to_string()];
    taints.extend(phone.taints.iter().filter(|t| *t != PHONE_TAINT).cloned());
    let config = NodeConfig {
        node: Node {
            name: phone.name.clone(),
            kind: NodeKind::Phone,
        },
        server: Server {
            url: topology.cluster.server.clone(),
            // Inside the chroot: /data/armfleet/rootfs/etc/armfleet/token on the phone.
            token_file: layout::worker::TOKEN_FILE.into(),
            token_drop: None,
        },
        k3s: K3s {
            data_image: Some(DataImage {
                path: layout::phone::DATA_IMAGE.into(),
                size_mib: phone.data_image_mib,
            }),
            ..topology.k3s_section(&phone.args)
        },
        network: Network {
            iface: Some(phone.iface.clone()),
            node_ip: match phone.address {
                Address::Static(ip) => Some(ip),
                Address::Dhcp => None,
            },
            // Android has no resolv.conf for the chroot: always give name servers.
            nameservers: vlan.map(|v| topology.nameservers(v)).unwrap_or_default(),
            // Android routes by policy rules: the agent's are kept beside netd's.
            policy_routing: true,
            ..topology.network_section()
        },
        labels,
        taints,
        chroot: Some(Chroot {
            root: layout::phone::ROOTFS.into(),
            hostname: Some(phone.name.clone()),
        }),
        power: Some(phone.power.clone()),
        supervise: Supervise::default(),
        logs: Logs::default(),
        status_file: layout::worker::STATUS_FILE.into(),
    };
    config.validate(&format!("{} (phone {})", topology.origin, phone.name))?;
    Ok(config)
}

/// What is wrong with a Wi-Fi SSID, if anything. It goes between double quotes in
/// `wpa_supplicant.conf`, so a quote or a line break would end it and let the rest of the name
/// become configuration lines.
pub fn ssid_problem(ssid: &str) -> Option<&'static str> {
    if ssid.is_empty() || ssid.len() > 32 {
        Some("a Wi-Fi SSID is 1 to 32 bytes")
    } else if ssid.chars().any(|c| c == '"' || c.is_control()) {
        Some(
            "a Wi-Fi SSID must not contain a double quote, a line break or other control characters",
        )
    } else {
        None
    }
}

/// What is wrong with a WPA passphrase, if anything: 8 to 63 characters or a 64-hex PSK,
/// without the quote or line break that would break out of `wpa_supplicant.conf`'s quoting.
pub fn passphrase_problem(p: &str) -> Option<&'static str> {
    let hex64 = p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex64 && !(8..=63).contains(&p.len()) {
        Some("a Wi-Fi passphrase is 8 to 63 characters (or a 64-hex PSK)")
    } else if p.chars().any(|c| c == '"' || c.is_control()) {
        Some(
            "a Wi-Fi passphrase must not contain a double quote, a line break or other control characters",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_contain_and_reserve_what_they_should() {
        let s: Subnet = "10.10.10.0/24".parse().unwrap();
        assert!(s.contains("10.10.10.77".parse().unwrap()));
        assert!(!s.contains("10.10.11.1".parse().unwrap()));
        assert!(!s.contains("fd00::1".parse().unwrap()));
        assert!(s.is_reserved("10.10.10.0".parse().unwrap()));
        assert!(s.is_reserved("10.10.10.255".parse().unwrap()));
        assert!(!s.is_reserved("10.10.10.1".parse().unwrap()));
        let v6: Subnet = "fd00:10::/64".parse().unwrap();
        assert!(v6.contains("fd00:10::12".parse().unwrap()));
        assert!(!v6.contains("fd00:11::12".parse().unwrap()));
        assert!(
            "10.10.10.0"
                .parse::<Subnet>()
                .unwrap_err()
                .contains("prefix")
        );
        assert!("10.10.10.0/33".parse::<Subnet>().is_err());
        assert_eq!(s.to_string(), "10.10.10.0/24");
    }

    #[test]
    fn sops_keys_are_checked_where_they_are_written() {
        let lab = "token = { env = \"K3S_TOKEN\" }";
        let psk = "passphrase = { env = \"ARMFLEET_WIFI_INFRA_PSK\" }";
        assert!(DEFAULT_TOPOLOGY.contains(lab) && DEFAULT_TOPOLOGY.contains(psk));
        let with = |token: &str, passphrase: &str| {
            DEFAULT_TOPOLOGY
                .replace(lab, &format!("token = {token}"))
                .replace(psk, &format!("passphrase = {passphrase}"))
        };
        let nested =
            r#"{ sops = { path = "secrets/lab.sops.yaml", key = '["lab"]["k3s_token"]' } }"#;
        let plain = r#"{ sops = { path = "secrets/lab.sops.yaml", key = "wifi_psk" } }"#;
        let t = Topology::from_toml_str(&with(nested, plain), "lab.toml", Path::new(".")).unwrap();
        assert_eq!(
            t.cluster.token,
            SecretSource::Sops {
                path: "secrets/lab.sops.yaml".into(),
                key: Some(r#"["lab"]["k3s_token"]"#.into()),
            }
        );
        let wifi = t.host("rpi3a-ctl").unwrap().wifi.clone().unwrap();
        assert_eq!(
            wifi.passphrase,
            Some(SecretSource::Sops {
                path: "secrets/lab.sops.yaml".into(),
                key: Some("wifi_psk".into()),
            })
        );

        let typo = r#"{ sops = { path = "secrets/lab.sops.yaml", key = '["lab"][k3s_token]' } }"#;
        let text = with(typo, plain);
        let line = text
            .lines()
            .position(|l| l.contains("[k3s_token]"))
            .unwrap()
            + 1;
        let err = Topology::from_toml_str(&text, "lab.toml", Path::new(".")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("lab.toml:{line}: key `cluster.token.sops.key`: ")),
            "{msg}"
        );
        assert!(
            msg.contains(r#"["lab"][k3s_token]"#) && msg.contains("quoted name"),
            "{msg}"
        );

        let text = with(plain, r#"{ sops = { path = "s.yaml", key = "" } }"#);
        let line = text.lines().position(|l| l.contains("key = \"\"")).unwrap() + 1;
        let msg = Topology::from_toml_str(&text, "lab.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!(
                "lab.toml:{line}: key `host[2].wifi.passphrase.sops.key`: the key is empty"
            )),
            "{msg}"
        );
    }

    #[test]
    fn the_mirror_comes_first_and_upstream_stays_the_fallback() {
        let text = DEFAULT_TOPOLOGY.replace(
            "mirror = \"http://rpi4-1.lab.home.arpa:8080\"",
            "mirror = \"http://10.10.10.1:8080/armfleet/\"",
        );
        let t = Topology::from_toml_str(&text, "t", Path::new(".")).unwrap();
        // The router serves it, on the VLAN of that gateway address, under that path.
        let m = t.router.as_ref().unwrap().mirror.as_ref().unwrap();
        assert_eq!(
            (m.vlan.as_str(), m.port, m.prefix.as_str()),
            ("INFRA", 8080, "/armfleet/")
        );
        let urls = t.k3s_fetch_urls();
        assert_eq!(urls[0], "http://10.10.10.1:8080/armfleet/k3s-arm64");
        assert!(
            urls[1].starts_with("https://github.com/k3s-io/k3s/releases/"),
            "{urls:?}"
        );
        let c = NodeConfig::for_host(&t, "rpi4-2").unwrap();
        assert_eq!(
            c.k3s.mirror.as_deref(),
            Some("http://10.10.10.1:8080/armfleet/k3s-arm64")
        );
        assert_eq!(c.k3s.url.as_deref(), Some(urls[1].as_str()));
    }

    #[test]
    fn agent_and_kubelet_args_come_from_cluster_and_entry_and_never_carry_a_token() {
        let text = DEFAULT_TOPOLOGY.replace(
            "phone_vlan = \"INFRA\"",
            "phone_vlan = \"INFRA\"\nkubelet_args = [\"max-pods=40\"]\nagent_args = [\"--selinux\"]\npod_cidr = \"10.52.0.0/16\"",
        );
        let t = Topology::from_toml_str(&text, "t", Path::new(".")).unwrap();
        let c = NodeConfig::for_host(&t, "rpi4-2").unwrap();
        assert_eq!(c.k3s.kubelet_args, ["max-pods=40"]);
        assert_eq!(c.k3s.extra_args, ["--selinux"]);
        assert_eq!(c.network.pod_cidr, "10.52.0.0/16");
        assert!(!c.network.policy_routing, "a Pi routes by its main table");
        for (bad, key) in [
            (
                "agent_args = [\"--token=K10abc::server:pw\"]",
                "cluster.agent_args",
            ),
            (
                "agent_args = [\"--server=https://x:6443\"]",
                "cluster.agent_args",
            ),
            ("kubelet_args = [\"--max-pods=3\"]", "cluster.kubelet_args"),
            ("pod_cidr = \"10.42.0.0\"", "cluster.pod_cidr"),
        ] {
            let text = DEFAULT_TOPOLOGY.replace(
                "phone_vlan = \"INFRA\"",
                &format!("phone_vlan = \"INFRA\"\n{bad}"),
            );
            let e = Topology::from_toml_str(&text, "lab.toml", Path::new("."))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("lab.toml:") && e.contains(key), "{bad}: {e}");
            assert!(!e.contains("K10abc"), "the token is not repeated: {e}");
        }
    }
}
