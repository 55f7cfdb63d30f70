//! phonectl: the command line over the `phonectl` library (clap, progress bars, exit codes).

use bootstrap::NodeConfig;
use bootstrap::exit::ExitClass;
use bootstrap::progress::{Event, Progress};
use bootstrap::token::{CaCheck, JoinToken, SecretSource};
use bootstrap::topology::Topology;
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use phonectl::adb::{AdbDevice, AdbError, AdbServer};
use phonectl::device::{Device, as_root, sh_quote};
use phonectl::doctor::{self, Verdict};
use phonectl::enroll::{self, EnrollSpec, PhoneError};
use phonectl::layout;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  phonectl devices                      # what is plugged in, and whether it is enrolled
  phonectl doctor                       # can this phone be a worker? (changes nothing)
  phonectl enroll --name phone-1 --rootfs node-rootfs.tar.gz --token-file ~/.k3s-token
  phonectl enroll --all --rootfs node-rootfs.tar.gz --token-env K3S_TOKEN
  phonectl status --all
  phonectl logs -s 0123456789ABCDEF -f
  phonectl unenroll -s 0123456789ABCDEF

Phones are found through the adb server (ANDROID_ADB_SERVER_PORT or --adb-port, default 5037);
phonectl starts one with `adb start-server` when none runs. See PHONES.md.";

/// Turn rooted Android phones plugged in over USB into k3s workers.
#[derive(Parser)]
#[command(name = "phonectl", version, after_help = EXAMPLES)]
struct Cli {
    /// The adb server's port on 127.0.0.1.
    #[arg(
        long,
        global = true,
        env = "ANDROID_ADB_SERVER_PORT",
        value_name = "PORT"
    )]
    adb_port: Option<u16>,
    /// The phone's serial (see `phonectl devices`); needed when several are attached.
    #[arg(
        short = 's',
        long = "serial",
        global = true,
        value_name = "SERIAL",
        env = "ANDROID_SERIAL"
    )]
    serial: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Targets {
    /// Every attached phone, in parallel (instead of -s SERIAL).
    #[arg(long)]
    all: bool,
    /// Filled from the global -s.
    #[arg(skip)]
    serial: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// List attached phones: serial, model, Android, ABI, root, state, enrolled.
    #[command(after_help = "Example:\n  phonectl devices --json")]
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check whether a phone can be a worker. Reads only; changes nothing.
    #[command(
        after_help = "Examples:\n  phonectl doctor\n  phonectl doctor -s 0123456789ABCDEF --json"
    )]
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a phone a k3s worker (or bring an enrolled one up to date).
    #[command(after_help = "Examples:
  phonectl enroll --rootfs node-rootfs.tar.gz --token-file ~/.k3s-token
  phonectl enroll --all --topology lab.toml --rootfs node-rootfs.tar.gz --token-env K3S_TOKEN
  phonectl enroll -s 0123456789ABCDEF --config node.toml --rootfs node-rootfs.tar.gz --token-file t

Enroll is idempotent: each piece is compared by sha256 first and only what differs is sent.")]
    Enroll(Box<EnrollArgs>),
    /// Show the worker's state (node-runtime status).
    #[command(after_help = "Examples:\n  phonectl status\n  phonectl status --all --json")]
    Status {
        #[command(flatten)]
        targets: Targets,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the worker's logs (node-runtime and the k3s agent).
    #[command(after_help = "Examples:\n  phonectl logs\n  phonectl logs -f -n 50")]
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show from the end of each file.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// A shell inside the worker's chroot (or run one command there).
    #[command(after_help = "Examples:\n  phonectl shell\n  phonectl shell -- cat /etc/os-release")]
    Shell {
        /// The command to run instead of an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop the worker; it stays stopped across reboots until `start`.
    #[command(after_help = "Example:\n  phonectl stop -s 0123456789ABCDEF")]
    Stop {
        #[command(flatten)]
        targets: Targets,
    },
    /// Start the worker (and let the boot hook start it again after reboots).
    #[command(after_help = "Example:\n  phonectl start")]
    Start {
        #[command(flatten)]
        targets: Targets,
        /// How long to wait for the agent to run, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Stop and start the worker.
    #[command(after_help = "Example:\n  phonectl restart")]
    Restart {
        #[command(flatten)]
        targets: Targets,
        /// How long to wait for the agent to run, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Remove the worker: stop it, remove the boot hook, the rootfs, the data image, the token.
    #[command(after_help = "Example:\n  phonectl unenroll -s 0123456789ABCDEF")]
    Unenroll {
        #[command(flatten)]
        targets: Targets,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  phonectl completions bash > /etc/bash_completion.d/phonectl"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (phonectl.1 and one per command) into a directory, or print phonectl.1.
    #[command(after_help = "Example:\n  phonectl man --dir /usr/local/share/man/man1")]
    Man {
        /// Where to write the pages; without it phonectl.1 goes to stdout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct EnrollArgs {
    #[command(flatten)]
    targets: Targets,
    /// The node name (else the topology entry whose serial matches the phone).
    #[arg(long)]
    name: Option<String>,
    /// The lab topology file (else ARMFLEET_TOPOLOGY, else the built-in one).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Use this node.toml instead of deriving one from the topology; a directory holds one
    /// `SERIAL.toml` per phone (for --all).
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "topology")]
    config: Option<PathBuf>,
    /// The node rootfs tarball.
    #[arg(long, value_name = "TAR.GZ", env = "ARMFLEET_ROOTFS")]
    rootfs: PathBuf,
    /// The static aarch64 node-runtime (else ARMFLEET_NODE_RUNTIME, else
    /// `node-runtime-aarch64` next to phonectl, else ~/.cache/armfleet/node-runtime-aarch64).
    #[arg(long, value_name = "PATH", env = "ARMFLEET_NODE_RUNTIME")]
    node_runtime: Option<PathBuf>,
    /// Read the k3s join token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token_env")]
    token_file: Option<PathBuf>,
    /// Read the k3s join token from this environment variable.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Enroll even when the doctor finds a problem (root is still required).
    #[arg(long)]
    force: bool,
    /// How long to wait for the agent to run, in seconds.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// An error with its exit class, printed as one line.
struct Failure {
    class: ExitClass,
    message: String,
}

impl<E: Into<PhoneError>> From<E> for Failure {
    fn from(e: E) -> Self {
        let e: PhoneError = e.into();
        Failure {
            class: e.exit_class(),
            message: e.to_string(),
        }
    }
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure {
        class: ExitClass::Usage,
        message: message.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("phonectl: {}", f.message);
            ExitCode::from(f.class.code())
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let port = AdbServer::port_from(cli.adb_port);
    let serial = cli.serial;
    let mut command = cli.command;
    match &mut command {
        Cmd::Status { targets, .. }
        | Cmd::Stop { targets }
        | Cmd::Start { targets, .. }
        | Cmd::Restart { targets, .. }
        | Cmd::Unenroll { targets } => targets.serial = serial.clone(),
        Cmd::Enroll(args) => args.targets.serial = serial.clone(),
        _ => {}
    }
    if let Cmd::Status { targets, .. }
    | Cmd::Stop { targets }
    | Cmd::Start { targets, .. }
    | Cmd::Restart { targets, .. }
    | Cmd::Unenroll { targets } = &command
        && targets.all
        && targets.serial.is_some()
    {
        return Err(usage("-s SERIAL and --all exclude each other: pick one"));
    }
    if let Cmd::Enroll(args) = &command
        && args.targets.all
        && args.targets.serial.is_some()
    {
        return Err(usage("-s SERIAL and --all exclude each other: pick one"));
    }
    match command {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "phonectl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => man(dir.as_deref()).map(|_| ExitCode::SUCCESS),
        Cmd::Devices { json } => devices(&AdbServer::connect(port)?, json),
        Cmd::Doctor { json } => {
            let server = AdbServer::connect(port)?;
            let dev = server.select(serial.as_deref())?;
            let facts = doctor::probe(&dev)?;
            let report = doctor::assess(&facts, doctor::DEFAULT_NEED_BYTES, phonectl::check_kernel);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap());
            } else {
                println!(
                    "{} ({}): {}",
                    report.serial,
                    report.model.as_deref().unwrap_or("?"),
                    report.overall
                );
                for i in &report.items {
                    println!("  {:<8} {:<5} {}", i.name, i.verdict.to_string(), i.detail);
                    if let Some(fix) = &i.fix {
                        println!("  {:<8}       -> {fix}", "");
                    }
                }
            }
            if report.overall == Verdict::Fail {
                // The report went to stdout; the blocker and its fix also end stderr as one line.
                return Err(enroll::not_ready(report, |n| {
                    format!(" (and {n} more, listed above)")
                })
                .into());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enroll(args) => enroll_cmd(port, *args),
        Cmd::Status { targets, json } => status_cmd(port, &targets, json),
        Cmd::Logs { follow, lines } => {
            let dev = AdbServer::connect(port)?.select(serial.as_deref())?;
            require_enrolled(&dev)?;
            let cmd = format!(
                "cd {r}/var/log/armfleet 2>/dev/null && tail -n {lines} {f} *.log",
                r = layout::ROOTFS,
                f = if follow { "-f" } else { "" }
            );
            let code = dev.run_streaming(
                &as_root(&cmd),
                None,
                &mut |_| {},
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Shell { command } => shell_cmd(port, serial.as_deref(), command),
        Cmd::Stop { targets } => for_each(port, &targets, |dev| {
            require_enrolled(dev)?;
            enroll::write_root_file(dev, layout::DISABLED, "0644", b"stopped by phonectl\n")?;
            enroll::stop_worker(dev)?;
            Ok(format!("{}: stopped", dev.serial()))
        }),
        Cmd::Start { targets, wait } => for_each(port, &targets, |dev| {
            require_enrolled(dev)?;
            clear_stopped_flag(dev)?;
            let running = enroll::read_status(dev)?.is_some_and(|s| s.agent_up());
            if !running {
                enroll::start_worker(dev)?;
            }
            enroll::wait_running(dev, Duration::from_secs(wait))?;
            Ok(format!("{}: running", dev.serial()))
        }),
        Cmd::Restart { targets, wait } => for_each(port, &targets, |dev| {
            require_enrolled(dev)?;
            clear_stopped_flag(dev)?;
            enroll::stop_worker(dev)?;
            enroll::start_worker(dev)?;
            enroll::wait_running(dev, Duration::from_secs(wait))?;
            Ok(format!("{}: restarted, running", dev.serial()))
        }),
        Cmd::Unenroll { targets } => for_each(port, &targets, |dev| {
            enroll::unenroll(dev, &bootstrap::progress::Silent)?;
            Ok(format!("{}: unenrolled", dev.serial()))
        }),
    }
}

fn require_enrolled(dev: &AdbDevice) -> Result<(), Failure> {
    if !enroll::is_enrolled(dev)? {
        return Err(PhoneError::NotEnrolled {
            serial: dev.serial().to_owned(),
        }
        .into());
    }
    Ok(())
}

/// Undoes `phonectl stop`: the boot hook starts the worker again after a reboot.
fn clear_stopped_flag(dev: &AdbDevice) -> Result<(), Failure> {
    enroll::root_ok(
        dev,
        &format!("rm -f {}", layout::DISABLED),
        "clearing the stopped flag",
    )?;
    Ok(())
}

/// The devices a command targets: -s, the only one, or --all (every attached one). With --all a
/// phone that is not ready (unauthorized, offline) does not stop the others: it comes back as a
/// failure of its own, reported with theirs.
struct Targeted {
    ready: Vec<AdbDevice>,
    unready: Vec<(String, Failure)>,
}

fn targets(server: &AdbServer, t: &Targets) -> Result<Targeted, Failure> {
    if !t.all {
        return Ok(Targeted {
            ready: vec![server.select(t.serial.as_deref())?],
            unready: Vec::new(),
        });
    }
    let list = server.devices()?;
    if list.is_empty() {
        return Err(AdbError::NoDevice.into());
    }
    let mut out = Targeted {
        ready: Vec::new(),
        unready: Vec::new(),
    };
    for e in &list {
        match server.device(e) {
            Ok(d) => out.ready.push(d),
            Err(err) => out.unready.push((e.serial.clone(), err.into())),
        }
    }
    Ok(out)
}

fn for_each(
    port: u16,
    t: &Targets,
    f: impl Fn(&AdbDevice) -> Result<String, Failure> + Sync,
) -> Result<ExitCode, Failure> {
    let server = AdbServer::connect(port)?;
    let Targeted { ready, unready } = targets(&server, t)?;
    let mut results: Vec<Result<String, Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = ready.iter().map(|d| s.spawn(|| f(d))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    results.extend(unready.into_iter().map(|(_, f)| Err(f)));
    summarize(results)
}

/// The failure with the highest exit code (the first of equals): what a multi-phone run exits with.
fn worst(failures: impl IntoIterator<Item = Failure>) -> Option<Failure> {
    failures.into_iter().fold(None, |worst, f| match worst {
        Some(w) if w.class.code() >= f.class.code() => Some(w),
        _ => Some(f),
    })
}

fn summarize(results: Vec<Result<String, Failure>>) -> Result<ExitCode, Failure> {
    let many = results.len() > 1;
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(line) => println!("{line}"),
            Err(f) => {
                if many {
                    eprintln!("phonectl: {}", f.message);
                }
                failures.push(f);
            }
        }
    }
    match worst(failures) {
        None => Ok(ExitCode::SUCCESS),
        Some(f) if many => Ok(ExitCode::from(f.class.code())),
        Some(f) => Err(f),
    }
}

fn devices(server: &AdbServer, json: bool) -> Result<ExitCode, Failure> {
    #[derive(serde::Serialize)]
    struct Row {
        serial: String,
        state: String,
        model: Option<String>,
        android: Option<String>,
        abi: Option<String>,
        root: Option<String>,
        enrolled: Option<bool>,
    }
    let list = server.devices()?;
    let rows: Vec<Row> = std::thread::scope(|s| {
        let hs: Vec<_> = list
            .iter()
            .map(|e| {
                s.spawn(move || {
                    let mut row = Row {
                        serial: e.serial.clone(),
                        state: e.state.clone(),
                        model: e.model.clone(),
                        android: None,
                        abi: None,
                        root: None,
                        enrolled: None,
                    };
                    if let Ok(dev) = server.device(e) {
                        let prop = |k: &str| {
                            dev.shell(&format!("getprop {k}"))
                                .ok()
                                .map(|o| o.out())
                                .filter(|s| !s.is_empty())
                        };
                        row.android = prop("ro.build.version.release");
                        row.abi = prop("ro.product.cpu.abi");
                        row.model = prop("ro.product.model").or(row.model);
                        let id = dev.shell(&as_root("id -u")).ok();
                        let rooted = id.is_some_and(|o| o.success() && o.out() == "0");
                        row.root = Some(if rooted { "yes" } else { "no" }.into());
                        if rooted {
                            row.enrolled = enroll::is_enrolled(&dev).ok();
                        }
                    }
                    row
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
    } else if rows.is_empty() {
        println!("no phones attached (enable USB debugging and plug one in)");
    } else {
        println!(
            "{:<22} {:<13} {:<18} {:<8} {:<12} {:<5} ENROLLED",
            "SERIAL", "STATE", "MODEL", "ANDROID", "ABI", "ROOT"
        );
        let d = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        for r in &rows {
            println!(
                "{:<22} {:<13} {:<18} {:<8} {:<12} {:<5} {}",
                r.serial,
                r.state,
                d(&r.model),
                d(&r.android),
                d(&r.abi),
                d(&r.root),
                match r.enrolled {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_cmd(port: u16, t: &Targets, json: bool) -> Result<ExitCode, Failure> {
    let server = AdbServer::connect(port)?;
    let Targeted { ready, unready } = targets(&server, t)?;
    type One = (
        String,
        Result<Option<node_runtime::status::Status>, Failure>,
    );
    let mut results: Vec<One> = std::thread::scope(|s| {
        let hs: Vec<_> = ready
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let r = require_enrolled(d)
                        .and_then(|()| enroll::read_status(d).map_err(Failure::from));
                    (d.serial().to_owned(), r)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("status thread"))
            .collect()
    });
    results.extend(unready.into_iter().map(|(serial, f)| (serial, Err(f))));
    if json {
        // Every phone has an entry, a failing one with its error: a script sees all of them.
        let entries: Vec<serde_json::Value> = results
            .iter()
            .map(|(serial, r)| match r {
                Ok(st) => serde_json::json!({"serial": serial, "ok": true, "status": st}),
                Err(f) => serde_json::json!({"serial": serial, "ok": false, "error": f.message}),
            })
            .collect();
        let doc = if t.all {
            serde_json::Value::Array(entries)
        } else {
            entries.into_iter().next().unwrap_or_default()
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap());
        let failures = results.into_iter().filter_map(|(_, r)| r.err());
        return match worst(failures) {
            None => Ok(ExitCode::SUCCESS),
            // The JSON says which; stderr still gets the one line.
            Some(f) => Err(f),
        };
    }
    summarize(
        results
            .into_iter()
            .map(|(serial, r)| {
                r.map(|st| match st {
                    Some(s) => format!("{serial}: {}", s.render().trim_end()),
                    None => {
                        format!("{serial}: enrolled, node-runtime has not written a status yet")
                    }
                })
            })
            .collect(),
    )
}

fn shell_cmd(port: u16, serial: Option<&str>, command: Vec<String>) -> Result<ExitCode, Failure> {
    let server = AdbServer::connect(port)?;
    let dev = server.select(serial)?;
    require_enrolled(&dev)?;
    // Inside node-runtime's mount namespace when it runs, so /proc, /dev and the data image are there.
    let pid = enroll::read_status(&dev)?
        .filter(|s| s.live())
        .map(|s| s.pid);
    let inner = if command.is_empty() {
        "/bin/sh -l".to_owned()
    } else {
        let q: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
        format!("/bin/sh -c {}", sh_quote(&q.join(" ")))
    };
    let plain = format!("chroot {} {inner}", layout::ROOTFS);
    // Probe nsenter first (it can be missing, or refused under emulation) rather than retrying
    // the user's command, which must run exactly once.
    let chroot = match pid {
        Some(pid) => format!(
            "if nsenter -t {pid} -m -- true 2>/dev/null; then nsenter -t {pid} -m -- {plain}; else {plain}; fi"
        ),
        None => plain,
    };
    let remote = as_root(&format!("export HOME=/root; {chroot}"));
    if command.is_empty() && std::io::stdin().is_terminal() {
        // An interactive shell needs a pty: the adb client does that well; use it.
        let status = std::process::Command::new("adb")
            .args([
                "-P",
                &port.to_string(),
                "-s",
                dev.serial(),
                "shell",
                "-t",
                &remote,
            ])
            .status()
            .map_err(|e| usage(format!("an interactive shell needs `adb` on PATH: {e}")))?;
        return Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ));
    }
    let mut stdin = PolledStdin;
    let code = dev.run_streaming(
        &remote,
        Some(&mut stdin),
        &mut |_| {},
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// This process's stdin, read without blocking for more than a moment: a read with nothing to
/// read returns `TimedOut`, so the pump that forwards it notices when the remote command has
/// exited (see `AdbDevice::run_streaming`) instead of waiting for the next key press.
struct PolledStdin;

impl std::io::Read for PolledStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = std::io::stdin().as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // Readable, at end of input, or hung up: a plain read now returns at once. Unbuffered, so
        // no input is held back in a buffer when the command ends.
        // SAFETY: reading into a buffer of the length passed.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

fn man(dir: Option<&Path>) -> Result<(), Failure> {
    let cmd = Cli::command();
    match dir {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| usage(format!("writing the man page: {e}"))),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| usage(format!("cannot create {}: {e}", dir.display())))?;
            let write = |name: String, c: clap::Command| -> Result<(), Failure> {
                let path = dir.join(format!("{name}.1"));
                let mut f = std::fs::File::create(&path)
                    .map_err(|e| usage(format!("cannot write {}: {e}", path.display())))?;
                clap_mangen::Man::new(c)
                    .title(name)
                    .render(&mut f)
                    .map_err(|e| usage(format!("cannot write {}: {e}", path.display())))
            };
            for sub in cmd.get_subcommands() {
                let name = format!("phonectl-{}", sub.get_name());
                write(name, sub.clone())?;
            }
            write("phonectl".into(), cmd)?;
            Ok(())
        }
    }
}

// ---- enroll ----

fn resolve_node_runtime(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    bootstrap::cache::find_node_runtime(flag.as_deref()).map_err(usage)
}

/// The join token: --token-file, --token-env, else the topology's `cluster.token` source.
fn read_token(args: &EnrollArgs, topology: Option<&Topology>) -> Result<JoinToken, Failure> {
    let token_usage = |e: bootstrap::token::TokenError| usage(e);
    if let Some(f) = &args.token_file {
        return JoinToken::from_source(&SecretSource::File(f.clone()), Path::new("."))
            .map_err(token_usage);
    }
    if let Some(var) = &args.token_env {
        return JoinToken::from_source(&SecretSource::Env(var.clone()), Path::new("."))
            .map_err(token_usage);
    }
    match topology {
        Some(t) => JoinToken::from_source(&t.cluster.token, &t.base_dir).map_err(token_usage),
        None => Err(usage(
            "no join token: pass --token-file FILE or --token-env VAR (the server's /var/lib/rancher/k3s/server/node-token)",
        )),
    }
}

fn config_for(
    args: &EnrollArgs,
    topology: Option<&Topology>,
    serial: &str,
) -> Result<NodeConfig, Failure> {
    if let Some(path) = &args.config {
        // A directory holds one node.toml per phone, named after its serial (for --all).
        let file = if path.is_dir() {
            let f = path.join(format!("{serial}.toml"));
            if !f.is_file() {
                return Err(usage(format!(
                    "phone {serial}: no {} in the --config directory: write one, or enroll it with -s and a file",
                    f.display()
                )));
            }
            f
        } else {
            path.clone()
        };
        let mut c = NodeConfig::load(&file).map_err(usage)?;
        if let Some(name) = &args.name {
            c.node.name = name.clone();
        }
        return Ok(c);
    }
    let topology = topology.expect("loaded when there is no --config");
    if let Some(name) = &args.name {
        return NodeConfig::for_new_phone(topology, name).map_err(usage);
    }
    match topology.phone_by_serial(serial) {
        Some(p) => NodeConfig::for_phone(topology, &p.name).map_err(usage),
        None => Err(usage(format!(
            "phone {serial}: {} has no [[phone]] entry with serial = \"{serial}\": add one, or pass --name NAME to enroll it with the cluster's defaults",
            topology.origin
        ))),
    }
}

fn enroll_cmd(port: u16, args: EnrollArgs) -> Result<ExitCode, Failure> {
    let topology = match &args.config {
        Some(_) => None,
        None => Some(Topology::resolve(args.topology.as_deref()).map_err(usage)?),
    };
    let token = read_token(&args, topology.as_ref())?;
    let node_runtime = resolve_node_runtime(args.node_runtime.clone())?;
    if !args.rootfs.is_file() {
        return Err(usage(format!(
            "--rootfs {}: no such file (build one with imagegen/bootstrap, see PHONES.md)",
            args.rootfs.display()
        )));
    }
    let server = AdbServer::connect(port)?;
    let Targeted {
        ready: devs,
        unready,
    } = targets(&server, &args.targets)?;
    if args.name.is_some() && devs.len() + unready.len() > 1 {
        return Err(usage(
            "--name names one phone: use it with -s SERIAL, not with --all",
        ));
    }
    // Everything that can be wrong on the laptop side is checked before any phone is touched.
    let configs: Vec<NodeConfig> = devs
        .iter()
        .map(|d| config_for(&args, topology.as_ref(), d.serial()))
        .collect::<Result<_, _>>()?;
    // The token's CA hash against the server, before any phone is touched.
    let mut servers: Vec<&str> = configs.iter().map(|c| c.server.url.as_str()).collect();
    servers.dedup();
    for url in servers {
        match bootstrap::token::verify_server_ca(url, &token).map_err(usage)? {
            CaCheck::Verified => eprintln!("phonectl: {url}: the server's CA matches the token"),
            CaCheck::NoHashInToken => eprintln!(
                "phonectl: the token has no CA hash (not K10<hash>::...): the server's identity is not checked"
            ),
            CaCheck::Unreachable(why) => eprintln!(
                "phonectl: {url} is not reachable from here ({why}): the token's CA hash was not checked; the phone will check it when it joins"
            ),
        }
    }
    // Hashed while the phones are probed; each enroll waits for it when it needs it.
    let rootfs_hash = std::sync::OnceLock::new();
    let rootfs_sha256 = || {
        rootfs_hash
            .get_or_init(|| {
                enroll::sha256_file(&args.rootfs).map_err(|e| match e {
                    // The enroll names the file itself.
                    enroll::PhoneError::Local { source, .. } => source.to_string(),
                    other => other.to_string(),
                })
            })
            .clone()
    };

    let bars = Bars::new(devs.len());
    let results: Vec<Result<enroll::EnrollSummary, Failure>> = std::thread::scope(|s| {
        // A copy of the closure: it only borrows the cell and the path.
        s.spawn(rootfs_sha256);
        let hs: Vec<_> = devs
            .iter()
            .zip(configs)
            .enumerate()
            .map(|(i, (dev, config))| {
                let bars = &bars;
                let token = token.secret().expose();
                let args = &args;
                let node_runtime = node_runtime.as_path();
                let rootfs_sha256 = &rootfs_sha256;
                s.spawn(move || {
                    let spec = EnrollSpec {
                        config,
                        token,
                        rootfs: &args.rootfs,
                        rootfs_sha256,
                        node_runtime,
                        force: args.force,
                        wait: Duration::from_secs(args.wait),
                        kernel: phonectl::check_kernel,
                    };
                    let sink = bars.sink(i, dev.serial());
                    let r = enroll::enroll(dev, &spec, &sink).map_err(Failure::from);
                    sink.finish(&r);
                    r
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("enroll thread"))
            .collect()
    });
    let mut serials: Vec<String> = devs.iter().map(|d| d.serial().to_owned()).collect();
    let mut results = results;
    for (serial, f) in unready {
        serials.push(serial);
        results.push(Err(f));
    }
    if args.json {
        let arr: Vec<_> = results
            .iter()
            .zip(&serials)
            .map(|(r, serial)| match r {
                Ok(s) => serde_json::json!({"serial": serial, "ok": true, "summary": s}),
                Err(f) => {
                    serde_json::json!({"serial": serial, "ok": false, "error": f.message})
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).unwrap());
    }
    let lines = results
        .into_iter()
        .map(|r| {
            r.map(|s| {
                format!(
                    "{}: enrolled as {} in {:.1} s ({} sent; changed: {}{})",
                    s.serial,
                    s.node,
                    s.seconds,
                    doctor::human(s.bytes_sent),
                    if s.changed.is_empty() {
                        "nothing".into()
                    } else {
                        s.changed.join(", ")
                    },
                    if s.warnings.is_empty() {
                        String::new()
                    } else {
                        format!("; warnings: {}", s.warnings.join("; "))
                    }
                )
            })
        })
        .collect();
    if args.json {
        // The JSON already carries everything; keep stdout parseable.
        let code = summarize_quiet(lines);
        return code;
    }
    summarize(lines)
}

fn summarize_quiet(results: Vec<Result<String, Failure>>) -> Result<ExitCode, Failure> {
    match worst(results.into_iter().filter_map(Result::err)) {
        None => Ok(ExitCode::SUCCESS),
        Some(f) => Err(f),
    }
}

/// Progress drawing: one line per phone; bytes while pushing. Plain lines when not a terminal.
struct Bars {
    multi: MultiProgress,
    tty: bool,
}

impl Bars {
    fn new(_n: usize) -> Bars {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Bars { multi, tty }
    }

    fn sink(&self, _i: usize, serial: &str) -> Sink {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {spinner} {msg}").expect("template"),
        );
        bar.set_prefix(serial.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Sink {
            bar,
            serial: serial.to_owned(),
            tty: self.tty,
        }
    }
}

struct Sink {
    bar: ProgressBar,
    serial: String,
    tty: bool,
}

impl Sink {
    fn finish<T>(&self, r: &Result<T, Failure>) {
        match r {
            Ok(_) => self.bar.finish_with_message("done"),
            Err(_) => self.bar.abandon_with_message("failed"),
        }
    }

    fn plain(&self, line: String) {
        if !self.tty {
            let _ = writeln!(std::io::stderr(), "{}: {line}", self.serial);
        }
    }
}

impl Progress for Sink {
    fn event(&self, event: Event) {
        match event {
            Event::StepStarted { step, total } => {
                match total {
                    Some(t) => {
                        self.bar.set_length(t);
                        self.bar.set_position(0);
                        self.bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                            )
                            .expect("template")
                            .progress_chars("=> "),
                        );
                    }
                    None => self.bar.set_style(
                        ProgressStyle::with_template("{prefix:.bold} {spinner} {msg}")
                            .expect("template"),
                    ),
                }
                self.bar.set_message(step.clone());
                self.plain(format!("{step} ..."));
            }
            Event::Bytes { done, .. } => self.bar.set_position(done),
            Event::StepFinished { step, detail } => {
                self.plain(format!("{step}: done {detail}"));
            }
            Event::StepSkipped { step, reason } => {
                self.bar.set_message(format!("{step}: {reason}"));
                self.plain(format!("{step}: {reason}"));
            }
            Event::Note(n) => {
                let _ = self.multi_println(&n);
            }
        }
    }
}

impl Sink {
    fn multi_println(&self, line: &str) -> std::io::Result<()> {
        if self.tty {
            self.bar.println(line);
        } else {
            writeln!(std::io::stderr(), "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(class: ExitClass, message: &str) -> Failure {
        Failure {
            class,
            message: message.into(),
        }
    }

    #[test]
    fn worst_failure_is_the_highest_exit_code_and_the_first_of_equals() {
        assert!(worst(Vec::new()).is_none());
        let w = worst([
            fail(ExitClass::Usage, "a"),
            fail(ExitClass::Device, "b"),
            fail(ExitClass::Device, "c"),
            fail(ExitClass::Usage, "d"),
        ])
        .unwrap();
        assert_eq!((w.class.code(), w.message.as_str()), (3, "b"));
        let w = worst([fail(ExitClass::Device, "x"), fail(ExitClass::Internal, "y")]).unwrap();
        assert_eq!(w.message, "y");
    }
}
