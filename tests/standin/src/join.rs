//! The agent's join, as k3s' agent does it before anything else: fetch `SERVER/cacerts` without
//! trusting it, compare its sha256 with the CA hash a `K10` token names (a mismatch is fatal),
//! then call the server with that CA as the only trust anchor and the token's password as
//! `node:<password>` Basic credentials, or a bootstrap token (`ID.SECRET`) as `Bearer`. A
//! bootstrap token the server does not know yet is retried (k3s registers them from its
//! manifests some seconds after it starts). An unreachable server is retried every 2 s, logged the
//! first time and every 30th. The kubelet side (healthz) does not wait for it, so supervisor
//! tests without a server behave as before.
//!
//! A join, and a refusal, is also written to the kernel log (`/dev/kmsg`): a headless VM's serial
//! console shows it, which is how a QEMU test sees it (test equipment's plumbing; k3s does not).

use crate::server::{ca_hash, token_hash, token_password};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Starts the join in a thread.
pub fn start(server_url: String, token: String, node_name: String) {
    std::thread::spawn(move || {
        let mut tries = 0u32;
        loop {
            match attempt(&server_url, &token, &node_name) {
                Ok(hash) => {
                    crate::log_kv(
                        "info",
                        "Node password validated; joined the server",
                        &[("server", &server_url), ("ca_sha256", &hash)],
                    );
                    kmsg(&format!(
                        "k3s-standin: agent {node_name} joined {server_url} (CA sha256 {hash})"
                    ));
                    return;
                }
                Err(Failure::Fatal(msg)) => {
                    crate::log("fatal", &msg);
                    kmsg(&format!("k3s-standin: agent {node_name}: {msg}"));
                    std::process::exit(1);
                }
                Err(Failure::Retry(msg)) => {
                    if tries.is_multiple_of(30) {
                        crate::log("error", &msg);
                        kmsg(&format!("k3s-standin: agent {node_name}: {msg}"));
                    }
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    });
}

enum Failure {
    /// k3s gives up (wrong CA, password refused).
    Fatal(String),
    /// k3s tries again (no connection, no answer).
    Retry(String),
}

fn attempt(server_url: &str, token: &str, node_name: &str) -> Result<String, Failure> {
    let (host, port) = host_port(server_url)
        .ok_or_else(|| Failure::Fatal(format!("invalid server URL {server_url:?}")))?;
    let any = client_config(None);
    let (status, body) = get(&host, port, "/cacerts", &[], any).map_err(|e| {
        Failure::Retry(format!(
            "failed to get CA certs: Get \"{server_url}/cacerts\": {e}"
        ))
    })?;
    if status != 200 {
        return Err(Failure::Retry(format!(
            "failed to get CA certs: {server_url}/cacerts: {status}"
        )));
    }
    let pem = String::from_utf8_lossy(&body).into_owned();
    let got = ca_hash(&pem);
    if let Some(want) = token_hash(token)
        && want != got
    {
        return Err(Failure::Fatal(format!(
            "token CA hash does not match the Cluster CA certificate hash: {want} != {got}"
        )));
    }
    let trusted = client_config(Some(&pem));
    let creds = token.split_once("::").map_or(token, |(_, c)| c);
    let bootstrap_id = bootstrap_id(creds);
    let auth = match bootstrap_id {
        Some(_) => format!("Bearer {creds}"),
        None => format!(
            "Basic {}",
            base64(&format!("node:{}", token_password(token)))
        ),
    };
    let (status, _) = get(
        &host,
        port,
        "/v1-k3s/config",
        &[("Authorization", &auth), ("K3s-Node-Name", node_name)],
        trusted,
    )
    .map_err(|e| {
        Failure::Retry(format!(
            "failed to get the server's config (CA-verified TLS): {e}"
        ))
    })?;
    match (status, bootstrap_id) {
        (200, _) => Ok(got),
        (401, Some(id)) => Err(Failure::Retry(format!(
            "Waiting to retrieve agent configuration; server is not ready: 401 Unauthorized (bootstrap token {id})"
        ))),
        (401, None) => Err(Failure::Fatal(
            "Node password rejected: the token's password is not the server's".into(),
        )),
        (s, _) => Err(Failure::Retry(format!("/v1-k3s/config answered {s}"))),
    }
}

/// The id of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`), k3s' test for sending it as
/// `Bearer`.
fn bootstrap_id(creds: &str) -> Option<&str> {
    let (id, secret) = creds.split_once('.')?;
    (token_part(id, 6) && token_part(secret, 16)).then_some(id)
}

/// `[a-z0-9]{n}`: a bootstrap token's id (6) or secret (16).
pub(crate) fn token_part(v: &str, n: usize) -> bool {
    v.len() == n
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let authority = url.strip_prefix("https://")?.split('/').next()?;
    let (h, p) = authority.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?))
}

fn client_config(ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in pem_blocks(pem) {
                let _ = roots.add(CertificateDer::from(der));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    Arc::new(config)
}

fn get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    config: Arc<rustls::ClientConfig>,
) -> Result<(u16, Vec<u8>), String> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // The server closes after its answer; a TLS close without close_notify still ends the read.
    let _ = tls.read_to_end(&mut raw);
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((status, raw[text_end + 4..].to_vec()))
}

/// The DER of each `CERTIFICATE` block of a PEM text.
pub(crate) fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END CERTIFICATE") {
            inside = false;
            if let Some(der) = unbase64(&body) {
                out.push(der);
            }
        } else if inside {
            body.push_str(line.trim());
        }
    }
    out
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(text: &str) -> String {
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn unbase64(b64: &str) -> Option<Vec<u8>> {
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in b64.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

/// One line in the kernel log, when this process may write it.
pub(crate) fn kmsg(line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<5>{line}\n").as_bytes());
    }
}

/// Accepts any certificate: the `/cacerts` fetch trusts the token's hash, not TLS.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_told_from_passwords_as_k3s_does() {
        assert_eq!(bootstrap_id("abcdef.0123456789abcdef"), Some("abcdef"));
        assert_eq!(bootstrap_id("abcdef.0123456789ABCDEF"), None);
        assert_eq!(bootstrap_id("server:abcdef.0123456789abcdef"), None);
        assert_eq!(bootstrap_id("abcdefg.0123456789abcdef"), None);
    }

    #[test]
    fn base64_round_trips_and_urls_split() {
        for s in ["node:s3cr3t", "a", "ab", "abc", "node:pair-proof-secret"] {
            assert_eq!(unbase64(&base64(s)).unwrap(), s.as_bytes());
        }
        assert_eq!(base64("node:s3cr3t"), "bm9kZTpzM2NyM3Q=");
        assert_eq!(
            host_port("https://10.10.10.1:6443"),
            Some(("10.10.10.1".into(), 6443))
        );
    }

    #[test]
    fn an_agent_joins_a_server_with_its_ca_and_password_only() {
        let dir = std::env::temp_dir().join(format!("standin-join-{}", std::process::id()));
        let ca = crate::server::cluster_ca(&dir).unwrap();
        let hash = ca_hash(&ca.0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}", l.local_addr().unwrap().port());
        let creds = crate::server::Credentials {
            password: "pw".into(),
            bootstrap: [("abcdef".to_owned(), "0123456789abcdef".to_owned())].into(),
        };
        crate::server::serve(l, ca, vec!["127.0.0.1".into()], creds).unwrap();
        // A bootstrap token the server holds, behind the CA's hash; one it does not: retried.
        assert_eq!(
            attempt(&url, &format!("K10{hash}::abcdef.0123456789abcdef"), "n1").ok(),
            Some(hash.clone())
        );
        assert!(
            matches!(attempt(&url, &format!("K10{hash}::abcdef.0123456789abcdee"), "n1"), Err(Failure::Retry(m)) if m.contains("401 Unauthorized (bootstrap token abcdef)"))
        );
        assert_eq!(
            attempt(&url, &format!("K10{hash}::server:pw"), "n1").ok(),
            Some(hash.clone())
        );
        assert!(
            attempt(&url, "pw", "n1").is_ok(),
            "a bare token skips the CA check"
        );
        assert!(
            matches!(attempt(&url, &format!("K10{hash}::server:nope"), "n1"), Err(Failure::Fatal(m)) if m.contains("Node password rejected"))
        );
        assert!(
            matches!(attempt(&url, &format!("K10{}::server:pw", "0".repeat(64)), "n1"), Err(Failure::Fatal(m)) if m.contains("does not match"))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_agent_joins_a_server_whose_ca_has_its_own_subject() {
        // A lab's own CA (`--server-ca`) is not named "k3s-server-ca": the serving certificate
        // must name it as it names itself, or CA-verified TLS finds no issuer.
        let dir = std::env::temp_dir().join(format!("standin-join-own-{}", std::process::id()));
        let tls = dir.join("server/tls");
        std::fs::create_dir_all(&tls).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "home-lab-ca@1700000000");
        let pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(tls.join("server-ca.crt"), &pem).unwrap();
        std::fs::write(tls.join("server-ca.key"), key.serialize_pem()).unwrap();
        let ca = crate::server::cluster_ca(&dir).unwrap();
        assert_eq!(ca.0, pem, "the lab's CA is used as it is");
        let hash = ca_hash(&pem);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}", l.local_addr().unwrap().port());
        let creds = crate::server::Credentials {
            password: "pw".into(),
            bootstrap: Default::default(),
        };
        crate::server::serve(l, ca, vec!["127.0.0.1".into()], creds).unwrap();
        match attempt(&url, &format!("K10{hash}::server:pw"), "n1") {
            Ok(h) => assert_eq!(h, hash),
            Err(Failure::Fatal(m) | Failure::Retry(m)) => panic!("no join: {m}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
