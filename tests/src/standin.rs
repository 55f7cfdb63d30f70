//! A worker directory for node-runtime tests: the cross-built aarch64 `node-runtime`
//! supervising the aarch64 k3s stand-in (both through binfmt/qemu-user), with its node.toml,
//! token, logs and status under one temporary directory.

use crate::util::aarch64_bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fake but well-formed join token; tests check it never leaks.
pub const TOKEN: &str = "K10aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999::server:s3cr3t-standin-token";

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with `what` on timeout.
/// (Waiting for an observable condition, not sleeping for a guessed time.)
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One worker laid out in a temp dir (Pi-style: node-runtime runs in place).
pub struct Node {
    /// The temp dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// Kubelet healthz port given to the stand-in and probed by node-runtime.
    pub port: u16,
    /// Extra TOML appended to the generated node.toml (sections after the base ones).
    pub extra_toml: String,
    /// Extra keys for the `[k3s]` table.
    pub k3s_keys: String,
    /// Extra keys for the `[supervise]` table.
    pub supervise_keys: String,
    /// Extra keys for the `[logs]` table.
    pub logs_keys: String,
    /// Labels table body.
    pub labels: String,
    /// `network.nameservers` value, e.g. `["10.10.0.1"]` (empty: none; a Pi-style node with
    /// nameservers writes the host's /etc/armfleet/resolv.conf).
    pub nameservers: String,
    /// `network.iface` (default `lo`).
    pub iface: String,
    /// Extra keys for the `[network]` table.
    pub network_keys: String,
    /// More `k3s.kubelet_args` after `healthz-port=PORT`.
    pub kubelet_args: Vec<String>,
}

impl Node {
    /// A worker with the stand-in at `DIR/k3s` and a 0600 token.
    pub fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("nr-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::copy(aarch64_bin("k3s-standin"), dir.path().join("k3s")).expect("copy stand-in");
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        set_mode(&token, 0o600);
        Node {
            dir,
            port: free_port(),
            extra_toml: String::new(),
            k3s_keys: String::new(),
            supervise_keys: "backoff_initial_ms = 200\nbackoff_max_secs = 2\nstop_grace_secs = 3\n"
                .into(),
            logs_keys: String::new(),
            labels: "\"armfleet.io/kind\" = \"pi\"\n".into(),
            nameservers: String::new(),
            iface: "lo".into(),
            network_keys: String::new(),
            kubelet_args: Vec::new(),
        }
    }

    /// A path in the worker dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes node.toml from the fields; returns its path.
    pub fn write_config(&self) -> PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            r#"status_file = "{d}/status.json"
[node]
name = "pi-test"
kind = "pi"
[server]
url = "https://10.10.0.1:6443"
token_file = "{d}/token"
[k3s]
bin = "{d}/k3s"
data_dir = "{d}/k3s-data"
kubelet_args = ["healthz-port={port}"{more_kubelet_args}]
{k3s}
[network]
iface = "{iface}"
{ns}
{net}
[labels]
{labels}
[supervise]
healthz_port = {port}
{sup}
[logs]
dir = "{d}/log"
{logs}
{extra}
"#,
            port = self.port,
            more_kubelet_args = self
                .kubelet_args
                .iter()
                .map(|a| format!(", {a:?}"))
                .collect::<String>(),
            k3s = self.k3s_keys,
            labels = self.labels,
            sup = self.supervise_keys,
            logs = self.logs_keys,
            extra = self.extra_toml,
            iface = self.iface,
            net = self.network_keys,
            ns = if self.nameservers.is_empty() {
                String::new()
            } else {
                format!("nameservers = {}", self.nameservers)
            },
        );
        let p = self.path("node.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes the stand-in's control file (`key = value` lines).
    pub fn control(&self, text: &str) {
        std::fs::write(self.path("k3s.control"), text).unwrap();
    }

    /// `node-runtime run --config node.toml` in the background; stderr to `DIR/runtime.err`.
    pub fn spawn_run(&self) -> Child {
        let config = self.write_config();
        let err = std::fs::File::create(self.path("runtime.err")).unwrap();
        Command::new(aarch64_bin("node-runtime"))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start node-runtime")
    }

    /// Runs `node-runtime ARGS` to completion.
    pub fn node_runtime(&self, args: &[&str]) -> Output {
        Command::new(aarch64_bin("node-runtime"))
            .args(args)
            .output()
            .expect("run node-runtime")
    }

    /// The stand-in's run records (one JSON object per start).
    pub fn runs(&self) -> Vec<serde_json::Value> {
        run_records(&self.path("k3s.runs"))
    }

    /// Waits until at least `n` runs are recorded; returns them.
    pub fn wait_runs(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + timeout;
        loop {
            let r = self.runs();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {n} stand-in run(s); node-runtime said:\n{}\nagent log:\n{}",
                self.stderr(),
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status record, when present and parseable.
    pub fn status(&self) -> Option<bootstrap::status::Status> {
        bootstrap::status::read(&self.path("status.json")).ok()
    }

    /// Waits for a status that satisfies `f`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&bootstrap::status::Status) -> bool,
    ) -> bootstrap::status::Status {
        wait_for(what, timeout, || self.status().filter(|s| f(s)))
    }

    /// The supervisor's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("runtime.err")).unwrap_or_default()
    }

    /// The current agent log.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("log/k3s-agent.log")).unwrap_or_default()
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

/// chmod.
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// Waits for `child` to exit within `timeout`; kills it and panics otherwise.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `pid` is alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    node_runtime::pidfile::pid_alive(pid)
}

/// Stops a supervisor left running by a failed test (SIGTERM, then SIGKILL).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(self.0.id(), nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The stand-in's run records in `path` (one JSON object per start; none when the file is
/// missing). Only complete lines: the stand-in may be writing the next one right now.
pub fn run_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}
