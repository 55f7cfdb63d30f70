//! The host's plan from the lab topology, and the default node rootfs.

use crate::board::Board;
use crate::error::ImageError;
use crate::host::{HostPlan, NetPlan, WifiPlan};
use bootstrap::topology::{Address, Link, Topology};
use std::path::{Path, PathBuf};

/// The node rootfs for an image when none is given: [`bootstrap::rootfs::default_node_rootfs`],
/// the same cached build `phonectl enroll` uses.
pub fn default_rootfs(
    node_runtime: Option<&Path>,
    progress: &dyn bootstrap::progress::Progress,
) -> Result<PathBuf, ImageError> {
    bootstrap::rootfs::default_node_rootfs(None, node_runtime, progress)
        .map(|built| built.tarball)
        .map_err(|e| ImageError::Rootfs {
            path: crate::assets::cache_root().join("rootfs"),
            message: match e {
                bootstrap::rootfs::RootfsError::NothingToBuildFrom { .. } => e.to_string(),
                e => format!("building the node rootfs failed: {e}"),
            },
        })
}

/// A host's plan and the join token the topology's token source gives, if it gives one now.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The plan.
    pub plan: HostPlan,
    /// The token from the cluster's token source (`None` when the source is not available; the
    /// token can then be dropped on the boot partition after flashing).
    pub token: Option<Vec<u8>>,
    /// Why there is no token, when there is none.
    pub token_note: Option<String>,
    /// The token source is a SOPS file that could not give the token (its one-line error): a
    /// build that takes the token from the topology stops on it rather than make an image that
    /// hides a wrong or missing age key until the Pi fails to join.
    pub token_error: Option<String>,
}

/// The plan for `host` (or the first host of `board`) from the topology at `topology` (else
/// `$ARMFLEET_TOPOLOGY`, else the embedded one).
pub fn plan_for(
    board: &Board,
    host: Option<&str>,
    topology: Option<&Path>,
) -> Result<Planned, ImageError> {
    let topo = Topology::resolve(topology).map_err(|e| ImageError::Topology(e.to_string()))?;
    plan_from(&topo, board, host)
}

/// [`plan_for`] on a loaded topology.
pub fn plan_from(
    topo: &Topology,
    board: &Board,
    host: Option<&str>,
) -> Result<Planned, ImageError> {
    let h = match host {
        Some(name) => topo.host(name).ok_or_else(|| ImageError::UnknownHost {
            host: name.to_owned(),
            topology: topo.origin.clone(),
            board: board.name.clone(),
            known: topo
                .hosts()
                .iter()
                .filter(|h| h.board == board.name)
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?,
        None => topo
            .hosts()
            .iter()
            .find(|h| h.board == board.name && h.role == bootstrap::topology::Role::Agent)
            .or_else(|| topo.first_host_of_board(&board.name))
            .ok_or_else(|| ImageError::NoHostForBoard {
                topology: topo.origin.clone(),
                board: board.name.clone(),
            })?,
    };
    if h.board != board.name {
        return Err(ImageError::WrongBoard {
            host: h.name.clone(),
            asked: board.name.clone(),
            actual: h.board.clone(),
        });
    }
    let node = bootstrap::NodeConfig::for_host(topo, &h.name)
        .map_err(|e| ImageError::Topology(e.to_string()))?;
    let vlan = topo.vlan(&h.vlan).ok_or_else(|| {
        ImageError::Topology(format!(
            "{}: host {} names VLAN {:?}, which is not defined",
            topo.origin, h.name, h.vlan
        ))
    })?;
    let (iface, tagged) = match h.link {
        Link::Wifi => {
            if !board.wifi {
                return Err(ImageError::HostConfig {
                    host: h.name.clone(),
                    message: format!("link = \"wifi\" but a {} has no Wi-Fi", board.model),
                });
            }
            ("wlan0", None)
        }
        Link::Ethernet => {
            if !board.ethernet {
                return Err(ImageError::HostConfig {
                    host: h.name.clone(),
                    message: format!(
                        "link = \"ethernet\" but a {} has no Ethernet port: use link = \"wifi\"",
                        board.model
                    ),
                });
            }
            ("eth0", h.tagged.then_some(vlan.id))
        }
    };
    let dns = if vlan.dns.is_empty() {
        vlan.gateway.into_iter().collect()
    } else {
        vlan.dns.clone()
    };
    let net = NetPlan {
        iface: iface.into(),
        vlan: tagged,
        address: match h.address {
            Address::Static(ip) => Some(format!("{ip}/{}", vlan.subnet.prefix)),
            Address::Dhcp => None,
        },
        gateway: match h.address {
            Address::Static(ip) if Some(ip) != vlan.gateway => vlan.gateway,
            _ => None,
        },
        dns,
        search: topo.cluster.search.clone(),
    };
    let wifi = match (&h.wifi, h.link) {
        (Some(w), Link::Wifi) => {
            let psk = match &w.passphrase {
                Some(src) => Some(
                    src.read_in(&topo.base_dir)
                        .map_err(|e| ImageError::HostConfig {
                            host: h.name.clone(),
                            // A sops error says which file, which key and what to do itself.
                            message: if e.is_sops() {
                                format!("the passphrase of Wi-Fi {:?}: {e}", w.ssid)
                            } else {
                                format!(
                                    "the passphrase of Wi-Fi {:?} comes from the {src}, which is not available: provide it (or change wifi.passphrase in the topology); without it the Pi cannot join the network",
                                    w.ssid
                                )
                            },
                        })?
                        .expose()
                        .to_owned(),
                ),
                None => None,
            };
            Some(WifiPlan {
                ssid: w.ssid.clone(),
                psk,
                country: topo.cluster.wifi_country.clone(),
            })
        }
        (None, Link::Wifi) => {
            return Err(ImageError::HostConfig {
                host: h.name.clone(),
                message: "link = \"wifi\" without a wifi = { ssid = ... } entry in the topology"
                    .into(),
            });
        }
        _ => None,
    };
    let (token, token_note, token_error) = match bootstrap::token::JoinToken::from_source(
        topo.token_source(&h.name),
        &topo.base_dir,
    ) {
        Ok(t) => (
            Some(format!("{}\n", t.secret().expose()).into_bytes()),
            None,
            None,
        ),
        Err(e) if e.is_sops() => (None, None, Some(e.to_string())),
        Err(e) => (None, Some(format!("no join token baked in ({e})")), None),
    };
    Ok(Planned {
        plan: HostPlan {
            name: h.name.clone(),
            board: h.board.clone(),
            node,
            net,
            wifi,
            ssh_keys: h.ssh_keys.clone(),
            router: match topo.router.as_ref().filter(|r| r.host == h.name) {
                Some(r) => {
                    let mut plan = crate::router::RouterPlan::new(topo, r);
                    (plan.node_tokens, plan.node_token_notes) = crate::router::node_tokens(topo)?;
                    Some(plan)
                }
                None => None,
            },
        },
        token,
        token_note,
        token_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"
[cluster]
name = "t"
server = "https://10.10.10.1:6443"
search = ["lab.example"]
wifi_country = "DE"
phone_vlan = "INFRA"
token = { file = "no-such-token-file" }

[[vlan]]
name = "INFRA"
id = 10
subnet = "10.10.10.0/24"
gateway = "10.10.10.1"
dns = ["10.10.10.53"]

[[vlan]]
name = "IOT"
id = 40
subnet = "10.10.40.0/24"
gateway = "10.10.40.1"

[[host]]
name = "trunk-pi"
board = "rpi4"
role = "agent"
link = "ethernet"
vlan = "IOT"
tagged = true
address = "dhcp"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample me@laptop"]

[[host]]
name = "open-wifi"
board = "rpi3a"
role = "agent"
link = "wifi"
vlan = "INFRA"
address = "10.10.10.20"
wifi = { ssid = "guest" }
"#;

    fn board(name: &str) -> Board {
        crate::board::Registry::builtin()
            .unwrap()
            .get(name)
            .unwrap()
            .clone()
    }

    fn topo() -> Topology {
        Topology::from_toml_str(TOPO, "test.toml", Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn tagged_dhcp_host_gets_a_vlan_netdev_and_dhcp_on_it() {
        let p = plan_from(&topo(), &board("rpi4"), Some("trunk-pi")).unwrap();
        assert_eq!(p.plan.net.l3_iface(), "eth0.40");
        assert!(
            p.token.is_none() && p.token_note.is_some(),
            "unreadable token source: no token, a note"
        );
        let files = p.plan.networkd_files();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "10-armfleet-eth0.40.netdev",
                "20-armfleet-eth0.network",
                "30-armfleet-eth0.40.network"
            ]
        );
        assert!(files[0].1.contains("Kind=vlan") && files[0].1.contains("Id=40"));
        assert!(files[1].1.contains("VLAN=eth0.40"));
        assert!(files[2].1.contains("DHCP=yes") && !files[2].1.contains("Address="));
        // No DNS list on the IOT VLAN: the gateway serves DNS.
        assert!(files[2].1.contains("DNS=10.10.40.1"), "{}", files[2].1);
        assert_eq!(p.plan.ssh_keys.len(), 1);
    }

    #[test]
    fn open_wifi_host_gets_key_mgmt_none_and_the_cluster_country() {
        let p = plan_from(&topo(), &board("rpi3a"), None).unwrap();
        assert_eq!(p.plan.name, "open-wifi", "first host of the board");
        let conf = p.plan.wpa_supplicant_conf().unwrap();
        assert!(
            conf.contains("country=DE")
                && conf.contains("key_mgmt=NONE")
                && conf.contains("ssid=\"guest\""),
            "{conf}"
        );
        let files = p.plan.networkd_files();
        assert!(
            files[0].1.contains("Address=10.10.10.20/24")
                && files[0].1.contains("Gateway=10.10.10.1")
        );
        assert!(files[0].1.contains("Domains=lab.example"));
    }

    #[test]
    fn an_ssid_that_would_break_out_of_its_quotes_is_refused() {
        // In the topology: refused at the key, with its line.
        for ssid in [
            r#"lab\"\nnetwork={\n ssid=\"evil"#,
            "two\\nlines",
            "quote\\\"",
        ] {
            let text = TOPO.replace("ssid = \"guest\"", &format!("ssid = \"{ssid}\""));
            assert_ne!(text, TOPO);
            let e = Topology::from_toml_str(&text, "test.toml", Path::new("/nonexistent"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("wifi.ssid") && e.contains("double quote") && e.contains("test.toml:"),
                "{ssid}: {e}"
            );
        }
        // And in a plan built any other way: refused before anything is written.
        let mut p = plan_from(&topo(), &board("rpi3a"), None).unwrap().plan;
        p.wifi.as_mut().unwrap().ssid = "lab\"\nctrl_interface=/tmp/x".into();
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("double quote"), "{e}");
    }

    #[test]
    fn a_non_ascii_ssh_key_is_an_error_not_a_panic() {
        let mut p = plan_from(&topo(), &board("rpi4"), Some("trunk-pi"))
            .unwrap()
            .plan;
        // 19 ASCII bytes then a two-byte character straddling byte 20.
        p.ssh_keys = vec!["AAAAAAAAAAAAAAAAAAAé ключ".into()];
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("not an OpenSSH public key line"), "{e}");
    }

    #[test]
    fn host_of_another_board_is_refused_with_the_right_command() {
        let e = plan_from(&topo(), &board("rpi3a"), Some("trunk-pi")).unwrap_err();
        assert!(
            e.to_string()
                .contains("run `imagegen rpi4 --host trunk-pi`"),
            "{e}"
        );
    }

    #[test]
    fn embedded_default_gives_rpi4_2_and_rpi3a_ctl() {
        let t = Topology::embedded_default();
        let p = plan_from(&t, &board("rpi4"), None).unwrap();
        assert_eq!(p.plan.name, "rpi4-2");
        assert_eq!(
            p.plan.node.server.token_drop.as_deref(),
            Some(Path::new("/boot/firmware/armfleet-token"))
        );
    }

    #[test]
    fn a_host_with_its_own_token_gets_that_one_baked() {
        let dir = tempfile::tempdir().unwrap();
        let own = format!("K10{}::a1b2c3.0123456789abcdef\n", "ab".repeat(32));
        std::fs::write(dir.path().join("own.token"), &own).unwrap();
        let text = TOPO.replace(
            "name = \"trunk-pi\"\n",
            "name = \"trunk-pi\"\ntoken = { file = \"own.token\" }\n",
        );
        let t = Topology::from_toml_str(&text, "test.toml", dir.path()).unwrap();
        let p = plan_from(&t, &board("rpi4"), Some("trunk-pi")).unwrap();
        assert_eq!(
            p.token.as_deref(),
            Some(own.as_bytes()),
            "the host's own token, not the cluster's (unreadable here)"
        );
    }

    #[test]
    fn nodes_own_tokens_are_collected_for_the_router_and_one_id_is_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let write = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
        write("a.token", "aaaaaa.0123456789abcdef\n");
        write("b.token", "K10::node:password-not-bootstrap\n");
        write("c.token", "aaaaaa.fedcba9876543210\n");
        let with = |rpi4_2: &str, phone: &str| {
            let text = bootstrap::topology::DEFAULT_TOPOLOGY
                .replace(
                    "name = \"rpi4-2\"\n",
                    &format!("name = \"rpi4-2\"\ntoken = {{ file = \"{rpi4_2}\" }}\n"),
                )
                .replace(
                    "name = \"phone-1\"\n",
                    &format!("name = \"phone-1\"\ntoken = {{ file = \"{phone}\" }}\n"),
                );
            Topology::from_toml_str(&text, "lab.toml", dir.path()).unwrap()
        };
        let t = with("a.token", "b.token");
        let p = plan_from(&t, &board("rpi4"), Some("rpi4-1")).unwrap();
        let r = p.plan.router.unwrap();
        let got: Vec<(&str, &str, &str)> = r
            .node_tokens
            .iter()
            .map(|n| (n.node.as_str(), n.key.as_str(), n.id.as_str()))
            .collect();
        assert_eq!(got, [("rpi4-2", "host[1].token", "aaaaaa")]);
        assert!(
            r.node_token_notes.len() == 1
                && r.node_token_notes[0]
                    .contains("phone-1's own token (phone[0].token) is not a k3s bootstrap token"),
            "{:?}",
            r.node_token_notes
        );
        // Another file: a note, not an error; the same id twice: refused, both named.
        let t = with("a.token", "missing.token");
        let p = plan_from(&t, &board("rpi4"), Some("rpi4-1")).unwrap();
        assert!(p.plan.router.unwrap().node_token_notes[0].contains("is not registered"));
        let t = with("a.token", "c.token");
        let e = plan_from(&t, &board("rpi4"), Some("rpi4-1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rpi4-2 (host[1].token) and phone-1 (phone[0].token) have bootstrap tokens with the same id aaaaaa"),
            "{e}"
        );
        assert!(
            !e.contains("0123456789abcdef") && !e.contains("fedcba"),
            "{e}"
        );
        // A worker's plan does not read the others' tokens.
        let p = plan_from(&t, &board("rpi4"), Some("rpi4-2")).unwrap();
        assert!(p.plan.router.is_none());
    }

    #[test]
    fn the_router_host_gets_the_router_plan_and_a_server_node() {
        let t = Topology::embedded_default();
        let p = plan_from(&t, &board("rpi4"), Some("rpi4-1")).unwrap();
        let r = p.plan.router.as_ref().expect("rpi4-1 is the router");
        assert_eq!(
            p.plan.node.k3s.role,
            bootstrap::node_config::K3sRole::Server
        );
        assert_eq!(r.mirror_k3s_name.as_deref(), Some("k3s-arm64"));
        assert!(
            r.summary
                .policy
                .iter()
                .any(|l| l.starts_with("INFRA -> rpi4-1: tcp/22 tcp/6443"))
        );
        let p = plan_from(&t, &board("rpi4"), Some("rpi4-2")).unwrap();
        assert!(p.plan.router.is_none(), "a worker is not the router");
    }
}
