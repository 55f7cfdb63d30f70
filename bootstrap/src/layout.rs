//! Where armfleet puts things on a worker. Every tool — the topology's `node.toml` builder,
//! `phonectl`, `imagegen`, the rootfs overlay, `node-runtime` — reads these paths from here, so
//! they cannot drift apart.

/// Paths inside the worker's root filesystem: `/` on a Pi, the chroot on a phone.
pub mod worker {
    /// `node.toml` (on a phone the copy node-runtime reads is [`super::phone::CONFIG`]).
    pub const CONFIG: &str = "/etc/armfleet/node.toml";
    /// The join token, mode 0600, given to k3s as `--token-file`.
    pub const TOKEN_FILE: &str = "/etc/armfleet/token";
    /// The health record `node-runtime status` prints (the pidfile lives beside it).
    pub const STATUS_FILE: &str = "/var/lib/armfleet/status.json";
    /// The agent's and the supervisor's logs.
    pub const LOG_DIR: &str = "/var/log/armfleet";
    /// The k3s binary.
    pub const K3S_BIN: &str = "/usr/local/bin/k3s";
    /// k3s' `--data-dir`.
    pub const K3S_DATA_DIR: &str = "/var/lib/rancher/k3s";
    /// The static node-runtime, as the rootfs overlay installs it.
    pub const NODE_RUNTIME_BIN: &str = "/usr/local/bin/node-runtime";
    /// The systemd unit that starts node-runtime on a Pi.
    pub const UNIT_PATH: &str = "/etc/systemd/system/node-runtime.service";
    /// The symlink that enables it (what `systemctl enable` would create).
    pub const UNIT_WANTS_LINK: &str =
        "/etc/systemd/system/multi-user.target.wants/node-runtime.service";
    /// Directories the overlay creates (relative to the root).
    pub const OVERLAY_DIRS: &[&str] = &["etc/armfleet", "var/lib/armfleet", "var/log/armfleet"];
}

/// A Raspberry Pi's card.
pub mod pi {
    /// Where the FAT boot partition is mounted.
    pub const BOOT_MOUNT: &str = "/boot/firmware";
    /// The file a user drops on the boot partition to give a token after flashing.
    pub const TOKEN_DROP_NAME: &str = "armfleet-token";
    /// [`TOKEN_DROP_NAME`] as the running Pi sees it: node-runtime moves it to the 0600 token file
    /// at start and deletes it here.
    pub const TOKEN_DROP: &str = "/boot/firmware/armfleet-token";
}

/// A phone, as Android's side sees it.
pub mod phone {
    /// Everything armfleet puts on a phone, except the boot hook module, lives under here.
    pub const BASE: &str = "/data/armfleet";
    /// The static aarch64 supervisor, run from Android's side.
    pub const BIN: &str = "/data/armfleet/bin/node-runtime";
    /// `node.toml` (with `chroot.root = ROOTFS`).
    pub const CONFIG: &str = "/data/armfleet/node.toml";
    /// The node rootfs (the chroot).
    pub const ROOTFS: &str = "/data/armfleet/rootfs";
    /// sha256 of the rootfs tarball installed at [`ROOTFS`], written after a successful unpack;
    /// how a re-enroll knows the rootfs is current without sending it.
    pub const ROOTFS_SHA: &str = "/data/armfleet/rootfs.sha256";
    /// The ext4 image holding the k3s data dir (f2fs breaks overlayfs and cadvisor).
    pub const DATA_IMAGE: &str = "/data/armfleet/k3s-data.img";
    /// Default size of that image.
    pub const DATA_IMAGE_MIB: u64 = 8192;
    /// Present when the owner ran `phonectl stop`: the boot hook then leaves the worker stopped.
    pub const DISABLED: &str = "/data/armfleet/disabled";
    /// The Magisk/KernelSU module directory.
    pub const MODULE_DIR: &str = "/data/adb/modules/armfleet";
    /// Where the adb shell user (uid 2000) may write: the node-runtime binary is pushed here first.
    pub const STAGING_BIN: &str = "/data/local/tmp/armfleet-node-runtime";
    /// The k3s binary brought from the laptop waits here until node-runtime installs it.
    pub const STAGING_K3S: &str = "/data/local/tmp/armfleet-k3s";
}

/// The router's own files (the server host with `[router]`), in its root filesystem.
pub mod router {
    /// The artifact mirror's files (the pinned k3s under its upstream file name).
    pub const MIRROR_DIR: &str = "/var/lib/armfleet/mirror";
    /// dnsmasq's configuration (DHCP and DNS on every VLAN).
    pub const DNSMASQ_CONF: &str = "/etc/armfleet/dnsmasq.conf";
    /// The nftables ruleset Debian's nftables.service loads at boot.
    pub const NFTABLES_CONF: &str = "/etc/nftables.conf";
    /// What the router was made from, for `imagegen inspect` (VLANs, leases, policy, mirror).
    pub const ROUTER_JSON: &str = "/etc/armfleet/router.json";
    /// k3s' CA directory: certificates and keys placed here before the first start are used
    /// instead of generated ones (k3s' custom CA support), so the join token's hash is known
    /// before the server ever runs.
    pub const K3S_TLS_DIR: &str = "/var/lib/rancher/k3s/server/tls";
    /// The manifest that registers `node`'s own bootstrap token on the server: in k3s'
    /// auto-deploying manifests directory (`DATA_DIR/server/manifests`), whose `.json`, `.yaml`
    /// and `.yml` files k3s applies at every start and whenever they change, unless a
    /// `NAME.skip` file sits beside them.
    pub fn node_token_manifest(k3s_data_dir: &std::path::Path, node: &str) -> std::path::PathBuf {
        k3s_data_dir
            .join("server/manifests")
            .join(format!("armfleet-node-token-{node}.json"))
    }
}
