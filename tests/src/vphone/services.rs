//! The services adbd offers on a stream (SERVICES.TXT): `shell:` (v1), `shell,v2,...:`, `exec:`,
//! `sync:`, `reboot:`, `root:`. Anything else is refused with CLSE, as adbd refuses it.

use super::phone::Inner;
use super::sync;
use super::transport::Stream;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::Arc;

/// A parsed service request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Service {
    /// A command (or an interactive shell when empty); `v2` selects the shell protocol.
    Shell {
        /// Shell protocol (separate stdout/stderr, exit code).
        v2: bool,
        /// The command line; empty for an interactive shell.
        command: String,
        /// Run on a pseudo-terminal (`pty`, or no type and no command), with this `TERM`.
        pty: Option<String>,
    },
    /// The file sync protocol.
    Sync,
    /// Reboot (any target: the virtual phone has only one way to boot).
    Reboot,
    /// `adb root`: refused as on a production build.
    Root,
    /// `adb remount`: refused as on a production build (adbd is not root).
    Remount,
}

/// Parses the OPEN payload; `None` for services adbd would refuse.
pub(crate) fn parse(service: &str) -> Option<Service> {
    if let Some(rest) = service.strip_prefix("shell") {
        let (args, command) = rest.split_once(':')?;
        let mut v2 = false;
        let mut kind = None;
        let mut term = "dumb".to_owned();
        for arg in args.split(',').filter(|a| !a.is_empty()) {
            match arg {
                "v2" => v2 = true,
                "raw" => kind = Some(false),
                "pty" => kind = Some(true),
                a if a.starts_with("TERM=") => term = a["TERM=".len()..].to_owned(),
                _ => return None,
            }
        }
        // adbd: a PTY when asked, or by default for an interactive shell; raw for commands.
        let pty = kind.unwrap_or(command.is_empty());
        return Some(Service::Shell {
            v2,
            command: command.to_owned(),
            pty: pty.then_some(term),
        });
    }
    if let Some(command) = service.strip_prefix("exec:") {
        return Some(Service::Shell {
            v2: false,
            command: command.to_owned(),
            pty: None,
        });
    }
    match service {
        "sync:" => Some(Service::Sync),
        "root:" => Some(Service::Root),
        s if s.starts_with("remount:") => Some(Service::Remount),
        s if s == "reboot:" || s.starts_with("reboot:") => Some(Service::Reboot),
        _ => None,
    }
}

/// Serves `service` on `stream` until it is done (the caller closes the stream).
pub(crate) fn run(service: Service, stream: &Arc<Stream>, phone: &Arc<Inner>) {
    match service {
        Service::Shell {
            v2,
            command,
            pty: None,
        } => shell(v2, &command, stream, phone),
        Service::Shell {
            v2,
            command,
            pty: Some(term),
        } => pty_shell(v2, &command, &term, stream, phone),
        Service::Sync => sync::serve(stream, phone),
        Service::Root => {
            let _ = stream.send(b"adbd cannot run as root in production builds\n");
        }
        Service::Remount => {
            let _ = stream.send(b"Not running as root. Try \"adb root\" first.\n");
        }
        Service::Reboot => {
            // adbd acknowledges, then the phone goes down under the host's feet.
            phone.log("adbd: reboot requested by the host");
            // Going down starts now: wait_booted() called as soon as `adb reboot` returns must
            // wait for the next boot, not see this one.
            phone.going_down();
            let phone = phone.clone();
            std::thread::spawn(move || phone.reboot());
        }
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

const ID_STDIN: u8 = 0;
const ID_STDOUT: u8 = 1;
const ID_STDERR: u8 = 2;
const ID_EXIT: u8 = 3;
const ID_CLOSE_STDIN: u8 = 4;
const ID_WINDOW_SIZE: u8 = 5;

fn frame(id: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(id);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn shell(v2: bool, command: &str, stream: &Arc<Stream>, phone: &Arc<Inner>) {
    let mut cmd = phone.shell_command(command, false);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let (out_r, out_w) = pipe();
    let err = if v2 {
        let (err_r, err_w) = pipe();
        cmd.stderr(Stdio::from(err_w));
        Some(err_r)
    } else {
        cmd.stderr(Stdio::from(out_w.try_clone().expect("dup pipe")));
        None
    };
    cmd.stdout(Stdio::from(out_w)).stdin(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("/system/bin/sh: cannot start: {e}\n");
            if v2 {
                let _ = stream.send(&frame(ID_STDERR, msg.as_bytes()));
                let _ = stream.send(&frame(ID_EXIT, &[127]));
            } else {
                let _ = stream.send(msg.as_bytes());
            }
            return;
        }
    };
    // The Command still holds the write ends; drop it so EOF arrives when the child exits.
    drop(cmd);
    let stdin = child.stdin.take();
    let pgid = child.id() as i32;

    let pump = |fd: OwnedFd, id: Option<u8>| {
        let stream = stream.clone();
        let chunk = stream.max_payload().saturating_sub(5).max(1);
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            let mut buf = vec![0u8; chunk.min(64 * 1024)];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = match id {
                            Some(id) => frame(id, &buf[..n]),
                            None => buf[..n].to_vec(),
                        };
                        if stream.send(&data).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let out_thread = pump(out_r, v2.then_some(ID_STDOUT));
    let err_thread = err.map(|fd| pump(fd, Some(ID_STDERR)));

    // Host input: raw bytes (v1) or shell-protocol frames (v2). When the host closes the stream
    // the command loses its terminal: adbd kills it.
    let input_stream = stream.clone();
    let input_thread = std::thread::spawn(move || {
        let mut stdin = stdin;
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = input_stream.recv() {
            if !v2 {
                if let Some(s) = stdin.as_mut() {
                    let _ = s.write_all(&chunk);
                }
                continue;
            }
            pending.extend_from_slice(&chunk);
            // Whole frames are written from `pending` in place and dropped in one drain: this
            // relays every byte of a rootfs pushed through stdin, so no per-byte work here.
            let mut at = 0;
            while pending.len() - at >= 5 {
                let len = u32::from_le_bytes(pending[at + 1..at + 5].try_into().unwrap()) as usize;
                if pending.len() - at < 5 + len {
                    break;
                }
                let id = pending[at];
                let data = &pending[at + 5..at + 5 + len];
                at += 5 + len;
                match id {
                    ID_STDIN => {
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(data);
                        }
                    }
                    ID_CLOSE_STDIN => stdin = None,
                    ID_WINDOW_SIZE => {}
                    _ => {}
                }
            }
            pending.drain(..at);
        }
        drop(stdin);
        if input_stream.is_host_closed() {
            // SAFETY: signalling the process group we created for this command.
            unsafe { libc::kill(-pgid, libc::SIGHUP) };
        }
    });

    let _ = out_thread.join();
    if let Some(t) = err_thread {
        let _ = t.join();
    }
    let code = exit_code(&mut child);
    if v2 {
        let _ = stream.send(&frame(ID_EXIT, &[code]));
    }
    stream.close();
    let _ = input_thread.join();
}

/// A command (or interactive shell) on a pseudo-terminal, as adbd runs `pty` shells: the command
/// gets a new session with the terminal as its controlling tty; the host's window-size frames
/// resize it; stdout and stderr both come through the terminal.
fn pty_shell(v2: bool, command: &str, term: &str, stream: &Arc<Stream>, phone: &Arc<Inner>) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let _ = stream.send(&frame(ID_STDERR, b"openpty failed\n"));
        let _ = stream.send(&frame(ID_EXIT, &[1]));
        return;
    }
    // SAFETY: both were just created by openpty.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = phone.shell_command(command, false);
    cmd.env("TERM", term)
        .stdin(Stdio::from(slave.try_clone().expect("dup pty")))
        .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they run between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("/system/bin/sh: cannot start: {e}\n");
            let _ = stream.send(&frame(ID_STDOUT, msg.as_bytes()));
            let _ = stream.send(&frame(ID_EXIT, &[127]));
            return;
        }
    };
    drop(cmd);
    let pid = child.id() as i32;
    let mut out = std::fs::File::from(master);
    let mut input = out.try_clone().expect("dup pty master");
    let input_stream = stream.clone();
    let input_thread = std::thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = input_stream.recv() {
            if !v2 {
                let _ = input.write_all(&chunk);
                continue;
            }
            pending.extend_from_slice(&chunk);
            while pending.len() >= 5 {
                let len = u32::from_le_bytes(pending[1..5].try_into().unwrap()) as usize;
                if pending.len() < 5 + len {
                    break;
                }
                let id = pending[0];
                let data: Vec<u8> = pending.drain(..5 + len).skip(5).collect();
                match id {
                    ID_STDIN => {
                        let _ = input.write_all(&data);
                    }
                    ID_WINDOW_SIZE => set_window_size(&input, &data),
                    _ => {}
                }
            }
        }
        if input_stream.is_host_closed() {
            // SAFETY: the command leads its own session; hang it up like a closed terminal.
            unsafe { libc::kill(-pid, libc::SIGHUP) };
        }
    });
    let chunk = stream.max_payload().saturating_sub(5).clamp(1, 64 * 1024);
    let mut buf = vec![0u8; chunk];
    // Reading the master fails with EIO once every holder of the terminal has gone.
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        let data = if v2 {
            frame(ID_STDOUT, &buf[..n])
        } else {
            buf[..n].to_vec()
        };
        if stream.send(&data).is_err() {
            break;
        }
    }
    let code = exit_code(&mut child);
    if v2 {
        let _ = stream.send(&frame(ID_EXIT, &[code]));
    }
    stream.close();
    let _ = input_thread.join();
}

/// Applies a shell-protocol window-size frame (`ROWSxCOLS,XPIXELSxYPIXELS`).
fn set_window_size(tty: &std::fs::File, data: &[u8]) {
    use std::os::fd::AsRawFd;
    let text = String::from_utf8_lossy(data);
    let nums: Vec<u16> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [rows, cols, x, y] = nums[..] {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: x,
            ws_ypixel: y,
        };
        // SAFETY: TIOCSWINSZ on our own pty master with a valid winsize.
        unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

fn exit_code(child: &mut Child) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => (128 + sig) as u8,
            _ => 255,
        },
        Err(_) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_like_adbd() {
        assert_eq!(
            parse("shell,v2,TERM=xterm-256color,raw:echo hi"),
            Some(Service::Shell {
                v2: true,
                command: "echo hi".into(),
                pty: None
            })
        );
        assert_eq!(
            parse("shell:ls"),
            Some(Service::Shell {
                v2: false,
                command: "ls".into(),
                pty: None
            })
        );
        assert_eq!(
            parse("shell,v2,TERM=xterm,pty:"),
            Some(Service::Shell {
                v2: true,
                command: String::new(),
                pty: Some("xterm".into())
            })
        );
        assert_eq!(
            parse("shell:"),
            Some(Service::Shell {
                v2: false,
                command: String::new(),
                pty: Some("dumb".into())
            })
        );
        assert_eq!(parse("sync:"), Some(Service::Sync));
        assert_eq!(parse("reboot:bootloader"), Some(Service::Reboot));
        assert_eq!(parse("framebuffer:"), None);
        assert_eq!(parse("jdwp:123"), None);
        assert_eq!(parse("shell,bogus:ls"), None);
    }
}
