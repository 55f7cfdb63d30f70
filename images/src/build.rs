//! Builds one host's SD card image: MBR, FAT32 boot partition, ext4 root, `.bmap`. The
//! decisions are [`crate::plan`]'s; this gathers the content and writes it.

use crate::assets::{AssetSource, BootAssets, PinnedPackage};
use crate::bmap::Bmap;
use crate::board::Board;
use crate::error::{ImageError, io};
use crate::ext4::Tree;
use crate::host::HostPlan;
use crate::plan::{self, BootFile, BootSource, Layout, MIB, TokenPlan};
use crate::util::run;
use bootstrap::layout::pi::{BOOT_MOUNT, TOKEN_DROP_NAME};
use bootstrap::progress::{Event, Progress, ProgressExt};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The board profile.
    pub board: Board,
    /// The host.
    pub host: HostPlan,
    /// The image file to write (`NAME.img`); the bmap goes next to it as `NAME.img.bmap`.
    pub output: PathBuf,
    /// Image size in bytes; `None` for just enough (the card grows it on first boot).
    pub size: Option<u64>,
    /// The node rootfs `.tar.gz`.
    pub rootfs: PathBuf,
    /// Where boot assets come from.
    pub assets: AssetSource,
    /// A k3s binary to bake in.
    pub k3s: Option<PathBuf>,
    /// The join token, when given at build time.
    pub token: Option<Vec<u8>>,
    /// Check a secure (K10<hash>) token against the server's CA before building.
    pub check_ca: bool,
    /// Timestamp for every file imagegen writes.
    pub epoch: u64,
    /// Scratch directory for the depmod run (defaults to the system temp dir).
    pub tmp_dir: Option<PathBuf>,
    /// The k3s server's CA directory (k3s' custom CA layout), for the server's image.
    pub server_ca: Option<PathBuf>,
}

/// How the k3s binary gets onto the node.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum K3sSource {
    /// `--k3s PATH` baked in.
    Given(PathBuf),
    /// Already in the rootfs.
    InRootfs,
    /// Downloaded at build time from the pinned URL and baked in.
    Downloaded(String),
    /// node-runtime fetches it on first boot from this URL.
    FirstBoot(String),
    /// Nowhere: the node cannot start k3s until one is installed.
    Missing,
}

/// What was built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildSummary {
    /// The image.
    pub image: PathBuf,
    /// Its bmap.
    pub bmap: PathBuf,
    /// sha256 of the whole image.
    pub sha256: String,
    /// Image size, bytes.
    pub size: u64,
    /// Bytes holding data (what a flash writes).
    pub mapped_bytes: u64,
    /// MBR disk signature, hex.
    pub disk_signature: String,
    /// PARTUUID of the root partition.
    pub root_partuuid: String,
    /// Kernel release.
    pub kernel_version: String,
    /// Debian packages the boot assets came from.
    pub packages: Vec<PinnedPackage>,
    /// Whether a token was baked in.
    pub token_baked: bool,
    /// The path on the boot partition where a token may be dropped.
    pub token_drop: String,
    /// Where k3s comes from.
    pub k3s: K3sSource,
    /// Things the user should know.
    pub notes: Vec<String>,
}

/// Removes its path on drop unless disarmed: an error leaves nothing half-written behind.
struct TempOutput(Option<PathBuf>);
impl Drop for TempOutput {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Free bytes on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs with a valid C string and a zeroed out-struct we own.
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0)
        .then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// Builds the image described by `opts`: checks what can be checked first, gathers what goes in
/// (boot assets, the root tree, the initramfs, the boot files), lays it out ([`plan::layout`]),
/// then writes it.
pub fn build(opts: &BuildOptions, progress: &dyn Progress) -> Result<BuildSummary, ImageError> {
    let board = &opts.board;
    let host = &opts.host;
    let out_dir = preflight(opts)?;
    crate::ext4::check_mke2fs()?;
    let mut notes = Vec::new();
    let is_server = host.node.k3s.role == bootstrap::node_config::K3sRole::Server;
    if is_server && opts.k3s.is_none() && host.node.k3s.sha256.is_none() {
        return Err(ImageError::HostConfig {
            host: host.name.clone(),
            message: "the server's image carries the pinned k3s (it is also the workers' mirror): set cluster.k3s.sha256 and url in the topology, or pass --k3s FILE".into(),
        });
    }
    // The server's own CA cannot be asked of a server that does not run yet.
    if let Some(token) = opts
        .token
        .as_deref()
        .filter(|_| opts.check_ca && !is_server)
    {
        progress.step("join token CA check", None);
        let note = check_token_ca(&host.node.server.url, token)?;
        progress.done("join token CA check", note.clone());
        notes.push(note);
    }

    progress.step("boot assets", None);
    let assets = opts.assets.resolve(progress)?;
    progress.done("boot assets", format!("kernel {}", assets.kernel_version));

    let sig = plan::disk_signature(&host.name);
    progress.step("root filesystem tree", None);
    let (tree, k3s, host_notes) = root_tree(opts, &assets, sig, progress)?;
    notes.extend(host_notes);
    progress.done("root filesystem tree", format!("{} inodes", tree.inodes()));

    progress.step("initramfs", None);
    let initrd = crate::initramfs::build(
        &assets.busybox,
        &assets.modules_dir,
        &board.initramfs_modules,
    )?;
    progress.done("initramfs", format!("{} KiB", initrd.len() / 1024));

    let country = host.wifi.as_ref().map(|w| w.country.as_str());
    let boot_files = read_boot_files(
        plan::boot_files(board, &assets, &host.name, sig, country),
        &initrd,
    )?;
    let measured = plan::Measured {
        boot_bytes: boot_files.iter().map(|(_, d)| d.len() as u64).sum(),
        root_bytes: plan::root_bytes(tree.data_bytes(), tree.inodes()),
        data_bytes: tree.data_bytes(),
    };
    let layout = plan::layout(board, &host.name, opts.size, &measured)?;
    if let Some(free) = free_bytes(&out_dir)
        && free < layout.data_estimate
    {
        return Err(ImageError::NoSpace {
            dir: out_dir,
            needed_mib: layout.data_estimate.div_ceil(MIB),
            free_mib: free / MIB,
        });
    }
    let written = write_image(opts, &out_dir, &layout, tree, &boot_files, progress)?;
    Ok(BuildSummary {
        image: opts.output.clone(),
        bmap: written.bmap_path,
        sha256: written.sha256,
        size: layout.size,
        mapped_bytes: written.bmap.mapped_bytes(),
        disk_signature: format!("{sig:08x}"),
        root_partuuid: plan::root_partuuid(sig),
        kernel_version: assets.kernel_version.clone(),
        packages: assets.packages.clone(),
        token_baked: plan::token_plan(opts.token.as_deref()) == TokenPlan::Baked,
        token_drop: TOKEN_DROP_NAME.into(),
        k3s,
        notes,
    })
}

/// What can be refused before any work: a host that is not this board's or not valid, a missing
/// rootfs or output directory, a size too small for anything. Returns the output directory.
fn preflight(opts: &BuildOptions) -> Result<PathBuf, ImageError> {
    let (board, host) = (&opts.board, &opts.host);
    host.validate()?;
    if host.board != board.name {
        return Err(ImageError::WrongBoard {
            host: host.name.clone(),
            asked: board.name.clone(),
            actual: host.board.clone(),
        });
    }
    if !opts.rootfs.is_file() {
        return Err(ImageError::Rootfs {
            path: opts.rootfs.clone(),
            message: "not found: build the node rootfs first, or pass --rootfs FILE.tar.gz".into(),
        });
    }
    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(ImageError::Io {
            path: out_dir,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "output directory does not exist",
            ),
        });
    }
    plan::check_size(board, opts.size)?;
    Ok(out_dir)
}

/// The root filesystem: the rootfs tarball, k3s, the kernel modules with their index, the
/// board's firmware and the host's files. Returns it, where k3s came from, and notes.
fn root_tree(
    opts: &BuildOptions,
    assets: &BootAssets,
    sig: u32,
    progress: &dyn Progress,
) -> Result<(Tree, K3sSource, Vec<String>), ImageError> {
    let tmp_parent = opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    // Two cores' worth: depmod indexes the kernel modules while the rootfs is decompressed.
    let (tree, depmod) = std::thread::scope(|s| {
        let depmod = s.spawn(|| depmod_files(assets, &tmp_parent));
        let tree = Tree::from_tarball(&opts.rootfs, opts.epoch);
        (tree, depmod.join().expect("depmod thread"))
    });
    let mut tree = tree?;
    let depmod = depmod?;
    let host = HostPlan {
        node: plan::node_config(&opts.host.node),
        ..opts.host.clone()
    };
    let mut host = host;
    let (k3s, k3s_data) = bake_k3s(opts, &mut tree, &host.node, progress)?;
    let mut router_notes = Vec::new();
    if let Some(router) = host.router.as_mut() {
        let Some(data) = k3s_data else {
            let why = match &k3s {
                K3sSource::FirstBoot(url) => format!(
                    "the pinned k3s could not be downloaded from {url} (the note above says why)"
                ),
                K3sSource::InRootfs => {
                    "the rootfs already carries a k3s, which is not the pinned download".into()
                }
                _ => "no k3s is pinned".into(),
            };
            return Err(ImageError::HostConfig {
                host: host.name.clone(),
                message: format!(
                    "{why}: the server's image must carry the pinned k3s (it runs it and serves it to the workers); check cluster.k3s.url and the network, or pass --k3s FILE"
                ),
            });
        };
        let bin = host.node.k3s.bin.to_string_lossy().into_owned();
        router.place_k3s(&mut tree, &bin, &data)?;
        if let Some(pin) = router.airgap.clone() {
            router_notes.extend(mirror_airgap(
                router,
                &mut tree,
                &pin,
                &host.node.k3s.data_dir,
                progress,
            )?);
        }
        let token_hash = opts
            .token
            .as_deref()
            .and_then(|t| {
                bootstrap::token::JoinToken::parse(&String::from_utf8_lossy(t), "the join token")
                    .ok()
            })
            .and_then(|t| t.ca_hash().map(str::to_owned));
        let server_ca = match (&opts.server_ca, &token_hash) {
            (Some(dir), _) => {
                let hash = router.place_ca(&mut tree, dir, token_hash.as_deref())?;
                router_notes.push(format!(
                    "cluster CA sha256 {hash}: the agents' tokens begin K10{hash}::"
                ));
                Some(hash)
            }
            (None, Some(hash)) => {
                return Err(ImageError::HostConfig {
                    host: host.name.clone(),
                    message: format!(
                        "the join token names the cluster CA (sha256 {hash}), so the server must start with that CA: pass --server-ca DIR (the directory k3s' generate-custom-ca-certs.sh wrote), or use a bare passphrase token for a new cluster"
                    ),
                });
            }
            (None, None) => {
                router_notes.push(
                    "no --server-ca: k3s makes its CA at first start; take the agents' K10 token from /var/lib/rancher/k3s/server/token then".to_string(),
                );
                None
            }
        };
        let origin = router.summary.topology.clone();
        router.place_node_tokens(
            &mut tree,
            &host.node.k3s.data_dir,
            server_ca.as_deref(),
            &origin,
        )?;
        router_notes.extend(router.node_token_notes.iter().cloned());
        if !router.node_tokens.is_empty() {
            router_notes.push(format!(
                "nodes' own tokens registered at the server's start: {}",
                router
                    .node_tokens
                    .iter()
                    .map(|t| format!("{} ({})", t.node, t.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        router.write_summary(&mut tree)?;
    }
    add_kernel_bits(&mut tree, &opts.board, assets, depmod)?;
    tree.add_dir(BOOT_MOUNT.trim_start_matches('/'), 0o755)?;
    let mut notes = host.apply(&mut tree, opts.token.as_deref(), &plan::fstab(sig))?;
    notes.extend(router_notes);
    Ok((tree, k3s, notes))
}

/// What [`write_image`] wrote besides the image.
struct Written {
    bmap: Bmap,
    bmap_path: PathBuf,
    sha256: String,
}

/// Writes `layout` to `opts.output`: the partition table, the FAT and the ext4 (at the same
/// time: disjoint byte ranges), then the bmap and the sha256. Both files are written under
/// temporary names and renamed at the end, so an error leaves nothing under the final names.
fn write_image(
    opts: &BuildOptions,
    out_dir: &Path,
    layout: &Layout,
    tree: Tree,
    boot_files: &[(String, Vec<u8>)],
    progress: &dyn Progress,
) -> Result<Written, ImageError> {
    let sig = layout.disk_signature;
    let (boot, root) = (layout.boot, layout.root);
    let file_name = opts
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.img".into());
    let tmp_img = out_dir.join(format!(".{file_name}.partial"));
    let tmp_bmap = out_dir.join(format!(".{file_name}.bmap.partial"));
    let mut guard_img = TempOutput(Some(tmp_img.clone()));
    let mut guard_bmap = TempOutput(Some(tmp_bmap.clone()));
    let no_space = |e: ImageError| match e {
        ImageError::NoSpace { .. } => ImageError::NoSpace {
            dir: out_dir.to_owned(),
            needed_mib: layout.data_estimate.div_ceil(MIB),
            free_mib: free_bytes(out_dir).unwrap_or(0) / MIB,
        },
        ImageError::Tool { ref message, .. } if message.contains("No space left") => {
            ImageError::NoSpace {
                dir: out_dir.to_owned(),
                needed_mib: layout.data_estimate.div_ceil(MIB),
                free_mib: free_bytes(out_dir).unwrap_or(0) / MIB,
            }
        }
        ImageError::SizeTooSmall { .. } => ImageError::SizeTooSmall {
            asked_mib: layout.size / MIB,
            needed_mib: (layout.size + root.len / 4).div_ceil(MIB),
        },
        e => e,
    };

    progress.step("partition table", None);
    let _ = std::fs::remove_file(&tmp_img);
    // 0600 whatever the umask: the image carries the join token, node.toml and the Wi-Fi key.
    let mut img = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_img)
        .map_err(io(&tmp_img))?;
    img.set_len(layout.size)
        .map_err(io(&tmp_img))
        .map_err(no_space)?;
    write_mbr(&mut img, &tmp_img, layout)?;
    progress.done("partition table", format!("MBR, disk signature {sig:08x}"));

    progress.step("boot (FAT32) and root (ext4) partitions", None);
    let (fat, ext4) = std::thread::scope(|s| {
        let fat = s.spawn(|| {
            crate::fat::write_boot_partition(
                &mut img, &tmp_img, boot.start, boot.len, sig, boot_files,
            )
        });
        let ext4 = tree.make_ext4(
            &tmp_img,
            root.start,
            root.len,
            &plan::root_uuid(&opts.host.name),
            "ROOT",
        );
        (fat.join().expect("FAT writer"), ext4)
    });
    fat.map_err(no_space)?;
    ext4.map_err(no_space)?;
    progress.done(
        "boot (FAT32) and root (ext4) partitions",
        format!(
            "{} boot files, {} MiB root",
            boot_files.len(),
            root.len / MIB
        ),
    );
    drop(tree);

    progress.step("bmap and checksum", None);
    // The image reaches the disk while it is hashed: nothing half-written gets the final name.
    let (synced, hashed) = std::thread::scope(|s| {
        let sync = s.spawn(|| img.sync_all());
        let hashed = Bmap::from_image_with_sha256(&tmp_img);
        (sync.join().expect("sync thread"), hashed)
    });
    synced.map_err(io(&tmp_img)).map_err(no_space)?;
    let (bmap, sha256) = hashed?;
    // The bmap holds only block ranges and checksums: readable by all, like any image index.
    std::fs::write(&tmp_bmap, bmap.to_xml())
        .and_then(|()| {
            std::fs::set_permissions(
                &tmp_bmap,
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
        })
        .map_err(io(&tmp_bmap))
        .map_err(no_space)?;
    progress.done(
        "bmap and checksum",
        format!("{} MiB mapped", bmap.mapped_bytes() / MIB),
    );

    let bmap_path = PathBuf::from(format!("{}.bmap", opts.output.display()));
    std::fs::rename(&tmp_img, &opts.output).map_err(io(&opts.output))?;
    guard_img.0 = None;
    std::fs::rename(&tmp_bmap, &bmap_path).map_err(io(&bmap_path))?;
    guard_bmap.0 = None;
    Ok(Written {
        bmap,
        bmap_path,
        sha256,
    })
}

/// Checks a secure join token (K10<CA hash>::…) against the CA the server serves, as the k3s
/// agent does before it sends the token: a mismatch is an error (nothing is built); an
/// unreachable server or a token without a hash is a note.
fn check_token_ca(server: &str, token: &[u8]) -> Result<String, ImageError> {
    use bootstrap::token::{CaCheck, JoinToken, verify_server_ca};
    let text = String::from_utf8_lossy(token);
    let t = JoinToken::parse(text.trim(), "the join token")?;
    Ok(match verify_server_ca(server, &t)? {
        CaCheck::Verified => format!("join token: the CA served by {server} matches its hash"),
        CaCheck::NoHashInToken => {
            "join token: it carries no CA hash (not a K10 token): nothing to check against the server".into()
        }
        CaCheck::Unreachable(why) => format!(
            "join token: its CA hash was not checked, {server} is unreachable ({why}); the node checks it when it joins"
        ),
    })
}

fn write_mbr(img: &mut File, path: &Path, layout: &Layout) -> Result<(), ImageError> {
    let bad = |m: String| ImageError::Tool {
        tool: "mbrman".into(),
        message: m,
    };
    let mut mbr = mbrman::MBR::new_from(img, 512, layout.disk_signature.to_le_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let part = |sys: u8, start: u64, len: u64, boot: bool| mbrman::MBRPartitionEntry {
        boot: if boot {
            mbrman::BOOT_ACTIVE
        } else {
            mbrman::BOOT_INACTIVE
        },
        first_chs: mbrman::CHS::empty(),
        sys,
        last_chs: mbrman::CHS::empty(),
        starting_lba: (start / 512) as u32,
        sectors: (len / 512) as u32,
    };
    mbr[1] = part(0x0c, layout.boot.start, layout.boot.len, true);
    mbr[2] = part(0x83, layout.root.start, layout.root.len, false);
    mbr.write_into(img).map_err(|e| bad(e.to_string()))?;
    img.flush().map_err(io(path))?;
    Ok(())
}

/// The bytes of the boot partition's files, in order.
fn read_boot_files(
    files: Vec<BootFile>,
    initrd: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    files
        .into_iter()
        .map(|f| {
            let data = match f.source {
                BootSource::Asset { path, package } => {
                    std::fs::read(&path).map_err(|_| ImageError::AssetMissing {
                        what: format!("{} (Debian package {package})", path.display()),
                        help: "the package has a different layout than expected: pass --boot-assets with another version".into(),
                    })?
                }
                BootSource::Initramfs => initrd.to_vec(),
                BootSource::Text(text) => text.into_bytes(),
            };
            Ok((f.name, data))
        })
        .collect()
}

/// The `modules.*` index files depmod makes for the boot assets' kernel modules, made in a
/// scratch tree under `tmp_parent` (hard links, else symlinks, to the cached modules).
fn depmod_files(
    assets: &BootAssets,
    tmp_parent: &Path,
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let dir = tempfile::Builder::new()
        .prefix(".imagegen-depmod-")
        .tempdir_in(tmp_parent)
        .map_err(io(tmp_parent))?;
    let mods = dir.path().join("lib/modules").join(&assets.kernel_version);
    link_tree(&assets.modules_dir, &mods)?;
    let mut cmd = bootstrap::process::command("depmod");
    cmd.arg("-b").arg(dir.path());
    if assets.system_map.is_file() {
        cmd.arg("-F").arg(&assets.system_map);
    }
    cmd.arg(&assets.kernel_version);
    run(&mut cmd, "depmod")?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&mods).map_err(io(&mods))? {
        let p = entry.map_err(io(&mods))?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("modules.") && p.is_file() {
            out.push((name, std::fs::read(&p).map_err(io(&p))?));
        }
    }
    out.sort();
    Ok(out)
}

/// Mirrors the directory tree `src` at `dest` with hard links (symlinks across filesystems).
fn link_tree(src: &Path, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let (from, to) = (e.path(), dest.join(e.file_name()));
        let ft = e.file_type().map_err(io(&from))?;
        if ft.is_dir() {
            link_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&from).map_err(io(&from))?;
            std::os::unix::fs::symlink(t, &to).map_err(io(&to))?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::os::unix::fs::symlink(&from, &to).map_err(io(&to))?;
        }
    }
    Ok(())
}

/// Kernel modules (with the depmod index) and the board's firmware files into the root tree.
fn add_kernel_bits(
    tree: &mut Tree,
    board: &Board,
    assets: &BootAssets,
    depmod: Vec<(String, Vec<u8>)>,
) -> Result<(), ImageError> {
    let modules = format!("lib/modules/{}", assets.kernel_version);
    tree.copy_dir(&assets.modules_dir, &modules)?;
    for (name, data) in depmod {
        tree.add_file(&format!("{modules}/{name}"), 0o644, &data)?;
    }
    for f in &board.rootfs_firmware {
        let found = assets
            .lib_firmware
            .iter()
            .map(|d| d.join(f))
            .find(|p| std::fs::symlink_metadata(p).is_ok());
        let Some(p) = found else {
            return Err(ImageError::AssetMissing {
                what: format!("firmware file {f} (Debian packages raspi-firmware / firmware-brcm80211)"),
                help: "the board profile's rootfs_firmware names a file these packages lack: fix the profile or use other package versions".into(),
            });
        };
        let to = format!("lib/firmware/{f}");
        let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(io(&p))?;
            tree.add_symlink(&to, &t.to_string_lossy())?;
        } else {
            let data = std::fs::read(&p).map_err(io(&p))?;
            tree.add_file(&to, 0o644, &data)?;
        }
    }
    Ok(())
}

/// The pinned airgap images archive into the router's mirror, from the download cache or its
/// URL. One that cannot be fetched leaves a note, not a failed build: the workers then pull
/// their images from the registries as without it.
fn mirror_airgap(
    router: &mut crate::router::RouterPlan,
    tree: &mut Tree,
    pin: &bootstrap::topology::Pinned,
    data_dir: &Path,
    progress: &dyn Progress,
) -> Result<Option<String>, ImageError> {
    let name = bootstrap::topology::airgap_file_name(&pin.url);
    let dest = crate::assets::cache_root().join("airgap").join(&pin.sha256);
    let _ = std::fs::create_dir_all(dest.parent().unwrap());
    match bootstrap::download::fetch_pinned_capped(
        &pin.url,
        &pin.sha256,
        &dest,
        bootstrap::download::AIRGAP_MAX_BYTES,
        progress,
    ) {
        Ok(_) => {
            let in_mirror = router.place_verified_file(tree, &name, &dest, &pin.sha256)?;
            // The server's own k3s imports it from its images dir at start, as the agents do.
            let images = data_dir.join("agent/images").join(&name);
            tree.add_symlink(images.to_string_lossy().trim_start_matches('/'), &in_mirror)?;
            Ok(None)
        }
        Err(e) => Ok(Some(format!(
            "the airgap images archive is not in the mirror ({e}); the workers pull images from the registries"
        ))),
    }
}

/// The pinned k3s in the download cache (fetched from `k3s.url` when missing): its path, or why
/// it cannot be had; `None` when nothing is pinned.
pub fn fetch_pinned_k3s(
    node: &bootstrap::NodeConfig,
    progress: &dyn Progress,
) -> Option<Result<PathBuf, bootstrap::download::DownloadError>> {
    let (url, sha) = (node.k3s.url.as_ref()?, node.k3s.sha256.as_ref()?);
    let dest = crate::assets::cache_root().join("k3s").join(sha);
    let _ = std::fs::create_dir_all(dest.parent()?);
    Some(
        bootstrap::download::fetch_pinned_capped(
            url,
            sha,
            &dest,
            bootstrap::download::K3S_MAX_BYTES,
            progress,
        )
        .map(|_| dest),
    )
}

fn bake_k3s(
    opts: &BuildOptions,
    tree: &mut Tree,
    node: &bootstrap::NodeConfig,
    progress: &dyn Progress,
) -> Result<(K3sSource, Option<Vec<u8>>), ImageError> {
    let bin = node
        .k3s
        .bin
        .to_string_lossy()
        .trim_start_matches('/')
        .to_owned();
    if let Some(p) = &opts.k3s {
        let data = std::fs::read(p).map_err(|e| ImageError::Rootfs {
            path: p.clone(),
            message: format!("cannot read the k3s binary given with --k3s: {e}"),
        })?;
        if data.get(..4) != Some(b"\x7fELF") || data.get(18) != Some(&0xb7) {
            return Err(ImageError::Rootfs {
                path: p.clone(),
                message: "is not an arm64 (aarch64) ELF binary: pass the k3s-arm64 release file"
                    .into(),
            });
        }
        tree.add_file(&bin, 0o755, &data)?;
        if let Some(pin) = &node.k3s.sha256 {
            let actual = bootstrap::digest::sha256_hex(&data);
            if &actual != pin {
                progress.event(Event::Note(format!(
                    "the k3s binary given ({}) has sha256 {actual}, but the topology pins {pin}: node-runtime replaces it with the pinned one on first boot",
                    p.display()
                )));
            }
        }
        return Ok((K3sSource::Given(p.clone()), Some(data)));
    }
    if tree.exists(&bin) {
        return Ok((K3sSource::InRootfs, None));
    }
    if let Some(url) = &node.k3s.url {
        match fetch_pinned_k3s(node, progress) {
            Some(Ok(dest)) => {
                let data = std::fs::read(&dest).map_err(io(&dest))?;
                tree.add_file(&bin, 0o755, &data)?;
                return Ok((K3sSource::Downloaded(url.clone()), Some(data)));
            }
            Some(Err(e)) => {
                progress.event(Event::Note(format!(
                    "k3s not baked in ({e}); node-runtime fetches it on first boot"
                )));
                return Ok((K3sSource::FirstBoot(url.clone()), None));
            }
            None => {}
        }
    }
    Ok((K3sSource::Missing, None))
}
