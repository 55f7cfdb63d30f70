//! Boot assets: the Raspberry Pi firmware, Debian's arm64 kernel with its modules and device
//! trees, busybox for the initramfs, and the Wi-Fi firmware. They come from Debian packages,
//! fetched with the host's own package tools (`apt-get download`, which uses the mirror the
//! machine is configured with) into the cache and pinned by sha256 there, or from a directory
//! of `.deb` files the user gives (offline builds, or other versions).

use crate::error::{ImageError, io};
use crate::util::run;
use bootstrap::digest::FileLock;
use bootstrap::progress::{Event, Progress};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// sha256 of a cached file, its read errors named by path.
fn sha256_file(path: &Path) -> Result<String, ImageError> {
    bootstrap::digest::sha256_file(path).map_err(io(path))
}

/// The Debian packages an image is made from (binary package name, architecture).
pub const PACKAGES: &[(&str, &str)] = &[
    ("raspi-firmware", "all"),
    ("linux-image-arm64", "arm64"),
    ("busybox-static", "arm64"),
    ("firmware-brcm80211", "all"),
];

/// Where boot assets come from.
#[derive(Debug, Clone)]
pub enum AssetSource {
    /// Fetched with `apt-get download` into `cache`, pinned in `cache/pins.toml`.
    Apt {
        /// The cache directory (`boot-assets` under armfleet's cache).
        cache: PathBuf,
    },
    /// `.deb` files in a directory the user gives.
    Dir(PathBuf),
}

/// One package used, as recorded in the summary and the pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinnedPackage {
    /// Package name (the versioned kernel package for the kernel).
    pub package: String,
    /// The `.deb` file name.
    pub file: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Pins {
    #[serde(default)]
    package: BTreeMap<String, PinnedPackage>,
}

/// Boot assets unpacked and ready to copy.
#[derive(Debug, Clone)]
pub struct BootAssets {
    /// Kernel release, e.g. `6.1.0-56-arm64`.
    pub kernel_version: String,
    /// The kernel image (uncompressed arm64 `Image`).
    pub kernel_image: PathBuf,
    /// The kernel package's `broadcom/` device tree directory.
    pub dtb_dir: PathBuf,
    /// `lib/modules/<version>` of the kernel package.
    pub modules_dir: PathBuf,
    /// `System.map` (for depmod).
    pub system_map: PathBuf,
    /// `usr/lib/raspi-firmware` (start*.elf, fixup*.dat, bootcode.bin).
    pub firmware_dir: PathBuf,
    /// `lib/firmware` trees to take Wi-Fi firmware from, in priority order.
    pub lib_firmware: Vec<PathBuf>,
    /// Static arm64 busybox for the initramfs.
    pub busybox: PathBuf,
    /// The packages used.
    pub packages: Vec<PinnedPackage>,
}

/// Armfleet's cache directory: `$ARMFLEET_CACHE_DIR`, else `$XDG_CACHE_HOME/armfleet`, else
/// `~/.cache/armfleet`.
pub fn cache_root() -> PathBuf {
    // The same cache as every armfleet tool; with no HOME at all, fall back to root's.
    bootstrap::cache::cache_root().unwrap_or_else(|_| PathBuf::from("/root/.cache/armfleet"))
}

impl AssetSource {
    /// The default: the package cache under [`cache_root`].
    pub fn default_apt() -> AssetSource {
        AssetSource::Apt {
            cache: cache_root().join("boot-assets"),
        }
    }

    /// Finds (fetching when needed), verifies and unpacks the boot assets.
    pub fn resolve(&self, progress: &dyn Progress) -> Result<BootAssets, ImageError> {
        let (debs, unpack_root) = match self {
            AssetSource::Apt { cache } => {
                std::fs::create_dir_all(cache).map_err(io(cache))?;
                let lock_path = cache.join(".lock");
                let _lock = FileLock::acquire(&lock_path).map_err(io(&lock_path))?;
                (fetch_apt(cache, progress)?, cache.join("unpacked"))
            }
            AssetSource::Dir(dir) => (debs_in_dir(dir)?, cache_root().join("boot-assets/unpacked")),
        };
        std::fs::create_dir_all(&unpack_root).map_err(io(&unpack_root))?;
        let lock_path = unpack_root.join(".lock");
        let _lock = FileLock::acquire(&lock_path).map_err(io(&lock_path))?;
        let mut trees = BTreeMap::new();
        let mut packages = Vec::new();
        for (name, deb) in &debs {
            let sha = sha256_file(deb)?;
            let tree = unpack(deb, &sha, &unpack_root, progress)?;
            packages.push(PinnedPackage {
                package: package_of(deb).unwrap_or_else(|| name.clone()),
                file: deb.file_name().unwrap().to_string_lossy().into_owned(),
                sha256: sha,
            });
            trees.insert(name.clone(), tree);
        }
        let kernel_tree = &trees["linux-image-arm64"];
        let boot = kernel_tree.join("boot");
        let kernel_image = std::fs::read_dir(&boot)
            .map_err(io(&boot))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
            .ok_or_else(|| missing("vmlinuz-* in the kernel package", "linux-image-arm64"))?;
        let kernel_version = kernel_image
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_owned();
        let modules_dir = kernel_tree.join("lib/modules").join(&kernel_version);
        let dtb_dir = kernel_tree
            .join("usr/lib")
            .join(format!("linux-image-{kernel_version}"))
            .join("broadcom");
        let firmware_dir = trees["raspi-firmware"].join("usr/lib/raspi-firmware");
        for (p, what) in [
            (&modules_dir, "lib/modules in the kernel package"),
            (&dtb_dir, "broadcom device trees in the kernel package"),
        ] {
            if !p.is_dir() {
                return Err(missing(what, "linux-image-arm64"));
            }
        }
        if !firmware_dir.is_dir() {
            return Err(missing("usr/lib/raspi-firmware", "raspi-firmware"));
        }
        let busybox = trees["busybox-static"].join("bin/busybox");
        if !busybox.is_file() {
            return Err(missing("bin/busybox", "busybox-static"));
        }
        Ok(BootAssets {
            system_map: boot.join(format!("System.map-{kernel_version}")),
            kernel_version,
            kernel_image,
            dtb_dir,
            modules_dir,
            firmware_dir,
            lib_firmware: vec![
                trees["raspi-firmware"].join("lib/firmware"),
                trees["firmware-brcm80211"].join("lib/firmware"),
            ],
            busybox,
            packages,
        })
    }
}

fn missing(what: &str, package: &str) -> ImageError {
    ImageError::AssetMissing {
        what: format!("{what} (Debian package {package})"),
        help: format!(
            "enable non-free-firmware in the apt sources (scripts/setup.sh does) and run `apt-get update`, or put {package}'s .deb in the --boot-assets directory (`apt-get download {package}`)"
        ),
    }
}

/// `Package` field of a `.deb` (the versioned name for the kernel).
fn package_of(deb: &Path) -> Option<String> {
    let out = bootstrap::process::command("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Package")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `.deb`s of [`PACKAGES`] in a user directory. The kernel is the versioned
/// `linux-image-<release>-arm64` package (the `linux-image-arm64` metapackage holds no files).
fn debs_in_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ImageError::AssetMissing {
            what: format!("boot assets directory {}", dir.display()),
            help: format!("{e}: pass an existing directory of .deb files to --boot-assets"),
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".deb"))
        .collect();
    let mut out = Vec::new();
    for (name, arch) in PACKAGES {
        let mut found: Vec<&String> = entries
            .iter()
            .filter(|n| {
                if *name == "linux-image-arm64" {
                    n.starts_with("linux-image-")
                        && !n.starts_with("linux-image-arm64_")
                        && n.contains("-arm64_")
                        && n.ends_with("_arm64.deb")
                        && !n.contains("-dbg")
                } else {
                    n.starts_with(&format!("{name}_")) && n.ends_with(&format!("_{arch}.deb"))
                }
            })
            .collect();
        found.sort();
        let Some(file) = found.pop() else {
            let pattern = if *name == "linux-image-arm64" {
                "linux-image-<release>-arm64_*_arm64.deb".to_string()
            } else {
                format!("{name}_*_{arch}.deb")
            };
            return Err(ImageError::AssetMissing {
                what: format!("{pattern} (Debian package {name}) in {}", dir.display()),
                help: format!(
                    "download it there (`apt-get download {name}{}`), or drop --boot-assets to fetch through apt",
                    if *arch == "arm64" { ":arm64" } else { "" }
                ),
            });
        };
        out.push((name.to_string(), dir.join(file)));
    }
    Ok(out)
}

/// Fetches the packages with `apt-get download` unless pinned copies are in the cache.
fn fetch_apt(cache: &Path, progress: &dyn Progress) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let pins_path = cache.join("pins.toml");
    let mut pins: Pins = match std::fs::read_to_string(&pins_path) {
        Ok(t) => toml::from_str(&t).map_err(|e| ImageError::BadImage {
            path: pins_path.clone(),
            message: format!(
                "{}: delete it to fetch the boot assets again",
                e.message().trim()
            ),
        })?,
        Err(_) => Pins::default(),
    };
    let mut out = Vec::new();
    let mut changed = false;
    for (name, arch) in PACKAGES {
        if let Some(pin) = pins.package.get(*name) {
            let path = cache.join(&pin.file);
            if path.is_file() {
                let actual = sha256_file(&path)?;
                if actual != pin.sha256 {
                    return Err(ImageError::AssetPinMismatch {
                        path,
                        actual,
                        pinned: pin.sha256.clone(),
                    });
                }
                progress.event(Event::StepSkipped {
                    step: format!("fetch {name}"),
                    reason: format!("cached {} (sha256 pinned)", pin.file),
                });
                out.push((name.to_string(), path));
                continue;
            }
        }
        progress.event(Event::StepStarted {
            step: format!("fetch {name}"),
            total: None,
        });
        let spec = if *arch == "arm64" {
            format!("{name}:arm64")
        } else {
            name.to_string()
        };
        let mut file = apt_download(cache, &spec, name)?;
        if *name == "linux-image-arm64" {
            // The metapackage only depends on the versioned kernel package; fetch that one.
            let depends = run(
                bootstrap::process::command("dpkg-deb")
                    .arg("-f")
                    .arg(&file)
                    .arg("Depends"),
                "dpkg-deb",
            )?;
            let dep = depends.split(',').next().unwrap_or("").trim();
            let (dep_name, version) = match dep.split_once('(') {
                Some((n, v)) => (
                    n.trim().to_owned(),
                    v.trim_end_matches(')')
                        .trim()
                        .trim_start_matches('=')
                        .trim()
                        .to_owned(),
                ),
                None => (dep.to_owned(), String::new()),
            };
            if !dep_name.starts_with("linux-image-") {
                return Err(missing("the versioned kernel package", "linux-image-arm64"));
            }
            let spec = if version.is_empty() {
                format!("{dep_name}:arm64")
            } else {
                format!("{dep_name}:arm64={version}")
            };
            std::fs::remove_file(&file).ok();
            file = apt_download(cache, &spec, name)?;
        }
        let sha = sha256_file(&file)?;
        let pin = PinnedPackage {
            package: package_of(&file).unwrap_or_else(|| name.to_string()),
            file: file.file_name().unwrap().to_string_lossy().into_owned(),
            sha256: sha,
        };
        progress.event(Event::StepFinished {
            step: format!("fetch {name}"),
            detail: pin.file.clone(),
        });
        pins.package.insert(name.to_string(), pin);
        changed = true;
        out.push((name.to_string(), file));
    }
    if changed {
        let text = format!(
            "# Boot assets imagegen fetched with apt-get download, pinned by sha256.\n# Delete this file (or an entry) to fetch newer packages.\n{}",
            toml::to_string_pretty(&pins).expect("pins serialise")
        );
        crate::util::write_atomic(&pins_path, text.as_bytes())?;
    }
    Ok(out)
}

/// `apt-get download SPEC` into a fresh directory under `cache`, then moved into `cache`.
fn apt_download(cache: &Path, spec: &str, name: &str) -> Result<PathBuf, ImageError> {
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let out = bootstrap::process::command("apt-get")
        .args(["download", "-q", spec])
        .current_dir(tmp.path())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::ToolMissing {
                    tool: "apt-get".into(),
                    package: "apt".into(),
                }
            } else {
                ImageError::Io {
                    path: "apt-get".into(),
                    source: e,
                }
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("E:"))
            .unwrap_or(err.lines().last().unwrap_or(""))
            .to_owned();
        return Err(ImageError::AssetMissing {
            what: format!("Debian package {name} ({line})"),
            help: if name == "raspi-firmware" || name == "firmware-brcm80211" {
                "it is in the non-free-firmware component: add it to the apt sources (scripts/setup.sh does), run `apt-get update`, or pass --boot-assets DIR with the .deb files".into()
            } else {
                "run `dpkg --add-architecture arm64 && apt-get update` (scripts/setup.sh does), or pass --boot-assets DIR with the .deb files".into()
            },
        });
    }
    let file = std::fs::read_dir(tmp.path())
        .map_err(io(tmp.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| missing("the downloaded .deb", name))?;
    let dest = cache.join(file.file_name().unwrap());
    std::fs::rename(&file, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// `dpkg-deb -x` once per package hash into `root/<sha256>`.
fn unpack(
    deb: &Path,
    sha: &str,
    root: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, ImageError> {
    let tree = root.join(&sha[..32]);
    if tree.join(".complete").exists() {
        return Ok(tree);
    }
    progress.event(Event::StepStarted {
        step: format!("unpack {}", deb.file_name().unwrap().to_string_lossy()),
        total: None,
    });
    let tmp = root.join(format!(".{}.tmp", &sha[..32]));
    let _ = std::fs::remove_dir_all(&tmp);
    run(
        bootstrap::process::command("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&tmp),
        "dpkg-deb",
    )?;
    std::fs::write(tmp.join(".complete"), b"").map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::rename(&tmp, &tree).map_err(io(&tree))?;
    Ok(tree)
}
