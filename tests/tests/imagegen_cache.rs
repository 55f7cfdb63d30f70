//! `imagegen rootfs` and `imagegen cache [--prune]` through the binary, against a cache of their
//! own: a node rootfs is built once per set of inputs, found again by them, and pruning keeps the
//! build last used (and what it was made from) while it removes older builds and leftovers.

use armfleet_tests::fixtures::{FIXTURE_EPOCH, mini_base_tarball};
use armfleet_tests::util::{aarch64_bin, host_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn imagegen(cache: &Path, args: &[&str]) -> Output {
    Command::new(host_bin("imagegen", "imagegen"))
        .args(args)
        .env("ARMFLEET_CACHE_DIR", cache)
        .env("SOURCE_DATE_EPOCH", FIXTURE_EPOCH.to_string())
        .env_remove("ARMFLEET_NODE_RUNTIME")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run imagegen")
}

use armfleet_tests::util::output_text as text;

fn sha256(path: &Path) -> String {
    bootstrap::digest::sha256_file(path).unwrap()
}

/// The `rootfs` subcommand's `--json` answer for one node-runtime.
fn rootfs_json(cache: &Path, base: &Path, node_runtime: &Path) -> serde_json::Value {
    let o = imagegen(
        cache,
        &[
            "rootfs",
            "--base",
            base.to_str().unwrap(),
            "--node-runtime",
            node_runtime.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn builds(cache: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("rootfs"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn rootfs_is_built_once_per_inputs_and_prune_keeps_the_build_last_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let base = mini_base_tarball();
    let first_runtime = aarch64_bin("node-runtime");
    // Another node-runtime, as after an upgrade: the same program with a different hash.
    let second_runtime = tmp.path().join("node-runtime-next");
    let mut bytes = std::fs::read(&first_runtime).unwrap();
    bytes.extend_from_slice(b"\0next build");
    std::fs::write(&second_runtime, bytes).unwrap();

    // An empty cache says so.
    let o = imagegen(&cache, &["cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("empty"),
        "{}",
        text(&o)
    );

    // Built, copied out, and the copy is the build.
    let out = tmp.path().join("node-rootfs.tar.gz");
    let o = imagegen(
        &cache,
        &[
            "rootfs",
            "--base",
            base.to_str().unwrap(),
            "--node-runtime",
            first_runtime.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("(built)"), "{said}");
    assert!(
        said.contains(&format!("sha256:   {}", sha256(&out))),
        "{said}"
    );
    assert!(said.contains("next:     phonectl enroll"), "{said}");
    assert_eq!(builds(&cache).len(), 1);

    // The same inputs again: the cache answers, nothing new is built.
    let again = rootfs_json(&cache, &base, &first_runtime);
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(
        again["manifest"]["tarball"]["sha256"].as_str().unwrap(),
        sha256(&out)
    );
    assert_eq!(builds(&cache).len(), 1);

    // A new node-runtime is a new build beside the first.
    let second = rootfs_json(&cache, &base, &second_runtime);
    assert_eq!(second["cached"], false, "{second}");
    assert_ne!(
        second["manifest"]["tarball"]["sha256"],
        again["manifest"]["tarball"]["sha256"]
    );
    assert_eq!(builds(&cache).len(), 2);

    // What an interrupted build leaves: a directory without a finished manifest.
    let partial = cache
        .join("rootfs")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("rootfs.tar.gz.tmp"), vec![0u8; 4096]).unwrap();

    // Back to the first node-runtime: that build is now the one last used.
    let reused = rootfs_json(&cache, &base, &first_runtime);
    assert_eq!(reused["cached"], true, "{reused}");
    let kept_dir = Path::new(reused["tarball"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let dropped_dir = Path::new(second["tarball"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();

    let o = imagegen(&cache, &["cache", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    let kept = |p: &Path| {
        listed
            .iter()
            .find(|e| Path::new(e["path"].as_str().unwrap()) == p)
            .unwrap_or_else(|| panic!("{} not listed: {listed:?}", p.display()))["kept_by_prune"]
            .clone()
    };
    assert_eq!(kept(&kept_dir), true);
    assert_eq!(kept(&dropped_dir), false);
    assert_eq!(kept(&partial), false);
    let bases: Vec<_> = listed.iter().filter(|e| e["kind"] == "base").collect();
    assert!(
        !bases.is_empty() && bases.iter().all(|e| e["kept_by_prune"] == true),
        "the base of the kept build stays: {listed:?}"
    );
    // The table says the same for a person: sizes, and a star on what --prune removes.
    let o = imagegen(&cache, &["cache"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("would go with --prune"), "{table}");
    let starred: Vec<&str> = table.lines().filter(|l| l.contains(" * ")).collect();
    assert_eq!(starred.len(), 2, "{table}");

    let o = imagegen(&cache, &["cache", "--prune"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.lines().last().unwrap().starts_with("freed "), "{said}");
    assert_eq!(builds(&cache), vec![kept_dir.clone()], "{said}");

    // What pruning kept is still a cache hit, byte for byte.
    let after = rootfs_json(&cache, &base, &first_runtime);
    assert_eq!(after["cached"], true, "{after}");
    assert_eq!(
        after["manifest"]["tarball"]["sha256"].as_str().unwrap(),
        sha256(&out)
    );
}

#[test]
fn rootfs_errors_are_one_line_and_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("node-rootfs.tar.gz");
    let missing = tmp.path().join("no-such-base.tar");
    let o = imagegen(
        &cache,
        &[
            "rootfs",
            "--base",
            missing.to_str().unwrap(),
            "--node-runtime",
            aarch64_bin("node-runtime").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("imagegen: "), "{err}");
    assert!(lines[0].contains("no-such-base.tar"), "{err}");
    assert!(!out.exists());

    // A node-runtime that is not a file: named, and nothing built.
    let o = imagegen(
        &cache,
        &[
            "rootfs",
            "--base",
            mini_base_tarball().to_str().unwrap(),
            "--node-runtime",
            tmp.path().join("nowhere").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nowhere"),
        "{}",
        text(&o)
    );
    assert!(builds(&cache).is_empty());
}

/// Two tools building the same node rootfs at once (a `phonectl enroll` and an `imagegen rpi4`
/// started together share this path): one builds, the other waits on the build directory's lock
/// and finds the result; one build directory, one tarball, both answers the same.
#[test]
fn two_builds_at_once_make_one_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let base = mini_base_tarball();
    let runtime = aarch64_bin("node-runtime");
    let start = || {
        Command::new(host_bin("imagegen", "imagegen"))
            .args(["rootfs", "--json", "--base"])
            .arg(&base)
            .arg("--node-runtime")
            .arg(&runtime)
            .env("ARMFLEET_CACHE_DIR", &cache)
            .env("SOURCE_DATE_EPOCH", FIXTURE_EPOCH.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let answers: Vec<serde_json::Value> = [first, second]
        .into_iter()
        .map(|child| {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    assert_eq!(builds(&cache).len(), 1);
    assert_eq!(answers[0]["tarball"], answers[1]["tarball"]);
    assert_eq!(
        answers[0]["manifest"]["tarball"]["sha256"],
        answers[1]["manifest"]["tarball"]["sha256"]
    );
    let cached: Vec<bool> = answers
        .iter()
        .map(|a| a["cached"].as_bool().unwrap())
        .collect();
    assert!(cached.contains(&false), "one of them built it: {cached:?}");
    let bytes = std::fs::read(answers[0]["tarball"].as_str().unwrap()).unwrap();
    assert_eq!(
        bootstrap::digest::sha256_hex(&bytes),
        answers[0]["manifest"]["tarball"]["sha256"]
            .as_str()
            .unwrap(),
        "the tarball on disk is whole"
    );
}
