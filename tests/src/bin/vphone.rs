//! `vphone`: runs virtual phones until interrupted, for trying phonectl or adb by hand.
//!
//! Examples:
//!   vphone rooted-magisk                 # one phone on a free port
//!   vphone rooted-magisk --port 6001     # then: adb connect 127.0.0.1:6001
//!   vphone unrooted armv7 --port 6001    # two phones, on 6001 and 6002
//!   vphone rooted-magisk --link-rate 38  # host-to-phone bytes at USB 2's 38 MB/s
//!   vphone --list                        # the profiles

use anyhow::Context;
use armfleet_tests::vphone::{PhoneOptions, Profile, VirtualPhone};

const HELP: &str = "vphone: virtual Android phones speaking ADB over TCP on 127.0.0.1

Usage: vphone [--port PORT] [--link-rate MB/s] PROFILE... | vphone --list

Each phone listens on 127.0.0.1 (PORT, PORT+1, ... or free ports outside 5555-5585);
attach one with `adb connect 127.0.0.1:PORT`. Ctrl-C stops the phones and cleans up.
--link-rate limits what each phone receives from the host to that many MB/s, as a USB cable
does (adb push over USB 2 reaches about 38 MB/s); without it, loopback speed.
Must run as root (namespaces, mounts).

Examples:
  vphone rooted-magisk
  vphone rooted-magisk --port 6001
  vphone rooted-magisk --link-rate 38
  vphone unrooted enforcing --port 6001
  vphone --list
";

/// A mistake on the command line (exit 2), as opposed to a phone that cannot start (exit 3).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vphone: error: {e:#}");
            let usage = e.downcast_ref::<Usage>().is_some()
                || e.downcast_ref::<armfleet_tests::vphone::ProfileError>()
                    .is_some();
            std::process::ExitCode::from(if usage { 2 } else { 3 })
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut link_rate: Option<u64> = None;
    let mut profiles = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "--list" => {
                for name in Profile::names() {
                    let p = Profile::load(&name)?;
                    println!("{name:16} {}", p.description);
                }
                return Ok(());
            }
            "--port" => {
                let v = args
                    .next()
                    .ok_or_else(|| Usage("--port needs a number, e.g. --port 6001".into()))?;
                let p: u16 = v
                    .parse()
                    .map_err(|_| Usage(format!("--port {v}: not a port number")))?;
                if (5555..=5585).contains(&p) {
                    return Err(Usage(format!(
                        "--port {p}: the adb server scans 5555-5585 for emulators; pick another port"
                    ))
                    .into());
                }
                port = Some(p);
            }
            "--link-rate" => {
                let v = args.next().ok_or_else(|| {
                    Usage("--link-rate needs MB/s (10^6 bytes), e.g. --link-rate 38".into())
                })?;
                let mb: f64 = v.parse().ok().filter(|r: &f64| *r > 0.0).ok_or_else(|| {
                    Usage(format!("--link-rate {v}: not a positive number of MB/s"))
                })?;
                link_rate = Some((mb * 1e6) as u64);
            }
            s if s.starts_with('-') => {
                return Err(Usage(format!("unknown option {s} (see vphone --help)")).into());
            }
            s => profiles.push(s.to_owned()),
        }
    }
    if profiles.is_empty() {
        return Err(Usage(
            "no profile given: name one, e.g. `vphone rooted-magisk` (see vphone --list)".into(),
        )
        .into());
    }
    for name in &profiles {
        Profile::load(name)?;
    }
    let mut phones = Vec::new();
    for (i, name) in profiles.iter().enumerate() {
        let opts = PhoneOptions {
            port: port.map(|p| p + i as u16),
            link_rate,
            ..PhoneOptions::default()
        };
        let phone = VirtualPhone::start(name, opts);
        println!(
            "{name}: adb connect {} (root dir {})",
            phone.serial(),
            phone.root().display()
        );
        phones.push(phone);
    }
    // Wait for SIGINT/SIGTERM, then drop the phones (teardown).
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    let sig = set.wait().context("wait for a signal")?;
    eprintln!("vphone: {sig}, stopping");
    drop(phones);
    Ok(())
}
