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
//!
//! Profiles can make the phone more like a worker phone (see [`Profile`]): `cgroups = "v1"` or
//! `"hybrid"` mount the machine's cgroup hierarchies where Android's init mounts them, on a
//! `/dev` tmpfs of the phone's own (`cgroups` module; `"v2"` only on a machine whose cgroup2 has
//! the controllers, else the phone refuses to start and says why: [`cgroups_supported`]);
//! `network = "android"` gives everything that runs on the phone (adbd's shells, su, the boot
//! scripts) a network namespace laid out as netd lays out a phone on Wi-Fi ([`netd`]), while
//! adbd itself stays in the machine's, so adb reaches the phone as before; `nf_tables = false`
//! serves a kernel config without nf_tables.

mod armv7;
mod cgroups;
pub mod netd;
mod phone;
mod profile;
mod rootfs;
mod server;
mod services;
mod su;
mod sync;
mod transport;
pub mod wire;

pub use cgroups::supported as cgroups_supported;
pub use phone::{AID_SHELL, PhoneOptions, SHELL_GROUPS, VirtualPhone};
pub use profile::{
    Arch, Auth, Battery, Cgroups, Network, Profile, ProfileError, RootKind, profiles_dir,
};
pub use rootfs::{kernel_config_text, su_client};
pub use server::AdbServer;

/// The features adbd advertises in its CNXN banner. 29.0.6 hosts use `shell_v2` (shell protocol),
/// `stat_v2` (STA2/LST2) and `fixed_push_mkdir`; `cmd` says the `cmd` binary exists; `ls_v2`
/// (LIS2) is served for newer hosts.
pub const FEATURES: &str = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir";
