//! The router's generated files checked by the programs that read them on the router (Debian's
//! `nft` and `dnsmasq`, the same versions as in the node rootfs), and the server image's refusals.
//! The ruleset is loaded for real, in a network namespace this test makes.

use armfleet_tests::fixtures::{mini_node_rootfs, offline_topology};
use armfleet_tests::util::{aarch64_bin, cache_dir, host_bin, output_text, root_fs_debugfs};
use bootstrap::topology::Topology;
use std::path::Path;
use std::process::Command;

fn default_lab() -> Topology {
    Topology::from_toml_str(
        bootstrap::topology::DEFAULT_TOPOLOGY,
        "default.toml",
        Path::new("."),
    )
    .unwrap()
}

/// The default lab plus rules of every target kind: an address, a subnet, a host, port ranges.
fn busy_lab() -> Topology {
    let extra = r#"
[[router.allow]]
from = "IOT"
to = "10.10.10.20"
ports = ["tcp/1883", "udp/5683-5684"]
why = "MQTT and CoAP"

[[router.allow]]
from = "PRO"
to = "rpi4-2"
ports = ["tcp/8000-8100"]

[[router.allow]]
from = "INFRA"
to = "10.10.40.0/24"
"#;
    Topology::from_toml_str(
        &format!("{}{extra}", bootstrap::topology::DEFAULT_TOPOLOGY),
        "busy.toml",
        Path::new("."),
    )
    .unwrap()
}

#[test]
fn the_ruleset_loads_in_nft_and_drops_by_default() {
    for lab in [default_lab(), busy_lab()] {
        let r = lab.router.as_ref().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nftables.conf");
        std::fs::write(&file, r.nftables_conf(&lab)).unwrap();
        // Loaded twice: the second load must replace the table, not fail or duplicate it.
        let o = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg(format!(
                "nft -f {f} && nft -f {f} && nft list ruleset",
                f = file.display()
            ))
            .output()
            .expect("run unshare + nft (scripts/setup.sh installs nftables)");
        let listed = output_text(&o);
        assert!(o.status.success(), "{}:\n{listed}", lab.origin);
        assert_eq!(listed.matches("table inet armfleet").count(), 1, "{listed}");
        assert!(
            listed.contains("hook forward priority filter; policy drop;"),
            "{listed}"
        );
        assert!(
            listed.contains("hook input priority filter; policy drop;"),
            "{listed}"
        );
        assert!(listed.contains("masquerade"), "{listed}");
        if lab.origin == "busy.toml" {
            assert!(
                listed.contains("ip daddr 10.10.10.20 tcp dport 1883 accept")
                    && listed.contains("udp dport 5683-5684 accept"),
                "{listed}"
            );
            assert!(
                listed.contains("ip daddr 10.10.10.12 tcp dport 8000-8100"),
                "{listed}"
            );
        }
    }
}

#[test]
fn dnsmasq_accepts_the_generated_configuration() {
    let lab = busy_lab();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dnsmasq.conf");
    std::fs::write(&file, lab.router.as_ref().unwrap().dnsmasq_conf(&lab)).unwrap();
    let o = Command::new("dnsmasq")
        .arg("--test")
        .arg(format!("--conf-file={}", file.display()))
        .output()
        .expect("run dnsmasq (scripts/setup.sh installs dnsmasq-base)");
    let said = output_text(&o);
    assert!(
        o.status.success() && said.contains("syntax check OK"),
        "{said}"
    );
}

fn imagegen(args: &[&str]) -> std::process::Output {
    Command::new(host_bin("imagegen", "imagegen"))
        .args(args)
        .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
        .env("ARMFLEET_TOPOLOGY", offline_topology())
        .env("ARMFLEET_WIFI_INFRA_PSK", "lab-wifi-passphrase")
        .output()
        .unwrap()
}

#[test]
fn the_server_image_needs_the_ca_its_token_names() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("K10{}::server:secret\n", "ab".repeat(32))).unwrap();
    let out = dir.path().join("rpi4-1.img");
    let rootfs = mini_node_rootfs();
    let k3s = aarch64_bin("k3s-standin");
    let base = [
        "rpi4",
        "--host",
        "rpi4-1",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--k3s",
        k3s.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let o = imagegen(&base);
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(said.contains("pass --server-ca DIR"), "{said}");
    assert!(!said.contains("secret"), "the token never shows: {said}");
    assert!(!out.exists(), "nothing written on a refusal");

    // A CA, but not the one the token names.
    let ca = dir.path().join("ca");
    armfleet_tests::k3s_server::custom_ca_dir(&ca);
    let mut args = base.to_vec();
    args.extend(["--server-ca", ca.to_str().unwrap()]);
    let o = imagegen(&args);
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(said.contains("agents would refuse this server"), "{said}");
    assert!(!out.exists(), "nothing written on a refusal");
}

/// Each node's own bootstrap token, named in the topology, reaches the server's image as the
/// manifest k3s applies at start (the Secret `k3s token create` makes), readable by root alone;
/// `inspect` names the node and the token id, never the secret; a token naming another CA than
/// the server's is refused with one line that names the node and the key, and nothing is written.
#[test]
fn the_server_image_registers_each_nodes_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let ca_pem = armfleet_tests::k3s_server::custom_ca_dir(&d("ca"));
    let hash = bootstrap::token::hash_ca(ca_pem.as_bytes());
    std::fs::write(d("token"), format!("K10{hash}::server:cluster-secret\n")).unwrap();
    std::fs::write(
        d("rpi4-2.token"),
        format!("K10{hash}::r2abcd.0123456789abcdef\n"),
    )
    .unwrap();
    // A phone whose own token is a password, not a bootstrap token: a note, not a manifest.
    std::fs::write(
        d("phone-1.token"),
        format!("K10{hash}::node:phone-password\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(offline_topology())
        .unwrap()
        .replace(
            "name = \"rpi4-2\"\n",
            "name = \"rpi4-2\"\ntoken = { file = \"rpi4-2.token\" }\n",
        )
        .replace(
            "name = \"phone-1\"\n",
            "name = \"phone-1\"\ntoken = { file = \"phone-1.token\" }\n",
        );
    assert_eq!(text.matches(".token\" }").count(), 2, "both entries found");
    let topology = d("lab.toml");
    std::fs::write(&topology, text).unwrap();
    let out = d("rpi4-1.img");
    let rootfs = mini_node_rootfs();
    let k3s = aarch64_bin("k3s-standin");
    let build = |ca: &Path| {
        imagegen(&[
            "rpi4",
            "--host",
            "rpi4-1",
            "--topology",
            topology.to_str().unwrap(),
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--k3s",
            k3s.to_str().unwrap(),
            "--token-file",
            d("token").to_str().unwrap(),
            "--server-ca",
            ca.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let o = build(&d("ca"));
    let said = output_text(&o);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("nodes' own tokens registered at the server's start: rpi4-2 (r2abcd)")
            && said.contains("phone-1's own token (phone[0].token) is not a k3s bootstrap token"),
        "{said}"
    );
    let shown = output_text(&imagegen(&["inspect", out.to_str().unwrap()]));
    let manifest = "/var/lib/rancher/k3s/server/manifests/armfleet-node-token-rpi4-2.json";
    assert!(
        shown.contains(&format!(
            "rpi4-2: bootstrap token r2abcd (host[1].token), registered by k3s at start from {manifest}"
        )),
        "{shown}"
    );
    for text in [&said, &shown] {
        assert!(
            !text.contains("0123456789abcdef") && !text.contains("phone-password"),
            "no secret is shown: {text}"
        );
    }
    let stat = root_fs_debugfs(&out, &d("root.ext4"), &format!("stat {manifest}"));
    assert!(
        stat.contains("Mode:  0600") && stat.contains("User:     0"),
        "{stat}"
    );
    let dir_stat = root_fs_debugfs(
        &out,
        &d("root.ext4"),
        "stat /var/lib/rancher/k3s/server/manifests",
    );
    assert!(dir_stat.contains("Mode:  0700"), "{dir_stat}");
    let json = root_fs_debugfs(&out, &d("root.ext4"), &format!("cat {manifest}"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["metadata"]["name"], "bootstrap-token-r2abcd");
    assert_eq!(v["stringData"]["token-secret"], "0123456789abcdef");
    assert_eq!(
        v["stringData"]["auth-extra-groups"],
        "system:bootstrappers:k3s:default-node-token"
    );
    let none = root_fs_debugfs(
        &out,
        &d("root.ext4"),
        "stat /var/lib/rancher/k3s/server/manifests/armfleet-node-token-phone-1.json",
    );
    assert!(
        !none.contains("Mode:"),
        "no manifest for a password token: {none}"
    );
    std::fs::remove_file(&out).unwrap();

    // The server's CA is another than the one rpi4-2's token names.
    let other = d("other-ca");
    let other_hash =
        bootstrap::token::hash_ca(armfleet_tests::k3s_server::custom_ca_dir(&other).as_bytes());
    std::fs::write(
        d("token"),
        format!("K10{other_hash}::server:cluster-secret\n"),
    )
    .unwrap();
    let o = build(&other);
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(
        said.contains("rpi4-2's own token (")
            && said.contains("key `host[1].token`")
            && said.contains(&format!("make it K10{other_hash}::r2abcd.<secret>")),
        "{said}"
    );
    assert!(!said.contains("0123456789abcdef"), "{said}");
    assert!(!out.exists(), "nothing written on a refusal");
}

/// The generated ruleset judged by the kernel on real traffic: a router namespace with one
/// interface per VLAN (named as on the router, `eth0.<id>`) and the uplink, a namespace per VLAN
/// behind it and one for "the internet"; TCP and UDP probes from each VLAN, each expected to be
/// answered (and by whom it was seen to come), refused by the router's own stack (let through,
/// nothing listens) or met with silence (dropped).
#[test]
fn the_firewall_decides_real_traffic_between_the_vlans() {
    use armfleet_tests::netns::{
        NetNs, Reach, probe_tcp, probe_udp, tcp_echo_source, udp_echo_source,
    };
    use bootstrap::topology::router::Proto;
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    let lab = busy_lab();
    let router = lab.router.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nftables.conf");
    std::fs::write(&conf, router.nftables_conf(&lab)).unwrap();

    let r = NetNs::new("fw-router");
    r.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    // One namespace per VLAN: its interface on the router named as on the real router, the
    // VLAN's gateway address there, one client address (INFRA's are rpi4-2's and the MQTT
    // broker the busy lab lets IOT reach).
    let mut vlans = Vec::new();
    for vlan in &lab.vlans {
        let ns = NetNs::new(&format!("fw-{}", vlan.name.to_lowercase()));
        let iface = bootstrap::topology::router::vlan_iface(vlan);
        r.link(&iface, &ns, "eth0");
        let gw = vlan.gateway.expect("every VLAN has a gateway");
        let prefix = vlan.subnet.prefix;
        r.ip(&format!("addr add {gw}/{prefix} dev {iface}"));
        let clients: Vec<String> = if vlan.name == "INFRA" {
            vec!["10.10.10.12".into(), "10.10.10.20".into()]
        } else {
            vec![format!("10.10.{}.50", vlan.id)]
        };
        for c in &clients {
            ns.ip(&format!("addr add {c}/{prefix} dev eth0"));
        }
        ns.ip(&format!("route add default via {gw}"));
        vlans.push((vlan.name.clone(), ns));
    }
    // The uplink: the router's first uplink interface, and beyond it a host with no route back
    // to the VLANs, so only masquerading brings its answers home.
    let wan = NetNs::new("fw-wan");
    let uplink = &router.uplinks[0].iface;
    r.link(uplink, &wan, "eth0");
    r.ip(&format!("addr add 198.51.100.2/24 dev {uplink}"));
    r.ip(&format!("route add default via 198.51.100.1 dev {uplink}"));
    wan.ip("addr add 198.51.100.1/24 dev eth0");

    r.exec("nft", &["-f", conf.to_str().unwrap()]);

    let ns = |name: &str| &vlans.iter().find(|(n, _)| n == name).unwrap().1;
    let at = |a: &str| -> SocketAddr { a.parse().unwrap() };
    for port in [22, 80, 443, 8050] {
        tcp_echo_source(ns("INFRA"), at(&format!("10.10.10.12:{port}")));
    }
    for port in [22, 1883] {
        tcp_echo_source(ns("INFRA"), at(&format!("10.10.10.20:{port}")));
    }
    udp_echo_source(ns("INFRA"), at("10.10.10.20:5683"));
    tcp_echo_source(ns("PRO"), at("10.10.20.50:443"));
    tcp_echo_source(ns("IOT"), at("10.10.40.50:8123"));
    tcp_echo_source(&wan, at("198.51.100.1:443"));

    let seen = |a: &str| Reach::Answered(a.parse::<IpAddr>().unwrap());
    let (tcp, udp) = (true, false);
    #[rustfmt::skip]
    let cases: Vec<(&str, bool, &str, Reach, &str)> = vec![
        // The internet, through the uplink, masqueraded.
        ("INFRA", tcp, "198.51.100.1:443", seen("198.51.100.2"), "rule 2: INFRA -> internet"),
        ("PRO",   tcp, "198.51.100.1:443", seen("198.51.100.2"), "rule 3: PRO -> internet"),
        ("IOT",   tcp, "198.51.100.1:443", Reach::Silent,        "IOT has no way out"),
        // Between VLANs: routed, not NATed, only what a rule names.
        ("PRO",   tcp, "10.10.10.12:443",  seen("10.10.20.50"),  "rule 5: PRO -> INFRA tcp/443"),
        ("PRO",   tcp, "10.10.10.12:8050", seen("10.10.20.50"),  "busy rule: PRO -> rpi4-2 tcp/8000-8100"),
        ("PRO",   tcp, "10.10.10.12:22",   Reach::Silent,        "PRO has no SSH into INFRA"),
        ("PERSO", tcp, "10.10.10.12:80",   seen("10.10.30.50"),  "rule 6: PERSO -> INFRA tcp/80"),
        ("PERSO", tcp, "10.10.10.12:8050", Reach::Silent,        "rpi4-2's 8000-8100 are PRO's only"),
        ("PERSO", tcp, "10.10.20.50:443",  Reach::Silent,        "PERSO and PRO do not meet"),
        ("IOT",   tcp, "10.10.10.20:1883", seen("10.10.40.50"),  "busy rule: IOT -> broker tcp/1883"),
        ("IOT",   udp, "10.10.10.20:5683", seen("10.10.40.50"),  "busy rule: IOT -> broker udp/5683-5684"),
        ("IOT",   tcp, "10.10.10.20:22",   Reach::Silent,        "only the listed ports on the broker"),
        ("IOT",   tcp, "10.10.10.12:443",  Reach::Silent,        "IOT -> INFRA is denied"),
        // INFRA may open IOT (busy rule), and the answers come back although IOT -> INFRA is denied.
        ("INFRA", tcp, "10.10.40.50:8123", seen("10.10.10.12"),  "busy rule: INFRA -> 10.10.40.0/24"),
        // The router itself (input chain): let through = refused by its stack, nobody listens.
        ("INFRA", tcp, "10.10.10.1:6443",  Reach::Refused,       "rule 1: INFRA -> the k3s API"),
        ("INFRA", tcp, "10.10.10.1:22",    Reach::Refused,       "rule 1: INFRA -> SSH"),
        ("INFRA", tcp, "10.10.10.1:8080",  Reach::Refused,       "the mirror, on INFRA"),
        ("PRO",   tcp, "10.10.20.1:8080",  Reach::Silent,        "the mirror is INFRA's only"),
        ("IOT",   tcp, "10.10.40.1:6443",  Reach::Silent,        "IOT never reaches the API"),
        ("IOT",   tcp, "10.10.10.1:6443",  Reach::Silent,        "nor through INFRA's gateway address"),
        ("PRO",   tcp, "10.10.20.1:22",    Reach::Silent,        "SSH to the router is INFRA's only"),
        ("IOT",   udp, "10.10.40.1:53",    Reach::Refused,       "DNS on every VLAN"),
        ("IOT",   tcp, "10.10.40.1:53",    Reach::Refused,       "DNS over TCP on every VLAN"),
    ];
    // All at once: a dropped probe costs its whole wait.
    let wait = Duration::from_secs(2);
    let outcomes: Vec<Reach> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(from, is_tcp, dest, _, _)| {
                let from = ns(from);
                let dest = at(dest);
                s.spawn(move || {
                    if *is_tcp {
                        probe_tcp(from, dest, wait)
                    } else {
                        probe_udp(from, dest, wait)
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong: Vec<String> = cases
        .iter()
        .zip(&outcomes)
        .filter(|((_, _, _, want, _), got)| want != *got)
        .map(|((from, is_tcp, dest, want, why), got)| {
            let proto = if *is_tcp { "tcp" } else { "udp" };
            format!("{from} -> {dest}/{proto} ({why}): expected {want:?}, got {got:?}")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}\n\nruleset:\n{}",
        wrong.join("\n"),
        r.exec("nft", &["list", "ruleset"])
    );
    // The policy as the topology validation reads it (`Router::allows`, which refuses a node the
    // rules keep from the API) gives the kernel's verdict on every probe.
    for ((from, is_tcp, dest, _, why), got) in cases.iter().zip(&outcomes) {
        let dest = at(dest);
        let proto = if *is_tcp { Proto::Tcp } else { Proto::Udp };
        let passed = *got != Reach::Silent;
        assert_eq!(
            router.allows(&lab, from, dest.ip(), proto, dest.port()),
            passed,
            "{from} -> {dest} ({why}): the kernel let it through: {passed}"
        );
    }
}
