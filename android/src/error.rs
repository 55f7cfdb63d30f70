//! What can go wrong with a phone, in words that say what to do, and the exit class of each.

use crate::device::DeviceError;
use crate::doctor::Report;
use bootstrap::exit::ExitClass;
use std::path::PathBuf;

/// Why a phone operation failed. Each message names the phone and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// Reaching the phone failed (no server, no phone, unauthorized, connection lost...).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The preflight found a blocker.
    #[error("phone {serial}: {first}{more}")]
    NotReady {
        /// The phone.
        serial: String,
        /// The first failing item, with its fix.
        first: String,
        /// " (and N more: run `phonectl doctor -s SERIAL`)" or empty.
        more: String,
        /// The full report.
        report: Box<Report>,
    },
    /// A remote command failed.
    #[error("phone {serial}: {what} failed: {message}{hint}")]
    Remote {
        /// The phone.
        serial: String,
        /// What was being done.
        what: String,
        /// The command's last error line.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The agent did not come up.
    #[error(
        "phone {serial}: the k3s agent is not ready {secs} s after start (node-runtime says: {state}): see `phonectl logs -s {serial}`"
    )]
    NotRunning {
        /// The phone.
        serial: String,
        /// How long we waited.
        secs: u64,
        /// The last state seen.
        state: String,
    },
    /// The agent runs, but the cluster does not list its Node as Ready.
    #[error(
        "phone {serial}: node {node} is not Ready in the cluster {secs} s after its agent started ({state}): check the server (`kubectl describe node {node}`) and `phonectl logs -s {serial}`"
    )]
    NodeNotReady {
        /// The phone.
        serial: String,
        /// The Node name.
        node: String,
        /// How long we waited.
        secs: u64,
        /// What the API said last.
        state: String,
    },
    /// The Kubernetes API could not be asked (kubeconfig, credentials).
    #[error(transparent)]
    Kube(#[from] bootstrap::kube::KubeError),
    /// The phone carries no armfleet worker.
    #[error("phone {serial} is not enrolled: run `phonectl enroll -s {serial}` first")]
    NotEnrolled {
        /// The phone.
        serial: String,
    },
    /// The command line, a node.toml or the topology is wrong (before any phone is touched).
    #[error("{0}")]
    Usage(String),
    /// Something is still mounted under /data/armfleet; removing it would reach through the mount.
    #[error(
        "phone {serial}: still mounted under {base}: {mounts}: reboot the phone and run unenroll again"
    )]
    StillMounted {
        /// The phone.
        serial: String,
        /// The base directory.
        base: &'static str,
        /// The mount points.
        mounts: String,
    },
}

impl PhoneError {
    /// The exit class for this error.
    pub fn exit_class(&self) -> ExitClass {
        use bootstrap::exit::Classify;
        match self {
            PhoneError::Device(e) => e.exit_class(),
            PhoneError::Local { .. }
            | PhoneError::Usage(_)
            | PhoneError::Kube(bootstrap::kube::KubeError::Read { .. })
            | PhoneError::Kube(bootstrap::kube::KubeError::Invalid { .. }) => ExitClass::Usage,
            _ => ExitClass::Device,
        }
    }
}

impl bootstrap::exit::Classify for PhoneError {
    fn exit_class(&self) -> ExitClass {
        PhoneError::exit_class(self)
    }
}

impl bootstrap::exit::Classify for DeviceError {
    fn exit_class(&self) -> ExitClass {
        match self {
            // The command line named the wrong phone, or none where several are attached.
            DeviceError::SeveralDevices { .. } | DeviceError::UnknownSerial { .. } => {
                ExitClass::Usage
            }
            DeviceError::Protocol { .. } => ExitClass::Internal,
            _ => ExitClass::Device,
        }
    }
}
