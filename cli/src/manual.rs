//! Shell completions and man pages for a tool's clap command, the same for phonectl and imagegen.

use crate::{Failure, out};
use std::path::Path;

/// The shells completions are written for.
pub use clap_complete::Shell;

/// Prints the completion script of `cmd` for `shell` (the tool is named `name` on PATH).
pub fn print_completions(mut cmd: clap::Command, name: &str, shell: clap_complete::Shell) {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out::print(&String::from_utf8_lossy(&buf));
}

/// Without `dir`, prints `name.1`; with it, writes `name.1` and one `name-SUB.1` per subcommand
/// there (created if missing), as `man name-SUB` expects.
pub fn man_pages(cmd: clap::Command, name: &str, dir: Option<&Path>) -> Result<(), Failure> {
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| Failure::usage(format!("writing the man page: {e}")))?;
        out::print(&String::from_utf8_lossy(&buf));
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut pages: Vec<(String, clap::Command)> = cmd
        .get_subcommands()
        // An external subcommand (imagegen's BOARD) has no page of its own.
        .filter(|sub| !sub.get_name().is_empty())
        .map(|sub| (format!("{name}-{}", sub.get_name()), sub.clone()))
        .collect();
    pages.push((name.to_owned(), cmd));
    for (page, c) in pages {
        let path = dir.join(format!("{page}.1"));
        let cannot =
            |e: std::io::Error| Failure::usage(format!("cannot write {}: {e}", path.display()));
        let mut f = std::fs::File::create(&path).map_err(cannot)?;
        clap_mangen::Man::new(c)
            .title(page)
            .render(&mut f)
            .map_err(cannot)?;
    }
    Ok(())
}
