//! The router's artifact mirror: the files of one directory (the pinned k3s, the airgap images
//! archive when cached) over plain HTTP on the LAN, so workers do not pull them over the 4G
//! uplink. Workers check every file against its pinned sha256, so the mirror needs no TLS; it
//! serves GET and HEAD of regular files directly in the directory, nothing else (no listing, no
//! path with a `/` or `..` in it, no symlink), one thread per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a client may take to send its request or take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `dir` under `prefix` (`/` or `/armfleet/`) on `listener` until the process ends.
pub fn serve(listener: TcpListener, dir: PathBuf, prefix: String) -> std::io::Result<()> {
    tracing::info!(
        "mirror: serving {} at http://{}{prefix}",
        dir.display(),
        listener.local_addr()?
    );
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let dir = dir.clone();
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            if let Err(e) = answer(stream, &dir, &prefix, &peer) {
                tracing::debug!("mirror: {peer}: {e}");
            }
        });
    }
    Ok(())
}

/// What a request asks for, once read.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// GET or HEAD of a file name.
    File {
        /// HEAD: headers only.
        head: bool,
        /// The file name (one path component, checked).
        name: String,
    },
    /// Anything else, answered with this status line.
    Refused(&'static str),
}

/// Reads the request line: `GET /prefix/name HTTP/1.1`.
pub fn parse_request(line: &str, prefix: &str) -> Request {
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Request::Refused("400 Bad Request");
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::Refused("405 Method Not Allowed"),
    };
    let path = target.split('?').next().unwrap_or("");
    let Some(name) = path.strip_prefix(prefix) else {
        return Request::Refused("404 Not Found");
    };
    // Upstream names carry `+` (v1.36.4+k3s1) escaped or not; the files are stored plainly.
    // Any other escape is refused rather than decoded.
    let name = name.replace("%2B", "+").replace("%2b", "+");
    let fine = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if !fine {
        return Request::Refused("404 Not Found");
    }
    Request::File { head, name }
}

fn answer(stream: TcpStream, dir: &Path, prefix: &str, peer: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    // The headers are read and ignored (no ranges: workers fetch whole files).
    let mut header = String::new();
    loop {
        header.clear();
        let n = reader.by_ref().take(8192).read_line(&mut header)?;
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut out = stream;
    let refuse = |out: &mut TcpStream, status: &str| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    match parse_request(line.trim_end(), prefix) {
        Request::Refused(status) => {
            tracing::info!("mirror: {peer} {:?} -> {status}", line.trim_end());
            refuse(&mut out, status)
        }
        Request::File { head, name } => {
            let path = dir.join(&name);
            let file = std::fs::symlink_metadata(&path)
                .ok()
                .filter(|m| m.file_type().is_file())
                .and_then(|_| std::fs::File::open(&path).ok());
            let Some(mut file) = file else {
                tracing::info!("mirror: {peer} {name} -> 404");
                return refuse(&mut out, "404 Not Found");
            };
            let len = file.metadata()?.len();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            if !head {
                std::io::copy(&mut file, &mut out)?;
            }
            tracing::info!(
                "mirror: {peer} {} {name} ({len} bytes)",
                if head { "HEAD" } else { "GET" }
            );
            out.flush()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_under_the_prefix_are_files() {
        assert_eq!(
            parse_request("GET /k3s-arm64 HTTP/1.1", "/"),
            Request::File {
                head: false,
                name: "k3s-arm64".into()
            }
        );
        assert_eq!(
            parse_request(
                "HEAD /armfleet/k3s-airgap-images-arm64.tar.zst HTTP/1.1",
                "/armfleet/"
            ),
            Request::File {
                head: true,
                name: "k3s-airgap-images-arm64.tar.zst".into()
            }
        );
        for bad in [
            "GET /../etc/shadow HTTP/1.1",
            "GET /a/b HTTP/1.1",
            "GET /.hidden HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /%2e%2e HTTP/1.1",
        ] {
            assert_eq!(
                parse_request(bad, "/"),
                Request::Refused("404 Not Found"),
                "{bad}"
            );
        }
        assert_eq!(
            parse_request("PUT /k3s-arm64 HTTP/1.1", "/"),
            Request::Refused("405 Method Not Allowed")
        );
        assert_eq!(
            parse_request("GET /k3s HTTP/1.1", "/armfleet/"),
            Request::Refused("404 Not Found")
        );
    }

    #[test]
    fn serves_a_file_whole_and_refuses_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k3s-arm64"), b"binary bytes").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = dir.path().to_owned();
        std::thread::spawn(move || serve(l, d, "/".into()));
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        };
        let ok = get("/k3s-arm64");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 12\r\n") && ok.ends_with("\r\n\r\nbinary bytes"),
            "{ok}"
        );
        assert!(
            get("/link").starts_with("HTTP/1.1 404"),
            "a symlink is not served"
        );
        assert!(get("/missing").starts_with("HTTP/1.1 404"));
    }
}
