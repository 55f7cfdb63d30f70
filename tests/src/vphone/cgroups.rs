//! The phone's cgroups (profile key `cgroups`), mounted by its init from the build machine's
//! hierarchies so that `/proc/mounts` in the phone reads as a phone's:
//! - `v1` (Android 7–9, init.rc): `none /dev/memcg cgroup rw,nosuid,nodev,noexec,relatime,memory`,
//!   `/dev/cpuctl` (cpu), `/dev/cpuset` (cpuset), `/acct` (cpuacct); no cgroup2.
//! - `hybrid` (Android 10+, cgroups.json): those, `/dev/blkio` (blkio), and a cgroup2 at
//!   `/sys/fs/cgroup`.
//! - `v2`: a cgroup2 at `/sys/fs/cgroup` whose controllers include cpu, cpuset, memory, pids.
//!
//! A v1 controller can be attached to one hierarchy only, so each mount is a new mount of the
//! machine's own hierarchy for that controller (same controllers, so the kernel reuses it): the
//! phone's cgroups are the machine's, as a bind would give them, but with Android's source name
//! and flags. Differences that remain: Android mounts cpuset with `noprefix` (a flag of the
//! hierarchy, which the machine's already has or lacks), the machine may co-mount controllers
//! Android keeps apart (then both mount points show the pair), and there is no `/dev/stune`
//! (schedtune is an Android kernel patch).

use super::profile::Cgroups;

/// Controllers k3s needs from a cgroup2 root.
const V2_NEEDS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// (controller, where Android mounts it), for v1 and for hybrid.
fn android_v1(kind: Cgroups) -> &'static [(&'static str, &'static str)] {
    match kind {
        Cgroups::V1 => &[
            ("cpuacct", "/acct"),
            ("memory", "/dev/memcg"),
            ("cpu", "/dev/cpuctl"),
            ("cpuset", "/dev/cpuset"),
        ],
        Cgroups::Hybrid => &[
            ("cpuacct", "/acct"),
            ("memory", "/dev/memcg"),
            ("cpu", "/dev/cpuctl"),
            ("cpuset", "/dev/cpuset"),
            ("blkio", "/dev/blkio"),
        ],
        Cgroups::Host | Cgroups::V2 => &[],
    }
}

/// The machine's cgroup mounts: (fs type, mount point, super options).
fn machine_cgroup_mounts() -> Vec<(String, String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?.to_owned();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_owned();
            let opts = post.nth(1)?.to_owned();
            fstype
                .starts_with("cgroup")
                .then_some((fstype, point, opts))
        })
        .collect()
}

/// The controllers of the machine's v1 hierarchy holding `controller` (`cpu` or `cpu,cpuacct`).
fn machine_hierarchy(controller: &str) -> Option<String> {
    machine_cgroup_mounts()
        .into_iter()
        .filter(|(fs, _, _)| fs == "cgroup")
        .find_map(|(_, _, opts)| {
            let ctrls: Vec<&str> = opts.split(',').filter(|o| V1_NAMES.contains(o)).collect();
            ctrls.contains(&controller).then(|| ctrls.join(","))
        })
}

/// v1 controller names (what may appear among a cgroup mount's options besides flags).
const V1_NAMES: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "memory",
    "blkio",
    "devices",
    "freezer",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// The controllers the machine's cgroup2 offers (its root's `cgroup.controllers`).
fn machine_v2_controllers() -> Option<String> {
    let (_, point, _) = machine_cgroup_mounts()
        .into_iter()
        .find(|(fs, _, _)| fs == "cgroup2")?;
    std::fs::read_to_string(format!("{point}/cgroup.controllers"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// Whether this machine can give a phone the `kind` layout; why not, in one sentence.
pub fn supported(kind: Cgroups) -> Result<(), String> {
    match kind {
        Cgroups::Host => Ok(()),
        Cgroups::V1 | Cgroups::Hybrid => {
            for (c, at) in android_v1(kind) {
                if machine_hierarchy(c).is_none() {
                    return Err(format!(
                        "cgroups = \"{}\" mounts the machine's own v1 {c} hierarchy at {at}, and \
                         this machine has none (its controllers are on cgroup2, where v1 cannot \
                         have them): run on a cgroup v1 or hybrid machine",
                        name(kind)
                    ));
                }
            }
            Ok(())
        }
        Cgroups::V2 => {
            let have = machine_v2_controllers().unwrap_or_default();
            let missing: Vec<&str> = V2_NEEDS
                .iter()
                .copied()
                .filter(|c| !have.split_whitespace().any(|h| h == *c))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "cgroups = \"v2\" needs a cgroup2 with the {} controllers, and this machine's \
                     cgroup2 offers {}: its controllers are bound to v1 hierarchies (a cgroup v1 \
                     or hybrid machine); run on a cgroup v2 machine (stat -fc %T /sys/fs/cgroup \
                     prints cgroup2fs)",
                    V2_NEEDS.join(", "),
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("only {have}")
                    }
                ))
            }
        }
    }
}

fn name(kind: Cgroups) -> &'static str {
    match kind {
        Cgroups::Host => "host",
        Cgroups::V1 => "v1",
        Cgroups::Hybrid => "hybrid",
        Cgroups::V2 => "v2",
    }
}

/// True when the phone's `/dev` is its own tmpfs, as Android's: the v1 mount points live there,
/// and must not be made in the machine's `/dev`.
pub(crate) fn own_dev(kind: Cgroups) -> bool {
    matches!(kind, Cgroups::V1 | Cgroups::Hybrid)
}

/// Shell lines for the phone's init (host tools, `$R` the phone's root, `/dev` already in
/// place) that mount the layout. Call [`supported`] first.
pub(crate) fn mount_script(kind: Cgroups) -> String {
    let flags = "nosuid,nodev,noexec";
    let mut s = String::new();
    for (c, at) in android_v1(kind) {
        let ctrls = machine_hierarchy(c).expect("checked by supported()");
        s.push_str(&format!(
            "mkdir -p \"$R{at}\"\nmount -t cgroup -o {flags},{ctrls} none \"$R{at}\"\n"
        ));
    }
    match kind {
        Cgroups::Host => s.push_str(&format!(
            "mount -t cgroup2 -o {flags} cgroup2 \"$R/sys/fs/cgroup\" || true\n"
        )),
        Cgroups::Hybrid | Cgroups::V2 => s.push_str(&format!(
            "mount -t cgroup2 -o {flags} none \"$R/sys/fs/cgroup\"\n"
        )),
        Cgroups::V1 => {}
    }
    s
}
