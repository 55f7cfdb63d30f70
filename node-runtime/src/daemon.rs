//! `run --detach` (double fork, new session, stdio to the log dir, the parent waits until the
//! child says it is prepared and has written its first status) and `stop` (SIGTERM to the live
//! supervisor that holds the pidfile, then wait).

use crate::pidfile::pid_alive;
use crate::supervisor::{RunError, RunOptions};
use bootstrap::NodeConfig;
use bootstrap::exit::ExitClass;
use nix::unistd::{ForkResult, fork, setsid};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why detaching or stopping failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The detached supervisor failed while preparing; its own message.
    #[error("{message}")]
    Prepare {
        /// Its exit class.
        class: ExitClass,
        /// Its error line.
        message: String,
    },
    /// It died without saying why.
    #[error("node-runtime exited while starting without a reason: see {0}")]
    Silent(PathBuf),
    /// Did not stop in time.
    #[error(
        "node-runtime pid {pid} did not stop within {secs} s of SIGTERM: check `node-runtime status`, or kill -9 {pid}"
    )]
    StillRunning {
        /// Its pid.
        pid: u32,
        /// How long we waited.
        secs: u64,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// node.toml.
    #[error(transparent)]
    Config(#[from] bootstrap::node_config::ConfigError),
}

impl DaemonError {
    /// The exit class for the binary.
    pub fn exit_class(&self) -> ExitClass {
        match self {
            DaemonError::Prepare { class, .. } => *class,
            DaemonError::Config(_) => ExitClass::Usage,
            _ => ExitClass::Device,
        }
    }
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Sys { what, source }
}

/// The detached supervisor's log of its own lines (the agent's go to `k3s-agent.log`).
pub const SUPERVISOR_LOG: &str = "node-runtime.log";

/// Starts the supervisor in the background and returns once it is prepared (token, chroot,
/// k3s binary checked) with its pid, or with the error that stopped it. Call before any thread
/// exists (fork).
pub fn detach(config_path: &Path) -> Result<u32, DaemonError> {
    let config = NodeConfig::load(config_path)?;
    let config_path = config_path
        .canonicalize()
        .map_err(sys(config_path.display().to_string()))?;
    let log_dir = config.host_path(&config.logs.dir);
    std::fs::create_dir_all(&log_dir).map_err(sys(log_dir.display().to_string()))?;
    let log_path = log_dir.join(SUPERVISOR_LOG);
    // Its stderr is a plain descriptor on this file and cannot rotate while open: rotate per start.
    crate::logs::rotate_if_larger(
        &log_dir,
        SUPERVISOR_LOG,
        config.logs.max_bytes,
        config.logs.keep,
    )
    .map_err(sys(log_path.display().to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log_path)
        .map_err(sys(log_path.display().to_string()))?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| DaemonError::Sys {
            what: "pipe".into(),
            source: e.into(),
        })?;
    // SAFETY: single-threaded here (main calls this first); the child only execs Rust code of
    // this program, which is fine after fork in a single-threaded process.
    match unsafe { fork() }.map_err(|e| DaemonError::Sys {
        what: "fork".into(),
        source: e.into(),
    })? {
        ForkResult::Parent { child } => {
            drop(wr);
            let mut answer = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut answer);
            let _ = nix::sys::wait::waitpid(child, None);
            if answer.starts_with("ok") {
                let pidfile = config.host_path(&crate::pidfile_path(&config));
                let pid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                return Ok(pid);
            }
            let mut lines = answer.lines();
            match (
                lines.next().and_then(|c| c.parse::<u8>().ok()),
                lines.next(),
            ) {
                (Some(code), Some(msg)) => Err(DaemonError::Prepare {
                    class: match code {
                        2 => ExitClass::Usage,
                        3 => ExitClass::Device,
                        _ => ExitClass::Internal,
                    },
                    message: msg.to_owned(),
                }),
                _ => Err(DaemonError::Silent(log_path)),
            }
        }
        ForkResult::Child => {
            drop(rd);
            let _ = setsid();
            // SAFETY: still single-threaded in the child.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
                Ok(ForkResult::Child) => {}
                Err(_) => unsafe { libc::_exit(71) },
            }
            let _ = std::env::set_current_dir("/");
            redirect_stdio(&log);
            drop(log);
            let code = match crate::supervisor::run(RunOptions {
                config_path,
                ready: Some(wr),
            }) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::info!("{}", &e);
                    run_error_code(&e)
                }
            };
            std::process::exit(code)
        }
    }
}

fn run_error_code(e: &RunError) -> i32 {
    i32::from(e.exit_class().code())
}

fn redirect_stdio(log: &std::fs::File) {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors with descriptors we own.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
}

/// What `stop` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// No supervisor was running.
    NotRunning,
    /// It was running and has exited.
    Stopped {
        /// Its pid.
        pid: u32,
    },
}

/// Sends SIGTERM to the supervisor holding the pidfile — only when it is a live node-runtime —
/// and waits for it to exit (agent grace + 10 s). Then, running or not, makes sure the phone's
/// charging switch is not left off (a supervisor killed outright cannot give it back itself).
pub fn stop(config: &NodeConfig) -> Result<Stopped, DaemonError> {
    let pidfile = config.host_path(&crate::pidfile_path(config));
    let stopped = match crate::pidfile::holder(&pidfile) {
        None => Stopped::NotRunning,
        Some(pid) => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .map_err(|e| DaemonError::Sys {
                what: format!("kill -TERM {pid}"),
                source: e.into(),
            })?;
            let secs = config.supervise.stop_grace_secs.saturating_add(10);
            let deadline = Instant::now() + Duration::from_secs(secs);
            // pidfd would avoid polling, but the pid is not our child; 50 ms steps cost nothing.
            while pid_alive(pid) {
                if Instant::now() >= deadline {
                    return Err(DaemonError::StillRunning { pid, secs });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Stopped::Stopped { pid }
        }
    };
    crate::power::release_charge_switch(config);
    Ok(stopped)
}
