//! A lab for phone tests: the default topology made to point at what a test runs on this machine.

use crate::fixtures::offline_topology;
use crate::util::aarch64_bin;
use std::path::{Path, PathBuf};

/// Replaces the value of the first `key = ...` line of `text`.
pub fn set_key(text: &str, key: &str, value: &str) -> String {
    let start = text
        .find(&format!("\n{key} = "))
        .unwrap_or_else(|| panic!("no {key} in the topology"))
        + 1;
    let end = start + text[start..].find('\n').unwrap();
    format!("{}{key} = {value}{}", &text[..start], &text[end..])
}

/// The default lab with its server at `server`, the k3s pin being the stand-in the node rootfs
/// carries (so no download is tried), and `phone-1` known by `serial` with a small k3s data
/// image (the default is sized for a real phone).
pub fn topology_for(server: &str, serial: &str, dir: &Path) -> PathBuf {
    use sha2::Digest;
    let base = std::fs::read_to_string(offline_topology()).unwrap();
    let standin = std::fs::read(aarch64_bin("k3s-standin")).unwrap();
    let pin = hex::encode(sha2::Sha256::digest(&standin));
    let text = set_key(&base, "server", &format!("\"{server}\""));
    let mut text = set_key(&text, "sha256", &format!("\"{pin}\""));
    let entry = "name = \"phone-1\"\n";
    let at = text.find(entry).expect("the phone-1 entry") + entry.len();
    text.insert_str(
        at,
        &format!("serial = \"{serial}\"\ndata_image_mib = 256\n"),
    );
    let path = dir.join("lab.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-file HTTP mirror on 127.0.0.1 (the laptop's side: a phone with Android's network
/// cannot reach it), serving `body` at `/k3s-arm64`.
pub fn mirror(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/k3s-arm64", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    url
}
