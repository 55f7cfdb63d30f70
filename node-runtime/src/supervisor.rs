//! `node-runtime run`: prepare (token, chroot, k3s binary), then run `k3s agent` and keep it
//! running: restart with exponential backoff (reset after a healthy period), capture its output
//! to rotated logs, probe the kubelet's healthz, apply the phone power policy, write the status
//! record, and stop it gracefully on SIGTERM. SIGHUP re-reads node.toml and restarts the agent
//! only when its command line changed.
//!
//! One thread waits for signals with a deadline (`sigtimedwait`): no busy loop, no sleeps; a
//! second thread per agent run copies its output to the log.

use crate::agent::{self, AgentError};
use crate::chroot::{self, ChrootError};
use crate::iptables;
use crate::k3sbin::{self, K3sBinError};
use crate::logs::RotatingLog;
use crate::pidfile::{ClaimError, PidLock};
use crate::power::{self, ChargeSwitch, PowerAction, PowerPolicy, Wakelock};
use crate::routing;
use crate::token::{self, TokenError};
use crate::unix_now;
use bootstrap::NodeConfig;
use bootstrap::exit::ExitClass;
use bootstrap::node_config::ConfigError;
use bootstrap::status::{self, AgentState, LastExit, Status};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why `run` stopped before or instead of supervising.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// node.toml is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token file is missing or unsafe.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The chroot could not be prepared.
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    /// No usable k3s binary.
    #[error(transparent)]
    K3sBin(#[from] K3sBinError),
    /// The node IP cannot be found.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Another supervisor runs with this config.
    #[error(
        "node-runtime already runs with this config (pid {pid}, pidfile {pidfile}): stop it first with `node-runtime stop`"
    )]
    AlreadyRunning {
        /// Its pid.
        pid: u32,
        /// The pidfile.
        pidfile: PathBuf,
    },
    /// I/O on our own files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl RunError {
    /// The exit class for the binary.
    pub fn exit_class(&self) -> ExitClass {
        match self {
            RunError::Config(_) | RunError::Token(_) | RunError::AlreadyRunning { .. } => {
                ExitClass::Usage
            }
            RunError::Agent(_) => ExitClass::Usage,
            RunError::K3sBin(K3sBinError::Missing(_) | K3sBinError::Differs { .. }) => {
                ExitClass::Usage
            }
            RunError::K3sBin(_) | RunError::Chroot(_) | RunError::Io { .. } => ExitClass::Device,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Signals the supervisor handles synchronously.
fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        s.add(sig);
    }
    s
}

/// Blocks the handled signals in the calling thread (and the threads it starts later); call
/// first thing in `main`, before any thread exists.
pub fn block_signals() {
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None);
}

/// Waits up to `timeout` for one of the handled signals.
fn wait_signal(timeout: Duration) -> Option<Signal> {
    let set = handled_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` is a valid sigset, `ts` lives across the call, info may be null.
    let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if rc <= 0 {
        None
    } else {
        Signal::try_from(rc).ok()
    }
}

/// Options of one `run`.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// node.toml.
    pub config_path: PathBuf,
    /// Written with `ok\n` once preparation succeeded (or the error line if it failed): how a
    /// detached run tells its parent.
    pub ready: Option<OwnedFd>,
}

/// How often the power supplies are read (`ARMFLEET_POWER_POLL_MS` overrides, for tests).
fn power_poll() -> Duration {
    std::env::var("ARMFLEET_POWER_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(30))
}

/// At most this long between two writes of an unchanged status (spares SD cards and flash).
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Runs the supervisor until SIGTERM/SIGINT. Call [`block_signals`] first.
pub fn run(opts: RunOptions) -> Result<(), RunError> {
    let mut ready = opts.ready;
    let result = prepare_and_run(&opts.config_path, &mut ready);
    if let (Err(e), Some(fd)) = (&result, ready.take()) {
        let mut f = std::fs::File::from(fd);
        let _ = writeln!(f, "{}\n{}", e.exit_class().code(), e);
    }
    result
}

fn prepare_and_run(config_path: &Path, ready: &mut Option<OwnedFd>) -> Result<(), RunError> {
    let config = NodeConfig::load(config_path)?;
    let pidfile_host = config.host_path(&crate::pidfile_path(&config));
    let pidfile = PidLock::claim(&pidfile_host).map_err(|e| match e {
        ClaimError::Held { pid } => RunError::AlreadyRunning {
            pid: pid.unwrap_or(0),
            pidfile: pidfile_host.clone(),
        },
        ClaimError::Io(source) => RunError::Io {
            path: pidfile_host.clone(),
            source,
        },
    })?;
    // An agent left by a supervisor that died (SIGKILL, a crash) still runs with its containers:
    // stop it before starting another one beside it.
    let status_host = config.host_path(&config.status_file);
    if let Ok(old) = status::read(&status_host)
        && let Some(agent) = old.agent_pid
    {
        stop_orphan_agent(agent, &config);
    }
    let started_at = unix_now();
    let mut status = Status {
        schema: 1,
        version: crate::VERSION.into(),
        node_name: config.node.name.clone(),
        pid: std::process::id(),
        started_at,
        updated_at: started_at,
        state: AgentState::Preparing,
        agent_pid: None,
        healthy: false,
        healthz: None,
        restarts: 0,
        last_exit: None,
        node_ip: None,
        battery: None,
        message: None,
        healthy_since: None,
        cgroups: None,
        iptables: None,
        routing: None,
        supervisor_running: None,
        role: (!config.k3s.role.is_agent()).then(|| config.k3s.role.command().to_owned()),
    };
    let prepared = prepare(&config, config_path);
    let Prepared {
        wakelock,
        config_dir,
        power_dir,
        cgroups,
        nf_tables,
    } = match prepared {
        Ok(v) => v,
        Err(e) => {
            // Leave a record saying why, where `phonectl status` looks (before the chroot).
            status.state = AgentState::Stopped;
            status.message = Some(e.to_string());
            let _ = status::write_atomic(&status_host, &status);
            return Err(e);
        }
    };
    let mut sup = Supervisor::new(config, config_dir, status)?;
    sup.power_dir = power_dir;
    sup.cgroups = cgroups;
    sup.nf_tables = nf_tables;
    sup.status.cgroups = Some(cgroups);
    sup.config_name = config_path.file_name().unwrap_or_default().to_owned();
    let prep = sup.prepare_inside();
    if let Err(e) = prep {
        sup.status.state = AgentState::Stopped;
        sup.status.message = Some(e.to_string());
        sup.write_status(true);
        return Err(e);
    }
    // On record before the parent of `run --detach` returns: whoever ran it (phonectl's enroll
    // shell, the boot hook's caller) may ask `status` at once and must find this run.
    sup.write_status(true);
    if let Some(fd) = ready.take() {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(b"ok\n");
    }
    sup.say(format!(
        "supervising k3s {} for node {} (node ip {})",
        sup.config.k3s.role.command(),
        sup.config.node.name,
        sup.node_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "chosen by k3s".into())
    ));
    sup.run_loop();
    sup.release_charging();
    drop(wakelock);
    drop(pidfile);
    Ok(())
}

/// Stops the process group of an agent a dead supervisor left behind: only when that pid still
/// leads its own group (as the agents node-runtime starts do) and runs the configured k3s
/// binary, so a reused pid of an unrelated program is never signalled.
fn stop_orphan_agent(pid: u32, config: &NodeConfig) {
    let Some(bin_name) = config.k3s.bin.file_name() else {
        return;
    };
    let leads_group = nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
        .is_ok_and(|g| g.as_raw() == pid as i32);
    let runs_k3s = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .take(3)
            .any(|a| Path::new(&*String::from_utf8_lossy(a)).file_name() == Some(bin_name))
    });
    if !(crate::pidfile::pid_alive(pid) && leads_group && runs_k3s) {
        return;
    }
    tracing::info!(
        "the agent of a previous node-runtime (pid {pid}) still runs: stopping its process group"
    );
    let group = Pid::from_raw(-(pid as i32));
    let _ = kill(group, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(config.supervise.stop_grace_secs);
    while group_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if group_alive(pid) {
        tracing::info!(
            "process group {pid} ignored SIGTERM for {} s: SIGKILL",
            config.supervise.stop_grace_secs
        );
        let _ = kill(group, Signal::SIGKILL);
        while group_alive(pid) && Instant::now() < deadline + Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether any process of the group led by `pgid` is alive (zombies of our own aside).
fn group_alive(pgid: u32) -> bool {
    kill(Pid::from_raw(-(pgid as i32)), None).is_ok()
}

/// Everything done with host paths: token, cgroups check, wakelock, chroot.
/// What preparing outside the chroot leaves the supervisor: held resources, and directories
/// opened before entering it that must stay reachable from inside.
struct Prepared {
    wakelock: Option<Wakelock>,
    /// node.toml's directory, for SIGHUP re-reads.
    config_dir: Option<std::fs::File>,
    /// The power_supply directory as Android's side shows it: a phone's chroot binds `/sys`
    /// alone, and what is mounted below it there (a vendor's power_supply) stays outside.
    power_dir: Option<std::fs::File>,
    /// The cgroup layout the agent gets (from the plan that was mounted).
    cgroups: bootstrap::status::CgroupLayout,
    /// Whether the kernel has nf_tables, from its config read where node-runtime started
    /// (Android's /proc on a phone: the chroot's fresh /proc is the same kernel, but read once).
    nf_tables: Option<bool>,
}

fn prepare(config: &NodeConfig, config_path: &Path) -> Result<Prepared, RunError> {
    let token_host = config.host_path(&config.server.token_file);
    if let Some(drop) = &config.server.token_drop {
        let drop_host = config.host_path(drop);
        if token::take_token_drop(&drop_host, &token_host)? {
            tracing::info!(
                "moved the dropped token {} to {} (mode 0600)",
                drop_host.display(),
                token_host.display()
            );
        }
    }
    token::check_token_file(&token_host)?;
    let plan = chroot::preflight(config)?;
    // The config's directory stays reachable from inside the chroot for SIGHUP re-reads.
    let config_dir = config_path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .and_then(|d| std::fs::File::open(d).ok());
    let wakelock = config
        .power
        .as_ref()
        .filter(|p| p.wakelock)
        .map(|_| Wakelock::acquire(&power::wakelock_dir()));
    let power_dir = config
        .power
        .as_ref()
        .and_then(|p| std::fs::File::open(&p.power_supply_dir).ok());
    let config_text = bootstrap::kernel::local_config().ok().map(|(t, _)| t);
    let nf_tables = iptables::kernel_has_nf_tables(config_text.as_deref());
    chroot::enter(config, &plan)?;
    Ok(Prepared {
        nf_tables,
        wakelock,
        config_dir,
        power_dir,
        cgroups: plan.layout(),
    })
}

struct Run {
    child: Child,
    started: Instant,
}

struct PowerCtx {
    policy: PowerPolicy,
    switch: Option<ChargeSwitch>,
    dir: PathBuf,
    next_poll: Instant,
}

struct Supervisor {
    config: NodeConfig,
    config_dir: Option<std::fs::File>,
    config_name: std::ffi::OsString,
    /// See [`Prepared::power_dir`]; read through `/proc/self/fd`.
    power_dir: Option<std::fs::File>,
    /// See [`Prepared::cgroups`].
    cgroups: bootstrap::status::CgroupLayout,
    /// See [`Prepared::nf_tables`].
    nf_tables: Option<bool>,
    /// The iptables backend given to the agent.
    iptables: Option<iptables::Decision>,
    /// The policy rules kept for the agent (phones).
    router: Option<routing::Router>,
    args: Vec<String>,
    node_ip: Option<IpAddr>,
    run: Option<Run>,
    restart_at: Option<Instant>,
    failures: u32,
    stopping: bool,
    restart_after_stop: bool,
    kill_at: Option<Instant>,
    log: Arc<Mutex<RotatingLog>>,
    status: Status,
    last_written: Option<(Status, Instant)>,
    next_probe: Instant,
    power: Option<PowerCtx>,
    paused: bool,
}

impl Supervisor {
    fn new(
        config: NodeConfig,
        config_dir: Option<std::fs::File>,
        status: Status,
    ) -> Result<Supervisor, RunError> {
        let log = RotatingLog::open(
            &config.logs.dir,
            "k3s-agent.log",
            config.logs.max_bytes,
            config.logs.keep,
        )
        .map_err(io_err(&config.logs.dir))?;
        Ok(Supervisor {
            config_name: "node.toml".into(),
            config,
            config_dir,
            power_dir: None,
            cgroups: bootstrap::status::CgroupLayout::V2,
            nf_tables: None,
            iptables: None,
            router: None,
            args: Vec::new(),
            node_ip: None,
            run: None,
            restart_at: None,
            failures: 0,
            stopping: false,
            restart_after_stop: false,
            kill_at: None,
            log: Arc::new(Mutex::new(log)),
            status,
            last_written: None,
            next_probe: Instant::now(),
            power: None,
            paused: false,
        })
    }

    /// Steps done with the worker's own paths (inside the chroot on a phone).
    fn prepare_inside(&mut self) -> Result<(), RunError> {
        let bin = self.config.k3s.bin.clone();
        let progress = |e: bootstrap::progress::Event| {
            if let bootstrap::progress::Event::Note(n) = e {
                tracing::info!("{}", n)
            }
        };
        if self.config.k3s.role.is_agent() {
            crate::token::report_server_check(
                self.config.server.url.clone(),
                self.config.server.token_file.clone(),
            );
        }
        if k3sbin::ensure_k3s(&self.config, &bin, &progress)? {
            self.say(format!("k3s binary {} fetched and verified", bin.display()));
        }
        if let Some(note) = k3sbin::ensure_airgap(&self.config, &progress) {
            self.say(note);
        }
        if self.config.chroot.is_none()
            && let Some(text) = agent::resolv_conf_text(&self.config)
        {
            let p = Path::new(agent::RESOLV_CONF);
            status::write_file_atomic(p, text.as_bytes(), 0o644).map_err(io_err(p))?;
        }
        self.node_ip = agent::node_ip(&self.config)?;
        self.status.node_ip = self.node_ip.map(|i| i.to_string());
        self.args = agent::agent_args(&self.config, self.node_ip, self.cgroups);
        let decision = iptables::decide(self.config.chroot.is_some(), self.nf_tables);
        for note in iptables::apply(&decision, Path::new("/")) {
            self.say(format!("iptables: {note}"));
        }
        self.say(format!(
            "iptables: {} ({})",
            decision.backend, decision.reason
        ));
        self.status.iptables = Some(decision.to_status());
        self.iptables = Some(decision);
        if self.config.network.policy_routing {
            self.router = Some(routing::Router::new(routing::Inputs {
                pod_cidr: self.config.network.pod_cidr.clone(),
                service_cidr: self.config.network.service_cidr.clone(),
                iface: self.config.network.iface.clone(),
            }));
            self.ensure_routes();
        }
        if let Some(p) = &self.config.power {
            let dir = match &self.power_dir {
                Some(d) => PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())),
                None => p.power_supply_dir.clone(),
            };
            let switch = power::find_charge_switch(&dir);
            // What the switch says now, not what a fresh policy would assume: a supervisor that
            // was killed may have left charging off.
            let charging = switch
                .as_ref()
                .map(|s| power::read_charging(&dir, s).unwrap_or(true));
            if charging == Some(false) {
                tracing::info!(
                    "{}",
                    "charging is off at start (left so by an earlier run): the policy takes it from there",
                );
            }
            self.power = Some(PowerCtx {
                policy: PowerPolicy::new(p.clone(), charging),
                switch,
                dir,
                next_poll: Instant::now(),
            });
        }
        self.restart_at = Some(Instant::now());
        Ok(())
    }

    /// Installs the policy rules the agent needs that are missing (netd may have rewritten its
    /// own); problems go to the log and the status note, and are retried at the next tick.
    fn ensure_routes(&mut self) {
        let Some(router) = &mut self.router else {
            return;
        };
        let (state, problems) = router.ensure();
        self.status.routing = Some(state);
        for p in problems {
            self.say(format!("policy routing: {p}"));
        }
    }

    /// A supervisor line: in the log (stderr: systemd's journal, or the detached run's log file)
    /// and in the agent's log file, where it explains the agent's restarts. Never the token.
    fn say(&self, msg: String) {
        tracing::info!("{msg}");
        if let Ok(mut l) = self.log.lock() {
            let _ = l.write_chunk(format!("[node-runtime] {msg}\n").as_bytes());
        }
    }

    fn run_loop(&mut self) {
        loop {
            let now = Instant::now();
            self.reap();
            if let Some(t) = self.kill_at
                && now >= t
                && let Some(r) = &self.run
            {
                self.say(format!(
                    "agent pid {} ignored SIGTERM for {} s: SIGKILL",
                    r.child.id(),
                    self.config.supervise.stop_grace_secs
                ));
                let _ = kill(Pid::from_raw(-(r.child.id() as i32)), Signal::SIGKILL);
                self.kill_at = None;
            }
            if self.stopping && self.run.is_none() {
                if let Some(router) = &mut self.router {
                    // Exactly the rules it added: netd's stay as they are.
                    let problems = router.remove();
                    self.status.routing = Some(router.status());
                    for p in problems {
                        self.say(format!("policy routing: {p}"));
                    }
                }
                self.status.state = AgentState::Stopped;
                self.status.agent_pid = None;
                self.status.healthy = false;
                self.write_status(true);
                self.say("stopped".into());
                return;
            }
            if self.power.as_ref().is_some_and(|p| now >= p.next_poll) {
                self.poll_power();
            }
            if self.run.is_none()
                && !self.stopping
                && !self.paused
                && self.restart_at.is_some_and(|t| now >= t)
            {
                self.start();
            }
            if self.run.is_some() && !self.stopping && now >= self.next_probe {
                self.probe();
            }
            self.write_status(false);

            let mut deadline = now + HEARTBEAT;
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t
                    && t < deadline
                {
                    deadline = t;
                }
            };
            consider(self.kill_at);
            if self.run.is_none() && !self.paused && !self.stopping {
                consider(self.restart_at);
            }
            if self.run.is_some() {
                consider(Some(self.next_probe));
            }
            consider(self.power.as_ref().map(|p| p.next_poll));
            consider(self.last_written.as_ref().map(|(_, t)| *t + HEARTBEAT));
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            match wait_signal(timeout) {
                Some(Signal::SIGTERM) | Some(Signal::SIGINT) => self.begin_stop(),
                Some(Signal::SIGHUP) => self.reload(),
                _ => {}
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.say("SIGTERM: stopping the agent".into());
        self.terminate_agent();
    }

    /// SIGTERM to the agent's whole process group (what it started goes with it), SIGKILL to the
    /// group after the grace period.
    fn terminate_agent(&mut self) {
        if let Some(r) = &self.run {
            let _ = kill(Pid::from_raw(-(r.child.id() as i32)), Signal::SIGTERM);
            self.kill_at = Instant::now()
                .checked_add(Duration::from_secs(self.config.supervise.stop_grace_secs));
            self.status.state = AgentState::Stopping;
        }
    }

    /// Gives charging back when the policy holds it off: a supervisor that goes away must not
    /// leave a phone on its charger draining its battery.
    fn release_charging(&mut self) {
        let Some(ctx) = &mut self.power else { return };
        let Some(switch) = ctx.switch else { return };
        if ctx.policy.charging_allowed == Some(false) {
            match power::set_charging(&ctx.dir, &switch, true) {
                Ok(()) => {
                    ctx.policy.charging_allowed = Some(true);
                    tracing::info!(
                        "charging allowed again ({}) as node-runtime exits",
                        switch.file
                    );
                }
                Err(e) => {
                    tracing::info!("cannot allow charging again through {}: {e}", switch.file)
                }
            }
        }
    }

    fn reload(&mut self) {
        let text = match self.read_config_text() {
            Ok(t) => t,
            Err(e) => {
                self.say(format!(
                    "SIGHUP: cannot re-read node.toml ({e}); keeping the running config"
                ));
                return;
            }
        };
        let new = match NodeConfig::from_toml_str(&text, "node.toml") {
            Ok(c) => c,
            Err(e) => {
                self.say(format!("SIGHUP: {e}; keeping the running config"));
                return;
            }
        };
        if new.chroot != self.config.chroot || new.k3s.data_image != self.config.k3s.data_image {
            self.say("SIGHUP: chroot or data image settings changed: they apply at the next start of node-runtime".into());
        }
        let ip = match agent::node_ip(&new) {
            Ok(ip) => ip,
            Err(e) => {
                self.say(format!("SIGHUP: {e}; keeping the running config"));
                return;
            }
        };
        let args = agent::agent_args(&new, ip, self.cgroups);
        if let Ok(mut l) = self.log.lock()
            && (new.logs != self.config.logs)
            && let Ok(nl) = RotatingLog::open(
                &new.logs.dir,
                "k3s-agent.log",
                new.logs.max_bytes,
                new.logs.keep,
            )
        {
            *l = nl;
        }
        if let Some(p) = &new.power
            && let Some(ctx) = &mut self.power
        {
            let paused = ctx.policy.agent_paused;
            let allowed = ctx.policy.charging_allowed;
            ctx.policy = PowerPolicy::new(p.clone(), allowed);
            ctx.policy.agent_paused = paused;
            ctx.policy.charging_allowed = allowed;
        }
        self.config = new;
        self.node_ip = ip;
        self.status.node_ip = ip.map(|i| i.to_string());
        if args == self.args {
            self.say(
                "SIGHUP: node.toml re-read; agent arguments unchanged, agent left running".into(),
            );
            return;
        }
        self.args = args;
        if self.run.is_some() {
            self.say("SIGHUP: agent arguments changed: restarting the agent".into());
            self.restart_after_stop = true;
            self.terminate_agent();
        } else {
            self.say("SIGHUP: agent arguments changed: used at the next start".into());
        }
    }

    fn read_config_text(&self) -> std::io::Result<String> {
        match &self.config_dir {
            Some(d) => {
                let p = format!("/proc/self/fd/{}", d.as_raw_fd());
                std::fs::read_to_string(Path::new(&p).join(&self.config_name))
            }
            None => Err(std::io::Error::other(
                "the config's directory was not kept open",
            )),
        }
    }

    fn start(&mut self) {
        self.restart_at = None;
        let bin = &self.config.k3s.bin;
        let (rd, wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                self.failed_to_start(format!("pipe: {e}"));
                return;
            }
        };
        let wr2 = match wr.try_clone() {
            Ok(w) => w,
            Err(e) => {
                self.failed_to_start(format!("pipe: {e}"));
                return;
            }
        };
        let mut cmd = bootstrap::process::command(bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(wr))
            .stderr(Stdio::from(wr2))
            // Never hand a token to the agent through the environment.
            .env_remove("K3S_TOKEN")
            .env_remove("K3S_AGENT_TOKEN")
            .env_remove("K3S_CLUSTER_SECRET")
            .env_remove("K3S_TOKEN_FILE")
            .env_remove("K3S_URL");
        if let Some((k, v)) = self.iptables.as_ref().and_then(iptables::agent_env) {
            cmd.env(k, v);
        }
        if self.config.chroot.is_some() {
            // Android's PATH names /system paths that do not exist in the chroot.
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root");
        }
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C at a terminal reaches us, and we stop it in order.
            cmd.process_group(0);
        }
        let spawned = cmd.spawn();
        drop(cmd);
        match spawned {
            Ok(child) => {
                let log = Arc::clone(&self.log);
                // Detached: it ends when the last holder of the pipe's write end closes it.
                if let Err(e) = std::thread::Builder::new()
                    .name("agent-log".into())
                    .spawn(move || copy_to_log(rd, log))
                {
                    self.say(format!("cannot start the agent's log thread: {e}"));
                }
                self.say(format!(
                    "started k3s {}, pid {}",
                    self.config.k3s.role.command(),
                    child.id()
                ));
                self.status.state = AgentState::Running;
                self.status.agent_pid = Some(child.id());
                self.status.healthy = false;
                self.status.healthy_since = None;
                self.status.healthz = None;
                self.status.message = None;
                self.next_probe = Instant::now() + Duration::from_millis(500);
                self.run = Some(Run {
                    child,
                    started: Instant::now(),
                });
            }
            Err(e) => self.failed_to_start(format!("cannot start {}: {e}", bin.display())),
        }
    }

    fn failed_to_start(&mut self, msg: String) {
        self.say(msg.clone());
        self.status.message = Some(msg);
        self.status.restarts += 1;
        self.schedule_restart(Duration::ZERO);
    }

    fn schedule_restart(&mut self, ran: Duration) {
        let sv = &self.config.supervise;
        if ran >= Duration::from_secs(sv.healthy_after_secs) {
            self.failures = 0;
        }
        let delay = backoff_delay(sv.backoff_initial_ms, sv.backoff_max_secs, self.failures);
        self.failures = self.failures.saturating_add(1);
        self.restart_at = Some(Instant::now() + delay);
        self.status.state = AgentState::Backoff;
        self.say(format!(
            "restarting the agent in {:.3} s",
            delay.as_secs_f64()
        ));
    }

    fn reap(&mut self) {
        let Some(r) = &mut self.run else { return };
        let exit = match r.child.try_wait() {
            Ok(Some(s)) => s,
            _ => return,
        };
        let ran = r.started.elapsed();
        let r = self.run.take().expect("checked above");
        // The log thread is not joined: a descendant of the agent may hold the pipe open for
        // long after the agent exited, and the supervisor must not wait for it. The thread ends
        // when the last writer closes the pipe.
        if self.stopping {
            // Stragglers of the group (the agent's own children) do not outlive a stop.
            let _ = kill(Pid::from_raw(-(r.child.id() as i32)), Signal::SIGKILL);
        }
        use std::os::unix::process::ExitStatusExt;
        let last = LastExit {
            code: exit.code(),
            signal: exit.signal(),
            at: unix_now(),
            ran_ms: ran.as_millis() as u64,
        };
        self.say(format!(
            "agent pid {} exited ({}) after {:.1} s",
            r.child.id(),
            match (last.code, last.signal) {
                (Some(c), _) => format!("code {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "?".into(),
            },
            ran.as_secs_f64()
        ));
        self.status.last_exit = Some(last);
        self.status.agent_pid = None;
        self.status.healthy = false;
        self.status.healthy_since = None;
        self.kill_at = None;
        if self.stopping {
            return;
        }
        if self.restart_after_stop {
            self.restart_after_stop = false;
            self.failures = 0;
            self.restart_at = Some(Instant::now());
            return;
        }
        if self.paused {
            self.status.state = AgentState::PausedLowBattery;
            return;
        }
        self.status.restarts += 1;
        self.schedule_restart(ran);
    }

    fn probe(&mut self) {
        let (ok, word) = probe_healthz(self.config.supervise.healthz_port);
        self.status.healthy_since = match (ok, self.status.healthy_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(unix_now()),
            (false, _) => None,
        };
        self.status.healthy = ok;
        self.status.healthz = Some(word);
        self.ensure_routes();
        self.next_probe = Instant::now()
            + if ok {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(2)
            };
    }

    fn poll_power(&mut self) {
        let Some(ctx) = &mut self.power else { return };
        ctx.next_poll = Instant::now() + power_poll();
        let Some(reading) = power::read_power(&ctx.dir) else {
            return;
        };
        let actions = ctx.policy.decide(&reading);
        self.status.battery = Some(ctx.policy.battery(&reading, ctx.switch.as_ref()));
        let (dir, switch) = (ctx.dir.clone(), ctx.switch);
        for a in actions {
            match a {
                PowerAction::SetCharging(allow) => {
                    if let Some(s) = &switch {
                        match power::set_charging(&dir, s, allow) {
                            Ok(()) => self.say(format!(
                                "battery {}%: charging {} ({})",
                                reading.percent.unwrap_or(0),
                                if allow { "resumed" } else { "stopped" },
                                s.file
                            )),
                            Err(e) => self.say(format!("cannot write {}: {e}", s.file)),
                        }
                    }
                }
                PowerAction::PauseAgent => {
                    self.paused = true;
                    let msg = format!(
                        "battery {}% and not charging: agent stopped until it is back to {}%",
                        reading.percent.unwrap_or(0),
                        self.config
                            .power
                            .as_ref()
                            .map(|p| p.agent_resume_above)
                            .unwrap_or(0)
                    );
                    self.say(msg.clone());
                    self.status.message = Some(msg);
                    self.status.state = AgentState::PausedLowBattery;
                    self.terminate_agent();
                }
                PowerAction::ResumeAgent => {
                    self.paused = false;
                    self.say(format!(
                        "battery {}%: starting the agent again",
                        reading.percent.unwrap_or(0)
                    ));
                    self.status.message = None;
                    self.failures = 0;
                    self.restart_at = Some(Instant::now());
                }
            }
        }
    }

    /// Writes the status when it changed, or when the heartbeat is due (`force`: now).
    fn write_status(&mut self, force: bool) {
        let now = Instant::now();
        let due = match &self.last_written {
            None => true,
            Some((prev, at)) => !self.status.same_as(prev) || now >= *at + HEARTBEAT,
        };
        if !(due || force) {
            return;
        }
        self.status.updated_at = unix_now();
        match status::write_atomic(&self.config.status_file, &self.status) {
            Ok(()) => self.last_written = Some((self.status.clone(), now)),
            Err(e) => {
                tracing::info!("cannot write the status: {e}");
                // Retry at the next heartbeat, not in a tight loop.
                self.last_written = Some((self.status.clone(), now));
            }
        }
    }
}

/// The n-th restart delay (n = 0 for the first): initial·2ⁿ, capped.
pub fn backoff_delay(initial_ms: u64, max_secs: u64, n: u32) -> Duration {
    let ms = initial_ms.saturating_mul(1u64.checked_shl(n.min(40)).unwrap_or(u64::MAX));
    Duration::from_millis(ms.min(max_secs.saturating_mul(1000)).max(1))
}

fn copy_to_log(rd: OwnedFd, log: Arc<Mutex<RotatingLog>>) {
    let mut f = std::fs::File::from(rd);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Ok(mut l) = log.lock() {
                    let _ = l.write_chunk(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// GET http://127.0.0.1:PORT/healthz; healthy when it answers 200 `ok`.
pub fn probe_healthz(port: u16) -> (bool, String) {
    use std::net::{SocketAddr, TcpStream};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(s) => s,
        Err(e) => return (false, e.kind().to_string()),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if let Err(e) = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n") {
        return (false, e.kind().to_string());
    }
    let mut resp = Vec::new();
    let _ = s.take(4096).read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status_line = text.lines().next().unwrap_or("").to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or("");
    if status_line.split_whitespace().nth(1) == Some("200") && body == "ok" {
        (true, "ok".into())
    } else if status_line.is_empty() {
        (false, "no answer".into())
    } else {
        (
            false,
            format!("{status_line} {body}")
                .trim()
                .chars()
                .take(80)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<u64> = (0..8)
            .map(|n| backoff_delay(500, 5, n).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
        assert_eq!(backoff_delay(500, 60, 200).as_secs(), 60);
    }
}
