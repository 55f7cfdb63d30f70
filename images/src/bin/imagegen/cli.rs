//! imagegen's command line: the clap definitions, apart from the glue in `main.rs`. A build is
//! `imagegen BOARD [options]` for any board of the registry, so the boards are not subcommands
//! written here: the first word that is no command is a board name.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Build and flash Raspberry Pi SD card images that boot into the k3s agent.
#[derive(Parser)]
#[command(
    name = "imagegen",
    version,
    override_usage = "imagegen BOARD [OPTIONS]\n       imagegen <COMMAND>"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `imagegen --help` after the commands: the boards there are (`names`) and examples.
pub fn after_help(names: &str) -> String {
    format!(
        "Boards: {names}
  `imagegen BOARD` builds the image of the first host of that board in the topology;
  `imagegen BOARD --help` shows the build options, `imagegen boards` what each board needs.
  A board is a file: images/boards/NAME.toml, or one of your own in $ARMFLEET_BOARDS_DIR
  (default ~/.config/armfleet/boards).

Examples:
  imagegen rpi4                          # image for the first rpi4 host of the topology
  imagegen rpi3a --host rpi3a-ctl -o ctl.img --token-file token
  imagegen boards
  imagegen inspect rpi4-2.img
  imagegen flash rpi4-2.img /dev/sdb"
    )
}

/// A build's command line, `imagegen BOARD [options]`, parsed after the board name.
#[derive(Parser)]
pub struct BuildCli {
    #[command(flatten)]
    pub args: BuildArgs,
}

/// `imagegen BOARD --help` after the options.
pub fn build_examples(board: &str) -> String {
    format!(
        "Examples:
  imagegen {board}
  imagegen {board} --host HOST --size 4G -o /tmp/HOST.img
  imagegen {board} --rootfs rootfs.tar.gz --boot-assets ./debs --token-file ./token
  imagegen {board} --token-file ./token --no-ca-check   # offline: skip the server CA check"
    )
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Host from the topology (default: the first host of this board).
    #[arg(long)]
    pub host: Option<String>,
    /// Topology file (default: $ARMFLEET_TOPOLOGY, else the embedded lab topology).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Output image (default: HOST.img); the bmap is written next to it as FILE.bmap.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Image size, e.g. 2G or 1536M (default: just enough; the root grows to the card on first boot).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// A k3s arm64 binary to bake in (default: the rootfs's, else the pinned download, else first boot).
    #[arg(long, value_name = "PATH")]
    pub k3s: Option<PathBuf>,
    /// A directory of Debian .deb files to take the boot assets from instead of apt.
    #[arg(long, value_name = "DIR")]
    pub boot_assets: Option<PathBuf>,
    /// The node rootfs tarball (default: the node rootfs built from Debian with mmdebstrap and
    /// node-runtime, cached by the hash of its inputs: minutes the first time, then a hash check).
    #[arg(long, value_name = "TAR.GZ")]
    pub rootfs: Option<PathBuf>,
    /// The static aarch64 node-runtime for the default rootfs (default: next to imagegen, the
    /// cross-build output of this checkout, or the cache).
    #[arg(long, value_name = "PATH", env = "ARMFLEET_NODE_RUNTIME")]
    pub node_runtime: Option<PathBuf>,
    /// File holding the k3s join token, baked in with mode 0600 (else drop it on the boot partition later).
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Do not contact the k3s server to check that its CA matches the hash in a K10 token
    /// (offline builds; the node still checks it when it joins).
    #[arg(long)]
    pub no_ca_check: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// The boards, built in and yours, and what each needs.
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
    /// An image for BOARD (any name `imagegen boards` lists): `imagegen BOARD [options]`.
    #[command(external_subcommand)]
    Build(Vec<String>),
}
