//! The seam between phonectl's logic and ADB: everything phonectl does to a phone goes through
//! [`Device`], so the logic never depends on how bytes reach the phone.

use crate::adb::AdbError;
use std::io::Read;

/// What a remote command did: its real exit status and its two output streams, kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// The exit status the device reported.
    pub status: i32,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
}

impl ShellOutput {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stdout as text, trimmed.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_owned()
    }

    /// The last non-empty line of stderr (or stdout when stderr is empty): what to show a user.
    pub fn err_line(&self) -> String {
        let pick = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        };
        pick(&self.stderr)
            .or_else(|| pick(&self.stdout))
            .unwrap_or_else(|| format!("exit status {}", self.status))
    }
}

/// A remote file's metadata (sync STAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStat {
    /// st_mode.
    pub mode: u32,
    /// Size in bytes (low 32 bits on old sync).
    pub size: u64,
    /// mtime, seconds.
    pub mtime: u32,
}

/// A phone as phonectl needs it.
pub trait Device: Send + Sync {
    /// The serial naming this phone in every message.
    fn serial(&self) -> &str;

    /// Runs `cmd` (as the adb shell user), streaming `stdin` to it when given and closing it at
    /// the end; `progress` gets the cumulative stdin bytes sent.
    fn exec(
        &self,
        cmd: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<ShellOutput, AdbError>;

    /// Runs `cmd` without input.
    fn shell(&self, cmd: &str) -> Result<ShellOutput, AdbError> {
        self.exec(cmd, None, &mut |_| {})
    }

    /// Streams `src` to the file `remote` with permission `mode` (sync SEND); returns bytes sent.
    fn push(
        &self,
        src: &mut dyn Read,
        remote: &str,
        mode: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, AdbError>;

    /// Copies the file `remote` into `out` (sync RECV); returns its size.
    fn pull(&self, remote: &str, out: &mut dyn std::io::Write) -> Result<u64, AdbError>;

    /// Metadata of `remote`, None when it does not exist (or the shell user cannot see it).
    fn stat(&self, remote: &str) -> Result<Option<RemoteStat>, AdbError>;
}

/// Quotes `s` for a POSIX shell (single quotes; works in Android's mksh, toybox and busybox ash).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `su -c CMD`: how root work is done on a Magisk/KernelSU phone, where adbd runs as the shell
/// user (uid 2000). The command is one argument, run by su's shell.
pub fn as_root(cmd: &str) -> String {
    format!("su -c {}", sh_quote(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("/data/armfleet"), "/data/armfleet");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(as_root("echo 'x'"), r"su -c 'echo '\''x'\'''");
    }

    #[test]
    fn err_line_prefers_stderr() {
        let o = ShellOutput {
            status: 1,
            stdout: b"out\n".to_vec(),
            stderr: b"first\nlast\n\n".to_vec(),
        };
        assert_eq!(o.err_line(), "last");
    }
}
