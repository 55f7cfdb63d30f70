//! `node-runtime`: thin command line over the `node_runtime` library.

use armfleet_cli::{Failure, finish, out};
use bootstrap::exit::ExitClass;
use bootstrap::layout::worker::CONFIG as DEFAULT_CONFIG_PATH;
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// The armfleet worker supervisor: runs the k3s agent on a Pi or in a phone's chroot.
#[derive(Parser)]
#[command(
    name = "node-runtime",
    version = armfleet_cli::VERSION,
    after_help = "Examples:
  node-runtime run --detach --config /data/armfleet/node.toml   # phone boot hook
  node-runtime status --json
  node-runtime stop
  node-runtime unpack --dest /data/armfleet/rootfs --sha256 <HASH> < node-rootfs.tar.gz
  node-runtime check-kernel --config-gz config.gz"
)]
struct Cli {
    /// Only errors: no progress or result lines, and the log at `error` (unless ARMFLEET_LOG
    /// says otherwise). JSON asked for with --json still comes out.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare the node (token, chroot on phones, k3s binary) and supervise `k3s agent`.
    #[command(after_help = "Examples:
  node-runtime run                                   # in the foreground (systemd on a Pi)
  node-runtime run --detach --config /data/armfleet/node.toml
Signals: SIGTERM stops the agent (SIGKILL after supervise.stop_grace_secs); SIGHUP re-reads
node.toml and restarts the agent only if its arguments changed.")]
    Run {
        /// node.toml.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Run in the background (new session, output to the log dir); returns once prepared,
        /// with its first status written (so `status` right after finds it).
        #[arg(long)]
        detach: bool,
    },
    /// Stop the running supervisor (and the agent with it) and wait for it to exit.
    #[command(after_help = "Example:\n  node-runtime stop --config /data/armfleet/node.toml")]
    Stop {
        /// node.toml.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show the agent's health as recorded by the supervisor.
    #[command(
        after_help = "Examples:\n  node-runtime status\n  node-runtime status --json --config /data/armfleet/node.toml"
    )]
    Status {
        /// node.toml.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print the JSON record (what `phonectl status` reads).
        #[arg(long)]
        json: bool,
    },
    /// Install a rootfs .tar.gz read from stdin into DIR, atomically.
    #[command(
        after_help = "Example:\n  node-runtime unpack --dest /data/armfleet/rootfs --sha256 3b1f...e9 < rootfs.tar.gz"
    )]
    Unpack {
        /// The directory to create or replace.
        #[arg(long)]
        dest: PathBuf,
        /// Expected sha256 of the compressed stream; nothing is replaced if it differs.
        #[arg(long)]
        sha256: Option<String>,
        /// Read exactly this many bytes of stdin and leave the rest for the next command (the
        /// archive must be that long).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// Write small files from stdin (each exactly LENGTH bytes, in order), all or nothing.
    #[command(
        name = "write-files",
        after_help = "Example (node.toml of 312 bytes, then a 107-byte token):
  cat node.toml token | node-runtime write-files \\
      --file /data/armfleet/node.toml:0644:312 \\
      --file /data/armfleet/rootfs/etc/armfleet/token:0600:107
Each file goes to PATH.new (parents made 0700), is synced, then all are renamed into place."
    )]
    WriteFiles {
        /// ABSOLUTE_PATH:OCTAL_MODE:LENGTH, once per file, in the order of stdin.
        #[arg(long = "file", required = true, value_name = "PATH:MODE:LEN")]
        files: Vec<String>,
    },
    /// Put a file in place only when its sha256 is the one given (the k3s binary phonectl
    /// brings from the laptop).
    #[command(
        after_help = "Example:\n  node-runtime install --sha256 c920...bb --mode 0755 /data/local/tmp/k3s /data/armfleet/rootfs/usr/local/bin/k3s"
    )]
    Install {
        /// Expected sha256 of SRC.
        #[arg(long)]
        sha256: String,
        /// Octal permission bits of DEST.
        #[arg(long, default_value = "0644")]
        mode: String,
        /// The file to copy.
        src: PathBuf,
        /// Where it goes (through DEST.new, renamed once it matched).
        dest: PathBuf,
    },
    /// Check a kernel config against k3s' requirements (default: the running kernel's).
    #[command(
        name = "check-kernel",
        after_help = "Examples:\n  node-runtime check-kernel\n  node-runtime check-kernel --config-gz ./config.gz --json"
    )]
    CheckKernel {
        /// A config.gz (or a plain .config) instead of /proc/config.gz.
        #[arg(long)]
        config_gz: Option<PathBuf>,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Print the systemd unit that starts node-runtime on a Pi.
    #[command(
        after_help = "Example:\n  node-runtime unit > /etc/systemd/system/node-runtime.service"
    )]
    Unit,
    /// Serve the artifact mirror on the router: the files of a directory over HTTP (GET/HEAD of
    /// plain file names only; workers check each file against its pinned sha256).
    #[command(after_help = "Example:
  node-runtime mirror --dir /var/lib/armfleet/mirror --listen 0.0.0.0:8080
  curl -I http://rpi4-1.lab.home.arpa:8080/k3s-arm64     # from a worker on INFRA")]
    Mirror {
        /// The directory whose files are served.
        #[arg(long, default_value = bootstrap::layout::router::MIRROR_DIR)]
        dir: PathBuf,
        /// Address and port to listen on (the firewall decides which VLAN reaches it).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// URL path the files are under.
        #[arg(long, default_value = "/")]
        prefix: String,
    },
}

fn fail(class: ExitClass, e: impl std::fmt::Display) -> Failure {
    Failure::new(class, e)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The supervisor's lines are the worker's journal: shown from `info` on.
    armfleet_cli::logging::init_with_default(if cli.quiet {
        tracing::level_filters::LevelFilter::ERROR
    } else {
        tracing::level_filters::LevelFilter::INFO
    });
    out::set_quiet(cli.quiet);
    finish("node-runtime", dispatch(cli.command).map(ExitCode::from))
}

fn dispatch(cmd: Cmd) -> Result<u8, Failure> {
    use bootstrap::{kernel, status};
    use node_runtime::*;
    match cmd {
        Cmd::Run { config, detach } => {
            // Before any thread exists: the supervisor takes its signals with sigtimedwait. Only
            // here: the other commands (the mirror above all, stopped by systemd with SIGTERM)
            // keep the default dispositions.
            supervisor::block_signals();
            if detach {
                let pid = daemon::detach(&config).map_err(|e| fail(e.exit_class(), e))?;
                out::println(&format!(
                    "node-runtime started in the background (pid {pid})"
                ));
            } else {
                supervisor::run(supervisor::RunOptions {
                    config_path: config,
                    ready: None,
                })
                .map_err(|e| fail(e.exit_class(), e))?;
            }
            Ok(0)
        }
        Cmd::Stop { config } => {
            let c = bootstrap::NodeConfig::load(&config).map_err(|e| fail(ExitClass::Usage, e))?;
            match daemon::stop(&c).map_err(|e| fail(e.exit_class(), e))? {
                daemon::Stopped::NotRunning => out::println("node-runtime is not running"),
                daemon::Stopped::Stopped { pid } => {
                    out::println(&format!("node-runtime (pid {pid}) stopped"))
                }
            }
            Ok(0)
        }
        Cmd::Status { config, json } => {
            let c = bootstrap::NodeConfig::load(&config).map_err(|e| fail(ExitClass::Usage, e))?;
            let path = c.host_path(&c.status_file);
            let mut s = status::read(&path).map_err(|e| fail(ExitClass::Device, e))?;
            // Judged here, on the worker: the record's writer holds the pidfile's lock.
            let holder = pidfile::holder(&c.host_path(&pidfile_path(&c)));
            s.supervisor_running = Some(holder == Some(s.pid));
            if json {
                out::json(&s);
            } else {
                out::print(&s.render());
            }
            // The record was printed: success, whatever it says (phonectl parses it; the
            // record carries whether its supervisor runs).
            Ok(0)
        }
        Cmd::Unpack {
            dest,
            sha256,
            bytes,
        } => {
            let result = match bytes {
                // Unbuffered: std's stdin buffer would swallow bytes past the archive that the
                // next command in the shell needs.
                Some(n) => unpack::unpack(raw_stdin()?.take(n), &dest, sha256.as_deref(), Some(n)),
                None => unpack::unpack(std::io::stdin().lock(), &dest, sha256.as_deref(), None),
            };
            let u = result.map_err(|e| {
                let class = match e {
                    unpack::UnpackError::BadHash(_) | unpack::UnpackError::BadDest(_) => {
                        ExitClass::Usage
                    }
                    _ => ExitClass::Device,
                };
                fail(class, e)
            })?;
            out::println(&format!(
                "unpacked {} entries ({} bytes, sha256 {}) into {}{}",
                u.entries,
                u.bytes,
                u.sha256,
                dest.display(),
                if u.replaced {
                    ", replacing the old tree"
                } else {
                    ""
                }
            ));
            if let Some(old) = &u.leftover {
                tracing::warn!(
                    "the previous tree could not be removed from {}: the next unpack removes it",
                    old.display()
                );
            }
            Ok(0)
        }
        Cmd::Install {
            sha256,
            mode,
            src,
            dest,
        } => {
            if !bootstrap::node_config::is_sha256_hex(&sha256.to_ascii_lowercase()) {
                return Err(fail(
                    ExitClass::Usage,
                    format!("--sha256 {sha256:?} is not 64 hex digits"),
                ));
            }
            let mode = u32::from_str_radix(&mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| fail(ExitClass::Usage, format!("--mode {mode:?} is not octal")))?;
            files::install_file(&src, &dest, mode, &sha256).map_err(|e| {
                let class = match e {
                    files::InstallError::Mismatch { .. } => ExitClass::Device,
                    files::InstallError::Io { .. } => ExitClass::Device,
                };
                fail(class, e)
            })?;
            out::println(&format!("installed {} ({sha256})", dest.display()));
            Ok(0)
        }
        Cmd::WriteFiles { files } => {
            let specs: Vec<files::FileSpec> = files
                .iter()
                .map(|f| files::FileSpec::parse(f))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(ExitClass::Usage, e))?;
            files::write_files(raw_stdin()?, &specs).map_err(|e| {
                let class = match e {
                    files::FilesError::Io { .. } => ExitClass::Device,
                    _ => ExitClass::Usage,
                };
                fail(class, e)
            })?;
            Ok(0)
        }
        Cmd::CheckKernel { config_gz, json } => {
            let (text, origin) = match &config_gz {
                Some(p) => (
                    kernel::read_config_file(p).map_err(|e| fail(ExitClass::Usage, e))?,
                    p.display().to_string(),
                ),
                None => kernel::local_config().map_err(|e| fail(ExitClass::Device, e))?,
            };
            // The running kernel's module list only describes the running kernel's config.
            let modules = config_gz.is_none().then(kernel::local_modules).flatten();
            let mut report = kernel::check_kernel_text(&text, &origin, modules.as_ref())
                .map_err(|e| fail(ExitClass::Usage, e))?;
            if config_gz.is_none()
                && let Ok(c) = std::fs::read_to_string("/proc/cgroups")
            {
                report.cgroup_controllers = Some(kernel::enabled_cgroup_controllers(&c));
            }
            if json {
                out::json(&report);
            } else {
                out::print(&report.render());
            }
            Ok(if report.passes() {
                0
            } else {
                ExitClass::Device.code()
            })
        }
        Cmd::Mirror {
            dir,
            listen,
            prefix,
        } => {
            if !dir.is_dir() {
                return Err(fail(
                    ExitClass::Usage,
                    format!(
                        "{} is not a directory: give the mirror's files with --dir",
                        dir.display()
                    ),
                ));
            }
            let listener = std::net::TcpListener::bind(&listen).map_err(|e| {
                fail(
                    ExitClass::Usage,
                    format!(
                        "cannot listen on {listen}: {e}: give a free address:port with --listen"
                    ),
                )
            })?;
            let prefix = if prefix.ends_with('/') {
                prefix
            } else {
                format!("{prefix}/")
            };
            mirror::serve(listener, dir, prefix).map_err(|e| fail(ExitClass::Device, e))?;
            Ok(0)
        }
        Cmd::Unit => {
            out::print(bootstrap::unit::SYSTEMD_UNIT);
            Ok(0)
        }
    }
}

/// Stdin without std's buffer: reads take only what they ask for, so a command reading part of
/// stdin leaves the rest to the next one.
fn raw_stdin() -> Result<std::fs::File, Failure> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| {
        fail(
            ExitClass::Usage,
            format!("stdin is closed ({e}): give the data on stdin, e.g. `< file`"),
        )
    })?;
    Ok(std::fs::File::from(fd))
}
