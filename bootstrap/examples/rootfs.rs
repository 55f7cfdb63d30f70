//! A small command line over `bootstrap::rootfs`, for the benchmark (scripts/bench.d/bootstrap.sh)
//! and for trying a build by hand.
//!
//! ```text
//! cargo run --release -p bootstrap --example rootfs -- overlay BASE.tar[.gz] NODE_RUNTIME OUT.tar.gz [THREADS]
//! cargo run --release -p bootstrap --example rootfs -- unit    # the systemd unit text
//! cargo run --release -p bootstrap --example rootfs -- build --cache DIR --node-runtime FILE [--base FILE | --mmdebstrap] [--k3s FILE]
//! ```
//! `overlay` runs the transformation once, uncached; `build` is what the tools do (cached by the
//! hash of the inputs) and prints the manifest path and whether it came from the cache.

use bootstrap::progress::{Event, Progress};
use bootstrap::rootfs::{
    Base, BuildRequest, MmdebstrapSpec, OverlayInputs, build, overlay, source_date_epoch,
    uncompressed_base,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

struct Lines;

impl Progress for Lines {
    fn event(&self, event: Event) {
        match event {
            Event::Bytes { .. } => {}
            other => eprintln!("rootfs: {other:?}"),
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  rootfs overlay BASE.tar[.gz] NODE_RUNTIME OUT.tar.gz [THREADS]\n  rootfs build --cache DIR --node-runtime FILE [--base FILE | --mmdebstrap] [--k3s FILE]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("overlay") if args.len() >= 4 => run_overlay(&args[1..]),
        Some("build") => run_build(&args[1..]),
        Some("unit") => {
            print!("{}", bootstrap::unit::SYSTEMD_UNIT);
            Ok(())
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rootfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_overlay(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let base = PathBuf::from(&args[0]);
    let threads = args
        .get(3)
        .map(|t| t.parse())
        .transpose()?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let sha = bootstrap::digest::sha256_file(&base)?;
    let scratch = std::env::temp_dir().join("armfleet-bench-cache");
    let base_tar = uncompressed_base(&base, &sha, &scratch, &Lines)?;
    let out = std::fs::File::create(&args[2])?;
    let mut gz = bootstrap::pgz::ParallelGzWriter::new(std::io::BufWriter::new(out), 6, threads);
    let stats = overlay(
        &base_tar,
        &OverlayInputs {
            node_runtime: PathBuf::from(&args[1]),
            k3s: None,
            epoch: source_date_epoch(),
        },
        &mut gz,
    )?;
    gz.finish()?;
    eprintln!(
        "rootfs: {} base entries, {} added, {} tar bytes, {:.2} s",
        stats.base_entries,
        stats.added.len(),
        stats.tar_bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_build(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut cache = None;
    let mut node_runtime = None;
    let mut base = None;
    let mut k3s = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cache" => cache = it.next().map(PathBuf::from),
            "--node-runtime" => node_runtime = it.next().map(PathBuf::from),
            "--base" => base = it.next().map(|p| Base::Tarball(p.into())),
            "--mmdebstrap" => base = Some(Base::Mmdebstrap(MmdebstrapSpec::default_for_host())),
            "--k3s" => k3s = it.next().map(PathBuf::from),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let (Some(cache), Some(node_runtime), Some(base)) = (cache, node_runtime, base) else {
        return Err("build needs --cache, --node-runtime and --base or --mmdebstrap".into());
    };
    let started = Instant::now();
    let built = build(
        &BuildRequest {
            base,
            overlay: OverlayInputs {
                node_runtime,
                k3s,
                epoch: source_date_epoch(),
            },
            cache,
            refresh_base: false,
        },
        &Lines,
    )?;
    println!(
        "{} {} cached={} {:.3}s",
        built.tarball.display(),
        built.manifest.tarball.sha256,
        built.cached,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
