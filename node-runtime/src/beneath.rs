//! Writing a tree strictly beneath one directory: every entry of a rootfs archive is created
//! through descriptors (`openat`, `mkdirat`, `mknodat`, `symlinkat`, `linkat` relative to the
//! directory that holds it), and every directory on the way is opened with `O_NOFOLLOW`. An
//! archive that first makes `esc -> /outside` and then writes `esc/victim` is refused at
//! `esc`: no path the archive names can reach past the tree, whatever symlinks it made before.
//!
//! Symlinks the archive carries are created as they are (their targets are data, and a chroot
//! resolves them against its own root); they are never followed while writing.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Why an entry cannot be placed beneath the tree without reaching outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `..` component.
    ParentComponent,
    /// A directory on the way is a symlink (or not a directory) that an earlier entry made.
    ThroughSymlink {
        /// The offending prefix of the path.
        at: String,
    },
    /// A hard link whose target is outside the tree or not in it yet.
    LinkTarget {
        /// The link's target as the archive names it.
        target: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ParentComponent => write!(f, "has a `..` component"),
            Refusal::ThroughSymlink { at } => write!(
                f,
                "goes through {at}, which an earlier entry made a symlink or a file"
            ),
            Refusal::LinkTarget { target } => write!(
                f,
                "is a hard link to {target}, which is not a file the archive put in the tree before"
            ),
        }
    }
}

/// An entry failed: refused as unsafe, or the system call failed.
#[derive(Debug)]
pub enum PlaceError {
    /// The entry would reach outside the tree.
    Refused(Refusal),
    /// The entry is safe but could not be written.
    Io(io::Error),
}

impl From<io::Error> for PlaceError {
    fn from(e: io::Error) -> Self {
        PlaceError::Io(e)
    }
}

impl From<Errno> for PlaceError {
    fn from(e: Errno) -> Self {
        PlaceError::Io(e.into())
    }
}

/// What to create, with the metadata to give it.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// A directory.
    Dir,
    /// A regular file; its bytes come from the reader given to [`Tree::place`].
    File,
    /// A symbolic link to this target.
    Symlink(&'a Path),
    /// A hard link to this path inside the tree.
    HardLink(&'a Path),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO (it has no device numbers: archives may leave those fields empty).
    Fifo,
}

/// Owner, mode, time and extended attributes of an entry.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes (name, value).
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A directory that entries are written beneath.
pub struct Tree {
    root: OwnedFd,
    /// Directories and their mtimes, applied at the end: writing into a directory changes it.
    dir_times: Vec<(Vec<OsString>, i64)>,
}

/// The normal components of an archive path (`./`, a leading `/` dropped); `..` refused.
pub fn components(path: &Path) -> Result<Vec<OsString>, Refusal> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(Refusal::ParentComponent),
        }
    }
    Ok(out)
}

fn display(parts: &[OsString]) -> String {
    let joined: Vec<String> = parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    joined.join("/")
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Tree {
    /// Opens `dir` (which must exist and not be a symlink) as the root of the tree.
    pub fn open(dir: &Path) -> io::Result<Tree> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )?;
        Ok(Tree {
            root,
            dir_times: Vec::new(),
        })
    }

    /// Opens the directory `parts` beneath the root without following any symlink; missing
    /// directories are made (0755, root's) when `create`.
    fn open_dir(&self, parts: &[OsString], create: bool) -> Result<OwnedFd, PlaceError> {
        let mut cur = self.root.try_clone()?;
        for (i, part) in parts.iter().enumerate() {
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
            let next = match openat(&cur, part.as_os_str(), flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&cur, part.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    openat(&cur, part.as_os_str(), flags, Mode::empty())
                }
                other => other,
            };
            cur = match next {
                Ok(fd) => fd,
                // O_NOFOLLOW on a symlink: ELOOP; a file in the way: ENOTDIR.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(PlaceError::Refused(Refusal::ThroughSymlink {
                        at: display(&parts[..=i]),
                    }));
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(cur)
    }

    /// Creates the entry at `path` (an archive path) with `meta`; `data` is read for files.
    pub fn place(
        &mut self,
        path: &Path,
        kind: Kind<'_>,
        meta: &Meta,
        data: &mut dyn Read,
    ) -> Result<(), PlaceError> {
        let parts = components(path).map_err(PlaceError::Refused)?;
        let Some((name, parents)) = parts.split_last() else {
            // The archive's `./`: the root itself.
            if let Kind::Dir = kind {
                self.apply_dir_meta(self.root.as_fd(), meta)?;
                self.dir_times.push((Vec::new(), meta.mtime));
            }
            return Ok(());
        };
        let dir = self.open_dir(parents, true)?;
        let name = name.as_os_str();
        match kind {
            Kind::Dir => {
                match mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        if !is_dir_at(&dir, name)? {
                            remove_at(&dir, name)?;
                            mkdirat(&dir, name, Mode::from_bits_truncate(0o700))?;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                let fd = openat(
                    &dir,
                    name,
                    OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => PlaceError::Refused(Refusal::ThroughSymlink {
                        at: display(&parts),
                    }),
                    e => e.into(),
                })?;
                self.apply_dir_meta(fd.as_fd(), meta)?;
                self.dir_times.push((parts.clone(), meta.mtime));
            }
            Kind::File => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = match openat(&dir, name, flags, Mode::from_bits_truncate(0o600)) {
                    Err(Errno::EEXIST) => {
                        remove_at(&dir, name)?;
                        openat(&dir, name, flags, Mode::from_bits_truncate(0o600))?
                    }
                    other => other?,
                };
                let mut file = std::fs::File::from(fd);
                io::copy(data, &mut file)?;
                // Owner first: chown clears setuid/setgid bits, so the mode comes after.
                nix::unistd::fchown(
                    &file,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                )?;
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(meta.mode & 0o7777))?;
                for (k, v) in &meta.xattrs {
                    fsetxattr(file.as_fd(), k, v)?;
                }
                let t = timespec(meta.mtime);
                nix::sys::stat::futimens(&file, &t, &t)?;
            }
            Kind::Symlink(target) => {
                replace_with(&dir, name, |d| symlinkat(target, d, name))?;
                self.apply_link_meta(&dir, name, meta)?;
            }
            Kind::HardLink(target) => {
                let tparts = components(target).map_err(|_| {
                    PlaceError::Refused(Refusal::LinkTarget {
                        target: target.display().to_string(),
                    })
                })?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(PlaceError::Refused(Refusal::LinkTarget {
                        target: target.display().to_string(),
                    }));
                };
                let refused = || {
                    PlaceError::Refused(Refusal::LinkTarget {
                        target: target.display().to_string(),
                    })
                };
                let tdir = self.open_dir(tparents, false).map_err(|e| match e {
                    PlaceError::Io(_) => refused(),
                    r => r,
                })?;
                // Only files (and the archive's own symlinks and nodes) can be linked; linkat
                // without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
                if is_dir_at(&tdir, tname).map_err(|_| refused())? {
                    return Err(refused());
                }
                replace_with(&dir, name, |d| {
                    linkat(&tdir, tname.as_os_str(), d, name, AtFlags::empty())
                })?;
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                let sflag = if matches!(kind, Kind::CharDevice { .. }) {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
                replace_with(&dir, name, |d| {
                    mknodat(d, name, sflag, Mode::from_bits_truncate(0o600), dev)
                })?;
                self.apply_node_meta(&dir, name, meta)?;
            }
            Kind::Fifo => {
                replace_with(&dir, name, |d| {
                    mknodat(d, name, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                })?;
                self.apply_node_meta(&dir, name, meta)?;
            }
        }
        Ok(())
    }

    fn apply_dir_meta(&self, fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), PlaceError> {
        nix::unistd::fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))?;
        for (k, v) in &meta.xattrs {
            fsetxattr(fd, k, v)?;
        }
        Ok(())
    }

    /// Owner, time and xattrs of a symlink, without following it.
    fn apply_link_meta(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<(), PlaceError> {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        for (k, v) in &meta.xattrs {
            lsetxattr_at(dir, name, k, v)?;
        }
        let t = timespec(meta.mtime);
        nix::sys::stat::utimensat(
            dir,
            name,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    /// Owner, mode, time and xattrs of a device node or FIFO made a moment ago by this process
    /// in a directory only it writes to (the tree's root is 0700 until the swap).
    fn apply_node_meta(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<(), PlaceError> {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(meta.mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
        for (k, v) in &meta.xattrs {
            lsetxattr_at(dir, name, k, v)?;
        }
        let t = timespec(meta.mtime);
        nix::sys::stat::utimensat(
            dir,
            name,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    /// Sets the directories' mtimes, deepest first (after all their entries were written).
    pub fn finish(mut self) -> Result<(), PlaceError> {
        let mut dirs = std::mem::take(&mut self.dir_times);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (parts, mtime) in dirs {
            let fd = match parts.split_last() {
                None => self.root.try_clone()?,
                Some(_) => match self.open_dir(&parts, false) {
                    Ok(fd) => fd,
                    // Replaced by a later entry: that entry's time stands.
                    Err(_) => continue,
                },
            };
            let t = timespec(mtime);
            nix::sys::stat::futimens(&fd, &t, &t)?;
        }
        Ok(())
    }
}

fn timespec(secs: i64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(secs, 0)
}

fn is_dir_at(dir: &OwnedFd, name: &OsStr) -> Result<bool, PlaceError> {
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR)
}

/// Removes `name` in `dir`: a file, symlink or node, or a directory with everything in it (a
/// later entry of another kind replaces it, as tar does).
fn remove_at(dir: &OwnedFd, name: &OsStr) -> Result<(), PlaceError> {
    if is_dir_at(dir, name)? {
        let sub = openat(
            dir,
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )?;
        empty_dir(sub)?;
        unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

/// Removes everything inside the open directory `fd`, following no symlink.
fn empty_dir(fd: OwnedFd) -> Result<(), PlaceError> {
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names: Vec<OsString> = Vec::new();
    for e in d.iter().filter_map(Result::ok) {
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    let dirfd: OwnedFd = d.as_fd().try_clone_to_owned()?;
    for n in names {
        remove_at(&dirfd, &n)?;
    }
    Ok(())
}

/// Runs `create` in `dir`; when the name exists, removes what is there and tries once more.
fn replace_with(
    dir: &OwnedFd,
    name: &OsStr,
    create: impl Fn(&OwnedFd) -> nix::Result<()>,
) -> Result<(), PlaceError> {
    match create(dir) {
        Err(Errno::EEXIST) => {
            remove_at(dir, name)?;
            create(dir)?;
            Ok(())
        }
        other => Ok(other?),
    }
}

fn fsetxattr(fd: BorrowedFd<'_>, key: &OsStr, value: &[u8]) -> io::Result<()> {
    let k = cstr(key)?;
    // SAFETY: a valid descriptor, a NUL-terminated name, and a buffer of the length passed.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lsetxattr` on `name` in `dir`, addressed through the directory's descriptor in /proc (no
/// `*at` form of the call exists on the kernels phones run), so no path outside is walked.
fn lsetxattr_at(dir: &OwnedFd, name: &OsStr, key: &OsStr, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    let p = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let k = cstr(key)?;
    // SAFETY: NUL-terminated path and name, a buffer of the length passed.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn a_symlink_made_by_the_archive_is_never_walked_through() {
        let d = tempfile::tempdir().unwrap();
        let tree_dir = d.path().join("tree");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&tree_dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "precious").unwrap();
        let mut t = Tree::open(&tree_dir).unwrap();
        t.place(
            Path::new("esc"),
            Kind::Symlink(&outside),
            &meta(0o777),
            &mut io::empty(),
        )
        .unwrap();
        for kind in [Kind::File, Kind::Dir, Kind::Fifo] {
            let e = t
                .place(
                    Path::new("esc/victim"),
                    kind,
                    &meta(0o644),
                    &mut &b"evil"[..],
                )
                .unwrap_err();
            assert!(
                matches!(&e, PlaceError::Refused(Refusal::ThroughSymlink { at }) if at == "esc"),
                "{e:?}"
            );
            let e = t
                .place(
                    Path::new("esc/new/deeper"),
                    Kind::Dir,
                    &meta(0o755),
                    &mut io::empty(),
                )
                .unwrap_err();
            assert!(matches!(e, PlaceError::Refused(_)), "{e:?}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "precious"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn parent_components_and_outside_hard_links_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        let tree_dir = d.path().join("tree");
        std::fs::create_dir(&tree_dir).unwrap();
        let mut t = Tree::open(&tree_dir).unwrap();
        let e = t
            .place(
                Path::new("a/../../secret"),
                Kind::File,
                &meta(0o644),
                &mut &b"x"[..],
            )
            .unwrap_err();
        assert!(matches!(e, PlaceError::Refused(Refusal::ParentComponent)));
        for target in ["../secret", "nothing-yet"] {
            let e = t
                .place(
                    Path::new("link"),
                    Kind::HardLink(Path::new(target)),
                    &meta(0o644),
                    &mut io::empty(),
                )
                .unwrap_err();
            assert!(
                matches!(e, PlaceError::Refused(Refusal::LinkTarget { .. })),
                "{target}: {e:?}"
            );
        }
        // Absolute paths are taken as inside the tree (tar strips the leading /).
        t.place(
            Path::new("/etc/hostname"),
            Kind::File,
            &meta(0o644),
            &mut &b"n\n"[..],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(tree_dir.join("etc/hostname")).unwrap(),
            "n\n"
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones_of_another_kind() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::open(d.path()).unwrap();
        t.place(
            Path::new("x"),
            Kind::Symlink(Path::new("/etc")),
            &meta(0o777),
            &mut io::empty(),
        )
        .unwrap();
        t.place(Path::new("x"), Kind::Dir, &meta(0o755), &mut io::empty())
            .unwrap();
        t.place(Path::new("x/f"), Kind::File, &meta(0o600), &mut &b"1"[..])
            .unwrap();
        t.place(Path::new("x"), Kind::File, &meta(0o640), &mut &b"2"[..])
            .unwrap();
        t.finish().unwrap();
        let m = std::fs::symlink_metadata(d.path().join("x")).unwrap();
        assert!(m.is_file());
        assert_eq!(std::fs::read(d.path().join("x")).unwrap(), b"2");
    }
}
