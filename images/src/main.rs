//! imagegen: SD card images that boot a Raspberry Pi straight into the k3s agent.
//! Thin binary: parses the command line, draws progress, maps errors to exit codes; the
//! library does the work.

use anyhow::Context;
use bootstrap::exit::ExitClass;
use bootstrap::progress::{Event, Progress};
use clap::{Parser, Subcommand};
use imagegen::ImageError;
use imagegen::assets::AssetSource;
use imagegen::board::Board;
use imagegen::build::{BuildOptions, DEFAULT_EPOCH, K3sSource};
use imagegen::flash::FlashError;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

/// Build and flash Raspberry Pi SD card images that boot into the k3s agent.
#[derive(Parser)]
#[command(
    name = "imagegen",
    version,
    after_help = "Examples:\n  imagegen rpi4                          # image for the first rpi4 host of the topology\n  imagegen rpi3a --host rpi3a-ctl -o ctl.img --token-file token\n  imagegen boards\n  imagegen inspect rpi4-2.img\n  imagegen flash rpi4-2.img /dev/sdb"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// Host from the topology (default: the first host of this board).
    #[arg(long)]
    host: Option<String>,
    /// Topology file (default: $ARMFLEET_TOPOLOGY, else the embedded lab topology).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Output image (default: HOST.img); the bmap is written next to it as FILE.bmap.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Image size, e.g. 2G or 1536M (default: just enough; the root grows to the card on first boot).
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// A k3s arm64 binary to bake in (default: the rootfs's, else the pinned download, else first boot).
    #[arg(long, value_name = "PATH")]
    k3s: Option<PathBuf>,
    /// A directory of Debian .deb files to take the boot assets from instead of apt.
    #[arg(long, value_name = "DIR")]
    boot_assets: Option<PathBuf>,
    /// The node rootfs tarball (default: the node rootfs built from Debian with mmdebstrap and
    /// node-runtime, cached by the hash of its inputs: minutes the first time, then a hash check).
    #[arg(long, value_name = "TAR.GZ")]
    rootfs: Option<PathBuf>,
    /// The static aarch64 node-runtime for the default rootfs (default: next to imagegen, the
    /// cross-build output of this checkout, or the cache).
    #[arg(long, value_name = "PATH", env = "ARMFLEET_NODE_RUNTIME")]
    node_runtime: Option<PathBuf>,
    /// File holding the k3s join token, baked in with mode 0600 (else drop it on the boot partition later).
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
    /// Do not contact the k3s server to check that its CA matches the hash in a K10 token
    /// (offline builds; the node still checks it when it joins).
    #[arg(long)]
    no_ca_check: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Image for a Raspberry Pi 4 host.
    #[command(
        after_help = "Examples:\n  imagegen rpi4\n  imagegen rpi4 --host rpi4-2 --size 4G -o /tmp/rpi4-2.img\n  imagegen rpi4 --rootfs rootfs.tar.gz --boot-assets ./debs --token-file ./token\n  imagegen rpi4 --token-file ./token --no-ca-check   # offline: skip the server CA check"
    )]
    Rpi4(BuildArgs),
    /// Image for a Raspberry Pi 3A+ host (Wi-Fi only).
    #[command(
        after_help = "Examples:\n  imagegen rpi3a\n  imagegen rpi3a --host rpi3a-ctl --token-file ./token"
    )]
    Rpi3a(BuildArgs),
    /// The board profiles and what each needs.
    #[command(after_help = "Examples:\n  imagegen boards\n  imagegen boards --json")]
    Boards {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Partitions, boot files, config.txt, cmdline.txt and node.toml of an image (token redacted).
    #[command(
        after_help = "Examples:\n  imagegen inspect rpi4-2.img\n  imagegen inspect rpi4-2.img --json"
    )]
    Inspect {
        /// The image.
        image: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write IMG.bmap for any sparse image (what `flash` needs).
    #[command(after_help = "Example:\n  imagegen bmap custom.img      # writes custom.img.bmap")]
    Bmap {
        /// The image.
        image: PathBuf,
    },
    /// Image for another board profile (see `imagegen boards`).
    #[command(external_subcommand)]
    Other(Vec<String>),
    /// Write an image to a card: only the mapped blocks of its .bmap, then verify them.
    #[command(
        after_help = "Examples:\n  imagegen flash rpi4-2.img /dev/sdb\n  imagegen flash rpi4-2.img /dev/mmcblk0 --yes\n  imagegen flash rpi4-2.img copy.img --to-file      # to a file"
    )]
    Flash {
        /// The image (its bmap is IMG.bmap).
        image: PathBuf,
        /// The card (whole disk, e.g. /dev/sdb), or a file with --to-file.
        device: PathBuf,
        /// Do not ask before writing.
        #[arg(long)]
        yes: bool,
        /// The target is a file to create or overwrite, not a card.
        #[arg(long)]
        to_file: bool,
        /// The bmap (default: IMG.bmap).
        #[arg(long, value_name = "FILE")]
        bmap: Option<PathBuf>,
    },
}

/// Draws progress events: bars on a terminal, nothing otherwise.
struct Bars {
    multi: MultiProgress,
    current: Mutex<Option<ProgressBar>>,
    tty: bool,
}

impl Bars {
    fn new() -> Bars {
        let tty = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Bars {
            multi,
            current: Mutex::new(None),
            tty,
        }
    }
}

impl Progress for Bars {
    fn event(&self, event: Event) {
        let mut cur = self.current.lock().unwrap();
        match event {
            Event::StepStarted { step, total } => {
                if let Some(b) = cur.take() {
                    b.finish_and_clear();
                }
                let bar = match total {
                    Some(t) => {
                        let b = self.multi.add(ProgressBar::new(t));
                        b.set_style(ProgressStyle::with_template("{msg:24} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").unwrap().progress_chars("=> "));
                        b
                    }
                    None => {
                        let b = self.multi.add(ProgressBar::new_spinner());
                        b.enable_steady_tick(std::time::Duration::from_millis(120));
                        b
                    }
                };
                bar.set_message(step);
                *cur = Some(bar);
            }
            Event::Bytes { done, .. } => {
                if let Some(b) = cur.as_ref() {
                    b.set_position(done);
                }
            }
            Event::StepFinished { step, detail } => {
                if let Some(b) = cur.take() {
                    b.finish_and_clear();
                }
                if self.tty {
                    let _ = self.multi.println(format!("✓ {step}: {detail}"));
                }
            }
            Event::StepSkipped { step, reason } => {
                if self.tty {
                    let _ = self.multi.println(format!("· {step}: {reason}"));
                }
            }
            Event::Note(n) => {
                self.multi.suspend(|| eprintln!("note: {n}"));
            }
        }
    }
}

enum Failure {
    Image(ImageError),
    Flash(FlashError),
    Other(anyhow::Error, ExitClass),
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        Failure::Image(e)
    }
}
impl From<FlashError> for Failure {
    fn from(e: FlashError) -> Self {
        Failure::Flash(e)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("IMAGEGEN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Rpi4(a) => build("rpi4", a),
        Command::Rpi3a(a) => build("rpi3a", a),
        Command::Other(args) => other_board(args),
        Command::Bmap { image } => make_bmap(image),
        Command::Boards { json } => boards(json),
        Command::Inspect { image, json } => inspect(image, json),
        Command::Flash {
            image,
            device,
            yes,
            to_file,
            bmap,
        } => flash(image, device, yes, to_file, bmap),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (msg, class) = match f {
                Failure::Image(e) => (e.to_string(), e.class()),
                Failure::Flash(e) => (e.to_string(), e.class()),
                Failure::Other(e, c) => (format!("{e:#}"), c),
            };
            eprintln!("imagegen: error: {msg}");
            ExitCode::from(class.code())
        }
    }
}

/// Arguments of a build for a board named on the command line.
#[derive(Parser)]
struct OtherBoard {
    #[command(flatten)]
    args: BuildArgs,
}

fn other_board(args: Vec<String>) -> Result<(), Failure> {
    let name = args.first().cloned().unwrap_or_default();
    // Unknown names fail here with the list of known boards.
    Board::by_name(&name)?;
    let parsed = OtherBoard::try_parse_from(
        std::iter::once(format!("imagegen {name}")).chain(args.into_iter().skip(1)),
    )
    .unwrap_or_else(|e| e.exit());
    build(&name, parsed.args)
}

fn make_bmap(image: PathBuf) -> Result<(), Failure> {
    let map = imagegen::bmap::Bmap::from_image(&image)?;
    let path = PathBuf::from(format!("{}.bmap", image.display()));
    std::fs::write(&path, map.to_xml())
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(|e| Failure::Other(e, ExitClass::Device))?;
    print_out(&format!(
        "{}: {} of {} bytes mapped in {} ranges\n",
        path.display(),
        map.mapped_bytes(),
        map.image_size,
        map.ranges.len()
    ));
    Ok(())
}

fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`imagegen inspect x | head`) is not an error.
    let _ = out.write_all(text.as_bytes());
}

fn boards(json: bool) -> Result<(), Failure> {
    let boards = Board::builtin();
    if json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&boards).unwrap()
        ));
        return Ok(());
    }
    let mut s = String::new();
    for b in &boards {
        s.push_str(&format!(
            "{} — {}\n  firmware (raspi-firmware): {}\n  device tree (linux-image-arm64): {}\n  config.txt: {}\n  consoles: {}\n  network: {}\n  partitions: boot {} MiB FAT32, root ≥ {} MiB ext4 (grows to the card)\n",
            b.name,
            b.model,
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
    print_out(&s);
    Ok(())
}

fn inspect(image: PathBuf, json: bool) -> Result<(), Failure> {
    let i = imagegen::inspect::inspect(&image)?;
    if json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&i).unwrap()));
    } else {
        print_out(&i.to_text());
    }
    Ok(())
}

fn build(board_name: &str, a: BuildArgs) -> Result<(), Failure> {
    let board = Board::by_name(board_name)?;
    let planned = imagegen::topology::plan_for(&board, a.host.as_deref(), a.topology.as_deref())?;
    let host = planned.plan;
    let bars = Bars::new();
    let size = a
        .size
        .as_deref()
        .map(imagegen::util::parse_size)
        .transpose()?;
    let rootfs = match a.rootfs {
        Some(r) => r,
        None => imagegen::topology::default_rootfs(a.node_runtime.as_deref(), &bars)?,
    };
    let mut token_note = None;
    let token = match &a.token_file {
        Some(p) => Some(read_token(p)?),
        None => {
            if let Some(e) = planned.token_error {
                return Err(Failure::Other(anyhow::anyhow!(e), ExitClass::Usage));
            }
            token_note = planned.token_note;
            planned.token
        }
    };
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.img", host.name)));
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_EPOCH);
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
        epoch,
        tmp_dir: None,
    };
    let s = imagegen::build::build(&opts, &bars)?;
    if a.json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&s).unwrap()));
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!(
        "image:    {}\nbmap:     {}\n",
        s.image.display(),
        s.bmap.display()
    ));
    out.push_str(&format!(
        "host:     {} (root PARTUUID={}, kernel {})\n",
        opts.host.name, s.root_partuuid, s.kernel_version
    ));
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
    print_out(&out);
    Ok(())
}

fn read_token(p: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let data = std::fs::read(p)
        .with_context(|| {
            format!(
                "cannot read the token file {}: check the path given to --token-file",
                p.display()
            )
        })
        .map_err(|e| Failure::Other(e, ExitClass::Usage))?;
    let t = String::from_utf8_lossy(&data).trim().to_owned();
    if t.is_empty() || t.contains('\n') || t.contains(' ') {
        return Err(Failure::Other(
            anyhow::anyhow!(
                "{}: expected one line holding the k3s join token",
                p.display()
            ),
            ExitClass::Usage,
        ));
    }
    let mut v = t.into_bytes();
    v.push(b'\n');
    Ok(v)
}

fn flash(
    image: PathBuf,
    device: PathBuf,
    yes: bool,
    to_file: bool,
    bmap: Option<PathBuf>,
) -> Result<(), Failure> {
    let bmap_path = bmap.unwrap_or_else(|| PathBuf::from(format!("{}.bmap", image.display())));
    let xml = std::fs::read_to_string(&bmap_path).map_err(|e| {
        Failure::Other(
            anyhow::anyhow!("cannot read the bmap {}: {e}: it is made next to the image by imagegen; pass --bmap FILE", bmap_path.display()),
            ExitClass::Usage,
        )
    })?;
    let map = imagegen::bmap::Bmap::parse(&xml, &bmap_path)?;
    let kind = if to_file {
        imagegen::flash::TargetKind::File
    } else {
        imagegen::flash::TargetKind::Device
    };
    let sources = imagegen::flash::Sources {
        image: &image,
        bmap: &bmap_path,
    };
    let target = imagegen::flash::preflight(&device, kind, sources, map.image_size)?;
    if !yes {
        let what = if target.block_device {
            format!(
                "{} ({}, {} MiB)",
                target.path.display(),
                if target.model.is_empty() {
                    &target.kernel_name
                } else {
                    &target.model
                },
                target.size >> 20
            )
        } else {
            format!("the file {}", target.path.display())
        };
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
    let bars = Bars::new();
    let started = std::time::Instant::now();
    let r = imagegen::flash::flash(&image, &map, &target, &bars)?;
    print_out(&format!(
        "flashed {} to {}: {} bytes written in {} ranges ({:.1} s), read back and verified\n",
        image.display(),
        device.display(),
        r.bytes_written,
        r.ranges,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
