//! phonectl: the command line over the `phonectl` library — clap, progress drawing, one thread
//! per phone, the summary. Everything that talks to a phone is in the library.

mod cli;

use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, finish, out, worst};
use bootstrap::kube::KubeClient;
use clap::{CommandFactory, Parser};
use cli::{Cli, Cmd, EnrollArgs, ReadyArgs, Targets};
use phonectl::adb::{AdbDevice, AdbServer};
use phonectl::device::{Device, DeviceError};
use phonectl::doctor::{self, Verdict};
use phonectl::enroll::{self, EnrollSpec};
use phonectl::lifecycle;
use phonectl::setup::{self, ConfigSource};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    armfleet_cli::logging::init();
    finish("phonectl", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
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
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "phonectl", &mut buf);
            out::print(&String::from_utf8_lossy(&buf));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => man(dir.as_deref()).map(|()| ExitCode::SUCCESS),
        Cmd::Devices { json } => devices(&AdbServer::connect(port)?, json),
        Cmd::Doctor { json } => doctor(port, serial.as_deref(), json),
        Cmd::Enroll(mut args) => {
            args.targets = targets(args.targets)?;
            enroll_cmd(port, *args)
        }
        Cmd::Status { targets: t, json } => status_cmd(port, &targets(t)?, json),
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
        Cmd::Stop { targets: t } => for_each(port, &targets(t)?, |dev| {
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
        Cmd::Unenroll { targets: t } => for_each(port, &targets(t)?, |dev| {
            lifecycle::unenroll(dev, &bootstrap::progress::Silent)?;
            Ok(format!("{}: unenrolled", dev.serial()))
        }),
    }
}

/// The cluster to ask about Nodes, when a kubeconfig is given: read before any phone is touched.
fn cluster(ready: &ReadyArgs) -> Result<Option<KubeClient>, Failure> {
    ready
        .kubeconfig
        .as_deref()
        .map(KubeClient::from_kubeconfig)
        .transpose()
        .map_err(Failure::usage)
}

/// "ready" as far as it was checked.
fn ready_words(st: &bootstrap::status::Status, cluster: &Option<KubeClient>) -> String {
    match cluster {
        Some(c) => format!("node {} Ready at {}", st.node_name, c.server()),
        None => "kubelet healthy".to_owned(),
    }
}

/// The phones a command targets: -s, the only one, or --all (every attached one). With --all a
/// phone that is not ready does not stop the others: it is a failure of its own.
struct Targeted {
    ready: Vec<AdbDevice>,
    unready: Vec<(String, Failure)>,
}

fn select(server: &AdbServer, t: &Targets) -> Result<Targeted, Failure> {
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
fn summarize(results: Vec<Result<String, Failure>>) -> Result<ExitCode, Failure> {
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

fn doctor(port: u16, serial: Option<&str>, json: bool) -> Result<ExitCode, Failure> {
    let dev = AdbServer::connect(port)?.select(serial)?;
    let report = doctor::assess(&doctor::probe(&dev)?, doctor::DEFAULT_NEED_BYTES);
    if json {
        out::json(&report);
    } else {
        out::println(&format!(
            "{} ({}): {}",
            report.serial,
            report.model.as_deref().unwrap_or("?"),
            report.overall
        ));
        for i in &report.items {
            out::println(&format!(
                "  {:<8} {:<5} {}",
                i.name,
                i.verdict.to_string(),
                i.detail
            ));
            if let Some(fix) = &i.fix {
                out::println(&format!("  {:<8}       -> {fix}", ""));
            }
        }
    }
    if report.overall == Verdict::Fail {
        // The report went to stdout; the blocker and its fix also end stderr as one line.
        let more = |n| format!(" (and {n} more, listed above)");
        return Err(enroll::not_ready(report, more).into());
    }
    Ok(ExitCode::SUCCESS)
}

fn devices(server: &AdbServer, json: bool) -> Result<ExitCode, Failure> {
    let list = server.devices()?;
    let rows: Vec<lifecycle::DeviceRow> = std::thread::scope(|s| {
        let hs: Vec<_> = list
            .iter()
            .map(|e| {
                s.spawn(move || {
                    let dev = server.device(e).ok();
                    let dev = dev.as_ref().map(|d| d as &dyn Device);
                    lifecycle::describe(&e.serial, &e.state, e.model.as_deref(), dev)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    if json {
        out::json(&rows);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        out::println("no phones attached (enable USB debugging and plug one in)");
        return Ok(ExitCode::SUCCESS);
    }
    out::println(&format!(
        "{:<22} {:<13} {:<18} {:<8} {:<12} {:<5} ENROLLED",
        "SERIAL", "STATE", "MODEL", "ANDROID", "ABI", "ROOT"
    ));
    let d = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    for r in &rows {
        let enrolled = match r.enrolled {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        out::println(&format!(
            "{:<22} {:<13} {:<18} {:<8} {:<12} {:<5} {enrolled}",
            r.serial,
            r.state,
            d(&r.model),
            d(&r.android),
            d(&r.abi),
            d(&r.root),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_cmd(port: u16, t: &Targets, json: bool) -> Result<ExitCode, Failure> {
    let Targeted { ready, unready } = select(&AdbServer::connect(port)?, t)?;
    type One = (String, Result<Option<bootstrap::status::Status>, Failure>);
    let mut results: Vec<One> = std::thread::scope(|s| {
        let hs: Vec<_> = ready
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let r = lifecycle::require_enrolled(d)
                        .and_then(|()| lifecycle::read_status(d))
                        .map_err(Failure::from);
                    (d.serial().to_owned(), r)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("status thread"))
            .collect()
    });
    results.extend(unready.into_iter().map(|(serial, f)| (serial, Err(f))));
    if !json {
        let lines = results.into_iter().map(|(serial, r)| {
            r.map(|st| match st {
                Some(s) => format!("{serial}: {}", s.render().trim_end()),
                None => format!("{serial}: enrolled, node-runtime has not written a status yet"),
            })
        });
        return summarize(lines.collect());
    }
    // Every phone has an entry, a failing one with its error: a script sees all of them.
    let entries: Vec<serde_json::Value> = results
        .iter()
        .map(|(serial, r)| match r {
            Ok(st) => serde_json::json!({"serial": serial, "ok": true, "status": st}),
            Err(f) => serde_json::json!({"serial": serial, "ok": false, "error": f.message}),
        })
        .collect();
    if t.all {
        out::json(&entries);
    } else {
        out::json(&entries.into_iter().next().unwrap_or_default());
    }
    match worst(results.into_iter().filter_map(|(_, r)| r.err())) {
        None => Ok(ExitCode::SUCCESS),
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

fn man(dir: Option<&Path>) -> Result<(), Failure> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| Failure::usage(format!("writing the man page: {e}")))?;
        out::print(&String::from_utf8_lossy(&buf));
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut pages: Vec<(String, clap::Command)> = cmd
        .get_subcommands()
        .map(|sub| (format!("phonectl-{}", sub.get_name()), sub.clone()))
        .collect();
    pages.push(("phonectl".into(), cmd));
    for (name, c) in pages {
        let path = dir.join(format!("{name}.1"));
        let cannot =
            |e: std::io::Error| Failure::usage(format!("cannot write {}: {e}", path.display()));
        let mut f = std::fs::File::create(&path).map_err(cannot)?;
        clap_mangen::Man::new(c)
            .title(name)
            .render(&mut f)
            .map_err(cannot)?;
    }
    Ok(())
}

fn enroll_cmd(port: u16, args: EnrollArgs) -> Result<ExitCode, Failure> {
    let source = match &args.config {
        Some(path) => ConfigSource::Given(path.clone()),
        None => ConfigSource::Topology(Box::new(
            bootstrap::Topology::resolve(args.topology.as_deref()).map_err(Failure::usage)?,
        )),
    };
    let topology = match &source {
        ConfigSource::Topology(t) => Some(t.as_ref()),
        ConfigSource::Given(_) => None,
    };
    let token = setup::read_token(
        args.token_file.as_deref(),
        args.token_env.as_deref(),
        topology,
    )?;
    let cluster = cluster(&args.ready)?;
    let node_runtime = bootstrap::cache::find_node_runtime(args.node_runtime.as_deref())
        .map_err(Failure::usage)?;
    if !args.rootfs.is_file() {
        return Err(Failure::usage(format!(
            "--rootfs {}: no such file (build one with imagegen/bootstrap, see PHONES.md)",
            args.rootfs.display()
        )));
    }
    let Targeted { ready, unready } = select(&AdbServer::connect(port)?, &args.targets)?;
    if args.name.is_some() && ready.len() + unready.len() > 1 {
        return Err(Failure::usage(
            "--name names one phone: use it with -s SERIAL, not with --all",
        ));
    }
    // Everything that can be wrong on the laptop side is checked before any phone is touched.
    let configs: Vec<bootstrap::NodeConfig> = ready
        .iter()
        .map(|d| setup::config_for(&source, args.name.as_deref(), d.serial()))
        .collect::<Result<_, _>>()?;
    let mode = Mode::detect(args.json);
    let drawer = Drawer::new(mode);
    setup::check_server_cas(&configs, &token, &drawer.sink(None))?;
    let k3s = setup::laptop_k3s(&configs, &drawer.sink(None));
    // Hashed while the phones are probed; each enroll waits for it when it needs it.
    let rootfs_hash = std::sync::OnceLock::new();
    let rootfs_sha256 = || {
        rootfs_hash
            .get_or_init(|| bootstrap::digest::sha256_file(&args.rootfs).map_err(|e| e.to_string()))
            .clone()
    };
    let rootfs_k3s = std::sync::OnceLock::new();
    let k3s_in_rootfs = || {
        rootfs_k3s
            .get_or_init(|| {
                let member = bootstrap::layout::worker::K3S_BIN;
                bootstrap::digest::sha256_in_tarball(&args.rootfs, member)
                    .map_err(|e| e.to_string())
            })
            .clone()
    };
    let results: Vec<Result<enroll::EnrollSummary, Failure>> = std::thread::scope(|s| {
        s.spawn(rootfs_sha256);
        if k3s.is_some() {
            s.spawn(k3s_in_rootfs);
        }
        let hs: Vec<_> = ready
            .iter()
            .zip(configs)
            .map(|(dev, config)| {
                let (drawer, args, token) = (&drawer, &args, token.secret().expose());
                let cluster = &cluster;
                let (node_runtime, rootfs_sha256) = (node_runtime.as_path(), &rootfs_sha256);
                let (k3s, k3s_in_rootfs) = (k3s.as_ref(), &k3s_in_rootfs);
                s.spawn(move || {
                    let spec = EnrollSpec {
                        config,
                        token,
                        rootfs: &args.rootfs,
                        rootfs_sha256,
                        node_runtime,
                        force: args.force,
                        wait: Duration::from_secs(args.ready.wait),
                        cluster: cluster.as_ref(),
                        k3s,
                        k3s_in_rootfs,
                    };
                    let sink = drawer.sink(Some(dev.serial()));
                    let r = enroll::enroll(dev, &spec, &sink).map_err(Failure::from);
                    sink.finish(r.is_ok());
                    r
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("enroll thread"))
            .collect()
    });
    let mut serials: Vec<String> = ready.iter().map(|d| d.serial().to_owned()).collect();
    let mut results = results;
    for (serial, f) in unready {
        serials.push(serial);
        results.push(Err(f));
    }
    if args.json {
        let entries: Vec<_> = results
            .iter()
            .zip(&serials)
            .map(|(r, serial)| match r {
                Ok(s) => serde_json::json!({"serial": serial, "ok": true, "summary": s}),
                Err(f) => serde_json::json!({"serial": serial, "ok": false, "error": f.message}),
            })
            .collect();
        out::json(&entries);
        // The JSON carries everything; stdout stays parseable, the worst failure decides.
        return match worst(results.into_iter().filter_map(Result::err)) {
            None => Ok(ExitCode::SUCCESS),
            Some(f) => Err(f),
        };
    }
    summarize(
        results
            .into_iter()
            .map(|r| r.map(|s| summary_line(&s)))
            .collect(),
    )
}

fn summary_line(s: &enroll::EnrollSummary) -> String {
    let changed = if s.changed.is_empty() {
        "nothing".into()
    } else {
        s.changed.join(", ")
    };
    let warnings = if s.warnings.is_empty() {
        String::new()
    } else {
        format!("; warnings: {}", s.warnings.join("; "))
    };
    format!(
        "{}: enrolled as {} in {:.1} s ({} sent; changed: {changed}{warnings})",
        s.serial,
        s.node,
        s.seconds,
        bootstrap::progress::human_bytes(s.bytes_sent),
    )
}
