//! The router's generated files checked by the programs that read them on the router (Debian's
//! `nft` and `dnsmasq`, the same versions as in the node rootfs), and the server image's refusals.
//! The ruleset is loaded for real, in a network namespace this test makes.

use armfleet_tests::fixtures::{mini_node_rootfs, offline_topology};
use armfleet_tests::util::{aarch64_bin, cache_dir, host_bin, output_text};
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
