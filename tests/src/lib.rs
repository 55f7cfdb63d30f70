//! Test equipment for armfleet: the virtual phone, the k3s stand-in, QEMU boot checks.
//! None of it is shipped; it exists so the real tools can be proven without hardware.

pub mod debian;
pub mod examples;
pub mod fixtures;
pub mod k3s_server;
pub mod lab;
pub mod netns;
pub mod qemu;
pub mod standin;
pub mod util;
pub mod vphone;
pub mod vswitch;
