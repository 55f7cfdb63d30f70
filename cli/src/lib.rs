//! What armfleet's binaries (`phonectl`, `imagegen`, `node-runtime`) share and the libraries must
//! not have, written once:
//!
//! - [`finish`]: one error line (`tool: message`) and the exit code of its class;
//! - [`out`]: stdout that treats a closed pipe (`phonectl devices | head -n1`) as success;
//! - [`logging`]: `tracing` to stderr, filtered by `ARMFLEET_LOG`;
//! - [`draw`] (feature `progress`): progress events drawn as bars on a terminal, as one line per
//!   phase with its elapsed time otherwise, or not at all;
//! - [`manual`] (feature `manual`): shell completions and man pages.
#![deny(missing_docs)]

#[cfg(feature = "progress")]
pub mod draw;
pub mod logging;
#[cfg(feature = "manual")]
pub mod manual;
pub mod out;

use bootstrap::exit::ExitClass;

/// What `--version` prints for every tool: the release and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("ARMFLEET_GIT_REV"),
    ")"
);
use std::process::ExitCode;

/// An error on its way out of a binary: its message (one line) and its exit class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Usage, device or internal.
    pub class: ExitClass,
    /// What went wrong and what to do, one line.
    pub message: String,
}

impl Failure {
    /// A failure of `class` saying `message`.
    pub fn new(class: ExitClass, message: impl std::fmt::Display) -> Failure {
        Failure {
            class,
            message: message.to_string(),
        }
    }

    /// A usage error (the command line, a file or the topology is wrong).
    pub fn usage(message: impl std::fmt::Display) -> Failure {
        Failure::new(ExitClass::Usage, message)
    }
}

impl<E: bootstrap::exit::Classify + std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::new(e.exit_class(), e)
    }
}

/// The failure with the highest exit code (the first of equals): what a run over several
/// devices exits with.
pub fn worst(failures: impl IntoIterator<Item = Failure>) -> Option<Failure> {
    failures.into_iter().fold(None, |worst, f| match worst {
        Some(w) if w.class.code() >= f.class.code() => Some(w),
        _ => Some(f),
    })
}

/// Ends a binary's `main`: on failure prints `tool: message` as one line on stderr and returns
/// the exit code of its class.
pub fn finish(tool: &str, result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(f) => {
            // A message is one line by contract; a stray line break must not split it.
            let line = f.message.replace('\n', " ");
            eprintln!("{tool}: {line}");
            ExitCode::from(f.class.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_failure_is_the_highest_exit_code_and_the_first_of_equals() {
        assert!(worst(Vec::new()).is_none());
        let f = |c, m: &str| Failure::new(c, m);
        let w = worst([
            f(ExitClass::Usage, "a"),
            f(ExitClass::Device, "b"),
            f(ExitClass::Device, "c"),
            f(ExitClass::Usage, "d"),
        ])
        .unwrap();
        assert_eq!((w.class.code(), w.message.as_str()), (3, "b"));
        let w = worst([f(ExitClass::Device, "x"), f(ExitClass::Internal, "y")]).unwrap();
        assert_eq!(w.message, "y");
    }
}
