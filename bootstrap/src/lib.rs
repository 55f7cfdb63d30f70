//! Shared by every armfleet tool so that every ARM worker — Pi or phone — is made the same way.
//!
//! - [`topology`]: the lab (`topology.toml`), and the `node.toml` of each worker in it.
//! - [`board`]: the board profiles (`images/boards/*.toml` and the user's), one registry.
//! - [`layout`]: where armfleet puts things on a worker (phone and Pi paths), defined once.
//! - [`node_config`]: `node.toml`, the one config file `node-runtime` reads on every worker.
//! - [`download`]: pinned, resumable, hash-checked downloads.
//! - [`cache`]: where downloads and builds are kept.
//! - [`rootfs`]: the node rootfs (Debian base + overlay), cached by input hash.
//! - [`pgz`]: parallel gzip (one member, deterministic).
//! - [`token`]: the k3s join token: sources, formats, the server CA check, 0600 files.
//! - [`kube`]: whether a Node is Ready, read through a kubeconfig.
//! - [`kernel`]: the kernel options k3s needs, checked against a kernel config.
//! - [`status`]: the worker's health record (`node-runtime status --json`).
//! - [`unit`]: the systemd unit that starts `node-runtime` on a Pi.
//! - [`process`]: the one place other programs are started.
//! - [`progress`]: progress events the libraries emit and the binaries draw.
//! - [`exit`]: the exit-code classes shared by the binaries.
#![deny(missing_docs)]

pub mod board;
pub mod cache;
pub mod cache_inventory;
pub mod digest;
pub mod download;
pub mod exit;
pub mod kernel;
pub mod kube;
pub mod layout;
pub mod node_config;
pub mod pgz;
pub mod process;
pub mod progress;
pub mod rootfs;
pub mod status;
pub mod token;
pub mod topology;
pub mod unit;
pub mod url;

pub use node_config::NodeConfig;
pub use topology::Topology;
