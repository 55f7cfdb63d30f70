//! A k3s-like HTTPS server on 127.0.0.1 for the join token's CA check: the real thing's
//! `/cacerts` endpoint, which `k3s agent`, phonectl and imagegen hash and compare with the
//! `K10<sha256>` prefix of a secure token.

/// A k3s-like server on 127.0.0.1: HTTPS with a serving certificate signed by its own CA, and
/// that CA's PEM at `/cacerts` (what `k3s agent` and phonectl hash against the token). Returns
/// the URL and the CA PEM; serves until the test process ends.
pub fn k3s_cacerts_server() -> (String, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::{BufRead, BufReader, Write};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-server-ca@1700000000");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let tls = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let body = ca_pem.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let tls = tls.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(tls).unwrap();
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let mut reader = BufReader::new(&mut stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                    line.clear();
                }
                let (status, body) = if request.starts_with("GET /cacerts ") {
                    ("200 OK", body.as_str())
                } else {
                    ("404 Not Found", "")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    (url, ca_pem)
}
