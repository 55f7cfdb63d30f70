//! The lab's router (`[router]` in the topology): the host that carries every VLAN tagged on its
//! Ethernet port, routes between them under a default-deny policy, hands out addresses and names
//! (dnsmasq), NATs out of its uplink and serves the artifact mirror. Here: the data, its checks,
//! and the files it turns into (systemd-networkd, dnsmasq, nftables), as pure functions so the
//! image builder only places them and tests read them without a router.

use super::{Address, Ctx, Link, Role, Subnet, Topology, TopologyError, Vlan};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use toml::Spanned;

/// Upstream resolvers dnsmasq forwards to when the topology names none (Quad9's two anycast
/// addresses: the uplink's own DNS cannot be learnt without systemd-resolved in the rootfs).
pub const DEFAULT_UPSTREAM_DNS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(149, 112, 112, 112)];

/// Interfaces of the cluster's pod network on the router itself (flannel's VXLAN device and the
/// CNI bridge): pods talk through them and must not be caught by the VLAN policy.
pub const POD_IFACES: [&str; 2] = ["cni0", "flannel.1"];

/// The router's Ethernet port, which carries every VLAN tagged.
pub const TRUNK: &str = "eth0";

/// What the router is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    /// The host that routes (its address on its own VLAN is that VLAN's gateway).
    pub host: String,
    /// Ways out, in order of preference (the first that has a default route wins by metric).
    pub uplinks: Vec<Uplink>,
    /// Where dnsmasq forwards names outside the lab.
    pub upstream_dns: Vec<IpAddr>,
    /// The DHCP pool of each VLAN, by VLAN name (`None`: no DHCP there).
    pub dhcp: BTreeMap<String, Option<(IpAddr, IpAddr)>>,
    /// The allowed flows; everything else between VLANs is dropped.
    pub allow: Vec<Rule>,
    /// The artifact mirror, when `cluster.mirror` points at the router.
    pub mirror: Option<Mirror>,
}

/// One uplink interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// `wwan0`, `usb0`, `eth1`.
    pub iface: String,
    /// What is behind it.
    pub kind: UplinkKind,
}

/// The kinds of uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkKind {
    /// A 4G USB modem whose interface (`wwan0`, `usb0`) gets its address by DHCP from the modem
    /// (HiLink/RNDIS/ECM modems, or a QMI modem already connected).
    Modem,
    /// An Ethernet WAN (a USB Ethernet adapter to the ISP box), used when the modem is absent.
    Ethernet,
}

impl UplinkKind {
    fn name(self) -> &'static str {
        match self {
            UplinkKind::Modem => "modem",
            UplinkKind::Ethernet => "ethernet",
        }
    }
}

/// Where the router serves the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The VLAN it is served on (the only one the firewall lets in).
    pub vlan: String,
    /// TCP port.
    pub port: u16,
    /// URL path prefix the files are under (`/` or `/armfleet/`).
    pub prefix: String,
}

/// A flow the policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Source VLAN.
    pub from: String,
    /// Destination.
    pub to: Target,
    /// Ports (empty: every port and protocol).
    pub ports: Vec<Port>,
    /// Why (shown by `imagegen inspect` and written as the rule's comment).
    pub why: Option<String>,
}

/// A rule's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Out of the uplink.
    Internet,
    /// The router itself (a service it runs: the k3s API, SSH).
    Router,
    /// Every address of another VLAN.
    Vlan(String),
    /// A named host or phone with a static address, or a literal address/subnet.
    Address {
        /// What the topology said (`rpi4-2`, `10.10.10.20/32`).
        label: String,
        /// The addresses it stands for.
        subnet: Subnet,
        /// The VLAN it lives on, when known.
        vlan: Option<String>,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Internet => f.write_str("internet"),
            Target::Router => f.write_str("router"),
            Target::Vlan(v) => f.write_str(v),
            Target::Address { label, .. } => f.write_str(label),
        }
    }
}

/// `tcp/6443`, `udp/8000-8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// First port.
    pub first: u16,
    /// Last port (== first for one port).
    pub last: u16,
}

/// Transport protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        if self.first == self.last {
            write!(f, "{p}/{}", self.first)
        } else {
            write!(f, "{p}/{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Port, String> {
        let (proto, ports) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a port: write it as tcp/6443 or udp/8000-8100"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(format!("{other:?} is not tcp or udp (in {s:?})")),
        };
        let num = |t: &str| {
            t.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{t:?} is not a port number 1-65535 (in {s:?})"))
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(ports)?, num(ports)?),
        };
        if first > last {
            return Err(format!("{s:?}: the range runs backwards"));
        }
        Ok(Port { proto, first, last })
    }
}

// ---- raw form ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    uplink: Vec<Spanned<RawUplink>>,
    #[serde(default)]
    upstream_dns: Vec<Spanned<String>>,
    #[serde(default)]
    dhcp: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    iface: Spanned<String>,
    kind: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    why: Option<String>,
}

/// A Linux interface name the kernel accepts (at most 15 bytes, no `/`, space or `:`).
fn is_iface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn ipv4(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(v4) => Some(u32::from(v4)),
        IpAddr::V6(_) => None,
    }
}

/// The pool a VLAN gets when the topology names none: the upper half of an IPv4 subnet (a /24
/// gives .128-.254), leaving the lower half to static addresses.
pub fn default_pool(subnet: &Subnet) -> Option<(IpAddr, IpAddr)> {
    let base = ipv4(subnet.addr)?;
    if subnet.prefix > 29 {
        return None;
    }
    let size = 1u32 << (32 - u32::from(subnet.prefix));
    let first = base + size / 2;
    let last = base + size - 2;
    Some((
        IpAddr::V4(Ipv4Addr::from(first)),
        IpAddr::V4(Ipv4Addr::from(last)),
    ))
}

/// Checks `[router]` against the rest of the topology (VLANs, hosts and phones already valid).
pub(super) fn validate(
    ctx: &Ctx<'_>,
    raw: &Spanned<RawRouter>,
    topo: &Topology,
) -> Result<Router, TopologyError> {
    let rr = raw.get_ref();
    let bad = |span: std::ops::Range<usize>, key: &str, m: String| ctx.bad(span, key.into(), m);
    let host = match &rr.host {
        Some(h) => topo.host(h.get_ref()).ok_or_else(|| {
            bad(
                h.span(),
                "router.host",
                format!(
                    "no host named {:?}; the hosts are: {}",
                    h.get_ref(),
                    topo.hosts()
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        None => topo
            .hosts()
            .iter()
            .find(|h| h.role == Role::Server)
            .ok_or_else(|| {
                bad(
                    raw.span(),
                    "router.host",
                    "no host has role = \"server\": name the router with host = \"...\"".into(),
                )
            })?,
    };
    let host_span = rr.host.as_ref().map_or(raw.span(), |h| h.span());
    if host.link != Link::Ethernet || !host.tagged {
        return Err(bad(
            host_span,
            "router.host",
            format!(
                "{} routes between the VLANs, so it needs link = \"ethernet\" and tagged = true (its port is the switch's trunk)",
                host.name
            ),
        ));
    }
    let own_vlan = topo.vlan(&host.vlan).expect("validated VLAN");
    if host.address
        != Address::Static(
            own_vlan
                .gateway
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        )
    {
        return Err(bad(
            host_span,
            "router.host",
            format!(
                "the router {}'s address must be VLAN {}'s gateway ({}): set address = \"{}\"",
                host.name,
                own_vlan.name,
                own_vlan
                    .gateway
                    .map_or("none set".to_string(), |g| g.to_string()),
                own_vlan
                    .gateway
                    .map_or("<gateway>".to_string(), |g| g.to_string()),
            ),
        ));
    }
    for v in &topo.vlans {
        if v.gateway.is_none() {
            return Err(bad(
                raw.span(),
                "router",
                format!(
                    "VLAN {} has no gateway: the router needs its address on every VLAN (add gateway = \"...\" to it)",
                    v.name
                ),
            ));
        }
    }

    let mut uplinks: Vec<Uplink> = Vec::new();
    for (i, u) in rr.uplink.iter().enumerate() {
        let u = u.get_ref();
        let iface = u.iface.get_ref().clone();
        let key = format!("router.uplink[{i}].iface");
        if !is_iface_name(&iface) {
            return Err(bad(
                u.iface.span(),
                &key,
                format!(
                    "{iface:?} is not an interface name (at most 15 letters, digits, '.', '-', '_')"
                ),
            ));
        }
        if iface == TRUNK || iface.starts_with(&format!("{TRUNK}.")) {
            return Err(bad(
                u.iface.span(),
                &key,
                format!(
                    "{iface} is the trunk to the switch: the uplink is another interface (wwan0, usb0, eth1)"
                ),
            ));
        }
        if uplinks.iter().any(|o| o.iface == iface) {
            return Err(bad(
                u.iface.span(),
                &key,
                format!("{iface} is listed twice"),
            ));
        }
        let kind = match u.kind.get_ref().as_str() {
            "modem" => UplinkKind::Modem,
            "ethernet" => UplinkKind::Ethernet,
            other => {
                return Err(bad(
                    u.kind.span(),
                    &format!("router.uplink[{i}].kind"),
                    format!(
                        "{other:?} is not an uplink kind: use \"modem\" (a 4G USB modem's interface) or \"ethernet\""
                    ),
                ));
            }
        };
        uplinks.push(Uplink { iface, kind });
    }

    let mut upstream_dns = Vec::new();
    for (i, d) in rr.upstream_dns.iter().enumerate() {
        upstream_dns.push(d.get_ref().parse::<IpAddr>().map_err(|_| {
            bad(
                d.span(),
                &format!("router.upstream_dns[{i}]"),
                format!("{:?} is not an IP address", d.get_ref()),
            )
        })?);
    }
    if upstream_dns.is_empty() {
        upstream_dns = DEFAULT_UPSTREAM_DNS
            .iter()
            .map(|a| IpAddr::V4(*a))
            .collect();
    }

    let mut dhcp = BTreeMap::new();
    for (name, text) in &rr.dhcp {
        let key = format!("router.dhcp.{name}");
        let vlan = topo.vlan(name).ok_or_else(|| {
            bad(
                text.span(),
                &key,
                format!("no VLAN named {name:?}: the keys of router.dhcp are VLAN names"),
            )
        })?;
        let pool = if text.get_ref() == "off" {
            None
        } else {
            Some(parse_pool(text.get_ref(), vlan).map_err(|m| bad(text.span(), &key, m))?)
        };
        dhcp.insert(name.clone(), pool);
    }
    for v in &topo.vlans {
        dhcp.entry(v.name.clone())
            .or_insert_with(|| default_pool(&v.subnet));
    }

    let mut allow = Vec::new();
    for (i, r) in rr.allow.iter().enumerate() {
        allow.push(rule(ctx, i, r, topo, host, &uplinks)?);
    }

    let mirror = mirror_place(topo, host, own_vlan);
    Ok(Router {
        host: host.name.clone(),
        uplinks,
        upstream_dns,
        dhcp,
        allow,
        mirror,
    })
}

fn parse_pool(text: &str, vlan: &Vlan) -> Result<(IpAddr, IpAddr), String> {
    let (a, b) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a pool: write \"FIRST-LAST\" (e.g. \"10.10.10.128-10.10.10.254\") or \"off\"")
    })?;
    let parse = |t: &str| -> Result<IpAddr, String> {
        let ip: IpAddr = t
            .trim()
            .parse()
            .map_err(|_| format!("{t:?} is not an IP address"))?;
        if !vlan.subnet.contains(ip) || vlan.subnet.is_reserved(ip) {
            return Err(format!(
                "{ip} is not a host address of VLAN {} ({})",
                vlan.name, vlan.subnet
            ));
        }
        Ok(ip)
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if ipv4(first) > ipv4(last) {
        return Err(format!("{text:?}: the pool runs backwards"));
    }
    if let Some(g) = vlan.gateway.and_then(ipv4)
        && (ipv4(first).unwrap_or(0)..=ipv4(last).unwrap_or(0)).contains(&g)
    {
        return Err(format!(
            "the pool holds the gateway {}: start it after it",
            vlan.gateway.unwrap()
        ));
    }
    Ok((first, last))
}

fn rule(
    ctx: &Ctx<'_>,
    i: usize,
    raw: &Spanned<RawRule>,
    topo: &Topology,
    router: &super::Host,
    uplinks: &[Uplink],
) -> Result<Rule, TopologyError> {
    let r = raw.get_ref();
    let key = |k: &str| format!("router.allow[{i}].{k}");
    let from = topo.vlan(r.from.get_ref()).ok_or_else(|| {
        ctx.bad(
            r.from.span(),
            key("from"),
            format!(
                "no VLAN named {:?}; rules go from a VLAN: {}",
                r.from.get_ref(),
                vlan_names(topo)
            ),
        )
    })?;
    let to_text = r.to.get_ref().as_str();
    let to = if to_text == "internet" {
        if uplinks.is_empty() {
            return Err(ctx.bad(
                r.to.span(),
                key("to"),
                "the router has no uplink: add [[router.uplink]] or drop the internet rule".into(),
            ));
        }
        Target::Internet
    } else if to_text == router.name || to_text == "router" {
        Target::Router
    } else if let Some(v) = topo.vlan(to_text) {
        if v.name == from.name {
            return Err(ctx.bad(
                r.to.span(),
                key("to"),
                format!(
                    "{} to itself is switched, not routed: the router never sees it",
                    v.name
                ),
            ));
        }
        Target::Vlan(v.name.clone())
    } else if let Some(addr) = named_address(topo, to_text) {
        let (ip, vlan) = addr.map_err(|m| ctx.bad(r.to.span(), key("to"), m))?;
        Target::Address {
            label: to_text.to_owned(),
            subnet: host_subnet(ip),
            vlan: Some(vlan),
        }
    } else if let Ok(subnet) = to_text
        .parse::<Subnet>()
        .or_else(|_| to_text.parse::<IpAddr>().map(host_subnet))
    {
        let vlan = topo
            .vlans
            .iter()
            .find(|v| v.subnet.contains(subnet.addr))
            .map(|v| v.name.clone());
        if vlan.as_deref() == Some(from.name.as_str()) {
            return Err(ctx.bad(
                r.to.span(),
                key("to"),
                format!(
                    "{to_text} is in {} itself: traffic inside a VLAN is switched, not routed",
                    from.name
                ),
            ));
        }
        Target::Address {
            label: to_text.to_owned(),
            subnet,
            vlan,
        }
    } else {
        return Err(ctx.bad(
            r.to.span(),
            key("to"),
            format!(
                "{to_text:?} is none of: \"internet\", the router {:?}, a VLAN ({}), a host or phone with a fixed address, an IP address or subnet",
                router.name,
                vlan_names(topo)
            ),
        ));
    };
    let mut ports = Vec::new();
    for (j, p) in r.ports.iter().enumerate() {
        ports.push(
            p.get_ref()
                .parse::<Port>()
                .map_err(|m| ctx.bad(p.span(), format!("router.allow[{i}].ports[{j}]"), m))?,
        );
    }
    Ok(Rule {
        from: from.name.clone(),
        to,
        ports,
        why: r.why.clone(),
    })
}

fn vlan_names(topo: &Topology) -> String {
    topo.vlans
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn host_subnet(ip: IpAddr) -> Subnet {
    Subnet {
        addr: ip,
        prefix: if ip.is_ipv4() { 32 } else { 128 },
    }
}

/// The static address and VLAN of the host or phone `name`; `None` when no entry has that name.
fn named_address(topo: &Topology, name: &str) -> Option<Result<(IpAddr, String), String>> {
    let (address, vlan) = if let Some(h) = topo.host(name) {
        (h.address, h.vlan.clone())
    } else if let Some(p) = topo.phone(name) {
        (p.address, p.vlan.clone())
    } else {
        return None;
    };
    Some(match address {
        Address::Static(ip) => Ok((ip, vlan)),
        Address::Dhcp => Err(format!(
            "{name} gets its address by DHCP, so a rule cannot name it: give it a fixed address"
        )),
    })
}

/// The mirror is the router's when `cluster.mirror`'s host is one of the router's gateway
/// addresses or its name; it is served on that address's VLAN (the router's own for a name).
fn mirror_place(topo: &Topology, router: &super::Host, own: &Vlan) -> Option<Mirror> {
    let url = topo.cluster.mirror.as_deref()?;
    let parts = crate::url::split(url).filter(|p| p.scheme == "http")?;
    let (host, path) = (parts.host, parts.path);
    let port = match parts.port {
        Some(p) => p.parse().ok()?,
        None => 80,
    };
    let vlan = if let Ok(ip) = host.parse::<IpAddr>() {
        topo.vlans
            .iter()
            .find(|v| v.gateway == Some(ip))?
            .name
            .clone()
    } else {
        let short = host.split('.').next().unwrap_or(host);
        if short != router.name {
            return None;
        }
        own.name.clone()
    };
    let mut prefix = path.to_owned();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Some(Mirror { vlan, port, prefix })
}

// ---- what it turns into ----

/// flannel's VXLAN port: pod traffic between nodes.
pub const FLANNEL_VXLAN_PORT: u16 = 8472;
/// The kubelet's port (logs, exec, metrics from the server).
pub const KUBELET_PORT: u16 = 10250;

/// A single-address subnet (`/32`, `/128`).
fn is_one_address(subnet: &Subnet) -> bool {
    subnet.prefix >= if subnet.addr.is_ipv4() { 32 } else { 128 }
}

/// The VLAN interface of `vlan` on the trunk.
pub fn vlan_iface(vlan: &Vlan) -> String {
    format!("{TRUNK}.{}", vlan.id)
}

/// A fixed DHCP lease (also a DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Host or phone name (the DHCP client's hostname dnsmasq matches).
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
    /// Its VLAN.
    pub vlan: String,
}

impl Router {
    /// Hosts and phones with fixed addresses (the router itself excluded): each gets its address
    /// by name from DHCP too, and a DNS name.
    pub fn leases(&self, topo: &Topology) -> Vec<Lease> {
        let hosts = topo
            .hosts()
            .iter()
            .filter(|h| h.name != self.host)
            .map(|h| (h.name.clone(), h.address, h.vlan.clone()));
        let phones = topo
            .phones()
            .iter()
            .map(|p| (p.name.clone(), p.address, p.vlan.clone()));
        hosts
            .chain(phones)
            .filter_map(|(name, a, vlan)| match a {
                Address::Static(ip) => Some(Lease { name, ip, vlan }),
                Address::Dhcp => None,
            })
            .collect()
    }

    /// The VLANs with cluster nodes on them (agents and phones): they reach the router's k3s
    /// ports (flannel VXLAN, kubelet) whatever the rules say.
    pub fn node_vlans(&self, topo: &Topology) -> Vec<String> {
        let mut v: Vec<String> = topo
            .hosts()
            .iter()
            .filter(|h| h.name != self.host)
            .map(|h| h.vlan.clone())
            .chain(topo.phones().iter().map(|p| p.vlan.clone()))
            // Phones without an entry enroll there.
            .chain([topo.cluster.phone_vlan.clone()])
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the policy lets a new connection from VLAN `from` reach `dest` on `proto`/`port`:
    /// the verdict of the ruleset `nftables_conf` writes, read from the data (so validation can
    /// ask it, and tests can hold it against the kernel's). Traffic inside a VLAN is switched and
    /// never meets the router.
    pub fn allows(
        &self,
        topo: &Topology,
        from: &str,
        dest: IpAddr,
        proto: Proto,
        port: u16,
    ) -> bool {
        let Some(from_vlan) = topo.vlan(from) else {
            return false;
        };
        let router_owns = |ip: IpAddr| topo.vlans.iter().any(|v| v.gateway == Some(ip));
        if !router_owns(dest) && from_vlan.subnet.contains(dest) {
            return true;
        }
        let ports_allow = |r: &Rule| {
            r.ports.is_empty()
                || r.ports
                    .iter()
                    .any(|p| p.proto == proto && (p.first..=p.last).contains(&port))
        };
        let rules = self.allow.iter().filter(|r| r.from == from);
        if router_owns(dest) {
            // The input chain: what every VLAN gets, then the rules aimed at the router.
            let implied = match proto {
                Proto::Udp => port == 53 || port == 67,
                Proto::Tcp => port == 53,
            } || self
                .mirror
                .as_ref()
                .is_some_and(|m| m.vlan == from && proto == Proto::Tcp && port == m.port)
                || (self.node_vlans(topo).iter().any(|v| v == from)
                    && matches!(
                        (proto, port),
                        (Proto::Udp, FLANNEL_VXLAN_PORT) | (Proto::Tcp, KUBELET_PORT)
                    ));
            return implied
                || rules.filter(|r| ports_allow(r)).any(|r| match &r.to {
                    Target::Router => true,
                    Target::Address { subnet, .. } => {
                        subnet.addr == dest && router_owns(subnet.addr) && is_one_address(subnet)
                    }
                    _ => false,
                });
        }
        // The forward chain.
        let in_a_vlan = topo.vlans.iter().any(|v| v.subnet.contains(dest));
        rules.filter(|r| ports_allow(r)).any(|r| match &r.to {
            Target::Internet => !in_a_vlan,
            Target::Router => false,
            Target::Vlan(v) => topo.vlan(v).is_some_and(|v| v.subnet.contains(dest)),
            Target::Address { subnet, .. } => {
                !(router_owns(subnet.addr) && is_one_address(subnet)) && subnet.contains(dest)
            }
        })
    }

    /// systemd-networkd files: the trunk with one VLAN device per VLAN, each holding the
    /// gateway address, and the uplinks by DHCP with metrics in their order.
    pub fn networkd_files(&self, topo: &Topology) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut trunk = format!(
            "# armfleet router: the trunk to the switch carries every VLAN tagged\n[Match]\nName={TRUNK}\n\n[Network]\nLinkLocalAddressing=no\nLLDP=yes\nEmitLLDP=yes\n"
        );
        for v in &topo.vlans {
            trunk.push_str(&format!("VLAN={}\n", vlan_iface(v)));
        }
        files.push((format!("10-armfleet-{TRUNK}.network"), trunk));
        for v in &topo.vlans {
            let iface = vlan_iface(v);
            files.push((
                format!("10-armfleet-{iface}.netdev"),
                format!(
                    "# VLAN {} (id {})\n[NetDev]\nName={iface}\nKind=vlan\n\n[VLAN]\nId={}\n",
                    v.name, v.id, v.id
                ),
            ));
            let gw = v.gateway.expect("validated: every VLAN has a gateway");
            files.push((
                format!("20-armfleet-{iface}.network"),
                format!(
                    "# VLAN {}: the router is its gateway\n[Match]\nName={iface}\n\n[Network]\nAddress={gw}/{}\nConfigureWithoutCarrier=yes\nIPv6AcceptRA=no\n\n[Link]\nRequiredForOnline=yes\n",
                    v.name, v.subnet.prefix
                ),
            ));
        }
        for (i, u) in self.uplinks.iter().enumerate() {
            let metric = 100 * (i + 1);
            files.push((
                format!("30-armfleet-uplink-{}.network", u.iface),
                format!(
                    "# uplink {} ({}), preference {}: the lowest metric with a link carries the default route\n[Match]\nName={}\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=no\n\n[DHCPv4]\nRouteMetric={metric}\nUseDNS=no\n\n[Link]\n# Absent modems and unplugged WANs must not hold up the boot.\nRequiredForOnline=no\n",
                    u.iface,
                    u.kind.name(),
                    i + 1,
                    u.iface
                ),
            ));
        }
        files
    }

    /// dnsmasq's configuration: DHCP and DNS on every VLAN interface, the lab's domain, fixed
    /// leases, names for the fixed addresses, upstream resolvers.
    pub fn dnsmasq_conf(&self, topo: &Topology) -> String {
        let domain = topo.cluster.search.first().cloned();
        let mut s = format!(
            "# Generated by armfleet from {}: DHCP and DNS for the lab's VLANs.\n",
            topo.origin
        );
        s.push_str("# Only the VLAN interfaces; bind-dynamic so they may come up after dnsmasq.\n");
        for v in &topo.vlans {
            s.push_str(&format!("interface={}\n", vlan_iface(v)));
        }
        // Logged to stderr: the journal (and the console of a headless router) shows each lease.
        s.push_str("bind-dynamic\nno-resolv\nno-hosts\ndomain-needed\nbogus-priv\ncache-size=1000\ndhcp-authoritative\nlog-facility=-\n");
        for d in &self.upstream_dns {
            s.push_str(&format!("server={d}\n"));
        }
        if let Some(d) = &domain {
            s.push_str(&format!("domain={d}\nlocal=/{d}/\n"));
        }
        if !topo.cluster.search.is_empty() {
            s.push_str(&format!(
                "dhcp-option=option:domain-search,{}\n",
                topo.cluster.search.join(",")
            ));
        }
        for v in &topo.vlans {
            let tag = v.name.to_ascii_lowercase();
            if let Some(Some((first, last))) = self.dhcp.get(&v.name) {
                s.push_str(&format!(
                    "# {}\ndhcp-range=set:{tag},{first},{last},{},12h\n",
                    v.name,
                    netmask(&v.subnet)
                ));
                if let Some(gw) = v.gateway {
                    s.push_str(&format!("dhcp-option=tag:{tag},option:router,{gw}\n"));
                }
                let dns = if v.dns.is_empty() {
                    v.gateway.into_iter().collect()
                } else {
                    v.dns.clone()
                };
                if !dns.is_empty() {
                    s.push_str(&format!(
                        "dhcp-option=tag:{tag},option:dns-server,{}\n",
                        dns.iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    ));
                }
            }
        }
        let fqdn = |n: &str| match &domain {
            Some(d) => format!("{n}.{d},{n}"),
            None => n.to_owned(),
        };
        let own = topo.vlan(&topo.host(&self.host).expect("validated router host").vlan);
        if let Some(gw) = own.and_then(|v| v.gateway) {
            s.push_str(&format!("host-record={},{gw}\n", fqdn(&self.host)));
        }
        for l in self.leases(topo) {
            s.push_str(&format!("dhcp-host={},{}\n", l.name, l.ip));
            s.push_str(&format!("host-record={},{}\n", fqdn(&l.name), l.ip));
        }
        s
    }

    /// The policy as lines for people: the implied services first, then the topology's rules.
    pub fn policy_lines(&self, topo: &Topology) -> Vec<String> {
        let all = vlan_names(topo);
        let mut out = vec![
            format!("default: drop between VLANs and to {}", self.host),
            format!(
                "{all} -> {}: udp/67 udp/53 tcp/53 icmp (DHCP, DNS, ping) [implied]",
                self.host
            ),
        ];
        if let Some(m) = &self.mirror {
            out.push(format!(
                "{} -> {}: tcp/{} (artifact mirror) [implied]",
                m.vlan, self.host, m.port
            ));
        }
        let nodes = self.node_vlans(topo);
        if !nodes.is_empty() {
            out.push(format!(
                "{} -> {}: udp/8472 tcp/10250 (k3s: flannel VXLAN, kubelet) [implied]",
                nodes.join(", "),
                self.host
            ));
        }
        for r in &self.allow {
            let ports = if r.ports.is_empty() {
                "any".to_string()
            } else {
                r.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let to = match &r.to {
                Target::Router => self.host.clone(),
                t => t.to_string(),
            };
            out.push(format!(
                "{} -> {to}: {ports}{}",
                r.from,
                r.why
                    .as_ref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ));
        }
        if !self.uplinks.is_empty() {
            out.push(format!(
                "NAT: masquerade out of {}",
                self.uplinks
                    .iter()
                    .map(|u| u.iface.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }

    /// The nftables ruleset (`nft -f`): one `inet armfleet` table, replaced whole on each load so
    /// k3s's own tables are left alone; input and forward drop by default.
    pub fn nftables_conf(&self, topo: &Topology) -> String {
        let iface_of = |name: &str| {
            topo.vlan(name)
                .map(vlan_iface)
                .expect("validated VLAN name")
        };
        let set = |items: &[String]| {
            if items.len() == 1 {
                format!("\"{}\"", items[0])
            } else {
                format!(
                    "{{ {} }}",
                    items
                        .iter()
                        .map(|i| format!("\"{i}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        let vlan_ifaces: Vec<String> = topo.vlans.iter().map(vlan_iface).collect();
        let uplinks: Vec<String> = self.uplinks.iter().map(|u| u.iface.clone()).collect();
        let pods: Vec<String> = POD_IFACES.iter().map(|s| s.to_string()).collect();
        let mut input = Vec::new();
        let mut forward = Vec::new();
        input.push("ct state established,related accept".to_string());
        input.push("ct state invalid drop".to_string());
        input.push("iif \"lo\" accept".to_string());
        input.push("meta l4proto { icmp, ipv6-icmp } accept".to_string());
        input.push(format!(
            "iifname {} accept comment \"the cluster's pods on this node\"",
            set(&pods)
        ));
        input.push(format!(
            "iifname {} udp dport {{ 53, 67 }} accept comment \"DHCP and DNS on every VLAN\"",
            set(&vlan_ifaces)
        ));
        input.push(format!(
            "iifname {} tcp dport 53 accept comment \"DNS over TCP\"",
            set(&vlan_ifaces)
        ));
        if let Some(m) = &self.mirror {
            input.push(format!(
                "iifname \"{}\" tcp dport {} accept comment \"artifact mirror on {}\"",
                iface_of(&m.vlan),
                m.port,
                m.vlan
            ));
        }
        let nodes: Vec<String> = self.node_vlans(topo).iter().map(|v| iface_of(v)).collect();
        if !nodes.is_empty() {
            input.push(format!(
                "iifname {} udp dport {FLANNEL_VXLAN_PORT} accept comment \"k3s: flannel VXLAN from the nodes\"",
                set(&nodes)
            ));
            input.push(format!(
                "iifname {} tcp dport {KUBELET_PORT} accept comment \"k3s: kubelet\"",
                set(&nodes)
            ));
        }
        forward.push("ct state established,related accept".to_string());
        forward.push("ct state invalid drop".to_string());
        forward.push(format!(
            "iifname {} accept comment \"pod traffic leaving the node\"",
            set(&pods)
        ));
        forward.push(format!(
            "oifname {} accept comment \"pod traffic reaching the node's pods\"",
            set(&pods)
        ));
        for (i, r) in self.allow.iter().enumerate() {
            let from = iface_of(&r.from);
            let comment = format!(
                " comment \"rule {}: {} -> {}{}\"",
                i + 1,
                r.from,
                r.to,
                r.why
                    .as_ref()
                    .map(|w| format!(" ({})", w.replace('"', "'")))
                    .unwrap_or_default()
            );
            let (chain, dest) = match &r.to {
                Target::Router => (&mut input, String::new()),
                Target::Internet => (&mut forward, format!(" oifname {}", set(&uplinks))),
                Target::Vlan(v) => (&mut forward, format!(" oifname \"{}\"", iface_of(v))),
                Target::Address { subnet, .. } => {
                    let fam = if subnet.addr.is_ipv4() { "ip" } else { "ip6" };
                    // An address of the router itself is the input chain's business.
                    let router_owns = is_one_address(subnet)
                        && topo.vlans.iter().any(|v| v.gateway == Some(subnet.addr));
                    if router_owns {
                        (&mut input, format!(" {fam} daddr {subnet}"))
                    } else {
                        (&mut forward, format!(" {fam} daddr {subnet}"))
                    }
                }
            };
            let head = format!("iifname \"{from}\"{dest}");
            if r.ports.is_empty() {
                chain.push(format!("{head} accept{comment}"));
            } else {
                for proto in [Proto::Tcp, Proto::Udp] {
                    let ports: Vec<String> = r
                        .ports
                        .iter()
                        .filter(|p| p.proto == proto)
                        .map(|p| {
                            if p.first == p.last {
                                p.first.to_string()
                            } else {
                                format!("{}-{}", p.first, p.last)
                            }
                        })
                        .collect();
                    if ports.is_empty() {
                        continue;
                    }
                    let p = match proto {
                        Proto::Tcp => "tcp",
                        Proto::Udp => "udp",
                    };
                    let list = if ports.len() == 1 {
                        ports[0].clone()
                    } else {
                        format!("{{ {} }}", ports.join(", "))
                    };
                    chain.push(format!("{head} {p} dport {list} accept{comment}"));
                }
            }
        }
        let mut s = format!(
            "#!/usr/sbin/nft -f\n# Generated by armfleet from {}: zero trust between the VLANs.\n# Only this table is replaced on reload; k3s's own tables stay.\ntable inet armfleet\ndelete table inet armfleet\n\ntable inet armfleet {{\n",
            topo.origin
        );
        let chain = |s: &mut String, name: &str, hook: &str, policy: &str, rules: &[String]| {
            s.push_str(&format!(
                "\tchain {name} {{\n\t\ttype filter hook {hook} priority filter; policy {policy};\n"
            ));
            for r in rules {
                s.push_str(&format!("\t\t{r}\n"));
            }
            s.push_str("\t}\n\n");
        };
        chain(&mut s, "input", "input", "drop", &input);
        chain(&mut s, "forward", "forward", "drop", &forward);
        chain(&mut s, "output", "output", "accept", &[]);
        if !uplinks.is_empty() {
            s.push_str(&format!(
                "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname {} masquerade comment \"the lab behind the uplink\"\n\t}}\n",
                set(&uplinks)
            ));
        }
        s.push_str("}\n");
        s
    }
}

fn netmask(subnet: &Subnet) -> String {
    let bits = u32::from(subnet.prefix);
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Ipv4Addr::from(mask).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lab() -> Topology {
        Topology::from_toml_str(
            super::super::DEFAULT_TOPOLOGY,
            "default.toml",
            Path::new("."),
        )
        .unwrap()
    }

    fn with(extra: &str) -> Result<Topology, TopologyError> {
        let text = format!("{}\n{extra}\n", super::super::DEFAULT_TOPOLOGY);
        Topology::from_toml_str(&text, "t.toml", Path::new("."))
    }

    #[test]
    fn the_default_lab_has_a_router_with_the_four_vlans() {
        let t = lab();
        let r = t.router.as_ref().expect("the default lab has a router");
        assert_eq!(r.host, "rpi4-1");
        let files = r.networkd_files(&t);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for id in [10, 20, 30, 40] {
            assert!(
                names.contains(&format!("10-armfleet-eth0.{id}.netdev").as_str()),
                "{names:?}"
            );
        }
        let infra = files
            .iter()
            .find(|(n, _)| n == "20-armfleet-eth0.10.network")
            .unwrap();
        assert!(infra.1.contains("Address=10.10.10.1/24"), "{}", infra.1);
        let trunk = &files[0].1;
        assert!(trunk.contains("VLAN=eth0.40"), "{trunk}");
        // The modem first, the Ethernet WAN as the fallback; neither holds up the boot.
        let uplink = |name: &str| {
            &files
                .iter()
                .find(|(n, _)| n == &format!("30-armfleet-uplink-{name}.network"))
                .unwrap()
                .1
        };
        assert!(
            uplink("wwan0").contains("RouteMetric=100")
                && uplink("eth1").contains("RouteMetric=200")
        );
        assert!(
            uplink("wwan0").contains("RequiredForOnline=no")
                && uplink("eth1").contains("DHCP=ipv4")
        );
    }

    #[test]
    fn dnsmasq_serves_each_vlan_with_fixed_leases_and_names() {
        let t = lab();
        let c = t.router.as_ref().unwrap().dnsmasq_conf(&t);
        assert!(
            c.contains("interface=eth0.10\n") && c.contains("interface=eth0.40\n"),
            "{c}"
        );
        assert!(
            c.contains("dhcp-range=set:infra,10.10.10.128,10.10.10.254,255.255.255.0,12h"),
            "{c}"
        );
        assert!(
            c.contains("dhcp-option=tag:iot,option:router,10.10.40.1"),
            "{c}"
        );
        assert!(c.contains("dhcp-host=rpi4-2,10.10.10.12"), "{c}");
        assert!(
            c.contains("host-record=rpi4-1.lab.home.arpa,rpi4-1,10.10.10.1"),
            "{c}"
        );
        assert!(c.contains("domain=lab.home.arpa"), "{c}");
        assert!(
            !c.contains("dhcp-host=rpi4-1"),
            "the router leases nothing to itself"
        );
    }

    #[test]
    fn the_ruleset_drops_by_default_and_opens_only_the_listed_flows() {
        let t = lab();
        let n = t.router.as_ref().unwrap().nftables_conf(&t);
        assert!(
            n.contains("type filter hook forward priority filter; policy drop;"),
            "{n}"
        );
        assert!(
            n.contains("type filter hook input priority filter; policy drop;"),
            "{n}"
        );
        assert!(
            n.contains("iifname \"eth0.10\" tcp dport { 22, 6443 } accept"),
            "{n}"
        );
        assert!(
            n.contains("iifname \"eth0.20\" oifname { \"wwan0\", \"eth1\" } accept"),
            "{n}"
        );
        assert!(
            n.contains("oifname { \"wwan0\", \"eth1\" } masquerade"),
            "{n}"
        );
        // The mirror is INFRA's; DHCP and DNS are every VLAN's.
        assert!(
            n.contains("iifname \"eth0.10\" tcp dport 8080 accept"),
            "{n}"
        );
        assert!(
            n.contains("iifname { \"eth0.10\", \"eth0.20\", \"eth0.30\", \"eth0.40\" } udp dport { 53, 67 } accept"),
            "{n}"
        );
        // Nothing lets IOT into INFRA.
        assert!(
            !n.lines()
                .any(|l| l.contains("iifname \"eth0.40\"") && l.contains("eth0.10")),
            "{n}"
        );
    }

    #[test]
    fn bad_router_data_is_named_with_its_key() {
        let e = with("[[router.allow]]\nfrom = \"IOT\"\nto = \"NOPE\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("router.allow[") && e.contains("\"NOPE\" is none of"),
            "{e}"
        );
        let e = with("[[router.allow]]\nfrom = \"IOT\"\nto = \"IOT\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("switched, not routed"), "{e}");
        let e = with("[[router.allow]]\nfrom = \"IOT\"\nto = \"rpi4-2\"\nports = [\"tcp/99999\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ports[0]") && e.contains("not a port number"),
            "{e}"
        );
        let e = with("[[router.allow]]\nfrom = \"IOT\"\nto = \"phone-1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("by DHCP"), "{e}");
    }

    #[test]
    fn pools_are_checked_against_their_vlan() {
        let e = with("[router.dhcp]\nINFRA = \"10.10.20.5-10.10.20.9\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("router.dhcp.INFRA") && e.contains("not a host address of VLAN INFRA"),
            "{e}"
        );
        let e = with("[router.dhcp]\nINFRA = \"10.10.10.1-10.10.10.9\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds the gateway"), "{e}");
        let t = with("[router.dhcp]\nIOT = \"off\"").unwrap();
        let c = t.router.as_ref().unwrap().dnsmasq_conf(&t);
        assert!(!c.contains("set:iot"), "{c}");
    }

    #[test]
    fn a_node_the_rules_keep_from_the_cluster_is_refused_at_its_vlan() {
        // A phone on PERSO: PERSO may not reach the API.
        let phone = "[[phone]]\nname = \"phone-2\"\nvlan = \"PERSO\"\naddress = \"10.10.30.40\"";
        let e = with(phone).unwrap_err().to_string();
        let line = format!("{}\n", super::super::DEFAULT_TOPOLOGY)
            .lines()
            .count()
            + 3;
        assert!(
            e.contains(&format!("t.toml:{line}"))
                && e.contains("phone[1].vlan")
                && e.contains("phone-2 is on VLAN PERSO")
                && e.contains("(10.10.10.1 tcp/6443)")
                && e.contains("to = \"rpi4-1\", ports = [\"tcp/6443\"]"),
            "{e}"
        );
        // The API allowed, but pods on INFRA's nodes and phone-2 could not meet.
        let api = "[[router.allow]]\nfrom = \"PERSO\"\nto = \"rpi4-1\"\nports = [\"tcp/6443\"]";
        let e = with(&format!("{phone}\n{api}")).unwrap_err().to_string();
        assert!(
            e.contains("VLAN INFRA) and phone-2 (VLAN PERSO)")
                && e.contains("udp/8472")
                && e.contains("host[1].vlan"),
            "{e}"
        );
        // VXLAN one way is not enough.
        let there = "[[router.allow]]\nfrom = \"INFRA\"\nto = \"PERSO\"\nports = [\"udp/8472\"]";
        let e = with(&format!("{phone}\n{api}\n{there}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("phone[1].vlan") && e.contains("lets PERSO reach INFRA on udp/8472"),
            "{e}"
        );
        let back = "[[router.allow]]\nfrom = \"PERSO\"\nto = \"INFRA\"\nports = [\"udp/8472\"]";
        let t = with(&format!("{phone}\n{api}\n{there}\n{back}")).unwrap();
        let r = t.router.as_ref().unwrap();
        assert!(r.allows(&t, "PERSO", "10.10.10.1".parse().unwrap(), Proto::Tcp, 6443));
        assert!(!r.allows(&t, "PERSO", "10.10.10.1".parse().unwrap(), Proto::Tcp, 22));

        // Phones without an entry land on cluster.phone_vlan: it is judged too.
        let text = super::super::DEFAULT_TOPOLOGY
            .replace("phone_vlan = \"INFRA\"", "phone_vlan = \"IOT\"");
        let e = Topology::from_toml_str(&text, "t.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.phone_vlan") && e.contains("join VLAN IOT"),
            "{e}"
        );
    }

    #[test]
    fn the_policy_reads_as_the_ruleset_does() {
        let t = lab();
        let r = t.router.as_ref().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Inside a VLAN: switched, never judged.
        assert!(r.allows(&t, "IOT", ip("10.10.40.9"), Proto::Tcp, 22));
        // The router: what every VLAN gets, the mirror on INFRA only, the listed services.
        assert!(r.allows(&t, "IOT", ip("10.10.40.1"), Proto::Udp, 53));
        assert!(r.allows(&t, "INFRA", ip("10.10.10.1"), Proto::Tcp, 8080));
        assert!(!r.allows(&t, "PRO", ip("10.10.20.1"), Proto::Tcp, 8080));
        assert!(r.allows(&t, "INFRA", ip("10.10.20.1"), Proto::Tcp, 22));
        assert!(!r.allows(&t, "IOT", ip("10.10.40.1"), Proto::Tcp, 6443));
        // Between VLANs and out.
        assert!(r.allows(&t, "PRO", ip("10.10.10.12"), Proto::Tcp, 443));
        assert!(!r.allows(&t, "PRO", ip("10.10.10.12"), Proto::Tcp, 22));
        assert!(!r.allows(&t, "PRO", ip("10.10.10.12"), Proto::Udp, 443));
        assert!(r.allows(&t, "PERSO", ip("192.0.2.7"), Proto::Udp, 443));
        assert!(!r.allows(&t, "IOT", ip("192.0.2.7"), Proto::Tcp, 443));
        assert!(!r.allows(&t, "PERSO", ip("10.10.20.5"), Proto::Tcp, 443));
    }

    #[test]
    fn ports_parse_as_written() {
        assert_eq!("tcp/22".parse::<Port>().unwrap().to_string(), "tcp/22");
        assert_eq!(
            "udp/8000-8100".parse::<Port>().unwrap().to_string(),
            "udp/8000-8100"
        );
        assert!("icmp/1".parse::<Port>().is_err());
        assert!("tcp/9-1".parse::<Port>().is_err());
    }
}
