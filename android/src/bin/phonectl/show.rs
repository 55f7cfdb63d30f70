//! The commands that report rather than change: doctor, devices, status.

use crate::cli::Targets;
use crate::{Targeted, select, summarize};
use armfleet_cli::{Failure, out, worst};
use phonectl::adb::AdbServer;
use phonectl::device::Device;
use phonectl::doctor::{self, Verdict};
use phonectl::{enroll, lifecycle};
use std::process::ExitCode;

/// `phonectl doctor`: one phone's report, its blocker as the error line.
pub(crate) fn doctor(port: u16, serial: Option<&str>, json: bool) -> Result<ExitCode, Failure> {
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

/// `phonectl devices`: every attached phone, probed at once.
pub(crate) fn devices(server: &AdbServer, json: bool) -> Result<ExitCode, Failure> {
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

/// `phonectl status`: the status record each targeted phone's supervisor wrote.
pub(crate) fn status_cmd(port: u16, t: &Targets, json: bool) -> Result<ExitCode, Failure> {
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
