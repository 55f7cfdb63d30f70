//! phonectl: the command line over the `phonectl` library — clap, progress drawing, one thread
//! per phone, the summary. Everything that talks to a phone is in the library.

mod cli;
mod enrolling;
mod show;

use armfleet_cli::{Failure, finish, out, worst};
use bootstrap::kube::KubeClient;
use clap::{CommandFactory, Parser};
use cli::{Cli, Cmd, ReadyArgs, Targets};
use phonectl::adb::{AdbDevice, AdbServer};
use phonectl::device::{Device, DeviceError};
use phonectl::lifecycle;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    armfleet_cli::logging::init();
    finish("phonectl", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    armfleet_cli::out::set_quiet(cli.quiet);
    let port = AdbServer::port_from(cli.adb_port);
    let serial = cli.serial;
    let targets = |t: Targets| -> Result<Targets, Failure> {
        if t.all && serial.is_some() {
            return Err(Failure::usage(
                "-s SERIAL and --all exclude each other: pick one",
            ));
        }
        Ok(Targets {
            all: t.all,
            serial: serial.clone(),
        })
    };
    let wait = Duration::from_secs;
    match cli.command {
        Cmd::Completions { shell } => {
            armfleet_cli::manual::print_completions(Cli::command(), "phonectl", shell);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            armfleet_cli::manual::man_pages(Cli::command(), "phonectl", dir.as_deref())
                .map(|()| ExitCode::SUCCESS)
        }
        Cmd::Devices { json } => show::devices(&AdbServer::connect(port)?, json),
        Cmd::Doctor { json } => show::doctor(port, serial.as_deref(), json),
        Cmd::Enroll(mut args) => {
            args.targets = targets(args.targets)?;
            enrolling::enroll_cmd(port, *args)
        }
        Cmd::Status { targets: t, json } => show::status_cmd(port, &targets(t)?, json),
        Cmd::Logs { follow, lines } => {
            let dev = AdbServer::connect(port)?.select(serial.as_deref())?;
            lifecycle::require_enrolled(&dev)?;
            let code = dev.run_streaming(
                &lifecycle::logs_command(lines, follow),
                None,
                &mut |_| {},
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Shell { command } => shell_cmd(port, serial.as_deref(), &command),
        Cmd::Stop {
            targets: t,
            dry_run: true,
        } => for_each(port, &targets(t)?, |dev| {
            Ok(dry_run_lines(dev.serial(), &lifecycle::plan_stop(dev)?))
        }),
        Cmd::Stop { targets: t, .. } => for_each(port, &targets(t)?, |dev| {
            lifecycle::stop(dev)?;
            Ok(format!("{}: stopped", dev.serial()))
        }),
        Cmd::Start { targets: t, ready } => {
            let cluster = cluster(&ready)?;
            for_each(port, &targets(t)?, |dev| {
                let st = lifecycle::start(dev, wait(ready.wait), cluster.as_ref())?;
                Ok(format!(
                    "{}: running, {}",
                    dev.serial(),
                    ready_words(&st, &cluster)
                ))
            })
        }
        Cmd::Restart { targets: t, ready } => {
            let cluster = cluster(&ready)?;
            for_each(port, &targets(t)?, |dev| {
                let st = lifecycle::restart(dev, wait(ready.wait), cluster.as_ref())?;
                Ok(format!(
                    "{}: restarted, {}",
                    dev.serial(),
                    ready_words(&st, &cluster)
                ))
            })
        }
        Cmd::Unenroll {
            targets: t,
            dry_run: true,
        } => for_each(port, &targets(t)?, |dev| {
            Ok(dry_run_lines(dev.serial(), &lifecycle::plan_unenroll(dev)?))
        }),
        Cmd::Unenroll { targets: t, .. } => for_each(port, &targets(t)?, |dev| {
            lifecycle::unenroll(dev, &bootstrap::progress::Silent)?;
            Ok(format!("{}: unenrolled", dev.serial()))
        }),
    }
}

/// The cluster to ask about Nodes, when a kubeconfig is given: read before any phone is touched.
pub(crate) fn cluster(ready: &ReadyArgs) -> Result<Option<KubeClient>, Failure> {
    ready
        .kubeconfig
        .as_deref()
        .map(KubeClient::from_kubeconfig)
        .transpose()
        .map_err(Failure::usage)
}

/// A dry run's report for one phone: what would happen, one action per line.
pub(crate) fn dry_run_lines(serial: &str, actions: &[String]) -> String {
    let mut out = format!("{serial}: dry run, nothing changed; would:");
    for a in actions {
        out.push_str(&format!("\n  - {a}"));
    }
    out
}

/// "ready" as far as it was checked.
pub(crate) fn ready_words(st: &bootstrap::status::Status, cluster: &Option<KubeClient>) -> String {
    match cluster {
        Some(c) => format!("node {} Ready at {}", st.node_name, c.server()),
        None => "kubelet healthy".to_owned(),
    }
}

/// The phones a command targets: -s, the only one, or --all (every attached one). With --all a
/// phone that is not ready does not stop the others: it is a failure of its own.
pub(crate) struct Targeted {
    pub(crate) ready: Vec<AdbDevice>,
    pub(crate) unready: Vec<(String, Failure)>,
}

pub(crate) fn select(server: &AdbServer, t: &Targets) -> Result<Targeted, Failure> {
    if !t.all {
        return Ok(Targeted {
            ready: vec![server.select(t.serial.as_deref())?],
            unready: Vec::new(),
        });
    }
    let list = server.devices()?;
    if list.is_empty() {
        return Err(DeviceError::NoDevice.into());
    }
    let mut found = Targeted {
        ready: Vec::new(),
        unready: Vec::new(),
    };
    for e in &list {
        match server.device(e) {
            Ok(d) => found.ready.push(d),
            Err(err) => found.unready.push((e.serial.clone(), err.into())),
        }
    }
    Ok(found)
}

/// Runs `f` on each targeted phone at once; prints each result line.
fn for_each(
    port: u16,
    t: &Targets,
    f: impl Fn(&dyn Device) -> Result<String, Failure> + Sync,
) -> Result<ExitCode, Failure> {
    let Targeted { ready, unready } = select(&AdbServer::connect(port)?, t)?;
    let mut results: Vec<Result<String, Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = ready.iter().map(|d| s.spawn(|| f(d))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("phone thread"))
            .collect()
    });
    results.extend(unready.into_iter().map(|(_, f)| Err(f)));
    summarize(results)
}

/// Prints the lines of the phones that succeeded; with several phones each failure gets its line
/// too and the worst decides the exit code.
pub(crate) fn summarize(results: Vec<Result<String, Failure>>) -> Result<ExitCode, Failure> {
    let many = results.len() > 1;
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(line) => out::println(&line),
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

fn shell_cmd(port: u16, serial: Option<&str>, argv: &[String]) -> Result<ExitCode, Failure> {
    let server = AdbServer::connect(port)?;
    let dev = server.select(serial)?;
    lifecycle::require_enrolled(&dev)?;
    let remote = lifecycle::shell_command(lifecycle::read_status(&dev)?.as_ref(), argv);
    if argv.is_empty() && std::io::stdin().is_terminal() {
        // An interactive shell needs a pty: the adb client does that well; use it.
        let port = port.to_string();
        let adb_args = ["-P", &port, "-s", dev.serial(), "shell", "-t", &remote];
        let status = bootstrap::process::command("adb")
            .args(adb_args)
            .stdin(std::process::Stdio::inherit())
            .status()
            .map_err(|e| {
                Failure::usage(format!("an interactive shell needs `adb` on PATH: {e}"))
            })?;
        return Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ));
    }
    let code = dev.run_streaming(
        &remote,
        Some(&mut out::PolledStdin),
        &mut |_| {},
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
