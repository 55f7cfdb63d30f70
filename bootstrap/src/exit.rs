//! Exit codes shared by `phonectl`, `imagegen` and `node-runtime`, so scripts can tell a mistake
//! of theirs from a device that misbehaves and from a bug of ours.

/// What kind of failure ended a command; each maps to one stable exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// The command line, a config file or the topology is wrong: the user can fix it.
    Usage,
    /// The device, card, network or host refused or failed: check the hardware or environment.
    Device,
    /// A bug in armfleet: it should not happen whatever the input.
    Internal,
}

impl ExitClass {
    /// The process exit code for this class.
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Usage => 2,
            ExitClass::Device => 3,
            ExitClass::Internal => 70,
        }
    }
}

/// An error that knows its exit class; the binaries turn any such error into their one error line
/// and exit code the same way.
pub trait Classify {
    /// The class, hence the exit code.
    fn exit_class(&self) -> ExitClass;
}
