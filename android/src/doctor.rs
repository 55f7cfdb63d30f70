//! The preflight: what a phone is and whether it can be a worker. Reads only; changes nothing.
//!
//! [`probe`] gathers facts over ADB (a handful of read-only commands); [`assess`] — a pure
//! function of the facts, one small judge per item — turns them into one verdict per item and an
//! overall verdict. The kernel config is fetched raw (`/proc/config.gz`) and checked on the host
//! with [`bootstrap::kernel`], the checker `node-runtime check-kernel` uses, so the two can never
//! disagree.

use crate::device::{Device, DeviceError, ShellOutput, shell_batch};
use bootstrap::progress::human_bytes as human;
use serde::Serialize;
use std::collections::BTreeMap;

/// Minimum free space on /data when no rootfs size is known (rootfs + a small data image).
pub const DEFAULT_NEED_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// How `su` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum Root {
    /// `su` works; the string names the manager (Magisk, KernelSU) and version.
    Granted(String),
    /// `su` exists but refused this shell.
    Denied(String),
    /// No `su` binary.
    Absent,
}

/// Everything the probe read from the phone.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// The phone.
    pub serial: String,
    /// `ro.product.model`.
    pub model: Option<String>,
    /// `ro.build.version.release`.
    pub android: Option<String>,
    /// `ro.build.version.sdk`.
    pub sdk: Option<u32>,
    /// `ro.product.cpu.abi`.
    pub abi: Option<String>,
    /// `uname -m`.
    pub machine: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// Root access.
    pub root: Root,
    /// `getenforce`.
    pub selinux: Option<String>,
    /// The kernel options k3s needs that the phone's `/proc/config.gz` lacks (a `=m` option
    /// counts only when its module is on the phone), or why the config could not be checked.
    #[serde(skip)]
    pub kernel: Result<KernelMissing, String>,
    /// Whether the kernel config has `NF_TABLES` (None: no config to read).
    pub nf_tables: Option<bool>,
    /// The cgroup mounts found in /proc/mounts: mount point → fs type and options.
    pub cgroup_mounts: Vec<(String, String, String)>,
    /// Free bytes on /data, when `stat -f` answered.
    pub data_free: Option<u64>,
    /// Battery capacity percent.
    pub battery_percent: Option<u8>,
    /// Battery status (`Charging`, `Discharging`, `Full`, `Not charging`).
    pub battery_status: Option<String>,
}

/// Parses `getprop`'s full dump (`[key]: [value]` lines).
pub fn parse_getprop(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('[') else {
            continue;
        };
        let Some((key, rest)) = rest.split_once("]: [") else {
            continue;
        };
        let Some(value) = rest.strip_suffix(']') else {
            continue;
        };
        map.insert(key.to_owned(), value.to_owned());
    }
    map
}

/// Reads the facts. Read-only commands; root ones through `su -c`.
pub fn probe(dev: &dyn Device) -> Result<Facts, DeviceError> {
    Ok(probe_with(dev, &[])?.0)
}

/// [`probe`], plus more read-only root commands run in the same `su` (enroll asks for the hashes
/// of what it installed before, and the worker's status). Their outputs come back in order, as
/// the phone gave them; when root is not granted, they carry su's failure.
pub fn probe_with(
    dev: &dyn Device,
    extra_root: &[&str],
) -> Result<(Facts, Vec<ShellOutput>), DeviceError> {
    // Two batches (see shell_batch), the shell user's and root's, run concurrently: two round
    // trips and two shells in all, where a probe used to start a process per fact.
    let module_files = format!("find {} -name '*.ko*' 2>/dev/null", MODULE_DIRS.join(" "));
    let shell_cmds = [
        "getprop",
        "uname -r -m",
        "su -v",
        "getenforce",
        "cat /proc/mounts",
        "stat -f -c '%a %S' /data",
        "cat /sys/class/power_supply/battery/capacity /sys/class/power_supply/battery/status",
        "cat /proc/modules",
    ];
    let mut root_cmds = vec!["id -u", "cat /proc/config.gz", module_files.as_str()];
    root_cmds.extend_from_slice(extra_root);
    let (shell_outs, root_outs) = std::thread::scope(|s| {
        let root = s.spawn(|| shell_batch(dev, &root_cmds, true));
        let shell = shell_batch(dev, &shell_cmds, false);
        (shell, root.join().expect("probe thread"))
    });
    let mut shell_outs = shell_outs?.into_iter();
    let mut root_outs = root_outs?.into_iter();
    let mut sh = || shell_outs.next().expect("one output per command");
    let (getprop, uname, su_version, getenforce, mounts, df, bat, loaded) =
        (sh(), sh(), sh(), sh(), sh(), sh(), sh(), sh());
    let mut su = || root_outs.next().expect("one output per command");
    let (id, mut cfg, module_files) = (su(), su(), su());
    let extra: Vec<ShellOutput> = root_outs.collect();
    let props = parse_getprop(&getprop.out());
    let prop = |k: &str| props.get(k).filter(|v| !v.is_empty()).cloned();
    let uname = uname.out();
    let mut words = uname.split_whitespace();
    let kernel_release = words.next().unwrap_or("").to_owned();
    let machine = words.next().unwrap_or("").to_owned();

    let root = if id.success() && id.out() == "0" {
        let ver = su_version.out();
        let lower = ver.to_lowercase();
        Root::Granted(if lower.contains("kernelsu") {
            format!("KernelSU {}", ver.split(':').next().unwrap_or(&ver))
        } else if lower.contains("magisk") {
            format!("Magisk {}", ver.split(':').next().unwrap_or(&ver))
        } else if ver.is_empty() {
            "su".to_owned()
        } else {
            format!("su {ver}")
        })
    } else if id.status == 127
        || String::from_utf8_lossy(&id.stderr).contains("not found")
            && !String::from_utf8_lossy(&id.stderr).contains("denied")
    {
        Root::Absent
    } else {
        Root::Denied(id.err_line())
    };
    let rooted = matches!(root, Root::Granted(_));

    let selinux = Some(getenforce).filter(|o| o.success()).map(|o| o.out());

    if !rooted {
        // Some phones let the shell user read it.
        cfg = dev.shell("cat /proc/config.gz")?;
    }
    let config_gz = if cfg.success() && !cfg.stdout.is_empty() {
        Ok(cfg.stdout)
    } else {
        Err(format!("cannot read /proc/config.gz ({})", cfg.err_line()))
    };

    let mounts = mounts.out();
    let cgroup_mounts = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| (f[1].to_owned(), f[2].to_owned(), f[3].to_owned()))
        })
        .collect();

    let data_free = df.success().then(|| df.out()).and_then(|s| {
        let mut w = s.split_whitespace().map(|x| x.parse::<u64>().ok());
        Some(w.next()?? * w.next()??)
    });

    let bat_out = String::from_utf8_lossy(&bat.stdout).into_owned();
    let mut bat_lines = bat_out.lines();
    let battery_percent = bat_lines.next().and_then(|l| l.trim().parse().ok());
    let battery_status = bat_lines.next().map(|l| l.trim().to_owned());

    // find exits non-zero when one of the directories does not exist: judge by what it printed.
    let files = String::from_utf8_lossy(&module_files.stdout).into_owned();
    let modules = files.contains(".ko").then(|| ModuleListing {
        files,
        loaded: if loaded.success() {
            loaded.out()
        } else {
            String::new()
        },
    });

    let facts = Facts {
        serial: dev.serial().to_owned(),
        model: prop("ro.product.model"),
        android: prop("ro.build.version.release"),
        sdk: prop("ro.build.version.sdk").and_then(|s| s.parse().ok()),
        abi: prop("ro.product.cpu.abi"),
        machine,
        kernel_release,
        root,
        selinux,
        nf_tables: config_gz.as_ref().ok().and_then(|gz| {
            let text = bootstrap::kernel::read_config_gz(gz).ok()?;
            let config = bootstrap::kernel::parse_config(&text);
            Some(matches!(
                config.get("NF_TABLES").map(String::as_str),
                Some("y" | "m")
            ))
        }),
        kernel: config_gz.and_then(|gz| kernel_missing(&gz, modules.as_ref())),
        cgroup_mounts,
        data_free,
        battery_percent,
        battery_status,
    };
    Ok((facts, extra))
}

/// A verdict on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but the owner should know.
    Warn,
    /// Blocks enrolment.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the doctor's report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Stable name: `arch`, `android`, `root`, `selinux`, `kernel`, `cgroups`, `iptables`,
    /// `storage`, `battery`.
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The doctor's report for one phone.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The phone.
    pub serial: String,
    /// Its model, when known.
    pub model: Option<String>,
    /// The worst item verdict.
    pub overall: Verdict,
    /// One per item, in a fixed order.
    pub items: Vec<Item>,
    /// Required kernel options missing (also in the `kernel` item's detail).
    pub kernel_missing_required: Vec<String>,
    /// Optional kernel options missing.
    pub kernel_missing_optional: Vec<String>,
}

impl Report {
    /// The items that fail, for error messages.
    pub fn failures(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.verdict == Verdict::Fail)
    }
}

/// Required and optional kernel options missing from a kernel config text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelMissing {
    /// Required options not set.
    pub required: Vec<String>,
    /// Optional options not set.
    pub optional: Vec<String>,
    /// Of those, the ones built as a module (`=m`) that is not on the phone: option → module.
    pub not_shipped: BTreeMap<String, String>,
}

impl KernelMissing {
    fn describe(&self, names: &[String]) -> String {
        names
            .iter()
            .map(|n| match self.not_shipped.get(n) {
                Some(m) => format!("{n} (=m, but {m}.ko is not on the phone)"),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where Android keeps kernel modules: GKI's own (`system_dlkm`), the vendor's, and the
/// recovery/first-stage location.
pub const MODULE_DIRS: &[&str] = &[
    "/system_dlkm/lib/modules",
    "/vendor_dlkm/lib/modules",
    "/vendor/lib/modules",
    "/odm/lib/modules",
    "/lib/modules",
];

/// The phone's kernel modules as listed on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleListing {
    /// `find MODULE_DIRS -name '*.ko*'` output.
    pub files: String,
    /// `/proc/modules`.
    pub loaded: String,
}

/// Checks a kernel config (what `/proc/config.gz` holds, gzipped) against k3s' needs. With the
/// phone's module listing, a `=m` option whose module the phone does not have counts as missing
/// (stock GKI builds `br_netfilter` as a module but does not ship it).
pub fn kernel_missing(
    config_gz: &[u8],
    modules: Option<&ModuleListing>,
) -> Result<KernelMissing, String> {
    use bootstrap::kernel::{ModuleIndex, OptionState};
    let text = bootstrap::kernel::read_config_gz(config_gz)
        .map_err(|e| format!("/proc/config.gz unreadable: {e}"))?;
    let index = modules.map(|m| {
        let mut index = ModuleIndex::default();
        index.add_paths(&m.files);
        index.add_loaded(&m.loaded);
        index
    });
    let report = bootstrap::kernel::check_kernel_config_with_modules(&text, index.as_ref());
    let names = |list: &[OptionState]| list.iter().map(|o| o.name.clone()).collect();
    Ok(KernelMissing {
        required: names(&report.required_missing),
        optional: names(&report.optional_missing),
        not_shipped: report
            .required_missing
            .iter()
            .chain(&report.optional_missing)
            .filter_map(|o| Some((o.name.clone(), o.module_not_shipped.clone()?)))
            .collect(),
    })
}

/// Judges the facts: one small judge per item, in a fixed order. `need_bytes`: free space on
/// /data that enrolment needs.
pub fn assess(facts: &Facts, need_bytes: u64) -> Report {
    let (kernel_item, kernel_missing) = judge_kernel(facts);
    let items = vec![
        judge_arch(facts),
        judge_android(facts),
        judge_root(facts),
        judge_selinux(facts),
        kernel_item,
        judge_cgroups(facts),
        judge_iptables(facts),
        judge_storage(facts, need_bytes),
        judge_battery(facts),
    ];
    let overall = items.iter().map(|i| i.verdict).max().unwrap_or(Verdict::Ok);
    Report {
        serial: facts.serial.clone(),
        model: facts.model.clone(),
        overall,
        items,
        kernel_missing_required: kernel_missing.required,
        kernel_missing_optional: kernel_missing.optional,
    }
}

fn item(name: &'static str, verdict: Verdict, detail: String, fix: Option<&str>) -> Item {
    Item {
        name,
        verdict,
        detail,
        fix: fix.map(str::to_owned),
    }
}

fn judge_arch(facts: &Facts) -> Item {
    let abi = facts.abi.clone().unwrap_or_default();
    let arch_desc = format!(
        "{} (ABI {})",
        facts.machine,
        if abi.is_empty() { "?" } else { &abi }
    );
    if facts.machine == "aarch64" || abi == "arm64-v8a" {
        item("arch", Verdict::Ok, arch_desc, None)
    } else if facts.machine.starts_with("armv") || abi.starts_with("armeabi") {
        item(
            "arch",
            Verdict::Fail,
            format!("{arch_desc}: a 32-bit ARM (armv7) phone"),
            Some(
                "not supported: node-runtime and k3s are built for aarch64 only, and k3s has no 32-bit ARM agent for Android kernels; use a 64-bit phone",
            ),
        )
    } else {
        item(
            "arch",
            Verdict::Fail,
            format!("{arch_desc}: not ARM64"),
            Some("only aarch64 phones can be workers"),
        )
    }
}

fn judge_android(facts: &Facts) -> Item {
    let android = match (&facts.android, facts.sdk) {
        (Some(r), Some(s)) => format!("Android {r} (SDK {s})"),
        (Some(r), None) => format!("Android {r}"),
        _ => "unknown Android version".to_owned(),
    };
    if facts.sdk.is_some_and(|s| s < 24) {
        item(
            "android",
            Verdict::Fail,
            android,
            Some("Android 7 or newer is needed (shell protocol v2, cgroups)"),
        )
    } else {
        item("android", Verdict::Ok, android, None)
    }
}

fn judge_root(facts: &Facts) -> Item {
    match &facts.root {
        Root::Granted(how) => item("root", Verdict::Ok, how.clone(), None),
        Root::Denied(msg) => item(
            "root",
            Verdict::Fail,
            format!("su denied the shell: {msg}"),
            Some(
                "open Magisk (or KernelSU) > Superuser, allow `Shell`, then retry; accept the prompt on the phone if one appears",
            ),
        ),
        Root::Absent => item(
            "root",
            Verdict::Fail,
            "not rooted (no su)".into(),
            Some(
                "root the phone with Magisk or KernelSU (unlocked bootloader needed); see PHONES.md",
            ),
        ),
    }
}

fn judge_selinux(facts: &Facts) -> Item {
    let detail = match facts.selinux.as_deref() {
        Some("Enforcing") => {
            "Enforcing (node-runtime runs in the root manager's permissive su domain)".into()
        }
        Some(mode) => mode.to_owned(),
        None => "unknown (no getenforce)".into(),
    };
    item("selinux", Verdict::Ok, detail, None)
}

fn judge_kernel(facts: &Facts) -> (Item, KernelMissing) {
    let release = &facts.kernel_release;
    let missing = match &facts.kernel {
        Err(why) => {
            return (
                item(
                    "kernel",
                    Verdict::Warn,
                    format!("{release}: {why}; options not checked"),
                    Some(
                        "a kernel built without CONFIG_IKCONFIG_PROC cannot be checked; if k3s fails, see PHONES.md (kernels)",
                    ),
                ),
                KernelMissing::default(),
            );
        }
        Ok(m) => m,
    };
    let it = if !missing.required.is_empty() {
        item(
            "kernel",
            Verdict::Fail,
            format!(
                "{release}: missing required options: {}",
                missing.describe(&missing.required)
            ),
            Some(
                "this kernel cannot run k3s (a stock GKI kernel lacks these); flash a kernel built with them, see PHONES.md (kernels)",
            ),
        )
    } else if !missing.optional.is_empty() {
        item(
            "kernel",
            Verdict::Warn,
            format!(
                "{release}: all required options; optional missing: {}",
                missing.describe(&missing.optional)
            ),
            Some("k3s runs; without VXLAN use flannel host-gw or wireguard-native"),
        )
    } else {
        item(
            "kernel",
            Verdict::Ok,
            format!("{release}: all required and optional options"),
            None,
        )
    };
    (it, missing.clone())
}

fn judge_cgroups(facts: &Facts) -> Item {
    let has =
        |pred: &dyn Fn(&(String, String, String)) -> bool| facts.cgroup_mounts.iter().any(pred);
    let v2 = has(&|m| m.1 == "cgroup2");
    let v1_memory = has(&|m| m.1 == "cgroup" && (m.2.contains("memory") || m.0.ends_with("memcg")));
    let v1_count = facts
        .cgroup_mounts
        .iter()
        .filter(|m| m.1 == "cgroup")
        .count();
    let layout = match (v2, v1_count) {
        (true, 0) => "v2 (unified)".to_owned(),
        (true, n) => format!("hybrid: cgroup2 + {n} v1 controller mounts"),
        (false, n) => format!("v1: {n} controller mounts"),
    };
    if v2 && v1_count == 0 {
        item("cgroups", Verdict::Ok, layout, None)
    } else if v2 || v1_memory {
        // Kubernetes 1.35+ (KEP-5573): the kubelet exits on a v1 or hybrid host by default.
        item(
            "cgroups",
            Verdict::Warn,
            format!(
                "{layout}: k3s >= 1.35 refuses cgroup v1 unless --kubelet-arg=fail-cgroupv1=false, which armfleet sets"
            ),
            Some(
                "nothing to do; cgroup v1 support is deprecated upstream, a kernel with cgroup v2 is the lasting fix",
            ),
        )
    } else {
        item(
            "cgroups",
            Verdict::Fail,
            if facts.cgroup_mounts.is_empty() {
                "no cgroup filesystem mounted".into()
            } else {
                format!("{layout}, none with the memory controller")
            },
            Some("k3s needs cgroup v2 or a v1 memory controller; use a kernel with CONFIG_MEMCG"),
        )
    }
}

fn judge_iptables(facts: &Facts) -> Item {
    // node-runtime decides the same way (iptables::decide), on the phone.
    let kernel = match facts.nf_tables {
        Some(false) => "; this kernel has no NF_TABLES",
        _ => "",
    };
    item(
        "iptables",
        Verdict::Ok,
        format!(
            "legacy: Android's netd uses iptables-legacy, and k3s must share its tables{kernel}"
        ),
        None,
    )
}

fn judge_storage(facts: &Facts, need_bytes: u64) -> Item {
    match facts.data_free {
        Some(free) if free >= need_bytes => item(
            "storage",
            Verdict::Ok,
            format!(
                "{} free on /data ({} needed)",
                human(free),
                human(need_bytes)
            ),
            None,
        ),
        Some(free) => item(
            "storage",
            Verdict::Fail,
            format!(
                "not enough space on /data: {} free, {} needed",
                human(free),
                human(need_bytes)
            ),
            Some("free space on the phone (or lower k3s.data_image.size_mib in the topology)"),
        ),
        None => item(
            "storage",
            Verdict::Warn,
            "free space on /data unknown".into(),
            None,
        ),
    }
}

fn judge_battery(facts: &Facts) -> Item {
    match (facts.battery_percent, facts.battery_status.as_deref()) {
        (Some(p), Some(s)) if p < 20 && s == "Discharging" => item(
            "battery",
            Verdict::Warn,
            format!("{p}%, {s}"),
            Some("plug the phone in: a worker lives on its charger"),
        ),
        (Some(p), s) => item(
            "battery",
            Verdict::Ok,
            format!("{p}%{}", s.map(|s| format!(", {s}")).unwrap_or_default()),
            None,
        ),
        _ => item(
            "battery",
            Verdict::Ok,
            "no battery information".into(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            serial: "S1".into(),
            model: Some("Pixel".into()),
            android: Some("14".into()),
            sdk: Some(34),
            abi: Some("arm64-v8a".into()),
            machine: "aarch64".into(),
            kernel_release: "6.1.0".into(),
            root: Root::Granted("Magisk 27.0".into()),
            selinux: Some("Enforcing".into()),
            kernel: Ok(KernelMissing::default()),
            nf_tables: Some(true),
            cgroup_mounts: vec![("/sys/fs/cgroup".into(), "cgroup2".into(), "rw".into())],
            data_free: Some(10 << 30),
            battery_percent: Some(80),
            battery_status: Some("Charging".into()),
        }
    }

    /// A real kernel config: the build machine's Debian arm64 one (it has every required
    /// option, br_netfilter as a module), gzipped as a phone serves it.
    fn debian_config_gz() -> Vec<u8> {
        use std::io::Write;
        let text = include_str!("../../tests/data/kernel-configs/debian-6.1.0-56-arm64.config");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_module_the_phone_lacks_is_named_in_the_kernel_line() {
        let gz = debian_config_gz();
        assert_eq!(
            kernel_missing(&gz, None).unwrap().required,
            Vec::<String>::new()
        );
        // The phone lists its modules, and br_netfilter.ko is not among them.
        let listing = ModuleListing {
            files: "/vendor/lib/modules/veth.ko\n".into(),
            loaded: String::new(),
        };
        let mut f = facts();
        f.kernel = kernel_missing(&gz, Some(&listing));
        let r = assess(&f, DEFAULT_NEED_BYTES);
        assert_eq!(r.overall, Verdict::Fail);
        let kernel = r.items.iter().find(|i| i.name == "kernel").unwrap();
        assert!(
            kernel
                .detail
                .contains("BRIDGE_NETFILTER (=m, but br_netfilter.ko is not on the phone)"),
            "{}",
            kernel.detail
        );
    }

    #[test]
    fn good_phone_passes() {
        let r = assess(&facts(), DEFAULT_NEED_BYTES);
        assert_eq!(r.overall, Verdict::Ok, "{r:?}");
    }

    #[test]
    fn armv7_fails_with_reason() {
        let mut f = facts();
        f.machine = "armv7l".into();
        f.abi = Some("armeabi-v7a".into());
        let r = assess(&f, DEFAULT_NEED_BYTES);
        assert_eq!(r.overall, Verdict::Fail);
        let arch = r.items.iter().find(|i| i.name == "arch").unwrap();
        assert!(arch.detail.contains("armv7"), "{arch:?}");
        assert!(arch.fix.as_ref().unwrap().contains("aarch64"));
    }

    #[test]
    fn gki_kernel_lists_missing_options() {
        let mut f = facts();
        f.kernel = Ok(KernelMissing {
            required: vec!["CONFIG_PID_NS".into(), "CONFIG_IPC_NS".into()],
            optional: vec!["CONFIG_VXLAN".into()],
            not_shipped: BTreeMap::new(),
        });
        let r = assess(&f, DEFAULT_NEED_BYTES);
        let k = r.items.iter().find(|i| i.name == "kernel").unwrap();
        assert_eq!(k.verdict, Verdict::Fail);
        assert!(k.detail.contains("CONFIG_PID_NS CONFIG_IPC_NS"), "{k:?}");
    }

    #[test]
    fn small_data_partition_fails() {
        let mut f = facts();
        f.data_free = Some(100 << 20);
        let r = assess(&f, DEFAULT_NEED_BYTES);
        let s = r.items.iter().find(|i| i.name == "storage").unwrap();
        assert_eq!(s.verdict, Verdict::Fail);
        assert!(s.detail.contains("100.0 MiB free"), "{s:?}");
    }

    #[test]
    fn cgroup_v1_and_hybrid_warn_that_k3s_needs_the_kubelet_override() {
        let mut f = facts();
        f.cgroup_mounts = vec![
            ("/dev/memcg".into(), "cgroup".into(), "rw,memory".into()),
            ("/dev/cpuset".into(), "cgroup".into(), "rw,cpuset".into()),
        ];
        let r = assess(&f, DEFAULT_NEED_BYTES);
        let c = r.items.iter().find(|i| i.name == "cgroups").unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.detail.starts_with("v1:") && c.detail.contains("fail-cgroupv1=false"),
            "{c:?}"
        );
        f.cgroup_mounts
            .push(("/sys/fs/cgroup".into(), "cgroup2".into(), "rw".into()));
        let c = assess(&f, DEFAULT_NEED_BYTES)
            .items
            .into_iter()
            .find(|i| i.name == "cgroups")
            .unwrap();
        assert!(c.detail.starts_with("hybrid"), "{c:?}");
        assert_eq!(c.verdict, Verdict::Warn);
        let i = assess(&facts(), DEFAULT_NEED_BYTES)
            .items
            .into_iter()
            .find(|i| i.name == "iptables")
            .unwrap();
        assert!(i.detail.starts_with("legacy"), "{i:?}");
    }

    #[test]
    fn getprop_dump_parses() {
        let p = parse_getprop("[ro.build.version.sdk]: [34]\n[ro.product.model]: [Pixel 7]\n");
        assert_eq!(p["ro.product.model"], "Pixel 7");
    }
}
