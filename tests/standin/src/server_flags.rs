//! The `k3s server` flag table, for the stand-in's `k3s server`.
//!
//! Transcribed from k3s-vip/k3s `pkg/cli/cmds/server.go` @19c09fadc679a5b517103a732f81a250426c75e7
//! (a fork that tracks k3s master, urfave/cli v2, whole file read: `ServerFlags` in order), with the
//! shared flags it lists taken from the same fork's `agent.go` @94385529 and `root.go` @56384008
//! (as in `AGENT_FLAGS`). Checked against the `k3s server --help` dump in k3s-io/docs
//! `docs/cli/server.md` @02434960, which is older (it lacks `helm-controller-arg`,
//! `write-kubeconfig-name`, `etcd-s3-session-token`, `-bucket-lookup-type`, `-retention`,
//! `etcd-snapshot-reconcile-interval`, `secrets-encryption-provider` and `image-service-endpoint`).
//! Caveats: k3s' own `server.go` at the pinned tag (v1.36.4+k3s1) was not found (the stored
//! k3s-io/k3s copy is urfave/cli v1); `--helm-controller-arg` is in v1.36.3+ (k3s-io/k3s#14301),
//! while `--write-kubeconfig-name` (k3s-io/k3s#14440, merged to master 2026-07) has no backport
//! found. `k3s server --help` of the pinned binary is the authority when it differs.
//!
//! Defaults that real k3s only writes into its usage text (`cluster-cidr`, `service-cidr`,
//! `cluster-dns`, `bind-address`) are given here as defaults; those that are not values
//! (`advertise-address`, `etcd-snapshot-dir`, `data-dir`) are left out.

use super::Kind::{Bool, Duration, Int, List, Text};
use super::{Flag, aliased, default, env, flag, hidden};

/// Every flag `k3s server` defines, in its `Flags:` order, then urfave's own `--help`.
pub const SERVER_FLAGS: &[Flag] = &[
    super::CONFIG,
    super::DEBUG,
    super::V,
    super::VMODULE,
    super::LOG,
    super::ALSOLOGTOSTDERR,
    super::BIND_ADDRESS,
    default(
        flag("https-listen-port", Int, "(listener) HTTPS port"),
        "6443",
    ),
    hidden(env(
        default(
            flag("supervisor-port", Int, "(experimental) Supervisor port"),
            "0",
        ),
        "K3S_SUPERVISOR_PORT",
    )),
    hidden(env(
        default(
            flag("apiserver-port", Int, "(experimental) apiserver port"),
            "0",
        ),
        "K3S_APISERVER_PORT",
    )),
    hidden(env(
        flag(
            "apiserver-bind-address",
            Text,
            "(experimental) apiserver bind address",
        ),
        "K3S_APISERVER_BIND_ADDRESS",
    )),
    flag(
        "advertise-address",
        Text,
        "(listener) Address advertised to the cluster",
    ),
    default(
        flag(
            "advertise-port",
            Int,
            "(listener) Port advertised to the cluster",
        ),
        "0",
    ),
    flag(
        "tls-san",
        List,
        "(listener) Extra names on the server certificate",
    ),
    default(
        flag(
            "tls-san-security",
            Bool,
            "(listener) Refuse unknown certificate names",
        ),
        "true",
    ),
    env(
        aliased("data-dir", "d", Text, "(data) State directory"),
        "K3S_DATA_DIR",
    ),
    default(
        flag("cluster-cidr", List, "(networking) Pod networks"),
        "10.42.0.0/16",
    ),
    default(
        flag("service-cidr", List, "(networking) Service networks"),
        "10.43.0.0/16",
    ),
    default(
        flag(
            "service-node-port-range",
            Text,
            "(networking) NodePort range",
        ),
        "30000-32767",
    ),
    default(
        flag("cluster-dns", List, "(networking) CoreDNS service IP"),
        "10.43.0.10",
    ),
    default(
        flag("cluster-domain", Text, "(networking) Cluster domain"),
        "cluster.local",
    ),
    default(
        flag("flannel-backend", Text, "(networking) Flannel backend"),
        "vxlan",
    ),
    flag(
        "flannel-ipv6-masq",
        Bool,
        "(networking) Masquerade pod IPv6",
    ),
    flag(
        "flannel-external-ip",
        Bool,
        "(networking) Flannel over external IPs",
    ),
    default(
        flag(
            "egress-selector-mode",
            Text,
            "(networking) Egress selector mode",
        ),
        "agent",
    ),
    default(
        flag(
            "servicelb-namespace",
            Text,
            "(networking) servicelb namespace",
        ),
        "kube-system",
    ),
    env(
        aliased(
            "write-kubeconfig",
            "o",
            Text,
            "(client) Admin kubeconfig path",
        ),
        "K3S_KUBECONFIG_OUTPUT",
    ),
    env(
        flag(
            "write-kubeconfig-mode",
            Text,
            "(client) Admin kubeconfig mode",
        ),
        "K3S_KUBECONFIG_MODE",
    ),
    env(
        flag(
            "write-kubeconfig-group",
            Text,
            "(client) Admin kubeconfig group",
        ),
        "K3S_KUBECONFIG_GROUP",
    ),
    env(
        default(
            flag(
                "write-kubeconfig-name",
                Text,
                "(client) Admin kubeconfig entry name",
            ),
            "default",
        ),
        "K3S_KUBECONFIG_NAME",
    ),
    flag("helm-job-image", Text, "(helm) (deprecated) Helm job image"),
    env(
        aliased("token", "t", Text, "(cluster) Join secret"),
        "K3S_TOKEN",
    ),
    env(
        flag("token-file", Text, "(cluster) Join secret file"),
        "K3S_TOKEN_FILE",
    ),
    env(
        flag("agent-token", Text, "(cluster) Agent-only join secret"),
        "K3S_AGENT_TOKEN",
    ),
    env(
        flag(
            "agent-token-file",
            Text,
            "(cluster) Agent-only join secret file",
        ),
        "K3S_AGENT_TOKEN_FILE",
    ),
    env(
        aliased("server", "s", Text, "(cluster) Server to join"),
        "K3S_URL",
    ),
    env(
        flag(
            "cluster-init",
            Bool,
            "(cluster) Start a new embedded-etcd cluster",
        ),
        "K3S_CLUSTER_INIT",
    ),
    env(
        flag(
            "cluster-reset",
            Bool,
            "(cluster) Become the sole etcd member",
        ),
        "K3S_CLUSTER_RESET",
    ),
    flag(
        "cluster-reset-restore-path",
        Text,
        "(db) Snapshot to restore",
    ),
    flag("kube-apiserver-arg", List, "(flags) kube-apiserver flag"),
    flag("etcd-arg", List, "(flags) etcd flag"),
    flag(
        "kube-controller-manager-arg",
        List,
        "(flags) kube-controller-manager flag",
    ),
    flag("kube-scheduler-arg", List, "(flags) kube-scheduler flag"),
    flag("helm-controller-arg", List, "(flags) helm-controller flag"),
    flag(
        "kube-cloud-controller-manager-arg",
        List,
        "(flags) cloud-controller-manager flag",
    ),
    hidden(flag(
        "kine-tls",
        Bool,
        "(experimental/db) TLS on the kine socket",
    )),
    env(
        flag("datastore-endpoint", Text, "(db) Datastore address"),
        "K3S_DATASTORE_ENDPOINT",
    ),
    env(
        flag("datastore-cafile", Text, "(db) Datastore CA"),
        "K3S_DATASTORE_CAFILE",
    ),
    env(
        flag("datastore-certfile", Text, "(db) Datastore client cert"),
        "K3S_DATASTORE_CERTFILE",
    ),
    env(
        flag("datastore-keyfile", Text, "(db) Datastore client key"),
        "K3S_DATASTORE_KEYFILE",
    ),
    flag(
        "etcd-expose-metrics",
        Bool,
        "(db) etcd metrics on the client port",
    ),
    flag(
        "etcd-disable-snapshots",
        Bool,
        "(db) No scheduled snapshots",
    ),
    default(
        flag("etcd-snapshot-name", Text, "(db) Snapshot base name"),
        "etcd-snapshot",
    ),
    default(
        flag(
            "etcd-snapshot-schedule-cron",
            Text,
            "(db) Snapshot cron schedule",
        ),
        "0 */12 * * *",
    ),
    default(
        flag(
            "etcd-snapshot-reconcile-interval",
            Duration,
            "(db) Snapshot reconcile interval",
        ),
        "10m0s",
    ),
    default(
        flag("etcd-snapshot-retention", Int, "(db) Snapshots kept"),
        "5",
    ),
    flag("etcd-snapshot-dir", Text, "(db) Snapshot directory"),
    flag("etcd-snapshot-compress", Bool, "(db) Compress snapshots"),
    flag("etcd-s3", Bool, "(db) Back up to S3"),
    default(
        flag("etcd-s3-endpoint", Text, "(db) S3 endpoint"),
        "s3.amazonaws.com",
    ),
    flag("etcd-s3-endpoint-ca", Text, "(db) S3 endpoint CA"),
    flag(
        "etcd-s3-skip-ssl-verify",
        Bool,
        "(db) No S3 certificate check",
    ),
    env(
        flag("etcd-s3-access-key", Text, "(db) S3 access key"),
        "AWS_ACCESS_KEY_ID",
    ),
    env(
        flag("etcd-s3-secret-key", Text, "(db) S3 secret key"),
        "AWS_SECRET_ACCESS_KEY",
    ),
    env(
        flag("etcd-s3-session-token", Text, "(db) S3 session token"),
        "AWS_SESSION_TOKEN",
    ),
    flag("etcd-s3-bucket", Text, "(db) S3 bucket"),
    flag(
        "etcd-s3-bucket-lookup-type",
        Text,
        "(db) S3 bucket lookup: auto, dns, path",
    ),
    default(flag("etcd-s3-region", Text, "(db) S3 region"), "us-east-1"),
    flag("etcd-s3-folder", Text, "(db) S3 folder"),
    default(
        flag("etcd-s3-retention", Int, "(db) S3 snapshots kept"),
        "5",
    ),
    flag("etcd-s3-proxy", Text, "(db) S3 proxy"),
    flag(
        "etcd-s3-config-secret",
        Text,
        "(db) Secret holding the S3 settings",
    ),
    flag("etcd-s3-insecure", Bool, "(db) S3 over plain HTTP"),
    default(flag("etcd-s3-timeout", Duration, "(db) S3 timeout"), "5m0s"),
    flag(
        "default-local-storage-path",
        Text,
        "(storage) local-path provisioner directory",
    ),
    flag(
        "disable",
        List,
        "(components) Packaged component not to deploy (coredns, servicelb, traefik, \
         local-storage, metrics-server, runtimes)",
    ),
    flag("disable-scheduler", Bool, "(components) No kube-scheduler"),
    flag(
        "disable-cloud-controller",
        Bool,
        "(components) No cloud controller",
    ),
    flag("disable-kube-proxy", Bool, "(components) No kube-proxy"),
    flag(
        "disable-network-policy",
        Bool,
        "(components) No network policy controller",
    ),
    flag(
        "disable-helm-controller",
        Bool,
        "(components) No Helm controller",
    ),
    hidden(flag(
        "disable-apiserver",
        Bool,
        "(experimental/components) No apiserver",
    )),
    hidden(flag(
        "disable-controller-manager",
        Bool,
        "(experimental/components) No kube-controller-manager",
    )),
    hidden(flag(
        "disable-etcd",
        Bool,
        "(experimental/components) No etcd",
    )),
    flag(
        "embedded-registry",
        Bool,
        "(components) Embedded registry mirror",
    ),
    flag(
        "supervisor-metrics",
        Bool,
        "(experimental/components) Metrics on the supervisor port",
    ),
    super::NODE_NAME,
    super::WITH_NODE_ID,
    super::NODE_LABEL,
    super::NODE_TAINT,
    super::IMAGE_CREDENTIAL_PROVIDER_BIN_DIR,
    super::IMAGE_CREDENTIAL_PROVIDER_CONFIG,
    super::DOCKER,
    super::CONTAINER_RUNTIME_ENDPOINT,
    super::DEFAULT_RUNTIME,
    super::IMAGE_SERVICE_ENDPOINT,
    super::DISABLE_DEFAULT_REGISTRY_ENDPOINT,
    super::NONROOT_DEVICES,
    super::PAUSE_IMAGE,
    super::SNAPSHOTTER,
    super::PRIVATE_REGISTRY,
    env(
        flag(
            "system-default-registry",
            Text,
            "(agent/runtime) Registry for all system images",
        ),
        "K3S_SYSTEM_DEFAULT_REGISTRY",
    ),
    super::AIRGAP_EXTRA_REGISTRY,
    super::NODE_IP,
    super::NODE_EXTERNAL_IP,
    super::NODE_INTERNAL_DNS,
    super::NODE_EXTERNAL_DNS,
    super::RESOLV_CONF,
    super::FLANNEL_IFACE,
    super::FLANNEL_CONF,
    super::FLANNEL_CNI_CONF,
    super::VPN_AUTH,
    super::VPN_AUTH_FILE,
    super::KUBELET_ARG,
    super::KUBE_PROXY_ARG,
    super::PROTECT_KERNEL_DEFAULTS,
    flag("secrets-encryption", Bool, "Encrypt secrets at rest"),
    super::ENABLE_PPROF,
    super::ROOTLESS,
    default(
        flag(
            "secrets-encryption-provider",
            Text,
            "(experimental) Secrets encryption: aescbc or secretbox",
        ),
        "aescbc",
    ),
    super::PREFER_BUNDLED_BIN,
    super::SELINUX,
    super::LB_SERVER_PORT,
    hidden(flag("disable-agent", Bool, "Run no local agent or kubelet")),
    hidden(flag(
        "kube-controller-arg",
        List,
        "(flags) kube-controller-manager flag (old name)",
    )),
    hidden(flag(
        "kube-cloud-controller-arg",
        List,
        "(flags) cloud-controller-manager flag (old name)",
    )),
    super::HELP,
];
