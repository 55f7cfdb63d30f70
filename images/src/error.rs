//! The one error type of the image builder (boards, boot assets, layout, filesystems, inspect).
//! Every message says what is wrong, where, and what to do.

use std::path::PathBuf;

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The board is unknown, or its profile is not usable.
    #[error("{0}")]
    Board(#[from] bootstrap::board::BoardError),
    /// The boot files outgrow the board's boot partition.
    #[error(
        "the boot files ({files_mib} MiB) do not fit the {board} profile's partitions.boot_mib = {boot_mib}: raise it"
    )]
    BootTooSmall {
        /// The board.
        board: String,
        /// What the boot files take, with the FAT's own room, MiB.
        files_mib: u64,
        /// The profile's boot partition, MiB.
        boot_mib: u64,
    },
    /// The topology could not be used.
    #[error("{0}")]
    Topology(String),
    /// The host is not in the topology.
    #[error("host {host:?} is not in the topology ({topology}); hosts of board {board}: {known}")]
    UnknownHost {
        /// The host asked for.
        host: String,
        /// Where the topology came from.
        topology: String,
        /// The board asked for.
        board: String,
        /// Hosts of that board.
        known: String,
    },
    /// The host exists but is another board.
    #[error(
        "host {host:?} is a {actual} in the topology, not a {asked}: run `imagegen {actual} --host {host}`"
    )]
    WrongBoard {
        /// The host.
        host: String,
        /// The board asked for.
        asked: String,
        /// Its board in the topology.
        actual: String,
    },
    /// No host of that board in the topology.
    #[error(
        "the topology ({topology}) has no host of board {board}: add one, or pass --topology FILE"
    )]
    NoHostForBoard {
        /// Where the topology came from.
        topology: String,
        /// The board.
        board: String,
    },
    /// A boot asset (Debian package or a file in it) is missing.
    #[error("boot asset missing: {what}: {help}")]
    AssetMissing {
        /// The package or file.
        what: String,
        /// What to do.
        help: String,
    },
    /// A cached boot asset no longer matches its pin.
    #[error(
        "boot asset {path} has sha256 {actual}, pinned {pinned}: delete it to fetch it again, or restore the file"
    )]
    AssetPinMismatch {
        /// The file.
        path: PathBuf,
        /// Its hash now.
        actual: String,
        /// The pin.
        pinned: String,
    },
    /// The node rootfs tarball is missing or unreadable.
    #[error("rootfs {path}: {message}")]
    Rootfs {
        /// The tarball.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// `--size` too small for what must go in.
    #[error(
        "image size {asked_mib} MiB is too small: the boot partition and this rootfs need at least {needed_mib} MiB; pass --size {needed_mib}M or more (the root partition grows to the card on first boot)"
    )]
    SizeTooSmall {
        /// What was asked.
        asked_mib: u64,
        /// What is needed.
        needed_mib: u64,
    },
    /// A size argument does not parse.
    #[error("invalid size {0:?}: use a number with a unit, e.g. 2G, 1536M")]
    BadSize(String),
    /// Not enough free space where the output goes.
    #[error(
        "not enough space in {dir} for the image: {needed_mib} MiB needed, {free_mib} MiB free: free some space or pass -o on another filesystem"
    )]
    NoSpace {
        /// The output directory.
        dir: PathBuf,
        /// Data bytes to write, MiB.
        needed_mib: u64,
        /// Free MiB.
        free_mib: u64,
    },
    /// An external tool failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// Its stderr (trimmed) or what is wrong.
        message: String,
    },
    /// A required external tool is not installed.
    #[error("{tool} not found: install the Debian package {package} (apt-get install {package})")]
    ToolMissing {
        /// The program.
        tool: String,
        /// The package providing it.
        package: String,
    },
    /// The join token is malformed, or the server's CA does not match its hash.
    #[error("{0}")]
    Token(#[from] bootstrap::token::TokenError),
    /// An external tool is installed but too old for what imagegen asks of it.
    #[error("{tool} {found} is too old: imagegen needs {needed} or newer ({why}); {help}")]
    ToolTooOld {
        /// The program.
        tool: String,
        /// The version found.
        found: String,
        /// The oldest version that works.
        needed: String,
        /// What the newer version brings.
        why: String,
        /// How to get it.
        help: String,
    },
    /// The image file is not one imagegen can read.
    #[error("{path}: {message}")]
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The per-host configuration is not usable.
    #[error("host {host}: {message}")]
    HostConfig {
        /// The host.
        host: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Usage errors are the user's to fix; I/O and tools are the environment's.
impl bootstrap::exit::Classify for ImageError {
    fn exit_class(&self) -> bootstrap::exit::ExitClass {
        use bootstrap::exit::ExitClass;
        match self {
            ImageError::Board(_)
            | ImageError::BootTooSmall { .. }
            | ImageError::Topology(_)
            | ImageError::UnknownHost { .. }
            | ImageError::WrongBoard { .. }
            | ImageError::Token(_)
            | ImageError::NoHostForBoard { .. }
            | ImageError::Rootfs { .. }
            | ImageError::SizeTooSmall { .. }
            | ImageError::BadSize(_)
            | ImageError::HostConfig { .. }
            | ImageError::BadImage { .. } => ExitClass::Usage,
            _ => ExitClass::Device,
        }
    }
}

/// Attaches a path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            let dir = path.parent().map(|p| p.to_owned()).unwrap_or_default();
            return ImageError::NoSpace {
                dir,
                needed_mib: 0,
                free_mib: 0,
            };
        }
        ImageError::Io { path, source }
    }
}
