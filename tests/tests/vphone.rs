//! The virtual phone is a faithful ADB device: proven with the real `adb` (Debian's 29.0.6, through
//! a private server) and with the `adb_client` crate, both through the server and directly.

use adb_client::ADBDeviceExt;
use armfleet_tests::vphone::{AdbServer, PhoneOptions, VirtualPhone};
use sha2::Digest;
use std::io::Write;
use std::time::{Duration, Instant};

fn sh(adb: &AdbServer, phone: &VirtualPhone, command: &str) -> (i32, String, String) {
    let out = adb.adb(&["-s", &phone.serial(), "shell", command]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn start(profile: &str) -> (VirtualPhone, AdbServer) {
    let phone = VirtualPhone::start(profile, PhoneOptions::default());
    let adb = AdbServer::start();
    adb.connect(&phone);
    (phone, adb)
}

fn mounts_under(path: &std::path::Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(str::to_owned)
        .collect()
}

#[test]
fn adb_sees_the_phone_and_its_shell() {
    let (phone, adb) = start("rooted-magisk");
    let devices = adb.adb(&["devices", "-l"]);
    let listing = String::from_utf8_lossy(&devices.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(&phone.serial()))
        .unwrap_or_else(|| panic!("{} not in adb devices -l:\n{listing}", phone.serial()));
    assert!(line.contains(" device "), "{line}");
    assert!(
        line.contains("product:panther model:Pixel_7 device:panther"),
        "{line}"
    );

    // Shell v2: exit code and stderr kept apart from stdout.
    let (rc, out, err) = sh(&adb, &phone, "echo out; echo oops >&2; exit 3");
    assert_eq!((rc, out.as_str(), err.as_str()), (3, "out\n", "oops\n"));
    // adbd's shell user, Android's properties, the profile's battery, SELinux and kernel config.
    let (rc, out, _) = sh(
        &adb,
        &phone,
        "id -u; getprop ro.product.model; getprop ro.build.version.sdk; getprop sys.boot_completed; \
         cat /sys/class/power_supply/battery/capacity; getenforce; uname -m; \
         zcat /proc/config.gz | grep -c '^CONFIG_'",
    );
    assert_eq!(rc, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..7],
        &["2000", "Pixel 7", "34", "1", "87", "Enforcing", "aarch64"]
    );
    assert!(lines[7].parse::<u32>().unwrap() > 100, "{out}");
    // Root through Magisk's su.
    let (rc, out, _) = sh(&adb, &phone, "su -c id");
    assert_eq!(rc, 0);
    assert!(out.starts_with("uid=0(root) gid=0(root)"), "{out}");
    let (_, out, _) = sh(
        &adb,
        &phone,
        "su -v; su -V; echo 'id -u; exit 7' | su; echo rc=$?",
    );
    assert_eq!(out, "27.0:MAGISKSU\n27000\n0\nrc=7\n");
    // Root can do what node-runtime needs: mounts, namespaces, loop images.
    let (rc, out, err) = sh(
        &adb,
        &phone,
        "su -c 'cd /data/local/tmp && dd if=/dev/zero of=img bs=1M count=8 2>/dev/null && \
         l=$(losetup -f) && losetup $l img && mke2fs -q $l && mkdir -p m && mount $l m && \
         touch m/ok && ls m && umount m && losetup -d $l && \
         /system/bin/unshare -m /system/bin/true && echo ns-ok'",
    );
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("ok\n") && out.ends_with("ns-ok\n"),
        "{out}{err}"
    );
    // exec: raw, stderr merged; an interactive shell reading the host's stdin (v2 close-stdin).
    let out = adb.adb(&["-s", &phone.serial(), "exec-out", "echo hi; echo err >&2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nerr\n");
    let mut child = adb
        .command()
        .args(["-s", &phone.serial(), "shell"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo $((40+2))\nexit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(5), "42\n")
    );
    // busybox applets that run other applets by name work (binfmt P flag, see scripts/setup.sh).
    let (_, out, err) = sh(&adb, &phone, "setsid echo applets-ok");
    assert_eq!(out, "applets-ok\n", "{err}");
    // Root renaming the phone renames the phone only.
    let host_name = || std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let before = host_name();
    let (_, out, _) = sh(&adb, &phone, "hostname; su -c 'hostname pixel; hostname'");
    let after = host_name();
    if after != before {
        std::fs::write("/proc/sys/kernel/hostname", before.trim()).unwrap();
        panic!("the phone renamed the build machine to {after:?}");
    }
    assert_eq!(out, "localhost\npixel\n");
    // Services adbd does not have are refused.
    let out = adb.adb(&["-s", &phone.serial(), "jdwp"]);
    assert!(!out.status.success());
    let out = adb.adb(&["-s", &phone.serial(), "root"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cannot run as root in production builds"),
        "{out:?}"
    );
}

#[test]
fn push_and_pull_64_mib_byte_identical_as_the_shell_user() {
    let (phone, adb) = start("rooted-magisk");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    let serial = phone.serial();
    let started = Instant::now();
    let out = adb.push(&serial, &src, "/data/local/tmp/big.bin");
    let push_time = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let on_phone = phone.root().join("data/local/tmp/big.bin");
    let md = std::fs::metadata(&on_phone).unwrap();
    assert_eq!(
        (md.len(), std::os::unix::fs::MetadataExt::uid(&md)),
        (64 << 20, 2000),
        "pushed as the shell user"
    );
    let back = dir.path().join("back.bin");
    let out = adb.adb(&[
        "-s",
        &serial,
        "pull",
        "/data/local/tmp/big.bin",
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let sha = |p: &std::path::Path| hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()));
    assert_eq!(sha(&back), sha(&src));
    eprintln!("64 MiB push took {push_time:?}");
    // /sdcard is writable by the shell user, /data/adb is not (production adbd is not root).
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "hello\n").unwrap();
    let out = adb.push(&serial, &small, "/sdcard/Download/a.txt");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(phone.root().join("data/media/0/Download/a.txt")).unwrap(),
        "hello\n"
    );
    let out = adb.push(&serial, &small, "/data/adb/a.txt");
    assert!(!out.status.success());
    // adb 29 prints this error on stdout.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Permission denied"),
        "{out:?}"
    );
    assert!(!phone.root().join("data/adb/a.txt").exists());
    // `adb ls` (LIST) shows the pushed file.
    let out = adb.adb(&["-s", &serial, "ls", "/data/local/tmp"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" big.bin\n"),
        "{out:?}"
    );
}

#[test]
fn reboot_runs_magisk_boot_scripts_and_drops_the_transport() {
    let (phone, adb) = start("rooted-magisk");
    let serial = phone.serial();
    let boot_script = "#!/system/bin/sh\nuntil [ \"$(getprop sys.boot_completed)\" = 1 ]; do sleep 0.1; done\n\
                       id -u > /data/local/tmp/service-d-ran\n";
    // Full paths after setsid: see the binfmt note in the vphone module docs.
    let module = "MODDIR=${0%/*}\necho \"$MODDIR\" > /data/local/tmp/module-ran\n\
                  setsid /system/bin/sleep 1000 </dev/null >/dev/null 2>&1 &\n";
    let (rc, _, err) = sh(
        &adb,
        &phone,
        &format!(
            "su -c 'mkdir -p /data/adb/modules/armfleet && cat > /data/adb/service.d/mark.sh && \
             chmod 755 /data/adb/service.d/mark.sh' <<'EOF'\n{boot_script}EOF\n\
             su -c 'cat > /data/adb/modules/armfleet/service.sh' <<'EOF'\n{module}EOF\n\
             su -c 'echo \"touch /data/local/tmp/post-fs-data-ran\" > /data/adb/post-fs-data.d/p.sh; \
             chmod 755 /data/adb/post-fs-data.d/p.sh'"
        ),
    );
    assert_eq!(rc, 0, "{err}");
    // A process started before the reboot must not survive it.
    let (rc, _, _) = sh(
        &adb,
        &phone,
        "su -c 'setsid /system/bin/sleep 999 </dev/null >/dev/null 2>&1 &'",
    );
    assert_eq!(rc, 0);
    let before = phone.processes();
    assert_eq!(phone.boot_count(), 1);

    let out = adb.adb(&["-s", &serial, "reboot"]);
    assert!(out.status.success(), "{out:?}");
    phone.wait_booted();
    assert_eq!(phone.boot_count(), 2);
    let after = phone.processes();
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "{before:?} / {after:?}"
    );
    // The transport dropped; adb 29's server reconnects TCP devices by itself once the phone
    // is back, so the host only waits (phonectl: `adb -s SERIAL wait-for-device`).
    let out = adb
        .command()
        .args(["-s", &serial, "wait-for-device"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = sh(
            &adb,
            &phone,
            "cat /data/local/tmp/service-d-ran /data/local/tmp/module-ran; ls /data/local/tmp/post-fs-data-ran",
        );
        if out.lines().count() == 3 {
            assert_eq!(
                out,
                "0\n/data/adb/modules/armfleet\n/data/local/tmp/post-fs-data-ran\n"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "boot scripts did not run: {out}\n{}",
            phone.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, _) = sh(&adb, &phone, "ps -o args | grep -c '[s]leep 1000$'");
    assert_eq!(out.trim(), "1", "the module's daemon runs after boot");
    let (_, out, _) = sh(&adb, &phone, "ps -o args | grep -c '[s]leep 999$'");
    assert_eq!(out.trim(), "0", "processes from before the reboot are gone");

    // `reboot` as root inside the phone brings it down and up again too.
    let (_, out, err) = sh(
        &adb,
        &phone,
        "setprop vphone.test 1; su -c 'setprop vphone.test 2; reboot'",
    );
    assert_eq!(
        (out.as_str(), err.lines().next()),
        ("", Some("Failed to set property 'vphone.test' to '1'."))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while phone.boot_count() < 3 {
        assert!(
            Instant::now() < deadline,
            "no reboot after `su -c reboot`\n{}",
            phone.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    phone.wait_booted();
    let out = adb
        .command()
        .args(["-s", &serial, "wait-for-device"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (_, out, _) = sh(
        &adb,
        &phone,
        "getprop vphone.test; getprop sys.boot_completed",
    );
    assert_eq!(out, "\n1\n", "runtime properties do not survive a reboot");
}

#[test]
fn teardown_kills_everything_and_unmounts_everything() {
    let (phone, adb) = start("full-data");
    let root = phone.root().to_owned();
    assert!(
        !mounts_under(&root).is_empty(),
        "the small /data is mounted"
    );
    let (rc, _, _) = sh(
        &adb,
        &phone,
        "su -c 'setsid /system/bin/sh -c \"trap \\\"\\\" HUP TERM; sleep 1000\" </dev/null >/dev/null 2>&1 & \
         mount -t tmpfs t /mnt'",
    );
    assert_eq!(rc, 0);
    let pids = phone.processes();
    assert!(pids.len() >= 2, "{pids:?}");
    drop(phone);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} outlived the phone"
        );
    }
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    assert!(!root.exists());
}

#[test]
fn profiles_show_what_their_phones_show() {
    let adb = AdbServer::start();
    // Booted side by side: each phone is its own namespace, root and port.
    let profiles = [
        "unauthorized",
        "unrooted",
        "rooted-kernelsu",
        "permissive",
        "enforcing",
        "stock-gki",
        "armv7",
        "full-data",
    ];
    let mut phones: Vec<VirtualPhone> = std::thread::scope(|s| {
        let handles: Vec<_> = profiles
            .iter()
            .map(|p| s.spawn(move || VirtualPhone::start(p, PhoneOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let full = phones.pop().unwrap();
    let armv7 = phones.pop().unwrap();
    let gki = phones.pop().unwrap();
    let enforcing = phones.pop().unwrap();
    let permissive = phones.pop().unwrap();
    let ksu = phones.pop().unwrap();
    let unrooted = phones.pop().unwrap();
    let unauthorized = phones.pop().unwrap();
    adb.connect(&unauthorized);
    assert_eq!(
        adb.state(&unauthorized.serial()).as_deref(),
        Some("unauthorized")
    );
    let out = adb.adb(&["-s", &unauthorized.serial(), "shell", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{out:?}"
    );

    adb.connect(&unrooted);
    let (rc, out, _) = sh(
        &adb,
        &unrooted,
        "id -u; command -v su || echo no-su; ls /data/adb",
    );
    assert_eq!(rc, 1);
    assert_eq!(out, "2000\nno-su\n");

    adb.connect(&ksu);
    let (rc, out, _) = sh(&adb, &ksu, "su -c 'id -u; ls -d /data/adb/ksu'; su -v");
    assert_eq!(
        (rc, out.as_str()),
        (0, "0\n/data/adb/ksu\n1.0.1:KernelSU\n")
    );

    adb.connect(&permissive);
    assert_eq!(sh(&adb, &permissive, "getenforce").1, "Permissive\n");
    adb.connect(&enforcing);
    assert_eq!(sh(&adb, &enforcing, "getenforce").1, "Enforcing\n");

    adb.connect(&gki);
    let (_, out, _) = sh(&adb, &gki, "uname -r");
    assert_eq!(out, "6.1.57-android14-11-g39b4c9d1d6d7-ab11241719\n");
    // The stock GKI config (defconfig + Kconfig defaults) lacks what k3s needs.
    let (_, out, _) = sh(&adb, &gki, "zcat /proc/config.gz");
    assert_eq!(
        out,
        armfleet_tests::vphone::kernel_config_text(gki.profile())
    );
    assert!(out.contains("# CONFIG_PID_NS is not set"), "{out}");
    let (_, out, _) = sh(
        &adb,
        &unrooted,
        "zcat /proc/config.gz | grep '^CONFIG_PID_NS='",
    );
    assert_eq!(out, "CONFIG_PID_NS=y\n");

    adb.connect(&armv7);
    let (rc, out, _) = sh(
        &adb,
        &armv7,
        "uname -m; getprop ro.product.cpu.abi; getprop ro.build.version.release",
    );
    assert_eq!((rc, out.as_str()), (0, "armv7l\narmeabi-v7a\n9\n"));
    let sh_binary = std::fs::read(armv7.root().join("system/bin/sh")).unwrap();
    assert_eq!(sh_binary[4], 1, "the armv7 phone's shell is a 32-bit ELF");

    adb.connect(&full);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 32 << 20]).unwrap();
    let out = adb.push(&full.serial(), &big, "/data/local/tmp/big.bin");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("remote write failed: No space left on device"),
        "{out:?}"
    );
    assert!(
        !full.root().join("data/local/tmp/big.bin").exists(),
        "the partial file is removed"
    );
}

#[test]
fn several_phones_at_once_each_with_its_serial() {
    let adb = AdbServer::start();
    let phones: Vec<VirtualPhone> = ["rooted-magisk", "unrooted", "rooted-kernelsu"]
        .iter()
        .map(|p| VirtualPhone::start(p, PhoneOptions::default()))
        .collect();
    for p in &phones {
        assert!(!(5555..=5585).contains(&p.port()));
        adb.connect(p);
    }
    let serials: Vec<String> = phones
        .iter()
        .map(|p| sh(&adb, p, "getprop ro.serialno").1)
        .collect();
    assert_eq!(
        serials,
        [
            "1A2B3C4D5E6F7081\n",
            "3C4D5E6F70819203\n",
            "2B3C4D5E6F708192\n"
        ]
    );
    // Work on all of them at the same time.
    std::thread::scope(|s| {
        for p in &phones {
            let adb = &adb;
            s.spawn(move || {
                let (rc, out, _) = sh(
                    adb,
                    p,
                    "i=0; while [ $i -lt 50 ]; do i=$((i+1)); done; echo $i",
                );
                assert_eq!((rc, out.as_str()), (0, "50\n"));
            });
        }
    });
}

#[test]
fn cut_transport_mid_push_leaves_no_file_and_the_phone_usable() {
    let (phone, adb) = start("rooted-magisk");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f.bin");
    std::fs::write(&src, vec![1u8; 8 << 20]).unwrap();
    phone.cut_transport_after(2 << 20);
    let out = adb.push(&phone.serial(), &src, "/data/local/tmp/f.bin");
    assert!(!out.status.success(), "{out:?}");
    // The server lists the phone `offline` and reconnects to it by itself (adb does so for
    // network devices). A `disconnect` + `connect` here would race that reconnection: when it
    // lands mid-reconnect, the server keeps a transport that stays offline.
    adb.wait_for_state(&phone, "device", Duration::from_secs(40));
    let (rc, out, _) = sh(&adb, &phone, "ls /data/local/tmp");
    assert_eq!((rc, out.as_str()), (0, ""), "adbd removes a partial push");
}

/// adb_client through the private server: its `ADBServer` runs `adb start-server` itself, so it
/// gets an adb that talks to our port.
#[test]
fn adb_client_through_the_server() {
    let (phone, adb) = start("rooted-magisk");
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("adb");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec adb -P {} \"$@\"\n", adb.port()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut server = adb_client::server::ADBServer::new_from_path(
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, adb.port()),
        Some(wrapper.to_string_lossy().into_owned()),
    );
    let mut device = server
        .get_device_by_name(&phone.serial())
        .expect("device through the server");
    let mut out = Vec::new();
    let mut err = Vec::new();
    device
        .shell_command(
            &"getprop ro.product.model; echo e >&2",
            Some(&mut out),
            Some(&mut err),
        )
        .unwrap();
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"Pixel 7\n"[..], &b"e\n"[..])
    );
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    device
        .push(&mut payload.as_slice(), "/data/local/tmp/ac.bin")
        .unwrap();
    let mut back = Vec::new();
    device.pull(&"/data/local/tmp/ac.bin", &mut back).unwrap();
    assert!(back == payload, "pull returned different bytes");
    let st = device.stat("/data/local/tmp/ac.bin").unwrap();
    assert_eq!(st.file_size, 3_000_000);
}

/// adb_client straight to adbd over TCP: protocol version 0x01000000 (checksummed), v1 shell, and
/// its skipped OKAYs.
#[test]
fn adb_client_directly_over_tcp() {
    let phone = VirtualPhone::start("rooted-magisk", PhoneOptions::default());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], phone.port()));
    let mut device = adb_client::tcp::ADBTcpDevice::new(addr).expect("direct TCP connect");
    let mut out = Vec::new();
    device
        .shell_command(&"id -u; getprop ro.serialno", Some(&mut out), None)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "2000\n1A2B3C4D5E6F7081\n");
    let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    device
        .push(&mut payload.as_slice(), &"/data/local/tmp/direct.bin")
        .unwrap();
    let on_phone = std::fs::read(phone.root().join("data/local/tmp/direct.bin")).unwrap();
    assert!(on_phone == payload);
    let mut back = Vec::new();
    device
        .pull(&"/data/local/tmp/direct.bin", &mut back)
        .unwrap();
    assert!(back == payload);
    let st = device.stat(&"/data/local/tmp/direct.bin").unwrap();
    assert_eq!(st.file_size, 1_500_000);
    let names: Vec<String> = device
        .list(&"/data/local/tmp")
        .unwrap()
        .into_iter()
        .map(|i| format!("{i:?}"))
        .collect();
    assert!(names.iter().any(|n| n.contains("direct.bin")), "{names:?}");
    let _ = std::io::stdout().flush();
}

/// A test process that dies without dropping its phone (SIGKILL) takes the phone's processes with
/// it: PID 1 is tied to the phone's keeper thread by PR_SET_PDEATHSIG.
#[test]
fn a_killed_harness_leaves_no_phone_processes() {
    use std::io::BufRead;
    let mut vphone = std::process::Command::new(env!("CARGO_BIN_EXE_vphone"))
        .arg("rooted-magisk")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(vphone.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let root = line
        .trim_end()
        .rsplit_once("(root dir ")
        .map(|(_, r)| r.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("unexpected vphone output: {line}"));
    let in_phone = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/root"))
                    .map(|r| r.to_string_lossy() == root)
                    .unwrap_or(false)
            })
            .collect()
    };
    assert!(!in_phone().is_empty(), "the phone's init runs in {root}");
    vphone.kill().unwrap();
    vphone.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_phone().is_empty() {
        assert!(
            Instant::now() < deadline,
            "phone processes outlived the harness: {:?}",
            in_phone()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = std::path::Path::new(&root).parent().unwrap().to_owned();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The wire protocol as adbd speaks it, checked byte by byte with a raw client: CNXN banner and
/// payload negotiation, one WRTE in flight per stream until the host's OKAY, unknown services
/// refused with CLSE, a bad header dropping the connection.
#[test]
fn wire_protocol_flow_control_and_refusals() {
    use armfleet_tests::vphone::wire::*;
    use std::io::Read;
    let phone = VirtualPhone::start("rooted-magisk", PhoneOptions::default());
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", phone.port())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let send = |tcp: &mut std::net::TcpStream, m: Message| m.write_to(tcp, false).unwrap();
    let recv =
        |tcp: &mut std::net::TcpStream| Message::read_from(tcp, MAX_PAYLOAD, false).unwrap().0;
    send(
        &mut tcp,
        Message::new(A_CNXN, A_VERSION, 4096, b"host::features=shell_v2".to_vec()),
    );
    let cnxn = recv(&mut tcp);
    assert_eq!(
        (cnxn.command, cnxn.arg0, cnxn.arg1),
        (A_CNXN, A_VERSION, MAX_PAYLOAD)
    );
    let banner = String::from_utf8(cnxn.data).unwrap();
    assert_eq!(
        banner,
        "device::ro.product.name=panther;ro.product.model=Pixel 7;ro.product.device=panther;\
         features=shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir"
    );

    send(
        &mut tcp,
        Message::new(A_OPEN, 7, 0, b"framebuffer:\0".to_vec()),
    );
    let refused = recv(&mut tcp);
    assert_eq!(
        (refused.command, refused.arg0, refused.arg1),
        (A_CLSE, 0, 7)
    );

    // 200 kB of output with a 4 KiB payload limit: exactly one WRTE until we say OKAY.
    send(
        &mut tcp,
        Message::new(A_OPEN, 9, 0, b"shell:seq 1 40000\0".to_vec()),
    );
    let okay = recv(&mut tcp);
    assert_eq!((okay.command, okay.arg1), (A_OKAY, 9));
    let dev = okay.arg0;
    let mut output = Vec::new();
    loop {
        let m = recv(&mut tcp);
        if m.command == A_CLSE {
            break;
        }
        assert_eq!((m.command, m.arg0, m.arg1), (A_WRTE, dev, 9));
        assert!(m.data.len() <= 4096);
        output.extend_from_slice(&m.data);
        // No other WRTE may arrive before our OKAY (a CLSE may: closing needs no OKAY).
        tcp.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let mut probe = [0u8; 4];
        if let Ok(4) = tcp.peek(&mut probe) {
            assert_ne!(probe, *b"WRTE", "a second WRTE arrived before the OKAY");
        }
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        send(&mut tcp, Message::new(A_OKAY, 9, dev, vec![]));
    }
    let expected: String = (1..=40000).map(|i| format!("{i}\n")).collect();
    assert!(output == expected.as_bytes(), "shell output differs");

    // An interactive shell on a terminal (what `adb shell` from a terminal asks for): the
    // window-size frame sizes it, stdin frames type into it, the exit frame ends it.
    send(
        &mut tcp,
        Message::new(
            A_OPEN,
            11,
            0,
            b"shell,v2,TERM=xterm-256color,pty:\0".to_vec(),
        ),
    );
    let okay = recv(&mut tcp);
    assert_eq!((okay.command, okay.arg1), (A_OKAY, 11));
    let dev = okay.arg0;
    let frame = |id: u8, data: &[u8]| {
        let mut f = vec![id];
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
        f
    };
    let mut typed = frame(5, b"24x80,0x0");
    typed.extend(frame(0, b"tty; stty size; echo $TERM; exit 3\n"));
    send(&mut tcp, Message::new(A_WRTE, 11, dev, typed));
    let mut stream_bytes = Vec::new();
    loop {
        let m = recv(&mut tcp);
        match m.command {
            A_OKAY => continue,
            A_CLSE => break,
            _ => {}
        }
        assert_eq!(m.command, A_WRTE);
        stream_bytes.extend_from_slice(&m.data);
        send(&mut tcp, Message::new(A_OKAY, 11, dev, vec![]));
    }
    let (mut terminal, mut exit) = (Vec::new(), None);
    let mut rest = &stream_bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_le_bytes(rest[1..5].try_into().unwrap()) as usize;
        match rest[0] {
            1 => terminal.extend_from_slice(&rest[5..5 + len]),
            3 => exit = Some(rest[5]),
            other => panic!("unexpected frame {other}"),
        }
        rest = &rest[5 + len..];
    }
    let terminal = String::from_utf8_lossy(&terminal);
    assert!(terminal.contains("/dev/pts/"), "{terminal}");
    assert!(terminal.contains("24 80\r\n"), "{terminal}");
    assert!(terminal.contains("xterm-256color\r\n"), "{terminal}");
    assert_eq!(exit, Some(3));

    // A header with a bad magic ends the connection, as adbd drops it.
    let mut bad = Message::new(A_OKAY, 1, 1, vec![]).encode(false);
    bad[20] ^= 0xff;
    tcp.write_all(&bad).unwrap();
    let mut rest = Vec::new();
    let n = tcp.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "connection closed after a bad header");
}

/// A static aarch64 program pushed by the host runs on the phone (through binfmt), as the shell
/// user and as root, from where phonectl puts it.
#[test]
fn pushed_aarch64_binary_runs_on_the_phone() {
    let (phone, adb) = start("rooted-magisk");
    let bin = armfleet_tests::util::aarch64_bin("node-runtime");
    let out = adb.push(&phone.serial(), &bin, "/data/local/tmp/node-runtime");
    assert!(out.status.success(), "{out:?}");
    let (rc, out, err) = sh(
        &adb,
        &phone,
        "cd /data/local/tmp && ./node-runtime --version && \
         su -c 'mkdir -p /data/armfleet/bin && cp node-runtime /data/armfleet/bin/ && \
         /data/armfleet/bin/node-runtime --version && id -u'",
    );
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("node-runtime ") && lines[0] == lines[1],
        "{out}"
    );
    assert_eq!(lines[2], "0");
}

/// `link_rate` paces what the phone receives as a cable of that rate would: a push is never
/// faster than the link, and arrives whole.
#[test]
fn link_rate_paces_host_to_phone_bytes() {
    let rate = 20_000_000u64;
    let paced = VirtualPhone::start(
        "rooted-magisk",
        PhoneOptions {
            link_rate: Some(rate),
            ..PhoneOptions::default()
        },
    );
    let adb = AdbServer::start();
    adb.connect(&paced);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f.bin");
    let size = 8u64 << 20;
    std::fs::write(&src, vec![7u8; size as usize]).unwrap();
    let t = Instant::now();
    let out = adb.push(&paced.serial(), &src, "/data/local/tmp/f.bin");
    let took = t.elapsed();
    assert!(out.status.success(), "{out:?}");
    let floor = Duration::from_secs_f64(size as f64 / rate as f64);
    assert!(
        took >= floor,
        "8 MiB at 20 MB/s took {took:?} (< {floor:?})"
    );
    assert_eq!(
        std::fs::metadata(paced.root().join("data/local/tmp/f.bin"))
            .unwrap()
            .len(),
        size
    );
}

// ---------- Android-shaped phones: cgroup layouts, netd's network, kernels without nf_tables ----------

/// The cgroup lines of the phone's /proc/mounts, as the shell user reads them through adb.
fn cgroup_mounts(adb: &AdbServer, phone: &VirtualPhone) -> Vec<String> {
    let (rc, out, err) = sh(adb, phone, "cat /proc/mounts");
    assert_eq!(rc, 0, "{err}");
    out.lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|t| t.starts_with("cgroup")))
        .map(str::to_owned)
        .collect()
}

/// Boots the two Android-shaped profiles side by side, connected to one adb server; None when
/// this machine cannot give them their cgroups and skipping is allowed.
fn android_phones() -> Option<(VirtualPhone, VirtualPhone, AdbServer)> {
    for kind in [
        armfleet_tests::vphone::Cgroups::Hybrid,
        armfleet_tests::vphone::Cgroups::V1,
    ] {
        if let Err(why) = armfleet_tests::vphone::cgroups_supported(kind)
            && armfleet_tests::util::skip_for_missing(&why)
        {
            return None;
        }
    }
    let adb = AdbServer::start();
    let (hybrid, v1) = std::thread::scope(|s| {
        let h = s.spawn(|| VirtualPhone::start("android14-hybrid", PhoneOptions::default()));
        let v = s.spawn(|| VirtualPhone::start("android9-v1", PhoneOptions::default()));
        (h.join().unwrap(), v.join().unwrap())
    });
    adb.connect(&hybrid);
    adb.connect(&v1);
    Some((hybrid, v1, adb))
}

#[test]
fn android_profiles_mount_cgroups_where_android_does() {
    let Some((hybrid, v1, adb)) = android_phones() else {
        return;
    };
    let flags = "rw,nosuid,nodev,noexec,relatime";
    // Android 9's init.rc: v1 controllers under /dev and /acct, no cgroup2 anywhere.
    assert_eq!(
        cgroup_mounts(&adb, &v1),
        [
            format!("none /acct cgroup {flags},cpuacct 0 0"),
            format!("none /dev/memcg cgroup {flags},memory 0 0"),
            format!("none /dev/cpuctl cgroup {flags},cpu 0 0"),
            format!("none /dev/cpuset cgroup {flags},cpuset 0 0"),
        ],
        "(this machine keeps cpu and cpuacct apart, as Android does)"
    );
    // Android 10+ (cgroups.json): the same, blkio, and cgroup2 at /sys/fs/cgroup.
    assert_eq!(
        cgroup_mounts(&adb, &hybrid),
        [
            format!("none /acct cgroup {flags},cpuacct 0 0"),
            format!("none /dev/memcg cgroup {flags},memory 0 0"),
            format!("none /dev/cpuctl cgroup {flags},cpu 0 0"),
            format!("none /dev/cpuset cgroup {flags},cpuset 0 0"),
            format!("none /dev/blkio cgroup {flags},blkio 0 0"),
            format!("none /sys/fs/cgroup cgroup2 {flags} 0 0"),
        ]
    );
    // The controllers are live hierarchies, readable by the shell user as on a phone; /dev is a
    // tmpfs of the phone's own, as Android's.
    for phone in [&v1, &hybrid] {
        let (rc, out, err) = sh(
            &adb,
            phone,
            "ls /dev/memcg /dev/cpuctl /dev/cpuset /acct; grep ' /dev ' /proc/mounts",
        );
        assert_eq!(rc, 0, "{err}");
        for file in [
            "memory.limit_in_bytes",
            "cpu.shares",
            "cpuset.cpus",
            "cpuacct.usage",
            "cgroup.procs",
        ] {
            assert!(out.contains(&format!("{file}\n")), "{file} missing:\n{out}");
        }
        assert!(
            out.contains("tmpfs /dev tmpfs rw,nosuid,relatime,mode=755 0 0"),
            "{out}"
        );
        // What the shell needs from /dev is there.
        let (rc, out, err) = sh(
            &adb,
            phone,
            "echo hi > /dev/null && head -c 4 /dev/zero | wc -c && ls /dev/kmsg /dev/loop-control",
        );
        assert_eq!(
            (rc, out.as_str()),
            (0, "4\n/dev/kmsg\n/dev/loop-control\n"),
            "{err}"
        );
    }
    let (_, out, _) = sh(
        &adb,
        &hybrid,
        "cat /sys/fs/cgroup/cgroup.controllers; echo end",
    );
    assert!(out.ends_with("end\n"), "{out}");
    // The phones' mount points were made in their own /dev, never in the machine's.
    for d in ["/dev/memcg", "/dev/cpuctl", "/dev/cpuset", "/dev/blkio"] {
        assert!(
            !std::path::Path::new(d).exists(),
            "{d} made on the build machine"
        );
    }
}

#[test]
fn android_profiles_serve_their_kernel_config() {
    let Some((hybrid, v1, adb)) = android_phones() else {
        return;
    };
    // nf_tables = false: the option says "is not set" and nothing that depends on it is left.
    let (rc, out, _) = sh(&adb, &v1, "zcat /proc/config.gz");
    assert_eq!(rc, 0);
    assert!(
        out.contains("\n# CONFIG_NF_TABLES is not set\n"),
        "no NF_TABLES line"
    );
    for gone in [
        "CONFIG_NF_TABLES=",
        "CONFIG_NFT_",
        "CONFIG_NF_TABLES_",
        "CONFIG_NF_FLOW_TABLE",
    ] {
        assert!(
            !out.contains(gone),
            "{gone} still in the nf_tables = false config"
        );
    }
    // The legacy iptables options a kernel without nf_tables runs k3s with are still there.
    for kept in [
        "CONFIG_IP_NF_FILTER=m",
        "CONFIG_IP_NF_NAT=m",
        "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE=m",
    ] {
        assert!(out.contains(&format!("\n{kept}\n")), "{kept} missing");
    }
    assert_eq!(
        out,
        armfleet_tests::vphone::kernel_config_text(v1.profile()),
        "served as the profile says"
    );
    let (_, out, _) = sh(
        &adb,
        &hybrid,
        "zcat /proc/config.gz | grep -c -e '^CONFIG_NF_TABLES=m$' -e '^CONFIG_NFT_NAT=m$'",
    );
    assert_eq!(out, "2\n", "nf_tables = true keeps the machine's options");
    let (_, out, _) = sh(
        &adb,
        &v1,
        "getprop ro.build.version.release; getprop ro.build.version.sdk; uname -r",
    );
    assert_eq!(out, "9\n28\n4.9.206-k3s-perf+\n");
}

#[test]
fn android_network_is_netds_policy_routing_in_a_namespace_of_its_own() {
    use armfleet_tests::vphone::netd::{WLAN0_TABLE, table_number};
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let (phone, adb) = start("android14-hybrid");
    // The rules netd leaves on a phone on Wi-Fi (the fixture's), numeric tables, as iproute2
    // prints them; nothing after `32000: from all unreachable`, no main table.
    let (rc, out, err) = sh(&adb, &phone, "ip rule");
    assert_eq!(rc, 0, "{err}");
    let t = |name: &str| table_number(name).unwrap();
    let want = format!(
        "0:\tfrom all lookup local\n\
         10000:\tfrom all fwmark 0xc0000/0xd0000 lookup {ls}\n\
         11000:\tfrom all iif lo oif dummy0 uidrange 0-0 lookup {d0}\n\
         11000:\tfrom all iif lo oif wlan0 uidrange 0-0 lookup {w}\n\
         16000:\tfrom all fwmark 0x10063/0x1ffff iif lo lookup {ln}\n\
         16000:\tfrom all fwmark 0x10246/0x1ffff iif lo lookup {w}\n\
         17000:\tfrom all iif lo oif dummy0 lookup {d0}\n\
         17000:\tfrom all iif lo oif wlan0 lookup {w}\n\
         18000:\tfrom all fwmark 0/0x10000 lookup {ls}\n\
         19000:\tfrom all fwmark 0/0x10000 lookup {lg}\n\
         20000:\tfrom all fwmark 0/0x10000 lookup {ln}\n\
         23000:\tfrom all fwmark 0x246/0x1ffff iif lo lookup {w}\n\
         26000:\tfrom all fwmark 0/0x10000 iif lo lookup {wl}\n\
         31000:\tfrom all fwmark 0/0xffff iif lo lookup {w}\n\
         32000:\tfrom all unreachable\n",
        ls = t("legacy_system"),
        lg = t("legacy_network"),
        ln = t("local_network"),
        d0 = t("dummy0"),
        w = WLAN0_TABLE,
        wl = t("wlan0_local"),
    );
    let got: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    assert_eq!(got, want);
    assert_eq!(WLAN0_TABLE, 1030, "ifindex 30 + 1000");
    // The shell user's traffic finds the default network through rule 31000 and wlan0's table;
    // root's too. The main table holds only the kernel's connected route.
    let (rc, out, err) = sh(
        &adb,
        &phone,
        "ip route get 1.1.1.1; su -c 'ip route get 1.1.1.1'; ip route show table main; \
         ip route show table 1030",
    );
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "1.1.1.1 via 192.168.1.1 dev wlan0 table 1030 src 192.168.1.23 uid 2000",
            "cache",
            "1.1.1.1 via 192.168.1.1 dev wlan0 table 1030 src 192.168.1.23 uid 0",
            "cache",
            "192.168.1.0/24 dev wlan0 proto kernel scope link src 192.168.1.23",
            "default via 192.168.1.1 dev wlan0 proto static",
            "192.168.1.0/24 dev wlan0 proto static scope link",
        ],
        "{out}"
    );
    // Traffic that did not start on the phone (forwarded from a pod, say) matches no netd rule:
    // unreachable, the wall a k3s worker on Android meets. (With forwarding off, as a phone that
    // does not tether has it, the kernel says "No route to host"; once k3s turns it on, the
    // rule's own "Network is unreachable".)
    let forwarded = "ip route get 1.1.1.1 from 10.42.0.5 iif wlan0";
    let (rc, _, err) = sh(&adb, &phone, &format!("su -c '{forwarded}'"));
    assert_ne!(rc, 0);
    assert!(err.contains("No route to host"), "{err}");
    let (rc, _, err) = sh(
        &adb,
        &phone,
        &format!("su -c 'echo 1 > /proc/sys/net/ipv4/ip_forward && {forwarded}'"),
    );
    assert_ne!(rc, 0);
    assert!(err.contains("Network is unreachable"), "{err}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward,
        "the phone's sysctl changed the machine's"
    );
    // The phone's processes (shell, su, boot scripts) share one namespace that is not the
    // machine's, and adb reached them all along from the machine's.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let (_, out, _) = sh(
        &adb,
        &phone,
        "readlink /proc/self/ns/net; su -c 'readlink /proc/self/ns/net'",
    );
    let ns: Vec<&str> = out.lines().collect();
    assert_eq!(ns.len(), 2, "{out}");
    assert_eq!(ns[0], ns[1], "shell and su in different namespaces");
    assert_ne!(
        ns[0],
        host_ns.to_string_lossy(),
        "the phone uses the machine's network"
    );
    let (_, out, _) = sh(&adb, &phone, "cat /data/misc/net/rt_tables | grep wlan0");
    assert_eq!(out, "1030 wlan0\n1000000030 wlan0_local\n");
}

#[test]
fn phonectl_doctor_passes_the_android_profiles() {
    let Some((hybrid, v1, adb)) = android_phones() else {
        return;
    };
    let phonectl = armfleet_tests::util::host_bin("phonectl", "phonectl");
    for phone in [&hybrid, &v1] {
        let out = std::process::Command::new(&phonectl)
            .args([
                "--adb-port",
                &adb.port().to_string(),
                "-s",
                &phone.serial(),
                "doctor",
            ])
            .env_remove("ANDROID_SERIAL")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {text}{}",
            phone.profile().name,
            String::from_utf8_lossy(&out.stderr)
        );
        // Passing is no FAIL: both profiles run cgroup v1 controllers, which doctor warns about
        // (k3s >= 1.35 needs fail-cgroupv1=false for them, and armfleet sets it).
        assert!(text.lines().next().unwrap().ends_with(": warn"), "{text}");
        assert!(!text.contains(" fail "), "{text}");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("cgroups  warn")),
            "{text}"
        );
    }
}

#[test]
fn v2_profile_needs_a_machine_whose_cgroup2_has_the_controllers() {
    use armfleet_tests::vphone::Cgroups;
    match armfleet_tests::vphone::cgroups_supported(Cgroups::V2) {
        Ok(()) => {
            let (phone, adb) = start("android15-v2");
            let mounts = cgroup_mounts(&adb, &phone);
            assert_eq!(
                mounts,
                ["none /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0"]
            );
            let (_, out, _) = sh(&adb, &phone, "cat /sys/fs/cgroup/cgroup.controllers");
            for c in ["cpu", "cpuset", "memory", "pids"] {
                assert!(out.split_whitespace().any(|x| x == c), "{c}: {out}");
            }
        }
        Err(why) => {
            // This machine (v1 or hybrid) cannot: starting says so, once, and leaves nothing.
            let before = std::fs::read_dir(std::env::temp_dir()).unwrap().count();
            let started = std::panic::catch_unwind(|| {
                VirtualPhone::start("android15-v2", PhoneOptions::default())
            });
            let message = match started {
                Ok(_) => panic!("the v2 phone started on a machine that cannot give it v2"),
                Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
            };
            assert_eq!(message, format!("virtual phone android15-v2: {why}"));
            assert!(
                message.contains("cgroups = \"v2\" needs a cgroup2 with the cpu, cpuset, memory, pids controllers"),
                "{message}"
            );
            assert!(std::fs::read_dir(std::env::temp_dir()).unwrap().count() <= before);
        }
    }
}
