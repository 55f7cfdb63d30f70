//! What an enroll needs from the laptop's side, settled before any phone is touched: each phone's
//! `node.toml` (from the topology, or a file), the join token, and the check of the token's CA
//! hash against the server.

use crate::error::PhoneError;
use bootstrap::NodeConfig;
use bootstrap::progress::{Progress, ProgressExt};
use bootstrap::token::{CaCheck, JoinToken, SecretSource};
use bootstrap::topology::Topology;
use std::path::{Path, PathBuf};

/// Where phones' `node.toml` come from.
#[derive(Debug)]
pub enum ConfigSource {
    /// Derived from the lab's topology (the usual way).
    Topology(Box<Topology>),
    /// A node.toml file, or a directory of `SERIAL.toml` files (one per phone, for `--all`).
    Given(PathBuf),
}

fn usage(message: impl std::fmt::Display) -> PhoneError {
    PhoneError::Usage(message.to_string())
}

/// The join token of the phone named `node`: `--token-file`, `--token-env`, else the topology's
/// source for it (the phone's own `token`, else `cluster.token`).
pub fn read_token(
    file: Option<&Path>,
    env: Option<&str>,
    topology: Option<&Topology>,
    node: &str,
) -> Result<JoinToken, PhoneError> {
    let source_and_base = match (file, env, topology) {
        (Some(f), _, _) => (SecretSource::File(f.to_owned()), PathBuf::from(".")),
        (None, Some(var), _) => (SecretSource::Env(var.to_owned()), PathBuf::from(".")),
        (None, None, Some(t)) => (t.token_source(node).clone(), t.base_dir.clone()),
        (None, None, None) => {
            return Err(usage(
                "no join token: pass --token-file FILE or --token-env VAR (the server's /var/lib/rancher/k3s/server/node-token)",
            ));
        }
    };
    JoinToken::from_source(&source_and_base.0, &source_and_base.1).map_err(usage)
}

/// The node.toml for the phone `serial`: `name` picks (or names) its topology entry, else the
/// entry whose serial matches; a given file or directory is read as it is.
pub fn config_for(
    source: &ConfigSource,
    name: Option<&str>,
    serial: &str,
) -> Result<NodeConfig, PhoneError> {
    match source {
        ConfigSource::Given(path) => {
            // A directory holds one node.toml per phone, named after its serial (for --all).
            let file = if path.is_dir() {
                let f = path.join(format!("{serial}.toml"));
                if !f.is_file() {
                    return Err(usage(format!(
                        "phone {serial}: no {} in the --config directory: write one, or enroll it with -s and a file",
                        f.display()
                    )));
                }
                f
            } else {
                path.clone()
            };
            let mut c = NodeConfig::load(&file).map_err(usage)?;
            if let Some(name) = name {
                c.node.name = name.to_owned();
            }
            Ok(c)
        }
        ConfigSource::Topology(topology) => {
            if let Some(name) = name {
                return NodeConfig::for_new_phone(topology, name).map_err(usage);
            }
            match topology.phone_by_serial(serial) {
                Some(p) => NodeConfig::for_phone(topology, &p.name).map_err(usage),
                None => Err(usage(format!(
                    "phone {serial}: {} has no [[phone]] entry with serial = \"{serial}\": add one, or pass --name NAME to enroll it with the cluster's defaults",
                    topology.origin
                ))),
            }
        }
    }
}

/// Checks the token's CA hash against each server the configs name (as the k3s agent will),
/// before the token goes anywhere. A mismatch is an error; an unreachable server or a token
/// without a hash is said as a note.
pub fn check_server_cas(
    configs: &[NodeConfig],
    tokens: &[JoinToken],
    progress: &dyn Progress,
) -> Result<(), PhoneError> {
    // One check per server and CA hash (phones with their own tokens name the same CA).
    let mut checks: Vec<(&str, Option<&str>, &JoinToken)> = configs
        .iter()
        .zip(tokens)
        .map(|(c, t)| (c.server.url.as_str(), t.ca_hash(), t))
        .collect();
    checks.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    checks.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    for (url, _, token) in checks {
        match bootstrap::token::verify_server_ca(url, token).map_err(usage)? {
            CaCheck::Verified => progress.note(format!("{url}: the server's CA matches the token")),
            CaCheck::NoHashInToken => progress.note(
                "the token has no CA hash (not K10<hash>::...): the server's identity is not checked"
                    .into(),
            ),
            CaCheck::Unreachable(why) => progress.note(format!(
                "{url} is not reachable from here ({why}): the token's CA hash was not checked; the phone will check it when it joins"
            )),
        }
    }
    Ok(())
}

/// The pinned k3s binary on the laptop, fetched into the cache (the lab's mirror first, then
/// upstream) when the configs pin one, so enroll can bring it over USB instead of every phone
/// pulling ~70 MB over Wi-Fi or 4G. None — with a note saying why — when there is no pin, the
/// phones' pins differ, or it cannot be fetched: each phone then fetches it itself.
pub fn laptop_k3s(
    configs: &[NodeConfig],
    progress: &dyn Progress,
) -> Option<crate::enroll::LocalK3s> {
    let first = configs.first()?;
    let pin = first.k3s.sha256.clone()?;
    if configs
        .iter()
        .any(|c| c.k3s.sha256.as_deref() != Some(pin.as_str()))
    {
        progress.note("the phones pin different k3s binaries: each fetches its own".into());
        return None;
    }
    let urls: Vec<String> = first
        .k3s
        .mirror
        .iter()
        .chain(first.k3s.url.iter())
        .cloned()
        .collect();
    let upstream = urls.last()?;
    let fetched = bootstrap::cache::cache_subdir("downloads")
        .map_err(|e| e.to_string())
        .and_then(|dir| {
            let dest = bootstrap::cache::artifact_path(&dir, upstream, &pin);
            bootstrap::download::fetch_pinned_from(
                &urls,
                &pin,
                &dest,
                bootstrap::download::K3S_MAX_BYTES,
                progress,
            )
            .map_err(|e| e.to_string())
        });
    match fetched {
        Ok(f) => Some(crate::enroll::LocalK3s {
            path: f.path,
            sha256: f.sha256,
            size: f.size,
        }),
        Err(why) => {
            progress.note(format!(
                "k3s is not brought from this laptop ({why}): each phone fetches it itself"
            ));
            None
        }
    }
}
