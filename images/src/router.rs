//! What the router's image carries on top of a node's: the VLAN interfaces, dnsmasq, the
//! nftables ruleset, forwarding, the artifact mirror and the k3s server's CA. The contents come
//! from `bootstrap::topology::router` (pure generators); this places them and records what was
//! placed in `/etc/armfleet/router.json`, which `imagegen inspect` reads back from the image.

use crate::error::{ImageError, io};
use crate::ext4::Tree;
use bootstrap::layout::router::{
    DNSMASQ_CONF, K3S_TLS_DIR, MIRROR_DIR, NFTABLES_CONF, ROUTER_JSON,
};
use bootstrap::token::Secret;
use bootstrap::topology::router::Mirror;
use bootstrap::topology::{Router, Topology};
use std::path::{Path, PathBuf};

/// The router's part of a host plan.
#[derive(Debug, Clone)]
pub struct RouterPlan {
    /// The router's host name (for messages).
    pub host: String,
    /// systemd-networkd files (name, text): these replace the host's own.
    pub networkd: Vec<(String, String)>,
    /// dnsmasq.conf.
    pub dnsmasq: String,
    /// The nftables ruleset.
    pub nftables: String,
    /// What `imagegen inspect` shows (mirror files are added when they are placed).
    pub summary: RouterSummary,
    /// File name of the pinned k3s in the mirror (its upstream name), when there is a mirror.
    pub mirror_k3s_name: Option<String>,
    /// Where the mirror is served, when the router serves it.
    pub mirror: Option<Mirror>,
    /// The pinned airgap images archive, served beside k3s when it can be fetched.
    pub airgap: Option<bootstrap::topology::Pinned>,
    /// The nodes' own bootstrap tokens, registered by the server at its first start.
    pub node_tokens: Vec<NodeToken>,
    /// What could not be registered, and why (notes for the build's output).
    pub node_token_notes: Vec<String>,
}

/// A node's own join token (a k3s bootstrap token), read from the topology when the server's
/// image is made.
#[derive(Debug, Clone)]
pub struct NodeToken {
    /// The node (host or phone).
    pub node: String,
    /// Where the topology names it (`phone[0].token`).
    pub key: String,
    /// The token's public id.
    pub id: String,
    /// The token's secret part.
    secret: Secret,
    /// The CA hash a `K10` token names.
    pub ca_hash: Option<String>,
}

/// Every node's own bootstrap token the topology names and can give now. A SOPS file that cannot
/// give one is an error (as for the server's own token: a wrong age key must not hide until a
/// node fails to join); other sources that cannot, and tokens that are not bootstrap tokens, are
/// notes: the server cannot register them, and they can still be made on it by hand.
pub fn node_tokens(topo: &Topology) -> Result<(Vec<NodeToken>, Vec<String>), ImageError> {
    use bootstrap::token::JoinToken;
    let server = topo.router.as_ref().map(|r| r.host.as_str()).unwrap_or("");
    let own =
        topo.hosts()
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((&h.name, format!("host[{i}].token"), h.token.as_ref()?)))
            .chain(topo.phones().iter().enumerate().filter_map(|(i, p)| {
                Some((&p.name, format!("phone[{i}].token"), p.token.as_ref()?))
            }));
    let (mut tokens, mut notes) = (Vec::<NodeToken>::new(), Vec::new());
    for (node, key, source) in own {
        let token = match JoinToken::from_source(source, &topo.base_dir) {
            Ok(t) => t,
            Err(e) if e.is_sops() => {
                return Err(ImageError::HostConfig {
                    host: server.to_owned(),
                    message: format!(
                        "{node}'s own token ({}: key `{key}`): {e}; the server's image registers every node's own token",
                        topo.origin
                    ),
                });
            }
            Err(e) => {
                notes.push(format!(
                    "{node}'s own token ({key}) is not registered on the server: {e}"
                ));
                continue;
            }
        };
        let Some((id, secret)) = token.bootstrap_parts() else {
            notes.push(format!(
                "{node}'s own token ({key}) is not a k3s bootstrap token (<id>.<secret>): the server does not register it, so {node} joins only if it carries the server's password"
            ));
            continue;
        };
        if let Some(other) = tokens.iter().find(|t| t.id == id) {
            return Err(ImageError::HostConfig {
                host: server.to_owned(),
                message: format!(
                    "{} ({}) and {node} ({key}) have bootstrap tokens with the same id {id} ({}): give each node a token of its own, so that it can be revoked alone",
                    other.node, other.key, topo.origin
                ),
            });
        }
        tokens.push(NodeToken {
            node: node.clone(),
            key,
            id: id.to_owned(),
            secret: Secret::new(secret),
            ca_hash: token.ca_hash().map(str::to_owned),
        });
    }
    Ok((tokens, notes))
}

/// `/etc/armfleet/router.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouterSummary {
    /// The topology it came from.
    pub topology: String,
    /// `NAME id ID: GATEWAY/PREFIX on IFACE, DHCP FIRST-LAST`.
    pub vlans: Vec<String>,
    /// Uplinks in order of preference.
    pub uplinks: Vec<String>,
    /// `NAME IP (VLAN)`.
    pub leases: Vec<String>,
    /// The policy, in words.
    pub policy: Vec<String>,
    /// `http://…` where the mirror is served, when it is.
    pub mirror_url: Option<String>,
    /// Files in the mirror.
    pub mirror: Vec<MirrorFile>,
    /// The k3s server's CA: `custom (sha256 …)` or `generated by k3s at first start`.
    pub server_ca: String,
    /// The nodes' own bootstrap tokens the server registers (node, id, where; never the secret).
    #[serde(default)]
    pub node_tokens: Vec<String>,
}

/// One file of the artifact mirror.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MirrorFile {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256.
    pub sha256: String,
}

impl RouterPlan {
    /// The plan for the router `r` of `topo`.
    pub fn new(topo: &Topology, r: &Router) -> RouterPlan {
        let vlans = topo
            .vlans
            .iter()
            .map(|v| {
                let pool = match r.dhcp.get(&v.name) {
                    Some(Some((a, b))) => format!("DHCP {a}-{b}"),
                    _ => "no DHCP".into(),
                };
                format!(
                    "{} id {}: {}/{} on {}, {pool}",
                    v.name,
                    v.id,
                    v.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    v.subnet.prefix,
                    bootstrap::topology::router::vlan_iface(v)
                )
            })
            .collect();
        let leases = r
            .leases(topo)
            .iter()
            .map(|l| format!("{} {} ({})", l.name, l.ip, l.vlan))
            .collect();
        let mirror_url = r.mirror.as_ref().map(|m| {
            format!(
                "{} (served on {} port {}, under {})",
                topo.cluster.mirror.clone().unwrap_or_default(),
                m.vlan,
                m.port,
                m.prefix
            )
        });
        let mirror_k3s_name = r.mirror.as_ref().and_then(|_| {
            topo.cluster
                .k3s
                .url
                .as_deref()
                .and_then(|u| u.rsplit('/').next())
                .map(|n| n.replace("%2B", "+"))
        });
        RouterPlan {
            node_tokens: Vec::new(),
            node_token_notes: Vec::new(),
            host: r.host.clone(),
            networkd: r.networkd_files(topo),
            dnsmasq: r.dnsmasq_conf(topo),
            nftables: r.nftables_conf(topo),
            summary: RouterSummary {
                topology: topo.origin.clone(),
                vlans,
                uplinks: r
                    .uplinks
                    .iter()
                    .enumerate()
                    .map(|(i, u)| format!("{}. {} ({:?})", i + 1, u.iface, u.kind).to_lowercase())
                    .collect(),
                leases,
                policy: r.policy_lines(topo),
                mirror_url,
                mirror: Vec::new(),
                server_ca: "generated by k3s at first start".into(),
                node_tokens: Vec::new(),
            },
            mirror_k3s_name,
            mirror: r.mirror.clone(),
            airgap: r.mirror.as_ref().and(topo.cluster.k3s.airgap.clone()),
        }
    }

    /// Writes the router's files and units into `tree` (the networkd files are written by the
    /// host plan in place of its own).
    pub fn apply(&self, tree: &mut Tree, mirror: Option<&Mirror>) -> Result<(), ImageError> {
        let rel = |p: &str| p.trim_start_matches('/').to_owned();
        tree.add_dir("etc/armfleet", 0o755)?;
        tree.add_file(&rel(DNSMASQ_CONF), 0o644, self.dnsmasq.as_bytes())?;
        tree.add_file(&rel(NFTABLES_CONF), 0o755, self.nftables.as_bytes())?;
        tree.add_dir("etc/sysctl.d", 0o755)?;
        tree.add_file(
            "etc/sysctl.d/90-armfleet-router.conf",
            0o644,
            b"# Written by imagegen: the router forwards between the VLANs and the uplink.\nnet.ipv4.ip_forward = 1\n",
        )?;
        tree.add_dir("etc/modules-load.d", 0o755)?;
        tree.add_file(
            "etc/modules-load.d/armfleet-router.conf",
            0o644,
            b"# The VLAN interfaces on the trunk.\n8021q\n",
        )?;
        let wants = |tree: &mut Tree, target: &str, unit: &str, at: &str| {
            tree.add_symlink(
                &format!("etc/systemd/system/{target}.wants/{unit}"),
                &format!("{at}/{unit}"),
            )
        };
        // Debian's nftables.service loads /etc/nftables.conf before the network is up.
        wants(
            tree,
            "sysinit.target",
            "nftables.service",
            "/lib/systemd/system",
        )?;
        tree.add_file(
            "etc/systemd/system/armfleet-dnsmasq.service",
            0o644,
            DNSMASQ_UNIT.as_bytes(),
        )?;
        wants(
            tree,
            "multi-user.target",
            "armfleet-dnsmasq.service",
            "/etc/systemd/system",
        )?;
        if let Some(m) = mirror {
            tree.add_dir(&rel(MIRROR_DIR), 0o755)?;
            tree.add_file(
                "etc/systemd/system/armfleet-mirror.service",
                0o644,
                mirror_unit(m).as_bytes(),
            )?;
            wants(
                tree,
                "multi-user.target",
                "armfleet-mirror.service",
                "/etc/systemd/system",
            )?;
        }
        Ok(())
    }

    /// Puts the pinned k3s (`data`, already baked at `k3s_bin`) into the mirror: the file lives
    /// in the mirror and the binary path links to it, so the image carries it once.
    pub fn place_k3s(
        &mut self,
        tree: &mut Tree,
        k3s_bin: &str,
        data: &[u8],
    ) -> Result<(), ImageError> {
        let Some(name) = self.mirror_k3s_name.clone() else {
            return Ok(());
        };
        let in_mirror = self.place_file(tree, &name, data)?;
        tree.add_symlink(k3s_bin.trim_start_matches('/'), &in_mirror)
    }

    /// Adds `data` to the mirror as `name`; returns its absolute path in the image.
    pub fn place_file(
        &mut self,
        tree: &mut Tree,
        name: &str,
        data: &[u8],
    ) -> Result<String, ImageError> {
        let in_mirror = mirror_path(name);
        tree.add_file(in_mirror.trim_start_matches('/'), 0o644, data)?;
        self.listed_in_mirror(name, data.len() as u64, bootstrap::digest::sha256_hex(data));
        Ok(in_mirror)
    }

    /// Adds the host file `src` to the mirror as `name`, streamed into the image; `sha256` is
    /// its verified pin (the download checked it, so it is not hashed again). Returns its
    /// absolute path in the image.
    pub fn place_verified_file(
        &mut self,
        tree: &mut Tree,
        name: &str,
        src: &Path,
        sha256: &str,
    ) -> Result<String, ImageError> {
        let in_mirror = mirror_path(name);
        let size = tree.add_host_file(in_mirror.trim_start_matches('/'), 0o644, src)?;
        self.listed_in_mirror(name, size, sha256.to_owned());
        Ok(in_mirror)
    }

    /// Lists a file placed in the mirror in what `inspect` shows.
    fn listed_in_mirror(&mut self, name: &str, size: u64, sha256: String) {
        self.summary.mirror.push(MirrorFile {
            name: name.to_owned(),
            size,
            sha256,
        });
    }

    /// Places the cluster CA from `dir` (k3s' custom CA layout: `server-ca.crt`, `server-ca.key`,
    /// and whatever else k3s' generate-custom-ca-certs.sh made) where k3s looks on first start.
    /// `token_hash` is the CA hash the join token names, when it names one: the CA must be it.
    /// Returns the CA's hash (k3s' hashCA), what agents' `K10` tokens must name.
    pub fn place_ca(
        &mut self,
        tree: &mut Tree,
        dir: &Path,
        token_hash: Option<&str>,
    ) -> Result<String, ImageError> {
        let bad = |m: String| ImageError::HostConfig {
            host: self.host.clone(),
            message: m,
        };
        let crt = dir.join("server-ca.crt");
        let pem = std::fs::read(&crt).map_err(|e| {
            bad(format!(
                "--server-ca {}: cannot read server-ca.crt ({e}): give the directory k3s' generate-custom-ca-certs.sh wrote",
                dir.display()
            ))
        })?;
        if !dir.join("server-ca.key").is_file() {
            return Err(bad(format!(
                "--server-ca {}: server-ca.key is missing: k3s needs the CA's key to sign its serving certificates",
                dir.display()
            )));
        }
        let hash = bootstrap::token::hash_ca(&pem);
        if let Some(want) = token_hash
            && want != hash
        {
            return Err(bad(format!(
                "the join token names CA sha256 {want}, but {} has sha256 {hash}: agents would refuse this server. Give the CA the token was made for, or a token made for this CA",
                crt.display()
            )));
        }
        for (rel, abs) in walk(dir)? {
            let data = std::fs::read(&abs).map_err(io(&abs))?;
            let mode = if rel.ends_with(".key") { 0o600 } else { 0o644 };
            let dest = format!("{}/{rel}", K3S_TLS_DIR.trim_start_matches('/'));
            if let Some(parent) = Path::new(&dest).parent() {
                tree.add_dir(&parent.to_string_lossy(), 0o700)?;
            }
            tree.add_file(&dest, mode, &data)?;
        }
        self.summary.server_ca = format!("custom, server-ca.crt sha256 {hash}");
        Ok(hash)
    }

    /// Places a manifest per node token where the server's k3s applies it at start (so each node
    /// joins with a token of its own, revocable alone). `server_ca` is the hash of the CA placed
    /// in the image, `None` when k3s makes its own: a token naming another CA, or any CA before
    /// one exists, could never join, and is refused.
    pub fn place_node_tokens(
        &mut self,
        tree: &mut Tree,
        k3s_data_dir: &Path,
        server_ca: Option<&str>,
        origin: &str,
    ) -> Result<(), ImageError> {
        for t in &self.node_tokens {
            let wrong = match (&t.ca_hash, server_ca) {
                (Some(want), Some(have)) if want != have => Some(format!(
                    "names CA sha256 {want}, but the server's CA (--server-ca) has sha256 {have}: make it K10{have}::{}.<secret>",
                    t.id
                )),
                (Some(want), None) => Some(format!(
                    "names CA sha256 {want}, but without --server-ca k3s makes a new CA at first start: pass --server-ca DIR with that CA"
                )),
                _ => None,
            };
            if let Some(why) = wrong {
                return Err(ImageError::HostConfig {
                    host: self.host.clone(),
                    message: format!("{}'s own token ({origin}: key `{}`) {why}", t.node, t.key),
                });
            }
        }
        for t in &self.node_tokens {
            let path = bootstrap::layout::router::node_token_manifest(k3s_data_dir, &t.node);
            let rel = path.to_string_lossy().trim_start_matches('/').to_owned();
            // k3s keeps its server directory (the manifests' parent) to root alone; the manifest
            // holds a secret.
            let manifests = Path::new(&rel).parent().expect("DATA_DIR/server/manifests");
            for dir in [manifests.parent().expect("DATA_DIR/server"), manifests] {
                tree.add_dir(&dir.to_string_lossy(), 0o700)?;
            }
            let doc = bootstrap::token::bootstrap_token_manifest(&t.node, &t.id, &t.secret);
            tree.add_file(&rel, 0o600, doc.expose().as_bytes())?;
            self.summary.node_tokens.push(format!(
                "{}: bootstrap token {} ({}), registered by k3s at start from {}",
                t.node,
                t.id,
                t.key,
                path.display()
            ));
        }
        Ok(())
    }

    /// Writes `router.json` (last: it lists what was placed).
    pub fn write_summary(&self, tree: &mut Tree) -> Result<(), ImageError> {
        let text = serde_json::to_string_pretty(&self.summary).expect("plain data");
        tree.add_file(
            ROUTER_JSON.trim_start_matches('/'),
            0o644,
            format!("{text}\n").as_bytes(),
        )
    }
}

/// A mirror file's absolute path in the image.
fn mirror_path(name: &str) -> String {
    format!("{MIRROR_DIR}/{name}")
}

/// Every regular file under `dir`, as (relative path, absolute path), sorted.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            let ft = e.file_type().map_err(io(&p))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// dnsmasq as its own unit: Debian's dnsmasq-base ships none, and the full `dnsmasq` package's
/// would also read /etc/dnsmasq.d and /etc/resolv.conf.
const DNSMASQ_UNIT: &str = "# Written by imagegen: DHCP and DNS for the lab's VLANs.
[Unit]
Description=armfleet router: DHCP and DNS on every VLAN (dnsmasq)
After=systemd-networkd.service
Wants=systemd-networkd.service

[Service]
ExecStartPre=/usr/sbin/dnsmasq --test --conf-file=/etc/armfleet/dnsmasq.conf
ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/etc/armfleet/dnsmasq.conf --user=dnsmasq --pid-file=
Restart=on-failure
RestartSec=2
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

fn mirror_unit(m: &Mirror) -> String {
    let (port, prefix) = (m.port, &m.prefix);
    format!(
        "# Written by imagegen: the artifact mirror (the firewall admits only its VLAN).
[Unit]
Description=armfleet router: artifact mirror on port {port}
After=network.target

[Service]
ExecStart=/usr/local/bin/node-runtime mirror --dir {MIRROR_DIR} --listen 0.0.0.0:{port} --prefix {prefix}
Restart=on-failure
RestartSec=2
DynamicUser=yes
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"
    )
}
