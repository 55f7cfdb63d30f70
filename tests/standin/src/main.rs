//! k3s stand-in: plays the observable behaviour of `k3s agent` and `k3s server` (v1.35+, the
//! pinned v1.36.4+k3s1)
//! for node-runtime's and phonectl's tests, where there is no k3s binary. Installed as
//! `/usr/local/bin/k3s` in test rootfs trees, or run from the target dir.
//!
//! It is as strict as the real agent, in the real agent's words and exit codes (sources:
//! `/work/notes/research-13.md`), checked in the order k3s meets them:
//! 1. `argv[1]` must be `agent`; the rest is parsed as urfave/cli v2 parses it ([`flags`]). An
//!    undefined flag: `Incorrect Usage: flag provided but not defined: -NAME`, a blank line and
//!    the agent's help on stdout, `level=fatal msg="flag provided but not defined: -NAME"` on
//!    stderr, exit 1, nothing touched. `--help` prints the help and exits 0.
//! 2. The data dir (`--data-dir`, `$K3S_DATA_DIR`, default `/var/lib/rancher/k3s`): k3s' extract
//!    step makes `DATA_DIR/data` and locks `DATA_DIR/data/.lock`; failing that,
//!    `level=fatal msg="extracting data: <errno text>"`, exit 1.
//! 3. The token: `--token-file` (or `$K3S_TOKEN_FILE`) is read; while it does not exist,
//!    `level=info msg="Waiting for file \"PATH\" to be created"` every 2 s, and after the wait
//!    (`token_wait_secs`, default the real 240) `level=fatal msg="timed out waiting for the
//!    condition"`, exit 1. Unreadable: `level=fatal msg="open PATH: permission denied"` (the OS
//!    error) at once, exit 1. No token at all: `--token is required`; no server: `--server is
//!    required`. A 0644 token is accepted, as k3s accepts it: armfleet's own 0600 rule is checked
//!    by armfleet's tests from the token file's mode in the run record.
//! 4. cgroups: no pids controller (v2: not in `/sys/fs/cgroup/cgroup.controllers`; v1/hybrid: none
//!    in `/proc/self/cgroup`, or none mounted under `/sys/fs/cgroup`, see [`checks::Pids`]) →
//!    `level=fatal msg="pids cgroup controller not found"`, exit 1. `/sys/fs/cgroup` not cgroup2
//!    (statfs magic, as the kubelet's `IsCgroup2UnifiedMode`) and no `--kubelet-arg
//!    fail-cgroupv1=false` → the 1.35+ kubelet's refusal, `level=fatal msg="kubelet exited: failed
//!    to validate kubelet configuration, error: kubelet is configured to not run on a host using
//!    cgroup v1. ..."`, exit 1.
//! 5. `/dev/kmsg` must open for reading (a symlink to `/dev/console` does) →
//!    `level=error msg="kubelet exited: failed to run Kubelet: failed to create kubelet: open
//!    /dev/kmsg: no such file or directory"`, exit 1.
//! 6. Then it runs: after `ready_after_ms` it serves `GET /healthz` → `200 ok` on 127.0.0.1, port
//!    from `--kubelet-arg healthz-port=N` (the kubelet's flag; 0: none), default 10248; exits 0 on
//!    SIGTERM.
//!
//! `k3s server` (flags from [`flags::SERVER_FLAGS`]) goes through the same token, cgroup and
//! kmsg checks, takes the cluster CA from `DATA_DIR/server/tls` (made when absent), refuses a
//! `K10` token naming another CA, registers the bootstrap tokens its manifests
//! (`DATA_DIR/server/manifests`) hold, and serves the supervisor port (`--https-listen-port`,
//! 6443): see [`server`]. An agent whose server answers joins it in the background ([`join`]):
//! the CA checked against the token's hash, then the token's password or bootstrap token; health
//! does not wait for it.
//!
//! Every start appends one JSON line to the record file (`<its own path>.runs`, or
//! `$K3S_STANDIN_RECORD`) once it knows how the start ends: pid, argv, the parsed `flags` and
//! `positional` arguments, the whole environment, `iptables_mode` (`$IPTABLES_MODE`, which k3s'
//! bundled iptables-detect obeys), cwd, hostname, `token_file` (path, mode, owner, `ok`,
//! `problem`), `data_dir`, `cgroup_layout` (`v1`, `hybrid`, `v2`, `unavailable`) and what the
//! pids check saw (`cgroup`), `fail_cgroupv1` (the kubelet setting in force), `kmsg`, the
//! `failed_check` (`command`, `flags`, `data_dir`, `token_file`, `token`, `server`, `pids`,
//! `cgroup_v1`, `kubelet_arg`, `kmsg`, `healthz`, or null) with its `failure` text, its mount
//! points, the run number and its start time (`unix_ms`).
//!
//! Behaviour is steered by a control file `<its own path>.control` (re-read at every start, so a
//! test can change it between runs) or `K3S_STANDIN_<KEY>` environment variables, `key = value`:
//! - `crash_after_ms` + `exit_code`: exit with that code after that time;
//! - `crash_runs = K`: only the first K runs (counted in the record file) crash;
//! - `hang = true`: ignore SIGTERM (the supervisor must SIGKILL);
//! - `healthz = false`: no health endpoint;
//! - `ready_after_ms = T`: the health endpoint comes up T ms after the checks passed (a kubelet
//!   takes a while to become healthy);
//! - `log_lines = N`, `log_line_bytes = B`: N extra lines of B bytes at start (log rotation);
//! - `tick_ms = T`: a log line every T ms;
//! - `child = true`: start a child (as k3s starts containerd) that shares its stdout/stderr and
//!   process group and sleeps until killed; its pid goes to `<record file>.child`;
//! - `token_wait_secs = S`: how long a missing token file is waited for (k3s: 240);
//! - `kubelet_exit = fatal | error | shutdown`: how a kubelet failure (cgroup v1, /dev/kmsg) ends
//!   the agent. By default cgroup v1 ends as the embedded executor's `logrus.Fatalf` (fatal,
//!   exit 1) and /dev/kmsg as logged by a 2025 k3s (error, exit 1); `shutdown` plays k3s after
//!   PR #12913, which may log `level=error msg="Shutdown request received: \"kubelet exited:
//!   ...\""` and exit 0. A supervisor must not trust the exit code.

mod checks;
mod flags;
mod join;
mod server;

use checks::{Layout, TokenRead};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The release the stand-in claims to be (the pin in bootstrap/topology/default.toml).
const VERSION: &str = "v1.36.4+k3s1";

/// The 1.35+ kubelet's refusal of a cgroup v1 (or hybrid) host, as `cmd/kubelet/app/server.go`
/// wraps it (KEP-5573, kubernetes PR 134298).
const CGROUP_V1_REFUSAL: &str = "failed to validate kubelet configuration, error: kubelet is \
configured to not run on a host using cgroup v1. cgroup v1 support is unsupported and will be \
removed in a future release, path: &TypeMeta{Kind:,APIVersion:,}";

/// How a start ends before it runs: which check, the log line's level and text, the exit code.
struct Refusal {
    check: &'static str,
    level: &'static str,
    message: String,
    code: i32,
}

impl Refusal {
    fn fatal(check: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            check,
            level: "fatal",
            message: message.into(),
            code: 1,
        }
    }
}

/// The start's facts, written as one record line when the start's outcome is known.
struct Run {
    path: PathBuf,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Appends the record; one write, so readers never see half a line.
    fn write(&mut self, failed: Option<&Refusal>) {
        self.set("failed_check", failed.map(|r| r.check));
        self.set("failure", failed.map(|r| r.message.clone()));
        self.set("mounts", mount_points());
        let line = format!("{}\n", serde_json::Value::Object(self.fields.clone()));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// Records the refusal, logs it as k3s would, exits.
    fn refuse(&mut self, r: Refusal) -> ! {
        self.write(Some(&r));
        log(r.level, &r.message);
        std::process::exit(r.code);
    }
}

fn main() {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let argv: Vec<String> = std::env::args().collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&argv[0]));
    let control = read_control(&exe);
    let get = |k: &str| control.get(k).map(String::as_str);
    let record_path = std::env::var_os("K3S_STANDIN_RECORD")
        .map(PathBuf::from)
        .unwrap_or_else(|| with_suffix(&exe, ".runs"));
    let previous_runs = std::fs::read_to_string(&record_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);

    // Block SIGTERM/SIGINT before any thread: taken synchronously below.
    // SAFETY: plain libc signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let hang = get("hang") == Some("true");

    let mut run = Run {
        path: record_path.clone(),
        fields: serde_json::Map::new(),
    };
    run.set("pid", std::process::id());
    run.set("argv", argv.clone());
    run.set(
        "env",
        serde_json::to_value(std::env::vars().collect::<BTreeMap<_, _>>()).unwrap_or_default(),
    );
    run.set("iptables_mode", std::env::var("IPTABLES_MODE").ok());
    run.set(
        "cwd",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    run.set(
        "hostname",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
    );
    run.set("run", previous_runs + 1);
    run.set("unix_ms", unix_ms);
    run.set("token_file", serde_json::Value::Null);

    // 1. The command line.
    let command = argv.get(1).cloned().unwrap_or_default();
    let table = match command.as_str() {
        "agent" => flags::AGENT_FLAGS,
        "server" => flags::SERVER_FLAGS,
        _ => run.refuse(Refusal::fatal(
            "command",
            format!("k3s stand-in plays `k3s agent` and `k3s server`, not {command:?}"),
        )),
    };
    let is_server = command == "server";
    run.set("command", command.clone());
    let parsed = match flags::parse_with(table, &argv[2..]) {
        Ok(p) => p,
        Err(e) => {
            // urfave/cli writes these to its App.Writer (stdout); k3s then logs the error.
            print!(
                "Incorrect Usage: {e}\n\n{}",
                flags::usage_for(&command, table)
            );
            let _ = std::io::stdout().flush();
            run.refuse(Refusal::fatal("flags", e.to_string()));
        }
    };
    run.set(
        "flags",
        serde_json::to_value(&parsed.values).unwrap_or_default(),
    );
    run.set("positional", parsed.positional.clone());
    if parsed.is_set("help") {
        print!("{}", flags::usage_for(&command, table));
        run.write(None);
        std::process::exit(0);
    }
    let from_env = |k: &str| std::env::var(k).ok();

    // 2. The data dir, as k3s' extract step takes it.
    let data_dir = PathBuf::from(
        parsed
            .effective("data-dir", from_env)
            .unwrap_or_else(|| "/var/lib/rancher/k3s".into()),
    );
    run.set("data_dir", data_dir.display().to_string());
    log(
        "info",
        &format!(
            "Acquiring lock file {}",
            data_dir.join("data/.lock").display()
        ),
    );
    match checks::lock_data_dir(&data_dir) {
        Ok(lock) => drop(lock),
        Err(e) => run.refuse(Refusal::fatal("data_dir", format!("extracting data: {e}"))),
    }
    log(
        "info",
        &format!("Starting k3s {command} {VERSION} (k3s stand-in)"),
    );

    // 3. The token and the server.
    let mut token = parsed.effective("token", from_env).unwrap_or_default();
    if let Some(path) = parsed.effective("token-file", from_env) {
        let wait = get("token_wait_secs")
            .and_then(|v| v.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(240));
        let outcome = wait_for_token(&path, wait, &set, hang);
        let mut facts = checks::token_file_facts(&path);
        let problem = match &outcome {
            Ok(t) if t.is_empty() => Some(format!("{path} is empty")),
            Ok(_) => None,
            Err(r) => Some(r.message.clone()),
        };
        facts["ok"] = problem.is_none().into();
        facts["problem"] = problem.into();
        run.set("token_file", facts);
        match outcome {
            Ok(t) => token = t,
            Err(r) => run.refuse(r),
        }
    }
    let cached_cert = ["client-kubelet.crt", "client-kubelet.key"]
        .iter()
        .all(|f| data_dir.join("agent").join(f).is_file());
    if token.is_empty() && !cached_cert {
        run.refuse(Refusal::fatal("token", "--token is required"));
    }
    let mut join_to = None;
    if is_server {
        // The cluster CA (custom when placed before the first start) must be the token's.
        let ca = match server::cluster_ca(&data_dir) {
            Ok(ca) => ca,
            Err(e) => run.refuse(Refusal::fatal(
                "ca",
                format!("failed to load the cluster CA: {e}"),
            )),
        };
        let hash = server::ca_hash(&ca.0);
        run.set("ca_hash", hash.clone());
        if let Some(want) = server::token_hash(&token)
            && want != hash
        {
            run.refuse(Refusal::fatal(
                "token_ca",
                format!(
                    "token CA hash does not match the Cluster CA certificate hash: {want} != {hash}"
                ),
            ));
        }
        let port = parsed
            .effective("https-listen-port", from_env)
            .unwrap_or_else(|| "6443".into());
        let bind = parsed
            .effective("bind-address", from_env)
            .unwrap_or_else(|| "0.0.0.0".into());
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        names.extend(parsed.all("tls-san").iter().cloned());
        names.extend(parsed.all("node-ip").iter().cloned());
        let listener = match std::net::TcpListener::bind(format!("{bind}:{port}")) {
            Ok(l) => l,
            Err(e) => run.refuse(Refusal::fatal(
                "listen",
                format!(
                    "starting kubernetes: preparing server: listen tcp {bind}:{port}: {}",
                    checks::go_errno(&e)
                ),
            )),
        };
        let (registered, left_out) = server::manifest_bootstrap_tokens(&data_dir);
        for w in &left_out {
            log_kv("warning", "Failed to process config", &[("error", w)]);
        }
        for (id, _, file) in &registered {
            log_kv(
                "info",
                "bootstrap token registered",
                &[("id", id), ("manifest", file)],
            );
        }
        let credentials = server::Credentials {
            password: server::token_password(&token).to_owned(),
            bootstrap: registered
                .into_iter()
                .map(|(id, secret, _)| (id, secret))
                .collect(),
        };
        if let Err(e) = server::serve(listener, ca, names, credentials) {
            run.refuse(Refusal::fatal("listen", format!("supervisor TLS: {e}")));
        }
        log_kv("info", "Cluster CA ready", &[("sha256", &hash)]);
        log_kv("info", "Running supervisor", &[("port", &port)]);
    } else {
        let Some(server) = parsed.effective("server", from_env) else {
            run.refuse(Refusal::fatal("server", "--server is required"));
        };
        log_kv("info", "Connecting to proxy", &[("url", &server)]);
        join_to = Some(server);
    }

    // 4. cgroups, as k3s and then the kubelet look at them.
    let layout = checks::layout();
    run.set("cgroup_layout", layout.name());
    let pids = checks::pids(layout);
    run.set(
        "cgroup",
        serde_json::json!({
            "pids_seen_by_k3s": pids.k3s_sees,
            "pids_mounted": pids.mounted,
            "v2_controllers": pids.v2_controllers,
        }),
    );
    let kubelet_args = parsed.all("kubelet-arg").to_vec();
    let fail_arg = checks::kubelet_arg(&kubelet_args, "fail-cgroupv1");
    run.set(
        "fail_cgroupv1",
        fail_arg.map_or(Some(true), flags::parse_bool),
    );
    if !pids.ok() {
        run.refuse(Refusal::fatal("pids", "pids cgroup controller not found"));
    }
    // The kubelet parses its flags before it validates its configuration.
    let bad_flag = |flag: &str, v: &str, parser: &str| {
        kubelet_exit(
            "kubelet_arg",
            &format!(
                "invalid argument {q} for \"--{flag}\" flag: {parser}: parsing {q}: invalid syntax",
                q = flags::go_quote(v)
            ),
            "fatal",
            get("kubelet_exit"),
        )
    };
    let fail_cgroupv1 = match fail_arg {
        None => true,
        Some(v) => match flags::parse_bool(v) {
            Some(b) => b,
            None => run.refuse(bad_flag("fail-cgroupv1", v, "strconv.ParseBool")),
        },
    };
    let port = match checks::kubelet_arg(&kubelet_args, "healthz-port") {
        None => 10248,
        Some(p) => match p.parse::<u16>() {
            Ok(p) => p,
            Err(_) => run.refuse(bad_flag("healthz-port", p, "strconv.ParseInt")),
        },
    };
    if layout != Layout::V2 && fail_cgroupv1 {
        run.refuse(kubelet_exit(
            "cgroup_v1",
            CGROUP_V1_REFUSAL,
            "fatal",
            get("kubelet_exit"),
        ));
    }

    // 5. The kubelet's OOM watcher.
    match checks::open_kmsg() {
        Ok(target) => run.set("kmsg", serde_json::json!({ "ok": true, "link": target })),
        Err(e) => {
            run.set("kmsg", serde_json::json!({ "ok": false, "error": e }));
            run.refuse(kubelet_exit(
                "kmsg",
                &format!("failed to run Kubelet: failed to create kubelet: open /dev/kmsg: {e}"),
                "error",
                get("kubelet_exit"),
            ));
        }
    }

    // 6. Running.
    run.set("healthz_port", port);
    run.write(None);
    if let Some(server) = join_to {
        let name = parsed
            .effective("node-name", from_env)
            .unwrap_or_else(run_hostname);
        join::start(server, token.clone(), name);
    }

    let lines: usize = get("log_lines").and_then(|v| v.parse().ok()).unwrap_or(0);
    let width: usize = get("log_line_bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for i in 0..lines {
        let mut l = format!("level=info msg=\"filler {i:06}\" ");
        while l.len() + 1 < width {
            l.push('x');
        }
        println!("{l}");
    }

    // Before the health listener: the child must not inherit (and hold) its port.
    if get("child") == Some("true") {
        spawn_child(&with_suffix(&record_path, ".child"));
    }

    if let Some(ms) = get("ready_after_ms").and_then(|v| v.parse::<u64>().ok()) {
        let until = Instant::now() + Duration::from_millis(ms);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Some(sig) = wait_signal(&set, left) {
                on_signal(sig, hang);
            }
        }
    }

    if get("healthz") != Some("false") && port != 0 {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                std::thread::spawn(move || serve_healthz(l));
            }
            Err(e) => {
                log(
                    "fatal",
                    &format!("kubelet healthz 127.0.0.1:{port}: {}", checks::go_errno(&e)),
                );
                std::process::exit(1);
            }
        }
    }

    let crash_runs: Option<usize> = get("crash_runs").and_then(|v| v.parse().ok());
    let crashing = crash_runs.is_none_or(|k| previous_runs < k);
    let crash_at = get("crash_after_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| crashing)
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let exit_code: i32 = get("exit_code").and_then(|v| v.parse().ok()).unwrap_or(1);
    let tick = get("tick_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut next_tick = tick.map(|t| Instant::now() + t);
    let _ = std::io::stdout().flush();

    loop {
        let now = Instant::now();
        if crash_at.is_some_and(|t| now >= t) {
            log(
                "fatal",
                &format!("stand-in crashing as told (code {exit_code})"),
            );
            std::process::exit(exit_code);
        }
        if let (Some(t), Some(n)) = (tick, next_tick)
            && now >= n
        {
            println!("time=\"{}\" level=info msg=\"tick\"", now_text());
            let _ = std::io::stdout().flush();
            next_tick = Some(n + t);
        }
        let mut deadline = now + Duration::from_secs(3600);
        for t in [crash_at, next_tick].into_iter().flatten() {
            deadline = deadline.min(t);
        }
        if let Some(sig) = wait_signal(&set, deadline.saturating_duration_since(Instant::now())) {
            on_signal(sig, hang);
        }
    }
}

/// A kubelet failure as the agent reports it: `how` from the control file, else `default`.
fn kubelet_exit(
    check: &'static str,
    error: &str,
    default: &'static str,
    how: Option<&str>,
) -> Refusal {
    let inner = format!("kubelet exited: {error}");
    match how.unwrap_or(default) {
        "shutdown" => Refusal {
            check,
            level: "error",
            message: format!("Shutdown request received: {}", flags::go_quote(&inner)),
            code: 0,
        },
        "error" => Refusal {
            check,
            level: "error",
            message: inner,
            code: 1,
        },
        _ => Refusal::fatal(check, inner),
    }
}

/// k3s' `util.ReadFile`: try at once, then every 2 s until `wait` has passed, logging each miss.
/// Returns the trimmed token, or the refusal. A SIGTERM meanwhile ends the process (exit 0).
fn wait_for_token(
    path: &str,
    wait: Duration,
    set: &libc::sigset_t,
    hang: bool,
) -> Result<String, Refusal> {
    let deadline = Instant::now() + wait;
    loop {
        match checks::read_token(path) {
            TokenRead::Token(t) => return Ok(t),
            TokenRead::Failed(e) => return Err(Refusal::fatal("token_file", e)),
            TokenRead::Missing => {
                log(
                    "info",
                    &format!("Waiting for file {} to be created", flags::go_quote(path)),
                );
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::fatal(
                "token_file",
                "timed out waiting for the condition",
            ));
        }
        let pause = left.min(Duration::from_secs(2));
        let until = Instant::now() + pause;
        while let Some(rest) = until.checked_duration_since(Instant::now()) {
            if rest.is_zero() {
                break;
            }
            if let Some(sig) = wait_signal(set, rest) {
                on_signal(sig, hang);
            }
        }
    }
}

/// Waits up to `d` for a blocked SIGTERM/SIGINT; the signal, or None when the time ran out.
fn wait_signal(set: &libc::sigset_t, d: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    };
    // SAFETY: valid set and timespec for the duration of the call.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig == libc::SIGTERM || sig == libc::SIGINT).then_some(sig)
}

/// SIGTERM/SIGINT: exit 0, as k3s does, unless told to hang.
fn on_signal(sig: i32, hang: bool) {
    if hang {
        log("info", &format!("stand-in ignoring signal {sig} as told"));
        return;
    }
    log("info", &format!("received signal {sig}, shutting down"));
    std::process::exit(0);
}

/// One logrus text line on stderr (where k3s logs): `time="..." level=L msg="..."`.
fn run_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn log(level: &str, msg: &str) {
    log_kv(level, msg, &[]);
}

fn log_kv(level: &str, msg: &str, kv: &[(&str, &str)]) {
    let mut line = format!(
        "time=\"{}\" level={level} msg={}",
        now_text(),
        flags::go_quote(msg)
    );
    for (k, v) in kv {
        line.push_str(&format!(" {k}={}", flags::go_quote(v)));
    }
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Forks a child that keeps the inherited stdout/stderr open and sleeps, dying of the default
/// SIGTERM/SIGKILL action (the signal mask is cleared). Its pid is appended to `pid_file`.
fn spawn_child(pid_file: &Path) {
    // SAFETY: the child only calls async-signal-safe functions (sigprocmask, pause, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            loop {
                libc::pause();
            }
        }
    }
    if pid > 0
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_file)
    {
        let _ = f.write_all(format!("{pid}\n").as_bytes());
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_control(exe: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(with_suffix(exe, ".control")) {
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                map.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
            }
        }
    }
    for (k, v) in std::env::vars() {
        if let Some(key) = k.strip_prefix("K3S_STANDIN_") {
            map.insert(key.to_ascii_lowercase(), v);
        }
    }
    map
}

fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn serve_healthz(listener: std::net::TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let resp: &[u8] = if req.starts_with("GET /healthz") {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        };
        let _ = s.write_all(resp);
    }
}

/// RFC 3339 in UTC, as logrus' text formatter stamps k3s' lines.
fn now_text() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar, era-based).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}
