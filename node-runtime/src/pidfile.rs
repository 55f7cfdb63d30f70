//! The supervisor's pidfile: who runs with a config, proven by a lock rather than by a number.
//!
//! `run` holds an exclusive `flock` on the pidfile for as long as it lives (the kernel drops it
//! when the process dies, however it dies), so two supervisors — a boot hook racing an enroll —
//! cannot both start, and a pid left in the file by a dead supervisor names nobody. `stop` and
//! `status` ask the lock first and signal or report only a live node-runtime. Process liveness
//! ([`pid_alive`]) lives here too.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The held pidfile; the lock goes with the descriptor (close-on-exec: the agent does not
/// inherit it, so a crashed supervisor's k3s cannot keep the lock).
#[derive(Debug)]
pub struct PidLock {
    file: File,
}

/// Why the pidfile could not be taken.
#[derive(Debug)]
pub enum ClaimError {
    /// Another live supervisor holds it.
    Held {
        /// Its pid, when the file names one.
        pid: Option<u32>,
    },
    /// The file could not be opened or written.
    Io(std::io::Error),
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| *p != 0)
}

impl PidLock {
    /// Takes the pidfile at `path` (creating it and its directory) and writes this process's pid.
    pub fn claim(path: &Path) -> Result<PidLock, ClaimError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(ClaimError::Io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(ClaimError::Io)?;
        if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                ClaimError::Held {
                    pid: read_pid(path),
                }
            } else {
                ClaimError::Io(e)
            });
        }
        // A supervisor of an older node-runtime kept no lock: its pid in the file still counts.
        if let Some(pid) = read_pid(path)
            && pid != std::process::id()
            && pid_alive(pid)
            && is_node_runtime(pid) == Some(true)
        {
            return Err(ClaimError::Held { pid: Some(pid) });
        }
        file.set_len(0).map_err(ClaimError::Io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(ClaimError::Io)?;
        Ok(PidLock { file })
    }
}

impl Drop for PidLock {
    /// Empties the file when the supervisor ends (it is never removed: a claimer that opened it a
    /// moment before must not end up locking a file nobody else sees). A supervisor killed
    /// outright leaves its pid in the file, but no lock: [`holder`] names nobody then.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The pid of the live node-runtime supervisor that holds the pidfile at `path`, if any.
pub fn holder(path: &Path) -> Option<u32> {
    let pid = read_pid(path)?;
    let running = |pid: u32| pid_alive(pid) && is_node_runtime(pid) == Some(true);
    match File::open(path) {
        Ok(f) => match flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
            // Nobody holds it: only a lock-less supervisor of an older version can be running.
            Ok(()) => {
                let _ = flock(&f, libc::LOCK_UN);
                running(pid).then_some(pid)
            }
            Err(_) => running(pid).then_some(pid),
        },
        Err(_) => None,
    }
}

/// Whether `pid` runs the node-runtime program: its command line names it (under qemu-user the
/// binary's path follows the emulator's). `None` when the process cannot be read.
pub fn is_node_runtime(pid: u32) -> Option<bool> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(cmdline.split(|b| *b == 0).take(3).any(|arg| {
        Path::new(std::ffi::OsStr::new(&*String::from_utf8_lossy(arg)))
            .file_name()
            .is_some_and(|n| n == "node-runtime")
    }))
}

/// True when `pid` names a live process (signal 0; EPERM also means it exists).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => !is_zombie(pid),
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_not_the_number_says_who_runs() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("node-runtime.pid");
        let lock = PidLock::claim(&path).unwrap();
        // This test process is not node-runtime: holder() refuses to name it.
        assert_eq!(holder(&path), None);
        // A second claim fails while the first is held (flock is per open file description).
        assert!(matches!(
            PidLock::claim(&path),
            Err(ClaimError::Held { pid: Some(p) }) if p == std::process::id()
        ));
        drop(lock);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // Released: a new claim succeeds.
        let again = PidLock::claim(&path).unwrap();
        drop(again);
        // A pid of some other live program in a lock-less file names no supervisor.
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(holder(&path), None);
        assert!(PidLock::claim(&path).is_ok());
    }
}
