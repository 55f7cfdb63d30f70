//! Which iptables the agent and the rootfs use. k3s programs its rules through whichever
//! `iptables` it finds (its bundled one honours `IPTABLES_MODE`), and mixing legacy and nft rules
//! on one host breaks forwarding. So:
//!
//! - on a phone: legacy, always — Android's netd programs iptables-legacy;
//! - on a kernel without `NF_TABLES`: legacy — the nft backend cannot work there;
//! - otherwise (a Pi with Debian's kernel): Debian's default is left alone.
//!
//! [`decide`] is pure; [`apply`] makes the rootfs's `iptables` alternative and the agent's
//! environment agree with the decision, doing nothing when they already do.

use bootstrap::status::Iptables;
use std::path::Path;

/// What the agent is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `legacy` or `default`.
    pub backend: &'static str,
    /// Why, in words (what `status` and `doctor` show).
    pub reason: String,
}

impl Decision {
    /// Whether legacy is forced.
    pub fn legacy(&self) -> bool {
        self.backend == "legacy"
    }

    /// The status record's part.
    pub fn to_status(&self) -> Iptables {
        Iptables {
            backend: self.backend.into(),
            reason: self.reason.clone(),
        }
    }
}

/// Whether a kernel config offers nf_tables (`CONFIG_NF_TABLES=y` or `=m`); None without one.
pub fn kernel_has_nf_tables(config_text: Option<&str>) -> Option<bool> {
    let config = bootstrap::kernel::parse_config(config_text?);
    Some(matches!(
        config.get("NF_TABLES").map(String::as_str),
        Some("y" | "m")
    ))
}

/// Decides the backend for a worker: `phone` when it runs beside Android, `nf_tables` what its
/// kernel config says (None: unreadable).
pub fn decide(phone: bool, nf_tables: Option<bool>) -> Decision {
    match (phone, nf_tables) {
        (true, Some(false)) => Decision {
            backend: "legacy",
            reason: "Android's netd uses iptables-legacy, and this kernel has no NF_TABLES".into(),
        },
        (true, _) => Decision {
            backend: "legacy",
            reason: "Android's netd uses iptables-legacy: k3s must write to the same tables".into(),
        },
        (false, Some(false)) => Decision {
            backend: "legacy",
            reason: "this kernel has no NF_TABLES: the nft backend cannot work".into(),
        },
        (false, Some(true)) => Decision {
            backend: "default",
            reason: "the kernel has nf_tables: Debian's default is kept".into(),
        },
        (false, None) => Decision {
            backend: "default",
            reason: "no kernel config to read: Debian's default is kept".into(),
        },
    }
}

/// The environment the agent gets for this decision (k3s' bundled iptables reads it).
pub fn agent_env(d: &Decision) -> Option<(&'static str, &'static str)> {
    d.legacy().then_some(("IPTABLES_MODE", "legacy"))
}

/// Points the rootfs's `iptables` and `ip6tables` alternatives at the legacy binaries when the
/// decision is legacy and they point elsewhere (`root` is `/`: this runs inside the worker's
/// root). Returns what it did, for the log.
pub fn apply(d: &Decision, root: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    if !d.legacy() {
        return notes;
    }
    for name in ["iptables", "ip6tables"] {
        let legacy = root.join(format!("usr/sbin/{name}-legacy"));
        if !legacy.exists() {
            continue;
        }
        let link = root.join(format!("etc/alternatives/{name}"));
        if std::fs::read_link(&link)
            .is_ok_and(|t| t == Path::new(&format!("/usr/sbin/{name}-legacy")))
        {
            continue;
        }
        let set = bootstrap::process::command("update-alternatives")
            .args(["--set", name, &format!("/usr/sbin/{name}-legacy")])
            .output();
        match set {
            Ok(o) if o.status.success() => notes.push(format!("{name} set to {name}-legacy")),
            Ok(o) => notes.push(format!(
                "update-alternatives --set {name} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => notes.push(format!("cannot run update-alternatives for {name}: {e}")),
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_kernels_without_nf_tables_get_legacy_pis_keep_debians_choice() {
        assert!(decide(true, Some(true)).legacy());
        assert!(decide(true, None).legacy());
        assert!(decide(true, Some(false)).reason.contains("no NF_TABLES"));
        assert!(decide(false, Some(false)).legacy());
        assert_eq!(decide(false, Some(true)).backend, "default");
        assert_eq!(decide(false, None).backend, "default");
        assert_eq!(
            agent_env(&decide(true, None)),
            Some(("IPTABLES_MODE", "legacy"))
        );
        assert_eq!(agent_env(&decide(false, Some(true))), None);
    }

    #[test]
    fn nf_tables_is_read_from_the_kernel_config() {
        assert_eq!(
            kernel_has_nf_tables(Some("CONFIG_NF_TABLES=m\n")),
            Some(true)
        );
        assert_eq!(
            kernel_has_nf_tables(Some("# CONFIG_NF_TABLES is not set\n")),
            Some(false)
        );
        assert_eq!(kernel_has_nf_tables(None), None);
    }
}
