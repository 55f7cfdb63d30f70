//! Standard output for results. A reader that goes away (`phonectl devices | head -n1`) ends the
//! program quietly with success: what it wanted it got. Rust's own `println!` would panic there.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: from now on [`print`] and [`println`] print nothing. JSON (asked for by `--json`)
/// and errors still come out.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes `text` to stdout (nothing with `--quiet`); a closed pipe exits the process with
/// status 0.
pub fn print(text: &str) {
    if quiet() {
        return;
    }
    write_stdout(text);
}

fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Anything else (a full disk behind a redirect) is worth a line, not a panic.
        eprintln!("cannot write to stdout: {e}");
        std::process::exit(i32::from(bootstrap::exit::ExitClass::Device.code()));
    }
}

/// [`print`] with a line break.
pub fn println(text: &str) {
    print(&format!("{text}\n"));
}

/// Prints `value` as pretty JSON (what `--json` gives scripts).
pub fn json<T: serde::Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => write_stdout(&format!("{text}\n")),
        Err(e) => {
            eprintln!("cannot render JSON: {e}");
            std::process::exit(i32::from(bootstrap::exit::ExitClass::Internal.code()));
        }
    }
}

/// This process's stdin, read without blocking for more than a moment: a read with nothing to
/// read returns `TimedOut`, so a pump that forwards it to a remote command notices that the
/// command has exited instead of waiting for the next key press.
#[derive(Debug, Default)]
pub struct PolledStdin;

impl std::io::Read for PolledStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let fd = libc::STDIN_FILENO;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // Readable, at end of input, or hung up: a plain read returns at once. Unbuffered, so no
        // input is held back in a buffer when the command ends.
        // SAFETY: reading into a buffer of the length passed.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}
