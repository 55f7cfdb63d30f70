//! What is particular to one Pi: its name, network, Wi-Fi, SSH keys and `node.toml`, and the
//! files that carry them into the root filesystem.

use crate::error::ImageError;
use crate::ext4::Tree;
use bootstrap::NodeConfig;
use std::net::IpAddr;

/// Everything imagegen bakes in for one host.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// Hostname and node name.
    pub name: String,
    /// Board profile name (`rpi4`).
    pub board: String,
    /// The host's `node.toml`.
    pub node: NodeConfig,
    /// Its network.
    pub net: NetPlan,
    /// Wi-Fi, for hosts on Wi-Fi.
    pub wifi: Option<WifiPlan>,
    /// SSH public keys for root.
    pub ssh_keys: Vec<String>,
    /// The router's files, when this host is the lab's router.
    pub router: Option<crate::router::RouterPlan>,
}

/// How the host reaches its VLAN.
#[derive(Debug, Clone, PartialEq)]
pub struct NetPlan {
    /// The physical interface (`eth0`, `wlan0`).
    pub iface: String,
    /// 802.1Q VLAN id when the port is tagged; `None` for an untagged (access) port.
    pub vlan: Option<u16>,
    /// Static address with prefix (`10.20.0.12/24`); `None` for DHCP.
    pub address: Option<String>,
    /// Default gateway for a static address.
    pub gateway: Option<IpAddr>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
}

/// A Wi-Fi network.
#[derive(Debug, Clone, PartialEq)]
pub struct WifiPlan {
    /// SSID.
    pub ssid: String,
    /// WPA passphrase (8..63 characters) or 64-hex PSK; `None` for an open network.
    pub psk: Option<String>,
    /// ISO 3166 country code for the regulatory domain (`FR`).
    pub country: String,
}

impl NetPlan {
    /// The interface that carries the address: the VLAN interface when tagged.
    pub fn l3_iface(&self) -> String {
        match self.vlan {
            Some(id) => format!("{}.{id}", self.iface),
            None => self.iface.clone(),
        }
    }
}

impl HostPlan {
    /// Checks the parts a topology may get wrong and the image would carry silently.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |m: String| ImageError::HostConfig {
            host: self.name.clone(),
            message: m,
        };
        if !bootstrap::node_config::is_dns_label(&self.name) {
            return Err(bad(format!("{:?} is not a valid hostname", self.name)));
        }
        if let Some(v) = self.net.vlan
            && !(1..=4094).contains(&v)
        {
            return Err(bad(format!("VLAN {v} is outside 1-4094")));
        }
        if let Some(a) = &self.net.address {
            let (ip, prefix) = a
                .split_once('/')
                .ok_or_else(|| bad(format!("address {a:?} needs a prefix length, e.g. {a}/24")))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| bad(format!("address {a:?} is not an IP address")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match prefix.parse::<u8>() {
                Ok(p) if p <= max => {}
                _ => return Err(bad(format!("address {a:?} has a bad prefix length"))),
            }
        }
        if let Some(w) = &self.wifi {
            if let Some(why) = bootstrap::topology::ssid_problem(&w.ssid) {
                return Err(bad(why.into()));
            }
            if let Some(why) = w
                .psk
                .as_deref()
                .and_then(bootstrap::topology::passphrase_problem)
            {
                return Err(bad(why.into()));
            }
            if w.country.len() != 2 || !w.country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(bad(format!(
                    "Wi-Fi country {:?} must be a two-letter ISO code such as FR",
                    w.country
                )));
            }
        }
        for k in &self.ssh_keys {
            if !(k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-"))
                || k.contains('\n')
            {
                // The start of the line names it; cut at a character, not a byte.
                let start: String = k.chars().take(20).collect();
                return Err(bad(format!(
                    "SSH key {start:?}… is not an OpenSSH public key line"
                )));
            }
        }
        Ok(())
    }

    /// systemd-networkd files (name, contents).
    pub fn networkd_files(&self) -> Vec<(String, String)> {
        let n = &self.net;
        let mut files = Vec::new();
        let mut l3 = format!("[Match]\nName={}\n\n[Network]\n", n.l3_iface());
        match &n.address {
            Some(a) => {
                l3.push_str(&format!("Address={a}\n"));
                if let Some(g) = n.gateway {
                    l3.push_str(&format!("Gateway={g}\n"));
                }
            }
            None => l3.push_str("DHCP=yes\n"),
        }
        for d in &n.dns {
            l3.push_str(&format!("DNS={d}\n"));
        }
        if !n.search.is_empty() {
            l3.push_str(&format!("Domains={}\n", n.search.join(" ")));
        }
        if let Some(id) = n.vlan {
            let vif = n.l3_iface();
            files.push((
                format!("10-armfleet-{vif}.netdev"),
                format!("[NetDev]\nName={vif}\nKind=vlan\n\n[VLAN]\nId={id}\n"),
            ));
            files.push((
                format!("20-armfleet-{}.network", n.iface),
                format!(
                    "# The physical port carries VLAN {id} tagged; it has no address of its own.\n[Match]\nName={}\n\n[Network]\nVLAN={vif}\nLinkLocalAddressing=no\nLLDP=no\nEmitLLDP=no\n",
                    n.iface
                ),
            ));
            files.push((format!("30-armfleet-{vif}.network"), l3));
        } else {
            files.push((format!("20-armfleet-{}.network", n.iface), l3));
        }
        files
    }

    /// `wpa_supplicant-wlan0.conf`.
    pub fn wpa_supplicant_conf(&self) -> Option<String> {
        let w = self.wifi.as_ref()?;
        let key = match &w.psk {
            Some(p) if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
                format!("    psk={p}\n")
            }
            Some(p) => format!("    psk=\"{p}\"\n"),
            None => "    key_mgmt=NONE\n".into(),
        };
        Some(format!(
            "# Written by imagegen for {}.\nctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\nupdate_config=0\ncountry={}\n\nnetwork={{\n    ssid=\"{}\"\n{key}}}\n",
            self.name, w.country, w.ssid
        ))
    }

    /// Writes the host's files into the root filesystem tree. `token` is the join token when
    /// given at build time (written 0600, never logged).
    pub fn apply(
        &self,
        tree: &mut Tree,
        token: Option<&[u8]>,
        fstab: &str,
    ) -> Result<Vec<String>, ImageError> {
        let mut notes = Vec::new();
        tree.add_file("etc/hostname", 0o644, format!("{}\n", self.name).as_bytes())?;
        tree.add_file(
            "etc/hosts",
            0o644,
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
                self.name
            )
            .as_bytes(),
        )?;
        tree.add_file("etc/fstab", 0o644, fstab.as_bytes())?;
        if !self.net.dns.is_empty() && !tree.exists("usr/lib/systemd/systemd-resolved") {
            // No systemd-resolved in the node rootfs: networkd's DNS= would go nowhere.
            let mut r = String::from("# Written by imagegen from the topology.\n");
            if !self.net.search.is_empty() {
                r.push_str(&format!("search {}\n", self.net.search.join(" ")));
            }
            for d in &self.net.dns {
                r.push_str(&format!("nameserver {d}\n"));
            }
            tree.add_file("etc/resolv.conf", 0o644, r.as_bytes())?;
        }
        tree.add_dir("etc/systemd/network", 0o755)?;
        let net_files = match &self.router {
            Some(r) => {
                r.apply(tree, r.mirror.as_ref())?;
                r.networkd.clone()
            }
            None => self.networkd_files(),
        };
        for (name, text) in net_files {
            tree.add_file(
                &format!("etc/systemd/network/{name}"),
                0o644,
                text.as_bytes(),
            )?;
        }
        let unit_dir = ["lib/systemd/system", "usr/lib/systemd/system"];
        let has_unit =
            |tree: &Tree, u: &str| unit_dir.iter().any(|d| tree.exists(&format!("{d}/{u}")));
        if has_unit(tree, "systemd-networkd.service") {
            tree.add_symlink(
                "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
                "/lib/systemd/system/systemd-networkd.service",
            )?;
            if has_unit(tree, "systemd-networkd-wait-online.service") {
                // node-runtime.service is ordered after network-online.target.
                tree.add_symlink(
                    "etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
                    "/lib/systemd/system/systemd-networkd-wait-online.service",
                )?;
            }
            if has_unit(tree, "systemd-networkd.socket") {
                tree.add_symlink(
                    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
                    "/lib/systemd/system/systemd-networkd.socket",
                )?;
            }
        } else {
            notes.push("the rootfs has no systemd-networkd: the network files are written but nothing applies them".into());
        }
        if let Some(conf) = self.wpa_supplicant_conf() {
            tree.add_file(
                "etc/wpa_supplicant/wpa_supplicant-wlan0.conf",
                0o600,
                conf.as_bytes(),
            )?;
            if has_unit(tree, "wpa_supplicant@.service") {
                tree.add_symlink(
                    "etc/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service",
                    "/lib/systemd/system/wpa_supplicant@.service",
                )?;
            } else {
                notes.push("the rootfs has no wpa_supplicant (package wpasupplicant): Wi-Fi will not come up".into());
            }
        }
        if !self.ssh_keys.is_empty() {
            tree.add_dir("root/.ssh", 0o700)?;
            let mut keys = self.ssh_keys.join("\n");
            keys.push('\n');
            tree.add_file("root/.ssh/authorized_keys", 0o600, keys.as_bytes())?;
        }
        tree.add_dir("etc/armfleet", 0o755)?;
        tree.add_file(
            "etc/armfleet/node.toml",
            0o600,
            self.node.to_toml_string().as_bytes(),
        )?;
        if let Some(t) = token {
            let file = self
                .node
                .server
                .token_file
                .to_string_lossy()
                .trim_start_matches('/')
                .to_owned();
            tree.add_file(&file, 0o600, t)?;
        }
        // node-runtime's unit: the rootfs overlay installs and enables it; make sure.
        if !tree.exists("etc/systemd/system/node-runtime.service") {
            tree.add_file(
                "etc/systemd/system/node-runtime.service",
                0o644,
                bootstrap::unit::SYSTEMD_UNIT.as_bytes(),
            )?;
        }
        if !tree.exists("etc/systemd/system/multi-user.target.wants/node-runtime.service") {
            tree.add_symlink(
                "etc/systemd/system/multi-user.target.wants/node-runtime.service",
                "/etc/systemd/system/node-runtime.service",
            )?;
        }
        // Headless Pis are debugged over the UART: node-runtime's output goes there as well.
        tree.add_file(
            "etc/systemd/system/node-runtime.service.d/console.conf",
            0o644,
            b"# Written by imagegen: node-runtime's output also goes to the (serial) console.\n[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n",
        )?;
        if !tree.exists("usr/local/bin/node-runtime") {
            notes.push(
                "the rootfs has no /usr/local/bin/node-runtime: the node will not join".into(),
            );
        }
        Ok(notes)
    }
}
