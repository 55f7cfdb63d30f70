//! The k3s join secret: where it comes from, what format it has, and the server CA check k3s
//! itself does before it sends the token anywhere.
//!
//! The token never appears in a `Debug`/`Display` output ([`Secret`] redacts), on a command line
//! (node-runtime passes `--token-file`) or in a file others can read ([`write_secret_file`]).

use crate::digest::sync_parent;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A secret string: shown as `<redacted>` by `Debug` and `Display`. Use [`Secret::expose`] only to
/// write it where it belongs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: do not leave the token in freed memory.
        // SAFETY: overwriting the bytes with zeros keeps the string valid UTF-8.
        unsafe { self.0.as_bytes_mut() }.fill(0);
    }
}

/// Where a secret (the join token, a Wi-Fi passphrase) comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretSource {
    /// A plain file (first line, trailing newline stripped).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A SOPS-encrypted file, decrypted with the `sops` program; `key` selects one value of a
    /// YAML/JSON document (see [`sops_extract_path`]).
    Sops {
        /// The encrypted file.
        path: PathBuf,
        /// The value to extract: a top-level key name (`k3s_token`), or sops' path expression
        /// (`["lab"]["k3s_token"]`); the whole decrypted file when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
            SecretSource::Sops { path, key: Some(k) } => {
                write!(f, "SOPS file {} (key {k})", path.display())
            }
            SecretSource::Sops { path, key: None } => write!(f, "SOPS file {}", path.display()),
        }
    }
}

/// What is wrong with the join token or the server's CA.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token file cannot be read.
    #[error("cannot read the token file {path}: {source}: check the path (--token-file)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The environment variable is not set.
    #[error(
        "the environment variable {var} is not set (or is empty): export it with the k3s join token, or use --token-file"
    )]
    EnvMissing {
        /// The variable.
        var: String,
    },
    /// `sops` is not installed.
    #[error(
        "{} is SOPS-encrypted ({}) but the `sops` program is not on PATH: install it (scripts/setup.sh installs sops 3.11.0; see docs/secrets.md)",
        .path.display(), key_label(.key.as_deref())
    )]
    SopsMissing {
        /// The encrypted file.
        path: PathBuf,
        /// The key asked for.
        key: Option<String>,
    },
    /// `sops` ran and could not give the value, or the key is not one sops can extract.
    #[error("{}", sops_message(.path, .key.as_deref(), *.failure, .detail))]
    Sops {
        /// The encrypted file.
        path: PathBuf,
        /// The key asked for.
        key: Option<String>,
        /// What went wrong.
        failure: SopsFailure,
        /// The specifics (sops' words, the recipients, the missing component); never a
        /// decrypted value.
        detail: String,
    },
    /// The token text is not a k3s token.
    #[error("the join token from {origin} is not a k3s token: {reason}")]
    Format {
        /// Where it came from.
        origin: String,
        /// What is wrong (never the token itself).
        reason: String,
    },
    /// The server's CA does not match the hash in the token: do not send the token there.
    #[error(
        "the CA served by {server}/cacerts has sha256 {got}, but the token expects {expected}: this is not the server the token belongs to (or it was reinstalled); the token was not sent. Check the server URL, or get a fresh token from /var/lib/rancher/k3s/server/token"
    )]
    CaMismatch {
        /// The server URL.
        server: String,
        /// Hash of what it served.
        got: String,
        /// Hash in the token.
        expected: String,
    },
    /// `/cacerts` answered with far more than a CA bundle.
    #[error(
        "{url} sends more than {limit} bytes, far more than a k3s CA bundle: this is not a k3s server; the token was not sent. Check the server URL"
    )]
    CaTooLarge {
        /// The `/cacerts` URL.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// Writing the token file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl SecretSource {
    /// Reads the secret. Relative paths are taken from `base_dir` (the topology file's folder).
    pub fn read(&self) -> Result<Secret, TokenError> {
        self.read_in(Path::new("."))
    }

    /// Like [`read`](Self::read), resolving relative paths against `base_dir`.
    pub fn read_in(&self, base_dir: &Path) -> Result<Secret, TokenError> {
        match self {
            SecretSource::File(p) => {
                let path = base_dir.join(p);
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| TokenError::Read { path, source })?;
                Ok(Secret::new(first_line(&text)))
            }
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(TokenError::EnvMissing { var: var.clone() }),
            },
            SecretSource::Sops { path, key } => {
                read_sops("sops", &base_dir.join(path), key.as_deref())
            }
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// Why `sops` could not give a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SopsFailure {
    /// No age key was found (no `SOPS_AGE_KEY_FILE`, no `~/.config/sops/age/keys.txt`).
    NoAgeKey,
    /// `SOPS_AGE_KEY_FILE` names a file that cannot be read.
    AgeKeyFileUnreadable,
    /// Age keys were found, but the file is not encrypted to any of them.
    WrongAgeKey,
    /// The file has no such key.
    KeyNotInFile,
    /// A value or the MAC fails authentication: the file was changed after it was encrypted.
    Tampered,
    /// The file has no `sops` metadata: it was never encrypted.
    NotSops,
    /// The file cannot be read.
    Unreadable,
    /// The key is neither a name nor a path expression sops understands.
    BadKey,
    /// Anything else; the detail is sops' own first line.
    Other,
}

impl TokenError {
    /// True for errors of a `sops` source: the user chose that file, so a tool must not go on
    /// without the value (as it may when an optional environment variable is unset).
    pub fn is_sops(&self) -> bool {
        matches!(
            self,
            TokenError::Sops { .. } | TokenError::SopsMissing { .. }
        )
    }
}

fn key_label(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("key {k}"),
        None => "the whole file".into(),
    }
}

/// Where the age keys go: said in every message about a missing or wrong key.
const AGE_KEY_HELP: &str = "put your age key in ~/.config/sops/age/keys.txt or point SOPS_AGE_KEY_FILE at the file holding it (docs/secrets.md)";

fn sops_message(path: &Path, key: Option<&str>, failure: SopsFailure, detail: &str) -> String {
    let file = path.display();
    let what = key_label(key);
    match failure {
        SopsFailure::NoAgeKey => {
            format!("cannot decrypt {file} ({what}): no age key found ({detail}): {AGE_KEY_HELP}")
        }
        SopsFailure::AgeKeyFileUnreadable => format!(
            "cannot decrypt {file} ({what}): SOPS_AGE_KEY_FILE names {detail}, which cannot be read: point SOPS_AGE_KEY_FILE at your age key file, or unset it to use ~/.config/sops/age/keys.txt"
        ),
        SopsFailure::WrongAgeKey => format!(
            "cannot decrypt {file} ({what}): it is encrypted for {detail}, and none of your age keys is one of them: {AGE_KEY_HELP}; or have the file re-encrypted for your key (add its recipient to .sops.yaml, then `sops updatekeys {file}`)"
        ),
        SopsFailure::KeyNotInFile => {
            let nested = match key {
                Some(k) if !k.starts_with('[') && k.contains('.') => format!(
                    "; for a nested key write the path: key = '{}'",
                    k.split('.')
                        .map(|part| format!("[\"{part}\"]"))
                        .collect::<String>()
                ),
                _ => String::new(),
            };
            format!(
                "{file} has no {what} (sops: {detail}): add it with `sops edit {file}`, or fix `key` of this sops source in the topology{nested}"
            )
        }
        SopsFailure::Tampered => format!(
            "cannot decrypt {file} ({what}): the file was modified after it was encrypted (sops: {detail}): restore it from Git, or re-encrypt the plaintext with `sops --encrypt --in-place {file}`"
        ),
        SopsFailure::NotSops => format!(
            "{file} is not SOPS-encrypted (it has no sops metadata), so it has no {what} to decrypt: encrypt it with `sops --encrypt --in-place {file}` (docs/secrets.md)"
        ),
        SopsFailure::Unreadable => format!(
            "cannot read the SOPS file {file} ({what}): {detail}: check `path` of this sops source (relative to the topology's folder)"
        ),
        SopsFailure::BadKey => {
            format!("{what} of {file} is not something sops can extract: {detail}")
        }
        SopsFailure::Other => {
            format!("sops could not decrypt {file} ({what}): {detail}: see docs/secrets.md")
        }
    }
}

/// The `--extract` expression for a `key` of a sops source. A key that does not start with `[`
/// is one top-level key: `k3s_token` gives `["k3s_token"]`. One that does is sops' own path
/// expression, kept as written once checked: `["name"]` and `[N]` segments only, e.g.
/// `["lab"]["k3s_token"]` or `["tokens"][0]`. sops splits its path on `[` and does no escaping,
/// so a `[` inside a name cannot be expressed; anything else it would misread is refused here
/// with what to write instead.
pub fn sops_extract_path(key: &str) -> Result<String, String> {
    const FORMS: &str = "write a top-level key name (k3s_token) or a path of [\"name\"] and [N] segments (e.g. [\"lab\"][\"k3s_token\"])";
    if key.is_empty() {
        return Err(format!("the key is empty: {FORMS}"));
    }
    if !key.starts_with('[') {
        if key.contains('[') {
            return Err(format!(
                "`{key}` contains `[`, which sops cannot extract inside a name: {FORMS}"
            ));
        }
        return Ok(format!("[\"{key}\"]"));
    }
    let bad = |at: &str, why: &str| Err(format!("`{key}` at `{at}`: {why}: {FORMS}"));
    let mut rest = key;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return bad(rest, "a segment must start with `[`");
        };
        if let Some(quoted) = inner.strip_prefix('"') {
            let Some(end) = quoted.find('"') else {
                return bad(rest, "the name has no closing `\"`");
            };
            let name = &quoted[..end];
            if name.is_empty() {
                return bad(rest, "an empty name");
            }
            if name.contains('[') {
                return bad(rest, "sops cannot extract a name containing `[`");
            }
            let Some(after) = quoted[end + 1..].strip_prefix(']') else {
                return bad(rest, "`\"` must be followed by `]`");
            };
            rest = after;
        } else {
            let Some(end) = inner.find(']') else {
                return bad(rest, "no closing `]`");
            };
            let index = &inner[..end];
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return bad(
                    rest,
                    "a segment is either a quoted name [\"name\"] or a list index [0]",
                );
            }
            if index.parse::<u32>().is_err() {
                return bad(rest, "the list index is too large");
            }
            rest = &inner[end + 1..];
        }
    }
    Ok(key.to_owned())
}

impl SecretSource {
    /// Checks what can be checked without reading the secret: the key of a sops source. The
    /// error says what is wrong and what to write instead.
    pub fn check(&self) -> Result<(), String> {
        match self {
            SecretSource::Sops { key: Some(k), .. } => sops_extract_path(k).map(drop),
            _ => Ok(()),
        }
    }
}

/// The public keys a sops data-key failure lists as `age1…: FAILED` (its recipients).
fn failed_recipients(stderr: &str) -> Vec<&str> {
    let mut out: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": FAILED"))
        .filter(|r| r.starts_with("age1") && !r.contains(' '))
        .collect();
    out.dedup();
    out
}

/// Sorts sops' stderr into a [`SopsFailure`] and its detail. sops' messages are matched on
/// words that have been stable across releases (checked against 3.11); what is not recognised
/// keeps sops' own first line.
fn classify_sops_failure(stderr: &str, code: Option<i32>) -> (SopsFailure, String) {
    let lower = stderr.to_ascii_lowercase();
    let first = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_owned();
    // 128: sops' exit code when no master key could decrypt the data key.
    if lower.contains("failed to get the data key") || code == Some(128) {
        if lower.contains("did not match any of the recipients")
            || lower.contains("no identity matched")
            || lower.contains("incorrect identity")
        {
            let recipients = failed_recipients(stderr);
            let detail = if recipients.is_empty() {
                "other age keys".to_owned()
            } else {
                recipients.join(", ")
            };
            return (SopsFailure::WrongAgeKey, detail);
        }
        if lower.contains("failed to open sops_age_key_file") {
            let named = std::env::var("SOPS_AGE_KEY_FILE").unwrap_or_default();
            return (SopsFailure::AgeKeyFileUnreadable, named);
        }
        if lower.contains("failed to load age identities") || lower.contains("did not find keys") {
            let looked = match std::env::var("SOPS_AGE_KEY_FILE") {
                Ok(f) if !f.is_empty() => format!("SOPS_AGE_KEY_FILE={f} has none"),
                _ => "SOPS_AGE_KEY_FILE is not set, ~/.config/sops/age/keys.txt has none".into(),
            };
            return (SopsFailure::NoAgeKey, looked);
        }
        return (SopsFailure::Other, first);
    }
    if lower.contains("component") && lower.contains("not found") {
        // "error truncating tree: component ['x'] not found": keep from "component" on.
        let at = lower.find("component").unwrap_or(0);
        let line = stderr[at..].lines().next().unwrap_or("").trim().to_owned();
        return (SopsFailure::KeyNotInFile, line);
    }
    if lower.contains("mac mismatch") || lower.contains("cannot decrypt mac") {
        return (
            SopsFailure::Tampered,
            "its MAC does not match its values".into(),
        );
    }
    if lower.contains("message authentication failed")
        || lower.contains("does not match sops' data format")
    {
        // sops' message may quote the changed value itself: not repeated here.
        return (
            SopsFailure::Tampered,
            "an encrypted value fails authentication".into(),
        );
    }
    if lower.contains("sops metadata not found") {
        return (SopsFailure::NotSops, String::new());
    }
    if lower.contains("error parsing --extract path") {
        return (SopsFailure::BadKey, first);
    }
    if lower.contains("non-existent file") || lower.contains("error reading file") {
        return (SopsFailure::Unreadable, first);
    }
    (SopsFailure::Other, first)
}

/// Runs `program --decrypt [--extract PATH] FILE` and returns the first line of what it prints.
/// The value comes only through the stdout pipe: never a file, never an argument (the argv holds
/// the file and the key path), never a log line; the buffer is zeroed once the secret is taken.
pub(crate) fn read_sops(
    program: &str,
    path: &Path,
    key: Option<&str>,
) -> Result<Secret, TokenError> {
    let fail = |failure, detail: String| TokenError::Sops {
        path: path.to_owned(),
        key: key.map(str::to_owned),
        failure,
        detail,
    };
    let extract = key
        .map(sops_extract_path)
        .transpose()
        .map_err(|why| fail(SopsFailure::BadKey, why))?;
    // sops says "cannot operate on non-existent file"; the OS error says more (permissions).
    if let Err(e) = std::fs::File::open(path) {
        return Err(fail(SopsFailure::Unreadable, e.to_string()));
    }
    let mut cmd = crate::process::command(program);
    cmd.arg("--decrypt");
    if let Some(x) = &extract {
        cmd.arg("--extract").arg(x);
    }
    cmd.arg(path)
        // Without it sops asks the network for its latest release at every run.
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TokenError::SopsMissing {
                path: path.to_owned(),
                key: key.map(str::to_owned),
            });
        }
        Err(e) => {
            return Err(fail(
                SopsFailure::Other,
                format!("cannot run {program}: {e}"),
            ));
        }
    };
    let mut stdout = out.stdout;
    if !out.status.success() {
        stdout.fill(0);
        let (failure, detail) =
            classify_sops_failure(&String::from_utf8_lossy(&out.stderr), out.status.code());
        return Err(fail(failure, detail));
    }
    let secret = match std::str::from_utf8(&stdout) {
        Ok(text) => Ok(Secret::new(first_line(text))),
        Err(_) => Err(fail(
            SopsFailure::Other,
            "the decrypted value is not UTF-8 text".into(),
        )),
    };
    stdout.fill(0);
    secret
}

/// Which of k3s' token formats a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFormat {
    /// `K10<sha256 of the CA>::<user>:<password>`: the CA can be checked.
    Secure {
        /// `server` or `node`.
        user: String,
    },
    /// `K10<sha256>::<id>.<secret>`: a bootstrap token behind a CA hash.
    SecureBootstrap {
        /// The public token id.
        id: String,
    },
    /// A bare password (the server's `--token` or `--agent-token` value): no CA check possible.
    Bare,
    /// `[a-z0-9]{6}.[a-z0-9]{16}` from `k3s token create`: agent-only, expires.
    Bootstrap {
        /// The public token id (the part before the dot; not secret).
        id: String,
    },
}

/// A parsed k3s join token. The raw text is what goes into the worker's token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    raw: Secret,
    format: TokenFormat,
    ca_hash: Option<String>,
}

fn is_bootstrap(s: &str) -> Option<String> {
    let (id, secret) = s.split_once('.')?;
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then(|| id.to_owned())
}

impl JoinToken {
    /// Parses a token; `origin` names where it came from in errors (never the token itself).
    pub fn parse(text: &str, origin: &str) -> Result<JoinToken, TokenError> {
        let bad = |reason: &str| TokenError::Format {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "it contains spaces or control characters; a token is one word",
            ));
        }
        if let Some(rest) = t.strip_prefix("K10") {
            let Some((hash, creds)) = rest.split_once("::") else {
                return Err(bad(
                    "it starts with K10 but has no `::` before the credentials (expected K10<sha256>::<user>:<password>)",
                ));
            };
            if creds.is_empty() {
                return Err(bad("nothing follows `::`; the credentials are missing"));
            }
            let ca_hash = if hash.is_empty() {
                None
            } else if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                Some(hash.to_ascii_lowercase())
            } else {
                return Err(bad(&format!(
                    "the CA hash after K10 has {} characters; k3s requires 64 hex digits",
                    hash.len()
                )));
            };
            let format = if let Some(id) = is_bootstrap(creds) {
                TokenFormat::SecureBootstrap { id }
            } else if let Some((user, password)) = creds.split_once(':') {
                if user.is_empty() || password.is_empty() {
                    return Err(bad("the credentials must be <user>:<password>"));
                }
                TokenFormat::Secure {
                    user: user.to_owned(),
                }
            } else {
                return Err(bad(
                    "the credentials after `::` are neither <user>:<password> nor a bootstrap token",
                ));
            };
            return Ok(JoinToken {
                raw: Secret::new(t),
                format,
                ca_hash,
            });
        }
        let format = match is_bootstrap(t) {
            Some(id) => TokenFormat::Bootstrap { id },
            None => TokenFormat::Bare,
        };
        Ok(JoinToken {
            raw: Secret::new(t),
            format,
            ca_hash: None,
        })
    }

    /// Reads and parses a token from a source.
    pub fn from_source(source: &SecretSource, base_dir: &Path) -> Result<JoinToken, TokenError> {
        let secret = source.read_in(base_dir)?;
        JoinToken::parse(secret.expose(), &source.to_string())
    }

    /// The format.
    pub fn format(&self) -> &TokenFormat {
        &self.format
    }

    /// The CA hash the token carries (lowercase hex), if any.
    pub fn ca_hash(&self) -> Option<&str> {
        self.ca_hash.as_deref()
    }

    /// The whole token, for the worker's token file.
    pub fn secret(&self) -> &Secret {
        &self.raw
    }

    /// A bootstrap token's id and secret (`<id>.<secret>`, after `::` in a `K10` token); `None`
    /// for password tokens.
    pub fn bootstrap_parts(&self) -> Option<(&str, &str)> {
        match self.format {
            TokenFormat::Bootstrap { .. } | TokenFormat::SecureBootstrap { .. } => {
                let raw = self.raw.expose();
                let creds = raw.split_once("::").map_or(raw, |(_, c)| c);
                creds.split_once('.')
            }
            _ => None,
        }
    }
}

/// The group every token `k3s token create` makes authenticates as (besides
/// `system:bootstrappers`, which k3s' agent endpoints admit).
pub const K3S_BOOTSTRAP_GROUP: &str = "system:bootstrappers:k3s:default-node-token";

/// The Secret `k3s token create --ttl 0 --description …` would make for the bootstrap token
/// `id.secret`, as a manifest k3s applies at start (kube-system/bootstrap-token-ID, both usages,
/// k3s' group, no expiry), labelled with the node it was made for.
pub fn bootstrap_token_manifest(node: &str, id: &str, secret: &Secret) -> Secret {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("bootstrap-token-{id}"),
            "namespace": "kube-system",
            "labels": { "armfleet/node": node },
        },
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": format!("armfleet: {node}'s own join token"),
            "token-id": id,
            "token-secret": secret.expose(),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": K3S_BOOTSTRAP_GROUP,
        },
    });
    Secret::new(format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("plain data")
    ))
}

/// Result of [`verify_server_ca`] when nothing is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCheck {
    /// The server's CA matches the token's hash.
    Verified,
    /// The token has no hash (bare password or bootstrap token): nothing to check.
    NoHashInToken,
    /// The server could not be reached (the reason); the check could not be done.
    Unreachable(String),
}

/// k3s' `hashCA`: sha256 of the PEM bytes as served for one certificate; for a bundle, of the DER
/// of its last (root) certificate.
pub fn hash_ca(pem: &[u8]) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.len() > 1 {
        crate::digest::sha256_hex(certs.last().expect("non-empty"))
    } else {
        crate::digest::sha256_hex(pem)
    }
}

/// The most of a `/cacerts` answer that is read (a k3s CA bundle is a few KiB).
pub const MAX_CACERTS_BYTES: u64 = 1 << 20;

/// Fetches `server_url/cacerts` without verifying TLS (that is the point: the hash in the token
/// is the trust anchor) and compares its hash with the token's, as the k3s agent does before it
/// sends the token. A mismatch is an error; an unreachable server is reported, not an error.
pub fn verify_server_ca(server_url: &str, token: &JoinToken) -> Result<CaCheck, TokenError> {
    let Some(expected) = token.ca_hash() else {
        return Ok(CaCheck::NoHashInToken);
    };
    crate::download::install_crypto_provider();
    let client = match reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Ok(CaCheck::Unreachable(crate::download::error_chain(&e)));
        }
    };
    let url = format!("{}/cacerts", server_url.trim_end_matches('/'));
    let response = match client.get(&url).send() {
        Ok(r) => r,
        Err(e) => return Ok(CaCheck::Unreachable(crate::download::error_chain(&e))),
    };
    if !response.status().is_success() {
        return Ok(CaCheck::Unreachable(format!(
            "{url} answered HTTP {}",
            response.status().as_u16()
        )));
    }
    // A k3s CA bundle is a few kilobytes; an endless answer must not be read into memory.
    let mut body = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(
        &mut std::io::Read::take(response, MAX_CACERTS_BYTES + 1),
        &mut body,
    ) {
        return Ok(CaCheck::Unreachable(crate::download::error_chain(&e)));
    }
    if body.len() as u64 > MAX_CACERTS_BYTES {
        return Err(TokenError::CaTooLarge {
            url,
            limit: MAX_CACERTS_BYTES,
        });
    }
    let got = hash_ca(&body);
    if got == expected {
        Ok(CaCheck::Verified)
    } else {
        Err(TokenError::CaMismatch {
            server: server_url.trim_end_matches('/').to_owned(),
            got,
            expected: expected.to_owned(),
        })
    }
}

/// Writes `secret` to `path` with mode 0600, atomically: a temp file created 0600 in the same
/// directory (never readable by others, whatever the umask), fsynced, renamed over `path`.
pub fn write_secret_file(path: &Path, secret: &Secret) -> Result<(), TokenError> {
    let err = |source| TokenError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(secret.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    sync_parent(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6f2b1a0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn secure_token_parses_with_hash_and_user() {
        let t = JoinToken::parse(&format!("K10{HASH}::server:s3cr3tpass\n"), "t").unwrap();
        assert_eq!(t.ca_hash(), Some(HASH));
        assert_eq!(
            t.format(),
            &TokenFormat::Secure {
                user: "server".into()
            }
        );
        assert_eq!(t.secret().expose(), format!("K10{HASH}::server:s3cr3tpass"));
        let upper = JoinToken::parse(&format!("K10{}::node:x", HASH.to_uppercase()), "t").unwrap();
        assert_eq!(upper.ca_hash(), Some(HASH));
    }

    #[test]
    fn bare_and_bootstrap_tokens_parse_without_hash() {
        let bare = JoinToken::parse("my-cluster-password", "t").unwrap();
        assert_eq!(bare.format(), &TokenFormat::Bare);
        assert_eq!(bare.ca_hash(), None);
        let boot = JoinToken::parse("abcdef.0123456789abcdef", "t").unwrap();
        assert_eq!(
            boot.format(),
            &TokenFormat::Bootstrap {
                id: "abcdef".into()
            }
        );
        // Wrong lengths: a bare password, not a bootstrap token.
        let not_boot = JoinToken::parse("abcde.0123456789abcdef", "t").unwrap();
        assert_eq!(not_boot.format(), &TokenFormat::Bare);
        let sb = JoinToken::parse(&format!("K10{HASH}::abcdef.0123456789abcdef"), "t").unwrap();
        assert_eq!(
            sb.format(),
            &TokenFormat::SecureBootstrap {
                id: "abcdef".into()
            }
        );
        assert_eq!(sb.ca_hash(), Some(HASH));
        assert_eq!(sb.bootstrap_parts(), Some(("abcdef", "0123456789abcdef")));
        assert_eq!(boot.bootstrap_parts(), Some(("abcdef", "0123456789abcdef")));
        assert_eq!(bare.bootstrap_parts(), None);
        let pw = JoinToken::parse(&format!("K10{HASH}::server:pw.with.dots"), "t").unwrap();
        assert_eq!(pw.bootstrap_parts(), None);
    }

    #[test]
    fn a_bootstrap_token_manifest_is_the_secret_k3s_token_create_makes() {
        let text = bootstrap_token_manifest("phone-1", "abcdef", &Secret::new("0123456789abcdef"));
        let v: serde_json::Value = serde_json::from_str(text.expose()).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(v["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(v["metadata"]["namespace"], "kube-system");
        assert_eq!(v["metadata"]["labels"]["armfleet/node"], "phone-1");
        let d = &v["stringData"];
        assert_eq!(d["token-id"], "abcdef");
        assert_eq!(d["token-secret"], "0123456789abcdef");
        assert_eq!(d["usage-bootstrap-authentication"], "true");
        assert_eq!(d["auth-extra-groups"], K3S_BOOTSTRAP_GROUP);
        // --ttl 0: no expiry.
        assert!(d.get("expiration").is_none(), "{d}");
        assert!(format!("{text:?}").contains("redacted"));
    }

    #[test]
    fn malformed_tokens_say_why_without_echoing_the_token() {
        for (text, why) in [
            ("", "empty"),
            ("K10abc::server:pw", "64 hex"),
            (&format!("K10{HASH}server:pw") as &str, "no `::`"),
            (&format!("K10{HASH}::"), "missing"),
            (&format!("K10{HASH}::justpassword"), "neither"),
            ("two words", "one word"),
        ] {
            let err = JoinToken::parse(text, "env K3S_TOKEN")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains("env K3S_TOKEN"), "{err}");
            if text.len() > 3 {
                assert!(!err.contains(text), "token echoed: {err}");
            }
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let t = JoinToken::parse(&format!("K10{HASH}::server:hunter2hunter2"), "t").unwrap();
        let shown = format!("{t:?} {} {:?}", t.secret(), t.secret());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn secret_file_is_written_0600_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/armfleet/token");
        // SAFETY: umask is process-wide; nextest runs each test in its own process.
        let old = unsafe { libc::umask(0) };
        write_secret_file(&path, &Secret::new("K10x::server:pw")).unwrap();
        unsafe { libc::umask(old) };
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "K10x::server:pw\n");
        // Replacing keeps 0600 and leaves no temp file behind.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret_file(&path, &Secret::new("new")).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn file_and_env_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "abcdef.0123456789abcdef\n").unwrap();
        let t = JoinToken::from_source(&SecretSource::File("tok".into()), dir.path()).unwrap();
        assert_eq!(t.secret().expose(), "abcdef.0123456789abcdef");
        let err = SecretSource::File("missing".into())
            .read_in(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing") && err.contains("--token-file"),
            "{err}"
        );
        // SAFETY: nextest runs each test in its own process; no other thread reads the env.
        unsafe { std::env::set_var("ARMFLEET_TEST_TOKEN_VAR", " pw-from-env\n") };
        let s = SecretSource::Env("ARMFLEET_TEST_TOKEN_VAR".into())
            .read()
            .unwrap();
        assert_eq!(s.expose(), "pw-from-env");
        let err = SecretSource::Env("ARMFLEET_TEST_UNSET_VAR".into())
            .read()
            .unwrap_err()
            .to_string();
        assert!(err.contains("ARMFLEET_TEST_UNSET_VAR is not set"), "{err}");
    }

    /// A stand-in for sops: a shell script in `dir` (the real one is run by tests/tests/secrets.rs).
    fn fake_sops(dir: &Path, body: &str) -> String {
        let p = dir.join("fake-sops");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn missing_sops_program_is_said_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k3s.sops.yaml");
        std::fs::write(&file, "k3s_token: ENC[...]\n").unwrap();
        let err = read_sops("armfleet-test-no-such-sops", &file, Some("token")).unwrap_err();
        assert!(matches!(err, TokenError::SopsMissing { .. }));
        assert!(err.is_sops());
        let msg = err.to_string();
        assert!(
            msg.contains("k3s.sops.yaml")
                && msg.contains("key token")
                && msg.contains("`sops` program is not on PATH")
                && msg.contains("scripts/setup.sh"),
            "{msg}"
        );
    }

    #[test]
    fn sops_gets_the_path_expression_and_no_version_check_and_gives_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(&file, "x: y\n").unwrap();
        let sops = fake_sops(
            dir.path(),
            r#"printf '%s|%s|%s|%s|%s\nsecond line\n' "$SOPS_DISABLE_VERSION_CHECK" "$1" "$2" "$3" "$4""#,
        );
        let got = read_sops(&sops, &file, Some("k3s_token")).unwrap();
        assert_eq!(
            got.expose(),
            format!("1|--decrypt|--extract|[\"k3s_token\"]|{}", file.display())
        );
        let got = read_sops(&sops, &file, Some(r#"["lab"]["k3s_token"]"#)).unwrap();
        assert!(
            got.expose()
                .starts_with(r#"1|--decrypt|--extract|["lab"]["k3s_token"]|"#),
            "{}",
            got.expose()
        );
        let got = read_sops(&sops, &file, None).unwrap();
        assert_eq!(got.expose(), format!("1|--decrypt|{}||", file.display()));
    }

    #[test]
    fn an_unknown_sops_failure_reports_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.yaml");
        std::fs::write(&file, "x: y\n").unwrap();
        let sops = fake_sops(
            dir.path(),
            "echo >&2; echo 'something new went wrong' >&2; echo 'details' >&2; exit 3",
        );
        let err = read_sops(&sops, &file, Some("k")).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Sops {
                    failure: SopsFailure::Other,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("x.yaml")
                && msg.contains("key k")
                && msg.contains("something new went wrong")
                && !msg.contains("details"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn a_missing_sops_file_is_said_before_sops_runs() {
        let err =
            read_sops("false", Path::new("/nonexistent/lab.sops.yaml"), Some("k")).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                TokenError::Sops {
                    failure: SopsFailure::Unreadable,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("/nonexistent/lab.sops.yaml") && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn sops_key_forms() {
        assert_eq!(sops_extract_path("k3s_token").unwrap(), r#"["k3s_token"]"#);
        // A dot is part of the name, as in sops; the missing-key message hints at the path form.
        assert_eq!(sops_extract_path("lab.token").unwrap(), r#"["lab.token"]"#);
        for good in [
            r#"["lab"]["k3s_token"]"#,
            r#"["tokens"][0]"#,
            r#"["a b"][12]["c"]"#,
        ] {
            assert_eq!(sops_extract_path(good).unwrap(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            ("a[0]", "contains `[`"),
            (r#"["lab"]["k3s_token""#, "`\"` must be followed by `]`"),
            (r#"["lab"][k3s_token]"#, "quoted name"),
            (r#"['lab']"#, "quoted name"),
            (r#"["lab"].k3s_token"#, "must start with `[`"),
            (r#"["lab"][]"#, "quoted name"),
            (r#"[""]"#, "empty name"),
            (r#"["lab"][-1]"#, "quoted name"),
            (r#"["lab"][99999999999]"#, "too large"),
            (r#"["lab"#, "no closing"),
            (r#"[0"#, "no closing"),
        ] {
            let err = sops_extract_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.contains(r#"["lab"]["k3s_token"]"#),
                "says the forms: {err}"
            );
        }
        let src = SecretSource::Sops {
            path: "s.yaml".into(),
            key: Some("[lab]".into()),
        };
        assert!(src.check().is_err());
        let err = src.read().unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Sops {
                    failure: SopsFailure::BadKey,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// sops 3.11's stderr for each failure, as the real program printed it (tests/tests/secrets.rs
    /// makes each case happen with the real sops).
    #[test]
    fn sops_failures_are_classified_from_its_messages() {
        let wrong = "Failed to get the data key required to decrypt the SOPS file.\n\nGroup 0: FAILED\n  age1ld2cqkykayzq0rcrkxq2l5munqudp9h5d50x9vlcqgw2jt9ptpjsfll9p2: FAILED\n    - | failed to create reader for decrypting sops data key with\n      | age: identity did not match any of the recipients: incorrect\n      | identity for recipient block. Did not find keys in locations\n      | 'SOPS_AGE_SSH_PRIVATE_KEY_FILE', '/root/.ssh/id_ed25519'.\n\nRecovery failed because no master key was able to decrypt the file.\n";
        let none = "Failed to get the data key required to decrypt the SOPS file.\n\nGroup 0: FAILED\n  age1ld2cqkykayzq0rcrkxq2l5munqudp9h5d50x9vlcqgw2jt9ptpjsfll9p2: FAILED\n    - | failed to load age identities. Did not find keys in\n      | locations 'SOPS_AGE_SSH_PRIVATE_KEY_FILE',\n      | '/tmp/h/.config/sops/age/keys.txt'.\n";
        let keyfile = "Failed to get the data key required to decrypt the SOPS file.\n\nGroup 0: FAILED\n  age1ld2cqkykayzq0rcrkxq2l5munqudp9h5d50x9vlcqgw2jt9ptpjsfll9p2: FAILED\n    - | failed to load age identities. Errors while loading age\n      | identities: failed to open SOPS_AGE_KEY_FILE file: open\n      | /tmp/sx/nokeyfile.txt: no such file or directory.\n";
        let cases: &[(&str, i32, SopsFailure, &str)] = &[
            (
                wrong,
                128,
                SopsFailure::WrongAgeKey,
                "age1ld2cqkykayzq0rcrkxq2l5munqudp9h5d50x9vlcqgw2jt9ptpjsfll9p2",
            ),
            (none, 128, SopsFailure::NoAgeKey, "has none"),
            (keyfile, 128, SopsFailure::AgeKeyFileUnreadable, ""),
            (
                "error truncating tree: component ['nope'] not found\n",
                1,
                SopsFailure::KeyNotInFile,
                "component ['nope'] not found",
            ),
            (
                "Error decrypting tree: Error walking tree: Could not decrypt value: Could not decrypt with AES_GCM: cipher: message authentication failed\n",
                25,
                SopsFailure::Tampered,
                "fails authentication",
            ),
            (
                "Error decrypting tree: Error walking tree: Could not decrypt value: Input string hunter2 does not match sops' data format\n",
                25,
                SopsFailure::Tampered,
                "fails authentication",
            ),
            (
                "MAC mismatch. File has 7735, computed 24C2\n",
                51,
                SopsFailure::Tampered,
                "MAC",
            ),
            (
                "Cannot decrypt MAC: Could not decrypt with AES_GCM: cipher: message authentication failed\n",
                51,
                SopsFailure::Tampered,
                "MAC",
            ),
            ("sops metadata not found\n", 1, SopsFailure::NotSops, ""),
            (
                "Error: cannot operate on non-existent file \"/x/y.yaml\"\n",
                100,
                SopsFailure::Unreadable,
                "non-existent",
            ),
            (
                "error parsing --extract path: component k doesn't end with ]\n",
                91,
                SopsFailure::BadKey,
                "doesn't end with ]",
            ),
        ];
        for (stderr, code, want, detail) in cases {
            let (got, d) = classify_sops_failure(stderr, Some(*code));
            assert_eq!(got, *want, "{stderr}");
            assert!(d.contains(detail), "{want:?}: {d:?}");
            assert!(
                !d.contains("hunter2"),
                "a value sops quoted is not repeated: {d}"
            );
        }
    }

    #[test]
    fn sops_messages_name_the_file_the_key_and_what_to_do() {
        let path = Path::new("secrets/lab.sops.yaml");
        for (failure, needles) in [
            (
                SopsFailure::NoAgeKey,
                &["SOPS_AGE_KEY_FILE", "~/.config/sops/age/keys.txt"][..],
            ),
            (
                SopsFailure::WrongAgeKey,
                &[
                    "SOPS_AGE_KEY_FILE",
                    "~/.config/sops/age/keys.txt",
                    "updatekeys",
                ],
            ),
            (
                SopsFailure::KeyNotInFile,
                &["sops edit secrets/lab.sops.yaml"],
            ),
            (
                SopsFailure::Tampered,
                &["modified after it was encrypted", "restore it from Git"],
            ),
            (
                SopsFailure::NotSops,
                &["sops --encrypt --in-place secrets/lab.sops.yaml"],
            ),
        ] {
            let msg = sops_message(path, Some("k3s_token"), failure, "d");
            assert!(msg.contains("secrets/lab.sops.yaml"), "{msg}");
            assert!(msg.contains("key k3s_token"), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{failure:?}: {n:?} not in {msg}");
            }
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
        let msg = sops_message(path, Some("lab.k3s_token"), SopsFailure::KeyNotInFile, "d");
        assert!(msg.contains(r#"key = '["lab"]["k3s_token"]'"#), "{msg}");
    }

    #[test]
    fn ca_hash_follows_k3s_for_one_cert_and_for_bundles() {
        let one = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        assert_eq!(hash_ca(one), crate::digest::sha256_hex(one));
        let two = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        assert_eq!(hash_ca(two), crate::digest::sha256_hex(&[0x30, 3, 2, 1, 1]));
    }
}
