//! SOPS/age secrets end to end: each test makes a fresh age key with the real `age-keygen`,
//! encrypts a YAML file for it with the real `sops`, points a topology's `{ sops = { path, key } }`
//! at it, and runs the real `imagegen` and `phonectl`. The decrypted values must land where they
//! belong (the image's token file, its wpa_supplicant config, the phone's token file) and nowhere
//! else: not in the tools' output, not in their scratch space or cache, not on sops' command line.

use armfleet_tests::fixtures::{mini_node_rootfs, offline_topology};
use armfleet_tests::util::{aarch64_bin, cache_dir, host_bin, workspace_root};
use armfleet_tests::vphone::{AdbServer, PhoneOptions, VirtualPhone};
use sha2::Digest;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The default topology's token and Wi-Fi passphrase sources, which the tests replace.
const TOKEN_LINE: &str = "token = { env = \"K3S_TOKEN\" }";
const PSK_SOURCE: &str = "passphrase = { env = \"ARMFLEET_WIFI_INFRA_PSK\" }";

/// Variables through which sops could find an age key other than the one a test means.
const AGE_KEY_VARS: &[&str] = &[
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_CMD",
    "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
    "XDG_CONFIG_HOME",
];

/// The real sops on PATH; a missing tool fails the test (CI must run these), saying how to get it.
fn real_sops() -> PathBuf {
    for tool in ["age-keygen", "age"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` is not installed: run scripts/setup.sh (it installs Debian's age)"
        );
    }
    let o = Command::new("sops")
        .args(["--disable-version-check", "--version"])
        .output();
    let version = match &o {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => panic!("`sops` is not installed: run scripts/setup.sh (it installs sops 3.11.0)"),
    };
    assert!(version.starts_with("sops 3."), "unexpected sops: {version}");
    let which = Command::new("sh")
        .args(["-c", "command -v sops"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&which.stdout).trim())
}

/// A value no other test and no file on this machine holds.
fn fresh(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let h = sha2::Sha256::digest(format!("{tag} {nanos} {}", std::process::id()));
    format!("{tag}-{}", &hex::encode(h)[..32])
}

use armfleet_tests::util::output_text as text;

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An age key and the folder holding the lab's secrets and topology.
struct Lab {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    recipient: String,
}

impl Lab {
    fn new() -> Lab {
        real_sops();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("age-key.txt");
        run(Command::new("age-keygen").arg("-o").arg(&key_file));
        let recipient = run(Command::new("age-keygen").arg("-y").arg(&key_file))
            .trim()
            .to_owned();
        assert!(recipient.starts_with("age1"), "{recipient}");
        Lab {
            dir,
            key_file,
            recipient,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Another age key, which the files are not encrypted for.
    fn other_key(&self) -> PathBuf {
        let p = self.path().join("other-age-key.txt");
        if !p.exists() {
            run(Command::new("age-keygen").arg("-o").arg(&p));
        }
        p
    }

    /// Writes `yaml` as `name` and encrypts it in place with the real sops for this lab's key.
    fn encrypt(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, yaml).unwrap();
        run(Command::new("sops")
            .current_dir(self.path())
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .args(["--encrypt", "--age", &self.recipient, "--in-place"])
            .arg(&p));
        let enc = std::fs::read_to_string(&p).unwrap();
        assert!(enc.contains("ENC[AES256_GCM,") && enc.contains(&self.recipient));
        p
    }

    /// The offline lab topology with the join token (and the Wi-Fi passphrase, when given) from
    /// these sources, plus `extra` TOML at the end; written next to the secrets.
    fn topology(&self, token: &str, psk: Option<&str>, extra: &str) -> PathBuf {
        let base = std::fs::read_to_string(offline_topology()).unwrap();
        assert!(base.contains(TOKEN_LINE) && base.contains(PSK_SOURCE));
        let mut t = base.replace(TOKEN_LINE, &format!("token = {token}"));
        if let Some(psk) = psk {
            t = t.replace(PSK_SOURCE, &format!("passphrase = {psk}"));
        }
        t.push_str(extra);
        let p = self.path().join("topology.toml");
        std::fs::write(&p, t).unwrap();
        p
    }

    /// The tool with this lab's key in SOPS_AGE_KEY_FILE and nothing else that sops could use.
    fn tool(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        for v in AGE_KEY_VARS {
            c.env_remove(v);
        }
        c.env("SOPS_AGE_KEY_FILE", &self.key_file)
            .env("HOME", self.path().join("no-home"))
            .env_remove("K3S_TOKEN")
            .env_remove("ARMFLEET_TOPOLOGY")
            .env_remove("ARMFLEET_WIFI_INFRA_PSK")
            .stdin(std::process::Stdio::null());
        c
    }

    /// `imagegen BOARD --topology … --rootfs (mini) -o OUT` with the shared boot-asset cache.
    fn imagegen(&self, board: &str, topology: &Path, out: &Path) -> Command {
        let mut c = self.tool(&host_bin("imagegen", "imagegen"));
        c.args([board, "--no-ca-check", "--rootfs"])
            .arg(rootfs())
            .arg("--topology")
            .arg(topology)
            .arg("-o")
            .arg(out)
            .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
            .env("SOURCE_DATE_EPOCH", "1704067200");
        c
    }
}

/// The mini node rootfs, looked up once per test process (each lookup hashes its inputs).
fn rootfs() -> &'static Path {
    static ROOTFS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOTFS.get_or_init(mini_node_rootfs)
}

fn sops_source(path: &Path, key: &str) -> String {
    format!(
        "{{ sops = {{ path = \"{}\", key = '{key}' }} }}",
        path.display()
    )
}

/// The content of `path` in the image's root (ext4, second partition), read with debugfs.
fn image_file(image: &Path, path: &str) -> Option<(String, u32)> {
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(image))).unwrap();
    let root = &json["partitiontable"]["partitions"][1];
    let offset = root["start"].as_u64().unwrap() * 512;
    // e2fsprogs opens `FILE?offset=N` as the filesystem starting N bytes into FILE.
    let fs = format!("{}?offset={offset}", image.display());
    let stat = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(&fs));
    let mode = stat.split("Mode:").nth(1)?.split_whitespace().next()?;
    let mode = u32::from_str_radix(mode, 8).ok()?;
    let body = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&fs));
    Some((body, mode))
}

/// Regular files under `dir` whose bytes contain `needle` (read in chunks: caches hold big debs).
/// Other filesystems mounted below `dir` (a phone's /proc, its mounted data image) are skipped.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().dev();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                if e.metadata().is_ok_and(|m| m.dev() == dev) {
                    stack.push(e.path());
                }
            } else if t.is_file() && file_contains(&e.path(), needle) {
                found.push(e.path());
            }
        }
    }
    found
}

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().min(needle.len() - 1);
        carry.drain(..carry.len() - keep);
    }
}

/// A `sops` first on PATH that records how it was called (arguments, where its stdout goes, the
/// version-check switch) in `log`, then runs the real one.
fn recording_sops(dir: &Path, log: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\nstdout=$(readlink /proc/$$/fd/1)\n{{\n  for a in \"$@\"; do printf 'arg=%s\\n' \"$a\"; done\n  printf 'stdout=%s\\n' \"$stdout\"\n  printf 'version_check_off=%s\\n' \"$SOPS_DISABLE_VERSION_CHECK\"\n  echo end\n}} >>'{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real_sops().display()
    );
    let p = bin.join("sops");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// The token from a sops file is baked into the rpi4 image, and is nowhere else: not in
/// imagegen's output (even at trace level), not in its scratch space, cache or output folder,
/// not on sops' command line (it arrives through a pipe).
#[test]
fn secrets_imagegen_rpi4_token_from_sops_only_in_the_image() {
    let lab = Lab::new();
    let token = fresh("sopstoken");
    let secrets = lab.encrypt(
        "secrets/lab.sops.yaml",
        &format!("k3s_token: {token}\nother: unrelated\n"),
    );
    let topo = lab.topology(&sops_source(&secrets, "k3s_token"), None, "");
    let out = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let log = lab.path().join("sops-calls.log");
    let path = recording_sops(lab.path(), &log);
    let image = out.path().join("rpi4-2.img");
    let t0 = std::time::Instant::now();
    let o = lab
        .imagegen("rpi4", &topo, &image)
        .env("PATH", &path)
        .env("TMPDIR", tmp.path())
        .env("ARMFLEET_CACHE_DIR", cache.path())
        .env("IMAGEGEN_LOG", "trace")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    println!("imagegen rpi4 with a fresh cache: {:?}", t0.elapsed());
    let said = text(&o);
    assert!(
        !said.contains(&token),
        "the token is in imagegen's output: {said}"
    );
    assert!(said.contains("token:    baked in"), "{said}");

    let (body, mode) = image_file(&image, "/etc/armfleet/token").expect("token file");
    assert_eq!(body, format!("{token}\n"), "exactly the token");
    assert_eq!(mode, 0o600);

    // sops was asked for one key, and its stdout was a pipe, not a file.
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(!calls.contains(&token), "{calls}");
    let first: Vec<&str> = calls.split("end\n").next().unwrap().lines().collect();
    assert_eq!(
        first[..4],
        [
            "arg=--decrypt",
            "arg=--extract",
            "arg=[\"k3s_token\"]",
            &format!("arg={}", secrets.display()) as &str
        ],
        "{calls}"
    );
    assert!(first[4].starts_with("stdout=pipe:"), "{calls}");
    assert_eq!(first[5], "version_check_off=1", "{calls}");

    // Nowhere on disk but in the image: imagegen's scratch space, cache and output folder.
    let needle = token.as_bytes();
    for dir in [tmp.path(), cache.path()] {
        let leaks = files_containing(dir, needle);
        assert!(leaks.is_empty(), "the token is in {leaks:?}");
    }
    let leaks: Vec<PathBuf> = files_containing(out.path(), needle)
        .into_iter()
        .filter(|p| p != &image)
        .collect();
    assert!(leaks.is_empty(), "the token is in {leaks:?}");
}

/// The Wi-Fi host's passphrase comes from a nested key of the sops file, the token from a
/// top-level one of the same file: both land in the rpi3a image.
#[test]
fn secrets_imagegen_rpi3a_wifi_passphrase_from_a_nested_sops_key() {
    let lab = Lab::new();
    let token = fresh("sopstoken");
    let psk = fresh("psk");
    let secrets = lab.encrypt(
        "secrets/lab.sops.yaml",
        &format!("k3s_token: {token}\nwifi:\n  armlab-infra: {psk}\n  iot: not-this-one\n"),
    );
    let topo = lab.topology(
        &sops_source(&secrets, "k3s_token"),
        Some(&sops_source(&secrets, r#"["wifi"]["armlab-infra"]"#)),
        "",
    );
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("ctl.img");
    let o = lab
        .imagegen("rpi3a", &topo, &image)
        .args(["--host", "rpi3a-ctl"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(!said.contains(&psk) && !said.contains(&token), "{said}");
    let (wpa, mode) =
        image_file(&image, "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf").expect("wpa conf");
    assert_eq!(mode, 0o600);
    assert!(
        wpa.contains("ssid=\"armlab-infra\"") && wpa.contains(&format!("psk=\"{psk}\"")),
        "{wpa}"
    );
    let (body, _) = image_file(&image, "/etc/armfleet/token").expect("token file");
    assert_eq!(body, format!("{token}\n"));
}

/// `phonectl enroll` takes the topology's token from a nested key of a sops file, with the age
/// key in its default place (~/.config/sops/age/keys.txt), and the phone's token file holds
/// exactly it; no other file on the phone, and nothing phonectl prints, does.
#[test]
fn secrets_phonectl_enroll_token_from_sops() {
    let lab = Lab::new();
    let token = fresh("sopstoken");
    let secrets = lab.encrypt(
        "secrets/lab.sops.yaml",
        &format!("lab:\n  k3s_token: {token}\n"),
    );
    let phone_entry = "\n[[phone]]\nname = \"phone-sops\"\nvlan = \"INFRA\"\naddress = \"dhcp\"\niface = \"lo\"\ndata_image_mib = 256\n";
    let topo = lab.topology(
        &sops_source(&secrets, r#"["lab"]["k3s_token"]"#),
        None,
        phone_entry,
    );
    // No k3s pin: the agent is the rootfs's stand-in, and node-runtime fetches nothing (the
    // mini rootfs has no CA certificates for an HTTP client).
    let unpinned: String = std::fs::read_to_string(&topo)
        .unwrap()
        .lines()
        .filter(|l| {
            !["version = ", "sha256 = ", "url = "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&topo, unpinned).unwrap();
    let home = lab.path().join("home");
    let keys = home.join(".config/sops/age/keys.txt");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    std::fs::copy(&lab.key_file, &keys).unwrap();

    let adb = AdbServer::start();
    let phone = VirtualPhone::start("rooted-magisk", PhoneOptions::default());
    adb.connect(&phone);
    let o = lab
        .tool(&host_bin("phonectl", "phonectl"))
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("HOME", &home)
        .env("NO_COLOR", "1")
        .env_remove("ANDROID_SERIAL")
        .env_remove("ANDROID_ADB_SERVER_PORT")
        .arg("--adb-port")
        .arg(adb.port().to_string())
        .args(["-s", &phone.serial(), "enroll", "--force", "--wait", "60"])
        .arg("--topology")
        .arg(&topo)
        .args(["--name", "phone-sops", "--rootfs"])
        .arg(rootfs())
        .arg("--node-runtime")
        .arg(aarch64_bin("node-runtime"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), phone.logs());
    assert!(!text(&o).contains(&token), "the token leaked: {}", text(&o));
    let token_file = phone.root().join("data/armfleet/rootfs/etc/armfleet/token");
    // phonectl writes the token without a newline (k3s trims either way): exactly the token.
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let started = std::time::Instant::now();
    let leaks: Vec<PathBuf> = files_containing(phone.root(), token.as_bytes())
        .into_iter()
        .filter(|p| p != &token_file)
        .collect();
    assert!(leaks.is_empty(), "the token is also in {leaks:?}");
    println!("searched the phone's files in {:?}", started.elapsed());
}

/// One failed run: exit 2, exactly one line on stderr holding every needle, no token, no image.
fn assert_one_line_error(o: &Output, needles: &[&str], token: &str, out_dir: &Path) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {}", text(o));
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!text(o).contains(token), "the token leaked: {}", text(o));
    let left: Vec<String> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".img"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    err
}

/// Every way a sops source fails gives one line naming the file, the key and what to do, and
/// no image: the wrong age key, no age key, a key the file lacks, a tampered value, a tampered
/// file (MAC), a file never encrypted; the same for a Wi-Fi passphrase and for phonectl.
#[test]
fn secrets_errors_wrong_or_no_age_key_missing_key_tampered_file() {
    let lab = Lab::new();
    let token = fresh("sopstoken");
    let psk = fresh("psk");
    let secrets = lab.encrypt(
        "secrets/lab.sops.yaml",
        &format!("k3s_token: {token}\nwifi:\n  armlab-infra: {psk}\n"),
    );
    let file = secrets.display().to_string();
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("x.img");
    let age_help = ["SOPS_AGE_KEY_FILE", "~/.config/sops/age/keys.txt"];
    let token_topo = |src: &Path, key: &str| lab.topology(&sops_source(src, key), None, "");

    // The wrong age key: the file's recipient is named.
    let topo = token_topo(&secrets, "k3s_token");
    let o = lab
        .imagegen("rpi4", &topo, &image)
        .env("SOPS_AGE_KEY_FILE", lab.other_key())
        .output()
        .unwrap();
    let err = assert_one_line_error(
        &o,
        &[
            &file,
            "key k3s_token",
            &lab.recipient,
            "none of your age keys",
        ],
        &token,
        out.path(),
    );
    for n in age_help {
        assert!(err.contains(n), "{err}");
    }

    // No age key at all: SOPS_AGE_KEY_FILE unset, HOME empty.
    let empty_home = lab.path().join("empty-home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let o = lab
        .imagegen("rpi4", &topo, &image)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("HOME", &empty_home)
        .output()
        .unwrap();
    let err = assert_one_line_error(
        &o,
        &[&file, "key k3s_token", "no age key found"],
        &token,
        out.path(),
    );
    for n in age_help {
        assert!(err.contains(n), "{err}");
    }

    // SOPS_AGE_KEY_FILE naming a file that is not there.
    let o = lab
        .imagegen("rpi4", &topo, &image)
        .env("SOPS_AGE_KEY_FILE", lab.path().join("no-such-key.txt"))
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        &[
            &file,
            "key k3s_token",
            "no-such-key.txt",
            "cannot be read",
            "SOPS_AGE_KEY_FILE",
        ],
        &token,
        out.path(),
    );

    // A key the file does not have, top-level and nested.
    for (key, component) in [
        ("k3s_tokn", "component ['k3s_tokn'] not found"),
        (r#"["wifi"]["iot"]"#, "component ['iot'] not found"),
    ] {
        let topo = token_topo(&secrets, key);
        let o = lab.imagegen("rpi4", &topo, &image).output().unwrap();
        assert_one_line_error(
            &o,
            &[
                &file,
                &format!("has no key {key}"),
                component,
                &format!("sops edit {file}"),
            ],
            &token,
            out.path(),
        );
    }

    // The token's ciphertext edited: one base64 character of its data changed.
    let enc = std::fs::read_to_string(&secrets).unwrap();
    let at = enc.find("k3s_token: ENC[AES256_GCM,data:").unwrap()
        + "k3s_token: ENC[AES256_GCM,data:".len();
    let flipped = if enc.as_bytes()[at] == b'A' { "B" } else { "A" };
    let tampered = lab.path().join("secrets/tampered.sops.yaml");
    std::fs::write(
        &tampered,
        format!("{}{flipped}{}", &enc[..at], &enc[at + 1..]),
    )
    .unwrap();
    let o = lab
        .imagegen("rpi4", &token_topo(&tampered, "k3s_token"), &image)
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        &[
            &tampered.display().to_string(),
            "key k3s_token",
            "modified after it was encrypted",
            "restore it from Git",
        ],
        &token,
        out.path(),
    );

    // A value added in clear after encryption: the MAC no longer matches.
    let added = lab.path().join("secrets/added.sops.yaml");
    std::fs::write(
        &added,
        enc.replacen("wifi:\n", "extra_unencrypted: x\nwifi:\n", 1),
    )
    .unwrap();
    let o = lab
        .imagegen("rpi4", &token_topo(&added, "k3s_token"), &image)
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        &[
            &added.display().to_string(),
            "key k3s_token",
            "MAC",
            "modified after it was encrypted",
        ],
        &token,
        out.path(),
    );

    // A file that was never encrypted.
    let plain = lab.path().join("secrets/plain.yaml");
    std::fs::write(&plain, format!("k3s_token: {token}\n")).unwrap();
    let o = lab
        .imagegen("rpi4", &token_topo(&plain, "k3s_token"), &image)
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        &[
            &plain.display().to_string(),
            "key k3s_token",
            "not SOPS-encrypted",
            "sops --encrypt --in-place",
        ],
        &token,
        out.path(),
    );

    // The Wi-Fi passphrase with the wrong age key: the host and the network are named too.
    let topo = lab.topology(
        &sops_source(&secrets, "k3s_token"),
        Some(&sops_source(&secrets, r#"["wifi"]["armlab-infra"]"#)),
        "",
    );
    let o = lab
        .imagegen("rpi3a", &topo, &image)
        .args(["--host", "rpi3a-ctl"])
        .env("SOPS_AGE_KEY_FILE", lab.other_key())
        .output()
        .unwrap();
    let err = assert_one_line_error(
        &o,
        &[
            "host rpi3a-ctl",
            "armlab-infra",
            &file,
            r#"key ["wifi"]["armlab-infra"]"#,
            "SOPS_AGE_KEY_FILE",
        ],
        &token,
        out.path(),
    );
    assert!(!err.contains(&psk), "{err}");

    // phonectl says the same before it looks for a phone.
    let topo = token_topo(&secrets, "k3s_token");
    let o = lab
        .tool(&host_bin("phonectl", "phonectl"))
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("HOME", &empty_home)
        .args(["enroll", "--name", "phone-9", "--topology"])
        .arg(&topo)
        .arg("--rootfs")
        .arg(rootfs())
        .output()
        .unwrap();
    let err = assert_one_line_error(
        &o,
        &[&file, "key k3s_token", "no age key found"],
        &token,
        out.path(),
    );
    for n in age_help {
        assert!(err.contains(n), "{err}");
    }
}

/// A malformed key path is a topology error with its line, before sops is ever run.
#[test]
fn secrets_topology_key_path_typo_names_its_line() {
    let lab = Lab::new();
    let secrets = lab.encrypt("secrets/lab.sops.yaml", "lab:\n  k3s_token: x\n");
    let topo = lab.topology(&sops_source(&secrets, r#"["lab"][k3s_token]"#), None, "");
    let text_of = std::fs::read_to_string(&topo).unwrap();
    let line = text_of
        .lines()
        .position(|l| l.contains("[k3s_token]"))
        .unwrap()
        + 1;
    let out = tempfile::tempdir().unwrap();
    let o = lab
        .imagegen("rpi4", &topo, &out.path().join("x.img"))
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        &[
            &format!("topology.toml:{line}: key `cluster.token.sops.key`"),
            r#"["lab"]["k3s_token"]"#,
        ],
        "never-a-token",
        out.path(),
    );
}

/// docs/secrets.md's walkthrough: its `sh` blocks, run as written by bash in a fresh lab folder
/// with a fresh HOME (the age key goes to ~/.config/sops/age/keys.txt, an armfleet clone is at
/// ~/armfleet), encrypt the doc's token and build an image holding it. The `imagegen` they run
/// is this workspace's, given the mini node rootfs and no CA check (the lab's server is not
/// reachable from a test).
#[test]
fn secrets_docs_walkthrough_encrypts_a_token_and_builds_an_image() {
    real_sops();
    let doc = std::fs::read_to_string(workspace_root().join("docs/secrets.md")).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    let mut in_sh = false;
    for line in doc.lines() {
        if in_sh {
            if line == "```" {
                in_sh = false;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line == "```sh" {
            in_sh = true;
        }
    }
    for step in [
        "age-keygen -o ~/.config/sops/age/keys.txt",
        "sops --encrypt --in-place secrets/lab.sops.yaml",
        "imagegen rpi4 --topology lab.toml",
    ] {
        assert!(
            script.contains(step),
            "the walkthrough lost {step:?}:\n{script}"
        );
    }
    let token = doc
        .lines()
        .find_map(|l| l.strip_prefix("k3s_token: "))
        .expect("the doc's secrets file has a k3s_token")
        .to_owned();

    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(workspace_root(), home.join("armfleet")).unwrap();
    let lab = work.path().join("lab");
    std::fs::create_dir_all(&lab).unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("imagegen");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --rootfs '{}' --no-ca-check\n",
            host_bin("imagegen", "imagegen").display(),
            rootfs().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cmd = Command::new("bash");
    for v in AGE_KEY_VARS {
        cmd.env_remove(v);
    }
    let o = cmd
        .arg("-c")
        .arg(&script)
        .current_dir(&lab)
        .env("HOME", &home)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("ARMFLEET_CACHE_DIR", cache_dir("imagegen-cache"))
        .env("SOURCE_DATE_EPOCH", "1704067200")
        .env_remove("K3S_TOKEN")
        .env_remove("ARMFLEET_TOPOLOGY")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "the walkthrough failed: {}", text(&o));
    assert!(
        !text(&o).contains(&token),
        "the token was printed: {}",
        text(&o)
    );
    let enc = std::fs::read_to_string(lab.join("secrets/lab.sops.yaml")).unwrap();
    assert!(
        enc.contains("ENC[AES256_GCM,") && !enc.contains(&token),
        "{enc}"
    );
    assert!(home.join(".config/sops/age/keys.txt").is_file());
    let (body, _) = image_file(&lab.join("rpi4-2.img"), "/etc/armfleet/token").expect("token");
    assert_eq!(body, format!("{token}\n"));
}
