//! The network a phone on Wi-Fi has, as Android's netd lays it out (profile key
//! `network = "android"`): the phone's processes get a network namespace of their own holding
//! - `lo`, and `wlan0` (ifindex 30) with [`WLAN0_ADDR`]; its peer end is `dummy0` (ifindex 3,
//!   no address; a phone's own `dummy0` is a dummy device, but this build machine's kernel has
//!   no `CONFIG_DUMMY`, so the pair is a veth and `ip link` shows `wlan0@dummy0`);
//! - per-network routing tables numbered as netd numbers them (ifindex + 1000, so wlan0's is
//!   [`WLAN0_TABLE`]; its `_local` table ifindex + 1000000000; local_network 97,
//!   legacy_network 98, legacy_system 99), the default route only in wlan0's table, and a main
//!   table with only the kernel's connected route;
//! - netd's policy rules, from the listing in `tests/data/vphone/android-ip-rule.txt` (a real
//!   Pixel's `ip rule`, see tests/data/README.md), with numeric tables, as a chroot without
//!   Android's `/data/misc/net/rt_tables` sees them; no `main` or `default` rule: the last rule is
//!   `32000: from all unreachable`.
//!
//! qemu-user does not translate netlink's rule messages (RTM_NEWRULE/RTM_GETRULE answer
//! EOPNOTSUPP to an aarch64 program), so no aarch64 `ip` can list or change the rules on this
//! phone. Its `/system/bin/ip` is therefore the build machine's own iproute2 (with the libraries
//! it needs), run natively: real `ip` output of the real kernel state, as Android's iproute2 `ip`
//! gives it on a phone.

use super::profile::Profile;
use crate::util::workspace_root;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// wlan0's address and prefix.
pub const WLAN0_ADDR: &str = "192.168.1.23/24";
/// The Wi-Fi router.
pub const WLAN0_GATEWAY: &str = "192.168.1.1";
/// wlan0's interface index (a number of the size phones give it).
pub const WLAN0_IFINDEX: u32 = 30;
/// wlan0's routing table: ifindex + 1000 (netd's `ROUTE_TABLE_OFFSET_FROM_INDEX`).
pub const WLAN0_TABLE: u32 = WLAN0_IFINDEX + 1000;
/// dummy0's interface index.
pub const DUMMY0_IFINDEX: u32 = 3;
/// The rule listing the phone is loaded with, under the workspace root.
pub const RULES_FIXTURE: &str = "tests/data/vphone/android-ip-rule.txt";

/// netd's table number for a table name of the listing.
pub fn table_number(name: &str) -> Option<u32> {
    Some(match name {
        "local_network" => 97,
        "legacy_network" => 98,
        "legacy_system" => 99,
        "wlan0" => WLAN0_TABLE,
        "dummy0" => DUMMY0_IFINDEX + 1000,
        "wlan0_local" => WLAN0_IFINDEX + 1_000_000_000,
        _ => return None,
    })
}

/// The fixture's rules as `(priority, selector and action with numeric tables)`, in order,
/// without the `0: from all lookup local` rule every kernel starts with.
pub fn rules() -> Vec<(u32, String)> {
    let path = workspace_root().join(RULES_FIXTURE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("rule listing {}: {e}", path.display()));
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (prio, rule) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{}: not `PRIO: RULE`: {line}", path.display()));
        let prio: u32 = prio
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: bad priority in {line}", path.display()));
        let mut words: Vec<String> = rule.split_whitespace().map(str::to_owned).collect();
        for i in 1..words.len() {
            if words[i - 1] == "lookup"
                && let Some(n) = table_number(&words[i])
            {
                words[i] = n.to_string();
            }
        }
        let rule = words.join(" ");
        if prio == 0 && rule == "from all lookup local" {
            continue;
        }
        out.push((prio, rule));
    }
    out
}

/// Shell lines (run by the phone's init with the build machine's `ip`, inside the phone's new
/// network namespace, before it enters the phone's root) that lay the network out.
pub(crate) fn setup_script() -> String {
    let mut s = String::from("# netd's layout of a phone on Wi-Fi\n");
    let t = WLAN0_TABLE;
    let local = WLAN0_IFINDEX + 1_000_000_000;
    let _ = writeln!(
        s,
        "ip link set lo up\n\
         ip link add wlan0 index {WLAN0_IFINDEX} type veth peer name dummy0 index {DUMMY0_IFINDEX}\n\
         ip link set dummy0 up\n\
         ip link set wlan0 up\n\
         ip addr add {WLAN0_ADDR} dev wlan0\n\
         ip route add default via {WLAN0_GATEWAY} dev wlan0 proto static table {t}\n\
         ip route add 192.168.1.0/24 dev wlan0 proto static scope link table {t}\n\
         ip route add 192.168.1.0/24 dev wlan0 proto static scope link table {local}"
    );
    for (prio, rule) in rules() {
        let _ = writeln!(s, "ip rule add prio {prio} {rule}");
    }
    // netd leaves no `main` or `default` rule: what the rules do not route is unreachable.
    s.push_str("ip rule del prio 32766\nip rule del prio 32767\n");
    s
}

/// `/data/misc/net/rt_tables`, where netd writes its table names on a phone (Android's `ip`
/// reads it; a chroot's does not).
pub(crate) fn rt_tables() -> String {
    let mut s = String::from("255 local\n254 main\n253 default\n");
    for name in [
        "local_network",
        "legacy_network",
        "legacy_system",
        "dummy0",
        "wlan0",
        "wlan0_local",
    ] {
        let _ = writeln!(s, "{} {name}", table_number(name).unwrap());
    }
    s
}

/// The build machine's `ip`, installed as the phone's `/system/bin/ip` with the shared libraries
/// `ldd` names, at the same paths under the phone's root (see the module docs for why).
pub(crate) fn install_host_ip(root: &Path, dest: &Path) {
    let ip = ["/usr/bin/ip", "/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("the build machine's iproute2 `ip` (scripts/setup.sh installs iproute2)");
    let out = Command::new("ldd").arg(&ip).output().expect("run ldd");
    assert!(out.status.success(), "ldd {} failed", ip.display());
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // fs::copy follows the soname symlink to the real file.
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    let _ = std::fs::remove_file(dest);
    std::fs::copy(&ip, dest).unwrap_or_else(|e| panic!("copy {}: {e}", ip.display()));
}

/// True when the profile's phone gets its own network namespace.
pub(crate) fn own_namespace(profile: &Profile) -> bool {
    profile.network == super::profile::Network::Android
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_keeps_netds_structure_with_numeric_tables() {
        let rules = rules();
        let prios: Vec<u32> = rules.iter().map(|(p, _)| *p).collect();
        assert!(prios.windows(2).all(|w| w[0] <= w[1]), "{prios:?}");
        for p in [
            10000, 11000, 16000, 17000, 18000, 19000, 20000, 23000, 31000,
        ] {
            assert!(prios.contains(&p), "no rule at {p}");
        }
        assert_eq!(
            rules.last().unwrap(),
            &(32000, "from all unreachable".into())
        );
        assert!(
            rules.iter().all(|(_, r)| !r.contains("main")),
            "a lookup main"
        );
        assert!(rules.contains(&(
            31000,
            format!("from all fwmark 0x0/0xffff iif lo lookup {WLAN0_TABLE}")
        )));
        // Every table is numeric.
        for (_, r) in &rules {
            let w: Vec<&str> = r.split_whitespace().collect();
            if let Some(i) = w.iter().position(|x| *x == "lookup") {
                assert!(w[i + 1].parse::<u32>().is_ok(), "{r}");
            }
        }
    }
}
