//! imagegen's command line: the clap definitions, apart from the glue in `main.rs`. A build is
//! `imagegen BOARD [options]` for any board of the registry, so the boards are not subcommands
//! written here: the first word that is no command is a board name.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Build and flash Raspberry Pi SD card images that boot into the k3s agent.
#[derive(Parser)]
#[command(
    name = "imagegen",
    version = armfleet_cli::VERSION,
    override_usage = "imagegen BOARD [OPTIONS]\n       imagegen <COMMAND>"
)]
pub struct Cli {
    /// No progress and no summary: only errors (and flash's question, unless --yes).
    #[arg(short, long, global = true)]
    pub quiet: bool,
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
  imagegen flash rpi4-2.img              # lists the cards it would write to
  imagegen flash rpi4-2.img /dev/sdb
  imagegen rootfs -o node-rootfs.tar.gz  # the node rootfs on its own (phones use it too)
  imagegen cache --prune"
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
  imagegen {board} --token-file ./token --no-ca-check   # offline: skip the server CA check{}",
        if board == "rpi4" {
            "\n  imagegen rpi4 --host rpi4-1 --token-file ./token --server-ca ./k3s-ca   # the router and k3s server; registers the nodes' own tokens"
        } else {
            ""
        }
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
    /// The k3s server's CA (the directory k3s' generate-custom-ca-certs.sh writes), for the
    /// server's image: its server-ca.crt must be the CA the join token's hash names, and the
    /// nodes' own tokens' (which the server's image registers).
    #[arg(long, value_name = "DIR")]
    pub server_ca: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress and no summary: only errors.
    #[arg(short, long)]
    pub quiet: bool,
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
    /// Without a card, list the removable disks it would accept.
    #[command(after_help = "Examples:
  imagegen flash rpi4-2.img                      # which cards are there?
  imagegen flash rpi4-2.img /dev/sdb
  imagegen flash rpi4-2.img /dev/sdb --dry-run   # check everything, write nothing
  imagegen flash rpi4-2.img /dev/mmcblk0 --yes
  imagegen flash rpi4-2.img copy.img --to-file   # to a file")]
    Flash {
        /// The image (its bmap is IMG.bmap).
        image: PathBuf,
        /// The card (whole disk, e.g. /dev/sdb), or a file with --to-file. Without it, the
        /// removable disks are listed.
        device: Option<PathBuf>,
        /// Do not ask before writing.
        #[arg(long)]
        yes: bool,
        /// The target is a file to create or overwrite, not a card.
        #[arg(long)]
        to_file: bool,
        /// The bmap (default: IMG.bmap).
        #[arg(long, value_name = "FILE")]
        bmap: Option<PathBuf>,
        /// Check the image, the bmap and the card, say what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The node rootfs (Debian arm64, node-runtime, the k3s unit) on its own: built or taken
    /// from the cache, the same one images and phones get.
    #[command(after_help = "Examples:
  imagegen rootfs                              # build or reuse it; prints where it is
  imagegen rootfs -o node-rootfs.tar.gz        # and copy it here
  imagegen rootfs --base debian-arm64.tar.gz   # from your own Debian arm64 base")]
    Rootfs {
        /// Copy the tarball to FILE as well.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// A Debian arm64 base tarball (.tar or .tar.gz) instead of an mmdebstrap build.
        #[arg(long, value_name = "TAR")]
        base: Option<PathBuf>,
        /// The static aarch64 node-runtime (default: next to imagegen, the cross-build output
        /// of this checkout, or the cache).
        #[arg(long, value_name = "PATH", env = "ARMFLEET_NODE_RUNTIME")]
        node_runtime: Option<PathBuf>,
        /// JSON output (the manifest).
        #[arg(long)]
        json: bool,
    },
    /// What armfleet's cache holds (node rootfs builds, Debian bases, downloads, boot packages),
    /// and sizes; --prune removes all but what the next build needs.
    #[command(after_help = "Examples:
  imagegen cache
  imagegen cache --prune
  imagegen cache --json")]
    Cache {
        /// Remove older rootfs builds, unused bases and leftovers of interrupted runs; keep the
        /// newest rootfs, its base, the pinned downloads and the boot packages.
        #[arg(long)]
        prune: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  imagegen completions bash > /etc/bash_completion.d/imagegen"
    )]
    Completions {
        /// The shell.
        shell: armfleet_cli::manual::Shell,
    },
    /// Write man pages (imagegen.1 and one per command) into a directory, or print imagegen.1.
    #[command(after_help = "Example:\n  imagegen man --dir /usr/local/share/man/man1")]
    Man {
        /// Where to write the pages; without it imagegen.1 goes to stdout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// An image for BOARD (any name `imagegen boards` lists): `imagegen BOARD [options]`.
    #[command(external_subcommand)]
    Build(Vec<String>),
}
