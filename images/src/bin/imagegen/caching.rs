//! `imagegen rootfs` and `imagegen cache`: the node rootfs on its own, and the cache it lives in.

use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, out};
use bootstrap::exit::ExitClass;
use std::path::Path;

/// `imagegen rootfs`: the node rootfs built or found in the cache, optionally copied out.
pub(crate) fn rootfs(
    output: Option<&Path>,
    base: Option<&Path>,
    node_runtime: Option<&Path>,
    json: bool,
    quiet: bool,
) -> Result<(), Failure> {
    let drawer = Drawer::new(Mode::detect(json || quiet));
    let progress = drawer.sink(None);
    let built = bootstrap::rootfs::default_node_rootfs(base, node_runtime, &progress);
    progress.finish(built.is_ok());
    let built = built.map_err(|e| match e {
        bootstrap::rootfs::RootfsError::NothingToBuildFrom { .. }
        | bootstrap::rootfs::RootfsError::BadBase { .. }
        | bootstrap::rootfs::RootfsError::Input { .. } => Failure::usage(e),
        e => Failure::new(ExitClass::Device, e),
    })?;
    let path = match output {
        Some(out) => {
            imagegen::util::copy_atomic(&built.tarball, out)?;
            out.to_owned()
        }
        None => built.tarball.clone(),
    };
    if json {
        #[derive(serde::Serialize)]
        struct Rootfs<'a> {
            tarball: &'a Path,
            cached: bool,
            manifest: &'a bootstrap::rootfs::Manifest,
        }
        out::json(&Rootfs {
            tarball: &path,
            cached: built.cached,
            manifest: &built.manifest,
        });
    } else if !quiet {
        out::println(&format!(
            "rootfs:   {} ({})\nsha256:   {}\nsize:     {}\ninputs:   {}; node-runtime {}\nnext:     phonectl enroll   (or `imagegen BOARD` for a Pi; both reuse it)",
            path.display(),
            if built.cached {
                "from the cache"
            } else {
                "built"
            },
            built.manifest.tarball.sha256,
            bootstrap::progress::human_bytes(built.manifest.tarball.size),
            built.manifest.inputs.base_origin,
            &built.manifest.inputs.node_runtime.sha256[..12],
        ));
    }
    Ok(())
}

/// `imagegen cache [--prune]`: what the cache holds and how big it is.
pub(crate) fn cache(prune: bool, json: bool, quiet: bool) -> Result<(), Failure> {
    let root = bootstrap::cache::cache_root().map_err(Failure::usage)?;
    if prune {
        let pruned = bootstrap::cache_inventory::prune(&root);
        if json {
            out::json(&pruned);
        } else if !quiet {
            for e in &pruned.removed {
                out::println(&format!(
                    "removed  {:>9}  {}  ({})",
                    bootstrap::progress::human_bytes(e.bytes),
                    e.path.display(),
                    e.about
                ));
            }
            for (p, why) in &pruned.skipped {
                out::println(&format!("kept               {}  ({why})", p.display()));
            }
            out::println(&format!(
                "freed {} in {}",
                bootstrap::progress::human_bytes(pruned.freed_bytes),
                root.display()
            ));
        }
        return Ok(());
    }
    let entries = bootstrap::cache_inventory::inventory(&root);
    if json {
        out::json(&entries);
        return Ok(());
    }
    if quiet {
        return Ok(());
    }
    if entries.is_empty() {
        out::println(&format!("{}: empty", root.display()));
        return Ok(());
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let freed: u64 = entries
        .iter()
        .filter(|e| !e.kept_by_prune)
        .map(|e| e.bytes)
        .sum();
    out::println(&format!(
        "{}: {} in {} entries ({} would go with --prune)",
        root.display(),
        bootstrap::progress::human_bytes(total),
        entries.len(),
        bootstrap::progress::human_bytes(freed)
    ));
    for e in &entries {
        let name = e.path.strip_prefix(&root).unwrap_or(&e.path);
        out::println(&format!(
            "{:<11} {:>9}  {}{}  {}",
            e.kind,
            bootstrap::progress::human_bytes(e.bytes),
            name.display(),
            if e.kept_by_prune { "" } else { " *" },
            e.about
        ));
    }
    Ok(())
}
