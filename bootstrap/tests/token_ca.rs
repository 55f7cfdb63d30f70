//! `verify_server_ca` against a real HTTPS server on 127.0.0.1 that serves `/cacerts` like a k3s
//! server: a CA made here signs the serving certificate; the token carries the CA's hash.

use bootstrap::digest::sha256_hex;
use bootstrap::token::{CaCheck, JoinToken, TokenError, verify_server_ca};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

struct HttpsServer {
    url: String,
    ca_pem: String,
}

/// Serves `/cacerts` over TLS on 127.0.0.1 until the test process ends.
fn start_k3s_like_server() -> HttpsServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-server-ca@1700000000");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        vec![server_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let body = ca_pem.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let config = config.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let tls = rustls::ServerConnection::new(config).unwrap();
                let mut stream = rustls::StreamOwned::new(tls, conn);
                let mut reader = BufReader::new(&mut stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let (status, body) = if request_line.starts_with("GET /cacerts ") {
                    ("200 OK", body.as_str())
                } else {
                    ("404 Not Found", "")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    HttpsServer { url, ca_pem }
}

#[test]
fn matching_ca_hash_is_verified() {
    let server = start_k3s_like_server();
    let hash = sha256_hex(server.ca_pem.as_bytes());
    let token = JoinToken::parse(&format!("K10{hash}::server:abc123"), "test").unwrap();
    assert_eq!(
        verify_server_ca(&server.url, &token).unwrap(),
        CaCheck::Verified
    );
    // A trailing slash on the server URL makes no difference.
    let with_slash = format!("{}/", server.url);
    assert_eq!(
        verify_server_ca(&with_slash, &token).unwrap(),
        CaCheck::Verified
    );
}

#[test]
fn wrong_ca_hash_is_refused_naming_both_hashes() {
    let server = start_k3s_like_server();
    let real = sha256_hex(server.ca_pem.as_bytes());
    let wrong = sha256_hex(b"some other cluster's CA");
    let token = JoinToken::parse(&format!("K10{wrong}::server:abc123"), "test").unwrap();
    let err = verify_server_ca(&server.url, &token).unwrap_err();
    assert!(matches!(err, TokenError::CaMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&real), "{msg}");
    assert!(msg.contains(&wrong), "{msg}");
    assert!(msg.contains(&server.url), "{msg}");
    assert!(!msg.contains("abc123"), "token leaked: {msg}");
}

#[test]
fn unreachable_server_is_reported_not_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = JoinToken::parse(&format!("K10{}::server:x", "a".repeat(64)), "test").unwrap();
    match verify_server_ca(&format!("https://127.0.0.1:{port}"), &token).unwrap() {
        CaCheck::Unreachable(reason) => assert!(!reason.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[test]
fn tokens_without_hash_need_no_server() {
    let token = JoinToken::parse("abcdef.0123456789abcdef", "test").unwrap();
    assert_eq!(
        verify_server_ca("https://127.0.0.1:1", &token).unwrap(),
        CaCheck::NoHashInToken
    );
}

/// A server answering /cacerts with an endless body: read up to a bound, then refused.
#[test]
fn an_endless_cacerts_answer_is_refused_not_read_into_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let chunk = vec![b'A'; 64 * 1024];
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    let token = JoinToken::parse(&format!("K10{}::server:pw", "a".repeat(64)), "test").unwrap();
    let err = verify_server_ca(&url, &token).unwrap_err();
    assert!(matches!(err, TokenError::CaTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("not a k3s server"), "{err}");
}
