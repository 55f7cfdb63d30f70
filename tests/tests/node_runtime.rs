//! node-runtime supervising the k3s stand-in: the cross-built aarch64 binaries, run through
//! binfmt/qemu-user, as on a worker. Argument building, the token kept out of argv/env/logs,
//! restart backoff timings, SIGTERM/SIGHUP, log rotation, the status record, detach/stop.

use armfleet_tests::standin::{KillOnDrop, Node, TOKEN, alive, signal, wait_exit, wait_for};
use bootstrap::status::AgentState;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn argv(run: &serde_json::Value) -> Vec<String> {
    run["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn agent_gets_config_args_token_only_as_file_and_stops_on_sigterm() {
    let mut node = Node::new();
    node.nameservers = "[\"10.10.0.1\"]".into();
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(1, T);
    let run = &runs[0];
    let a = argv(run);
    let d = node.dir.path().display().to_string();
    let joined = a.join(" ");
    for want in [
        "agent --server https://10.10.0.1:6443".to_string(),
        format!("--token-file {d}/token"),
        "--node-name pi-test".into(),
        "--node-label armfleet.io/kind=pi".into(),
        "--node-ip 127.0.0.1".into(),
        "--flannel-iface lo".into(),
        format!("--data-dir {d}/k3s-data"),
        "--resolv-conf /etc/armfleet/resolv.conf".into(),
        format!("--kubelet-arg healthz-port={}", node.port),
    ] {
        assert!(joined.contains(&want), "missing `{want}` in {joined}");
    }
    assert_eq!(run["token_file"]["ok"], true, "{run}");
    assert_eq!(run["token_file"]["mode"], 0o600);

    // The live process: its command line and environment, as any user could read them.
    let pid = run["pid"].as_u64().unwrap() as u32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let secret = "s3cr3t-standin-token";
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
    assert!(!String::from_utf8_lossy(&environ).contains(secret));
    assert!(!run["env"].to_string().contains(secret));
    assert!(TOKEN.contains(secret));

    let st = node.wait_status("healthy status", T, |s| s.healthy);
    assert_eq!(st.state, AgentState::Running);
    assert_eq!(st.agent_pid, Some(pid));
    assert_eq!(st.node_name, "pi-test");
    assert_eq!(st.node_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.pid, rt.0.id());
    // The pidfile (next to the status file) names this supervisor while it runs.
    assert_eq!(
        std::fs::read_to_string(node.path("node-runtime.pid"))
            .unwrap()
            .trim(),
        rt.0.id().to_string()
    );

    signal(rt.0.id(), Signal::SIGTERM);
    let code = wait_exit(&mut rt.0, T);
    assert!(code.success(), "{code:?}: {}", node.stderr());
    assert!(!alive(pid), "stand-in {pid} survived its supervisor");
    let st = node.status().unwrap();
    assert_eq!(st.state, AgentState::Stopped);
    assert_eq!(st.last_exit.as_ref().unwrap().code, Some(0));
    let logs = format!("{}{}", node.agent_log(), node.stderr());
    assert!(node.agent_log().contains("Starting k3s agent"), "{logs}");
    assert!(!logs.contains(secret));
}

#[test]
fn crashes_restart_with_exponential_backoff_capped() {
    let mut node = Node::new();
    node.control("crash_after_ms = 0\nexit_code = 3\nhealthz = false\n");
    node.supervise_keys =
        "backoff_initial_ms = 150\nbackoff_max_secs = 1\nhealthy_after_secs = 60\nstop_grace_secs = 2\n"
            .into();
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(7, Duration::from_secs(40));
    let starts: Vec<u64> = runs
        .iter()
        .map(|r| r["unix_ms"].as_u64().unwrap())
        .collect();
    // Start-to-start = the run (process start under qemu + immediate exit) + the delay.
    let delays = [150u64, 300, 600, 1000, 1000, 1000];
    for (k, want) in delays.iter().enumerate() {
        let got = starts[k + 1] - starts[k];
        assert!(
            got >= *want,
            "restart {k}: {got} ms < backoff {want} ms ({starts:?})"
        );
        assert!(
            got <= want + 1500,
            "restart {k}: {got} ms, far above backoff {want} ms ({starts:?})"
        );
    }
    // The first retry comes within a second.
    assert!(starts[1] - starts[0] < 1000 + 500);
    let st = node.wait_status("restarts counted", T, |s| s.restarts >= 6);
    assert_eq!(st.last_exit.as_ref().unwrap().code, Some(3));
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn backoff_resets_after_a_healthy_period() {
    let mut node = Node::new();
    // Each run lives 1.2 s, longer than healthy_after (1 s): the delay never grows.
    node.control("crash_after_ms = 1200\nexit_code = 1\n");
    node.supervise_keys =
        "backoff_initial_ms = 100\nbackoff_max_secs = 5\nhealthy_after_secs = 1\nstop_grace_secs = 2\n"
            .into();
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(7, Duration::from_secs(40));
    let starts: Vec<u64> = runs
        .iter()
        .map(|r| r["unix_ms"].as_u64().unwrap())
        .collect();
    for w in starts.windows(2) {
        let got = w[1] - w[0];
        // Without the reset the delays would double (100, 200 … 3200 ms): the 5th gap would be
        // 1200 + 1600 ms and the 6th 1200 + 3200 ms, both outside this window, which leaves
        // 1.2 s for starting a process under a loaded CI machine.
        assert!((1300..2500).contains(&got), "gap {got} ms ({starts:?})");
    }
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn agent_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut node = Node::new();
    node.control("hang = true\n");
    node.supervise_keys = "backoff_initial_ms = 200\nstop_grace_secs = 2\n".into();
    let mut rt = KillOnDrop(node.spawn_run());
    let pid = node.wait_runs(1, T)[0]["pid"].as_u64().unwrap() as u32;
    node.wait_status("running", T, |s| s.agent_pid == Some(pid));
    let t0 = Instant::now();
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before the grace"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(!alive(pid));
    let st = node.status().unwrap();
    assert_eq!(st.last_exit.unwrap().signal, Some(9));
    assert!(node.agent_log().contains("ignoring signal"));
}

#[test]
fn sighup_restarts_only_when_arguments_change() {
    let node_base = Node::new();
    let mut node = node_base;
    let mut rt = KillOnDrop(node.spawn_run());
    let first = node.wait_runs(1, T)[0]["pid"].as_u64().unwrap() as u32;
    node.wait_status("running", T, |s| s.agent_pid == Some(first));

    // Same arguments (a supervise-only change): the agent is left alone.
    node.supervise_keys.push_str("healthy_after_secs = 30\n");
    node.write_config();
    signal(rt.0.id(), Signal::SIGHUP);
    wait_for("unchanged note in the log", T, || {
        node.agent_log()
            .contains("arguments unchanged")
            .then_some(())
    });
    assert_eq!(node.runs().len(), 1);
    assert!(alive(first));

    // A new label: restart with it.
    node.labels.push_str("\"armfleet.io/zone\" = \"desk\"\n");
    node.write_config();
    signal(rt.0.id(), Signal::SIGHUP);
    let runs = node.wait_runs(2, T);
    assert!(
        argv(&runs[1])
            .join(" ")
            .contains("--node-label armfleet.io/zone=desk")
    );
    assert!(
        !alive(first) || {
            // reaped a moment later
            wait_for("old agent gone", T, || (!alive(first)).then_some(()));
            true
        }
    );
    let st = node.wait_status("second agent", T, |s| {
        s.agent_pid == Some(runs[1]["pid"].as_u64().unwrap() as u32)
    });
    assert_eq!(st.restarts, 0, "a SIGHUP restart is not a crash");

    // A broken config on SIGHUP: kept running with the old one, and said so.
    std::fs::write(node.path("node.toml"), "this is = = not toml").unwrap();
    signal(rt.0.id(), Signal::SIGHUP);
    wait_for("refusal in the log", T, || {
        node.agent_log()
            .contains("keeping the running config")
            .then_some(())
    });
    assert_eq!(node.runs().len(), 2);
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn agent_output_goes_to_size_rotated_logs() {
    let mut node = Node::new();
    node.control("log_lines = 3000\nlog_line_bytes = 100\n");
    node.logs_keys = "max_bytes = 16384\nkeep = 3\n".into();
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_status("healthy", T, |s| s.healthy);
    let log = node.path("log");
    wait_for("three rotations", T, || {
        node.path("log/k3s-agent.log.3").exists().then_some(())
    });
    assert!(!node.path("log/k3s-agent.log.4").exists());
    for f in [
        "k3s-agent.log",
        "k3s-agent.log.1",
        "k3s-agent.log.2",
        "k3s-agent.log.3",
    ] {
        let len = std::fs::metadata(log.join(f)).unwrap().len();
        assert!(len <= 16384, "{f} is {len} bytes");
    }
    let r1 = std::fs::read_to_string(log.join("k3s-agent.log.1")).unwrap();
    assert!(r1.ends_with('\n'), "rotated at a line boundary");
    assert!(r1.contains("filler"));
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn status_command_human_json_and_stale() {
    let node = Node::new();
    let config = node.write_config();
    let cfg = config.to_str().unwrap();
    let mut rt = node.spawn_run();
    node.wait_status("healthy", T, |s| s.healthy);
    let out = node.node_runtime(&["status", "--config", cfg]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node pi-test: agent running") && text.contains("healthy"),
        "{text}"
    );
    let out = node.node_runtime(&["status", "--json", "--config", cfg]);
    let s: bootstrap::status::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.pid, rt.id());
    let agent = s.agent_pid.unwrap();

    assert_eq!(s.supervisor_running, Some(true), "judged where it runs");
    assert!(s.agent_up());

    // The supervisor dies without cleaning up: the record is stale, and `status` says so — in
    // the JSON too, which is what phonectl reads from a phone.
    let _ = rt.kill();
    let _ = rt.wait();
    let out = node.node_runtime(&["status", "--config", cfg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stale"), "{text}");
    let out = node.node_runtime(&["status", "--json", "--config", cfg]);
    let s: bootstrap::status::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s.state,
        AgentState::Running,
        "the record as the dead writer left it"
    );
    assert_eq!(s.supervisor_running, Some(false));
    assert!(!s.agent_up());
    // A live process that is not node-runtime under the recorded pid is no supervisor either.
    let mut other = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap(),
    );
    std::fs::write(node.path("node-runtime.pid"), format!("{}\n", other.0.id())).unwrap();
    let mut record = node.status().unwrap();
    record.pid = other.0.id();
    bootstrap::status::write_atomic(&node.path("status.json"), &record).unwrap();
    let out = node.node_runtime(&["status", "--json", "--config", cfg]);
    let s: bootstrap::status::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.supervisor_running, Some(false));
    // ... and `stop` does not signal it.
    let out = node.node_runtime(&["stop", "--config", cfg]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    assert!(
        alive(other.0.id()),
        "stop signalled a process that is not node-runtime"
    );
    let _ = other.0.kill();
    signal(agent, Signal::SIGKILL);
}

/// A boot hook racing an enroll: two supervisors started at the same moment, one wins.
#[test]
fn two_supervisors_started_at_once_one_runs() {
    let node = Node::new();
    let config = node.write_config();
    let spawn = || {
        std::process::Command::new(armfleet_tests::util::aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (mut a, mut b) = (KillOnDrop(a), KillOnDrop(b));
    node.wait_runs(1, T);
    // The loser exits 2 saying who runs; the winner keeps running.
    let exited = wait_for("one supervisor to give up", T, || {
        for c in [&mut a, &mut b] {
            if let Ok(Some(code)) = c.0.try_wait() {
                return Some((c.0.id(), code));
            }
        }
        None
    });
    assert_eq!(exited.1.code(), Some(2));
    let winner = if exited.0 == a.0.id() { &mut b } else { &mut a };
    assert!(alive(winner.0.id()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.runs().len(), 1, "two agents were started");
    signal(winner.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut winner.0, T).success());
}

/// The pids of the stand-in's children, waiting until `n` are recorded.
fn child_pids(node: &Node, n: usize) -> Vec<u32> {
    wait_for("the stand-in's children", T, || {
        let pids: Vec<u32> = std::fs::read_to_string(node.path("k3s.runs.child"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (pids.len() >= n).then_some(pids)
    })
}

/// The agent's children share its process group and its log pipe (as containerd does k3s'): one
/// outliving a crashed agent must not stall the supervisor's restarts, and a stop takes the
/// whole group down.
#[test]
fn agent_children_neither_stall_restarts_nor_outlive_a_stop() {
    let node = Node::new();
    node.control("child = true\ncrash_after_ms = 300\ncrash_runs = 1\n");
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(2, T);
    let first_child = child_pids(&node, 1)[0];
    assert!(
        alive(first_child),
        "the first run's child should still hold the log pipe"
    );
    let second = runs[1]["pid"].as_u64().unwrap() as u32;
    node.wait_status("second run healthy", T, |s| {
        s.healthy && s.agent_pid == Some(second)
    });
    // The supervisor still answers: status written, signals handled.
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success(), "{}", node.stderr());
    let children = child_pids(&node, 2);
    wait_for("the second run's child gone with its group", T, || {
        (!alive(children[1])).then_some(())
    });
    assert!(!alive(second));
    signal(first_child, Signal::SIGKILL);
}

/// A supervisor killed outright leaves its agent running; the next one stops it before starting
/// its own, so there is never a second agent beside the first.
#[test]
fn orphaned_agent_of_a_killed_supervisor_is_stopped_first() {
    let node = Node::new();
    node.control("child = true\n");
    let mut rt = node.spawn_run();
    let first = node.wait_runs(1, T)[0]["pid"].as_u64().unwrap() as u32;
    // Healthy: the stand-in is past its start-up (child started, log lines written), so the
    // kill below leaves a settled agent rather than one cut off half-way.
    node.wait_status("running", T, |s| s.agent_pid == Some(first) && s.healthy);
    let first_child = child_pids(&node, 1)[0];
    let _ = rt.kill();
    let _ = rt.wait();
    assert!(alive(first), "the agent outlives a SIGKILLed supervisor");
    let mut rt = KillOnDrop(node.spawn_run());
    let runs = node.wait_runs(2, T);
    let second = runs[1]["pid"].as_u64().unwrap() as u32;
    assert!(
        !alive(first),
        "the orphaned agent still runs beside the new one"
    );
    assert!(!alive(first_child), "the orphaned agent's child still runs");
    assert!(alive(second));
    assert!(
        node.stderr().contains("previous node-runtime"),
        "{}",
        node.stderr()
    );
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}

#[test]
fn detach_returns_once_prepared_and_stop_waits() {
    let node = Node::new();
    let config = node.write_config();
    let cfg = config.to_str().unwrap();
    let t0 = Instant::now();
    let out = node.node_runtime(&["run", "--detach", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text
        .split("pid ")
        .nth(1)
        .and_then(|s| s.trim_end().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text}"));
    assert!(alive(pid));
    // Once `run --detach` returned, its record is there: `status` finds this run at once.
    let out = node.node_runtime(&["status", "--json", "--config", cfg]);
    assert!(
        out.status.success(),
        "status right after run --detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: bootstrap::status::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.pid, pid);
    let st = node.wait_status("healthy", T, |s| s.healthy);
    assert_eq!(st.pid, pid);
    let agent = st.agent_pid.unwrap();
    assert!(node.path("log/node-runtime.log").exists());

    let out = node.node_runtime(&["stop", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert!(!alive(pid) && !alive(agent));
    assert_eq!(node.status().unwrap().state, AgentState::Stopped);
    let out = node.node_runtime(&["stop", "--config", cfg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));

    // A detached start that cannot prepare says why, with the exit class.
    std::fs::remove_file(node.path("token")).unwrap();
    let out = node.node_runtime(&["run", "--detach", "--config", cfg]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn second_supervisor_for_the_same_node_is_refused() {
    let node = Node::new();
    let mut rt = KillOnDrop(node.spawn_run());
    node.wait_status("running", T, |s| s.state == AgentState::Running);
    let cfg = node.path("node.toml");
    // The pidfile is the worker's fixed path; on this Pi-style config that is the host's
    // /var/lib/armfleet: only check the refusal when this run owns it.
    let out = node.node_runtime(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already runs"));
    signal(rt.0.id(), Signal::SIGTERM);
    assert!(wait_exit(&mut rt.0, T).success());
}
