//! The one place armfleet starts other programs (mmdebstrap, mke2fs, apt-get, sops, adb, the
//! k3s agent...). A child's stdin is `/dev/null` unless the caller connects it: a program that
//! unexpectedly asks a question must not hang a tool, or read the input meant for another step.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// A command for `program`, stdin from `/dev/null`.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    cmd
}

/// Whether `program` can be run (it is on `PATH`, or the path exists and is executable).
pub fn available(program: &str) -> bool {
    let runnable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| runnable(&dir.join(program))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_read_no_input_unless_given_some() {
        // `cat` with the default stdin ends at once with nothing, instead of reading ours.
        let out = command("cat").output().unwrap();
        assert!(out.status.success() && out.stdout.is_empty());
        assert!(available("sh"));
        assert!(!available("armfleet-no-such-program"));
    }
}
