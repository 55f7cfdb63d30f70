//! The virtual phone: the device side of ADB over TCP (adbd as platform-tools 29.0.6 speaks to
//! it), whose shell runs in an aarch64 sandbox shaped like Android, so `phonectl` and the real
//! `adb` can be proven without hardware.
//!
//! ```no_run
//! use armfleet_tests::vphone::{AdbServer, PhoneOptions, VirtualPhone};
//! let phone = VirtualPhone::start("rooted-magisk", PhoneOptions::default());
//! let adb = AdbServer::start();
//! adb.connect(&phone);
//! let out = adb.adb(&["-s", &phone.serial(), "shell", "su -c id"]);
//! assert!(String::from_utf8_lossy(&out.stdout).starts_with("uid=0(root)"));
//! ```
//!
//! What a host must know, as on a real phone:
//! - adbd runs as the shell user (uid 2000): `adb push` writes only where it may
//!   (`/data/local/tmp`, `/sdcard`); root needs `su -c` on rooted profiles.
//! - After `reboot:` the TCP connection drops and the phone accepts a new one once booted. The adb
//!   29 server marks the device offline and reconnects by itself within a second or two of the
//!   phone being back, so a host waits (`adb -s SERIAL wait-for-device`); `adb connect` again is
//!   harmless ("already connected").
//! - A failed push (permission, ENOSPC, cable cut) leaves no partial file, as adbd removes it.
//! - Commands run raw (pipes; shell v2 keeps stderr apart); `pty` requests and interactive
//!   shells get a pseudo-terminal sized by the host's window-size frames, as with adbd.
//!
//! Inside: a PID + mount namespace whose PID 1 is busybox init chrooted into [`VirtualPhone::root`];
//! `/system/bin/sh` is mksh (Android's shell), the other tools busybox applets; aarch64 (or armhf)
//! binaries run through qemu-user in binfmt_misc. The binfmt entries must carry the `P` flag
//! (preserve argv[0]), or busybox applets that run other applets by name (`setsid sleep`,
//! `nohup`, `env`, `xargs`) lose their argv[0]; scripts/setup.sh registers them so.

mod armv7;
mod phone;
mod profile;
mod rootfs;
mod server;
mod services;
mod su;
mod sync;
mod transport;
pub mod wire;

pub use phone::{AID_SHELL, PhoneOptions, SHELL_GROUPS, VirtualPhone};
pub use profile::{Arch, Auth, Battery, Profile, ProfileError, RootKind, profiles_dir};
pub use rootfs::{kernel_config_text, su_client};
pub use server::AdbServer;

/// The features adbd advertises in its CNXN banner. 29.0.6 hosts use `shell_v2` (shell protocol),
/// `stat_v2` (STA2/LST2) and `fixed_push_mkdir`; `cmd` says the `cmd` binary exists; `ls_v2`
/// (LIS2) is served for newer hosts.
pub const FEATURES: &str = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir";
