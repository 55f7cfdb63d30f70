//! Policy routing for the agent on Android. Android keeps each network's routes in a table of its
//! own, chosen by `ip rule` (netd's priorities 10000-31000), leaves the main table nearly empty and
//! ends the rule list with `32000: unreachable`. Flannel puts the routes to the pod network in the
//! main table, which no Android rule consults, and forwarded pod traffic matches no rule that
//! leads to the uplink. node-runtime therefore keeps, ahead of netd's rules:
//!
//! - `to POD_CIDR lookup main`, `to SERVICE_CIDR lookup main`, `iif cni0 lookup main`,
//!   `iif flannel.1 lookup main` (preference 6090): cluster traffic finds flannel's routes;
//! - `iif cni0 lookup UPLINK` (preference 6100): what pods send elsewhere leaves through the
//!   uplink's table — the one netd uses for the node's interface, or for its default network.
//!
//! They are installed at start, re-checked on every health tick (netd rewrites its rules when the
//! network changes: the uplink's table may move), and exactly these are removed at stop. The
//! rules are handled with the rootfs's `ip` (iproute2, or busybox's), inside the worker's root.
//! Planning is pure ([`plan`], [`uplink_table`], [`parse_rules`]); [`Router`] runs `ip`.

use bootstrap::status::Routing;

/// Preference of the main-table lookups: ahead of netd's first rule (10000), behind `local` (0).
pub const PREF_MAIN: u32 = 6090;
/// Preference of the pods' egress rule.
pub const PREF_EGRESS: u32 = 6100;

/// One policy rule: `PREF: from all SELECTOR lookup TABLE`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// Its preference.
    pub pref: u32,
    /// `to 10.42.0.0/16` or `iif cni0`.
    pub selector: String,
    /// `main`, or a netd table (a number in a chroot, which has no names for netd's tables).
    pub table: String,
}

impl Rule {
    fn new(pref: u32, selector: impl Into<String>, table: impl Into<String>) -> Rule {
        Rule {
            pref,
            selector: selector.into(),
            table: table.into(),
        }
    }

    /// As `ip rule show` prints it (without the `from all`).
    pub fn show(&self) -> String {
        format!("{}: {} lookup {}", self.pref, self.selector, self.table)
    }

    /// The arguments of `ip -4 rule add|del` for it.
    fn args(&self, verb: &str) -> Vec<String> {
        let mut a: Vec<String> = vec!["-4".into(), "rule".into(), verb.into()];
        a.extend(self.selector.split_whitespace().map(str::to_owned));
        a.extend([
            "lookup".into(),
            self.table.clone(),
            "pref".into(),
            self.pref.to_string(),
        ]);
        a
    }
}

/// What the rules are made from (node.toml's `[network]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The pod network (`--cluster-cidr` of the server).
    pub pod_cidr: String,
    /// The service network.
    pub service_cidr: String,
    /// The interface the node talks on (`wlan0`), whose netd table carries the pods' egress.
    pub iface: Option<String>,
}

/// One line of `ip rule show`: its preference and the rest, with `from all ` and a `[detached]`
/// marker (an `iif` that does not exist yet, such as `cni0` before flannel) taken off.
pub fn parse_rules(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let (pref, rest) = l.split_once(':')?;
            let pref = pref.trim().parse().ok()?;
            let rest = rest.trim();
            let rest = rest.strip_prefix("from all ").unwrap_or(rest);
            let rest = rest.replace(" [detached]", "");
            Some((pref, rest.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// The table netd routes `iface` through: its per-interface rule (`iif lo oif IFACE lookup T`),
/// else the default network's (`fwmark 0x0/0xffff iif lo lookup T`, preference 31000).
pub fn uplink_table(rules: &[(u32, String)], iface: Option<&str>) -> Option<String> {
    let table_of = |rest: &str| {
        rest.split_whitespace()
            .skip_while(|w| *w != "lookup")
            .nth(1)
            .map(str::to_owned)
    };
    if let Some(iface) = iface {
        let oif = format!("oif {iface} ");
        let found = rules
            .iter()
            .filter(|(p, r)| *p < 32000 && r.contains(&oif) && r.contains("iif lo"))
            // The plain per-oif rule (17000), not the VPN or uid-range ones.
            .find(|(_, r)| !r.contains("uidrange") && !r.contains("fwmark"))
            .and_then(|(_, r)| table_of(r));
        if found.is_some() {
            return found;
        }
    }
    rules
        .iter()
        .filter(|(_, r)| {
            fwmark(r) == Some((0, 0xffff)) && r.contains("iif lo") && !r.contains("uidrange")
        })
        .find_map(|(_, r)| table_of(r))
}

/// The `fwmark VALUE/MASK` of a rule; iproute2 prints a zero value as `0`, Android's `ip` as
/// `0x0`.
fn fwmark(rest: &str) -> Option<(u32, u32)> {
    let spec = rest
        .split_whitespace()
        .skip_while(|w| *w != "fwmark")
        .nth(1)?;
    let (value, mask) = spec.split_once('/').unwrap_or((spec, "0xffffffff"));
    let num = |t: &str| match t.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    };
    Some((num(value)?, num(mask)?))
}

/// The rules the agent needs, given the uplink's table (none: no egress rule).
pub fn plan(inputs: &Inputs, uplink: Option<&str>) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new(PREF_MAIN, format!("to {}", inputs.pod_cidr), "main"),
        Rule::new(PREF_MAIN, format!("to {}", inputs.service_cidr), "main"),
        Rule::new(PREF_MAIN, "iif cni0", "main"),
        Rule::new(PREF_MAIN, "iif flannel.1", "main"),
    ];
    if let Some(t) = uplink {
        rules.push(Rule::new(PREF_EGRESS, "iif cni0", t));
    }
    rules
}

/// Whether `rule` is among the present ones.
fn present(rule: &Rule, rules: &[(u32, String)]) -> bool {
    let want = format!("{} lookup {}", rule.selector, rule.table);
    rules.iter().any(|(p, r)| *p == rule.pref && *r == want)
}

/// Our egress rules that point at a table other than the uplink's now (netd moved it).
fn stale_egress(rules: &[(u32, String)], wanted: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .filter(|(p, r)| *p == PREF_EGRESS && r.starts_with("iif cni0 lookup "))
        .filter_map(|(p, r)| {
            let table = r.rsplit(' ').next()?.to_owned();
            let rule = Rule::new(*p, "iif cni0", table);
            (!wanted.contains(&rule)).then_some(rule)
        })
        .collect()
}

/// Keeps the agent's rules in place with `ip`.
#[derive(Debug)]
pub struct Router {
    inputs: Inputs,
    /// The rules installed (what stop removes).
    installed: Vec<Rule>,
    uplink: Option<String>,
}

impl Router {
    /// A router for these inputs; nothing is installed yet.
    pub fn new(inputs: Inputs) -> Router {
        Router {
            inputs,
            installed: Vec::new(),
            uplink: None,
        }
    }

    fn ip(args: &[String]) -> Result<String, String> {
        let out = bootstrap::process::command("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ip (iproute2 in the rootfs): {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Installs what is missing, replaces an egress rule whose table moved; returns what is in
    /// place, and what went wrong (kept trying at the next tick).
    pub fn ensure(&mut self) -> (Routing, Vec<String>) {
        let mut problems = Vec::new();
        let current = match Self::ip(&["-4".into(), "rule".into(), "show".into()]) {
            Ok(t) => parse_rules(&t),
            Err(e) => {
                problems.push(e);
                return (self.status(), problems);
            }
        };
        let uplink = uplink_table(&current, self.inputs.iface.as_deref());
        if uplink.is_none() {
            problems.push(format!(
                "no netd table for {} nor a default network: pods reach only the cluster until the phone is online",
                self.inputs.iface.as_deref().unwrap_or("the uplink")
            ));
        }
        let wanted = plan(&self.inputs, uplink.as_deref());
        for old in stale_egress(&current, &wanted) {
            if let Err(e) = Self::ip(&old.args("del")) {
                problems.push(e);
            }
            self.installed.retain(|r| *r != old);
        }
        for rule in &wanted {
            if !present(rule, &current) {
                match Self::ip(&rule.args("add")) {
                    Ok(_) => tracing::info!("policy rule added: {}", rule.show()),
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                }
            }
            if !self.installed.contains(rule) {
                self.installed.push(rule.clone());
            }
        }
        self.uplink = uplink;
        (self.status(), problems)
    }

    /// Removes exactly the rules it installed.
    pub fn remove(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for rule in std::mem::take(&mut self.installed) {
            if let Err(e) = Self::ip(&rule.args("del")) {
                problems.push(e);
            }
        }
        problems
    }

    /// The status record's part.
    pub fn status(&self) -> Routing {
        Routing {
            rules: self.installed.iter().map(Rule::show).collect(),
            uplink_table: self.uplink.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// netd's rules as a chroot lists them (numeric tables): the structure of a Pixel 7a's
    /// listing (tests/data/README.md names it) without its VPN.
    const NETD: &str = "\
0:\tfrom all lookup local
10000:\tfrom all fwmark 0xc0000/0xd0000 lookup 99
11000:\tfrom all iif lo oif wlan0 uidrange 0-0 lookup 1030
16000:\tfrom all fwmark 0x10063/0x1ffff iif lo lookup 97
16000:\tfrom all fwmark 0x10068/0x1ffff iif lo lookup 1030
17000:\tfrom all iif lo oif wlan0 lookup 1030
17000:\tfrom all fwmark 0xc0000/0xc0000 iif lo oif rmnet1 lookup 1021
18000:\tfrom all fwmark 0x0/0x10000 lookup 99
19000:\tfrom all fwmark 0x0/0x10000 lookup 98
20000:\tfrom all fwmark 0x0/0x10000 lookup 97
23000:\tfrom all fwmark 0x68/0x1ffff iif lo lookup 1030
31000:\tfrom all fwmark 0x0/0xffff iif lo lookup 1021
32000:\tfrom all unreachable
";

    fn inputs(iface: Option<&str>) -> Inputs {
        Inputs {
            pod_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            iface: iface.map(str::to_owned),
        }
    }

    #[test]
    fn the_uplink_is_the_interfaces_netd_table_else_the_default_networks() {
        let rules = parse_rules(NETD);
        assert_eq!(uplink_table(&rules, Some("wlan0")).as_deref(), Some("1030"));
        // An interface netd does not route: the default network (31000) carries egress.
        assert_eq!(uplink_table(&rules, Some("eth9")).as_deref(), Some("1021"));
        assert_eq!(uplink_table(&rules, None).as_deref(), Some("1021"));
        assert_eq!(
            uplink_table(&parse_rules("0:\tfrom all lookup local\n"), None),
            None
        );
        // iproute2 (the rootfs's `ip`) prints a zero mark as `0`.
        let debian = parse_rules("31000:\tfrom all fwmark 0/0xffff iif lo lookup 1021\n");
        assert_eq!(uplink_table(&debian, None).as_deref(), Some("1021"));
    }

    #[test]
    fn the_plan_puts_cluster_lookups_and_egress_ahead_of_netd() {
        let p = plan(&inputs(Some("wlan0")), Some("1030"));
        let shown: Vec<String> = p.iter().map(Rule::show).collect();
        assert_eq!(
            shown,
            [
                "6090: to 10.42.0.0/16 lookup main",
                "6090: to 10.43.0.0/16 lookup main",
                "6090: iif cni0 lookup main",
                "6090: iif flannel.1 lookup main",
                "6100: iif cni0 lookup 1030",
            ]
        );
        assert!(
            p.iter().all(|r| r.pref < 10000),
            "ahead of netd's first rule"
        );
        assert_eq!(
            p[4].args("add").join(" "),
            "-4 rule add iif cni0 lookup 1030 pref 6100"
        );
    }

    #[test]
    fn present_rules_are_recognised_even_detached_and_moved_egress_is_stale() {
        let listed = "6090:\tfrom all to 10.42.0.0/16 lookup main\n6090:\tfrom all iif cni0 lookup main [detached]\n6100:\tfrom all iif cni0 lookup 1021 [detached]\n";
        let rules = parse_rules(listed);
        let wanted = plan(&inputs(Some("wlan0")), Some("1030"));
        assert!(present(&wanted[0], &rules));
        assert!(present(&wanted[2], &rules));
        assert!(!present(&wanted[4], &rules));
        assert_eq!(
            stale_egress(&rules, &wanted),
            vec![Rule::new(PREF_EGRESS, "iif cni0", "1021")]
        );
    }
}
