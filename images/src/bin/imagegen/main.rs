//! imagegen: SD card images that boot a Raspberry Pi straight into the k3s agent. The command
//! line over the `imagegen` library — clap, progress drawing, the confirmation prompt, the
//! summary; the library does the work.

mod cli;

use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, finish, out};
use bootstrap::exit::ExitClass;
use clap::{CommandFactory, FromArgMatches};
use cli::{BuildArgs, BuildCli, Cli, Command};
use imagegen::ImageError;
use imagegen::assets::AssetSource;
use imagegen::board::{BoardError, Origin, Registry};
use imagegen::build::{BuildOptions, BuildSummary, K3sSource};
use imagegen::flash::FlashError;
use std::io::Write;
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
        Command::Build(args) => build(&boards()?, args, quiet),
        Command::Boards { json } => list_boards(&boards()?, json),
        Command::Inspect { image, json } => inspect(&image, json),
        Command::Bmap { image } => make_bmap(&image),
        Command::Flash {
            image,
            device: None,
            ..
        } => list_cards(&image),
        Command::Flash {
            image,
            device: Some(device),
            yes,
            to_file,
            bmap,
            dry_run,
        } => flash(
            &image,
            &device,
            FlashHow {
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
        } => rootfs(
            output.as_deref(),
            base.as_deref(),
            node_runtime.as_deref(),
            json,
            quiet,
        ),
        Command::Cache { prune, json } => cache(prune, json, quiet),
        Command::Completions { shell } => {
            armfleet_cli::manual::print_completions(Cli::command(), "imagegen", shell);
            Ok(())
        }
        Command::Man { dir } => {
            armfleet_cli::manual::man_pages(Cli::command(), "imagegen", dir.as_deref())
        }
    }
}

/// `imagegen BOARD [options]`: the board is looked up first, so an unknown name gets the list
/// of known ones rather than an option error.
fn build(boards: &Registry, args: Vec<String>, quiet: bool) -> Result<(), Failure> {
    let name = args.first().cloned().unwrap_or_default();
    let board = boards.get(&name).map_err(ImageError::from)?.clone();
    let matches = BuildCli::command()
        .about(format!("Image for a {} host.", board.model))
        .after_help(cli::build_examples(&name))
        .try_get_matches_from(
            std::iter::once(format!("imagegen {name}")).chain(args.into_iter().skip(1)),
        )
        .unwrap_or_else(|e| e.exit());
    let a: BuildArgs = BuildCli::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit())
        .args;

    let planned = imagegen::topology::plan_for(&board, a.host.as_deref(), a.topology.as_deref())?;
    let host = planned.plan;
    let quiet = quiet || a.quiet;
    out::set_quiet(quiet);
    let drawer = Drawer::new(Mode::detect(a.json || quiet));
    let progress = drawer.sink(None);
    let size = a
        .size
        .as_deref()
        .map(imagegen::util::parse_size)
        .transpose()?;
    let rootfs = match a.rootfs {
        Some(r) => r,
        None => imagegen::topology::default_rootfs(a.node_runtime.as_deref(), &progress)?,
    };
    let mut token_note = None;
    let token = match &a.token_file {
        Some(p) => Some(read_token(p)?),
        None => {
            if let Some(e) = planned.token_error {
                return Err(Failure::usage(e));
            }
            token_note = planned.token_note;
            planned.token
        }
    };
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.img", host.name)));
    let opts = BuildOptions {
        board,
        host,
        output,
        size,
        rootfs,
        assets: match a.boot_assets {
            Some(d) => AssetSource::Dir(d),
            None => AssetSource::default_apt(),
        },
        k3s: a.k3s,
        token,
        check_ca: !a.no_ca_check,
        epoch: bootstrap::rootfs::source_date_epoch(),
        tmp_dir: None,
    };
    let built = imagegen::build::build(&opts, &progress);
    progress.finish(built.is_ok());
    let s = built?;
    if a.json {
        out::json(&s);
    } else if !quiet {
        out::print(&summary(&opts.host.name, &s, token_note));
    }
    Ok(())
}

/// What a build made, for a person: where the image is, how k3s and the token get on the node.
fn summary(host: &str, s: &BuildSummary, token_note: Option<String>) -> String {
    let mut out = format!(
        "image:    {}\nbmap:     {}\nhost:     {host} (root PARTUUID={}, kernel {})\n",
        s.image.display(),
        s.bmap.display(),
        s.root_partuuid,
        s.kernel_version
    );
    out.push_str(&format!(
        "k3s:      {}\n",
        match &s.k3s {
            K3sSource::Given(p) => format!("baked in from {}", p.display()),
            K3sSource::InRootfs => "baked in (from the rootfs)".into(),
            K3sSource::Downloaded(u) => format!("baked in (pinned download from {u})"),
            K3sSource::FirstBoot(u) => format!("not baked in: node-runtime fetches it on first boot from {u}"),
            K3sSource::Missing => "none: no binary and no pinned URL; node-runtime cannot start k3s until one is installed".into(),
        }
    ));
    if s.token_baked {
        out.push_str("token:    baked in (/etc/armfleet/token, mode 0600)\n");
    } else {
        out.push_str(&format!(
            "token:    none baked in: after flashing, copy the join token to the card's boot partition as `{}`;\n          node-runtime moves it into place (mode 0600) on first boot and deletes it there\n",
            s.token_drop
        ));
    }
    if let Some(n) = token_note.filter(|_| !s.token_baked) {
        out.push_str(&format!("note:     {n}\n"));
    }
    for n in &s.notes {
        out.push_str(&format!("note:     {n}\n"));
    }
    out.push_str(&format!(
        "{}: sha256 {}  size {} bytes ({} MiB, {} MiB of data)\n",
        s.image.display(),
        s.sha256,
        s.size,
        s.size >> 20,
        s.mapped_bytes >> 20
    ));
    let image = shell_word(&s.image.display().to_string());
    out.push_str(&format!(
        "next:     imagegen flash {image} /dev/sdX   (`imagegen flash {image}` lists the cards)\n"
    ));
    out
}

/// `word` as one shell word, quoted only when it has to be (next-step lines are copied as is).
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn read_token(p: &Path) -> Result<Vec<u8>, Failure> {
    let data = std::fs::read(p).map_err(|e| {
        Failure::usage(format!(
            "cannot read the token file {}: {e}: check the path given to --token-file",
            p.display()
        ))
    })?;
    let t = String::from_utf8_lossy(&data).trim().to_owned();
    if t.is_empty() || t.contains('\n') || t.contains(' ') {
        return Err(Failure::usage(format!(
            "{}: expected one line holding the k3s join token",
            p.display()
        )));
    }
    let mut v = t.into_bytes();
    v.push(b'\n');
    Ok(v)
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

/// How `imagegen flash` was asked to write.
struct FlashHow {
    yes: bool,
    to_file: bool,
    dry_run: bool,
    quiet: bool,
}

/// `imagegen flash IMG` with no card: the removable disks it would accept, then an error line
/// saying to pick one (nothing is written without a named target).
fn list_cards(image: &Path) -> Result<(), Failure> {
    let cards = imagegen::flash::removable_disks();
    if cards.is_empty() {
        return Err(Failure::usage(format!(
            "no removable disk found (SD card readers, USB sticks): insert the card, then `imagegen flash {} /dev/sdX`; to write a file use `--to-file FILE`",
            image.display()
        )));
    }
    out::println(&format!(
        "{:<16} {:>9}  {:<5} {:<28} MOUNTED",
        "DISK", "SIZE", "BUS", "MODEL"
    ));
    for c in &cards {
        out::println(&format!(
            "{:<16} {:>9}  {:<5} {:<28} {}",
            c.path.display(),
            bootstrap::progress::human_bytes(c.size),
            c.bus,
            if c.model.is_empty() { "-" } else { &c.model },
            if c.mounted.is_empty() {
                "no".to_owned()
            } else {
                format!("{} (unmount first)", c.mounted.join(", "))
            }
        ));
    }
    Err(Failure::usage(format!(
        "no card given: run `imagegen flash {} DISK` with one of the disks above",
        image.display()
    )))
}

fn flash(image: &Path, device: &Path, how: FlashHow, bmap: Option<PathBuf>) -> Result<(), Failure> {
    let FlashHow {
        yes,
        to_file,
        dry_run,
        quiet,
    } = how;
    let bmap_path = bmap.unwrap_or_else(|| PathBuf::from(format!("{}.bmap", image.display())));
    let xml = std::fs::read_to_string(&bmap_path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the bmap {}: {e}: it is made next to the image by imagegen; pass --bmap FILE",
            bmap_path.display()
        ))
    })?;
    let map = imagegen::bmap::Bmap::parse(&xml, &bmap_path)?;
    let kind = if to_file {
        imagegen::flash::TargetKind::File
    } else {
        imagegen::flash::TargetKind::Device
    };
    let sources = imagegen::flash::Sources {
        image,
        bmap: &bmap_path,
    };
    let target = imagegen::flash::preflight(device, kind, sources, map.image_size)?;
    imagegen::flash::check_image_matches(image, &map)?;
    let what = {
        if target.block_device {
            let model = if target.model.is_empty() {
                &target.kernel_name
            } else {
                &target.model
            };
            format!(
                "{} ({model}, {} MiB)",
                target.path.display(),
                target.size >> 20
            )
        } else {
            format!("the file {}", target.path.display())
        }
    };
    if dry_run {
        out::println(&format!(
            "dry run: would write {} ({} bytes in {} ranges of {} bytes) to {what}, then read them back; nothing written",
            image.display(),
            map.mapped_bytes(),
            map.ranges.len(),
            map.image_size
        ));
        return Ok(());
    }
    if !yes {
        eprint!(
            "Write {} ({} MiB of data) to {what}? Everything on it is lost. [y/N] ",
            image.display(),
            map.mapped_bytes() >> 20
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).ok();
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(FlashError::Cancelled.into());
        }
    }
    let drawer = Drawer::new(Mode::detect(quiet));
    let progress = drawer.sink(None);
    let started = std::time::Instant::now();
    let flashed = imagegen::flash::flash(image, &map, &target, &progress);
    progress.finish(flashed.is_ok());
    let r = flashed?;
    if quiet {
        return Ok(());
    }
    out::println(&format!(
        "flashed {} to {}: {} bytes written in {} ranges ({:.1} s), read back and verified",
        image.display(),
        device.display(),
        r.bytes_written,
        r.ranges,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `imagegen rootfs`: the node rootfs built or found in the cache, optionally copied out.
fn rootfs(
    output: Option<&Path>,
    base: Option<&Path>,
    node_runtime: Option<&Path>,
    json: bool,
    quiet: bool,
) -> Result<(), Failure> {
    let drawer = Drawer::new(Mode::detect(json || quiet));
    let progress = drawer.sink(None);
    let built = bootstrap::rootfs::default_node_rootfs(base, node_runtime, &progress);
    progress.finish(built.is_ok());
    let built = built.map_err(|e| match e {
        bootstrap::rootfs::RootfsError::NothingToBuildFrom { .. }
        | bootstrap::rootfs::RootfsError::BadBase { .. }
        | bootstrap::rootfs::RootfsError::Input { .. } => Failure::usage(e),
        e => Failure::new(ExitClass::Device, e),
    })?;
    let path = match output {
        Some(out) => {
            imagegen::util::copy_atomic(&built.tarball, out)?;
            out.to_owned()
        }
        None => built.tarball.clone(),
    };
    if json {
        #[derive(serde::Serialize)]
        struct Rootfs<'a> {
            tarball: &'a Path,
            cached: bool,
            manifest: &'a bootstrap::rootfs::Manifest,
        }
        out::json(&Rootfs {
            tarball: &path,
            cached: built.cached,
            manifest: &built.manifest,
        });
    } else if !quiet {
        out::println(&format!(
            "rootfs:   {} ({})\nsha256:   {}\nsize:     {}\ninputs:   {}; node-runtime {}\nnext:     phonectl enroll   (or `imagegen BOARD` for a Pi; both reuse it)",
            path.display(),
            if built.cached {
                "from the cache"
            } else {
                "built"
            },
            built.manifest.tarball.sha256,
            bootstrap::progress::human_bytes(built.manifest.tarball.size),
            built.manifest.inputs.base_origin,
            &built.manifest.inputs.node_runtime.sha256[..12],
        ));
    }
    Ok(())
}

/// `imagegen cache [--prune]`: what the cache holds and how big it is.
fn cache(prune: bool, json: bool, quiet: bool) -> Result<(), Failure> {
    let root = bootstrap::cache::cache_root().map_err(Failure::usage)?;
    if prune {
        let pruned = bootstrap::cache_inventory::prune(&root);
        if json {
            out::json(&pruned);
        } else if !quiet {
            for e in &pruned.removed {
                out::println(&format!(
                    "removed  {:>9}  {}  ({})",
                    bootstrap::progress::human_bytes(e.bytes),
                    e.path.display(),
                    e.about
                ));
            }
            for (p, why) in &pruned.skipped {
                out::println(&format!("kept               {}  ({why})", p.display()));
            }
            out::println(&format!(
                "freed {} in {}",
                bootstrap::progress::human_bytes(pruned.freed_bytes),
                root.display()
            ));
        }
        return Ok(());
    }
    let entries = bootstrap::cache_inventory::inventory(&root);
    if json {
        out::json(&entries);
        return Ok(());
    }
    if quiet {
        return Ok(());
    }
    if entries.is_empty() {
        out::println(&format!("{}: empty", root.display()));
        return Ok(());
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let freed: u64 = entries
        .iter()
        .filter(|e| !e.kept_by_prune)
        .map(|e| e.bytes)
        .sum();
    out::println(&format!(
        "{}: {} in {} entries ({} would go with --prune)",
        root.display(),
        bootstrap::progress::human_bytes(total),
        entries.len(),
        bootstrap::progress::human_bytes(freed)
    ));
    for e in &entries {
        let name = e.path.strip_prefix(&root).unwrap_or(&e.path);
        out::println(&format!(
            "{:<11} {:>9}  {}{}  {}",
            e.kind,
            bootstrap::progress::human_bytes(e.bytes),
            name.display(),
            if e.kept_by_prune { "" } else { " *" },
            e.about
        ));
    }
    Ok(())
}
