//! Issue #14, the phone path as a new user takes it: `phonectl enroll` with no path flags (the
//! node rootfs from the cache imagegen fills, node-runtime found beside the tools, the k3s pin
//! brought from the laptop), its output in a file readable phase by phase, the next command at the
//! end, and dry runs of enroll, stop and unenroll that leave the phone byte-identical.

#[allow(dead_code)]
#[path = "../../android/src/bin/phonectl/cli.rs"]
mod phonectl_cli;

use armfleet_tests::fixtures::{FIXTURE_EPOCH, real_node_rootfs_build};
use armfleet_tests::lab::{mirror, set_key, topology_for};
use armfleet_tests::util::{aarch64_bin, cache_dir, host_bin};
use armfleet_tests::vphone::{AdbServer, PhoneOptions, VirtualPhone};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use armfleet_tests::util::output_text as text;

/// Every file of the phone as the host sees it: type, mode, and content hash (or link target),
/// minus the harness' own `.vphone` bookkeeping and the paths for which `skip` says yes.
fn fingerprint(phone: &VirtualPhone, skip: &dyn Fn(&str) -> bool) -> BTreeMap<String, String> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    fn walk(
        root: &Path,
        dir: &Path,
        skip: &dyn Fn(&str) -> bool,
        out: &mut BTreeMap<String, String>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with(".vphone") || skip(&rel) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &p, skip, out);
                "dir".to_owned()
            } else if meta.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                format!("file {}", hex::encode(sha2::Sha256::digest(&data)))
            } else {
                "special".to_owned()
            };
            out.insert(rel, format!("{what} {mode:o}"));
        }
    }
    let mut out = BTreeMap::new();
    walk(phone.root(), phone.root(), skip, &mut out);
    out
}

/// What differs between two fingerprints, for a readable failure.
fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", a.get(k), b.get(k)))
        .collect()
}

/// What a running worker rewrites by itself, whatever phonectl does: its status record, its
/// logs, the stand-in's run records and the agent's data directory.
fn live(rel: &str) -> bool {
    rel.starts_with("data/armfleet/rootfs/var/lib/armfleet/status.json")
        || rel.starts_with("data/armfleet/rootfs/var/log/armfleet")
        || rel.starts_with("data/armfleet/rootfs/var/lib/rancher")
        || rel.ends_with("/usr/local/bin/k3s.runs")
        || rel.starts_with("data/armfleet/run")
        // k3s's data image, mounted at /var/lib/rancher inside the chroot while the agent runs.
        || rel == "data/armfleet/k3s-data.img"
}

struct Lab {
    adb: AdbServer,
    phone: VirtualPhone,
    dir: tempfile::TempDir,
    topology: std::path::PathBuf,
    token: std::path::PathBuf,
}

impl Lab {
    /// phonectl as a user has it: no path settings; the cache is the one the real-rootfs
    /// fixture filled (its inputs are these, so it is found, not rebuilt).
    fn phonectl_command(&self) -> Command {
        let mut cmd = Command::new(host_bin("phonectl", "phonectl"));
        cmd.env(
            "ARMFLEET_CACHE_DIR",
            cache_dir("node-rootfs-real").join("cache"),
        )
        .env("SOURCE_DATE_EPOCH", FIXTURE_EPOCH.to_string())
        .env("ARMFLEET_TOPOLOGY", &self.topology)
        .env_remove("ARMFLEET_ROOTFS")
        .env_remove("ARMFLEET_NODE_RUNTIME")
        .env_remove("ANDROID_SERIAL")
        .env_remove("KUBECONFIG");
        cmd
    }

    /// A phonectl command for this phone, as a user types it: no --rootfs, no --node-runtime.
    fn phonectl(&self, args: &[&str]) -> Output {
        self.phonectl_command()
            .args(["--adb-port", &self.adb.port().to_string()])
            .args(["-s", &self.phone.serial()])
            .args(args)
            .output()
            .unwrap()
    }

    /// The documented examples of the `commands` given that change nothing on a phone —
    /// `devices`, `doctor`, `status` (for any phone: examples naming a placeholder serial are left
    /// out), and `enroll` only with `--dry-run` — run as shown, `~` being a home that holds the
    /// token files they name and `K3S_TOKEN` the token (the topology's source). Returns how many ran.
    fn run_phone_examples(&self, commands: &[&str]) -> usize {
        use clap::CommandFactory;
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let token = std::fs::read_to_string(&self.token).unwrap();
        for name in [".k3s-token", "k3s-node-token"] {
            std::fs::write(home.join(name), &token).unwrap();
        }
        let examples =
            armfleet_tests::examples::examples_of("phonectl", &phonectl_cli::Cli::command(), &[]);
        let mut ran = std::collections::BTreeSet::new();
        for example in examples {
            let words: Vec<String> = example
                .words()
                .into_iter()
                .map(|w| match w.strip_prefix("~/") {
                    Some(rest) => home.join(rest).display().to_string(),
                    None => w,
                })
                .collect();
            let read_only = matches!(words[1].as_str(), "devices" | "doctor" | "status")
                && !words.iter().any(|w| w == "-s");
            let dry_enroll = words[1] == "enroll" && words.iter().any(|w| w == "--dry-run");
            if !commands.contains(&words[1].as_str())
                || !(read_only || dry_enroll)
                || !ran.insert(example.line.clone())
            {
                continue;
            }
            let o = self
                .phonectl_command()
                .args(&words[1..])
                .current_dir(self.dir.path())
                .env("HOME", &home)
                .env("ANDROID_ADB_SERVER_PORT", self.adb.port().to_string())
                .env("K3S_TOKEN", token.trim())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{}: `{}`: {}",
                example.place,
                example.line,
                text(&o)
            );
        }
        ran.len()
    }

    fn enroll(&self, extra: &[&str]) -> Output {
        let token = self.token.to_str().unwrap().to_owned();
        let mut args = vec!["enroll", "--token-file", &token, "--wait", "60"];
        args.extend_from_slice(extra);
        self.phonectl(&args)
    }
}

fn lab() -> Lab {
    use sha2::Digest;
    let built = real_node_rootfs_build();
    assert!(
        built.manifest.inputs.k3s.is_none(),
        "the node rootfs carries no k3s: enroll must bring the pinned one"
    );
    let dir = tempfile::tempdir().unwrap();
    let adb = AdbServer::start();
    let phone = VirtualPhone::start("android14-hybrid", PhoneOptions::default());
    adb.connect(&phone);
    let (url, ca_pem) = armfleet_tests::k3s_server::k3s_cacerts_server();
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    let token = dir.path().join("token");
    std::fs::write(&token, format!("K10{hash}::server:s3cr3t-phone\n")).unwrap();
    let topology = topology_for(&url, &phone.serial(), dir.path());
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let text = std::fs::read_to_string(&topology).unwrap();
    let text = set_key(&text, "url", &format!("\"{}\"", mirror(standin)));
    std::fs::write(&topology, text).unwrap();
    Lab {
        adb,
        phone,
        dir,
        topology,
        token,
    }
}

#[test]
fn slow_phonectl_enroll_needs_no_path_flags_and_its_dry_runs_change_nothing() {
    let lab = lab();
    let serial = lab.phone.serial();
    let everything = |_: &str| false;
    let fresh = fingerprint(&lab.phone, &everything);

    // What the help texts and docs show a new user first, on this phone as they show it.
    let ran = lab.run_phone_examples(&["devices", "doctor", "enroll"]);
    assert!(ran >= 4, "only {ran} phone examples ran");
    let after = fingerprint(&lab.phone, &everything);
    assert!(
        after == fresh,
        "a documented read-only example changed the phone: {:#?}",
        differences(&fresh, &after)
    );

    // A dry run on a fresh phone: the whole plan, nothing sent.
    let o = lab.enroll(&["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for expected in [
        "dry run, nothing changed",
        "push node-runtime",
        "bring k3s",
        "stream the rootfs",
        "/data/armfleet/rootfs/etc/armfleet/token (token, mode 0600",
        "start node-runtime",
        "without --dry-run",
    ] {
        assert!(out.contains(expected), "{expected:?} missing: {}", text(&o));
    }
    assert!(!text(&o).contains("s3cr3t-phone"), "the token leaked");
    let after = fingerprint(&lab.phone, &everything);
    assert!(
        after == fresh,
        "enroll --dry-run changed the phone: {:#?}",
        differences(&fresh, &after)
    );

    // The real thing, its output in a file as a log would take it.
    let log = lab.dir.path().join("enroll.log");
    let o = lab.enroll(&[]);
    std::fs::write(&log, [o.stderr.as_slice(), o.stdout.as_slice()].concat()).unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), lab.phone.logs());
    let logged = std::fs::read_to_string(&log).unwrap();
    // Each phase on a line of its own with its elapsed time: the rootfs (found in the cache),
    // the k3s binary fetched from the mirror, then the phone's steps.
    assert!(logged.contains("node rootfs: unchanged inputs"), "{logged}");
    for phase in [
        "inspect",
        "node-runtime",
        "k3s",
        "rootfs, config, token, boot hook",
        "wait",
    ] {
        assert!(
            logged
                .lines()
                .any(|l| l.starts_with(&format!("{serial}: {phase}: done")) && l.ends_with(" s)")),
            "no timed line for {phase}: {logged}"
        );
    }
    let last = logged.lines().last().unwrap();
    assert_eq!(
        last,
        format!(
            "next: phonectl status -s {serial}   (and `phonectl logs -s {serial}` if it is not Ready)"
        )
    );
    let st = lab.phonectl(&["status", "--json"]);
    let st: serde_json::Value =
        serde_json::from_slice(&st.stdout).unwrap_or_else(|_| panic!("{}", text(&st)));
    assert_eq!(st["status"]["healthy"], true, "{st}");
    let pid = st["status"]["pid"].clone();
    // An enrolled phone answers the documented status commands.
    assert!(lab.run_phone_examples(&["status"]) >= 2);

    // Running: the dry runs of enroll, stop and unenroll touch nothing but what the worker
    // itself rewrites, and the worker keeps running.
    let running = fingerprint(&lab.phone, &live);
    let o = lab.enroll(&["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing: the phone runs this configuration"),
        "{}",
        text(&o)
    );
    let o = lab.phonectl(&["stop", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("write /data/armfleet/disabled"), "{said}");
    assert!(
        said.contains(&format!("stop node-runtime (pid {pid})")),
        "{said}"
    );
    let o = lab.phonectl(&["unenroll", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("stop the worker"), "{said}");
    assert!(said.contains("remove /data/armfleet ("), "{said}");
    assert!(
        said.contains("remove /data/adb/modules/armfleet ("),
        "{said}"
    );
    let after = fingerprint(&lab.phone, &live);
    assert!(
        after == running,
        "dry runs changed the phone: {:#?}",
        differences(&running, &after)
    );
    let st = lab.phonectl(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["status"]["pid"], pid, "the same supervisor still runs");
    assert_eq!(st["status"]["supervisor_running"], true, "{st}");

    // Stopped, the phone holds still: a dry run of unenroll leaves every byte as it was.
    let o = lab.phonectl(&["stop"]);
    assert!(o.status.success(), "{}", text(&o));
    let stopped = fingerprint(&lab.phone, &everything);
    let o = lab.phonectl(&["unenroll", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("stop the worker"),
        "{}",
        text(&o)
    );
    let after = fingerprint(&lab.phone, &everything);
    assert!(
        after == stopped,
        "unenroll --dry-run changed the phone: {:#?}",
        differences(&stopped, &after)
    );
    let o = lab.phonectl(&["unenroll"]);
    assert!(o.status.success(), "{}", text(&o));
    let gone = fingerprint(&lab.phone, &everything);
    assert!(
        gone.keys().eq(fresh.keys()),
        "unenroll leaves the phone's files as before enroll: {:#?}",
        differences(&fresh, &gone)
    );
}
