//! phonectl: rooted Android phones as k3s workers, over ADB.
//!
//! - [`adb`]: the adb server's host protocol (shell v2 with real exit codes, sync push/pull).
//! - [`device`]: the [`device::Device`] trait everything else goes through.
//! - [`doctor`]: the read-only preflight and its verdicts.
//! - [`enroll`]: enrolment, planned from the probed facts, then applied.
//! - [`lifecycle`]: status, start/stop/restart, logs, shell, unenroll of an enrolled phone.
//! - [`error`]: what can go wrong, and the exit class of each.
//! - [`setup`]: what an enroll needs from the laptop side (topology, node.toml, token, CA check).
//! - [`hook`]: the boot hook module installed on a phone.
#![deny(missing_docs)]

pub mod adb;
pub mod device;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod hook;
pub mod lifecycle;
pub mod setup;
