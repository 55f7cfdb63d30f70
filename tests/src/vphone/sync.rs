//! The `sync:` service (SYNC.TXT, `file_sync_service.cpp` at 29.0.6), run in a thread that has
//! entered the phone's mount namespace and root, with the shell user's filesystem identity, so a
//! push can write only where uid 2000 may, as on a production phone.

use super::phone::Inner;
use super::transport::{Stream, StreamReader};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::Arc;

const SYNC_DATA_MAX: usize = 64 * 1024;
/// adbd's path limit for sync requests.
const PATH_MAX: usize = 1024;

fn id(tag: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*tag)
}

/// Buffers replies and flushes them as WRTEs (adbd writes to a socket; the host reads a stream).
struct Reply<'a> {
    stream: &'a Stream,
    buf: Vec<u8>,
}

impl Reply<'_> {
    fn word(&mut self, w: u32) -> &mut Self {
        self.buf.extend_from_slice(&w.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    fn flush(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        self.stream.send(&data)
    }
    fn fail(&mut self, msg: &str) -> io::Result<()> {
        self.bytes(b"FAIL")
            .word(msg.len() as u32)
            .bytes(msg.as_bytes());
        self.flush()
    }
}

fn errno_text(e: &io::Error) -> String {
    // strerror's text, as adbd's SendSyncFailErrno writes it.
    let raw = e.raw_os_error().unwrap_or(libc::EIO);
    // SAFETY: strerror returns a pointer to a static, NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(raw)) }
        .to_string_lossy()
        .into_owned()
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Serves sync requests until QUIT or the host closes the stream.
pub(crate) fn serve(stream: &Arc<Stream>, phone: &Arc<Inner>) {
    if let Err(e) = phone.enter_as_shell_user() {
        phone.log(&format!("adbd: sync: cannot enter the phone: {e}"));
        return;
    }
    let mut input = StreamReader::new(stream.clone());
    let mut reply = Reply {
        stream,
        buf: Vec::new(),
    };
    loop {
        let (cmd, len) = match (read_u32(&mut input), read_u32(&mut input)) {
            (Ok(c), Ok(l)) => (c, l as usize),
            _ => return,
        };
        if cmd == id(b"QUIT") {
            return;
        }
        if len > PATH_MAX {
            let _ = reply.fail(&format!("path too long: {len}"));
            return;
        }
        let mut path = vec![0u8; len];
        if input.read_exact(&mut path).is_err() {
            return;
        }
        let path = String::from_utf8_lossy(&path).into_owned();
        let ok = match &cmd.to_le_bytes() {
            b"STAT" => stat_v1(&mut reply, &path),
            b"STA2" => stat_v2(&mut reply, &path, true),
            b"LST2" => stat_v2(&mut reply, &path, false),
            b"LIST" => list(&mut reply, &path, false),
            b"LIS2" => list(&mut reply, &path, true),
            b"SEND" => send(&mut reply, &mut input, &path),
            b"RECV" => recv(&mut reply, &path),
            _ => {
                let _ = reply.fail(&format!(
                    "unknown command {:?}",
                    String::from_utf8_lossy(&cmd.to_le_bytes())
                ));
                false
            }
        };
        if !ok {
            return;
        }
    }
}

fn stat_v1(reply: &mut Reply, path: &str) -> bool {
    let (mode, size, mtime) = match std::fs::symlink_metadata(path) {
        Ok(m) => (m.mode(), m.size() as u32, m.mtime() as u32),
        Err(_) => (0, 0, 0),
    };
    reply
        .bytes(b"STAT")
        .word(mode)
        .word(size)
        .word(mtime)
        .flush()
        .is_ok()
}

fn stat_v2_fields(reply: &mut Reply, md: Result<std::fs::Metadata, io::Error>) {
    match md {
        Ok(m) => {
            reply.word(0);
            reply
                .bytes(&m.dev().to_le_bytes())
                .bytes(&m.ino().to_le_bytes());
            reply
                .word(m.mode())
                .word(m.nlink() as u32)
                .word(m.uid())
                .word(m.gid());
            reply.bytes(&m.size().to_le_bytes());
            for t in [m.atime(), m.mtime(), m.ctime()] {
                reply.bytes(&t.to_le_bytes());
            }
        }
        Err(e) => {
            reply.word(e.raw_os_error().unwrap_or(libc::EIO) as u32);
            reply.bytes(&[0u8; 64]);
        }
    }
}

fn stat_v2(reply: &mut Reply, path: &str, follow: bool) -> bool {
    let md = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    reply.bytes(if follow { b"STA2" } else { b"LST2" });
    stat_v2_fields(reply, md);
    reply.flush().is_ok()
}

fn list(reply: &mut Reply, path: &str, v2: bool) -> bool {
    let mut names: Vec<String> = vec![".".into(), "..".into()];
    if let Ok(dir) = std::fs::read_dir(path) {
        names.extend(
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    let dir_ok = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
    if dir_ok {
        for name in names {
            let md = std::fs::symlink_metadata(format!("{}/{}", path.trim_end_matches('/'), name));
            if v2 {
                reply.bytes(b"DNT2");
                stat_v2_fields(reply, md);
            } else {
                let Ok(m) = md else { continue };
                reply
                    .bytes(b"DENT")
                    .word(m.mode())
                    .word(m.size() as u32)
                    .word(m.mtime() as u32);
            }
            reply.word(name.len() as u32).bytes(name.as_bytes());
            if reply.buf.len() >= SYNC_DATA_MAX && reply.flush().is_err() {
                return false;
            }
        }
    }
    if v2 {
        reply.bytes(b"DONE").bytes(&[0u8; 72]);
    } else {
        reply.bytes(b"DONE").bytes(&[0u8; 16]);
    }
    reply.flush().is_ok()
}

/// Creates the missing parents of `path` as the shell user (adbd's `secure_mkdirs`).
fn mkdirs(path: &str) -> io::Result<()> {
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o775)
            .create(parent)?;
    }
    Ok(())
}

fn send(reply: &mut Reply, input: &mut StreamReader, spec: &str) -> bool {
    let (path, mode) = match spec.rsplit_once(',') {
        Some((p, m)) => (p.to_owned(), parse_mode(m)),
        None => (spec.to_owned(), 0o644),
    };
    let is_link = mode & libc::S_IFMT == libc::S_IFLNK;
    let mut error: Option<String> = None;
    let mut file = None;
    let mut link_target = Vec::new();
    if !is_link {
        let opened = mkdirs(&path)
            .map_err(|e| format!("secure_mkdirs failed: {}", errno_text(&e)))
            .and_then(|()| {
                let _ = std::fs::remove_file(&path);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode & 0o777)
                    .open(&path)
                    .map_err(|e| format!("couldn't create file: {}", errno_text(&e)))
            });
        match opened {
            Ok(f) => file = Some(f),
            Err(e) => error = Some(e),
        }
    }
    // DATA chunks until DONE. After a failure, adbd keeps reading and discarding them so the host
    // sees the FAIL instead of a broken pipe.
    let mtime = loop {
        let (tag, len) = match (read_u32(input), read_u32(input)) {
            (Ok(t), Ok(l)) => (t, l as usize),
            _ => {
                drop(file);
                if !is_link {
                    let _ = std::fs::remove_file(&path);
                }
                return false;
            }
        };
        if tag == id(b"DONE") {
            break len as u32;
        }
        if tag != id(b"DATA") || len > SYNC_DATA_MAX {
            let _ = reply.fail("invalid data message");
            drop(file);
            let _ = std::fs::remove_file(&path);
            return false;
        }
        let mut data = vec![0u8; len];
        if input.read_exact(&mut data).is_err() {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return false;
        }
        if error.is_some() {
            continue;
        }
        if is_link {
            link_target.extend_from_slice(&data);
        } else if let Some(f) = file.as_mut()
            && let Err(e) = f.write_all(&data)
        {
            error = Some(format!("write failed: {}", errno_text(&e)));
            file = None;
            let _ = std::fs::remove_file(&path);
        }
    };
    if error.is_none() {
        if is_link {
            let target = String::from_utf8_lossy(&link_target)
                .trim_end_matches('\0')
                .to_owned();
            let _ = std::fs::remove_file(&path);
            if let Err(e) = std::os::unix::fs::symlink(target, &path) {
                error = Some(format!("symlink failed: {}", errno_text(&e)));
            }
        } else if let Some(f) = file.take() {
            let synced = f.sync_all().and_then(|()| {
                let t = libc::timespec {
                    tv_sec: i64::from(mtime),
                    tv_nsec: 0,
                };
                let times = [t, t];
                let c = std::ffi::CString::new(path.as_str()).unwrap();
                // SAFETY: a valid NUL-terminated path and two timespecs.
                let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
            if let Err(e) = synced {
                error = Some(format!("write failed: {}", errno_text(&e)));
                let _ = std::fs::remove_file(&path);
            } else {
                let _ =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777));
            }
        }
    }
    match error {
        None => reply.bytes(b"OKAY").word(0).flush().is_ok(),
        Some(msg) => {
            let _ = reply.fail(&msg);
            false
        }
    }
}

/// The mode after the comma: adbd parses it with `strtoul(..., 0)` (decimal from adb 29.0.6,
/// octal with a leading 0 from adb_client's `0777`).
fn parse_mode(s: &str) -> u32 {
    let s = s.trim();
    let parsed = if let Some(hex) = s.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8)
    } else {
        s.parse()
    };
    match parsed {
        Ok(m) if m & libc::S_IFMT != 0 => m,
        Ok(m) => m | libc::S_IFREG,
        Err(_) => libc::S_IFREG | 0o644,
    }
}

fn recv(reply: &mut Reply, path: &str) -> bool {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = reply.fail(&format!("open failed: {}", errno_text(&e)));
            return false;
        }
    };
    let mut buf = vec![0u8; SYNC_DATA_MAX];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.bytes(b"DATA").word(n as u32).bytes(&buf[..n]);
                if reply.flush().is_err() {
                    return false;
                }
            }
            Err(e) => {
                let _ = reply.fail(&format!("read failed: {}", errno_text(&e)));
                return false;
            }
        }
    }
    reply.bytes(b"DONE").word(0).flush().is_ok()
}

#[cfg(test)]
mod tests {
    use super::parse_mode;

    #[test]
    fn modes_parse_like_strtoul_base_0() {
        assert_eq!(parse_mode("33188"), 0o100644);
        assert_eq!(parse_mode("0777"), 0o100777);
        assert_eq!(parse_mode("0x1ed"), 0o100755);
        assert_eq!(parse_mode("41471"), 0o120777);
    }
}
