//! imagegen: SD card images that boot a Raspberry Pi straight into the k3s agent, and a safe
//! flasher for them.
//!
//! - [`board`]: what a board profile (data, in [`bootstrap::board`]) means on the boot partition.
//! - [`assets`]: boot assets from Debian packages (firmware, kernel, modules, device trees).
//! - [`initramfs`]: the small initramfs made for this root filesystem.
//! - [`host`]: per-host files (hostname, network, Wi-Fi, SSH keys, `node.toml`).
//! - [`topology`]: the host's plan from the lab topology.
//! - [`plan`]: the decisions of a build (what goes where, sizes, the token), without I/O.
//! - [`build`]: MBR + FAT32 boot + ext4 root into a sparse file, and its `.bmap`.
//! - [`bmap`], [`flash`]: block maps and writing only mapped blocks to a card, verified.
//! - [`inspect`]: what an image holds, read from the file.
#![deny(missing_docs)]

pub mod assets;
pub mod bmap;
pub mod board;
pub mod build;
pub mod error;
pub mod ext4;
pub mod fat;
pub mod flash;
pub mod host;
pub mod initramfs;
pub mod inspect;
pub mod plan;
pub mod router;
pub mod topology;
pub mod util;
pub mod window;

pub use error::ImageError;

#[cfg(test)]
mod tests_support {
    /// A progress sink that drops events.
    pub struct Quiet;
    impl bootstrap::progress::Progress for Quiet {
        fn event(&self, _e: bootstrap::progress::Event) {}
    }
}
