//! Board profiles as data, and the one registry of them that the topology's board check and
//! imagegen both read.
//!
//! A board is one TOML file named after it (`rpi4.toml` holds `name = "rpi4"`). The built-in
//! ones are every file of `images/boards/`, embedded when this crate is built (`build.rs`), so a
//! new board needs no code edit. Users add their own the way probe-rs takes user target files:
//! from a directory, `$ARMFLEET_BOARDS_DIR`, else `$XDG_CONFIG_HOME/armfleet/boards`, else
//! `~/.config/armfleet/boards`. A user file cannot replace a built-in board: a board name means
//! the same hardware on every machine.

use crate::node_config::is_dns_label;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The variable naming the directory of user board profiles.
pub const BOARDS_DIR_ENV: &str = "ARMFLEET_BOARDS_DIR";

/// Where the built-in profiles live in the repository (named in errors and listings).
pub const BUILTIN_DIR: &str = "images/boards";

/// (file name, text) of every file in `images/boards/`, sorted by file name.
const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_boards.rs"));

/// Why a board profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No profile by that name.
    #[error(
        "unknown board {name:?}: known boards are {known} (add one as a file in {BUILTIN_DIR}/ or ${BOARDS_DIR_ENV})"
    )]
    Unknown {
        /// What was asked for.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// A profile does not parse or makes no sense.
    #[error("board profile {origin}: {message}")]
    Invalid {
        /// The file, with `:line` when the TOML parser gives one.
        origin: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The user directory or a file in it cannot be read.
    #[error(
        "cannot read the board profiles in {path}: {source}: fix its permissions, or point ${BOARDS_DIR_ENV} at another directory"
    )]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `$ARMFLEET_BOARDS_DIR` names a directory that does not exist.
    #[error(
        "the board directory {path} named by ${BOARDS_DIR_ENV} does not exist: create it, or unset ${BOARDS_DIR_ENV}"
    )]
    NoDir {
        /// The directory.
        path: PathBuf,
    },
    /// A user profile has the name of a built-in one.
    #[error(
        "board profile {file} is named {name:?} like the built-in {builtin}: a user board cannot replace a built-in one: give it another name (the file's and its name = \"...\")"
    )]
    Shadows {
        /// The board name.
        name: String,
        /// The user file.
        file: PathBuf,
        /// The built-in file.
        builtin: String,
    },
}

/// What a board needs on its card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name used on the command line and in the topology (`rpi4`); the file's name.
    pub name: String,
    /// Human model name.
    pub model: String,
    /// Firmware files from Debian's `raspi-firmware` copied to the FAT partition.
    pub firmware: Vec<String>,
    /// The device tree blob (from the kernel package) the firmware must load.
    pub dtb: String,
    /// Kernel consoles, in order; the last one receives systemd's output.
    pub consoles: Vec<String>,
    /// `config.txt` lines, in order, before the kernel/initramfs/device_tree lines imagegen adds.
    pub config_txt: Vec<String>,
    /// Kernel modules the initramfs loads (with their dependencies) before mounting the root.
    pub initramfs_modules: Vec<String>,
    /// Whether the board has wired Ethernet (`eth0`).
    pub ethernet: bool,
    /// Whether the board has Wi-Fi (`wlan0`).
    pub wifi: bool,
    /// Files under `/lib/firmware` the root filesystem needs (Wi-Fi), from `firmware-brcm80211`
    /// or `raspi-firmware`.
    #[serde(default)]
    pub rootfs_firmware: Vec<String>,
    /// Partition sizes.
    pub partitions: Partitions,
}

/// Partition sizes of a board's image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// FAT32 boot partition, MiB.
    pub boot_mib: u64,
    /// Smallest root partition, MiB (the image grows to the card on first boot).
    pub root_min_mib: u64,
}

impl Board {
    /// Parses and validates a profile; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count());
            BoardError::Invalid {
                origin: match line {
                    Some(l) => format!("{origin}:{l}"),
                    None => origin.to_owned(),
                },
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        board.validate(origin)?;
        Ok(board)
    }

    /// Checks what serde cannot.
    pub fn validate(&self, origin: &str) -> Result<(), BoardError> {
        let bad = |message: String| BoardError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if !is_dns_label(&self.name) {
            return Err(bad(format!(
                "name {:?} must be a lowercase word",
                self.name
            )));
        }
        if !self
            .firmware
            .iter()
            .any(|f| f.starts_with("start") && f.ends_with(".elf"))
        {
            return Err(bad(
                "firmware needs a start*.elf: the Pi cannot boot without one".into(),
            ));
        }
        if !self
            .firmware
            .iter()
            .any(|f| f.starts_with("fixup") && f.ends_with(".dat"))
        {
            return Err(bad(
                "firmware needs the fixup*.dat matching its start*.elf".into()
            ));
        }
        if !self.dtb.ends_with(".dtb") || self.dtb.contains('/') {
            return Err(bad(format!(
                "dtb {:?} must be a file name ending in .dtb",
                self.dtb
            )));
        }
        if self.consoles.is_empty() {
            return Err(bad("consoles is empty".into()));
        }
        if !self.config_txt.iter().any(|l| l.trim() == "arm_64bit=1") {
            return Err(bad(
                "config_txt must contain arm_64bit=1 (the kernel is arm64)".into(),
            ));
        }
        for l in &self.config_txt {
            let key = l.split(['=', ' ']).next().unwrap_or("");
            if ["kernel", "initramfs", "device_tree"].contains(&key) {
                return Err(bad(format!(
                    "config_txt sets {key}: imagegen writes that line itself"
                )));
            }
        }
        if !self.initramfs_modules.iter().any(|m| m == "ext4") {
            return Err(bad(
                "initramfs_modules must include ext4 (the root filesystem)".into(),
            ));
        }
        if !self.ethernet && !self.wifi {
            return Err(bad(
                "a board without ethernet and wifi cannot join the cluster".into(),
            ));
        }
        if self.partitions.boot_mib < 256 {
            return Err(bad(format!(
                "partitions.boot_mib = {}: use at least 256 so the boot partition is a real FAT32",
                self.partitions.boot_mib
            )));
        }
        if self.partitions.root_min_mib < 256 {
            return Err(bad("partitions.root_min_mib must be at least 256".into()));
        }
        for (key, mib) in [
            ("boot_mib", self.partitions.boot_mib),
            ("root_min_mib", self.partitions.root_min_mib),
        ] {
            if mib % 4 != 0 {
                return Err(bad(format!(
                    "partitions.{key} = {mib}: use a multiple of 4 (partitions are aligned to the 4 MiB allocation units of SD cards)"
                )));
            }
        }
        Ok(())
    }
}

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built in: the file name in `images/boards/`.
    BuiltIn(&'static str),
    /// A user file.
    User(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn(file) => write!(f, "{BUILTIN_DIR}/{file}"),
            Origin::User(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A board and the file it came from.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The validated profile.
    pub board: Board,
    /// Its file.
    pub origin: Origin,
}

/// Every known board: the built-in ones and the user's, sorted by name.
#[derive(Debug, Clone)]
pub struct Registry {
    profiles: Vec<Profile>,
}

impl Registry {
    /// The built-in boards and those of the user directory ([`user_dir`]).
    pub fn load() -> Result<Registry, BoardError> {
        Registry::with_user_dir(user_dir().as_ref())
    }

    /// The built-in boards only.
    pub fn builtin() -> Result<Registry, BoardError> {
        let profiles = BUILTIN
            .iter()
            .map(|(file, text)| {
                let origin = Origin::BuiltIn(file);
                Ok(Profile {
                    board: parse_file(text, &origin, file)?,
                    origin,
                })
            })
            .collect::<Result<Vec<_>, BoardError>>()?;
        Ok(Registry { profiles })
    }

    /// The built-in boards and every `*.toml` of `dir` (none when `dir` is `None`, or when it is
    /// the default directory and does not exist).
    pub fn with_user_dir(dir: Option<&UserDir>) -> Result<Registry, BoardError> {
        let mut registry = Registry::builtin()?;
        let Some(dir) = dir else {
            return Ok(registry);
        };
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| BoardError::Read { path, source }
        };
        let entries = match std::fs::read_dir(&dir.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.explicit {
                    return Err(BoardError::NoDir {
                        path: dir.path.clone(),
                    });
                }
                return Ok(registry);
            }
            Err(e) => return Err(read_err(&dir.path)(e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_err(&dir.path))?.path();
            if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            let origin = Origin::User(path.clone());
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            let board = parse_file(&text, &origin, &file)?;
            if let Some(builtin) = registry
                .profiles
                .iter()
                .find(|p| p.board.name == board.name)
            {
                return Err(BoardError::Shadows {
                    name: board.name,
                    file: path.clone(),
                    builtin: builtin.origin.to_string(),
                });
            }
            registry.profiles.push(Profile { board, origin });
        }
        registry
            .profiles
            .sort_by(|a, b| a.board.name.cmp(&b.board.name));
        Ok(registry)
    }

    /// The board names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.profiles
            .iter()
            .map(|p| p.board.name.as_str())
            .collect()
    }

    /// Every profile with its file, sorted by name.
    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// The board called `name`.
    pub fn get(&self, name: &str) -> Result<&Board, BoardError> {
        self.profiles
            .iter()
            .map(|p| &p.board)
            .find(|b| b.name == name)
            .ok_or_else(|| BoardError::Unknown {
                name: name.to_owned(),
                known: self.names().join(", "),
            })
    }
}

/// Checks that `name` is a known board. The user directory is read only for a name that is not
/// built in: a broken user file does not stop a topology that does not use it.
pub fn check_known(name: &str) -> Result<(), BoardError> {
    if BUILTIN
        .iter()
        .any(|(file, _)| file.strip_suffix(".toml") == Some(name))
    {
        return Ok(());
    }
    Registry::load()?.get(name).map(drop)
}

/// The directory of user board profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDir {
    /// The directory.
    pub path: PathBuf,
    /// Named by `$ARMFLEET_BOARDS_DIR`: it must then exist.
    pub explicit: bool,
}

/// `$ARMFLEET_BOARDS_DIR`, else `$XDG_CONFIG_HOME/armfleet/boards`, else
/// `~/.config/armfleet/boards`; `None` without any of these variables.
pub fn user_dir() -> Option<UserDir> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = var(BOARDS_DIR_ENV) {
        return Some(UserDir {
            path,
            explicit: true,
        });
    }
    let config = var("XDG_CONFIG_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".config")))?;
    Some(UserDir {
        path: config.join("armfleet/boards"),
        explicit: false,
    })
}

/// A profile from its file: valid, and named after the file so that `imagegen NAME` and
/// `NAME.toml` are one thing.
fn parse_file(text: &str, origin: &Origin, file: &str) -> Result<Board, BoardError> {
    let shown = origin.to_string();
    let board = Board::from_toml(text, &shown)?;
    let stem = file.strip_suffix(".toml").unwrap_or(file);
    if board.name != stem {
        return Err(BoardError::Invalid {
            origin: shown,
            message: format!(
                "name {:?} is not the file's name: set name = {stem:?} or rename the file to {}.toml",
                board.name, board.name
            ),
        });
    }
    Ok(board)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin_text(name: &str) -> &'static str {
        BUILTIN
            .iter()
            .find(|(f, _)| f.strip_suffix(".toml") == Some(name))
            .unwrap()
            .1
    }

    fn user(dir: &Path) -> UserDir {
        UserDir {
            path: dir.to_owned(),
            explicit: true,
        }
    }

    #[test]
    fn every_file_of_images_boards_is_built_in_and_valid() {
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../images/boards"))
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().into_string().unwrap();
                n.strip_suffix(".toml").map(str::to_owned)
            })
            .count();
        let r = Registry::builtin().unwrap();
        assert_eq!(r.names().len(), files);
        assert!(r.names().windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(
            r.profiles()
                .iter()
                .all(|p| matches!(p.origin, Origin::BuiltIn(_)))
        );
    }

    #[test]
    fn builtin_profiles_differ_where_the_hardware_does() {
        let r = Registry::builtin().unwrap();
        let rpi4 = r.get("rpi4").unwrap();
        let rpi3a = r.get("rpi3a").unwrap();
        assert!(rpi4.firmware.contains(&"start4.elf".to_string()));
        assert!(!rpi4.firmware.contains(&"bootcode.bin".to_string()));
        assert!(rpi3a.firmware.contains(&"bootcode.bin".to_string()));
        assert_eq!(rpi3a.dtb, "bcm2837-rpi-3-a-plus.dtb");
        assert!(!rpi3a.ethernet);
        let b_plus = r.get("rpi3b-plus").unwrap();
        assert_eq!(b_plus.dtb, "bcm2837-rpi-3-b-plus.dtb");
        assert_eq!(b_plus.firmware, rpi3a.firmware, "the same Pi 3 boot files");
        assert!(b_plus.ethernet && b_plus.wifi);
    }

    #[test]
    fn unknown_board_lists_known_ones_and_how_to_add_one() {
        let e = Registry::builtin().unwrap().get("rpi9").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("unknown board \"rpi9\": known boards are rpi3a, rpi3b-plus, rpi4 ("),
            "{e}"
        );
        assert!(e.contains("images/boards/") && e.contains("$ARMFLEET_BOARDS_DIR"));
        assert!(check_known("rpi4").is_ok());
    }

    #[test]
    fn profile_without_fixup_is_refused() {
        let text = builtin_text("rpi4").replace("\"fixup4.dat\"", "");
        let e = Board::from_toml(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("fixup"), "{e}");
    }

    #[test]
    fn a_user_file_is_a_board() {
        let dir = tempfile::tempdir().unwrap();
        let text = builtin_text("rpi4").replace("name = \"rpi4\"", "name = \"lab-pi\"");
        std::fs::write(dir.path().join("lab-pi.toml"), text).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a profile").unwrap();
        let r = Registry::with_user_dir(Some(&user(dir.path()))).unwrap();
        assert_eq!(r.names(), ["lab-pi", "rpi3a", "rpi3b-plus", "rpi4"]);
        let p = &r.profiles()[0];
        assert_eq!(p.origin, Origin::User(dir.path().join("lab-pi.toml")));
        assert_eq!(r.get("lab-pi").unwrap().dtb, "bcm2711-rpi-4-b.dtb");
    }

    #[test]
    fn a_user_file_cannot_replace_a_builtin_board() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rpi4.toml"), builtin_text("rpi4")).unwrap();
        let e = Registry::with_user_dir(Some(&user(dir.path())))
            .unwrap_err()
            .to_string();
        let file = dir.path().join("rpi4.toml");
        assert!(
            e.contains(&file.display().to_string()) && e.contains("images/boards/rpi4.toml"),
            "names both files: {e}"
        );
    }

    #[test]
    fn a_bad_user_file_is_one_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("typo.toml");
        let text = builtin_text("rpi4")
            .replace("name = \"rpi4\"", "name = \"typo\"")
            .replace("ethernet = true", "ethernett = true");
        let line = 1 + text
            .lines()
            .position(|l| l.starts_with("ethernett"))
            .unwrap();
        std::fs::write(&file, text).unwrap();
        let e = Registry::with_user_dir(Some(&user(dir.path())))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("board profile {}:{line}: ", file.display())),
            "{e}"
        );
        assert!(e.contains("ethernett") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_user_file_is_named_after_its_board() {
        let dir = tempfile::tempdir().unwrap();
        let text = builtin_text("rpi4").replace("name = \"rpi4\"", "name = \"lab-pi\"");
        std::fs::write(dir.path().join("copy.toml"), text).unwrap();
        let e = Registry::with_user_dir(Some(&user(dir.path())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("copy.toml") && e.contains("set name = \"copy\""),
            "{e}"
        );
    }

    #[test]
    fn a_missing_named_directory_is_an_error_a_missing_default_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Registry::with_user_dir(Some(&user(&missing)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("ARMFLEET_BOARDS_DIR"),
            "{e}"
        );
        let default = UserDir {
            path: missing,
            explicit: false,
        };
        assert_eq!(
            Registry::with_user_dir(Some(&default)).unwrap().names(),
            ["rpi3a", "rpi3b-plus", "rpi4"]
        );
    }
}
