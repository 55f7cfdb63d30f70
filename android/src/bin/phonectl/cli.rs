//! phonectl's command line: the clap definitions, apart from the glue in `main.rs`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub const EXAMPLES: &str = "\
Examples:
  phonectl devices                      # what is plugged in, and whether it is enrolled
  phonectl doctor                       # can this phone be a worker? (changes nothing)
  phonectl enroll --token-file ~/.k3s-token   # the phone's [[phone]] entry in the topology
  phonectl enroll --name phone-1 --token-file ~/.k3s-token --dry-run
  phonectl enroll --all --token-env K3S_TOKEN
  phonectl status --all
  phonectl logs -s 0123456789ABCDEF -f
  phonectl unenroll -s 0123456789ABCDEF

Phones are found through the adb server (ANDROID_ADB_SERVER_PORT or --adb-port, default 5037);
phonectl starts one with `adb start-server` when none runs. See PHONES.md.";

/// Turn rooted Android phones plugged in over USB into k3s workers.
#[derive(Parser)]
#[command(name = "phonectl", version = armfleet_cli::VERSION, after_help = EXAMPLES)]
pub struct Cli {
    /// The adb server's port on 127.0.0.1.
    #[arg(
        long,
        global = true,
        env = "ANDROID_ADB_SERVER_PORT",
        value_name = "PORT"
    )]
    pub adb_port: Option<u16>,
    /// The phone's serial (see `phonectl devices`); needed when several are attached.
    #[arg(
        short = 's',
        long = "serial",
        global = true,
        value_name = "SERIAL",
        env = "ANDROID_SERIAL"
    )]
    pub serial: Option<String>,
    /// No progress and no result lines: only errors (and JSON when --json asks for it).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct Targets {
    /// Every attached phone, in parallel (instead of -s SERIAL).
    #[arg(long)]
    pub all: bool,
    /// Filled from the global -s.
    #[arg(skip)]
    pub serial: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List attached phones: serial, model, Android, ABI, root, state, enrolled.
    #[command(after_help = "Example:\n  phonectl devices --json")]
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check whether a phone can be a worker. Reads only; changes nothing.
    #[command(
        after_help = "Examples:\n  phonectl doctor\n  phonectl doctor -s 0123456789ABCDEF --json"
    )]
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a phone a k3s worker (or bring an enrolled one up to date).
    #[command(after_help = "Examples:
  phonectl enroll --token-file ~/.k3s-token
  phonectl enroll --dry-run --token-file ~/.k3s-token     # what would be sent; nothing changes
  phonectl enroll --all --topology lab.toml --token-env K3S_TOKEN
  phonectl enroll -s 0123456789ABCDEF --config node.toml --rootfs node-rootfs.tar.gz --token-file t

Without --rootfs, the node rootfs is built once (Debian arm64 with mmdebstrap, minutes) and then
taken from the cache, the same one `imagegen` puts on Pi images (`imagegen rootfs -o FILE` makes
the file on its own). Enroll is idempotent: each piece is compared by sha256 first and only what
differs is sent.")]
    Enroll(Box<EnrollArgs>),
    /// Show the worker's state (node-runtime status).
    #[command(after_help = "Examples:\n  phonectl status\n  phonectl status --all --json")]
    Status {
        #[command(flatten)]
        targets: Targets,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the worker's logs (node-runtime and the k3s agent).
    #[command(after_help = "Examples:\n  phonectl logs\n  phonectl logs -f -n 50")]
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show from the end of each file.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// A shell inside the worker's chroot (or run one command there).
    #[command(after_help = "Examples:\n  phonectl shell\n  phonectl shell -- cat /etc/os-release")]
    Shell {
        /// The command to run instead of an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop the worker; it stays stopped across reboots until `start`.
    #[command(
        after_help = "Examples:\n  phonectl stop -s 0123456789ABCDEF\n  phonectl stop --all --dry-run"
    )]
    Stop {
        #[command(flatten)]
        targets: Targets,
        /// Say what would be stopped and written; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start the worker (and let the boot hook start it again after reboots).
    #[command(after_help = "Example:\n  phonectl start")]
    Start {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        ready: ReadyArgs,
    },
    /// Stop and start the worker.
    #[command(after_help = "Example:\n  phonectl restart")]
    Restart {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        ready: ReadyArgs,
    },
    /// Remove the worker: stop it, remove the boot hook, the rootfs, the data image, the token.
    #[command(
        after_help = "Examples:\n  phonectl unenroll -s 0123456789ABCDEF --dry-run\n  phonectl unenroll -s 0123456789ABCDEF"
    )]
    Unenroll {
        #[command(flatten)]
        targets: Targets,
        /// List what would be stopped and removed (with sizes); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  phonectl completions bash > /etc/bash_completion.d/phonectl"
    )]
    Completions {
        /// The shell.
        shell: armfleet_cli::manual::Shell,
    },
    /// Write man pages (phonectl.1 and one per command) into a directory, or print phonectl.1.
    #[command(after_help = "Example:\n  phonectl man --dir /usr/local/share/man/man1")]
    Man {
        /// Where to write the pages; without it phonectl.1 goes to stdout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// The node name (else the topology entry whose serial matches the phone).
    #[arg(long)]
    pub name: Option<String>,
    /// The lab topology file (else ARMFLEET_TOPOLOGY, else the built-in one).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Use this node.toml instead of deriving one from the topology; a directory holds one
    /// `SERIAL.toml` per phone (for --all).
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "topology")]
    pub config: Option<PathBuf>,
    /// The node rootfs tarball (default: the cached node rootfs, built the first time).
    #[arg(long, value_name = "TAR.GZ", env = "ARMFLEET_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// The static aarch64 node-runtime (else ARMFLEET_NODE_RUNTIME, else `node-runtime-aarch64`
    /// next to phonectl, where scripts/install.sh puts it, else this checkout's cross-build
    /// output, else ~/.cache/armfleet/node-runtime-aarch64).
    #[arg(long, value_name = "PATH", env = "ARMFLEET_NODE_RUNTIME")]
    pub node_runtime: Option<PathBuf>,
    /// Read the k3s join token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Read the k3s join token from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Enroll even when the doctor finds a problem (root is still required).
    #[arg(long)]
    pub force: bool,
    /// Inspect the phone and say what would be sent, written and started; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub ready: ReadyArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// What "up" means: the agent's kubelet answers inside the phone, and with a kubeconfig the
/// cluster lists the Node as Ready.
#[derive(clap::Args, Clone)]
pub struct ReadyArgs {
    /// How long to wait for the agent to be ready, in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
    /// Also wait until the cluster lists the phone's Node as Ready (e.g. a copy of the server's
    /// /etc/rancher/k3s/k3s.yaml with its server address set).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}
