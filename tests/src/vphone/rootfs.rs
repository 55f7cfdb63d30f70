//! The phone's root directory: Debian's arm64 busybox as the userland, laid out like Android
//! (`/system/bin`, `/data`, `/sdcard`, `/data/adb`), with the profile's properties, battery and
//! kernel config.

use super::phone::AID_SHELL;
use super::profile::{Arch, Profile, RootKind};
use crate::util::{cache_dir, workspace_root};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

const PATH: &str = "/product/bin:/apex/com.android.runtime/bin:/apex/com.android.art/bin:\
/system_ext/bin:/system/bin:/system/xbin:/odm/bin:/vendor/bin:/vendor/xbin";

/// The environment adbd (shell user) or magiskd (root) gives a command.
pub(crate) fn android_env(profile: &Profile, root: bool) -> Vec<(String, String)> {
    let user = if root { "root" } else { "shell" };
    [
        ("PATH", PATH),
        ("HOME", "/"),
        ("USER", user),
        ("LOGNAME", user),
        ("SHELL", "/system/bin/sh"),
        ("HOSTNAME", profile.device.as_str()),
        ("TMPDIR", "/data/local/tmp"),
        ("ANDROID_ROOT", "/system"),
        ("ANDROID_DATA", "/data"),
        ("ANDROID_STORAGE", "/storage"),
        ("EXTERNAL_STORAGE", "/sdcard"),
        ("ANDROID_ASSETS", "/system/app"),
        // qemu-user reports this as the kernel release (`uname -r`).
        ("QEMU_UNAME", profile.kernel_release.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, rel: &str, uid: u32, gid: u32, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).unwrap();
    chown(&p, uid, gid, mode);
}

/// Replaces whatever is at `rel` (often an applet symlink, which must not be written through)
/// with an executable file.
fn install_file(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", p.display()),
    }
    p
}

fn script(root: &Path, rel: &str, text: &str) {
    let p = install_file(root, rel);
    std::fs::write(&p, text).unwrap();
    chown(&p, 0, 2000, 0o755);
}

/// Android ships e2fsprogs' mke2fs in /system/bin (linked against bionic); busybox's applet cannot
/// make ext4. Here: Debian's arm64 mke2fs with the glibc loader and the libraries it needs, where
/// that loader looks by default (`/lib/aarch64-linux-gnu`), so node-runtime formats the k3s data
/// image with the real tool, as on a phone.
fn e2fsprogs_mke2fs(root: &Path) {
    use crate::debian::arm64_package_tree;
    let mke2fs = install_file(root, "system/bin/mke2fs");
    std::fs::copy(arm64_package_tree("e2fsprogs").join("sbin/mke2fs"), &mke2fs)
        .expect("copy mke2fs");
    chown(&mke2fs, 0, 2000, 0o755);
    dir(root, "lib/aarch64-linux-gnu", 0, 0, 0o755);
    // (package, file in the package; copied to lib/aarch64-linux-gnu under its soname).
    for (package, file) in [
        ("libc6", "lib/aarch64-linux-gnu/libc.so.6"),
        ("libc6", "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"),
        ("libext2fs2", "lib/aarch64-linux-gnu/libext2fs.so.2"),
        ("libext2fs2", "lib/aarch64-linux-gnu/libe2p.so.2"),
        ("libcom-err2", "lib/aarch64-linux-gnu/libcom_err.so.2"),
        ("libblkid1", "usr/lib/aarch64-linux-gnu/libblkid.so.1"),
        ("libuuid1", "usr/lib/aarch64-linux-gnu/libuuid.so.1"),
    ] {
        let name = Path::new(file).file_name().unwrap();
        let dest = root.join("lib/aarch64-linux-gnu").join(name);
        // fs::copy follows the package's soname symlinks to the real file.
        std::fs::copy(arm64_package_tree(package).join(file), &dest)
            .unwrap_or_else(|e| panic!("copy {file} from {package}: {e}"));
        chown(&dest, 0, 0, 0o755);
    }
    // The ELF interpreter path mke2fs asks for.
    symlink(
        "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        root.join("lib/ld-linux-aarch64.so.1"),
    )
    .unwrap();
}

/// The phone-side `su` client (tests/data/vphone/su.c), compiled static for aarch64 once.
pub fn su_client() -> PathBuf {
    use sha2::Digest;
    let src = workspace_root().join("tests/data/vphone/su.c");
    let text = std::fs::read(&src).expect("read tests/data/vphone/su.c");
    let hash = hex::encode(&sha2::Sha256::digest(&text)[..8]);
    let out = cache_dir("vphone").join(format!("su-aarch64-{hash}"));
    if out.exists() {
        return out;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let status = Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("run aarch64-linux-gnu-gcc (install gcc-aarch64-linux-gnu)");
    assert!(status.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// The kernel config the phone shows (`/proc/config.gz`), from the profile's fixtures.
pub fn kernel_config_text(profile: &Profile) -> String {
    let dir = workspace_root().join("tests/data/kernel-configs");
    let mut text = String::new();
    for name in &profile.kernel_config {
        let path = dir.join(name);
        let part = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "phone profile {}: kernel config fixture {}: {e}",
                profile.name,
                path.display()
            )
        });
        text.push_str(&part);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    if profile.nf_tables {
        text
    } else {
        without_nf_tables(&text)
    }
}

/// The config as `make olddefconfig` leaves it with `NF_TABLES` off: its line says "is not set"
/// and the options that depend on it (nft expressions, the per-family tables, flowtables, the
/// netdev duplication nft selects) are gone, set or not.
fn without_nf_tables(text: &str) -> String {
    let depends = |name: &str| {
        name.starts_with("NFT_")
            || name.starts_with("NF_TABLES_")
            || name.starts_with("NF_FLOW_TABLE")
            || name == "NF_DUP_NETDEV"
    };
    let mut out = String::new();
    for line in text.lines() {
        let name = line
            .strip_prefix("# CONFIG_")
            .and_then(|l| l.strip_suffix(" is not set"))
            .or_else(|| {
                line.strip_prefix("CONFIG_")
                    .and_then(|l| l.split('=').next())
            });
        match name {
            Some("NF_TABLES") => out.push_str("# CONFIG_NF_TABLES is not set\n"),
            Some(n) if depends(n) => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn kernel_config_gz(profile: &Profile) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(kernel_config_text(profile).as_bytes())
        .unwrap();
    gz.finish().unwrap()
}

/// Android's user names, so `id` shows `uid=2000(shell)` as on a phone.
const AIDS: &[(&str, u32)] = &[
    ("root", 0),
    ("system", 1000),
    ("input", 1004),
    ("log", 1007),
    ("adb", 1011),
    ("sdcard_rw", 1015),
    ("media_rw", 1023),
    ("sdcard_r", 1028),
    ("ext_data_rw", 1078),
    ("ext_obb_rw", 1079),
    ("shell", 2000),
    ("net_bt_admin", 3001),
    ("net_bt", 3002),
    ("inet", 3003),
    ("net_bw_stats", 3006),
    ("readproc", 3009),
    ("uhid", 3011),
    ("everybody", 9997),
];

/// Debian's static busybox for the phone's CPU as `/bin/busybox`, with its applets linked in
/// `/bin`. The applet list is read from the cached package's busybox, never from the fresh copy:
/// executing a file just written by a multi-threaded process can fail with ETXTBSY while another
/// thread forks.
fn userland(root: &Path, arch: Arch) {
    let tree = match arch {
        Arch::Aarch64 => crate::debian::arm64_package_tree("busybox-static"),
        Arch::Armv7 => super::armv7::armhf_package_tree("busybox-static"),
    };
    for dir in [
        "bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "var/lib", "var/log", "root",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let cached = tree.join("bin/busybox");
    let out = Command::new(&cached)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} through binfmt_misc ({e}): is qemu registered? run scripts/setup.sh",
                cached.display()
            )
        });
    assert!(out.status.success(), "{} --list failed", cached.display());
    std::fs::copy(&cached, root.join("bin/busybox")).expect("copy busybox");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", &link).unwrap();
        }
    }
}

/// Lays out the phone's root at `root` (an empty directory, or one holding only a mounted
/// `/data`).
pub(crate) fn build(root: &Path, profile: &Profile) {
    userland(root, profile.arch);
    for (rel, mode) in [
        ("system/bin", 0o755),
        ("system/xbin", 0o755),
        ("system/etc", 0o755),
        ("vendor/bin", 0o755),
        ("product/bin", 0o755),
        ("apex", 0o755),
        ("mnt", 0o755),
        ("storage/emulated", 0o755),
        ("debug_ramdisk", 0o750),
        (".vphone/power_supply/battery", 0o755),
    ] {
        dir(root, rel, 0, 0, mode);
    }
    dir(root, ".vphone", 0, 0, 0o755);
    dir(root, "data", 1000, 1000, 0o771);
    dir(root, "data/local", 0, 0, 0o751);
    dir(root, "data/local/tmp", AID_SHELL, AID_SHELL, 0o771);
    dir(root, "data/media", 1023, 1023, 0o771);
    dir(root, "data/media/0", 1023, 1015, 0o770);
    dir(root, "data/adb", 0, 0, 0o700);
    for d in [
        "data/adb/service.d",
        "data/adb/post-fs-data.d",
        "data/adb/modules",
    ] {
        dir(root, d, 0, 0, 0o755);
    }
    symlink("/storage/emulated/0", root.join("sdcard")).unwrap();

    // /system/bin: busybox's applets, Android's sh, and the property and SELinux tools.
    let applets = std::fs::read_dir(root.join("bin")).unwrap();
    for e in applets.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let link = root.join("system/bin").join(&name);
        if name != "busybox" && !link.exists() {
            // Relative, so the host side never resolves it to the build machine's own busybox.
            symlink("../../bin/busybox", link).unwrap();
        }
    }
    // Android's shell is mksh. (busybox ash would also do, but it re-executes itself for
    // applets, which loses argv[0] under a binfmt_misc qemu registered without the P flag.)
    let sh = install_file(root, "system/bin/sh");
    let mksh = match profile.arch {
        Arch::Aarch64 => {
            crate::debian::arm64_package_tree("mksh").join("usr/lib/aarch64-linux-musl/bin/mksh")
        }
        Arch::Armv7 => super::armv7::mksh(),
    };
    std::fs::copy(mksh, &sh).expect("copy mksh");
    chown(&sh, 0, 2000, 0o755);
    script(
        root,
        "system/bin/getprop",
        "#!/system/bin/sh\n# getprop [NAME [DEFAULT]]: Android's properties (build.prop, then runtime ones).\n\
         files=\"/system/build.prop /.vphone/runtime.prop\"\n\
         if [ $# -eq 0 ]; then\n  cat $files 2>/dev/null | awk '!/^#/ && index($0, \"=\") { k=substr($0, 1, index($0, \"=\")-1); p[k]=substr($0, index($0, \"=\")+1) } END { for (k in p) print \"[\" k \"]: [\" p[k] \"]\" }' | sort\n  exit 0\nfi\n\
         v=$(cat $files 2>/dev/null | awk -v k=\"$1\" 'index($0, \"=\") && substr($0, 1, index($0, \"=\")-1) == k { v=substr($0, index($0, \"=\")+1); f=1 } END { if (f) print v }')\n\
         [ -n \"$v\" ] || v=\"$2\"\nprintf '%s\\n' \"$v\"\n",
    );
    script(
        root,
        "system/bin/setprop",
        "#!/system/bin/sh\n# setprop NAME VALUE: runtime properties; ro.* are set once (root only).\n\
         if [ $# -ne 2 ]; then echo 'usage: setprop NAME VALUE' >&2; exit 1; fi\n\
         case \"$1\" in ro.*) if [ -n \"$(getprop \"$1\")\" ]; then fail=1; fi;; esac\n\
         if [ -z \"$fail\" ] && printf '%s=%s\\n' \"$1\" \"$2\" 2>/dev/null >>/.vphone/runtime.prop; then exit 0; fi\n\
         echo \"Failed to set property '$1' to '$2'.\" >&2\necho 'See dmesg for error reason.' >&2\nexit 1\n",
    );
    script(
        root,
        "system/bin/getenforce",
        &format!("#!/system/bin/sh\necho {}\n", profile.selinux),
    );
    script(
        root,
        "system/bin/setenforce",
        "#!/system/bin/sh\necho \"setenforce: Couldn't set enforcing status to '$1': Permission denied\" >&2\nexit 1\n",
    );
    let mut build_prop = String::from("# begin build properties\n");
    for (k, v) in profile.build_props() {
        build_prop.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(root.join("system/build.prop"), build_prop).unwrap();

    let mut passwd = String::new();
    let mut group = String::new();
    for (name, id) in AIDS {
        passwd.push_str(&format!("{name}:x:{id}:{id}::/:/system/bin/sh\n"));
        group.push_str(&format!("{name}:x:{id}:\n"));
    }
    std::fs::write(root.join("etc/passwd"), passwd).unwrap();
    std::fs::write(root.join("etc/group"), group).unwrap();
    // busybox init as the phone's PID 1: it reaps orphans and otherwise stays idle.
    std::fs::write(root.join("etc/inittab"), "::sysinit:/bin/true\n").unwrap();

    if profile.arch == Arch::Aarch64 {
        e2fsprogs_mke2fs(root);
    }

    // busybox's own su is not Android's: a phone has su only when rooted (installed below).
    for su in ["bin/su", "system/bin/su"] {
        install_file(root, su);
    }
    match profile.root {
        RootKind::None => {}
        RootKind::Magisk | RootKind::Kernelsu => {
            let su = install_file(root, "system/bin/su");
            std::fs::copy(su_client(), &su).unwrap();
            chown(&su, 0, 2000, 0o755);
            if profile.root == RootKind::Magisk {
                dir(root, "data/adb/magisk", 0, 0, 0o755);
                std::fs::write(root.join("data/adb/magisk.db"), b"").unwrap();
                script(
                    root,
                    "system/bin/magisk",
                    &format!(
                        "#!/system/bin/sh\ncase \"$1\" in\n  -v) echo {v};;\n  -V) echo {c};;\n  --path) echo /debug_ramdisk;;\n  *) echo \"magisk: unsupported here: $*\" >&2; exit 1;;\nesac\n",
                        v = profile.su_version,
                        c = profile.su_version_code
                    ),
                );
            } else {
                dir(root, "data/adb/ksu", 0, 0, 0o755);
                std::fs::copy(root.join("bin/busybox"), root.join("data/adb/ksud")).unwrap();
            }
        }
    }

    let b = &profile.battery;
    let bat = root.join(".vphone/power_supply/battery");
    for (f, v) in [
        ("type", "Battery".to_owned()),
        ("present", "1".into()),
        ("technology", "Li-ion".into()),
        ("capacity", b.level.to_string()),
        ("status", b.status.clone()),
        ("health", b.health.clone()),
        ("temp", b.temp.to_string()),
        ("voltage_now", "4123000".into()),
        // The charging switch most Qualcomm kernels offer (node-runtime's battery care).
        ("charging_enabled", "1".into()),
    ] {
        std::fs::write(bat.join(f), format!("{v}\n")).unwrap();
    }
    let usb = root.join(".vphone/power_supply/usb");
    std::fs::create_dir_all(&usb).unwrap();
    let online = if b.status == "Discharging" { "0" } else { "1" };
    std::fs::write(usb.join("online"), format!("{online}\n")).unwrap();
    std::fs::write(usb.join("type"), "USB\n").unwrap();

    std::fs::write(root.join(".vphone/config.gz"), kernel_config_gz(profile)).unwrap();
    for listing in &profile.kernel_modules {
        let path = workspace_root()
            .join("tests/data/kernel-configs")
            .join(listing);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "phone profile {}: module listing {}: {e}",
                profile.name,
                path.display()
            )
        });
        for module in text.lines().filter(|l| l.starts_with('/')) {
            let file = root.join(module.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, b"").unwrap();
        }
    }
    std::fs::write(root.join(".vphone/runtime.prop"), "").unwrap();

    if super::cgroups::own_dev(profile.cgroups) {
        // cpuacct's mount point (Android's init mounts it at /acct).
        dir(root, "acct", 0, 0, 0o555);
    }
    if super::netd::own_namespace(profile) {
        dir(root, "data/misc", 1000, 9998, 0o1771);
        dir(root, "data/misc/net", 0, AID_SHELL, 0o750);
        std::fs::write(
            root.join("data/misc/net/rt_tables"),
            super::netd::rt_tables(),
        )
        .unwrap();
        super::netd::install_host_ip(root, &root.join("system/bin/ip"));
        chown(&root.join("system/bin/ip"), 0, 2000, 0o755);
    }
}
