//! `check-kernel`: does this kernel have what `k3s agent` needs?
//!
//! The list follows k3s' own `check-config.sh` (namespaces, cgroups and their controllers, veth,
//! bridge, bridge netfilter, iptables/nat targets, xt matches, seccomp, keys) plus the optional
//! parts (user namespaces, IPVS, VXLAN, overlayfs). It is a pure function over the text of a
//! kernel `.config` so that `phonectl doctor` runs it on the host over the phone's
//! `/proc/config.gz` before anything is written to the phone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

/// How much a kernel option matters to k3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// k3s does not work without it.
    Required,
    /// A feature is lost without it (e.g. VXLAN: flannel's default backend).
    Optional,
}

/// One kernel requirement: `CONFIG_<name>` and why k3s wants it.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// The option without the `CONFIG_` prefix.
    pub name: &'static str,
    /// Required or optional.
    pub need: Need,
    /// What it is for, shown next to a missing option.
    pub why: &'static str,
}

const fn req(name: &'static str, why: &'static str) -> Requirement {
    Requirement {
        name,
        need: Need::Required,
        why,
    }
}
const fn opt(name: &'static str, why: &'static str) -> Requirement {
    Requirement {
        name,
        need: Need::Optional,
        why,
    }
}

/// The requirements, as k3s' `check-config.sh` lists them.
pub const REQUIREMENTS: &[Requirement] = &[
    req("NAMESPACES", "namespaces"),
    req("NET_NS", "network namespaces (pods)"),
    req("PID_NS", "PID namespaces (pods)"),
    req("IPC_NS", "IPC namespaces (pods)"),
    req("UTS_NS", "UTS namespaces (pods)"),
    req("CGROUPS", "control groups"),
    req("CGROUP_PIDS", "pids cgroup controller"),
    req("CGROUP_CPUACCT", "cpuacct cgroup controller"),
    req("CGROUP_DEVICE", "devices cgroup controller"),
    req("CGROUP_FREEZER", "freezer cgroup controller"),
    req("CGROUP_SCHED", "cpu cgroup controller"),
    req("CPUSETS", "cpuset cgroup controller"),
    req("MEMCG", "memory cgroup controller"),
    req("SECCOMP", "seccomp (container runtime)"),
    req("KEYS", "kernel keyrings"),
    req("VETH", "veth pairs (pod network)"),
    req("BRIDGE", "bridge (cni0)"),
    req("BRIDGE_NETFILTER", "iptables on bridged traffic (services)"),
    req("IP_NF_FILTER", "iptables filter table"),
    req("IP_NF_TARGET_MASQUERADE", "iptables MASQUERADE"),
    req("IP_NF_TARGET_REJECT", "iptables REJECT"),
    req("IP_NF_NAT", "iptables nat table"),
    req("NF_NAT", "netfilter NAT"),
    req("NF_CONNTRACK", "connection tracking"),
    req("POSIX_MQUEUE", "POSIX message queues"),
    req(
        "NETFILTER_XT_MATCH_ADDRTYPE",
        "xt addrtype match (kube-proxy)",
    ),
    req("NETFILTER_XT_MATCH_CONNTRACK", "xt conntrack match"),
    req("NETFILTER_XT_MATCH_IPVS", "xt ipvs match"),
    req(
        "NETFILTER_XT_MATCH_COMMENT",
        "xt comment match (kube-proxy rules)",
    ),
    req("NETFILTER_XT_MATCH_MULTIPORT", "xt multiport match"),
    req(
        "NETFILTER_XT_MATCH_STATISTIC",
        "xt statistic match (service load balancing)",
    ),
    opt("USER_NS", "user namespaces (rootless, some pods)"),
    opt("IP_VS", "IPVS (kube-proxy ipvs mode)"),
    opt("IP_VS_RR", "IPVS round robin"),
    opt(
        "VXLAN",
        "VXLAN (flannel's default backend; else use host-gw or wireguard-native)",
    ),
    opt("OVERLAY_FS", "overlayfs (the default snapshotter)"),
    opt("EXT4_FS", "ext4 (the k3s data image on phones)"),
    opt(
        "BLK_DEV_LOOP",
        "loop devices (the k3s data image on phones)",
    ),
    opt("CGROUP_BPF", "cgroup BPF (device control on cgroup v2)"),
    opt("NETFILTER_XT_MARK", "xt mark (flannel, kube-proxy)"),
];

/// The state of one option in a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionState {
    /// The option without `CONFIG_`.
    pub name: String,
    /// Required or optional.
    pub need: Need,
    /// `y`, `m`, or `None` when not set.
    pub value: Option<String>,
    /// What it is for.
    pub why: String,
    /// Set when the option is `m` but the kernel's module list (when one was given) has no such
    /// module: the module that would be needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_not_shipped: Option<String>,
}

/// The verdict of [`check_kernel_config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReport {
    /// Required options that are not set: k3s will not work.
    pub required_missing: Vec<OptionState>,
    /// Optional options that are not set.
    pub optional_missing: Vec<OptionState>,
    /// Options that are set (`y` or `m`).
    pub ok: Vec<OptionState>,
    /// The kernel version named in the config's header, when present.
    pub kernel_version: Option<String>,
    /// cgroup controllers the running kernel enables (`/proc/cgroups`), when checked locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_controllers: Option<Vec<String>>,
}

impl KernelReport {
    /// True when every required option is there.
    pub fn passes(&self) -> bool {
        self.required_missing.is_empty()
    }

    /// The names of the missing required options (`CONFIG_` prefix included), comma-separated.
    pub fn missing_required_names(&self) -> String {
        names(&self.required_missing)
    }

    /// A human report: one line per missing option, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.kernel_version {
            out.push_str(&format!("kernel {v}\n"));
        }
        for (kind, list) in [
            ("required", &self.required_missing),
            ("optional", &self.optional_missing),
        ] {
            for o in list {
                out.push_str(&format!("{kind} missing: CONFIG_{} ({})", o.name, o.why));
                if let Some(m) = &o.module_not_shipped {
                    out.push_str(&format!(
                        ": built as module {m}, which this kernel does not ship"
                    ));
                }
                out.push('\n');
            }
        }
        if let Some(c) = &self.cgroup_controllers {
            out.push_str(&format!("cgroup controllers enabled: {}\n", c.join(" ")));
        }
        if self.passes() {
            out.push_str(&format!(
                "ok: all {} required options present ({} optional missing)\n",
                self.ok.iter().filter(|o| o.need == Need::Required).count(),
                self.optional_missing.len()
            ));
        } else {
            out.push_str(&format!(
                "FAIL: {} required option(s) missing: {}: this kernel cannot run k3s; build or flash a kernel with them (see PHONES.md)\n",
                self.required_missing.len(),
                self.missing_required_names()
            ));
        }
        out
    }
}

fn names(list: &[OptionState]) -> String {
    list.iter()
        .map(|o| format!("CONFIG_{}", o.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a kernel config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The gzip stream is broken.
    #[error("{origin}: not a readable config.gz ({source}): pull /proc/config.gz again")]
    Gzip {
        /// Where it came from.
        origin: String,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The text has no `CONFIG_` lines at all.
    #[error("{origin}: no CONFIG_ lines: this is not a kernel config")]
    NotAConfig {
        /// Where it came from.
        origin: String,
    },
    /// No config found on this machine.
    #[error(
        "no kernel config found (tried {tried}): the kernel needs CONFIG_IKCONFIG_PROC, or pass --config-gz PATH"
    )]
    NoConfig {
        /// Paths tried.
        tried: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Parses `CONFIG_X=y|m|value` and `# CONFIG_X is not set` lines.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("CONFIG_")
            && let Some((k, v)) = rest.split_once('=')
        {
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    map
}

/// The module a `=m` option builds, for the options k3s needs that distributions build as modules.
/// Options not listed here count as present when `m` (no way to tell which module to look for).
fn module_of(option: &str) -> Option<&'static str> {
    Some(match option {
        "VETH" => "veth",
        "BRIDGE" => "bridge",
        "BRIDGE_NETFILTER" => "br_netfilter",
        "IP_NF_FILTER" => "iptable_filter",
        "IP_NF_NAT" => "iptable_nat",
        "IP_NF_TARGET_REJECT" => "ipt_REJECT",
        "NF_NAT" => "nf_nat",
        "NF_CONNTRACK" => "nf_conntrack",
        "NETFILTER_XT_MATCH_ADDRTYPE" => "xt_addrtype",
        "NETFILTER_XT_MATCH_CONNTRACK" => "xt_conntrack",
        "NETFILTER_XT_MATCH_IPVS" => "xt_ipvs",
        "NETFILTER_XT_MATCH_COMMENT" => "xt_comment",
        "NETFILTER_XT_MATCH_MULTIPORT" => "xt_multiport",
        "NETFILTER_XT_MATCH_STATISTIC" => "xt_statistic",
        "NETFILTER_XT_MARK" => "xt_mark",
        "IP_VS" => "ip_vs",
        "IP_VS_RR" => "ip_vs_rr",
        "VXLAN" => "vxlan",
        "OVERLAY_FS" => "overlay",
        "EXT4_FS" => "ext4",
        "BLK_DEV_LOOP" => "loop",
        _ => return None,
    })
}

/// The kernel modules a device has: from `modules.dep`/`modules.builtin` text, a listing of
/// `.ko` files, and `/proc/modules`. A `=m` option only helps when its module is really there:
/// GKI phones build e.g. `br_netfilter` as a module but ship only the vendor's module list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    names: std::collections::BTreeSet<String>,
}

impl ModuleIndex {
    /// Adds every `.ko` path found in `text` (modules.dep, modules.builtin, `find` output).
    pub fn add_paths(&mut self, text: &str) {
        for token in text.split(|c: char| c.is_whitespace() || c == ':') {
            let base = token.rsplit('/').next().unwrap_or(token);
            let stem = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"]
                .iter()
                .find_map(|ext| base.strip_suffix(ext));
            if let Some(stem) = stem.filter(|s| !s.is_empty()) {
                self.names.insert(normalize_module(stem));
            }
        }
    }

    /// Adds the loaded modules of `/proc/modules` text (first field of each line).
    pub fn add_loaded(&mut self, proc_modules: &str) {
        for line in proc_modules.lines() {
            if let Some(name) = line.split_whitespace().next() {
                self.names.insert(normalize_module(name));
            }
        }
    }

    /// True when no module at all was found (then nothing can be concluded from it).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether the module is there (`-` and `_` are the same to modprobe).
    pub fn has(&self, module: &str) -> bool {
        self.names.contains(&normalize_module(module))
    }
}

fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Checks a kernel `.config` text against [`REQUIREMENTS`].
pub fn check_kernel_config(text: &str) -> KernelReport {
    check_kernel_config_with_modules(text, None)
}

/// Like [`check_kernel_config`], and a `=m` option whose module is not in `modules` counts as
/// missing. An empty index is ignored (a listing that found nothing proves nothing).
pub fn check_kernel_config_with_modules(text: &str, modules: Option<&ModuleIndex>) -> KernelReport {
    let modules = modules.filter(|m| !m.is_empty());
    let map = parse_config(text);
    let mut report = KernelReport {
        required_missing: Vec::new(),
        optional_missing: Vec::new(),
        ok: Vec::new(),
        kernel_version: kernel_version(text),
        cgroup_controllers: None,
    };
    for r in REQUIREMENTS {
        let value = map
            .get(r.name)
            .filter(|v| v.as_str() == "y" || v.as_str() == "m")
            .cloned()
            // Kernels from 5.x on have the masquerade target only under NETFILTER_XT.
            .or_else(|| {
                (r.name == "IP_NF_TARGET_MASQUERADE")
                    .then(|| map.get("NETFILTER_XT_TARGET_MASQUERADE").cloned())
                    .flatten()
                    .filter(|v| v == "y" || v == "m")
            });
        let module_not_shipped = match (value.as_deref(), modules, module_of(r.name)) {
            (Some("m"), Some(index), Some(module)) if !index.has(module) => Some(module.to_owned()),
            _ => None,
        };
        let state = OptionState {
            name: r.name.to_owned(),
            need: r.need,
            value: value.clone(),
            why: r.why.to_owned(),
            module_not_shipped: module_not_shipped.clone(),
        };
        let value = value.filter(|_| module_not_shipped.is_none());
        match (value, r.need) {
            (Some(_), _) => report.ok.push(state),
            (None, Need::Required) => report.required_missing.push(state),
            (None, Need::Optional) => report.optional_missing.push(state),
        }
    }
    report
}

/// Like [`check_kernel_config_with_modules`], but refuses text that is not a kernel config.
pub fn check_kernel_text(
    text: &str,
    origin: &str,
    modules: Option<&ModuleIndex>,
) -> Result<KernelReport, KernelError> {
    if !text.lines().any(|l| l.trim_start().starts_with("CONFIG_")) {
        return Err(KernelError::NotAConfig {
            origin: origin.to_owned(),
        });
    }
    Ok(check_kernel_config_with_modules(text, modules))
}

fn kernel_version(text: &str) -> Option<String> {
    // "# Linux/arm64 6.1.75 Kernel Configuration"
    text.lines().take(10).find_map(|l| {
        let l = l.trim_start_matches('#').trim();
        let rest = l.strip_prefix("Linux/")?;
        let (_, after) = rest.split_once(' ')?;
        Some(
            after
                .trim_end_matches("Kernel Configuration")
                .trim()
                .to_owned(),
        )
    })
}

/// Decompresses a `config.gz` (as found in `/proc/config.gz`).
pub fn read_config_gz(bytes: &[u8]) -> Result<String, KernelError> {
    read_config_gz_from(bytes, "config.gz")
}

fn read_config_gz_from(bytes: &[u8], origin: &str) -> Result<String, KernelError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|source| KernelError::Gzip {
            origin: origin.to_owned(),
            source,
        })?;
    Ok(text)
}

/// Reads a config file: gzip when it starts with the gzip magic, plain text otherwise.
pub fn read_config_file(path: &std::path::Path) -> Result<String, KernelError> {
    let bytes = std::fs::read(path).map_err(|source| KernelError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_config_gz_from(&bytes, &path.display().to_string())
    } else {
        String::from_utf8(bytes).map_err(|_| KernelError::NotAConfig {
            origin: path.display().to_string(),
        })
    }
}

/// The running kernel's config: `/proc/config.gz`, else `/boot/config-$(uname -r)`.
pub fn local_config() -> Result<(String, String), KernelError> {
    let mut tried = vec!["/proc/config.gz".to_owned()];
    if let Ok(text) = read_config_file(std::path::Path::new("/proc/config.gz")) {
        return Ok((text, "/proc/config.gz".into()));
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let p = format!("/boot/config-{}", release.trim());
        if let Ok(text) = read_config_file(std::path::Path::new(&p)) {
            return Ok((text, p));
        }
        tried.push(p);
    }
    Err(KernelError::NoConfig {
        tried: tried.join(", "),
    })
}

/// The running kernel's modules: `/lib/modules/$(uname -r)/modules.{dep,builtin}` and
/// `/proc/modules`; `None` when there is no module directory to judge by.
pub fn local_modules() -> Option<ModuleIndex> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let dir = std::path::Path::new("/lib/modules").join(release.trim());
    let dep = std::fs::read_to_string(dir.join("modules.dep")).ok()?;
    let mut index = ModuleIndex::default();
    index.add_paths(&dep);
    if let Ok(builtin) = std::fs::read_to_string(dir.join("modules.builtin")) {
        index.add_paths(&builtin);
    }
    if let Ok(loaded) = std::fs::read_to_string("/proc/modules") {
        index.add_loaded(&loaded);
    }
    Some(index)
}

/// The enabled controllers listed in `/proc/cgroups` text (`#subsys_name hierarchy num enabled`).
pub fn enabled_cgroup_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_unset_options() {
        let text = "# Linux/arm64 6.1.0 Kernel Configuration\nCONFIG_PID_NS=y\n# CONFIG_IPC_NS is not set\nCONFIG_VETH=m\n";
        let r = check_kernel_config(text);
        assert_eq!(r.kernel_version.as_deref(), Some("6.1.0"));
        assert!(r.ok.iter().any(|o| o.name == "PID_NS"));
        assert!(
            r.ok.iter()
                .any(|o| o.name == "VETH" && o.value.as_deref() == Some("m"))
        );
        assert!(r.required_missing.iter().any(|o| o.name == "IPC_NS"));
        assert!(!r.passes());
        assert!(r.render().contains("CONFIG_IPC_NS"));
    }

    #[test]
    fn a_module_option_needs_its_module_when_a_list_is_given() {
        let text = "CONFIG_BRIDGE=y\nCONFIG_BRIDGE_NETFILTER=m\nCONFIG_VETH=m\nCONFIG_VXLAN=m\n";
        let mut index = ModuleIndex::default();
        index.add_paths("/vendor_dlkm/lib/modules/veth.ko\nkernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n");
        let with = check_kernel_config_with_modules(text, Some(&index));
        let bnf = with
            .required_missing
            .iter()
            .find(|o| o.name == "BRIDGE_NETFILTER")
            .expect("br_netfilter not shipped is missing");
        assert_eq!(bnf.module_not_shipped.as_deref(), Some("br_netfilter"));
        assert!(with.ok.iter().any(|o| o.name == "VETH"));
        assert!(with.ok.iter().any(|o| o.name == "VXLAN"));
        assert!(with.ok.iter().any(|o| o.name == "BRIDGE"));
        assert!(
            with.render()
                .contains("CONFIG_BRIDGE_NETFILTER (iptables on bridged traffic (services)): built as module br_netfilter, which this kernel does not ship"),
            "{}",
            with.render()
        );
        // Loaded counts, dashes are underscores.
        index.add_loaded("br_netfilter 32768 0 - Live 0x0\n");
        let loaded = check_kernel_config_with_modules(text, Some(&index));
        assert!(loaded.ok.iter().any(|o| o.name == "BRIDGE_NETFILTER"));
        // No list, or an empty one: `m` is taken at its word.
        let without = check_kernel_config(text);
        assert!(without.ok.iter().any(|o| o.name == "BRIDGE_NETFILTER"));
        let empty = check_kernel_config_with_modules(text, Some(&ModuleIndex::default()));
        assert_eq!(empty, without);
    }

    #[test]
    fn text_without_options_is_refused() {
        let e = check_kernel_text("hello\n", "x", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a kernel config"), "{e}");
    }

    #[test]
    fn proc_cgroups_enabled_only() {
        let t = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t1\t1\nmemory\t0\t1\t0\npids\t0\t1\t1\n";
        assert_eq!(enabled_cgroup_controllers(t), vec!["cpuset", "pids"]);
    }
}
