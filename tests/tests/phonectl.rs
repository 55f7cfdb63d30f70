//! phonectl end to end: the real `phonectl` binary, through a private real adb server, against
//! virtual phones, installing the cross-built aarch64 node-runtime which supervises the aarch64
//! k3s stand-in inside the phone's chroot.

use armfleet_tests::fixtures::mini_node_rootfs;
use armfleet_tests::standin::{TOKEN, free_port, wait_for};
use armfleet_tests::util::aarch64_bin;
use armfleet_tests::vphone::{AdbServer, PhoneOptions, VirtualPhone};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn phonectl_bin() -> PathBuf {
    armfleet_tests::util::host_bin("phonectl", "phonectl")
}

struct Rig {
    adb: AdbServer,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Rig {
            adb: AdbServer::start(),
            dir,
        }
    }

    fn phone(&self, profile: &str) -> VirtualPhone {
        let phone = VirtualPhone::start(profile, PhoneOptions::default());
        self.adb.connect(&phone);
        phone
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(phonectl_bin());
        c.arg("--adb-port")
            .arg(self.adb.port().to_string())
            .env_remove("ANDROID_SERIAL")
            .env_remove("ANDROID_ADB_SERVER_PORT")
            .env("NO_COLOR", "1");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run phonectl")
    }

    /// node.toml for a phone: its own healthz port (phones share the host's network here).
    /// No `k3s.data_image` (the lifecycle test adds one): each image costs a loop device.
    fn config(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        if p.exists() {
            return p;
        }
        let port = free_port();
        let text = format!(
            r#"[node]
name = "{name}"
kind = "phone"
[server]
url = "https://127.0.0.1:{server}"
[k3s]
kubelet_args = ["healthz-port={port}"]
[network]
iface = "lo"
nameservers = ["10.10.0.1"]
[chroot]
root = "/data/armfleet/rootfs"
[supervise]
healthz_port = {port}
backoff_initial_ms = 200
stop_grace_secs = 3
"#,
            server = free_port()
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    /// [`Rig::config`] with the k3s data dir on a 256 MiB ext4 loop image under /data (later
    /// `config(name)` calls, as enroll's, return this file).
    fn config_with_data_image(&self, name: &str) {
        let cfg = self.config(name);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "[k3s]\n",
            "[k3s]\ndata_image = { path = \"/data/armfleet/k3s-data.img\", size_mib = 256 }\n",
        );
        std::fs::write(&cfg, text).unwrap();
    }

    fn enroll_args(&self, name: &str, rootfs: &Path) -> Vec<String> {
        vec![
            "enroll".into(),
            "--config".into(),
            self.config(name).display().to_string(),
            "--rootfs".into(),
            rootfs.display().to_string(),
            "--node-runtime".into(),
            aarch64_bin("node-runtime").display().to_string(),
            "--token-file".into(),
            self.dir.path().join("token").display().to_string(),
            "--wait".into(),
            "60".into(),
        ]
    }

    /// `phonectl enroll`, forced past the doctor: the "good" profiles serve the build machine's
    /// own kernel config, which may lack an option k3s wants (e.g. the IPVS match); root is still
    /// required, and the refusal tests below run without --force.
    fn enroll_forced(
        &self,
        phone: &VirtualPhone,
        name: &str,
        rootfs: &Path,
        extra: &[&str],
    ) -> Output {
        let mut e = vec!["--force"];
        e.extend_from_slice(extra);
        self.enroll(phone, name, rootfs, &e)
    }

    fn enroll(&self, phone: &VirtualPhone, name: &str, rootfs: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["-s".to_owned(), phone.serial()];
        args.extend(self.enroll_args(name, rootfs));
        args.extend(extra.iter().map(|s| s.to_string()));
        self.cmd().args(&args).output().expect("run phonectl")
    }
}

use armfleet_tests::util::output_text as text;

fn ok(o: &Output, phone: &VirtualPhone) -> String {
    assert!(o.status.success(), "{}\n{}", text(o), phone.logs());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a user error: the exit code, one line on stderr naming what is given in `needles`.
fn user_error(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let last = err.lines().last().unwrap_or("").to_owned();
    for n in needles {
        assert!(last.contains(n), "{n:?} not in the error line: {}", text(o));
    }
    assert!(!err.contains(TOKEN), "the token leaked: {err}");
    last
}

/// Every path under the phone's root (its files as the host sees them), minus the harness' own
/// `.vphone` bookkeeping.
fn listing(phone: &VirtualPhone) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with(".vphone") {
                continue;
            }
            out.insert(rel);
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(phone.root(), phone.root(), &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The k3s stand-in's run records on the phone (one JSON line per agent start).
fn standin_runs(phone: &VirtualPhone) -> Vec<serde_json::Value> {
    armfleet_tests::standin::run_records(
        &phone
            .root()
            .join("data/armfleet/rootfs/usr/local/bin/k3s.runs"),
    )
}

fn flag(run: &serde_json::Value, name: &str) -> Option<String> {
    let argv: Vec<String> = run["argv"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{name}=")).map(str::to_owned)
        }
    })
}

fn summary(o: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("enroll --json output: {e}\n{}", text(o));
    });
    v[0]["summary"].clone()
}

/// A copy of `rootfs` with one more file, `/etc/armfleet-test-version` = `tag` (a "new release").
fn rootfs_variant(rootfs: &Path, tag: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("rootfs-{tag}.tar.gz"));
    let input = flate2::read::GzDecoder::new(std::fs::File::open(rootfs).unwrap());
    let mut archive = tar::Archive::new(input);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(gz);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let link = entry.link_name().unwrap().map(|l| l.into_owned());
        if let Some(link) = link {
            builder.append_link(&mut header, &path, &link).unwrap();
        } else {
            builder.append_data(&mut header, &path, &mut entry).unwrap();
        }
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(tag.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    builder
        .append_data(&mut h, "etc/armfleet-test-version", tag.as_bytes())
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    out
}

// ---------- the whole life of a worker phone ----------

#[test]
fn slow_phonectl_enroll_reboot_reenroll_unenroll() {
    let rig = Rig::new();
    let phone = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    let before = listing(&phone);
    // The k3s data dir on an ext4 loop image, formatted by the phone's /system/bin/mke2fs.
    rig.config_with_data_image("phone-1");

    // Enroll.
    let o = rig.enroll_forced(&phone, "phone-1", &rootfs, &["--json"]);
    ok(&o, &phone);
    let first = summary(&o);
    assert_eq!(first["node"], "phone-1");
    let root = phone.root().join("data/armfleet");
    assert_data_image_mounted(&rig, &phone, &root.join("k3s-data.img"), 256);
    assert!(
        root.join("rootfs/usr/local/bin/k3s").is_file(),
        "rootfs unpacked"
    );
    assert!(root.join("bin/node-runtime").is_file());
    let token = root.join("rootfs/etc/armfleet/token");
    assert_eq!(mode(&token), 0o600, "token mode");
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), TOKEN);
    let config = std::fs::read_to_string(root.join("node.toml")).unwrap();
    assert!(
        config.contains("root = \"/data/armfleet/rootfs\""),
        "{config}"
    );
    let hook = phone.root().join("data/adb/modules/armfleet");
    assert!(
        std::fs::read_to_string(hook.join("module.prop"))
            .unwrap()
            .contains("id=armfleet")
    );
    assert_eq!(mode(&hook.join("service.sh")) & 0o111, 0o111);
    // The agent runs with the right arguments and a readable 0600 token file.
    let runs = standin_runs(&phone);
    assert_eq!(runs.len(), 1, "one agent start: {runs:?}");
    let run = &runs[0];
    assert_eq!(
        flag(run, "--node-name").as_deref(),
        Some("phone-1"),
        "{run}"
    );
    assert_eq!(
        flag(run, "--token-file").as_deref(),
        Some("/etc/armfleet/token"),
        "{run}"
    );
    assert!(
        flag(run, "--server")
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(
        !run["argv"].to_string().contains("s3cr3t"),
        "token on a command line"
    );
    let status = rig.run(&["-s", &phone.serial(), "status", "--json"]);
    let st: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|_| panic!("{}", text(&status)));
    assert_eq!(st["status"]["state"], "running", "{st}");

    // Reboot: the boot hook brings the worker back. The adb server forgets the phone (as it
    // does when a network phone reboots); phonectl reconnects it by itself below.
    phone.reboot();
    rig.adb.adb(&["disconnect", &phone.serial()]);
    let runs = wait_for("the agent after reboot", Duration::from_secs(60), || {
        let r = standin_runs(&phone);
        (r.len() >= 2).then_some(r)
    });
    assert_ne!(runs[0]["pid"], runs[1]["pid"]);
    assert_eq!(flag(&runs[1], "--node-name").as_deref(), Some("phone-1"));

    // Re-enroll, nothing changed: fast, sends almost nothing, restarts nothing.
    let t = Instant::now();
    let o = rig.enroll_forced(&phone, "phone-1", &rootfs, &["--json"]);
    ok(&o, &phone);
    let again = summary(&o);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(again["changed"], serde_json::json!([]), "{again}");
    let sent = again["bytes_sent"].as_u64().unwrap();
    assert!(sent < 256 * 1024, "re-enroll sent {sent} bytes");
    assert!(secs < 20.0, "re-enroll took {secs:.1} s");
    assert_eq!(
        standin_runs(&phone).len(),
        2,
        "re-enroll restarted the agent"
    );
    eprintln!("re-enroll: {secs:.2} s, {sent} bytes sent (first enroll: {first})");

    // Logs and a command in the chroot.
    let logs = rig.run(&["-s", &phone.serial(), "logs", "-n", "5"]);
    ok(&logs, &phone);
    let sh = rig.run(&[
        "-s",
        &phone.serial(),
        "shell",
        "--",
        "cat",
        "/etc/armfleet/token",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout).trim(),
        TOKEN,
        "{}",
        text(&sh)
    );

    // stop / start / restart. stop leaves the flag the boot hook obeys; start only starts an
    // agent that is not running, so its new run proves stop stopped the old one.
    let disabled = phone
        .root()
        .join(bootstrap::layout::phone::DISABLED.trim_start_matches('/'));
    let runs_before = standin_runs(&phone).len();
    ok(&rig.run(&["-s", &phone.serial(), "stop"]), &phone);
    assert!(disabled.exists(), "stop left no flag for the boot hook");
    ok(&rig.run(&["-s", &phone.serial(), "start"]), &phone);
    assert!(!disabled.exists(), "start left the stopped flag");
    assert_eq!(
        standin_runs(&phone).len(),
        runs_before + 1,
        "start after stop"
    );
    ok(&rig.run(&["-s", &phone.serial(), "restart"]), &phone);
    assert!(!disabled.exists());
    assert_eq!(standin_runs(&phone).len(), runs_before + 2, "restart");

    // Unenroll: the phone is as before (the data image is unmounted and removed with the rest).
    let o = rig.run(&["-s", &phone.serial(), "unenroll"]);
    ok(&o, &phone);
    assert!(!root.join("k3s-data.img").exists());
    assert_eq!(
        phone_loop_devices(&phone),
        Vec::<String>::new(),
        "loop device left attached"
    );
    let after = listing(&phone);
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "phone differs after unenroll: added {added:?}, removed {removed:?}"
    );
    let o = rig.run(&["-s", &phone.serial(), "status"]);
    user_error(&o, 3, &[&phone.serial(), "not enrolled"]);
}

/// The k3s data image is an ext4 filesystem of `size_mib` (checked on the host with e2fsprogs'
/// own tools), labelled k3s-data, and mounted on the agent's k3s data dir.
fn assert_data_image_mounted(rig: &Rig, phone: &VirtualPhone, image: &Path, size_mib: u64) {
    let len = std::fs::metadata(image)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", image.display(), phone.logs()))
        .len();
    assert_eq!(len, size_mib << 20, "image size");
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(image)
        .output()
        .unwrap();
    let blkid = String::from_utf8_lossy(&blkid.stdout).into_owned();
    assert!(blkid.contains("TYPE=ext4"), "{blkid}");
    assert!(blkid.contains("LABEL=k3s-data"), "{blkid}");
    let head = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).into_owned();
    let field = |name: &str| -> u64 {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h: {head}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(field("Block count") * field("Block size"), size_mib << 20);
    // node-runtime mounts it in the worker's own mount namespace: look through the agent's eyes
    // (its /proc/PID/mounts shows paths inside its chroot).
    let st = rig.run(&["-s", &phone.serial(), "status", "--json"]);
    let st: serde_json::Value =
        serde_json::from_slice(&st.stdout).unwrap_or_else(|_| panic!("{}", text(&st)));
    let pid = st["status"]["agent_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no agent pid in {st}"));
    let (code, mounts, err) = phone.root_shell(&format!("cat /proc/{pid}/mounts"));
    assert_eq!(code, 0, "{err}");
    assert!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/var/lib/rancher/k3s") && f.get(2) == Some(&"ext4")
        }),
        "k3s data dir not mounted as ext4:\n{mounts}"
    );
}

/// Loop devices whose backing file lies under the phone's root (as the host sees them).
fn phone_loop_devices(phone: &VirtualPhone) -> Vec<String> {
    let o = Command::new("losetup")
        .args(["-a", "--noheadings", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(&phone.root().display().to_string()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn slow_phonectl_enroll_all_three_phones_in_parallel() {
    let rig = Rig::new();
    let phones: Vec<VirtualPhone> = (0..3).map(|_| rig.phone("rooted-magisk")).collect();
    let rootfs = mini_node_rootfs();
    // --config DIR: one SERIAL.toml per phone (each its own node name and healthz port, as the
    // phones share the host's network here).
    let dir = rig.dir.path().join("configs");
    std::fs::create_dir(&dir).unwrap();
    for (i, p) in phones.iter().enumerate() {
        let c = rig.config(&format!("phone-{i}"));
        std::fs::copy(&c, dir.join(format!("{}.toml", p.serial()))).unwrap();
    }
    let mut args = rig.enroll_args("unused", &rootfs);
    let i = args.iter().position(|a| a == "--config").unwrap();
    args[i + 1] = dir.display().to_string();
    args.insert(1, "--all".into());
    args.push("--force".into());
    let t = Instant::now();
    let o = rig.cmd().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for (i, p) in phones.iter().enumerate() {
        assert!(
            out.contains(&format!("{}: enrolled as phone-{i}", p.serial())),
            "{out}"
        );
        assert_eq!(standin_runs(p).len(), 1, "{}", p.serial());
    }
    eprintln!(
        "three phones enrolled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn slow_phonectl_cable_pulled_mid_push_rerun_converges() {
    let rig = Rig::new();
    let phone = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    ok(&rig.enroll_forced(&phone, "phone-1", &rootfs, &[]), &phone);
    let v2 = rootfs_variant(&rootfs, "v2", rig.dir.path());
    let size = std::fs::metadata(&v2).unwrap().len();
    let marker = phone
        .root()
        .join("data/armfleet/rootfs/etc/armfleet-test-version");
    for cut in [16 * 1024, size / 3, size * 9 / 10] {
        phone.cut_transport_after(cut);
        let o = rig.enroll_forced(&phone, "phone-1", &v2, &[]);
        assert!(
            !o.status.success(),
            "enroll survived a cut at {cut}: {}",
            text(&o)
        );
        let line = user_error(&o, 3, &[&phone.serial()]);
        assert!(line.contains("rerun") || line.contains("offline"), "{line}");
        // The old rootfs is intact: its files are there, the new one's are not.
        assert!(
            !marker.exists(),
            "cut at {cut}: new rootfs activated half-way"
        );
        assert!(
            phone
                .root()
                .join("data/armfleet/rootfs/usr/local/bin/k3s")
                .is_file()
        );
        // The server reconnects to the network phone by itself; a disconnect + connect here
        // would race that reconnection (see the vphone cut test).
        rig.adb
            .wait_for_state(&phone, "device", Duration::from_secs(40));
    }
    // Rerun without a cut converges on the new rootfs, and the worker runs from it.
    ok(&rig.enroll_forced(&phone, "phone-1", &v2, &[]), &phone);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "v2");
    let st = rig.run(&["-s", &phone.serial(), "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["status"]["state"], "running");
}

// ---------- read-only commands ----------

#[test]
fn phonectl_devices_and_doctor_describe_a_rooted_phone() {
    let rig = Rig::new();
    let phone = rig.phone("rooted-magisk");
    let o = rig.run(&["devices", "--json"]);
    let rows: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let row = &rows[0];
    assert_eq!(row["serial"], phone.serial().as_str());
    assert_eq!(row["state"], "device");
    assert_eq!(row["model"], "Pixel 7");
    assert_eq!(row["android"], "14");
    assert_eq!(row["abi"], "arm64-v8a");
    assert_eq!(row["root"], "yes");
    assert_eq!(row["enrolled"], false);

    let before = listing(&phone);
    let o = rig.run(&["doctor", "--json"]);
    let r: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let item = |n: &str| {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n} item in {r}"))
    };
    assert_eq!(item("arch")["verdict"], "ok");
    assert_eq!(item("root")["detail"], "Magisk 27.0");
    assert!(
        item("selinux")["detail"]
            .as_str()
            .unwrap()
            .starts_with("Enforcing")
    );
    assert!(
        item("android")["detail"]
            .as_str()
            .unwrap()
            .contains("Android 14")
    );
    assert!(
        item("battery")["detail"]
            .as_str()
            .unwrap()
            .starts_with("87%")
    );
    assert_ne!(item("kernel")["verdict"], serde_json::Value::Null);
    assert_eq!(before, listing(&phone), "doctor changed the phone");
}

// ---------- errors: one line naming the phone and what to do; the phone unchanged ----------

#[test]
fn phonectl_error_no_adb_server_and_none_startable() {
    let empty = tempfile::tempdir().unwrap();
    let port = free_port();
    let o = Command::new(phonectl_bin())
        .args(["--adb-port", &port.to_string(), "devices"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    user_error(&o, 3, &["no adb server", &port.to_string(), "adb"]);
}

#[test]
fn phonectl_starts_an_adb_server_when_none_runs() {
    let port = free_port();
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(phonectl_bin())
        .args(["--adb-port", &port.to_string(), "devices"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let _ = Command::new("adb")
        .args(["-P", &port.to_string(), "kill-server"])
        .env("HOME", home.path())
        .output();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no phones attached"));
}

#[test]
fn phonectl_error_no_phone() {
    let rig = Rig::new();
    let o = rig.run(&["doctor"]);
    user_error(&o, 3, &["no phone attached", "USB debugging"]);
}

#[test]
fn phonectl_error_several_phones_without_serial() {
    let rig = Rig::new();
    let a = rig.phone("rooted-magisk");
    let b = rig.phone("rooted-kernelsu");
    let o = rig.run(&["doctor"]);
    user_error(
        &o,
        2,
        &["several phones", &a.serial(), &b.serial(), "-s SERIAL"],
    );
}

#[test]
fn phonectl_error_unknown_serial() {
    let rig = Rig::new();
    let a = rig.phone("rooted-magisk");
    let o = rig.run(&["-s", "NOPE123", "doctor"]);
    user_error(&o, 2, &["NOPE123", "not attached", &a.serial()]);
}

#[test]
fn phonectl_error_unauthorized() {
    let rig = Rig::new();
    let p = rig.phone("unauthorized");
    let before = listing(&p);
    let rootfs = mini_node_rootfs();
    let o = rig.enroll(&p, "phone-1", &rootfs, &[]);
    user_error(
        &o,
        3,
        &[
            &p.serial(),
            "unauthorized",
            "accept the USB debugging prompt",
        ],
    );
    assert_eq!(before, listing(&p));
}

#[test]
fn phonectl_error_offline() {
    // adbd never completes the handshake: the adb server lists the phone `offline`. phonectl
    // gives a network phone a few seconds and a reconnect to come back, then says what to do.
    let rig = Rig::new();
    let p = rig.phone("offline");
    assert_eq!(rig.adb.state(&p.serial()).as_deref(), Some("offline"));
    let before = listing(&p);
    let rootfs = mini_node_rootfs();
    let needles = [p.serial(), "is offline".into(), "replug".into()];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    user_error(&rig.run(&["-s", &p.serial(), "doctor"]), 3, &needles);
    user_error(&rig.enroll(&p, "phone-1", &rootfs, &[]), 3, &needles);
    assert_eq!(before, listing(&p), "the offline phone was changed");
}

fn refused_enroll(profile: &str, needles: &[&str]) -> String {
    let rig = Rig::new();
    let p = rig.phone(profile);
    let rootfs = mini_node_rootfs();
    let before = listing(&p);
    let o = rig.enroll(&p, "phone-1", &rootfs, &[]);
    let mut all = vec![p.serial()];
    all.extend(needles.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let line = user_error(&o, 3, &refs);
    assert_eq!(before, listing(&p), "the refused phone was changed");
    line
}

#[test]
fn phonectl_error_not_rooted() {
    refused_enroll("unrooted", &["not rooted", "Magisk or KernelSU"]);
}

#[test]
fn phonectl_error_su_denied() {
    // Magisk answers `su -v` but denies the shell uid: doctor and enroll (even forced: nothing
    // can be done without root) refuse in one line that says where to grant it.
    let rig = Rig::new();
    let p = rig.phone("su-denied");
    let rootfs = mini_node_rootfs();
    let before = listing(&p);
    let needles = [
        p.serial(),
        "su denied".into(),
        "Permission denied".into(),
        "Superuser, allow `Shell`".into(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let o = rig.run(&["-s", &p.serial(), "doctor"]);
    user_error(&o, 3, &needles);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report
            .lines()
            .any(|l| l.contains("root") && l.contains("FAIL") && l.contains("Permission denied")),
        "{report}"
    );
    user_error(&rig.enroll(&p, "phone-1", &rootfs, &[]), 3, &needles);
    user_error(&rig.enroll_forced(&p, "phone-1", &rootfs, &[]), 3, &needles);
    assert_eq!(before, listing(&p), "the refused phone was changed");
}

#[test]
fn phonectl_error_armv7() {
    refused_enroll("armv7", &["armv7", "aarch64 only"]);
}

#[test]
fn phonectl_error_kernel_missing_required_options() {
    // The phone ships GKI's module list, which has no br_netfilter: BRIDGE_NETFILTER=m is named.
    let line = refused_enroll(
        "stock-gki",
        &[
            "missing required options",
            "PID_NS",
            "BRIDGE_NETFILTER (=m, but br_netfilter.ko is not on the phone)",
        ],
    );
    assert!(line.contains("PHONES.md"), "{line}");
}

#[test]
fn phonectl_error_not_enough_space_on_data() {
    // The need counts the k3s data image (256 MiB here) against the phone's 24 MiB /data.
    let rig = Rig::new();
    let p = rig.phone("full-data");
    let rootfs = mini_node_rootfs();
    let before = listing(&p);
    rig.config_with_data_image("phone-1");
    let o = rig.enroll(&p, "phone-1", &rootfs, &[]);
    user_error(&o, 3, &[&p.serial(), "not enough space on /data", "free"]);
    assert_eq!(before, listing(&p), "the refused phone was changed");
}

#[test]
fn phonectl_error_token_missing() {
    let rig = Rig::new();
    let p = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    let before = listing(&p);
    let mut args: Vec<String> = vec!["-s".into(), p.serial()];
    args.extend(rig.enroll_args("phone-1", &rootfs));
    let i = args.iter().position(|a| a == "--token-file").unwrap();
    args[i + 1] = rig.dir.path().join("no-such-token").display().to_string();
    let o = rig.cmd().args(&args).output().unwrap();
    user_error(&o, 2, &["token", "no-such-token"]);
    assert_eq!(before, listing(&p));
}

#[test]
fn phonectl_token_ca_hash_checked_against_the_server() {
    use sha2::Digest;
    let rig = Rig::new();
    let p = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    let (url, ca_pem) = armfleet_tests::k3s_server::k3s_cacerts_server();
    let cfg = rig.config("phone-1");
    let toml: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = \"{url}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&cfg, toml).unwrap();
    let token_file = rig.dir.path().join("token");
    let before = listing(&p);

    // Another cluster's token: refused before the phone is touched. Exit 2: what is wrong is the
    // laptop-side input (the token or the server URL), not the phone.
    let wrong = hex::encode(sha2::Sha256::digest(b"another cluster's CA"));
    std::fs::write(&token_file, format!("K10{wrong}::server:s3cr3t-other\n")).unwrap();
    let o = rig.enroll_forced(&p, "phone-1", &rootfs, &[]);
    user_error(&o, 2, &[&url, "/cacerts", &wrong, "token expects"]);
    assert!(!text(&o).contains("s3cr3t"), "token leaked: {}", text(&o));
    assert_eq!(before, listing(&p), "the phone was changed");

    // This server's token: the check passes and the enroll goes through.
    let right = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    std::fs::write(&token_file, format!("K10{right}::server:s3cr3t-this\n")).unwrap();
    let o = rig.enroll_forced(&p, "phone-1", &rootfs, &[]);
    ok(&o, &p);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the server's CA matches the token"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("s3cr3t"), "token leaked: {}", text(&o));
    let token = p.root().join("data/armfleet/rootfs/etc/armfleet/token");
    assert_eq!(
        std::fs::read_to_string(token).unwrap().trim(),
        format!("K10{right}::server:s3cr3t-this")
    );
}

/// The phone's battery with node-runtime's battery care on: the charging switch as root reads it.
fn charging_switch(phone: &VirtualPhone) -> String {
    let (code, out, err) = phone.root_shell("cat /sys/class/power_supply/battery/charging_enabled");
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

fn status_json(rig: &Rig, phone: &VirtualPhone) -> serde_json::Value {
    let o = rig.run(&["-s", &phone.serial(), "status", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)))
}

/// A supervisor killed outright (kill -9) on a phone on its charger: `status` says it is gone
/// (judged on the phone), `start` does not take its stale "running" record for a worker and its
/// new supervisor stops the orphaned agent first, and charging held off is given back by
/// `unenroll` — the virtual phone's own battery and charging switch.
#[test]
fn phonectl_killed_supervisor_is_told_apart_and_leaves_no_agent_or_charging_off() {
    let rig = Rig::new();
    let phone = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    let (code, _, err) = phone.root_shell("echo 85 > /sys/class/power_supply/battery/capacity");
    assert_eq!(code, 0, "{err}");
    let cfg = rig.config("phone-power");
    let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
    text_cfg.push_str("[power]\nwakelock = false\n");
    std::fs::write(&cfg, text_cfg).unwrap();
    ok(
        &rig.enroll_forced(&phone, "phone-power", &rootfs, &[]),
        &phone,
    );
    wait_for("charging held off at 85%", Duration::from_secs(20), || {
        (charging_switch(&phone) == "0").then_some(())
    });
    let st = status_json(&rig, &phone);
    assert_eq!(st["status"]["supervisor_running"], true, "{st}");
    let supervisor = st["status"]["pid"].as_u64().unwrap();

    // `shell -- CMD` returns when CMD ends, though its stdin (a terminal, here a pipe kept open)
    // never does.
    let mut sh = rig
        .cmd()
        .args(["-s", &phone.serial(), "shell", "--", "echo", "done-here"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _keep_open = sh.stdin.take();
    let exited = wait_for("shell -- echo to return", Duration::from_secs(30), || {
        sh.try_wait().unwrap()
    });
    assert!(exited.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sh.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out.trim(), "done-here");
    let agent = st["status"]["agent_pid"].as_u64().unwrap();

    let (code, _, err) = phone.root_shell(&format!("kill -9 {supervisor}"));
    assert_eq!(code, 0, "{err}");
    wait_for("supervisor gone", Duration::from_secs(10), || {
        (phone.root_shell(&format!("kill -0 {supervisor}")).0 != 0).then_some(())
    });
    // The record still says "running"; the phone's node-runtime says its writer is gone.
    let st = status_json(&rig, &phone);
    assert_eq!(st["status"]["state"], "running", "{st}");
    assert_eq!(st["status"]["supervisor_running"], false, "{st}");
    let human = ok(&rig.run(&["-s", &phone.serial(), "status"]), &phone);
    assert!(human.contains("stale"), "{human}");
    assert_eq!(
        phone.root_shell(&format!("kill -0 {agent}")).0,
        0,
        "the orphan runs"
    );

    // start: a new supervisor, the orphaned agent stopped first, one agent running.
    ok(
        &rig.run(&["-s", &phone.serial(), "start", "--wait", "60"]),
        &phone,
    );
    let st = status_json(&rig, &phone);
    assert_eq!(st["status"]["supervisor_running"], true, "{st}");
    assert_ne!(st["status"]["pid"].as_u64().unwrap(), supervisor);
    assert_ne!(
        phone.root_shell(&format!("kill -0 {agent}")).0,
        0,
        "orphaned agent still runs"
    );
    assert_eq!(standin_runs(&phone).len(), 2);
    assert_eq!(
        charging_switch(&phone),
        "0",
        "85%: still held off by the new supervisor"
    );

    // Killed again while holding charging off; unenroll gives it back.
    let pid = st["status"]["pid"].as_u64().unwrap();
    assert_eq!(phone.root_shell(&format!("kill -9 {pid}")).0, 0);
    ok(&rig.run(&["-s", &phone.serial(), "unenroll"]), &phone);
    assert_eq!(charging_switch(&phone), "1", "unenroll left charging off");
}

/// `status --all --json` lists every phone, a failing one with its error, and exits non-zero when
/// any failed: a script never mistakes "nothing reported" for "all fine".
#[test]
fn phonectl_status_all_json_reports_each_phone_and_fails_for_any() {
    let rig = Rig::new();
    let plain = rig.phone("rooted-magisk");
    let locked = rig.phone("unauthorized");
    let o = rig.run(&["status", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    let find = |serial: &str| {
        entries
            .iter()
            .find(|e| e["serial"] == serial)
            .unwrap_or_else(|| panic!("{serial} missing from {v}"))
    };
    let e = find(&plain.serial());
    assert_eq!(e["ok"], false);
    assert!(e["error"].as_str().unwrap().contains("not enrolled"), "{e}");
    let e = find(&locked.serial());
    assert_eq!(e["ok"], false);
    assert!(e["error"].as_str().unwrap().contains("unauthorized"), "{e}");
    // Without --json: one line per failing phone, the same exit code.
    let o = rig.run(&["status", "--all"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not enrolled") && err.contains("unauthorized"),
        "{err}"
    );
}

#[test]
fn phonectl_error_no_node_config_and_no_name() {
    let rig = Rig::new();
    let p = rig.phone("rooted-magisk");
    let rootfs = mini_node_rootfs();
    let before = listing(&p);
    let mut args: Vec<String> = vec!["-s".into(), p.serial()];
    args.extend(rig.enroll_args("phone-1", &rootfs));
    let i = args.iter().position(|a| a == "--config").unwrap();
    args.drain(i..i + 2);
    let o = rig.cmd().args(&args).output().unwrap();
    user_error(&o, 2, &[&p.serial(), "--name"]);
    assert_eq!(before, listing(&p));
}

#[test]
fn phonectl_completions_and_man_pages() {
    let o = Command::new(phonectl_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("enroll"));
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(phonectl_bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for page in ["phonectl.1", "phonectl-enroll.1", "phonectl-doctor.1"] {
        let t = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(t.contains(".TH"), "{page}");
    }
}
