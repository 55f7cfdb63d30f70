//! Shared by every armfleet tool so that every ARM worker — Pi or phone — is made the same way.
//!
//! - [`node_config`]: `node.toml`, the one config file `node-runtime` reads on every worker.
//! - [`progress`]: progress events the libraries emit and the binaries draw.
//! - [`exit`]: the exit-code classes shared by the binaries.
#![deny(missing_docs)]

pub mod exit;
pub mod node_config;
pub mod progress;

pub use node_config::NodeConfig;
