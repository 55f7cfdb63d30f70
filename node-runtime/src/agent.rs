//! The `k3s agent` command line, built from `node.toml` alone, so the supervisor can tell on
//! SIGHUP whether a restart is needed (the arguments changed) or not.
//!
//! The token is passed as `--token-file PATH`: its value never appears in argv or in the
//! environment, where any user could read it through `/proc/PID/cmdline` or `/proc/PID/environ`.

use bootstrap::NodeConfig;
use bootstrap::node_config::K3sRole;
use bootstrap::status::CgroupLayout;
use std::net::IpAddr;

/// Why the agent cannot be started with this config.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The interface named by `network.iface` does not exist or has no address.
    #[error(
        "network.iface {iface:?} has no IPv4 address (interfaces with one: {seen}): connect the network, fix network.iface, or pin network.node_ip"
    )]
    NoAddress {
        /// The interface.
        iface: String,
        /// Interfaces that do have an address.
        seen: String,
    },
}

/// The agent's argv (without the program), given the node IP to pass.
/// The kubelet argument that lets Kubernetes 1.35+ run on cgroup v1 (`failCgroupV1` defaults to
/// true since KEP-5573, and the kubelet exits on a v1 or hybrid host).
pub const FAIL_CGROUP_V1_OFF: &str = "fail-cgroupv1=false";

/// The `k3s agent` command line. `cgroups` is the layout the agent runs on: anything but v2
/// gets [`FAIL_CGROUP_V1_OFF`].
pub fn agent_args(
    config: &NodeConfig,
    node_ip: Option<IpAddr>,
    cgroups: CgroupLayout,
) -> Vec<String> {
    let server = config.k3s.role == K3sRole::Server;
    let mut a: Vec<String> = vec![config.k3s.role.command().into()];
    let mut flag = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    if server {
        // The server is the one at server.url: it names that address in its certificate, sets
        // the cluster's networks, and keeps its kubeconfig (cluster-admin) to root.
        if let Some(host) = url_host(&config.server.url) {
            flag("--tls-san", host);
        }
        flag("--cluster-cidr", config.network.pod_cidr.clone());
        flag("--service-cidr", config.network.service_cidr.clone());
        flag("--write-kubeconfig-mode", "0600".into());
    } else {
        flag("--server", config.server.url.clone());
    }
    flag(
        "--token-file",
        config.server.token_file.display().to_string(),
    );
    flag("--node-name", config.node.name.clone());
    for (k, v) in &config.labels {
        flag("--node-label", format!("{k}={v}"));
    }
    for t in &config.taints {
        flag("--node-taint", t.clone());
    }
    if let Some(ip) = node_ip {
        flag("--node-ip", ip.to_string());
    }
    if let Some(iface) = &config.network.iface {
        flag("--flannel-iface", iface.clone());
    }
    flag("--data-dir", config.k3s.data_dir.display().to_string());
    if !config.network.nameservers.is_empty() {
        flag("--resolv-conf", RESOLV_CONF.into());
    }
    if let Some(s) = &config.k3s.snapshotter {
        flag("--snapshotter", s.clone());
    }
    for k in &config.k3s.kubelet_args {
        flag("--kubelet-arg", k.clone());
    }
    let said = config
        .k3s
        .kubelet_args
        .iter()
        .any(|k| k.starts_with("fail-cgroupv1="));
    if cgroups != CgroupLayout::V2 && !said {
        flag("--kubelet-arg", FAIL_CGROUP_V1_OFF.into());
    }
    a.extend(config.k3s.extra_args.iter().cloned());
    a
}

/// The host part of `https://host:port`, without brackets for IPv6.
fn url_host(url: &str) -> Option<String> {
    bootstrap::url::split(url).map(|p| p.host.to_owned())
}

/// The resolv.conf node-runtime writes from `network.nameservers` (in the worker's root).
pub const RESOLV_CONF: &str = "/etc/armfleet/resolv.conf";

/// The text of that resolv.conf.
pub fn resolv_conf_text(config: &NodeConfig) -> Option<String> {
    if config.network.nameservers.is_empty() {
        return None;
    }
    let mut s = String::from("# written by node-runtime from node.toml [network]\n");
    for ns in &config.network.nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !config.network.search.is_empty() {
        s.push_str(&format!("search {}\n", config.network.search.join(" ")));
    }
    Some(s)
}

/// The node IP: pinned in the config, else the first IPv4 address of `network.iface`, else none
/// (k3s picks from the default route, which works on a Pi).
pub fn node_ip(config: &NodeConfig) -> Result<Option<IpAddr>, AgentError> {
    if let Some(ip) = config.network.node_ip {
        return Ok(Some(ip));
    }
    let Some(iface) = &config.network.iface else {
        return Ok(None);
    };
    let addrs = interface_addresses();
    if let Some((_, ip)) = addrs.iter().find(|(n, ip)| n == iface && ip.is_ipv4()) {
        return Ok(Some(*ip));
    }
    let mut seen: Vec<String> = addrs
        .iter()
        .filter(|(_, ip)| ip.is_ipv4())
        .map(|(n, ip)| format!("{n} {ip}"))
        .collect();
    seen.dedup();
    Err(AgentError::NoAddress {
        iface: iface.clone(),
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

/// Every (interface, address) pair of this machine, from getifaddrs.
pub fn interface_addresses() -> Vec<(String, IpAddr)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter_map(|ifa| {
        let addr = ifa.address?;
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            return None;
        };
        Some((ifa.interface_name, ip))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
[node]
name = "phone-1"
kind = "phone"
[server]
url = "https://10.10.0.1:6443"
token_file = "/etc/armfleet/token"
[k3s]
kubelet_args = ["max-pods=30"]
extra_args = ["--disable-apiserver-lb"]
[network]
iface = "lo"
nameservers = ["10.10.0.1"]
[labels]
"armfleet.io/kind" = "phone"
"#;

    #[test]
    fn the_server_is_started_as_the_server_of_its_url() {
        let mut c = NodeConfig::from_toml_str(CONF, "t").unwrap();
        c.k3s.role = K3sRole::Server;
        let a = agent_args(&c, Some("10.10.0.1".parse().unwrap()), CgroupLayout::Hybrid).join(" ");
        assert!(a.starts_with("server --tls-san 10.10.0.1 --cluster-cidr 10.42.0.0/16 --service-cidr 10.43.0.0/16 --write-kubeconfig-mode 0600 --token-file /etc/armfleet/token"), "{a}");
        assert!(!a.contains("--server"), "{a}");
        assert!(a.contains("--kubelet-arg fail-cgroupv1=false"), "{a}");
        assert_eq!(
            url_host("https://[fd00::1]:6443").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(url_host("https://k3s.lab:6443").as_deref(), Some("k3s.lab"));
    }

    #[test]
    fn args_carry_every_setting_and_no_token() {
        let mut c = NodeConfig::from_toml_str(CONF, "t").unwrap();
        c.taints.push("armfleet.io/battery=true:NoSchedule".into());
        let ip = node_ip(&c).unwrap();
        assert_eq!(ip, Some("127.0.0.1".parse().unwrap()));
        let a = agent_args(&c, ip, CgroupLayout::V2);
        let joined = a.join(" ");
        assert!(joined.starts_with("agent --server https://10.10.0.1:6443 --token-file /etc/armfleet/token --node-name phone-1"), "{joined}");
        for want in [
            "--node-label armfleet.io/kind=phone",
            "--node-taint armfleet.io/battery=true:NoSchedule",
            "--node-ip 127.0.0.1",
            "--flannel-iface lo",
            "--data-dir /var/lib/rancher/k3s",
            "--resolv-conf /etc/armfleet/resolv.conf",
            "--kubelet-arg max-pods=30",
        ] {
            assert!(joined.contains(want), "missing {want}: {joined}");
        }
        assert!(joined.ends_with("--disable-apiserver-lb"));
        assert!(!a.iter().any(|x| x == "--token"));
        assert!(!joined.contains("fail-cgroupv1"), "v2 needs no override");
    }

    #[test]
    fn v1_and_hybrid_layouts_tell_the_kubelet_to_run_anyway() {
        let c = NodeConfig::from_toml_str(CONF, "t").unwrap();
        for layout in [CgroupLayout::V1, CgroupLayout::Hybrid] {
            let a = agent_args(&c, None, layout).join(" ");
            assert!(
                a.contains("--kubelet-arg fail-cgroupv1=false"),
                "{layout}: {a}"
            );
        }
        // The owner's own choice in node.toml stands.
        let mut c = c;
        c.k3s.kubelet_args.push("fail-cgroupv1=true".into());
        let a = agent_args(&c, None, CgroupLayout::V1).join(" ");
        assert!(
            a.contains("fail-cgroupv1=true") && !a.contains("fail-cgroupv1=false"),
            "{a}"
        );
    }

    #[test]
    fn missing_interface_is_named() {
        let c = NodeConfig::from_toml_str(&CONF.replace("\"lo\"", "\"wlan9\""), "t").unwrap();
        let e = node_ip(&c).unwrap_err().to_string();
        assert!(e.contains("wlan9") && e.contains("lo 127.0.0.1"), "{e}");
    }
}
