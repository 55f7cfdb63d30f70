//! k3s stand-in: plays the observable behaviour of `k3s agent` for node-runtime's and phonectl's
//! tests (there is no k3s binary on a build machine). Installed as `/usr/local/bin/k3s` in test
//! rootfs trees, or run from the target dir.
//!
//! What it does at each start:
//! - appends one JSON line to the record file (`<its own path>.runs`, or `$K3S_STANDIN_RECORD`):
//!   pid, argv, the whole environment, cwd, hostname, the `--token-file` check, its mount points;
//! - refuses to run (exit 1, like k3s) when `--token-file` is missing or not mode 0600;
//! - prints k3s-like log lines (stdout and stderr);
//! - serves `GET /healthz` → `200 ok` on 127.0.0.1, port from `--kubelet-arg healthz-port=P`
//!   (kubelet's flag), default 10248;
//! - exits 0 on SIGTERM.
//!
//! Behaviour is steered by a control file `<its own path>.control` (re-read at every start, so a
//! test can change it between runs) or `K3S_STANDIN_<KEY>` environment variables, `key = value`:
//! - `crash_after_ms` + `exit_code`: exit with that code after that time;
//! - `crash_runs = K`: only the first K runs (counted in the record file) crash;
//! - `hang = true`: ignore SIGTERM (the supervisor must SIGKILL);
//! - `healthz = false`: no health endpoint;
//! - `log_lines = N`, `log_line_bytes = B`: N extra lines of B bytes at start (log rotation);
//! - `tick_ms = T`: a log line every T ms;
//! - `child = true`: start a child (as k3s starts containerd) that shares its stdout/stderr and
//!   process group and sleeps until killed; its pid goes to `<record file>.child`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
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

    let token_file = flag_values(&argv, "--token-file").into_iter().next();
    let token_check = token_file.as_deref().map(check_token_file);
    let record = serde_json::json!({
        "pid": std::process::id(),
        "argv": argv,
        "env": std::env::vars().collect::<BTreeMap<_, _>>(),
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        "token_file": token_check.clone(),
        "mounts": mount_points(),
        "run": previous_runs + 1,
        "unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&record_path)
    {
        // One write: readers never see half a line.
        let _ = f.write_all(format!("{record}\n").as_bytes());
    }

    println!(
        "time=\"{}\" level=info msg=\"Starting k3s agent v1.31.4+k3s1 (k3s stand-in)\"",
        now_text()
    );
    match &token_check {
        Some(c) if c["ok"] == true => {}
        Some(c) => {
            eprintln!(
                "time=\"{}\" level=fatal msg=\"token file: {}\"",
                now_text(),
                c["problem"].as_str().unwrap_or("?")
            );
            std::process::exit(1);
        }
        None => {
            eprintln!(
                "time=\"{}\" level=fatal msg=\"--token or --token-file is required\"",
                now_text()
            );
            std::process::exit(1);
        }
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
    eprintln!(
        "time=\"{}\" level=info msg=\"Connecting to proxy\" url=\"{}\"",
        now_text(),
        flag_values(&argv, "--server")
            .first()
            .cloned()
            .unwrap_or_default()
    );

    // Before the health listener: the child must not inherit (and hold) its port.
    if get("child") == Some("true") {
        spawn_child(&with_suffix(&record_path, ".child"));
    }

    if get("healthz") != Some("false") {
        let port = flag_values(&argv, "--kubelet-arg")
            .iter()
            .find_map(|a| {
                a.strip_prefix("healthz-port=")
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .unwrap_or(10248);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                std::thread::spawn(move || serve_healthz(l));
            }
            Err(e) => {
                eprintln!("level=fatal msg=\"kubelet healthz 127.0.0.1:{port}: {e}\"");
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
    let hang = get("hang") == Some("true");
    let tick = get("tick_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut next_tick = tick.map(|t| Instant::now() + t);
    let _ = std::io::stdout().flush();

    loop {
        let now = Instant::now();
        if crash_at.is_some_and(|t| now >= t) {
            eprintln!("level=fatal msg=\"stand-in crashing as told\" code={exit_code}");
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
        let wait = deadline.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        // SAFETY: valid set and timespec for the duration of the call.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            if hang {
                eprintln!("level=info msg=\"stand-in ignoring signal {sig} as told\"");
                continue;
            }
            eprintln!(
                "time=\"{}\" level=info msg=\"received signal {sig}, shutting down\"",
                now_text()
            );
            std::process::exit(0);
        }
    }
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

/// Values of `--flag V` and `--flag=V`.
fn flag_values(argv: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == flag && i + 1 < argv.len() {
            out.push(argv[i + 1].clone());
            i += 2;
            continue;
        }
        if let Some(v) = argv[i].strip_prefix(&format!("{flag}=")) {
            out.push(v.to_owned());
        }
        i += 1;
    }
    out
}

fn check_token_file(path: &str) -> serde_json::Value {
    let problem = match std::fs::metadata(path) {
        Err(e) => Some(format!("{path}: {e}")),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Some(format!(
            "{path} has mode {:o}: must be 0600",
            m.permissions().mode() & 0o777
        )),
        Ok(m) if m.len() == 0 => Some(format!("{path} is empty")),
        Ok(_) => None,
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .ok();
    serde_json::json!({ "path": path, "mode": mode, "ok": problem.is_none(), "problem": problem })
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

fn now_text() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}
