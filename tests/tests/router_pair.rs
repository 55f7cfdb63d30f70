//! The lab's two halves together (slow tier): the router/server image and a worker image, both
//! made by imagegen from the topology and the real node rootfs, booted in QEMU and wired only to
//! each other through a VLAN-aware switch on 127.0.0.1 (tests/src/vswitch.rs: the router on the
//! trunk, the worker on an access port). No user-mode network: nothing in the VMs reaches past
//! the switch.
//!
//! Shown from the two serial consoles:
//! - the router's dnsmasq leases the worker an INFRA address (DHCPACK on eth0.10);
//! - the worker fetches k3s from `http://rpi4-1.lab.home.arpa:8080`, a name only the router's
//!   DNS knows, and the router's mirror logs the GET;
//! - node-runtime on the worker reaches the server's port 6443 and finds there the CA the join
//!   token's hash names (the k3s stand-in as `k3s server`, started by node-runtime on the router
//!   from the CA imagegen placed), and the agent joins: the CA checked against the token's hash,
//!   then the worker's own bootstrap token (named in the topology, registered by the server from
//!   the manifest its image carries) accepted by the server (both sides say so on their consoles);
//! - the worker's cable moved to an IOT port: it gets an IOT address, and the server's API is
//!   not reachable from there, nor is the mirror (the firewall drops IOT -> INFRA; a drop, so a
//!   timeout).
//!
//! k3s is the stand-in on both sides (no k3s binary here): what is proven is the network, the
//! names, the mirror, the CA and the firewall, not Kubernetes.

use armfleet_tests::fixtures::{offline_topology, real_node_rootfs};
use armfleet_tests::lab::set_key;
use armfleet_tests::qemu::QemuBoot;
use armfleet_tests::util::{aarch64_bin, cache_dir, host_bin, output_text, root_fs_debugfs};
use armfleet_tests::vswitch::{PortMode, Switch};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Pinned files (`/NAME` → bytes) over HTTP on 127.0.0.1 while `serving` holds: the laptop's
/// downloads at image build time. Returns the base URL.
fn pinned_downloads(files: Vec<(&'static str, Vec<u8>)>, serving: Arc<AtomicBool>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or(0);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = files
                .iter()
                .find(|(name, _)| path == format!("/{name}"))
                .map(|(_, b)| b);
            if let (true, Some(body)) = (serving.load(Ordering::SeqCst), body) {
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            } else {
                let _ = write!(
                    conn,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    url
}

fn imagegen(args: &[&str], topology: &Path) -> String {
    let o = Command::new(host_bin("imagegen", "imagegen"))
        .args(args)
        .env("ARMFLEET_TOPOLOGY", topology)
        .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
        .env("ARMFLEET_WIFI_INFRA_PSK", "lab-wifi-passphrase")
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "imagegen {args:?}:\n{text}");
    text
}

/// A line already on the console or the next one with `needle`.
fn console_line(vm: &mut QemuBoot, needle: &str, timeout: Duration, what: &str) -> String {
    if let Some(l) = vm.log().iter().find(|l| l.contains(needle)) {
        return l.clone();
    }
    vm.wait_for(needle, timeout)
        .unwrap_or_else(|| panic!("{what}: no console line with {needle:?}:\n{}", vm.tail(80)))
}

#[test]
fn slow_qemu_router_serves_a_worker_on_its_vlans() {
    use sha2::Digest;
    let rootfs = real_node_rootfs();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);

    // The lab: the default topology, k3s pinned to the stand-in served on 127.0.0.1 at build
    // time, and the worker rpi4-2 on DHCP (its address comes from the router).
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let pin = hex::encode(sha2::Sha256::digest(&standin));
    // An airgap images archive pinned beside it (any bytes: nothing here imports images).
    let airgap = b"zstd-compressed image tarball stand-in".repeat(1000);
    let airgap_pin = hex::encode(sha2::Sha256::digest(&airgap));
    let serving = Arc::new(AtomicBool::new(true));
    let base_url = pinned_downloads(
        vec![
            ("k3s-arm64", standin),
            ("k3s-airgap-images-arm64.tar.zst", airgap.clone()),
        ],
        serving.clone(),
    );
    let base = std::fs::read_to_string(offline_topology()).unwrap();
    let text = set_key(&base, "sha256", &format!("\"{pin}\""));
    let text = set_key(
        &text,
        "url",
        &format!(
            "\"{base_url}/k3s-arm64\"\nairgap = {{ url = \"{base_url}/k3s-airgap-images-arm64.tar.zst\", sha256 = \"{airgap_pin}\" }}"
        ),
    );
    // The cluster CA, made before the server ever runs, and the join token that names it.
    let ca_dir = d("k3s-ca");
    let ca_pem = armfleet_tests::k3s_server::custom_ca_dir(&ca_dir);
    let ca_hash = bootstrap::token::hash_ca(ca_pem.as_bytes());
    let token = d("token");
    std::fs::write(&token, format!("K10{ca_hash}::server:pair-proof-secret\n")).unwrap();
    // rpi4-2's own token, a bootstrap token the topology names: the server's image registers
    // it, the worker's image carries it, and the worker joins with it.
    std::fs::write(
        d("rpi4-2.token"),
        format!("K10{ca_hash}::pair02.0123456789abcdef\n"),
    )
    .unwrap();
    let text = text
        .replace("address = \"10.10.10.12\"", "address = \"dhcp\"")
        .replace(
            "name = \"rpi4-2\"\n",
            "name = \"rpi4-2\"\ntoken = { file = \"rpi4-2.token\" }\n",
        );
    assert!(text.contains("rpi4-2.token"), "rpi4-2's entry found");
    let topology = d("lab.toml");
    std::fs::write(&topology, text).unwrap();

    // The router's image, then what inspect reads back from it.
    let server_img = d("rpi4-1.img");
    let said = imagegen(
        &[
            "rpi4",
            "--host",
            "rpi4-1",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--server-ca",
            ca_dir.to_str().unwrap(),
            "-o",
            server_img.to_str().unwrap(),
        ],
        &topology,
    );
    assert!(said.contains("baked in (pinned download"), "{said}");
    assert!(
        said.contains("nodes' own tokens registered at the server's start: rpi4-2 (pair02)"),
        "{said}"
    );
    let shown = imagegen(&["inspect", server_img.to_str().unwrap()], &topology);
    for want in [
        "INFRA id 10: 10.10.10.1/24 on eth0.10, DHCP 10.10.10.128-10.10.10.254",
        "IOT id 40: 10.10.40.1/24 on eth0.40",
        "rpi3a-ctl 10.10.10.13 (INFRA)",
        "INFRA -> rpi4-1: tcp/22 tcp/6443 (SSH and the k3s API)",
        "default: drop between VLANs",
        &format!(
            "k3s-arm64  {} bytes  sha256 {pin}  [ok]",
            std::fs::metadata(aarch64_bin("k3s-standin")).unwrap().len()
        ),
        &format!("custom, server-ca.crt sha256 {ca_hash}"),
        &format!(
            "k3s-airgap-images-arm64.tar.zst  {} bytes  sha256 {airgap_pin}  [ok]",
            airgap.len()
        ),
        "policy drop;",
        "rpi4-2: bootstrap token pair02 (host[1].token)",
    ] {
        assert!(shown.contains(want), "inspect lacks {want:?}:\n{shown}");
    }

    // The server's own k3s finds the archive in its images dir: a link to the mirror's copy.
    let link = root_fs_debugfs(
        &server_img,
        &d("server-root.ext4"),
        "stat /var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst",
    );
    assert!(
        link.contains("Type: symlink")
            && link.contains("/var/lib/armfleet/mirror/k3s-airgap-images-arm64.tar.zst"),
        "{link}"
    );

    // The worker's image, made while the laptop cannot download k3s: the worker must get it
    // from the router's mirror.
    serving.store(false, Ordering::SeqCst);
    let _ = std::fs::remove_file(cache_dir("imagegen-cache").join("k3s").join(&pin));
    let worker_img = d("rpi4-2.img");
    let said = imagegen(
        &[
            "rpi4",
            "--host",
            "rpi4-2",
            "--rootfs",
            rootfs.to_str().unwrap(),
            // No --token-file: rpi4-2's own token comes from the topology.
            // The server is not running while its workers' images are made.
            "--no-ca-check",
            "-o",
            worker_img.to_str().unwrap(),
        ],
        &topology,
    );
    assert!(
        said.contains("not baked in"),
        "the worker image must not carry k3s:\n{said}"
    );

    // The switch: the router on the trunk, the worker on an INFRA access port.
    let switch = Switch::start(vec![
        PortMode::Trunk(vec![10, 20, 30, 40]),
        PortMode::Access(10),
    ]);
    let mut router =
        QemuBoot::start_switched(&server_img, 3 << 30, switch.port(0), "52:54:00:a7:00:01");
    let mut worker =
        QemuBoot::start_switched(&worker_img, 3 << 30, switch.port(1), "52:54:00:a7:00:02");
    let boot = Duration::from_secs(420);

    let reached = console_line(
        &mut worker,
        "reached: its CA matches the join token",
        boot,
        "the worker's agent check",
    );
    assert!(reached.contains("https://10.10.10.1:6443"), "{reached}");
    let fetched = console_line(
        &mut worker,
        "fetched and verified",
        boot,
        "k3s from the mirror",
    );
    // The agent (the stand-in, fetched from the mirror) joins: the CA checked against the
    // token's hash, then the token's password accepted by the server.
    let joined = console_line(
        &mut worker,
        "k3s-standin: agent rpi4-2 joined",
        boot,
        "the agent's join",
    );
    assert!(
        joined.contains(&format!("https://10.10.10.1:6443 (CA sha256 {ca_hash})")),
        "{joined}"
    );
    let airgap_fetched = console_line(
        &mut worker,
        "airgap images",
        boot,
        "the airgap archive from the mirror",
    );
    assert!(
        airgap_fetched.contains(
            "fetched from http://rpi4-1.lab.home.arpa:8080/k3s-airgap-images-arm64.tar.zst"
        ),
        "{airgap_fetched}"
    );
    let welcomed = console_line(
        &mut router,
        "k3s-standin: server: agent rpi4-2 joined from 10.10.10.",
        Duration::from_secs(60),
        "the server's side of the join",
    );
    // With its own token, registered from the manifest the server's image carries.
    assert!(
        welcomed.contains("with bootstrap token pair02"),
        "{welcomed}"
    );
    println!(
        "worker: {reached}\nworker: {fetched}\nworker: {airgap_fetched}\nworker: {joined}\nrouter: {welcomed}"
    );
    let ack = console_line(
        &mut router,
        "DHCPACK(eth0.10)",
        Duration::from_secs(60),
        "the INFRA lease",
    );
    assert!(
        ack.contains("10.10.10.") && ack.contains("52:54:00:a7:00:02"),
        "{ack}\n{}",
        switch.summary()
    );
    let got = console_line(
        &mut router,
        "GET k3s-arm64",
        Duration::from_secs(60),
        "the mirror's log",
    );
    assert!(got.contains("10.10.10."), "the mirror served INFRA: {got}");
    let got_airgap = console_line(
        &mut router,
        "GET k3s-airgap-images-arm64.tar.zst",
        Duration::from_secs(60),
        "the mirror's log of the airgap archive",
    );
    assert!(got_airgap.contains("10.10.10."), "{got_airgap}");
    println!("router: {ack}\nrouter: {got}\nrouter: {got_airgap}");

    // The cable moved to an IOT port: another VLAN, another lease, and no way to the API.
    drop(worker);
    switch.set_access_vlan(1, 40);
    let mut iot =
        QemuBoot::start_switched(&worker_img, 3 << 30, switch.port(1), "52:54:00:a7:00:02");
    let ack = console_line(&mut router, "DHCPACK(eth0.40)", boot, "the IOT lease");
    assert!(ack.contains("10.10.40."), "{ack}");
    let refused = console_line(&mut iot, "not reachable", boot, "the API from IOT");
    assert!(
        refused.contains("https://10.10.10.1:6443")
            && (refused.contains("timed out") || refused.contains("timeout")),
        "IOT -> INFRA must be dropped (a timeout, not a refusal): {refused}"
    );
    // The mirror is INFRA's only: from IOT the worker's k3s download times out too.
    let no_mirror = console_line(
        &mut iot,
        "rpi4-1.lab.home.arpa:8080/k3s-arm64 failed",
        boot,
        "the mirror from IOT",
    );
    assert!(
        no_mirror.contains("timed out") || no_mirror.contains("timeout"),
        "{no_mirror}"
    );
    assert!(
        !iot.log()
            .iter()
            .any(|l| l.contains("reached: its CA matches") || l.contains("joined")),
        "the API answered on IOT:\n{}",
        iot.tail(60)
    );
    println!(
        "router: {ack}\niot worker: {refused}\niot worker: {no_mirror}\n{}",
        switch.summary()
    );
}
