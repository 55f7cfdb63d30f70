//! The systemd unit that starts `node-runtime` on a Pi. `node-runtime unit` prints it; the rootfs
//! overlay installs it at [`crate::layout::worker::UNIT_PATH`] and enables it with the symlink at
//! [`crate::layout::worker::UNIT_WANTS_LINK`].
//!
//! The join token is not in it: node-runtime passes `--token-file` to k3s itself.

/// The unit text.
pub const SYSTEMD_UNIT: &str = "\
[Unit]
Description=armfleet node-runtime: supervises the k3s agent of this worker
Documentation=https://github.com/armfleet/armfleet
# k3s needs an address and a route to the server; Wi-Fi Pis take a while to associate.
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists=/etc/armfleet/node.toml

[Service]
Type=simple
ExecStart=/usr/local/bin/node-runtime run --config /etc/armfleet/node.toml
# node-runtime restarts k3s with backoff itself; systemd restarts node-runtime.
Restart=always
RestartSec=5s
# SIGTERM to node-runtime alone (it stops the agent's process group in order, within its grace
# period), then SIGKILL to whatever is still in the unit's cgroup: nothing of a stopped or crashed
# supervisor is left to run beside the next one (KillMode=process would leave k3s running).
KillMode=mixed
TimeoutStopSec=60s
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity

[Install]
WantedBy=multi-user.target
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::worker::{CONFIG, NODE_RUNTIME_BIN, UNIT_PATH, UNIT_WANTS_LINK};

    #[test]
    fn unit_runs_node_runtime_after_network_and_always_restarts() {
        let lines: Vec<&str> = SYSTEMD_UNIT.lines().collect();
        assert!(lines.contains(&"After=network-online.target time-sync.target"));
        assert!(lines.contains(&"Wants=network-online.target"));
        assert!(lines.contains(&"Restart=always"));
        assert!(lines.contains(&"WantedBy=multi-user.target"));
        // A stop or a crash of node-runtime takes the rest of the unit's cgroup with it.
        assert!(lines.contains(&"KillMode=mixed"));
        assert!(!lines.iter().any(|l| l.starts_with("KillMode=process")));
        assert!(
            lines.contains(&format!("ExecStart={NODE_RUNTIME_BIN} run --config {CONFIG}").as_str())
        );
        assert!(
            !SYSTEMD_UNIT.to_ascii_lowercase().contains("token"),
            "the unit must not carry the token"
        );
        assert!(UNIT_WANTS_LINK.ends_with(UNIT_PATH.rsplit('/').next().unwrap()));
    }
}
