//! `phonectl enroll`: everything it needs resolved on the laptop first, then one thread per phone.

use crate::cli::EnrollArgs;
use crate::{Targeted, cluster, select, summarize};
use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, out, worst};
use phonectl::adb::AdbServer;
use phonectl::device::Device;
use phonectl::enroll::{self, EnrollSpec};
use phonectl::setup::{self, ConfigSource};
use std::process::ExitCode;
use std::time::Duration;

/// `phonectl enroll`: the config from the topology or a file, the token, the node-runtime and
/// rootfs found, then each phone planned and brought to that state.
pub(crate) fn enroll_cmd(port: u16, args: EnrollArgs) -> Result<ExitCode, Failure> {
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
    // A token every phone shares is checked before any phone is looked at.
    let shared_token = args.token_file.is_some()
        || args.token_env.is_some()
        || topology.is_none_or(|t| t.phones().iter().all(|p| p.token.is_none()));
    if shared_token {
        setup::read_token(
            args.token_file.as_deref(),
            args.token_env.as_deref(),
            topology,
            "",
        )?;
    }
    let cluster = cluster(&args.ready)?;
    let node_runtime = bootstrap::cache::find_node_runtime(args.node_runtime.as_deref())
        .map_err(Failure::usage)?;
    if let Some(rootfs) = &args.rootfs
        && !rootfs.is_file()
    {
        return Err(Failure::usage(format!(
            "--rootfs {}: no such file: leave --rootfs out to use the cached node rootfs, or make the file with `imagegen rootfs -o {}`",
            rootfs.display(),
            rootfs.display()
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
    // Each phone's own token when the topology gives it one (revocable alone), else the cluster's.
    let tokens: Vec<bootstrap::token::JoinToken> = configs
        .iter()
        .map(|c| {
            setup::read_token(
                args.token_file.as_deref(),
                args.token_env.as_deref(),
                topology,
                &c.node.name,
            )
        })
        .collect::<Result<_, _>>()?;
    let mode = Mode::detect(args.json || out::quiet());
    let drawer = Drawer::new(mode);
    setup::check_server_cas(&configs, &tokens, &drawer.sink(None))?;
    let k3s = setup::laptop_k3s(&configs, &drawer.sink(None));
    // The rootfs: the file given (hashed while the phones are probed; each enroll waits for it
    // when it needs it), or the cached build, whose manifest already holds its hashes.
    let rootfs_hash = std::sync::OnceLock::new();
    let rootfs_k3s = std::sync::OnceLock::new();
    let rootfs = match &args.rootfs {
        Some(path) => path.clone(),
        None => {
            let sink = drawer.sink(None);
            let built = bootstrap::rootfs::default_node_rootfs(None, Some(&node_runtime), &sink);
            sink.finish(built.is_ok());
            let built = built.map_err(|e| {
                Failure::usage(format!(
                    "no node rootfs to send: {e} (or pass --rootfs FILE.tar.gz)"
                ))
            })?;
            let _ = rootfs_hash.set(Ok(built.manifest.tarball.sha256.clone()));
            let _ = rootfs_k3s.set(Ok(built.manifest.inputs.k3s.map(|a| a.sha256)));
            built.tarball
        }
    };
    let rootfs_sha256 = || {
        rootfs_hash
            .get_or_init(|| bootstrap::digest::sha256_file(&rootfs).map_err(|e| e.to_string()))
            .clone()
    };
    let k3s_in_rootfs = || {
        rootfs_k3s
            .get_or_init(|| {
                let member = bootstrap::layout::worker::K3S_BIN;
                bootstrap::digest::sha256_in_tarball(&rootfs, member).map_err(|e| e.to_string())
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
            .zip(&tokens)
            .map(|((dev, config), token)| {
                let (drawer, args, token) = (&drawer, &args, token.secret().expose());
                let rootfs = rootfs.as_path();
                let cluster = &cluster;
                let (node_runtime, rootfs_sha256) = (node_runtime.as_path(), &rootfs_sha256);
                let (k3s, k3s_in_rootfs) = (k3s.as_ref(), &k3s_in_rootfs);
                s.spawn(move || {
                    let spec = EnrollSpec {
                        config,
                        token,
                        rootfs,
                        rootfs_sha256,
                        node_runtime,
                        force: args.force,
                        dry_run: args.dry_run,
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

/// One phone's result line, and the command to run next.
fn summary_line(s: &enroll::EnrollSummary) -> String {
    if let Some(actions) = &s.dry_run {
        let mut out = crate::dry_run_lines(&s.serial, actions);
        if !s.warnings.is_empty() {
            out.push_str(&format!("\n  doctor warnings: {}", s.warnings.join("; ")));
        }
        out.push_str(&format!(
            "\nnext: the same command without --dry-run enrolls {} as {}",
            s.serial, s.node
        ));
        return out;
    }
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
        "{}: enrolled as {} in {:.1} s ({} sent; changed: {changed}{warnings})\nnext: phonectl status -s {}   (and `phonectl logs -s {}` if it is not Ready)",
        s.serial,
        s.node,
        s.seconds,
        bootstrap::progress::human_bytes(s.bytes_sent),
        s.serial,
        s.serial,
    )
}
