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
    /// YAML/JSON document (`--extract '["key"]'`).
    Sops {
        /// The encrypted file.
        path: PathBuf,
        /// Top-level key to extract; the whole decrypted file when absent.
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
        "{path} is SOPS-encrypted but the `sops` program is not installed: install sops (https://github.com/getsops/sops/releases), or give the token with --token-file or K3S_TOKEN"
    )]
    SopsMissing {
        /// The encrypted file.
        path: PathBuf,
    },
    /// `sops` failed.
    #[error(
        "sops could not decrypt {path}: {message}: check that your age/PGP key can decrypt it (SOPS_AGE_KEY_FILE)"
    )]
    Sops {
        /// The encrypted file.
        path: PathBuf,
        /// sops' message (first line).
        message: String,
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

/// Runs `program --decrypt [--extract '["key"]'] path`; stdout is the secret, never logged.
pub(crate) fn read_sops(
    program: &str,
    path: &Path,
    key: Option<&str>,
) -> Result<Secret, TokenError> {
    let mut cmd = crate::process::command(program);
    cmd.arg("--decrypt");
    if let Some(k) = key {
        cmd.arg("--extract")
            .arg(format!("[{}]", serde_json::Value::String(k.to_owned())));
    }
    cmd.arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TokenError::SopsMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => {
            return Err(TokenError::Sops {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(TokenError::Sops {
            path: path.to_owned(),
            message: stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim()
                .to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut stdout = out.stdout;
    stdout.fill(0);
    Ok(Secret::new(first_line(&text)))
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

    #[test]
    fn missing_sops_program_is_said_clearly() {
        let err = read_sops(
            "armfleet-test-no-such-sops",
            Path::new("secrets/k3s.sops.yaml"),
            Some("token"),
        )
        .unwrap_err();
        assert!(matches!(err, TokenError::SopsMissing { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("secrets/k3s.sops.yaml")
                && msg.contains("`sops` program is not installed")
                && msg.contains("--token-file"),
            "{msg}"
        );
        // The real lookup says the same on a machine without sops (this one).
        if std::process::Command::new("sops").arg("--version").output().is_err() {
            let err = SecretSource::Sops {
                path: "k.sops.yaml".into(),
                key: None,
            }
            .read()
            .unwrap_err();
            assert!(matches!(err, TokenError::SopsMissing { .. }), "{err}");
        }
    }

    #[test]
    fn a_failing_sops_reports_its_first_line() {
        // `false` stands for a sops that cannot decrypt: exits 1 with no output.
        let err = read_sops("false", Path::new("x.yaml"), None).unwrap_err();
        assert!(matches!(err, TokenError::Sops { .. }), "{err}");
        assert!(err.to_string().contains("x.yaml"));
    }

    #[test]
    fn ca_hash_follows_k3s_for_one_cert_and_for_bundles() {
        let one = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        assert_eq!(hash_ca(one), crate::digest::sha256_hex(one));
        let two = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        assert_eq!(hash_ca(two), crate::digest::sha256_hex(&[0x30, 3, 2, 1, 1]));
    }
}
