//! Issue #13's end to end check on the virtual phone: on Android-shaped phones (cgroup v1, hybrid,
//! and v2 where this machine can give it; netd's policy routing; a kernel that passes the
//! doctor), `phonectl enroll` from the topology, without `--force`, brings the strict k3s
//! stand-in up inside the phone's chroot and reports it healthy. The stand-in refuses what
//! k3s 1.35+ refuses, so this passes only once node-runtime gives the agent what it needs there
//! (its cgroups with a pids hierarchy, `fail-cgroupv1=false` on v1/hybrid, /dev/kmsg, a node IP).

use armfleet_tests::fixtures::mini_node_rootfs;
use armfleet_tests::lab::{mirror, set_key, topology_for};
use armfleet_tests::standin::wait_for;
use armfleet_tests::util::{aarch64_bin, host_bin, skip_for_missing};
use armfleet_tests::vphone::{AdbServer, Cgroups, PhoneOptions, VirtualPhone, cgroups_supported};
use std::process::Output;
use std::time::Duration;

use armfleet_tests::util::output_text as text;

struct Enrolled {
    adb: AdbServer,
    phone: VirtualPhone,
    enroll: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Enrolled {
    fn phonectl(&self, args: &[&str]) -> Output {
        std::process::Command::new(host_bin("phonectl", "phonectl"))
            .args([
                "--adb-port",
                &self.adb.port().to_string(),
                "-s",
                &self.phone.serial(),
            ])
            .args(args)
            .env_remove("ANDROID_SERIAL")
            .output()
            .unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let o = self.phonectl(&["status", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)))
    }

    fn runs(&self) -> Vec<serde_json::Value> {
        armfleet_tests::standin::run_records(
            &self
                .phone
                .root()
                .join("data/armfleet/rootfs/usr/local/bin/k3s.runs"),
        )
    }
}

/// Enrolls `profile` from the topology (no --force: the phone passes doctor; the phone's own
/// token from its topology entry) and checks the
/// worker is healthy with the strict stand-in. With `k3s_from_laptop`, the rootfs carries no k3s
/// and the topology pins the stand-in at a mirror only the laptop reaches: phonectl must bring it.
fn enroll_from_topology(profile: &str, k3s_from_laptop: bool) -> Enrolled {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let adb = AdbServer::start();
    let phone = VirtualPhone::start(profile, PhoneOptions::default());
    adb.connect(&phone);
    let (url, ca_pem) = armfleet_tests::k3s_server::k3s_cacerts_server();
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    // The phone's own token, as `k3s token create --description phone-1` prints one: given by
    // the topology's phone entry (cluster.token, an unset $K3S_TOKEN here, is not used).
    let token = dir.path().join("phone-1.token");
    std::fs::write(&token, format!("K10{hash}::a1b2c3.0123456789abcdef\n")).unwrap();
    let mut topology_text =
        std::fs::read_to_string(topology_for(&url, &phone.serial(), dir.path())).unwrap();
    let entry = "name = \"phone-1\"\n";
    let at = topology_text.find(entry).unwrap() + entry.len();
    topology_text.insert_str(
        at,
        &format!("token = {{ file = \"{}\" }}\n", token.display()),
    );
    let rootfs = if k3s_from_laptop {
        let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
        topology_text = set_key(&topology_text, "url", &format!("\"{}\"", mirror(standin)));
        armfleet_tests::fixtures::mini_node_rootfs_without_k3s()
    } else {
        mini_node_rootfs()
    };
    let topology = dir.path().join("lab.toml");
    std::fs::write(&topology, topology_text).unwrap();
    let out = std::process::Command::new(host_bin("phonectl", "phonectl"))
        .args(["--adb-port", &adb.port().to_string(), "-s", &phone.serial()])
        .arg("enroll")
        .arg("--topology")
        .arg(&topology)
        .arg("--rootfs")
        .arg(&rootfs)
        .arg("--node-runtime")
        .arg(aarch64_bin("node-runtime"))
        .args(["--wait", "45", "--json"])
        .env_remove("K3S_TOKEN")
        .env("ARMFLEET_CACHE_DIR", dir.path().join("cache"))
        .env_remove("ANDROID_SERIAL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let e = Enrolled {
        adb,
        phone,
        enroll: serde_json::Value::Null,
        _dir: dir,
    };
    let runs = e.runs();
    let last = runs.last().cloned().unwrap_or_default();
    assert!(
        out.status.success(),
        "{profile}: enroll failed\n{}\nlast stand-in run: failed_check {} ({})\n{}",
        text(&out),
        last["failed_check"],
        last["failure"],
        e.phone.logs()
    );
    assert_eq!(last["failed_check"], serde_json::Value::Null, "{last}");
    let enroll: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = e.status();
    assert_eq!(st["status"]["state"], "running", "{st}");
    assert_eq!(st["status"]["healthy"], true, "{st}");
    assert_eq!(st["status"]["supervisor_running"], true, "{st}");
    Enrolled {
        enroll: enroll[0]["summary"].clone(),
        ..e
    }
}

/// A reboot brings the worker back by the boot hook, healthy, with a new agent.
fn reboot_brings_it_back(e: &Enrolled) {
    let before = e.runs().len();
    e.phone.reboot();
    e.adb.adb(&["disconnect", &e.phone.serial()]);
    wait_for("the agent after reboot", Duration::from_secs(90), || {
        (e.runs().len() > before).then_some(())
    });
    wait_for("healthy after reboot", Duration::from_secs(60), || {
        let o = e.phonectl(&["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (st["status"]["healthy"] == true).then_some(())
    });
}

/// True when this machine can give a phone `kind` cgroups; else the test fails (or, with
/// ARMFLEET_ALLOW_SKIP=1, is skipped deliberately).
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
    let e = enroll_from_topology("android14-hybrid", false);
    let run = e.runs().last().cloned().unwrap();
    assert_eq!(run["cgroup_layout"], "hybrid", "{run}");
    assert_eq!(run["token_file"]["mode"], 0o600, "armfleet's own rule");
    assert_eq!(
        run["iptables_mode"], "legacy",
        "netd's backend on a phone: {run}"
    );
    let st = e.status();
    assert_eq!(st["status"]["cgroups"], "hybrid", "{st}");
    assert_eq!(st["status"]["iptables"]["backend"], "legacy", "{st}");
    assert!(
        st["status"]["iptables"]["reason"]
            .as_str()
            .unwrap()
            .contains("netd"),
        "{st}"
    );
    reboot_brings_it_back(&e);

    // With a kubeconfig, "up" also means the cluster lists the Node as Ready.
    let api = armfleet_tests::k3s_server::KubeApi::start();
    let kubeconfig = e._dir.path().join("k3s.yaml");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let k = kubeconfig.to_str().unwrap();
    api.set_node("phone-1", false);
    let o = e.phonectl(&["restart", "--kubeconfig", k, "--wait", "8"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("node phone-1 is not Ready in the cluster") && err.contains("KubeletNotReady"),
        "{err}"
    );
    let ready_later = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            api.set_node("phone-1", true);
        });
        e.phonectl(&["start", "--kubeconfig", k, "--wait", "30"])
    });
    assert!(ready_later.status.success(), "{}", text(&ready_later));
    assert!(
        String::from_utf8_lossy(&ready_later.stdout)
            .contains("node phone-1 Ready at https://127.0.0.1:"),
        "{}",
        text(&ready_later)
    );
}

#[test]
fn slow_enroll_from_topology_on_a_v1_android_phone_runs_the_strict_agent() {
    if !supported_or_skip(Cgroups::V1) {
        return;
    }
    let e = enroll_from_topology("android9-v1", true);
    let run = e.runs().last().cloned().unwrap();
    assert_eq!(run["cgroup_layout"], "v1", "{run}");
    // No nf_tables in this kernel: the agent's bundled iptables must take the legacy backend.
    assert_eq!(run["iptables_mode"], "legacy", "{run}");
    let changed: Vec<&str> = e.enroll["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        changed.contains(&"k3s"),
        "k3s brought from the laptop: {}",
        e.enroll
    );
    let st = e.status();
    assert_eq!(st["status"]["cgroups"], "v1", "{st}");
    assert!(
        st["status"]["iptables"]["reason"]
            .as_str()
            .unwrap()
            .contains("no NF_TABLES"),
        "{st}"
    );
}

/// The kubeconfig reader against an API stand-in that, like k3s, answers only clients with a
/// certificate its CA signed: a Node missing, NotReady, Ready; and a kubeconfig without the
/// client certificate refused.
#[test]
fn kubeconfig_reads_a_nodes_readiness_with_client_certificates() {
    use bootstrap::kube::{KubeClient, NodeState};
    let api = armfleet_tests::k3s_server::KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k3s.yaml");
    std::fs::write(&path, api.kubeconfig()).unwrap();
    let k = KubeClient::from_kubeconfig(&path).unwrap();
    assert_eq!(k.node_state("phone-1").unwrap(), NodeState::Missing);
    api.set_node("phone-1", false);
    assert!(matches!(
        k.node_state("phone-1").unwrap(),
        NodeState::NotReady(why) if why.contains("KubeletNotReady")
    ));
    api.set_node("phone-1", true);
    assert_eq!(k.node_state("phone-1").unwrap(), NodeState::Ready);
    // Without its client certificate the API does not answer.
    let anonymous: String = api
        .kubeconfig()
        .lines()
        .filter(|l| !l.contains("client-"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("  user:\n", "  user: {}\n");
    std::fs::write(&path, anonymous).unwrap();
    let k = KubeClient::from_kubeconfig(&path).unwrap();
    assert!(k.node_state("phone-1").is_err());
    // A kubeconfig that is not one: one line naming the file.
    std::fs::write(&path, "current-context: nowhere\n").unwrap();
    let e = KubeClient::from_kubeconfig(&path).unwrap_err().to_string();
    assert!(e.contains("k3s.yaml") && e.contains("nowhere"), "{e}");
}
