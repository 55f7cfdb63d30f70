//! The join token file: it must exist, be non-empty and readable by its owner only. A token
//! dropped elsewhere (e.g. on a Pi's FAT boot partition) is moved into place with mode 0600.
//! Nothing here ever prints the token's value.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What is wrong with the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token file.
    #[error(
        "token file {0} (server.token_file) does not exist: write the join token there with mode 0600 (phonectl enroll / imagegen do it)"
    )]
    Missing(PathBuf),
    /// Group or others may read it.
    #[error(
        "token file {path} (server.token_file) is readable by others (mode {mode:04o}): run `chmod 600 {path}` (and rotate the token if others may have read it)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Empty.
    #[error("token file {0} (server.token_file) is empty: write the join token into it")]
    Empty(PathBuf),
    /// Not a regular file.
    #[error("token file {0} (server.token_file) is not a regular file")]
    NotAFile(PathBuf),
    /// I/O while checking or moving.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Checks `path` is a non-empty regular file with no group/other permission bits.
pub fn check_token_file(path: &Path) -> Result<(), TokenError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TokenError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(TokenError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(TokenError::NotAFile(path.to_owned()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() == 0 {
        return Err(TokenError::Empty(path.to_owned()));
    }
    Ok(())
}

/// Moves a dropped token from `drop` to `token_file` (mode 0600, written to a temp file then
/// renamed, so a crash leaves either the old file or the new one), then deletes `drop`.
/// Returns true when a drop was found.
pub fn take_token_drop(drop: &Path, token_file: &Path) -> Result<bool, TokenError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TokenError::Io { path, source }
    };
    let body = match std::fs::read(drop) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(TokenError::Io {
                path: drop.to_owned(),
                source,
            });
        }
    };
    let trimmed = String::from_utf8_lossy(&body).trim().to_owned();
    if trimmed.is_empty() {
        return Err(TokenError::Empty(drop.to_owned()));
    }
    // Written to a temp file with mode 0600, then renamed: a crash leaves the old file or the new.
    bootstrap::token::write_secret_file(token_file, &bootstrap::token::Secret::new(trimmed))
        .map_err(|e| match e {
            bootstrap::token::TokenError::Write { path, source } => TokenError::Io { path, source },
            other => TokenError::Io {
                path: token_file.to_owned(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
    std::fs::remove_file(drop).map_err(io(drop))?;
    Ok(true)
}

/// What an agent does first, said where its owner looks: fetch the server's `/cacerts` and
/// compare it with the CA hash in the join token (k3s' own check, before the token is sent).
/// Run in a thread so an unreachable server (a wrong VLAN, a firewall) never delays the agent,
/// which keeps trying on its own; the line tells the owner which of the three it is.
pub fn report_server_check(server_url: String, token_file: PathBuf) {
    std::thread::spawn(move || {
        let Ok(text) = std::fs::read_to_string(&token_file) else {
            return;
        };
        let Ok(token) = bootstrap::token::JoinToken::parse(text.trim(), "the join token") else {
            return;
        };
        match bootstrap::token::verify_server_ca(&server_url, &token) {
            Ok(bootstrap::token::CaCheck::Verified) => {
                tracing::info!("server {server_url} reached: its CA matches the join token")
            }
            Ok(bootstrap::token::CaCheck::NoHashInToken) => {
                tracing::info!("server {server_url}: the join token names no CA, nothing to check")
            }
            Ok(bootstrap::token::CaCheck::Unreachable(why)) => tracing::warn!(
                "server {server_url} not reachable ({why}): check the node's VLAN and the router's rules; the agent keeps trying"
            ),
            Err(e) => tracing::error!("{e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_is_moved_with_0600_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let drop = d.path().join("boot/armfleet-token");
        std::fs::create_dir_all(drop.parent().unwrap()).unwrap();
        std::fs::write(&drop, "K10abc::server:secret\n").unwrap();
        std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tf = d.path().join("etc/armfleet/token");
        assert!(take_token_drop(&drop, &tf).unwrap());
        assert!(!drop.exists());
        let m = std::fs::metadata(&tf).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        assert_eq!(
            std::fs::read_to_string(&tf).unwrap(),
            "K10abc::server:secret\n"
        );
        check_token_file(&tf).unwrap();
        assert!(!take_token_drop(&drop, &tf).unwrap());
    }

    #[test]
    fn world_readable_token_is_refused_without_showing_it() {
        let d = tempfile::tempdir().unwrap();
        let tf = d.path().join("token");
        std::fs::write(&tf, "K10secretvalue").unwrap();
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_token_file(&tf).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        assert!(!e.contains("secretvalue"));
    }
}
