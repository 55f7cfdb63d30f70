//! `imagegen BOARD [options]`: the build, its progress and its summary.

use crate::cli::{self, BuildArgs, BuildCli};
use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, out};
use clap::{CommandFactory, FromArgMatches};
use imagegen::ImageError;
use imagegen::assets::AssetSource;
use imagegen::board::Registry;
use imagegen::build::{BuildOptions, BuildSummary, K3sSource};
use std::path::{Path, PathBuf};

/// `imagegen BOARD [options]`: the board is looked up first, so an unknown name gets the list
/// of known ones rather than an option error.
pub(crate) fn build(boards: &Registry, args: Vec<String>, quiet: bool) -> Result<(), Failure> {
    let name = args.first().cloned().unwrap_or_default();
    let board = boards.get(&name).map_err(ImageError::from)?.clone();
    let matches = BuildCli::command()
        .about(format!("Image for a {} host.", board.model))
        .after_help(cli::build_examples(&name))
        .try_get_matches_from(
            std::iter::once(format!("imagegen {name}")).chain(args.into_iter().skip(1)),
        )
        .unwrap_or_else(|e| e.exit());
    let a: BuildArgs = BuildCli::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit())
        .args;

    let planned = imagegen::topology::plan_for(&board, a.host.as_deref(), a.topology.as_deref())?;
    let host = planned.plan;
    let quiet = quiet || a.quiet;
    out::set_quiet(quiet);
    let drawer = Drawer::new(Mode::detect(a.json || quiet));
    let progress = drawer.sink(None);
    let size = a
        .size
        .as_deref()
        .map(imagegen::util::parse_size)
        .transpose()?;
    // The server's image must carry the pinned k3s: say now, not after a rootfs build, when it
    // cannot be had.
    if host.node.k3s.role == bootstrap::node_config::K3sRole::Server
        && a.k3s.is_none()
        && let Some(Err(e)) = imagegen::build::fetch_pinned_k3s(&host.node, &progress)
    {
        progress.finish(false);
        return Err(Failure::usage(format!(
            "{}: {e}: the server's image must carry the pinned k3s (it runs it and serves it to the workers); check cluster.k3s.url and the network, or pass --k3s FILE",
            host.name
        )));
    }
    let rootfs = match a.rootfs {
        Some(r) => r,
        None => imagegen::topology::default_rootfs(a.node_runtime.as_deref(), &progress)?,
    };
    let mut token_note = None;
    let token = match &a.token_file {
        Some(p) => Some(read_token(p)?),
        None => {
            if let Some(e) = planned.token_error {
                return Err(Failure::usage(e));
            }
            token_note = planned.token_note;
            planned.token
        }
    };
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.img", host.name)));
    let opts = BuildOptions {
        board,
        host,
        output,
        size,
        rootfs,
        assets: match a.boot_assets {
            Some(d) => AssetSource::Dir(d),
            None => AssetSource::default_apt(),
        },
        k3s: a.k3s,
        token,
        check_ca: !a.no_ca_check,
        epoch: bootstrap::rootfs::source_date_epoch(),
        tmp_dir: None,
        server_ca: a.server_ca,
    };
    let built = imagegen::build::build(&opts, &progress);
    progress.finish(built.is_ok());
    let s = built?;
    if a.json {
        out::json(&s);
    } else if !quiet {
        out::print(&summary(&opts.host.name, &s, token_note));
    }
    Ok(())
}

/// What a build made, for a person: where the image is, how k3s and the token get on the node.
fn summary(host: &str, s: &BuildSummary, token_note: Option<String>) -> String {
    let mut out = format!(
        "image:    {}\nbmap:     {}\nhost:     {host} (root PARTUUID={}, kernel {})\n",
        s.image.display(),
        s.bmap.display(),
        s.root_partuuid,
        s.kernel_version
    );
    out.push_str(&format!(
        "k3s:      {}\n",
        match &s.k3s {
            K3sSource::Given(p) => format!("baked in from {}", p.display()),
            K3sSource::InRootfs => "baked in (from the rootfs)".into(),
            K3sSource::Downloaded(u) => format!("baked in (pinned download from {u})"),
            K3sSource::FirstBoot(u) => format!("not baked in: node-runtime fetches it on first boot from {u}"),
            K3sSource::Missing => "none: no binary and no pinned URL; node-runtime cannot start k3s until one is installed".into(),
        }
    ));
    if s.token_baked {
        out.push_str("token:    baked in (/etc/armfleet/token, mode 0600)\n");
    } else {
        out.push_str(&format!(
            "token:    none baked in: after flashing, copy the join token to the card's boot partition as `{}`;\n          node-runtime moves it into place (mode 0600) on first boot and deletes it there\n",
            s.token_drop
        ));
    }
    if let Some(n) = token_note.filter(|_| !s.token_baked) {
        out.push_str(&format!("note:     {n}\n"));
    }
    for n in &s.notes {
        out.push_str(&format!("note:     {n}\n"));
    }
    out.push_str(&format!(
        "{}: sha256 {}  size {} bytes ({} MiB, {} MiB of data)\n",
        s.image.display(),
        s.sha256,
        s.size,
        s.size >> 20,
        s.mapped_bytes >> 20
    ));
    let image = shell_word(&s.image.display().to_string());
    out.push_str(&format!(
        "next:     imagegen flash {image} /dev/sdX   (`imagegen flash {image}` lists the cards)\n"
    ));
    out
}

/// `word` as one shell word, quoted only when it has to be (next-step lines are copied as is).
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn read_token(p: &Path) -> Result<Vec<u8>, Failure> {
    let data = std::fs::read(p).map_err(|e| {
        Failure::usage(format!(
            "cannot read the token file {}: {e}: check the path given to --token-file",
            p.display()
        ))
    })?;
    let t = String::from_utf8_lossy(&data).trim().to_owned();
    if t.is_empty() || t.contains('\n') || t.contains(' ') {
        return Err(Failure::usage(format!(
            "{}: expected one line holding the k3s join token",
            p.display()
        )));
    }
    let mut v = t.into_bytes();
    v.push(b'\n');
    Ok(v)
}
