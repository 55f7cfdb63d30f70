//! The seam between phonectl's logic and ADB: everything phonectl does to a phone goes through
//! [`Device`], so the logic never depends on how bytes reach the phone.

use std::io::{self, Read, Write};

/// Why talking to a phone (or the adb server that reaches it) failed. Each message says what
/// to do. It lives with the [`Device`] trait, which every transport implements.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Nothing listens on the server port and no server could be started.
    #[error(
        "no adb server on 127.0.0.1:{port} and none could be started ({reason}): install Android platform-tools (`adb`) or start the server with `adb -P {port} start-server`"
    )]
    NoServer {
        /// The port tried.
        port: u16,
        /// Why starting one failed.
        reason: String,
    },
    /// No device is attached.
    #[error(
        "no phone attached: plug it in over USB, enable USB debugging (Settings > Developer options) and check `adb devices`"
    )]
    NoDevice,
    /// Several devices and no serial given.
    #[error("several phones attached ({serials}): choose one with -s SERIAL, or use --all")]
    SeveralDevices {
        /// The serials, comma separated.
        serials: String,
    },
    /// The serial is not attached.
    #[error(
        "phone {serial} is not attached (attached: {attached}): check the serial with `phonectl devices`"
    )]
    UnknownSerial {
        /// The serial asked for.
        serial: String,
        /// What is attached.
        attached: String,
    },
    /// The device has not accepted this computer's key.
    #[error(
        "phone {serial} is unauthorized: unlock the phone and accept the USB debugging prompt, then retry"
    )]
    Unauthorized {
        /// The device.
        serial: String,
    },
    /// The device is attached but not answering.
    #[error(
        "phone {serial} is offline: unplug and replug the cable, or run `adb reconnect`, then retry"
    )]
    Offline {
        /// The device.
        serial: String,
    },
    /// The device is in some other state (recovery, sideload, bootloader...).
    #[error("phone {serial} is in state `{state}`, not `device`: boot it into Android and retry")]
    BadState {
        /// The device.
        serial: String,
        /// The state the server reports.
        state: String,
    },
    /// The device's adbd does not speak shell protocol v2 (Android < 7).
    #[error("phone {serial}: its adbd lacks shell protocol v2 (Android 7 or newer is needed)")]
    NoShellV2 {
        /// The device.
        serial: String,
    },
    /// The server refused a request.
    #[error("phone {serial}: adb server refused `{request}`: {message}")]
    Refused {
        /// The device (or `-` for host requests).
        serial: String,
        /// The request.
        request: String,
        /// The server's message.
        message: String,
    },
    /// The connection broke (cable pulled, server killed, device rebooted).
    #[error(
        "phone {serial}: connection lost during {what} ({source}): check the cable and rerun; nothing half-done is activated"
    )]
    Io {
        /// The device (or `-`).
        serial: String,
        /// What was being done.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A sync request failed on the device (e.g. permission denied, no space).
    #[error("phone {serial}: {op} {path} failed: {message}")]
    Sync {
        /// The device.
        serial: String,
        /// `push` / `pull`.
        op: &'static str,
        /// The remote path.
        path: String,
        /// The device's message.
        message: String,
    },
    /// The server or device said something that is not the protocol.
    #[error("phone {serial}: protocol error: {message}")]
    Protocol {
        /// The device (or `-`).
        serial: String,
        /// What was wrong.
        message: String,
    },
}

impl DeviceError {
    /// True for "the connection broke": the caller may say "rerun".
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, DeviceError::Io { .. })
    }
}

/// What a remote command did: its real exit status and its two output streams, kept apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// the end; its output goes to the sinks as it arrives; `progress` gets the cumulative stdin
    /// bytes sent. Returns the command's exit status. An input that may block for long (a
    /// terminal) should return `ErrorKind::TimedOut` now and then, so the call returns when the
    /// command ends rather than at the next key press.
    fn exec_streaming(
        &self,
        cmd: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        progress: &mut (dyn FnMut(u64) + Send),
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, DeviceError>;

    /// [`Device::exec_streaming`] with both outputs collected.
    fn exec(
        &self,
        cmd: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<ShellOutput, DeviceError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self.exec_streaming(cmd, stdin, progress, &mut stdout, &mut stderr)?;
        Ok(ShellOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Bytes sent to the phone so far through this handle (for summaries and the speed tests).
    fn bytes_sent(&self) -> u64 {
        0
    }

    /// Runs `cmd` without input.
    fn shell(&self, cmd: &str) -> Result<ShellOutput, DeviceError> {
        self.exec(cmd, None, &mut |_| {})
    }

    /// Streams `src` to the file `remote` with permission `mode` (sync SEND); returns bytes sent.
    fn push(
        &self,
        src: &mut dyn Read,
        remote: &str,
        mode: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, DeviceError>;

    /// Copies the file `remote` into `out` (sync RECV); returns its size.
    fn pull(&self, remote: &str, out: &mut dyn std::io::Write) -> Result<u64, DeviceError>;

    /// Metadata of `remote`, None when it does not exist (or the shell user cannot see it).
    fn stat(&self, remote: &str) -> Result<Option<RemoteStat>, DeviceError>;
}

/// Runs `cmds` in one shell on the phone and returns one [`ShellOutput`] per command, in order.
///
/// One shell instead of one per command: on a phone each `adb shell` is a round trip and a
/// process start, and each `su` a hand-off to the root daemon; a probe of a dozen facts paid that
/// a dozen times. With `root` the whole batch runs in one `su -c`.
///
/// After each command the script writes a marker line to stdout (with the command's exit status)
/// and to stderr. The marker carries a nonce made fresh for every call, so no output — binary
/// `/proc/config.gz` included — can end a section early by looking like one. Only shell
/// built-ins (`echo`) write the markers: on a phone every extra exec costs.
///
/// When the batch dies before a command's marker (no `su`, `su` denied), that command and all
/// after it get the batch's own exit status (255 if it claimed success) and its remaining output.
pub fn shell_batch(
    dev: &dyn Device,
    cmds: &[&str],
    root: bool,
) -> Result<Vec<ShellOutput>, DeviceError> {
    let nonce = batch_nonce();
    let mut script = String::new();
    for (i, cmd) in cmds.iter().enumerate() {
        // `{ }` rather than `( )`: no fork per command. stdin closed: a command must not eat the
        // script's (su reads the script from its argument, but a stray read would still block).
        script.push_str(&format!(
            "{{\n{cmd}\n}} </dev/null; r=$?; echo; echo \"{nonce} {i} $r\"; echo >&2; echo \"{nonce} {i}\" >&2\n"
        ));
    }
    let out = dev.shell(&if root { as_root(&script) } else { script })?;
    Ok(split_batch(&out, &nonce, cmds.len()))
}

/// A marker nonce no command output will contain by chance: 128 bits from std's randomly keyed
/// hasher (fresh keys per `RandomState`), as hex.
fn batch_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    };
    format!("armfleet-{:016x}{:016x}", word(), word())
}

/// Splits a batch's streams at its markers (see [`shell_batch`]).
fn split_batch(out: &ShellOutput, nonce: &str, count: usize) -> Vec<ShellOutput> {
    // The same prefix starts the stdout and the stderr markers.
    let marker = format!("\n{nonce} ");
    let mut rest_out: &[u8] = &out.stdout;
    let mut rest_err: &[u8] = &out.stderr;
    let mut results = Vec::with_capacity(count);
    for i in 0..count {
        // stdout: "<output>\n<nonce> <i> <status>\n"
        let marked = find(rest_out, marker.as_bytes()).and_then(|at| {
            let tail = &rest_out[at + marker.len()..];
            let end = tail.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&tail[..end]).ok()?;
            let (index, status) = line.split_once(' ')?;
            (index.parse::<usize>().ok()? == i).then_some(())?;
            Some((at, status.parse::<i32>().ok()?, &tail[end + 1..]))
        });
        let Some((at, status, after)) = marked else {
            // The batch ended here: this command and the ones after it carry its verdict.
            let status = if out.status == 0 { 255 } else { out.status };
            for _ in i..count {
                results.push(ShellOutput {
                    status,
                    stdout: rest_out.to_vec(),
                    stderr: rest_err.to_vec(),
                });
            }
            return results;
        };
        let stdout = rest_out[..at].to_vec();
        rest_out = after;
        let want = format!("{i}\n");
        let stderr = match find(rest_err, marker.as_bytes()) {
            Some(e) if rest_err[e + marker.len()..].starts_with(want.as_bytes()) => {
                let section = rest_err[..e].to_vec();
                rest_err = &rest_err[e + marker.len() + want.len()..];
                section
            }
            _ => std::mem::take(&mut rest_err).to_vec(),
        };
        results.push(ShellOutput {
            status,
            stdout,
            stderr,
        });
    }
    results
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

    /// The host's `sh` standing in for the phone's: enough to run a batch script for real.
    struct HostShell;

    impl Device for HostShell {
        fn serial(&self) -> &str {
            "host"
        }
        fn exec_streaming(
            &self,
            cmd: &str,
            _stdin: Option<&mut (dyn Read + Send)>,
            _progress: &mut (dyn FnMut(u64) + Send),
            stdout: &mut dyn Write,
            stderr: &mut dyn Write,
        ) -> Result<i32, DeviceError> {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .output()
                .expect("run sh");
            stdout.write_all(&o.stdout).unwrap();
            stderr.write_all(&o.stderr).unwrap();
            Ok(o.status.code().unwrap_or(-1))
        }
        fn push(
            &self,
            _: &mut dyn Read,
            _: &str,
            _: u32,
            _: &mut dyn FnMut(u64),
        ) -> Result<u64, DeviceError> {
            unreachable!()
        }
        fn pull(&self, _: &str, _: &mut dyn std::io::Write) -> Result<u64, DeviceError> {
            unreachable!()
        }
        fn stat(&self, _: &str) -> Result<Option<RemoteStat>, DeviceError> {
            unreachable!()
        }
    }

    #[test]
    fn batch_keeps_each_commands_streams_and_status_apart() {
        // Output without a final newline, binary bytes, a line shaped like a marker (but with
        // another nonce), stderr, and a failing command in the middle.
        let outs = shell_batch(
            &HostShell,
            &[
                "printf 'no newline'",
                "printf '\\001\\000\\377\\n\\n'; echo 'armfleet-0000 1 0'",
                "echo oops >&2; exit_code() { return 7; }; exit_code",
                "cat; echo after",
            ],
            false,
        )
        .unwrap();
        assert_eq!(outs.len(), 4);
        assert_eq!(outs[0].stdout, b"no newline");
        assert_eq!(outs[0].status, 0);
        assert_eq!(outs[1].stdout, b"\x01\x00\xff\n\narmfleet-0000 1 0\n");
        assert_eq!(
            (outs[2].status, outs[2].stderr.as_slice()),
            (7, &b"oops\n"[..])
        );
        assert!(outs[2].stdout.is_empty());
        // stdin is closed for each command: `cat` ends at once instead of eating the script.
        assert_eq!(
            (outs[3].status, outs[3].stdout.as_slice()),
            (0, &b"after\n"[..])
        );
    }

    #[test]
    fn a_batch_that_dies_gives_its_failure_to_the_commands_left() {
        // As when `su` is denied: nothing ran, the shell says why.
        let died = ShellOutput {
            status: 1,
            stdout: Vec::new(),
            stderr: b"Permission denied\n".to_vec(),
        };
        let outs = split_batch(&died, "armfleet-n", 2);
        assert!(
            outs.iter()
                .all(|o| o.status == 1 && o.err_line() == "Permission denied")
        );
        // Died after the first command: it keeps its result, the second gets the failure.
        let half = ShellOutput {
            status: 0,
            stdout: b"0\n\narmfleet-n 0 0\npartial".to_vec(),
            stderr: b"\narmfleet-n 0\nkilled\n".to_vec(),
        };
        let outs = split_batch(&half, "armfleet-n", 2);
        assert_eq!(
            (outs[0].status, outs[0].stdout.as_slice()),
            (0, &b"0\n"[..])
        );
        assert!(outs[0].stderr.is_empty());
        assert_eq!(
            (outs[1].status, outs[1].err_line().as_str()),
            (255, "killed")
        );
        assert_eq!(outs[1].stdout, b"partial");
    }
}
