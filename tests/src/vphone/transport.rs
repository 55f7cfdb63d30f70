//! One ADB transport (one TCP connection from a host) as adbd runs it: the CNXN/AUTH handshake,
//! then streams multiplexed over the connection, each served by its own thread.
//!
//! Flow control is adbd's at 29.0.6: one WRTE in flight per stream until the peer's OKAY. Host
//! writes are acknowledged as soon as they are queued, unless the stream's queue is already long
//! (then the OKAY waits until the service catches up), so a service blocked on its own write can
//! never stop the host from being acknowledged. Any OKAY from the host marks the stream ready,
//! which is how adbd treats them (adb_client skips some OKAYs and acknowledges OKAYs with OKAY).

use super::phone::Inner;
use super::profile::Auth;
use super::services;
use super::wire::*;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A host stream's queued but unread data beyond which its OKAY is held back.
const INBOX_LIMIT: usize = 2 * 1024 * 1024;

/// The connection's shared write side and negotiated parameters.
pub(crate) struct Conn {
    writer: Mutex<TcpStream>,
    checksum: AtomicBool,
    max_payload: AtomicU32,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    next_id: AtomicU32,
    dead: AtomicBool,
}

impl Conn {
    fn send(&self, m: Message) -> io::Result<()> {
        trace("send", &m);
        let with_checksum = self.checksum.load(Ordering::Relaxed);
        let mut w = self.writer.lock().unwrap();
        m.write_to(&mut *w, with_checksum)
    }

    /// The negotiated payload limit for one WRTE.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload.load(Ordering::Relaxed) as usize
    }

    fn shutdown(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.writer.lock().unwrap().shutdown(Shutdown::Both);
        for s in self.streams.lock().unwrap().values() {
            s.host_closed();
        }
    }
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    owed_okay: bool,
    ready: bool,
    host_closed: bool,
    we_closed: bool,
}

/// One stream, seen from the service serving it.
pub(crate) struct Stream {
    local: u32,
    remote: u32,
    conn: Arc<Conn>,
    inbox: Mutex<Inbox>,
    cv: Condvar,
    write_lock: Mutex<()>,
}

impl Stream {
    /// The next chunk the host wrote, or `None` once the host closed the stream.
    pub(crate) fn recv(&self) -> Option<Vec<u8>> {
        let mut inbox = self.inbox.lock().unwrap();
        loop {
            if let Some(chunk) = inbox.queue.pop_front() {
                inbox.queued -= chunk.len();
                if inbox.owed_okay && inbox.queued < INBOX_LIMIT {
                    inbox.owed_okay = false;
                    drop(inbox);
                    let _ = self
                        .conn
                        .send(Message::new(A_OKAY, self.local, self.remote, vec![]));
                }
                return Some(chunk);
            }
            if inbox.host_closed || inbox.we_closed {
                return None;
            }
            inbox = self.cv.wait(inbox).unwrap();
        }
    }

    /// Sends `data` in WRTEs of at most the negotiated payload, each after the host's OKAY for
    /// the previous one. Fails once the stream or the connection is closed.
    pub(crate) fn send(&self, data: &[u8]) -> io::Result<()> {
        let _serial = self.write_lock.lock().unwrap();
        for chunk in data.chunks(self.conn.max_payload().max(1)) {
            {
                let mut inbox = self.inbox.lock().unwrap();
                while !inbox.ready && !inbox.host_closed && !inbox.we_closed {
                    inbox = self.cv.wait(inbox).unwrap();
                }
                if inbox.host_closed || inbox.we_closed {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"));
                }
                inbox.ready = false;
            }
            self.conn.send(Message::new(
                A_WRTE,
                self.local,
                self.remote,
                chunk.to_vec(),
            ))?;
        }
        Ok(())
    }

    /// Closes the stream from the device side (CLSE), once.
    pub(crate) fn close(&self) {
        let mut inbox = self.inbox.lock().unwrap();
        if inbox.we_closed {
            return;
        }
        inbox.we_closed = true;
        let host_closed = inbox.host_closed;
        self.cv.notify_all();
        drop(inbox);
        self.conn.streams.lock().unwrap().remove(&self.local);
        if !host_closed {
            let _ = self
                .conn
                .send(Message::new(A_CLSE, self.local, self.remote, vec![]));
        }
    }

    /// Whether the host has closed the stream (or the connection dropped).
    pub(crate) fn is_host_closed(&self) -> bool {
        self.inbox.lock().unwrap().host_closed
    }

    /// The connection's negotiated payload limit.
    pub(crate) fn max_payload(&self) -> usize {
        self.conn.max_payload()
    }

    fn host_closed(&self) {
        let mut inbox = self.inbox.lock().unwrap();
        inbox.host_closed = true;
        self.cv.notify_all();
    }
}

/// A byte-stream view of what the host writes to a stream (sync requests span WRTEs).
pub(crate) struct StreamReader {
    stream: Arc<Stream>,
    buf: Vec<u8>,
    pos: usize,
}

impl StreamReader {
    pub(crate) fn new(stream: Arc<Stream>) -> StreamReader {
        StreamReader {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.stream.recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Counts bytes received from the host and, when the phone's fault injection is armed, cuts the
/// connection once the budget is spent (a cable pulled mid-transfer); paces them to the phone's
/// link rate when it has one.
struct CuttingReader {
    inner: TcpStream,
    phone: Arc<Inner>,
}

impl Read for CuttingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let budget = self.phone.cut_budget();
        let limit = match budget {
            Some(0) => {
                self.phone.disarm_cut();
                let _ = self.inner.shutdown(Shutdown::Both);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "transport cut by fault injection",
                ));
            }
            Some(n) => out.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => out.len(),
        };
        let n = self.inner.read(&mut out[..limit])?;
        if budget.is_some() {
            self.phone.spend_cut_budget(n as u64);
        }
        self.phone.pace_link(n);
        Ok(n)
    }
}

/// Serves one TCP connection until the host disconnects, the phone reboots, or the fault
/// injection cuts it.
pub(crate) fn serve(tcp: TcpStream, phone: Arc<Inner>) {
    let _ = tcp.set_nodelay(true);
    let conn = Arc::new(Conn {
        writer: Mutex::new(tcp.try_clone().expect("clone tcp stream")),
        checksum: AtomicBool::new(true),
        max_payload: AtomicU32::new(MAX_PAYLOAD),
        streams: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(1),
        dead: AtomicBool::new(false),
    });
    let token = phone.register_connection(tcp.try_clone().expect("clone tcp stream"));
    let mut reader = io::BufReader::with_capacity(
        256 * 1024,
        CuttingReader {
            inner: tcp,
            phone: phone.clone(),
        },
    );
    let mut online = false;
    let mut version = A_VERSION;
    loop {
        let check = version < A_VERSION_SKIP_CHECKSUM;
        let msg = match Message::read_from(&mut reader, MAX_PAYLOAD, check) {
            Ok((m, _)) => m,
            Err(ReadError::Io(_)) => break,
            Err(ReadError::Protocol(why)) => {
                phone.log(&format!("adbd: dropping connection: {why}"));
                break;
            }
        };
        trace("recv", &msg);
        match msg.command {
            A_CNXN => {
                version = msg.arg0.clamp(A_VERSION_MIN, A_VERSION);
                conn.checksum
                    .store(version < A_VERSION_SKIP_CHECKSUM, Ordering::Relaxed);
                conn.max_payload
                    .store(msg.arg1.clamp(4096, MAX_PAYLOAD), Ordering::Relaxed);
                if phone.profile.auth == Auth::Silent {
                    phone.log("adbd: CNXN left unanswered (profile auth = silent)");
                } else if phone.profile.auth.never_accepts() {
                    if conn.send(auth_token()).is_err() {
                        break;
                    }
                } else {
                    online = true;
                    let banner = phone.banner().into_bytes();
                    if conn
                        .send(Message::new(A_CNXN, version, MAX_PAYLOAD, banner))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            // The phone that never accepts: a wrong signature gets a fresh token, as adbd does;
            // a public key would raise the user prompt nobody answers.
            A_AUTH if msg.arg0 == AUTH_SIGNATURE && conn.send(auth_token()).is_err() => break,
            A_OPEN if online => {
                let service = String::from_utf8_lossy(&msg.data)
                    .trim_end_matches('\0')
                    .to_owned();
                open_stream(&conn, &phone, msg.arg0, &service);
            }
            A_OKAY if online => {
                if let Some(s) = conn.streams.lock().unwrap().get(&msg.arg1) {
                    let mut inbox = s.inbox.lock().unwrap();
                    inbox.ready = true;
                    s.cv.notify_all();
                }
            }
            A_WRTE if online => {
                let stream = conn.streams.lock().unwrap().get(&msg.arg1).cloned();
                match stream {
                    Some(s) => {
                        // The OKAY goes out before the service can see the data, so it always
                        // precedes the service's reply, as with adbd (adb_client relies on it).
                        let ack_now = s.inbox.lock().unwrap().queued < INBOX_LIMIT;
                        if ack_now
                            && conn
                                .send(Message::new(A_OKAY, s.local, s.remote, vec![]))
                                .is_err()
                        {
                            break;
                        }
                        let mut inbox = s.inbox.lock().unwrap();
                        inbox.queued += msg.data.len();
                        inbox.queue.push_back(msg.data);
                        inbox.owed_okay |= !ack_now;
                        s.cv.notify_all();
                    }
                    None => {
                        // A write to a stream we no longer have: tell the host it is closed.
                        let _ = conn.send(Message::new(A_CLSE, 0, msg.arg0, vec![]));
                    }
                }
            }
            A_CLSE if online => {
                let stream = conn.streams.lock().unwrap().remove(&msg.arg1);
                if let Some(s) = stream {
                    s.host_closed();
                }
            }
            _ => {}
        }
    }
    conn.shutdown();
    phone.unregister_connection(token);
}

/// With `VPHONE_TRACE=1`, every message in and out goes to stderr (protocol debugging).
fn trace(dir: &str, m: &Message) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("VPHONE_TRACE").is_some()) {
        let head: Vec<u8> = m.data.iter().take(16).copied().collect();
        eprintln!(
            "vphone {dir} {} {:#x} {:#x} len={} {:?}",
            command_name(m.command),
            m.arg0,
            m.arg1,
            m.data.len(),
            String::from_utf8_lossy(&head)
        );
    }
}

fn auth_token() -> Message {
    let mut token = vec![0u8; 20];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut token));
    f.expect("read /dev/urandom");
    Message::new(A_AUTH, AUTH_TOKEN, 0, token)
}

fn open_stream(conn: &Arc<Conn>, phone: &Arc<Inner>, remote: u32, service: &str) {
    let Some(service) = services::parse(service) else {
        phone.log(&format!("adbd: refusing unknown service {service:?}"));
        let _ = conn.send(Message::new(A_CLSE, 0, remote, vec![]));
        return;
    };
    let local = conn.next_id.fetch_add(1, Ordering::Relaxed);
    let stream = Arc::new(Stream {
        local,
        remote,
        conn: conn.clone(),
        inbox: Mutex::new(Inbox {
            ready: true,
            ..Inbox::default()
        }),
        cv: Condvar::new(),
        write_lock: Mutex::new(()),
    });
    conn.streams.lock().unwrap().insert(local, stream.clone());
    if conn
        .send(Message::new(A_OKAY, local, remote, vec![]))
        .is_err()
    {
        return;
    }
    let phone = phone.clone();
    std::thread::Builder::new()
        .name(format!("vphone-stream-{local}"))
        .spawn(move || {
            services::run(service, &stream, &phone);
            stream.close();
        })
        .expect("spawn stream thread");
}
