//! The k3s stand-in is as strict as `k3s agent` v1.35+: each refusal in k3s' own words and with
//! its exit code (an undefined flag, a cgroup v1 host without `fail-cgroupv1=false`, no pids
//! controller, no /dev/kmsg, an unwritable data dir, a token file that never comes), and
//! node-runtime's real command line accepted only when it carries what the agent needs. The
//! cross-built aarch64 stand-in runs through binfmt/qemu-user, as in the other tests.

use armfleet_tests::standin::{KillOnDrop, Node, TOKEN, free_port, set_mode, wait_for};
use armfleet_tests::util::{aarch64_bin, skip_for_missing};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// The kubelet's refusal, as the agent logs it (k3s' `kubelet exited:` prefix).
const CGROUP_V1_REFUSAL: &str = "kubelet exited: failed to validate kubelet configuration, error: \
kubelet is configured to not run on a host using cgroup v1. cgroup v1 support is unsupported and \
will be removed in a future release, path: &TypeMeta{Kind:,APIVersion:,}";

/// The stand-in in a temp dir with a 0600 token, run directly.
struct Standin {
    dir: tempfile::TempDir,
    port: u16,
}

impl Standin {
    fn new() -> Standin {
        let dir = tempfile::Builder::new()
            .prefix("standin-test-")
            .tempdir()
            .unwrap();
        std::fs::copy(aarch64_bin("k3s-standin"), dir.path().join("k3s")).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        set_mode(&token, 0o600);
        Standin {
            dir,
            port: free_port(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bin(&self) -> PathBuf {
        self.path("k3s")
    }

    fn control(&self, text: &str) {
        std::fs::write(self.path("k3s.control"), text).unwrap();
    }

    /// The command line node-runtime builds for this worker (its own code, from a node.toml),
    /// plus `more`.
    fn node_runtime_argv(&self, more: &[&str]) -> Vec<String> {
        let d = self.dir.path().display();
        let text = format!(
            r#"[node]
name = "pi-test"
kind = "pi"
[server]
url = "https://10.10.0.1:6443"
token_file = "{d}/token"
[k3s]
data_dir = "{d}/k3s-data"
kubelet_args = ["healthz-port={port}"]
[network]
node_ip = "127.0.0.1"
iface = "lo"
[labels]
"armfleet.io/kind" = "pi"
"#,
            port = self.port
        );
        let config = bootstrap::NodeConfig::from_toml_str(&text, "test").unwrap();
        // The layout is given as v2: the argv without armfleet's v1 override, which each test adds
        // (or not) itself.
        let mut argv = node_runtime::agent::agent_args(
            &config,
            config.network.node_ip,
            bootstrap::status::CgroupLayout::V2,
        );
        argv.extend(more.iter().map(|s| s.to_string()));
        argv
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new(self.bin());
        c.args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// A run that must end by itself: killed after a minute (a check that does not refuse would
    /// otherwise leave the agent running and the test waiting).
    fn bounded(&self, argv: &[String]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", "60"])
            .arg(self.bin())
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, argv: &[String]) -> Output {
        self.bounded(argv).output().expect("run the stand-in")
    }

    /// Runs it in a private mount namespace after `setup` (a shell script run as root there).
    fn run_in_namespace(&self, setup: &str, argv: &[String]) -> Output {
        Command::new("timeout")
            .args([
                "-s",
                "KILL",
                "60",
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["--", "/bin/sh", "-c"])
            .arg(format!("set -e\n{setup}\nexec \"$0\" \"$@\""))
            .arg(self.bin())
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run unshare")
    }

    fn runs(&self) -> Vec<serde_json::Value> {
        armfleet_tests::standin::run_records(&self.path("k3s.runs"))
    }

    fn last_run(&self) -> serde_json::Value {
        self.runs().pop().expect("a run record")
    }
}

/// stderr's log lines without their `time="..." ` stamp.
fn log_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            assert!(l.starts_with("time=\""), "not a logrus line: {l}");
            l.split_once("\" ").map(|(_, r)| r.to_owned()).unwrap()
        })
        .collect()
}

fn last_log_line(out: &Output) -> String {
    log_lines(out).pop().unwrap_or_default()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True on this machine's cgroup layout (v1 or hybrid), where k3s 1.35+ refuses to run by
/// default.
fn machine_is_cgroup_v1() -> bool {
    let out = Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() != "cgroup2fs"
}

fn root_or_skip() -> bool {
    nix::unistd::Uid::effective().is_root() || !skip_for_missing("root (mount namespaces)")
}

#[test]
fn undefined_flag_prints_usage_and_dies_before_touching_anything() {
    let s = Standin::new();
    for (extra, name) in [
        ("--no-flannel", "no-flannel"),
        ("--disable=traefik", "disable"),
        ("-cluster-secret", "cluster-secret"),
    ] {
        let out = s.run(&s.node_runtime_argv(&[extra]));
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with(&format!(
                "Incorrect Usage: flag provided but not defined: -{name}\n\nNAME:\n   k3s agent - Run node agent\n\nUSAGE:\n   k3s agent [OPTIONS]\n\nOPTIONS:\n"
            )),
            "{stdout}"
        );
        assert!(stdout.contains("   --token-file value "), "{stdout}");
        assert_eq!(
            log_lines(&out),
            [format!(
                "level=fatal msg=\"flag provided but not defined: -{name}\""
            )]
        );
        let run = s.last_run();
        assert_eq!(run["failed_check"], "flags");
    }
    assert!(!s.path("k3s-data").exists(), "the data dir was touched");
    // Flags k3s defines, in every form Go's flag package takes, pass the parser.
    let out = s.run(&s.node_runtime_argv(&[
        "-t",
        "x",
        "--with-node-id",
        "--debug=false",
        "-v=2",
        "--snapshotter=native",
        "--kube-proxy-arg",
        "metrics-bind-address=0.0.0.0",
        "--prefer-bundled-bin",
    ]));
    assert_ne!(s.last_run()["failed_check"], "flags", "{}", describe(&out));
    // `--help` is urfave's own flag; `server` has its own flags; other commands are not played.
    let out = s.run(&["agent".into(), "--help".into()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME:\n   k3s agent"));
    let out = s.run(&["server".into(), "--help".into()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME:\n   k3s server"));
    let data = tempfile::tempdir().unwrap();
    let out = s.run(&[
        "server".into(),
        "--flannel-iface=eth0.10".into(),
        format!("--data-dir={}", data.path().display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.last_run()["failed_check"], "token", "{}", describe(&out));
    let out = s.run(&["server".into(), "--disable-apiserver-lb".into()]);
    assert_eq!(out.status.code(), Some(1), "an agent-only flag");
    assert_eq!(s.last_run()["failed_check"], "flags");
    let out = s.run(&["etcd-snapshot".into()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.last_run()["failed_check"], "command");
}

#[test]
fn cgroup_v1_host_is_refused_unless_the_kubelet_is_told_fail_cgroupv1_false() {
    if !machine_is_cgroup_v1() {
        // A v2 machine: the real argv runs as it is (checked in the node-runtime test below).
        return;
    }
    let s = Standin::new();
    let t0 = Instant::now();
    let out = s.run(&s.node_runtime_argv(&[]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        format!("level=fatal msg=\"{CGROUP_V1_REFUSAL}\"")
    );
    let run = s.last_run();
    assert_eq!(run["failed_check"], "cgroup_v1");
    assert_eq!(run["fail_cgroupv1"], true);
    assert!(
        matches!(run["cgroup_layout"].as_str(), Some("v1" | "hybrid")),
        "{run}"
    );
    eprintln!("cgroup v1 refusal after {:?}", t0.elapsed());

    // Newer k3s ends a kubelet failure through its shutdown path: logged, and exit 0.
    s.control("kubelet_exit = shutdown\n");
    let out = s.run(&s.node_runtime_argv(&[]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        format!("level=error msg=\"Shutdown request received: \\\"{CGROUP_V1_REFUSAL}\\\"\"")
    );
    s.control("");

    // Told, in either argument form, it runs and reports healthy.
    for form in [
        vec!["--kubelet-arg=fail-cgroupv1=false"],
        vec!["--kubelet-arg", "fail-cgroupv1=false"],
    ] {
        let mut child = KillOnDrop(s.command(&s.node_runtime_argv(&form)).spawn().unwrap());
        let body = wait_for("healthz", T, || healthz(s.port));
        assert_eq!(body, "ok");
        let run = s.last_run();
        assert_eq!(run["failed_check"], serde_json::Value::Null, "{run}");
        assert_eq!(run["fail_cgroupv1"], false);
        armfleet_tests::standin::signal(child.0.id(), nix::sys::signal::Signal::SIGTERM);
        let code = armfleet_tests::standin::wait_exit(&mut child.0, T);
        assert_eq!(code.code(), Some(0));
    }
    // A value the kubelet cannot parse is its own flag error.
    let out = s.run(&s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=nope"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.last_run()["failed_check"], "kubelet_arg");
}

/// `GET /healthz` on 127.0.0.1:port; the body when it answers 200.
fn healthz(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut r = String::new();
    c.read_to_string(&mut r).ok()?;
    r.starts_with("HTTP/1.1 200")
        .then(|| r.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

#[test]
fn health_comes_only_after_the_checks_and_the_ready_delay() {
    let s = Standin::new();
    s.control("ready_after_ms = 1500\n");
    let t0 = Instant::now();
    let mut child = KillOnDrop(
        s.command(&s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"]))
            .env("IPTABLES_MODE", "legacy")
            .spawn()
            .unwrap(),
    );
    wait_for("the run record", T, || (!s.runs().is_empty()).then_some(()));
    assert!(healthz(s.port).is_none(), "healthy before ready_after_ms");
    wait_for("healthz", T, || healthz(s.port));
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    // The record says what node-runtime (here: its argv builder) gave the agent.
    let run = s.last_run();
    assert_eq!(run["iptables_mode"], "legacy");
    assert_eq!(run["healthz_port"], s.port);
    assert_eq!(run["flags"]["node-name"], serde_json::json!(["pi-test"]));
    assert_eq!(
        run["flags"]["kubelet-arg"],
        serde_json::json!([format!("healthz-port={}", s.port), "fail-cgroupv1=false"])
    );
    assert_eq!(run["token_file"]["mode"], 0o600);
    assert_eq!(run["kmsg"]["ok"], true);
    assert!(
        s.path("k3s-data/data/.lock").is_file(),
        "extract's lock file"
    );
    armfleet_tests::standin::signal(child.0.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(armfleet_tests::standin::wait_exit(&mut child.0, T).success());
}

#[test]
fn token_file_is_waited_for_then_the_wait_times_out() {
    let s = Standin::new();
    s.control("token_wait_secs = 3\n");
    let argv: Vec<String> = s
        .node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"])
        .into_iter()
        .map(|a| a.replace("/token", "/late-token"))
        .collect();
    let missing = s.path("late-token").display().to_string();
    let t0 = Instant::now();
    let out = s.run(&argv);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = log_lines(&out);
    let waiting = format!("level=info msg=\"Waiting for file \\\"{missing}\\\" to be created\"");
    assert!(
        lines.iter().filter(|l| **l == waiting).count() >= 2,
        "{lines:?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "level=fatal msg=\"timed out waiting for the condition\""
    );
    assert!(took >= Duration::from_secs(3), "gave up after {took:?}");
    assert_eq!(s.last_run()["failed_check"], "token_file");

    // A token that arrives during the wait is taken (then the run goes on: here it crashes as
    // told, which proves it got past every check).
    s.control("token_wait_secs = 30\ncrash_after_ms = 0\nexit_code = 7\n");
    let child = s.command(&argv).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(s.path("late-token"), format!("{TOKEN}\n")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(log_lines(&out).contains(&waiting));
    assert_eq!(s.last_run()["token_file"]["ok"], true);
}

#[test]
fn token_file_k3s_cannot_read_is_fatal_at_once_and_a_0644_one_is_fine() {
    let s = Standin::new();
    s.control("crash_after_ms = 0\nexit_code = 7\n");
    let with_token = |path: &Path| -> Vec<String> {
        s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"])
            .into_iter()
            .map(|a| {
                if a.ends_with("/token") {
                    path.display().to_string()
                } else {
                    a
                }
            })
            .collect()
    };
    // A directory where the file should be: Go's read error, no wait.
    std::fs::create_dir(s.path("token-dir")).unwrap();
    let t0 = Instant::now();
    let out = s.run(&with_token(&s.path("token-dir")));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        format!(
            "level=fatal msg=\"read {}: is a directory\"",
            s.path("token-dir").display()
        )
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "it waited");
    // Empty: no token at all.
    std::fs::write(s.path("empty"), "\n").unwrap();
    let out = s.run(&with_token(&s.path("empty")));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        last_log_line(&out),
        "level=fatal msg=\"--token is required\""
    );
    // k3s reads a world-readable token as any other: armfleet's 0600 rule is armfleet's to
    // enforce, and the record shows the mode for armfleet's tests.
    set_mode(&s.path("token"), 0o644);
    let out = s.run(&with_token(&s.path("token")));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let run = s.last_run();
    assert_eq!(run["token_file"]["mode"], 0o644);
    assert_eq!(run["token_file"]["ok"], true);
    assert_eq!(run["failed_check"], serde_json::Value::Null);
}

#[test]
fn data_dir_must_be_writable() {
    let s = Standin::new();
    let argv = |dd: &Path| -> Vec<String> {
        let mut a = s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"]);
        let i = a.iter().position(|x| x == "--data-dir").unwrap();
        a[i + 1] = dd.display().to_string();
        a
    };
    std::fs::write(s.path("a-file"), "").unwrap();
    let out = s.run(&argv(&s.path("a-file/k3s")));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        "level=fatal msg=\"extracting data: not a directory\""
    );
    assert_eq!(s.last_run()["failed_check"], "data_dir");
    if !root_or_skip() {
        return;
    }
    // On a read-only filesystem: the data dir exists (k3s' mkdir is not what fails), the lock
    // file cannot be made.
    let ro = s.path("ro");
    std::fs::create_dir_all(ro.join("k3s/data")).unwrap();
    let out = s.run_in_namespace(
        &format!(
            "mount --bind {0} {0}\nmount -o remount,bind,ro {0}",
            ro.display()
        ),
        &argv(&ro.join("k3s")),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        "level=fatal msg=\"extracting data: read-only file system\""
    );
}

#[test]
fn kmsg_must_open_and_a_link_to_the_console_does() {
    if !root_or_skip() {
        return;
    }
    let s = Standin::new();
    let argv = s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"]);
    // A /dev without kmsg (some Android kernels hide it).
    let out = s.run_in_namespace("mount -t tmpfs -o mode=755 dev /dev", &argv);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        "level=error msg=\"kubelet exited: failed to run Kubelet: failed to create kubelet: open /dev/kmsg: no such file or directory\""
    );
    let run = s.last_run();
    assert_eq!(run["failed_check"], "kmsg");
    assert_eq!(run["kmsg"]["ok"], false);
    // The usual fix (kind#664, and node-runtime's chroot): /dev/kmsg -> console.
    s.control("crash_after_ms = 0\nexit_code = 7\n");
    let out = s.run_in_namespace(
        "cp -a /dev/console /tmp/console.$$\nmount -t tmpfs -o mode=755 dev /dev\n\
         mv /tmp/console.$$ /dev/console\nln -s console /dev/kmsg",
        &argv,
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let run = s.last_run();
    assert_eq!(
        run["kmsg"],
        serde_json::json!({"ok": true, "link": "console"})
    );
}

#[test]
fn pids_controller_must_be_where_the_kubelet_looks() {
    if !root_or_skip() {
        return;
    }
    if !machine_is_cgroup_v1() {
        return;
    }
    let s = Standin::new();
    let argv = s.node_runtime_argv(&["--kubelet-arg=fail-cgroupv1=false"]);
    // A v1 /sys/fs/cgroup as a phone chroot might have it: memory, cpu, cpuset, but no pids.
    let v1 = "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n\
              for c in memory cpu cpuset; do mkdir /sys/fs/cgroup/$c; \
              mount -t cgroup -o $c none /sys/fs/cgroup/$c; done";
    let out = s.run_in_namespace(v1, &argv);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        last_log_line(&out),
        "level=fatal msg=\"pids cgroup controller not found\""
    );
    let run = s.last_run();
    assert_eq!(run["failed_check"], "pids");
    assert_eq!(run["cgroup_layout"], "v1");
    assert_eq!(run["cgroup"]["pids_mounted"], false);
    // With pids there too it passes (and says v1: no cgroup2 at unified).
    s.control("crash_after_ms = 0\nexit_code = 7\n");
    let out = s.run_in_namespace(
        &format!(
            "{v1}\nmkdir /sys/fs/cgroup/pids; mount -t cgroup -o pids none /sys/fs/cgroup/pids"
        ),
        &argv,
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(s.last_run()["cgroup_layout"], "v1");
}

// ---------- node-runtime's own command line against the strict stand-in ----------

#[test]
fn node_runtime_argv_with_fail_cgroupv1_false_in_node_toml_is_accepted() {
    let mut node = Node::new();
    node.kubelet_args.push("fail-cgroupv1=false".into());
    node.nameservers = "[\"10.10.0.1\"]".into();
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_status("healthy", T, |s| s.healthy);
    let run = node.runs().pop().unwrap();
    assert_eq!(run["failed_check"], serde_json::Value::Null, "{run}");
    assert_eq!(run["positional"], serde_json::json!([]));
    armfleet_tests::standin::signal(rt.0.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(armfleet_tests::standin::wait_exit(&mut rt.0, T).success());
}

#[test]
fn node_runtime_undefined_extra_arg_is_k3s_refusal_in_the_agent_log() {
    let mut node = Node::new();
    node.k3s_keys = "extra_args = [\"--no-flannel\"]\n".into();
    node.supervise_keys =
        "backoff_initial_ms = 200\nbackoff_max_secs = 1\nstop_grace_secs = 2\n".into();
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(2, T);
    assert!(runs.iter().all(|r| r["failed_check"] == "flags"));
    let st = node.wait_status("exit recorded", T, |s| s.last_exit.is_some());
    assert_eq!(st.last_exit.unwrap().code, Some(1));
    let log = node.agent_log();
    assert!(
        log.contains("Incorrect Usage: flag provided but not defined: -no-flannel"),
        "{log}"
    );
    assert!(
        log.contains("level=fatal msg=\"flag provided but not defined: -no-flannel\""),
        "{log}"
    );
    armfleet_tests::standin::signal(rt.0.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(armfleet_tests::standin::wait_exit(&mut rt.0, T).success());
}

/// What the lead's part of issue #13 adds: node-runtime passes `--kubelet-arg=fail-cgroupv1=false`
/// where `/sys/fs/cgroup` is not cgroup2, so k3s 1.35+ runs on a v1/hybrid worker. Until then
/// this test fails with the kubelet's refusal in the agent log.
#[test]
fn node_runtime_gets_the_agent_healthy_on_this_machines_cgroups() {
    let node = Node::new();
    let mut rt = KillOnDrop(node.spawn_run());
    let run = node.wait_runs(1, T).remove(0);
    assert_eq!(
        run["failed_check"],
        serde_json::Value::Null,
        "the strict stand-in refused node-runtime's agent: {}\nagent log:\n{}",
        run["failure"],
        node.agent_log()
    );
    node.wait_status("healthy", T, |s| s.healthy);
    armfleet_tests::standin::signal(rt.0.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(armfleet_tests::standin::wait_exit(&mut rt.0, T).success());
}
