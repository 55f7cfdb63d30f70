//! The topology: the embedded default lab validates and gives the right node.toml per worker;
//! each mistake names the file, the line and the key.

use bootstrap::NodeConfig;
use bootstrap::node_config::NodeKind;
use bootstrap::topology::{Address, DEFAULT_TOPOLOGY, Link, PHONE_TAINT, Role, Topology};
use std::net::IpAddr;
use std::path::PathBuf;

#[test]
fn embedded_default_is_the_lab() {
    let t = Topology::embedded_default();
    assert_eq!(t.cluster.server, "https://10.10.10.1:6443");
    let names: Vec<(&str, u16)> = t.vlans.iter().map(|v| (v.name.as_str(), v.id)).collect();
    assert_eq!(
        names,
        [("INFRA", 10), ("PRO", 20), ("PERSO", 30), ("IOT", 40)]
    );
    let r1 = t.host("rpi4-1").unwrap();
    assert_eq!((r1.board.as_str(), r1.role), ("rpi4", Role::Server));
    let r2 = t.host("rpi4-2").unwrap();
    assert_eq!((r2.link, r2.vlan.as_str()), (Link::Ethernet, "INFRA"));
    let r3 = t.host("rpi3a-ctl").unwrap();
    assert_eq!((r3.board.as_str(), r3.link), ("rpi3a", Link::Wifi));
    assert_eq!(r3.wifi.as_ref().unwrap().ssid, "armlab-infra");
    assert_eq!(t.first_host_of_board("rpi4").unwrap().name, "rpi4-2");
    assert_eq!(t.first_host_of_board("rpi3a").unwrap().name, "rpi3a-ctl");
    assert!(t.phone("phone-1").is_some());
    assert!(t.cluster.k3s.sha256.is_some());
}

#[test]
fn pi_node_config_from_the_topology() {
    let t = Topology::embedded_default();
    let c = NodeConfig::for_host(&t, "rpi4-2").unwrap();
    assert_eq!(c.node.kind, NodeKind::Pi);
    assert_eq!(c.node.name, "rpi4-2");
    assert_eq!(c.server.url, "https://10.10.10.1:6443");
    assert_eq!(
        c.server.token_drop,
        Some(PathBuf::from("/boot/firmware/armfleet-token"))
    );
    assert_eq!(c.network.iface.as_deref(), Some("eth0"));
    assert_eq!(
        c.network.node_ip,
        Some("10.10.10.12".parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        c.network.nameservers,
        vec!["10.10.10.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(c.labels["armfleet.io/board"], "rpi4");
    assert_eq!(c.labels["armfleet.io/vlan"], "infra");
    assert!(c.taints.is_empty());
    assert!(c.chroot.is_none() && c.power.is_none());
    assert_eq!(c.k3s.sha256, t.cluster.k3s.sha256);
    // What imagegen writes, node-runtime reads back identically.
    let back = NodeConfig::from_toml_str(&c.to_toml_string(), "node.toml").unwrap();
    assert_eq!(back, c);

    let wifi = NodeConfig::for_host(&t, "rpi3a-ctl").unwrap();
    assert_eq!(wifi.network.iface.as_deref(), Some("wlan0"));
    assert_eq!(wifi.labels["armfleet.io/link"], "wifi");

    let server = NodeConfig::for_host(&t, "rpi4-1").unwrap();
    assert_eq!(server.k3s.role, bootstrap::node_config::K3sRole::Server);
    assert_eq!(server.network.iface.as_deref(), Some("eth0.10"));
    assert!(server.to_toml_string().contains("role = \"server\""));
    let err = NodeConfig::for_host(&t, "rpi9").unwrap_err().to_string();
    assert!(err.contains("rpi9") && err.contains("rpi4-2"), "{err}");
}

#[test]
fn phone_node_config_from_the_topology_and_for_a_new_phone() {
    let t = Topology::embedded_default();
    let c = NodeConfig::for_phone(&t, "phone-1").unwrap();
    assert_eq!(c.node.kind, NodeKind::Phone);
    assert_eq!(
        c.chroot.as_ref().unwrap().root,
        PathBuf::from("/data/armfleet/rootfs")
    );
    assert_eq!(
        c.chroot.as_ref().unwrap().hostname.as_deref(),
        Some("phone-1")
    );
    let img = c.k3s.data_image.as_ref().unwrap();
    assert_eq!(img.path, PathBuf::from("/data/armfleet/k3s-data.img"));
    assert!(img.size_mib >= 1024);
    assert_eq!(c.taints, vec![PHONE_TAINT.to_string()]);
    assert_eq!(c.labels["armfleet.io/kind"], "phone");
    assert_eq!(c.labels["armfleet.io/battery"], "true");
    assert_eq!(c.network.iface.as_deref(), Some("wlan0"));
    assert!(
        !c.network.nameservers.is_empty(),
        "Android has no resolv.conf"
    );
    assert!(c.power.is_some());
    assert_eq!(
        c.status_file,
        PathBuf::from("/var/lib/armfleet/status.json")
    );
    assert_eq!(c.logs.dir, PathBuf::from("/var/log/armfleet"));
    assert_eq!(
        c.host_path(&c.server.token_file),
        PathBuf::from("/data/armfleet/rootfs/etc/armfleet/token")
    );
    let back = NodeConfig::from_toml_str(&c.to_toml_string(), "node.toml").unwrap();
    assert_eq!(back, c);

    let err = NodeConfig::for_phone(&t, "phone-7")
        .unwrap_err()
        .to_string();
    assert!(err.contains("phone-7") && err.contains("--name"), "{err}");
    let new = NodeConfig::for_new_phone(&t, "phone-7").unwrap();
    assert_eq!(new.node.name, "phone-7");
    assert_eq!(new.taints, vec![PHONE_TAINT.to_string()]);
    assert_eq!(new.labels["armfleet.io/vlan"], "infra");
    assert_eq!(new.network.node_ip, None);
    let err = NodeConfig::for_new_phone(&t, "Phone_7")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid node name"), "{err}");
    assert!(NodeConfig::for_new_phone(&t, "rpi4-2").is_err());
}

#[test]
fn phones_are_found_by_serial() {
    let text = DEFAULT_TOPOLOGY.replace(
        "# serial = \"R58M12ABCDE\"",
        "serial = \"R58M12ABCDE\"\naddress = \"10.10.10.50\"\n#",
    );
    let text = text.replacen("address = \"dhcp\"\n", "", 1);
    let t = Topology::from_toml_str(&text, "t.toml", ".".as_ref()).unwrap();
    let p = t.phone_by_serial("R58M12ABCDE").unwrap();
    assert_eq!(p.name, "phone-1");
    assert_eq!(p.address, Address::Static("10.10.10.50".parse().unwrap()));
    assert!(t.phone_by_serial("nope").is_none());
}

#[test]
fn resolve_prefers_the_flag_then_the_environment_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab.toml");
    std::fs::write(
        &file,
        DEFAULT_TOPOLOGY.replace("name = \"armlab\"", "name = \"from-file\""),
    )
    .unwrap();
    let other = dir.path().join("env.toml");
    std::fs::write(
        &other,
        DEFAULT_TOPOLOGY.replace("name = \"armlab\"", "name = \"from-env\""),
    )
    .unwrap();
    // SAFETY: nextest runs each test in its own process; nothing else reads the environment.
    unsafe { std::env::remove_var("ARMFLEET_TOPOLOGY") };
    assert_eq!(Topology::resolve(None).unwrap().cluster.name, "armlab");
    unsafe { std::env::set_var("ARMFLEET_TOPOLOGY", &other) };
    assert_eq!(Topology::resolve(None).unwrap().cluster.name, "from-env");
    assert_eq!(
        Topology::resolve(Some(&file)).unwrap().cluster.name,
        "from-file"
    );
    assert_eq!(Topology::resolve(None).unwrap().base_dir, dir.path());
    unsafe { std::env::set_var("ARMFLEET_TOPOLOGY", dir.path().join("missing.toml")) };
    let err = Topology::resolve(None).unwrap_err().to_string();
    assert!(
        err.contains("missing.toml") && err.contains("ARMFLEET_TOPOLOGY"),
        "{err}"
    );
}

/// Applies `from → to` to the default lab, loads it from a file, and checks the error names the
/// file, the line where `to` landed, the key, and says `what`.
fn assert_bad(from: &str, to: &str, key: &str, what: &str) {
    assert!(
        DEFAULT_TOPOLOGY.contains(from),
        "fixture text {from:?} not found"
    );
    let text = DEFAULT_TOPOLOGY.replacen(from, to, 1);
    // The replacement lands where `from` was.
    let at = DEFAULT_TOPOLOGY.find(from).unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, &text).unwrap();
    let err = Topology::load(&path).unwrap_err().to_string();
    let prefix = format!("{}:{line}: ", path.display());
    assert!(err.starts_with(&prefix), "want {prefix:?}, got: {err}");
    assert!(
        err.contains(&format!("key `{key}`")),
        "want key {key}: {err}"
    );
    assert!(err.contains(what), "want {what:?}: {err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn duplicate_names_are_refused() {
    assert_bad(
        "name = \"rpi3a-ctl\"",
        "name = \"rpi4-2\"",
        "host[2].name",
        "already used on line",
    );
}

#[test]
fn duplicate_addresses_are_refused() {
    assert_bad(
        "address = \"10.10.10.13\"",
        "address = \"10.10.10.12\"",
        "host[2].address",
        "already the address of rpi4-2",
    );
}

#[test]
fn address_outside_its_vlan_is_refused() {
    assert_bad(
        "address = \"10.10.10.12\"",
        "address = \"10.10.20.12\"",
        "host[1].address",
        "outside VLAN INFRA (10.10.10.0/24)",
    );
}

#[test]
fn wifi_host_without_ssid_is_refused() {
    assert_bad(
        "wifi = { ssid = \"armlab-infra\", passphrase = { env = \"ARMFLEET_WIFI_INFRA_PSK\" } }",
        "wifi = { passphrase = { env = \"ARMFLEET_WIFI_INFRA_PSK\" } }",
        "host[2].wifi.ssid",
        "no SSID",
    );
    // No wifi table at all: the error points at `link = "wifi"`.
    assert_bad(
        "link = \"wifi\"\nvlan = \"INFRA\"\naddress = \"10.10.10.13\"\n# No Ethernet on a 3A+: the INFRA Wi-Fi network is baked into its image.\nwifi = { ssid = \"armlab-infra\", passphrase = { env = \"ARMFLEET_WIFI_INFRA_PSK\" } }",
        "link = \"wifi\"\nvlan = \"INFRA\"\naddress = \"10.10.10.13\"",
        "host[2].wifi.ssid",
        "no SSID",
    );
}

#[test]
fn unknown_board_is_refused() {
    assert_bad(
        "board = \"rpi3a\"",
        "board = \"rpi5\"",
        "host[2].board",
        "unknown board \"rpi5\": known boards are rpi3a, rpi3b-plus, rpi4",
    );
}

#[test]
fn plain_http_server_is_refused() {
    assert_bad(
        "server = \"https://10.10.10.1:6443\"",
        "server = \"http://10.10.10.1:6443\"",
        "cluster.server",
        "https",
    );
}

#[test]
fn unknown_vlan_and_bad_subnet_are_refused() {
    assert_bad(
        "vlan = \"INFRA\"\naddress = \"10.10.10.12\"",
        "vlan = \"LAB\"\naddress = \"10.10.10.12\"",
        "host[1].vlan",
        "no VLAN named \"LAB\"; the VLANs are: INFRA, PRO, PERSO, IOT",
    );
    assert_bad(
        "subnet = \"10.10.20.0/24\"",
        "subnet = \"10.10.20.1/24\"",
        "vlan[1].subnet",
        "host bits",
    );
    assert_bad("id = 40", "id = 20", "vlan[3].id", "already VLAN PRO");
}

#[test]
fn unknown_key_names_its_line() {
    let text = DEFAULT_TOPOLOGY.replacen("tagged = true", "taged = true", 1);
    let line = text[..text.find("taged").unwrap()].matches('\n').count() + 1;
    let err = Topology::from_toml_str(&text, "lab.toml", ".".as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!("lab.toml:{line}: ")), "{err}");
    assert!(err.contains("taged"), "{err}");
}

#[test]
fn a_node_may_have_its_own_token_but_the_server_may_not() {
    let text = DEFAULT_TOPOLOGY.replace(
        "name = \"phone-1\"\n",
        "name = \"phone-1\"\ntoken = { file = \"tokens/phone-1\" }\n",
    );
    let t = Topology::from_toml_str(&text, "lab.toml", std::path::Path::new(".")).unwrap();
    assert_eq!(
        t.token_source("phone-1"),
        &bootstrap::token::SecretSource::File("tokens/phone-1".into())
    );
    assert_eq!(t.token_source("rpi4-2"), &t.cluster.token);
    let text = DEFAULT_TOPOLOGY.replace(
        "role = \"server\"\n",
        "role = \"server\"\ntoken = { env = \"T\" }\n",
    );
    let e = Topology::from_toml_str(&text, "lab.toml", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `host[0].token`") && e.contains("the server runs with cluster.token"),
        "{e}"
    );
}

#[test]
fn an_airgap_archive_is_pinned_like_the_binary() {
    let with = |a: &str| {
        let text =
            DEFAULT_TOPOLOGY.replace("[cluster.k3s]\n", &format!("[cluster.k3s]\nairgap = {a}\n"));
        Topology::from_toml_str(&text, "lab.toml", std::path::Path::new("."))
    };
    let sha = "ab".repeat(32);
    let t = with(&format!(
        "{{ url = \"https://example.org/k3s-airgap-images-arm64.tar.zst\", sha256 = \"{sha}\" }}"
    ))
    .unwrap();
    assert_eq!(t.cluster.k3s.airgap.as_ref().unwrap().sha256, sha);
    // Workers take it from the router's mirror; the server has it in its own image.
    let worker = NodeConfig::for_host(&t, "rpi4-2").unwrap();
    let airgap = worker.k3s.airgap.as_ref().unwrap();
    assert_eq!(
        airgap.url,
        "http://rpi4-1.lab.home.arpa:8080/k3s-airgap-images-arm64.tar.zst"
    );
    assert_eq!(airgap.sha256, sha);
    assert_eq!(
        NodeConfig::for_phone(&t, "phone-1").unwrap().k3s.airgap,
        worker.k3s.airgap
    );
    assert_eq!(NodeConfig::for_host(&t, "rpi4-1").unwrap().k3s.airgap, None);
    // No mirror, nothing to fetch it from on the LAN: the workers pull images as before.
    let no_mirror = Topology::from_toml_str(
        &DEFAULT_TOPOLOGY
            .replace("[cluster.k3s]\n", &format!("[cluster.k3s]\nairgap = {{ url = \"https://example.org/a.tar.zst\", sha256 = \"{sha}\" }}\n"))
            .lines()
            .filter(|l| !l.starts_with("mirror ="))
            .collect::<Vec<_>>()
            .join("\n"),
        "lab.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    assert_eq!(no_mirror.cluster.mirror, None);
    assert_eq!(
        NodeConfig::for_host(&no_mirror, "rpi4-2")
            .unwrap()
            .k3s
            .airgap,
        None
    );
    let e = with("{ url = \"https://example.org/a.tar.zst\", sha256 = \"nope\" }")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cluster.k3s.airgap.sha256") && e.contains("64 hex"),
        "{e}"
    );
    let e = with(&format!("{{ url = \"ftp://x/a\", sha256 = \"{sha}\" }}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.k3s.airgap.url"), "{e}");
}
