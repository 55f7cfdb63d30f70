//! Embeds every board profile in `images/boards/*.toml` into the library, so a new board is a new
//! file and no code edit: writes `$OUT_DIR/builtin_boards.rs`, a table of (file name, text)
//! sorted by file name, read by `bootstrap::board`. Cargo reruns this when a file in the directory
//! is added, removed or changed.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("../images/boards");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the board profiles in {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry of images/boards").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .map(|p| (file_name(&p), p))
        .collect();
    files.sort();
    let mut table = String::from("&[\n");
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().expect("an existing file");
        let path = path.to_str().unwrap_or_else(|| {
            panic!(
                "{}: the path must be UTF-8 for include_str!",
                path.display()
            )
        });
        table.push_str(&format!("    ({name:?}, include_str!({path:?})),\n"));
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("builtin_boards.rs"), table).expect("write builtin_boards.rs");
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: a board file name must be UTF-8", p.display()))
        .to_owned()
}
