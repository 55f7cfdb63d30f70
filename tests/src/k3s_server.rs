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

/// A Kubernetes API stand-in on 127.0.0.1, as strict as the real one about who asks: HTTPS with
/// its own CA, and only clients presenting a certificate that CA signed are answered (k3s'
/// `k3s.yaml` authenticates by client certificate). It serves `GET /api/v1/nodes/NAME` from a
/// table the test sets: a missing name is a 404, as the API says of a Node not registered yet.
pub struct KubeApi {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    nodes: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, bool>>>,
    kubeconfig: String,
}

impl KubeApi {
    /// Starts the server; it serves until the test process ends.
    pub fn start() -> KubeApi {
        use base64::Engine;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::io::{BufRead, BufReader, Write};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "k3s-client-ca@1700000000");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into())
            .build()
            .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            vec![server_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let tls = std::sync::Arc::new(
            rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let nodes = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let served = nodes.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (tls, nodes) = (tls.clone(), served.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(tls).unwrap();
                    let mut stream = rustls::StreamOwned::new(conn, tcp);
                    let mut reader = BufReader::new(&mut stream);
                    let mut request = String::new();
                    // A client without a certificate fails the handshake here.
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                        line.clear();
                    }
                    let name = request
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/api/v1/nodes/"))
                        .map(str::to_owned);
                    let ready = name
                        .as_ref()
                        .and_then(|n| nodes.lock().unwrap().get(n).copied());
                    let (status, body) = match (name, ready) {
                        (Some(n), Some(r)) => (
                            "200 OK",
                            serde_json::json!({"kind": "Node", "metadata": {"name": n},
                                "status": {"conditions": [{"type": "Ready",
                                "status": if r { "True" } else { "False" },
                                "reason": if r { "KubeletReady" } else { "KubeletNotReady" },
                                "message": if r { "kubelet is posting ready status" } else { "container runtime network not ready" }}]}})
                            .to_string(),
                        ),
                        _ => ("404 Not Found", "{\"kind\":\"Status\",\"code\":404}".to_owned()),
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                });
            }
        });
        let b64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {url}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(ca_cert.pem()),
            b64(client_cert.pem()),
            b64(client_key.serialize_pem()),
        );
        KubeApi {
            url,
            nodes,
            kubeconfig,
        }
    }

    /// Registers (or updates) the Node `name`, Ready or not.
    pub fn set_node(&self, name: &str, ready: bool) {
        self.nodes.lock().unwrap().insert(name.to_owned(), ready);
    }

    /// A kubeconfig for it in the shape of k3s' `k3s.yaml` (client certificate, inline data).
    pub fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }
}

/// A cluster CA in k3s' custom-CA layout: `server-ca.crt` and `server-ca.key` written into
/// `dir` (as k3s' generate-custom-ca-certs.sh leaves them for the server's image). Returns the
/// certificate's PEM, whose sha256 a `K10` token names.
pub fn custom_ca_dir(dir: &std::path::Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-server-ca@1700000000");
    let pem = params.self_signed(&key).unwrap().pem();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("server-ca.crt"), &pem).unwrap();
    std::fs::write(dir.join("server-ca.key"), key.serialize_pem()).unwrap();
    pem
}
