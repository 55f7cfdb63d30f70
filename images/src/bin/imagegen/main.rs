//! imagegen: SD card images that boot a Raspberry Pi straight into the k3s agent. The command
//! line over the `imagegen` library — clap, progress drawing, the confirmation prompt, the
//! summary; the library does the work.

mod building;
mod caching;
mod cli;
mod flashing;

use armfleet_cli::{Failure, finish, out};
use bootstrap::exit::ExitClass;
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use imagegen::ImageError;
use imagegen::board::{BoardError, Origin, Registry};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    init_logging();
    // The boards are read first: `imagegen --help` lists them. A broken user board file stops
    // only the commands that need the boards, with its own error.
    let boards = Registry::load();
    let names = match &boards {
        Ok(r) => r.names().join(", "),
        Err(_) => "see `imagegen boards`".into(),
    };
    let matches = Cli::command()
        .after_help(cli::after_help(&names))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    out::set_quiet(cli.quiet);
    finish(
        "imagegen",
        run(cli.command, cli.quiet, boards).map(|()| ExitCode::SUCCESS),
    )
}

/// The shared log set-up (`ARMFLEET_LOG`); `IMAGEGEN_LOG`, the level's older name, still sets it
/// when `ARMFLEET_LOG` does not.
fn init_logging() {
    let older = std::env::var("IMAGEGEN_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    armfleet_cli::logging::init_with_default(
        older.unwrap_or(tracing::level_filters::LevelFilter::WARN),
    );
}

fn run(command: Command, quiet: bool, boards: Result<Registry, BoardError>) -> Result<(), Failure> {
    let boards = || boards.map_err(ImageError::from);
    match command {
        Command::Build(args) => building::build(&boards()?, args, quiet),
        Command::Boards { json } => list_boards(&boards()?, json),
        Command::Inspect { image, json } => inspect(&image, json),
        Command::Bmap { image } => make_bmap(&image),
        Command::Flash {
            image,
            device: None,
            ..
        } => flashing::list_cards(&image),
        Command::Flash {
            image,
            device: Some(device),
            yes,
            to_file,
            bmap,
            dry_run,
        } => flashing::flash(
            &image,
            &device,
            flashing::FlashHow {
                yes,
                to_file,
                dry_run,
                quiet,
            },
            bmap,
        ),
        Command::Rootfs {
            output,
            base,
            node_runtime,
            json,
        } => caching::rootfs(
            output.as_deref(),
            base.as_deref(),
            node_runtime.as_deref(),
            json,
            quiet,
        ),
        Command::Cache { prune, json } => caching::cache(prune, json, quiet),
        Command::Completions { shell } => {
            armfleet_cli::manual::print_completions(Cli::command(), "imagegen", shell);
            Ok(())
        }
        Command::Man { dir } => {
            armfleet_cli::manual::man_pages(Cli::command(), "imagegen", dir.as_deref())
        }
    }
}

/// `imagegen boards`: every board with what it needs, and whether it is built in or yours.
fn list_boards(boards: &Registry, json: bool) -> Result<(), Failure> {
    if json {
        #[derive(serde::Serialize)]
        struct Listed<'a> {
            #[serde(flatten)]
            board: &'a imagegen::board::Board,
            builtin: bool,
            file: String,
        }
        let listed: Vec<Listed> = boards
            .profiles()
            .iter()
            .map(|p| Listed {
                board: &p.board,
                builtin: matches!(p.origin, Origin::BuiltIn(_)),
                file: p.origin.to_string(),
            })
            .collect();
        out::json(&listed);
        return Ok(());
    }
    let mut s = String::new();
    for p in boards.profiles() {
        let b = &p.board;
        let origin = match &p.origin {
            Origin::BuiltIn(_) => "built in",
            Origin::User(_) => "user board",
        };
        s.push_str(&format!(
            "{} — {} ({origin}: {})\n  firmware (raspi-firmware): {}\n  device tree (linux-image-arm64): {}\n  config.txt: {}\n  consoles: {}\n  network: {}\n  partitions: boot {} MiB FAT32, root ≥ {} MiB ext4 (grows to the card)\n",
            b.name,
            b.model,
            p.origin,
            b.firmware.join(", "),
            b.dtb,
            b.config_txt.join(", "),
            b.consoles.join(", "),
            match (b.ethernet, b.wifi) {
                (true, true) => "ethernet, wi-fi",
                (true, false) => "ethernet",
                _ => "wi-fi only (credentials baked into the image)",
            },
            b.partitions.boot_mib,
            b.partitions.root_min_mib
        ));
    }
    out::print(&s);
    Ok(())
}

fn inspect(image: &Path, json: bool) -> Result<(), Failure> {
    let i = imagegen::inspect::inspect(image)?;
    if json {
        out::json(&i);
    } else {
        out::print(&i.to_text());
    }
    Ok(())
}

fn make_bmap(image: &Path) -> Result<(), Failure> {
    let map = imagegen::bmap::Bmap::from_image(image)?;
    let path = PathBuf::from(format!("{}.bmap", image.display()));
    std::fs::write(&path, map.to_xml()).map_err(|e| {
        Failure::new(
            ExitClass::Device,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    out::println(&format!(
        "{}: {} of {} bytes mapped in {} ranges",
        path.display(),
        map.mapped_bytes(),
        map.image_size,
        map.ranges.len()
    ));
    Ok(())
}
