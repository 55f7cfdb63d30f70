//! Just enough of the Kubernetes API to see a node join: read a kubeconfig (the one `k3s server`
//! writes at `/etc/rancher/k3s/k3s.yaml`, or any with certificate or token credentials) and ask
//! whether a Node is Ready. A worker can be healthy on its own (its kubelet answers) and still
//! not be part of the cluster; this is how the tools tell.

use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the cluster could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig cannot be read.
    #[error("cannot read the kubeconfig {path}: {source}: check --kubeconfig or KUBECONFIG")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The kubeconfig is not usable.
    #[error("kubeconfig {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (key names, never credentials).
        message: String,
    },
    /// The API answered with an error or could not be reached.
    #[error("the Kubernetes API at {server}: {message}")]
    Api {
        /// The API server.
        server: String,
        /// What happened.
        message: String,
    },
}

/// What the API says of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Its Ready condition is True.
    Ready,
    /// It is registered, not Ready (the condition's reason and message).
    NotReady(String),
    /// No Node of that name (yet).
    Missing,
}

/// A client for one cluster, from a kubeconfig's current context.
pub struct KubeClient {
    server: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("KubeClient")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// One field of a kubeconfig entry: inline (`X-data`, base64) or a file next to the kubeconfig.
fn pem_field(
    entry: &Value,
    name: &str,
    dir: &Path,
    bad: &dyn Fn(String) -> KubeError,
) -> Result<Option<Vec<u8>>, KubeError> {
    use base64::Engine;
    if let Some(data) = entry.get(format!("{name}-data")).and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| bad(format!("{name}-data is not base64")))?;
        return Ok(Some(bytes));
    }
    if let Some(file) = entry.get(name).and_then(Value::as_str) {
        let path = dir.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| bad(format!("{name} {}: {e}", path.display())))?;
        return Ok(Some(bytes));
    }
    Ok(None)
}

/// The entry of `list` (a kubeconfig's `clusters`, `users` or `contexts`) named `name`.
fn named<'a>(doc: &'a Value, list: &str, name: &str, key: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get(key)
}

impl KubeClient {
    /// Reads `path`: its current context's cluster (server, CA) and user (client certificate
    /// and key, or a bearer token).
    pub fn from_kubeconfig(path: &Path) -> Result<KubeClient, KubeError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |message: String| KubeError::Invalid {
            path: path.to_owned(),
            message,
        };
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| bad(format!("not YAML: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let context_name = doc
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no current-context".into()))?;
        let context = named(&doc, "contexts", context_name, "context")
            .ok_or_else(|| bad(format!("no context named {context_name:?}")))?;
        let cluster_name = context.get("cluster").and_then(Value::as_str).unwrap_or("");
        let user_name = context.get("user").and_then(Value::as_str).unwrap_or("");
        let cluster = named(&doc, "clusters", cluster_name, "cluster")
            .ok_or_else(|| bad(format!("no cluster named {cluster_name:?}")))?;
        let user = named(&doc, "users", user_name, "user")
            .ok_or_else(|| bad(format!("no user named {user_name:?}")))?;
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("cluster {cluster_name:?} has no server")))?
            .trim_end_matches('/')
            .to_owned();
        crate::download::install_crypto_provider();
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if let Some(ca) = pem_field(cluster, "certificate-authority", dir, &bad)? {
            let certs = reqwest::Certificate::from_pem_bundle(&ca)
                .map_err(|e| bad(format!("certificate-authority: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        if cluster
            .get("insecure-skip-tls-verify")
            .and_then(Value::as_bool)
            == Some(true)
        {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let cert = pem_field(user, "client-certificate", dir, &bad)?;
        let key = pem_field(user, "client-key", dir, &bad)?;
        if let (Some(mut cert), Some(key)) = (cert, key) {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            let identity = reqwest::Identity::from_pem(&cert)
                .map_err(|e| bad(format!("client-certificate/client-key: {e}")))?;
            builder = builder.identity(identity);
        }
        let token = user.get("token").and_then(Value::as_str).map(str::to_owned);
        let http = builder
            .build()
            .map_err(|e| bad(format!("cannot set up TLS: {e}")))?;
        Ok(KubeClient {
            server,
            token,
            http,
        })
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the Node `name` is Ready.
    pub fn node_state(&self, name: &str) -> Result<NodeState, KubeError> {
        let api = |message: String| KubeError::Api {
            server: self.server.clone(),
            message,
        };
        let mut req = self
            .http
            .get(format!("{}/api/v1/nodes/{name}", self.server));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .map_err(|e| api(crate::download::error_chain(&e)))?;
        match resp.status().as_u16() {
            404 => return Ok(NodeState::Missing),
            401 | 403 => {
                return Err(api(format!(
                    "HTTP {}: the kubeconfig's credentials may not read nodes",
                    resp.status().as_u16()
                )));
            }
            200 => {}
            other => return Err(api(format!("HTTP {other}"))),
        }
        // A Node object is a few kilobytes; read a bounded amount.
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(resp, 4 << 20), &mut text)
            .map_err(|e| api(format!("reading the Node: {e}")))?;
        let body: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| api(format!("not a Node object: {e}")))?;
        let ready = body["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        Ok(match ready {
            Some(c) if c["status"] == "True" => NodeState::Ready,
            Some(c) => NodeState::NotReady(
                format!(
                    "{} {}",
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
                .trim()
                .to_owned(),
            ),
            None => NodeState::NotReady("no Ready condition yet".into()),
        })
    }
}
