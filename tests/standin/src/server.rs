//! `k3s server` as the agents see it: the supervisor's HTTPS port (6443) with `/cacerts` (the
//! cluster CA, whose sha256 a `K10` token names), `/ping`, and `/v1-k3s/*` behind the token's
//! password. The CA is k3s's: `DATA_DIR/server/tls/server-ca.{crt,key}`, used when present (k3s'
//! custom CA), made at first start otherwise. A `K10` token whose hash is not that CA's is
//! refused as k3s refuses it. Each answered agent request is logged
//! (`level=info msg="agent joined" node=NAME remote=IP auth=…`).
//!
//! Bootstrap tokens: k3s' deploy controller applies the manifests in `DATA_DIR/server/manifests`
//! (`.json`, `.yaml`, `.yml`; not dotfiles, not a file with a `NAME.skip` beside it), and the
//! API server's bootstrap-token authenticator then admits `Bearer ID.SECRET` for a Secret
//! `kube-system/bootstrap-token-ID` of type `bootstrap.kubernetes.io/token` with
//! `usage-bootstrap-authentication: "true"` and groups all under `system:bootstrappers:`. k3s'
//! agent endpoints take any such token (group `system:bootstrappers`). The stand-in reads the
//! JSON manifests once at start and holds each Secret to those rules; YAML manifests and
//! expiring tokens are not modelled and are left out with a warning (a token they carry would
//! be refused, never wrongly admitted).

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

/// Who may join: the server's password, and the bootstrap tokens the manifests register
/// (id → secret).
pub struct Credentials {
    /// The token's password.
    pub password: String,
    /// Bootstrap tokens, id → secret.
    pub bootstrap: std::collections::HashMap<String, String>,
}

/// The bootstrap tokens the manifests under `DATA_DIR/server/manifests` register, as
/// (id, secret, file), and a warning per document or file left out.
pub fn manifest_bootstrap_tokens(data_dir: &Path) -> (Vec<(String, String, String)>, Vec<String>) {
    let dir = data_dir.join("server/manifests");
    let (mut tokens, mut warnings) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (tokens, warnings);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let skipped = names.contains(&format!("{name}.skip"));
        if name.starts_with('.') || skipped {
            continue;
        }
        let path = dir.join(name);
        let shown = path.display().to_string();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            warnings.push(format!(
                "{shown}: YAML manifests are not modelled by the stand-in"
            ));
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let doc = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()));
        let doc = match doc {
            Ok(d) => d,
            Err(e) => {
                // k3s: `Failed to process config: failed to process FILE: …`, and goes on.
                warnings.push(format!("failed to process {shown}: {e}"));
                continue;
            }
        };
        let items = match doc.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k.ends_with("List") => doc["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![doc],
        };
        for item in items {
            match bootstrap_secret(&item) {
                Ok(Some((id, secret))) => tokens.push((id, secret, shown.clone())),
                Ok(None) => {}
                Err(e) => warnings.push(format!("{shown}: {e}")),
            }
        }
    }
    (tokens, warnings)
}

/// A bootstrap token from one manifest object, held to the authenticator's rules: `Ok(None)`
/// when the object is no bootstrap-token Secret, `Err` when it is one the API server would not
/// admit.
fn bootstrap_secret(obj: &serde_json::Value) -> Result<Option<(String, String)>, String> {
    let kind = obj["kind"].as_str().unwrap_or("");
    let ty = obj["type"].as_str().unwrap_or("");
    if kind != "Secret" || ty != "bootstrap.kubernetes.io/token" {
        return Ok(None);
    }
    if obj["apiVersion"].as_str() != Some("v1") {
        return Err("a Secret is apiVersion v1".into());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if obj["metadata"]["namespace"].as_str() != Some("kube-system") {
        return Err(format!(
            "{name}: bootstrap tokens are read from kube-system only"
        ));
    }
    // stringData wins over data, as the API server merges them.
    let field = |k: &str| -> Option<String> {
        if let Some(v) = obj["stringData"][k].as_str() {
            return Some(v.to_owned());
        }
        let b64 = obj["data"][k].as_str()?;
        String::from_utf8(crate::join::unbase64(b64)?).ok()
    };
    let id = field("token-id").unwrap_or_default();
    let secret = field("token-secret").unwrap_or_default();
    if !crate::join::token_part(&id, 6) || !crate::join::token_part(&secret, 16) {
        return Err(format!(
            "{name}: token-id must be [a-z0-9]{{6}} and token-secret [a-z0-9]{{16}}"
        ));
    }
    if name != format!("bootstrap-token-{id}") {
        return Err(format!(
            "{name}: a bootstrap token's Secret is named bootstrap-token-{id}"
        ));
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!(
            "{name}: not usable for authentication (usage-bootstrap-authentication is not \"true\")"
        ));
    }
    if let Some(groups) = field("auth-extra-groups")
        && let Some(g) = groups
            .split(',')
            .find(|g| !g.starts_with("system:bootstrappers:"))
    {
        return Err(format!(
            "{name}: extra group {g:?} is not under system:bootstrappers:"
        ));
    }
    if field("expiration").is_some() {
        return Err(format!(
            "{name}: expiring tokens are not modelled by the stand-in"
        ));
    }
    Ok(Some((id, secret)))
}

/// Serves the supervisor port on `listener` in threads, with a certificate for `names` signed
/// by the CA.
pub fn serve(
    listener: TcpListener,
    ca: (String, String),
    names: Vec<String>,
    credentials: Credentials,
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
    let credentials = Arc::new(credentials);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let (config, ca_pem, credentials) =
                (config.clone(), ca_pem.clone(), credentials.clone());
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
                let _ = answer(&mut tls, &ca_pem, &credentials, &remote);
            });
        }
    });
    Ok(())
}

fn answer(
    s: &mut (impl std::io::Read + Write),
    ca_pem: &str,
    credentials: &Credentials,
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
        p if p.starts_with("/v1-k3s/") => match admitted(auth.as_deref(), credentials) {
            Some(how) => {
                let node = node.as_deref().unwrap_or("?");
                crate::log_kv(
                    "info",
                    "agent joined",
                    &[("node", node), ("remote", remote), ("auth", &how)],
                );
                crate::join::kmsg(&format!(
                    "k3s-standin: server: agent {node} joined from {remote} with {how}"
                ));
                ("200 OK", "{\"joined\":true}".into())
            }
            None => ("401 Unauthorized", "Unauthorized".into()),
        },
        _ => ("404 Not Found", String::new()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// How an agent's `Authorization` is admitted (`the token's password`, `bootstrap token ID`), or
/// `None`.
fn admitted(auth: Option<&str>, credentials: &Credentials) -> Option<String> {
    let auth = auth?;
    if let Some(bearer) = auth.strip_prefix("Bearer ") {
        let (id, secret) = bearer.split_once('.')?;
        return (credentials.bootstrap.get(id).map(String::as_str) == Some(secret))
            .then(|| format!("bootstrap token {id}"));
    }
    let (_, p) = decode_basic(auth.strip_prefix("Basic ")?)?;
    (p == credentials.password).then(|| "the token's password".to_owned())
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
    fn manifests_register_only_the_bootstrap_tokens_the_api_server_would_admit() {
        let dir = std::env::temp_dir().join(format!("standin-manifests-{}", std::process::id()));
        let m = dir.join("server/manifests");
        std::fs::create_dir_all(&m).unwrap();
        let secret = |name: &str, id: &str, extra: &str| {
            format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"type\":\"bootstrap.kubernetes.io/token\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"kube-system\"}},\"stringData\":{{\"token-id\":\"{id}\",\"token-secret\":\"0123456789abcdef\",\"usage-bootstrap-authentication\":\"true\"{extra}}}}}"
            )
        };
        let write = |f: &str, t: &str| std::fs::write(m.join(f), t).unwrap();
        write(
            "a.json",
            &secret(
                "bootstrap-token-aaaaaa",
                "aaaaaa",
                ",\"auth-extra-groups\":\"system:bootstrappers:k3s:default-node-token\"",
            ),
        );
        write("b.json", &secret("bootstrap-token-zzzzzz", "bbbbbb", ""));
        write(
            "c.json",
            &secret(
                "bootstrap-token-cccccc",
                "cccccc",
                ",\"auth-extra-groups\":\"system:masters\"",
            ),
        );
        write("d.json", &secret("bootstrap-token-dddddd", "dddddd", ""));
        write("d.json.skip", "");
        write(".e.json", &secret("bootstrap-token-eeeeee", "eeeeee", ""));
        write("f.yaml", "kind: Secret\n");
        write("g.json", "{ not json");
        write(
            "h.json",
            &secret(
                "bootstrap-token-hhhhhh",
                "hhhhhh",
                ",\"expiration\":\"2030-01-01T00:00:00Z\"",
            ),
        );
        let (tokens, warnings) = manifest_bootstrap_tokens(&dir);
        let ids: Vec<&str> = tokens.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(ids, ["aaaaaa"], "{warnings:?}");
        let said = warnings.join("\n");
        for want in [
            "bootstrap-token-zzzzzz: a bootstrap token's Secret is named bootstrap-token-bbbbbb",
            "extra group \"system:masters\"",
            "f.yaml: YAML manifests are not modelled",
            "failed to process",
            "expiring tokens are not modelled",
        ] {
            assert!(said.contains(want), "{want}: {said}");
        }
        assert_eq!(warnings.len(), 5, "{said}");
        std::fs::remove_dir_all(&dir).unwrap();

        let creds = Credentials {
            password: "pw".into(),
            bootstrap: [("aaaaaa".to_owned(), "0123456789abcdef".to_owned())].into(),
        };
        assert_eq!(
            admitted(Some("Bearer aaaaaa.0123456789abcdef"), &creds).as_deref(),
            Some("bootstrap token aaaaaa")
        );
        assert_eq!(
            admitted(Some("Bearer aaaaaa.0123456789abcdee"), &creds),
            None
        );
        assert_eq!(
            admitted(Some("Bearer bbbbbb.0123456789abcdef"), &creds),
            None
        );
        assert_eq!(
            admitted(Some("Basic bm9kZTpwdw=="), &creds).as_deref(),
            Some("the token's password")
        );
        assert_eq!(admitted(None, &creds), None);
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
