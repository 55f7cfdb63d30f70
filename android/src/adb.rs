//! ADB over the adb server's host protocol (the TCP socket `adb start-server` listens on).
//!
//! Why not the `adb_client` crate: version 3.2.3 drops the remote exit status and loses output
//! when a command is given stdin (measured against a device-side emulator: `shell_command_v2`
//! returns `Ok(None)` on EOF, and the stdin writer thread is detached). phonectl must know every
//! remote command's exit status, so this module speaks the documented host protocol itself:
//!
//! - `host:devices-l` lists devices with their state;
//! - `host:transport:SERIAL` then `shell,v2,raw:CMD`: shell protocol v2, which frames stdin,
//!   stdout, stderr, close-stdin and the exit status separately (real exit codes, binary safe);
//! - `host:transport:SERIAL` then `sync:` for STAT / SEND / RECV (push and pull).
//!
//! Every byte written to the server is counted ([`AdbServer::bytes_sent`]) so callers can show
//! (and tests can prove) how much an operation sent.

use crate::device::{Device, DeviceError, RemoteStat};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The adb server's default port.
pub const DEFAULT_PORT: u16 = 5037;

/// One line of `adb devices -l`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceEntry {
    /// The serial (`127.0.0.1:PORT` for network devices).
    pub serial: String,
    /// `device`, `unauthorized`, `offline`, ...
    pub state: String,
    /// `model:` from the device banner, when given.
    pub model: Option<String>,
    /// `product:` from the device banner, when given.
    pub product: Option<String>,
    /// `device:` from the device banner, when given.
    pub device: Option<String>,
}

/// Parses the text of `host:devices-l`.
pub fn parse_devices_l(text: &str) -> Vec<DeviceEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(serial), Some(state)) = (words.next(), words.next()) else {
            continue;
        };
        // "no permissions (...)" spans several words; keep the first one as the state.
        let mut e = DeviceEntry {
            serial: serial.to_owned(),
            state: state.to_owned(),
            model: None,
            product: None,
            device: None,
        };
        for w in words {
            if let Some((k, v)) = w.split_once(':') {
                match k {
                    "model" => e.model = Some(v.to_owned()),
                    "product" => e.product = Some(v.to_owned()),
                    "device" => e.device = Some(v.to_owned()),
                    _ => {}
                }
            }
        }
        out.push(e);
    }
    out
}

/// How long a network phone gets to come back (e.g. still booting) before it counts as gone.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);

/// True for a network serial `HOST:PORT` (an `adb connect`ed phone), which adb can reconnect;
/// USB serials and emulators (`emulator-5554`) have no port part.
fn network_serial(serial: &str) -> bool {
    serial
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A connection point to an adb server on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct AdbServer {
    port: u16,
    sent: Arc<AtomicU64>,
}

impl AdbServer {
    /// The port to use: `flag`, else `ANDROID_ADB_SERVER_PORT`, else 5037.
    pub fn port_from(flag: Option<u16>) -> u16 {
        flag.or_else(|| {
            std::env::var("ANDROID_ADB_SERVER_PORT")
                .ok()
                .and_then(|p| p.trim().parse().ok())
        })
        .unwrap_or(DEFAULT_PORT)
    }

    /// Connects to the server on `port`, starting it with `adb -P PORT start-server` when nothing
    /// listens and `adb` is on PATH.
    pub fn connect(port: u16) -> Result<AdbServer, DeviceError> {
        let server = AdbServer {
            port,
            sent: Arc::new(AtomicU64::new(0)),
        };
        match server.version() {
            Ok(_) => return Ok(server),
            Err(DeviceError::Io { .. }) => {}
            Err(e) => return Err(e),
        }
        let started = bootstrap::process::command("adb")
            .args(["-P", &port.to_string(), "start-server"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        let reason = match started {
            Err(e) if e.kind() == io::ErrorKind::NotFound => "`adb` is not on PATH".to_owned(),
            Err(e) => format!("running adb: {e}"),
            Ok(out) if !out.status.success() => {
                let err = String::from_utf8_lossy(&out.stderr);
                format!(
                    "`adb start-server` failed: {}",
                    err.lines().last().unwrap_or("").trim()
                )
            }
            Ok(_) => match server.version() {
                Ok(_) => return Ok(server),
                Err(e) => e.to_string(),
            },
        };
        Err(DeviceError::NoServer { port, reason })
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes written to the server so far by this handle and its clones.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn io_err(serial: &str, what: &str) -> impl FnOnce(io::Error) -> DeviceError {
        let serial = serial.to_owned();
        let what = what.to_owned();
        move |source| DeviceError::Io {
            serial,
            what,
            source,
        }
    }

    fn open(&self, serial: &str) -> Result<Conn, DeviceError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(Self::io_err(serial, "connecting to the adb server"))?;
        stream.set_nodelay(true).ok();
        Ok(Conn {
            stream,
            sent: self.sent.clone(),
            serial: serial.to_owned(),
        })
    }

    /// `host:version`.
    pub fn version(&self) -> Result<u32, DeviceError> {
        let mut c = self.open("-")?;
        c.request("host:version")?;
        let text = c.read_len_prefixed()?;
        u32::from_str_radix(text.trim(), 16).map_err(|_| DeviceError::Protocol {
            serial: "-".into(),
            message: format!("bad version reply {text:?}"),
        })
    }

    /// `host:devices-l`.
    pub fn devices(&self) -> Result<Vec<DeviceEntry>, DeviceError> {
        let mut c = self.open("-")?;
        c.request("host:devices-l")?;
        Ok(parse_devices_l(&c.read_len_prefixed()?))
    }

    /// Chooses the device: `serial` when given (must be attached and ready), else the only one.
    /// A network serial (`HOST:PORT`, a phone on `adb connect`) that is missing or offline, as
    /// after the phone rebooted, is reconnected first.
    pub fn select(&self, serial: Option<&str>) -> Result<AdbDevice, DeviceError> {
        let mut devices = self.devices()?;
        if let Some(s) = serial
            && network_serial(s)
            && devices
                .iter()
                .find(|d| d.serial == s)
                .is_none_or(|d| d.state == "offline")
        {
            devices = self.reconnect(s, RECONNECT_WAIT)?;
        }
        let entry = match serial {
            Some(s) => devices
                .iter()
                .find(|d| d.serial == s)
                .cloned()
                .ok_or_else(|| DeviceError::UnknownSerial {
                    serial: s.to_owned(),
                    attached: attached_list(&devices),
                })?,
            None => match devices.as_slice() {
                [] => return Err(DeviceError::NoDevice),
                [one] => one.clone(),
                _ => {
                    return Err(DeviceError::SeveralDevices {
                        serials: attached_list(&devices),
                    });
                }
            },
        };
        self.device(&entry)
    }

    /// `host:connect:HOST:PORT` (what `adb connect` sends), then waits up to `wait` for the
    /// device to be ready. Returns the device list as it then is; the caller judges the state.
    pub fn reconnect(&self, serial: &str, wait: Duration) -> Result<Vec<DeviceEntry>, DeviceError> {
        let until = std::time::Instant::now() + wait;
        loop {
            let mut c = self.open(serial)?;
            c.request(&format!("host:connect:{serial}"))?;
            // "connected to ..." or "failed to connect to ...": the list below is the judge.
            let _ = c.read_len_prefixed()?;
            let devices = self.devices()?;
            // Settled states only (unauthorized too: the caller says what to do); "connecting"
            // and "authorizing" pass within the wait.
            let ready = devices.iter().any(|d| {
                d.serial == serial && matches!(d.state.as_str(), "device" | "unauthorized")
            });
            if ready || std::time::Instant::now() >= until {
                return Ok(devices);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A handle on an attached device; fails unless its state is `device`.
    pub fn device(&self, entry: &DeviceEntry) -> Result<AdbDevice, DeviceError> {
        let serial = entry.serial.clone();
        match entry.state.as_str() {
            "device" => {}
            "unauthorized" => return Err(DeviceError::Unauthorized { serial }),
            "offline" => return Err(DeviceError::Offline { serial }),
            other => {
                return Err(DeviceError::BadState {
                    serial,
                    state: other.to_owned(),
                });
            }
        }
        // Each device counts its own bytes, so parallel enrolls report their own traffic.
        let dev = AdbDevice {
            server: AdbServer {
                port: self.port,
                sent: Arc::new(AtomicU64::new(0)),
            },
            serial,
        };
        let features = dev.features()?;
        if !features.split(',').any(|f| f == "shell_v2") {
            return Err(DeviceError::NoShellV2 { serial: dev.serial });
        }
        Ok(dev)
    }
}

fn attached_list(devices: &[DeviceEntry]) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    devices
        .iter()
        .map(|d| d.serial.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One TCP connection to the server.
struct Conn {
    stream: TcpStream,
    sent: Arc<AtomicU64>,
    serial: String,
}

impl Conn {
    fn write_all(&mut self, buf: &[u8], what: &str) -> Result<(), DeviceError> {
        self.stream
            .write_all(buf)
            .map_err(AdbServer::io_err(&self.serial, what))?;
        self.sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DeviceError> {
        self.stream
            .read_exact(buf)
            .map_err(AdbServer::io_err(&self.serial, what))
    }

    /// Sends a host request and waits for OKAY; FAIL becomes [`DeviceError::Refused`].
    fn request(&mut self, req: &str) -> Result<(), DeviceError> {
        let msg = format!("{:04x}{req}", req.len());
        self.write_all(msg.as_bytes(), req)?;
        let mut status = [0u8; 4];
        self.read_exact(&mut status, req)?;
        match &status {
            b"OKAY" => Ok(()),
            b"FAIL" => {
                let message = self.read_len_prefixed()?;
                Err(self.refusal(req, message))
            }
            other => Err(DeviceError::Protocol {
                serial: self.serial.clone(),
                message: format!("reply {:?} to {req}", String::from_utf8_lossy(other)),
            }),
        }
    }

    fn refusal(&self, req: &str, message: String) -> DeviceError {
        let serial = self.serial.clone();
        let lower = message.to_lowercase();
        if lower.contains("unauthorized") {
            DeviceError::Unauthorized { serial }
        } else if lower.contains("offline") {
            DeviceError::Offline { serial }
        } else if lower.contains("not found") {
            DeviceError::UnknownSerial {
                serial,
                attached: "see `phonectl devices`".into(),
            }
        } else {
            DeviceError::Refused {
                serial,
                request: req.split(':').next().unwrap_or(req).to_owned(),
                message: message.trim().to_owned(),
            }
        }
    }

    fn read_len_prefixed(&mut self) -> Result<String, DeviceError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len, "reading a reply")?;
        let len =
            usize::from_str_radix(std::str::from_utf8(&len).unwrap_or("x"), 16).map_err(|_| {
                DeviceError::Protocol {
                    serial: self.serial.clone(),
                    message: "bad length prefix".into(),
                }
            })?;
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf, "reading a reply")?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Shell protocol v2 packet ids (AOSP `shell_protocol.h`).
mod v2 {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const EXIT: u8 = 3;
    pub const CLOSE_STDIN: u8 = 4;
}

/// Sync data chunks are at most 64 KiB (AOSP `SYNC_DATA_MAX`).
const SYNC_DATA_MAX: usize = 64 * 1024;
/// A shell v2 packet carries at most one ADB payload (1 MiB with adb 29+).
const SHELL_PACKET_MAX: usize = 1024 * 1024;
/// Sync FAIL messages and LIST names are short texts (a path is at most 4096 bytes on Linux).
const SYNC_TEXT_MAX: usize = 64 * 1024;

/// A length the device announced, refused when no well-behaved adbd sends that much: a broken or
/// hostile peer must not make phonectl allocate gigabytes.
fn bounded(serial: &str, what: &str, len: usize, max: usize) -> Result<usize, DeviceError> {
    if len > max {
        return Err(DeviceError::Protocol {
            serial: serial.to_owned(),
            message: format!(
                "the device announced a {what} of {len} bytes, more than the {max} the protocol allows: reconnect the phone (adb kill-server) and retry"
            ),
        });
    }
    Ok(len)
}

/// A device reached through the adb server.
#[derive(Debug, Clone)]
pub struct AdbDevice {
    server: AdbServer,
    serial: String,
}

impl AdbDevice {
    /// The server this device is reached through.
    pub fn server(&self) -> &AdbServer {
        &self.server
    }

    fn transport(&self, service: &str) -> Result<Conn, DeviceError> {
        // What runs on the phone, for `ARMFLEET_LOG=debug` (commands carry no secrets: those go
        // through stdin).
        tracing::debug!(serial = %self.serial, service, "adb");
        let mut c = self.server.open(&self.serial)?;
        c.request(&format!("host:transport:{}", self.serial))?;
        c.request(service)?;
        Ok(c)
    }

    /// The device's adbd feature list (`host-serial:SERIAL:features`).
    pub fn features(&self) -> Result<String, DeviceError> {
        let mut c = self.server.open(&self.serial)?;
        c.request(&format!("host-serial:{}:features", self.serial))?;
        c.read_len_prefixed()
    }

    /// Runs `cmd` with shell v2; stdout/stderr go to the sinks as they arrive; stdin (if any)
    /// is streamed and then closed. Returns the exit status.
    ///
    /// An input that may block for long (a terminal) should return `ErrorKind::TimedOut` now and
    /// then instead of waiting: the pump then sees that the remote command has exited and stops
    /// reading, so the call returns when the command ends, not at the next key press.
    pub fn run_streaming(
        &self,
        cmd: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        stdin_progress: &mut (dyn FnMut(u64) + Send),
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, DeviceError> {
        let conn = self.transport(&format!("shell,v2,raw:{cmd}"))?;
        let serial = self.serial.clone();
        let reader = conn
            .stream
            .try_clone()
            .map_err(AdbServer::io_err(&serial, "shell"))?;
        let mut conn = conn;
        let remote_done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let remote_done = &remote_done;
            // The writer runs beside the reader so a command that prints while it reads stdin
            // never deadlocks on full socket buffers.
            let writer = scope.spawn(move || -> Result<(), DeviceError> {
                if let Some(input) = stdin {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut done = 0u64;
                    loop {
                        let n = match input.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                                if remote_done.load(std::sync::atomic::Ordering::Acquire) {
                                    break;
                                }
                                continue;
                            }
                            Err(e) => {
                                return Err(DeviceError::Io {
                                    serial: conn.serial.clone(),
                                    what: "reading local input".into(),
                                    source: e,
                                });
                            }
                        };
                        let mut pkt = Vec::with_capacity(n + 5);
                        pkt.push(v2::STDIN);
                        pkt.extend_from_slice(&(n as u32).to_le_bytes());
                        pkt.extend_from_slice(&buf[..n]);
                        conn.write_all(&pkt, "streaming stdin")?;
                        done += n as u64;
                        stdin_progress(done);
                    }
                }
                let mut pkt = vec![v2::CLOSE_STDIN];
                pkt.extend_from_slice(&0u32.to_le_bytes());
                // The command may already have exited and the device closed the stream.
                let _ = conn.write_all(&pkt, "closing stdin");
                Ok(())
            });
            let result = read_v2(reader, &serial, stdout, stderr);
            remote_done.store(true, std::sync::atomic::Ordering::Release);
            let wrote = writer.join().expect("stdin writer panicked");
            match (result, wrote) {
                (Ok(code), _) => Ok(code),
                (Err(e), Err(w)) if !e.is_connection_lost() => Err(w),
                (Err(e), _) => Err(e),
            }
        })
    }

    /// Lists `remote`'s directory entries (names only), or None when it is not a directory.
    pub fn list(&self, remote: &str) -> Result<Option<Vec<String>>, DeviceError> {
        let mut c = self.transport("sync:")?;
        sync_req(&mut c, b"LIST", remote)?;
        let mut names = Vec::new();
        loop {
            let mut hdr = [0u8; 20];
            c.read_exact(&mut hdr[..4], "list")?;
            if &hdr[..4] == b"DONE" {
                let mut rest = [0u8; 16];
                c.read_exact(&mut rest, "list")?;
                break;
            }
            if &hdr[..4] != b"DENT" {
                return Err(DeviceError::Protocol {
                    serial: self.serial.clone(),
                    message: "bad LIST reply".into(),
                });
            }
            c.read_exact(&mut hdr[4..], "list")?;
            let len = u32::from_le_bytes(hdr[16..20].try_into().unwrap()) as usize;
            let len = bounded(&self.serial, "directory entry name", len, SYNC_TEXT_MAX)?;
            let mut name = vec![0u8; len];
            c.read_exact(&mut name, "list")?;
            let name = String::from_utf8_lossy(&name).into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        sync_quit(&mut c);
        Ok(Some(names))
    }
}

fn read_v2(
    mut stream: TcpStream,
    serial: &str,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, DeviceError> {
    let mut hdr = [0u8; 5];
    let mut buf = Vec::new();
    loop {
        if let Err(e) = stream.read_exact(&mut hdr) {
            return Err(DeviceError::Io {
                serial: serial.to_owned(),
                what: "running a shell command (the stream ended before its exit status)".into(),
                source: e,
            });
        }
        let len = u32::from_le_bytes(hdr[1..5].try_into().unwrap()) as usize;
        let len = bounded(serial, "shell packet", len, SHELL_PACKET_MAX)?;
        buf.resize(len, 0);
        stream
            .read_exact(&mut buf)
            .map_err(AdbServer::io_err(serial, "reading shell output"))?;
        match hdr[0] {
            v2::STDOUT => {
                // A closed local sink (e.g. `| head`) must not kill the remote side's accounting.
                let _ = stdout.write_all(&buf);
            }
            v2::STDERR => {
                let _ = stderr.write_all(&buf);
            }
            v2::EXIT => {
                let code = buf.first().copied().unwrap_or(255) as i32;
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(code);
            }
            _ => {}
        }
    }
}

fn sync_req(c: &mut Conn, id: &[u8; 4], path: &str) -> Result<(), DeviceError> {
    let mut req = Vec::with_capacity(8 + path.len());
    req.extend_from_slice(id);
    req.extend_from_slice(&(path.len() as u32).to_le_bytes());
    req.extend_from_slice(path.as_bytes());
    c.write_all(&req, "sync request")
}

fn sync_quit(c: &mut Conn) {
    let mut req = b"QUIT".to_vec();
    req.extend_from_slice(&0u32.to_le_bytes());
    let _ = c.write_all(&req, "sync quit");
}

fn sync_fail_message(c: &mut Conn, len: u32) -> Result<String, DeviceError> {
    let len = bounded(&c.serial, "sync error message", len as usize, SYNC_TEXT_MAX)?;
    let mut msg = vec![0u8; len];
    c.read_exact(&mut msg, "sync")?;
    Ok(String::from_utf8_lossy(&msg).into_owned())
}

impl Device for AdbDevice {
    fn serial(&self) -> &str {
        &self.serial
    }

    fn exec_streaming(
        &self,
        cmd: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        progress: &mut (dyn FnMut(u64) + Send),
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, DeviceError> {
        self.run_streaming(cmd, stdin, progress, stdout, stderr)
    }

    fn bytes_sent(&self) -> u64 {
        self.server.bytes_sent()
    }

    fn push(
        &self,
        src: &mut dyn Read,
        remote: &str,
        mode: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, DeviceError> {
        let mut c = self.transport("sync:")?;
        sync_req(&mut c, b"SEND", &format!("{remote},{mode}"))?;
        let mut buf = vec![0u8; SYNC_DATA_MAX + 8];
        let mut done = 0u64;
        loop {
            let n = match src.read(&mut buf[8..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DeviceError::Io {
                        serial: self.serial.clone(),
                        what: "reading the local file".into(),
                        source: e,
                    });
                }
            };
            buf[..4].copy_from_slice(b"DATA");
            buf[4..8].copy_from_slice(&(n as u32).to_le_bytes());
            c.write_all(&buf[..8 + n], "push")?;
            done += n as u64;
            progress(done);
        }
        let mut fin = b"DONE".to_vec();
        fin.extend_from_slice(&0u32.to_le_bytes());
        c.write_all(&fin, "push")?;
        let mut reply = [0u8; 8];
        c.read_exact(&mut reply, "push")?;
        let len = u32::from_le_bytes(reply[4..8].try_into().unwrap());
        match &reply[..4] {
            b"OKAY" => {
                sync_quit(&mut c);
                Ok(done)
            }
            b"FAIL" => Err(DeviceError::Sync {
                serial: self.serial.clone(),
                op: "push",
                path: remote.to_owned(),
                message: sync_fail_message(&mut c, len)?,
            }),
            _ => Err(DeviceError::Protocol {
                serial: self.serial.clone(),
                message: "bad SEND reply".into(),
            }),
        }
    }

    fn pull(&self, remote: &str, out: &mut dyn Write) -> Result<u64, DeviceError> {
        let mut c = self.transport("sync:")?;
        sync_req(&mut c, b"RECV", remote)?;
        let mut done = 0u64;
        let mut buf = Vec::new();
        loop {
            let mut hdr = [0u8; 8];
            c.read_exact(&mut hdr, "pull")?;
            let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
            match &hdr[..4] {
                b"DATA" => {
                    let len =
                        bounded(&self.serial, "sync data chunk", len as usize, SYNC_DATA_MAX)?;
                    buf.resize(len, 0);
                    c.read_exact(&mut buf, "pull")?;
                    out.write_all(&buf).map_err(|e| DeviceError::Io {
                        serial: self.serial.clone(),
                        what: "writing the local copy".into(),
                        source: e,
                    })?;
                    done += len as u64;
                }
                b"DONE" => break,
                b"FAIL" => {
                    return Err(DeviceError::Sync {
                        serial: self.serial.clone(),
                        op: "pull",
                        path: remote.to_owned(),
                        message: sync_fail_message(&mut c, len)?,
                    });
                }
                _ => {
                    return Err(DeviceError::Protocol {
                        serial: self.serial.clone(),
                        message: "bad RECV reply".into(),
                    });
                }
            }
        }
        sync_quit(&mut c);
        Ok(done)
    }

    fn stat(&self, remote: &str) -> Result<Option<RemoteStat>, DeviceError> {
        let mut c = self.transport("sync:")?;
        sync_req(&mut c, b"STAT", remote)?;
        let mut reply = [0u8; 16];
        c.read_exact(&mut reply, "stat")?;
        if &reply[..4] != b"STAT" {
            return Err(DeviceError::Protocol {
                serial: self.serial.clone(),
                message: "bad STAT reply".into(),
            });
        }
        sync_quit(&mut c);
        let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
        let (mode, size, mtime) = (word(4), word(8), word(12));
        if mode == 0 && size == 0 && mtime == 0 {
            return Ok(None);
        }
        Ok(Some(RemoteStat {
            mode,
            size: size as u64,
            mtime,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_l_lines_parse_with_state_and_model() {
        let text = "127.0.0.1:6001 device product:vphone model:Pixel_7 device:panther transport_id:1\n\
                    ABC123 unauthorized usb:1-1 transport_id:2\n\
                    XYZ offline transport_id:3\n";
        let d = parse_devices_l(text);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].serial, "127.0.0.1:6001");
        assert_eq!(d[0].model.as_deref(), Some("Pixel_7"));
        assert_eq!(d[1].state, "unauthorized");
        assert_eq!(d[2].state, "offline");
        assert_eq!(d[2].model, None);
    }

    #[test]
    fn unready_states_are_refused_with_what_to_do() {
        // No I/O happens for a device that is not in the `device` state.
        let server = AdbServer {
            port: 1,
            sent: Arc::new(AtomicU64::new(0)),
        };
        let entry = |state: &str| DeviceEntry {
            serial: "SER1".into(),
            state: state.into(),
            model: None,
            product: None,
            device: None,
        };
        let offline = server.device(&entry("offline")).unwrap_err().to_string();
        assert!(
            offline.contains("SER1 is offline") && offline.contains("replug"),
            "{offline}"
        );
        let unauth = server
            .device(&entry("unauthorized"))
            .unwrap_err()
            .to_string();
        assert!(
            unauth.contains("accept the USB debugging prompt"),
            "{unauth}"
        );
        let other = server.device(&entry("recovery")).unwrap_err().to_string();
        assert!(other.contains("`recovery`"), "{other}");
    }

    #[test]
    fn network_serials_are_host_and_port() {
        assert!(network_serial("127.0.0.1:5555"));
        assert!(network_serial("phone.lan:40123"));
        assert!(!network_serial("1A2B3C4D5E6F7081"));
        assert!(!network_serial("emulator-5554"));
        assert!(!network_serial(":5555"));
        assert!(!network_serial("host:adb"));
    }

    #[test]
    fn port_flag_wins_over_env_and_default() {
        assert_eq!(AdbServer::port_from(Some(6111)), 6111);
    }

    /// A peer announcing a 4 GiB shell packet gets a protocol error, not a 4 GiB allocation.
    #[test]
    fn an_oversized_shell_packet_is_refused() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let mut hdr = vec![v2::STDOUT];
        hdr.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        peer.write_all(&hdr).unwrap();
        let e = read_v2(ours, "phone-1", &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Protocol { message, .. } if message.contains("4294967280 bytes")),
            "{e}"
        );
    }
}
