//! node-runtime: the supervisor that runs on every armfleet worker, Pi or phone.
//!
//! - [`agent`]: the `k3s agent` command line built from `node.toml`, and the node IP.
//! - [`token`]: the join token file's safety checks and the one-time token drop.
//! - [`k3sbin`]: the k3s binary against its sha256 pin, fetched from the mirror when it differs.
//! - [`supervisor`]: runs the agent, restarts it with backoff, logs, health, signals.
//! - [`logs`]: size-rotated log files.
//! - [`power`]: phone battery care (charge switch, low-battery pause) and the wakelock.
//! - [`iptables`]: which iptables backend the agent and the rootfs use, and why.
//! - [`routing`]: the policy-routing rules the agent needs beside Android's.
//! - [`chroot`]: the phone's chroot in its own mount namespace, cgroups, the ext4 data image.
//! - [`daemon`]: `run --detach` and `stop`.
//! - [`pidfile`]: the pidfile lock that says which supervisor runs.
//! - [`unpack`]: `node-runtime unpack`, the atomic rootfs install.
//! - [`beneath`]: creating archive entries strictly beneath one directory.
//! - [`files`]: `node-runtime write-files`, small root files (config, token, boot hook) from stdin.
#![deny(missing_docs)]

pub mod agent;
pub mod beneath;
pub mod chroot;
pub mod daemon;
pub mod files;
pub mod iptables;
pub mod k3sbin;
pub mod logs;
pub mod mirror;
pub mod pidfile;
pub mod power;
pub mod routing;
pub mod supervisor;
pub mod token;
pub mod unpack;

/// The version printed by `node-runtime --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The pidfile's name; it lives next to the status file (by default
/// `/var/lib/armfleet/node-runtime.pid`), inside the worker's root.
pub const PIDFILE_NAME: &str = "node-runtime.pid";

/// The pidfile of `node-runtime run` as a path inside the worker's root (see
/// [`bootstrap::NodeConfig::host_path`] for the path outside a phone's chroot).
pub fn pidfile_path(config: &bootstrap::NodeConfig) -> std::path::PathBuf {
    config.status_file.with_file_name(PIDFILE_NAME)
}

pub use bootstrap::status::unix_now;
