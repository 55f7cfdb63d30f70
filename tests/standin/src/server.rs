//! `k3s server` as the agents see it: the supervisor's HTTPS port (6443) with `/cacerts` (the
//! cluster CA, whose sha256 a `K10` token names), `/ping`, and `/v1-k3s/*` behind the token's
//! password. The CA is k3s's: `DATA_DIR/server/tls/server-ca.{crt,key}`, used when present (k3s'
//! custom CA), made at first start otherwise. A `K10` token whose hash is not that CA's is
//! refused as k3s refuses it. Each answered agent request is logged
//! (`level=info msg="agent joined" node=NAME remote=IP`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

/// The CA the server uses, made when absent. Returns (cert PEM, key PEM).
pub fn cluster_ca(data_dir: &Path) -> Result<(String, String), String> {
    let tls = data_dir.join("server/tls");
    let (crt, key) = (tls.join("server-ca.crt"), tls.join("server-ca.key"));
    if crt.is_file() && key.is_file() {
        let c = std::fs::read_to_string(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
        let k = std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        return Ok((c, k));
    }
    let kp = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-server-ca");
    let cert = params.self_signed(&kp).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
    std::fs::write(&crt, cert.pem()).map_err(|e| format!("{}: {e}", crt.display()))?;
    std::fs::write(&key, kp.serialize_pem()).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// k3s' hashCA of what `/cacerts` serves (the token's hash): sha256 of the PEM text for one
/// certificate, of the last (root) certificate's DER for a chain.
pub fn ca_hash(pem: &str) -> String {
    use sha2::Digest;
    let blocks = crate::join::pem_blocks(pem);
    match blocks.last() {
        Some(root) if blocks.len() > 1 => hex::encode(sha2::Sha256::digest(root)),
        _ => hex::encode(sha2::Sha256::digest(pem.as_bytes())),
    }
}

/// The password part of a token (`K10<hash>::<user>:<password>` or a bare passphrase).
pub fn token_password(token: &str) -> &str {
    match token.split_once("::") {
        Some((_, creds)) => creds.split_once(':').map_or(creds, |(_, p)| p),
        None => token,
    }
}

/// The CA hash a `K10` token names.
pub fn token_hash(token: &str) -> Option<&str> {
    let head = token.split_once("::")?.0;
    head.strip_prefix("K10")
}

/// Serves the supervisor port on `listener` in threads, with a certificate for `names` signed
/// by the CA.
pub fn serve(
    listener: TcpListener,
    ca: (String, String),
    names: Vec<String>,
    password: String,
) -> Result<(), String> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.1).map_err(|e| format!("server-ca.key: {e}"))?;
    // The serving certificate names its issuer as the CA file names itself (a lab's own CA has
    // its own subject); a client's path building matches those names.
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.0, ca_key)
        .map_err(|e| format!("server-ca.crt: {e}"))?;
    let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let leaf = rcgen::CertificateParams::new(names)
        .map_err(|e| e.to_string())?
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;
    let chain = vec![leaf.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let ca_pem = Arc::new(ca.0);
    let password = Arc::new(password);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let (config, ca_pem, password) = (config.clone(), ca_pem.clone(), password.clone());
            std::thread::spawn(move || {
                let remote = tcp
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let _ = answer(&mut tls, &ca_pem, &password, &remote);
            });
        }
    });
    Ok(())
}

fn answer(
    s: &mut (impl std::io::Read + Write),
    ca_pem: &str,
    password: &str,
    remote: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *s);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let (mut auth, mut node) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => auth = Some(v.trim().to_owned()),
                "k3s-node-name" => node = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    drop(reader);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/cacerts" => ("200 OK", ca_pem.to_owned()),
        "/ping" => ("200 OK", "pong".into()),
        p if p.starts_with("/v1-k3s/") => {
            let given = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(decode_basic);
            match given {
                Some((_, p)) if p == password => {
                    let node = node.as_deref().unwrap_or("?");
                    crate::log_kv(
                        "info",
                        "agent joined",
                        &[("node", node), ("remote", remote)],
                    );
                    crate::join::kmsg(&format!(
                        "k3s-standin: server: agent {node} joined from {remote}"
                    ));
                    ("200 OK", "{\"joined\":true}".into())
                }
                _ => ("401 Unauthorized", "Unauthorized".into()),
            }
        }
        _ => ("404 Not Found", String::new()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// `user:password` from a Basic credential.
fn decode_basic(b64: &str) -> Option<(String, String)> {
    let text = String::from_utf8(crate::join::unbase64(b64)?).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_hashed_by_its_root_as_k3s_does() {
        use sha2::Digest;
        let make = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.self_signed(&key).unwrap()
        };
        let (a, b) = (make(), make());
        assert_eq!(
            ca_hash(&a.pem()),
            hex::encode(sha2::Sha256::digest(a.pem().as_bytes()))
        );
        let chain = format!("{}{}", a.pem(), b.pem());
        assert_eq!(ca_hash(&chain), hex::encode(sha2::Sha256::digest(b.der())));
    }

    #[test]
    fn tokens_give_their_hash_and_password() {
        let t = "K10abc::server:s3cr3t";
        assert_eq!(token_hash(t), Some("abc"));
        assert_eq!(token_password(t), "s3cr3t");
        assert_eq!(token_password("plainpass"), "plainpass");
        assert_eq!(token_hash("plainpass"), None);
        assert_eq!(
            decode_basic("bm9kZTpzM2NyM3Q="),
            Some(("node".into(), "s3cr3t".into()))
        );
    }
}
