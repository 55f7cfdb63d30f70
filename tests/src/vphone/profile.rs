//! Phone profiles as data: `tests/profiles/NAME.toml` describes what a phone shows (model, Android
//! version, root, SELinux, kernel config, battery, /data size, adb authorization, cgroup layout,
//! network).

use serde::Deserialize;
use std::path::PathBuf;

/// Who answers `su` on the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// No root: there is no `su`.
    None,
    /// Magisk: `su` asks magiskd; `/data/adb/magisk` exists.
    Magisk,
    /// KernelSU: `su` is granted by the kernel; `/data/adb/ksu` exists.
    Kernelsu,
}

/// Whether adbd asks the host to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Answer CNXN at once (an unlocked or userdebug phone, or a host key already accepted).
    Accept,
    /// Send AUTH tokens and never accept: the user never answers the prompt.
    Never,
    /// Keep the connection open and never answer CNXN (adbd hung, a phone stuck booting): the
    /// adb server lists it as `offline`.
    Silent,
}

impl Auth {
    /// True for the phone that keeps the host unauthorized.
    pub fn never_accepts(self) -> bool {
        self == Auth::Never
    }

    /// The state `adb devices` shows once the server has connected.
    pub fn listed_state(self) -> &'static str {
        match self {
            Auth::Accept => "device",
            Auth::Never => "unauthorized",
            Auth::Silent => "offline",
        }
    }
}

/// The CPU the phone's userland runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// arm64 userland (`uname -m` = aarch64).
    Aarch64,
    /// 32-bit userland on an ARMv8 CPU (`uname -m` = armv8l).
    Armv7,
}

/// The battery as `/sys/class/power_supply/battery` shows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Battery {
    /// `capacity`, percent.
    pub level: u8,
    /// `status`: Charging, Discharging, Full, Not charging.
    pub status: String,
    /// `temp`, tenths of a degree Celsius.
    pub temp: i32,
    /// `health`: Good, Overheat, ...
    #[serde(default = "good")]
    pub health: String,
}

fn good() -> String {
    "Good".into()
}

fn yes() -> bool {
    true
}

/// How the phone's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cgroups {
    /// The harness' old layout: a cgroup2 at `/sys/fs/cgroup` when the machine can mount one (its
    /// controllers are whatever the machine left to v2), nothing else.
    #[default]
    Host,
    /// Android 7–9: the v1 controllers where Android's init mounts them (memory at `/dev/memcg`,
    /// cpu at `/dev/cpuctl`, cpuset at `/dev/cpuset`, cpuacct at `/acct`), no cgroup2; `/dev` is a
    /// tmpfs, as Android's.
    V1,
    /// Android 10+: those (and blkio at `/dev/blkio`) plus a cgroup2 at `/sys/fs/cgroup`.
    Hybrid,
    /// cgroup v2 only, with its controllers, at `/sys/fs/cgroup`: only where the machine's cgroup2
    /// offers cpu, cpuset, memory and pids (a v1/hybrid machine cannot: starting fails).
    V2,
}

/// The network the phone's processes see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The build machine's own network namespace (the harness' old behaviour).
    #[default]
    Host,
    /// A network namespace of its own, laid out as netd lays out a phone on Wi-Fi: `lo`,
    /// `wlan0` (ifindex 30) with an address, `dummy0`, per-network routing tables numbered
    /// ifindex + 1000, an almost empty main table, and netd's policy rules (`ip rule`) from
    /// `tests/data/vphone/android-ip-rule.txt`.
    Android,
}

/// A phone profile (see `tests/profiles/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's file stem.
    #[serde(default)]
    pub name: String,
    /// One line saying what the profile stands for.
    pub description: String,
    /// `ro.product.model`.
    pub model: String,
    /// `ro.product.name`.
    pub product: String,
    /// `ro.product.device`.
    pub device: String,
    /// `ro.product.manufacturer`.
    pub manufacturer: String,
    /// `ro.serialno`.
    pub serialno: String,
    /// `ro.build.version.release`.
    pub android_version: String,
    /// `ro.build.version.sdk`.
    pub sdk: u32,
    /// Userland CPU.
    pub arch: Arch,
    /// Kernel release shown by `uname -r`.
    pub kernel_release: String,
    /// Root solution.
    pub root: RootKind,
    /// `su -v` output.
    #[serde(default)]
    pub su_version: String,
    /// `su -V` output.
    #[serde(default)]
    pub su_version_code: String,
    /// The root manager refuses the shell uid (Magisk's "Deny" for Shell, or a timed-out prompt):
    /// `su -c` prints "Permission denied" and exits 1; `su -v` still answers.
    #[serde(default)]
    pub su_denies: bool,
    /// `getenforce`: Enforcing or Permissive.
    pub selinux: String,
    /// Kernel config fixtures in `tests/data/kernel-configs/`, concatenated in this order and
    /// served gzipped as `/proc/config.gz` (a defconfig plus the defaults `make olddefconfig`
    /// would add, or one full config).
    pub kernel_config: Vec<String>,
    /// Module listings in `tests/data/kernel-configs/` (one `.ko` path per line, as `find` prints
    /// them on a phone): each listed module becomes an empty file at that path in the phone, so
    /// doctor sees which `=m` options the phone can load. Unset: no module directories at all.
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// Size of `/data` in MiB when it is a small filesystem of its own; unset: as big as the host.
    #[serde(default)]
    pub data_size_mib: Option<u64>,
    /// adb authorization.
    pub auth: Auth,
    /// Battery state.
    pub battery: Battery,
    /// More system properties.
    #[serde(default)]
    pub props: std::collections::BTreeMap<String, String>,
    /// cgroup layout (default `host`).
    #[serde(default)]
    pub cgroups: Cgroups,
    /// The kernel has nf_tables (default true); false removes `CONFIG_NF_TABLES` and what
    /// depends on it (`NFT_*`, `NF_TABLES_*`, flowtables) from `/proc/config.gz`.
    #[serde(default = "yes")]
    pub nf_tables: bool,
    /// Network namespace layout (default `host`).
    #[serde(default)]
    pub network: Network,
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile file is missing or unreadable.
    #[error("phone profile {name:?} not found at {path} (profiles: {known})")]
    Read {
        /// Profile name asked for.
        name: String,
        /// File tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// The profiles that exist.
        known: String,
    },
    /// The file is not a valid profile.
    #[error("{path}: {message}")]
    Invalid {
        /// The profile file.
        path: PathBuf,
        /// What is wrong, and with which key.
        message: String,
    },
}

/// The profiles folder (`tests/profiles`).
pub fn profiles_dir() -> PathBuf {
    crate::util::workspace_root().join("tests/profiles")
}

impl Profile {
    /// Loads `tests/profiles/NAME.toml`.
    pub fn load(name: &str) -> Result<Profile, ProfileError> {
        let path = profiles_dir().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
            name: name.to_owned(),
            path: path.clone(),
            source,
            known: Profile::names().join(", "),
        })?;
        let invalid = |message: String| ProfileError::Invalid {
            path: path.clone(),
            message,
        };
        let mut profile: Profile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        profile.name = name.to_owned();
        if profile.root != RootKind::None && profile.su_version.is_empty() {
            return Err(invalid("su_version is required when root is set".into()));
        }
        if !matches!(profile.selinux.as_str(), "Enforcing" | "Permissive") {
            return Err(invalid(format!(
                "selinux must be Enforcing or Permissive, not {:?}",
                profile.selinux
            )));
        }
        Ok(profile)
    }

    /// The names of all profiles, sorted.
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(profiles_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let p = e.path();
                        if p.extension()? != "toml" {
                            return None;
                        }
                        Some(p.file_stem()?.to_string_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `ro.product.cpu.abi`.
    pub fn abi(&self) -> &'static str {
        match self.arch {
            Arch::Aarch64 => "arm64-v8a",
            Arch::Armv7 => "armeabi-v7a",
        }
    }

    /// The read-only build properties the phone reports (`getprop`).
    pub fn build_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            ("ro.product.model", self.model.clone()),
            ("ro.product.name", self.product.clone()),
            ("ro.product.device", self.device.clone()),
            ("ro.product.manufacturer", self.manufacturer.clone()),
            ("ro.product.brand", self.manufacturer.to_lowercase()),
            ("ro.serialno", self.serialno.clone()),
            ("ro.boot.serialno", self.serialno.clone()),
            ("ro.build.version.release", self.android_version.clone()),
            ("ro.build.version.sdk", self.sdk.to_string()),
            ("ro.build.type", "user".into()),
            ("ro.build.tags", "release-keys".into()),
            ("ro.debuggable", "0".into()),
            ("ro.secure", "1".into()),
            ("ro.adb.secure", "1".into()),
            ("ro.product.cpu.abi", self.abi().into()),
            (
                "ro.product.cpu.abilist",
                match self.arch {
                    Arch::Aarch64 => "arm64-v8a,armeabi-v7a,armeabi".into(),
                    Arch::Armv7 => "armeabi-v7a,armeabi".into(),
                },
            ),
            ("ro.boot.selinux", self.selinux.to_lowercase()),
        ];
        props.sort();
        let mut props: Vec<(String, String)> =
            props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (k, v) in &self.props {
            props.retain(|(key, _)| key != k);
            props.push((k.clone(), v.clone()));
        }
        props
    }
}
