//! node-runtime: the supervisor that runs on every armfleet worker.
#![deny(missing_docs)]

/// The version printed by `node-runtime --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
