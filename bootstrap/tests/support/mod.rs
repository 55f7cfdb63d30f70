//! A real HTTP/1.1 server on 127.0.0.1 for the download tests: serves fixed files, honours
//! `Range`, records every request, and can cut a response mid-body like a dropped uplink.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How the server behaves towards the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve whole files or the requested range.
    Normal,
    /// Cut the connection after this many body bytes on the *first* response only.
    CutFirstAfter(u64),
    /// Cut every response after this many body bytes.
    AlwaysCutAfter(u64),
    /// Ignore `Range` and always send the whole file with 200.
    IgnoreRange,
    /// A broken mirror: 200 without Content-Length, then the file over and over until the client
    /// hangs up.
    Endless,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

struct Shared {
    files: Mutex<HashMap<String, Vec<u8>>>,
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
    body_bytes_served: AtomicU64,
    stop: AtomicBool,
}

/// The server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            seen: Mutex::new(Vec::new()),
            body_bytes_served: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        HttpServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), body);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn body_bytes_served(&self) -> u64 {
        self.shared.body_bytes_served.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_owned());
        }
    }
    let first = {
        let mut seen = shared.seen.lock().unwrap();
        seen.push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        seen.len() == 1
    };
    let mode = *shared.mode.lock().unwrap();
    let body = shared.files.lock().unwrap().get(&path).cloned();
    let mut out = conn;
    let Some(body) = body else {
        let _ = out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };
    let len = body.len() as u64;
    if mode == Mode::Endless {
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return;
        }
        loop {
            if shared.stop.load(Ordering::SeqCst) || out.write_all(&body).is_err() {
                return;
            }
            shared.body_bytes_served.fetch_add(len, Ordering::SeqCst);
        }
    }
    let start = match (&range, mode) {
        (Some(r), m) if m != Mode::IgnoreRange => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    let (head, slice) = match start {
        Some(s) if s >= len => {
            let _ = write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - s
            ),
            &body[s as usize..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
            ),
            &body[..],
        ),
    };
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let cut = match mode {
        Mode::CutFirstAfter(n) if first => Some(n),
        Mode::AlwaysCutAfter(n) => Some(n),
        _ => None,
    };
    let to_send = match cut {
        Some(n) => &slice[..(n as usize).min(slice.len())],
        None => slice,
    };
    for chunk in to_send.chunks(64 * 1024) {
        if out.write_all(chunk).is_err() {
            return;
        }
        shared
            .body_bytes_served
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

/// Deterministic, incompressible-ish test content of `len` bytes.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
