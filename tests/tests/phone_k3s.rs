//! Issue #13's end to end check on the virtual phone: on Android-shaped phones (cgroup v1, hybrid,
//! and v2 where this machine can give it; netd's policy routing; a kernel that passes the
//! doctor), `phonectl enroll` from the topology, without `--force`, brings the strict k3s
//! stand-in up inside the phone's chroot and reports it healthy. The stand-in refuses what
//! k3s 1.35+ refuses, so this passes only once node-runtime gives the agent what it needs there
//! (its cgroups with a pids hierarchy, `fail-cgroupv1=false` on v1/hybrid, /dev/kmsg, a node IP).

use armfleet_tests::fixtures::{mini_node_rootfs, offline_topology};
use armfleet_tests::util::{aarch64_bin, host_bin, skip_for_missing};
use armfleet_tests::vphone::{AdbServer, Cgroups, PhoneOptions, VirtualPhone, cgroups_supported};
use std::process::Output;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Replaces the value of the first `key = ...` line of `text`.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let start = text
        .find(&format!("\n{key} = "))
        .unwrap_or_else(|| panic!("no {key} in the topology"))
        + 1;
    let end = start + text[start..].find('\n').unwrap();
    format!("{}{key} = {value}{}", &text[..start], &text[end..])
}

/// The default lab with its server at `server`, the k3s pin being the stand-in the node rootfs
/// carries (so no download is tried), and `phone-1` known by `serial` with a small k3s data
/// image (the default is sized for a real phone).
fn topology_for(server: &str, serial: &str, dir: &std::path::Path) -> std::path::PathBuf {
    use sha2::Digest;
    let base = std::fs::read_to_string(offline_topology()).unwrap();
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let pin = hex::encode(sha2::Sha256::digest(&standin));
    let text = set_key(&base, "server", &format!("\"{server}\""));
    let mut text = set_key(&text, "sha256", &format!("\"{pin}\""));
    let entry = "name = \"phone-1\"\n";
    let at = text.find(entry).expect("the phone-1 entry") + entry.len();
    text.insert_str(
        at,
        &format!("serial = \"{serial}\"\ndata_image_mib = 256\n"),
    );
    let path = dir.join("lab.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Enrolls `profile` from the topology and checks the worker is healthy with the strict
/// stand-in; returns the stand-in's run record for more checks.
fn enroll_from_topology(profile: &str) -> Option<serde_json::Value> {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let adb = AdbServer::start();
    let phone = VirtualPhone::start(profile, PhoneOptions::default());
    adb.connect(&phone);
    let (url, ca_pem) = armfleet_tests::k3s_server::k3s_cacerts_server();
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    let token = dir.path().join("token");
    std::fs::write(&token, format!("K10{hash}::server:s3cr3t-phone\n")).unwrap();
    let topology = topology_for(&url, &phone.serial(), dir.path());
    let out = std::process::Command::new(host_bin("phonectl", "phonectl"))
        .args(["--adb-port", &adb.port().to_string(), "-s", &phone.serial()])
        .arg("enroll")
        .arg("--topology")
        .arg(&topology)
        .arg("--rootfs")
        .arg(mini_node_rootfs())
        .arg("--node-runtime")
        .arg(aarch64_bin("node-runtime"))
        .arg("--token-file")
        .arg(&token)
        .args(["--wait", "45"])
        .env_remove("ANDROID_SERIAL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let runs: Vec<serde_json::Value> = std::fs::read_to_string(
        phone
            .root()
            .join("data/armfleet/rootfs/usr/local/bin/k3s.runs"),
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect();
    let last = runs.last().cloned().unwrap_or_default();
    assert!(
        out.status.success(),
        "{profile}: enroll failed\n{}\nlast stand-in run: failed_check {} ({})\n{}",
        text(&out),
        last["failed_check"],
        last["failure"],
        phone.logs()
    );
    assert_eq!(last["failed_check"], serde_json::Value::Null, "{last}");
    let status = std::process::Command::new(host_bin("phonectl", "phonectl"))
        .args(["--adb-port", &adb.port().to_string(), "-s", &phone.serial()])
        .args(["status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|_| panic!("{}", text(&status)));
    assert_eq!(st["status"]["state"], "running", "{st}");
    assert_eq!(st["status"]["healthy"], true, "{st}");
    Some(last)
}

fn supported_or_skip(kind: Cgroups) -> bool {
    match cgroups_supported(kind) {
        Ok(()) => true,
        Err(why) => !skip_for_missing(&why),
    }
}

#[test]
fn slow_enroll_from_topology_on_a_hybrid_android_phone_runs_the_strict_agent() {
    if !supported_or_skip(Cgroups::Hybrid) {
        return;
    }
    let run = enroll_from_topology("android14-hybrid").unwrap();
    assert_eq!(run["cgroup_layout"], "hybrid", "{run}");
    assert_eq!(run["token_file"]["mode"], 0o600, "armfleet's own rule");
}

#[test]
fn slow_enroll_from_topology_on_a_v1_android_phone_runs_the_strict_agent() {
    if !supported_or_skip(Cgroups::V1) {
        return;
    }
    let run = enroll_from_topology("android9-v1").unwrap();
    assert_eq!(run["cgroup_layout"], "v1", "{run}");
    // No nf_tables in this kernel: the agent's bundled iptables must take the legacy backend.
    assert_eq!(run["iptables_mode"], "legacy", "{run}");
}

#[test]
fn slow_enroll_from_topology_on_a_v2_android_phone_runs_the_strict_agent() {
    // Only where this machine's cgroup2 has the controllers (a v1/hybrid machine cannot).
    if cgroups_supported(Cgroups::V2).is_err() {
        return;
    }
    let run = enroll_from_topology("android15-v2").unwrap();
    assert_eq!(run["cgroup_layout"], "v2", "{run}");
}
