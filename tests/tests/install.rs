//! `scripts/install.sh`, the README's install step, into a fresh prefix: the tools, the aarch64
//! node-runtime beside them (where both look first), completions and man pages; the installed
//! imagegen builds a node rootfs with the installed node-runtime without being told where it is.

use armfleet_tests::fixtures::{FIXTURE_EPOCH, mini_base_tarball};
use armfleet_tests::util::{target_dir, workspace_root};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use armfleet_tests::util::output_text as text;

fn install(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(workspace_root().join("scripts/install.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("PATH", std::env::var("PATH").unwrap())
        .output()
        .expect("run scripts/install.sh")
}

#[test]
fn install_puts_working_tools_completions_and_man_pages_under_the_prefix() {
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    let o = install(&["--prefix", p.to_str().unwrap(), "--profile", "dev"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("is not on your PATH"),
        "the prefix is not on PATH, and the script says how to add it: {}",
        text(&o)
    );

    for tool in ["phonectl", "imagegen", "node-runtime-aarch64"] {
        let path = p.join("bin").join(tool);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{tool}");
    }
    // node-runtime-aarch64 is the aarch64 ELF (e_machine 183), not the host's.
    let elf = std::fs::read(p.join("bin/node-runtime-aarch64")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183);
    // No temporary files left beside what was installed.
    for dir in ["bin", "share/man/man1", "share/bash-completion/completions"] {
        for entry in std::fs::read_dir(p.join(dir)).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                !name.to_string_lossy().starts_with('.'),
                "left over in {dir}: {name:?}"
            );
        }
    }

    for tool in ["phonectl", "imagegen"] {
        let o = Command::new(p.join("bin").join(tool))
            .arg("--version")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && said.starts_with(&format!("{tool} 0.")),
            "{said}"
        );
        // bash loads the completion and binds it to the tool.
        let script = p.join("share/bash-completion/completions").join(tool);
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && complete -p {tool}",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            p.join(format!("share/zsh/site-functions/_{tool}"))
                .is_file()
        );
        assert!(
            p.join(format!("share/fish/vendor_completions.d/{tool}.fish"))
                .is_file()
        );
        let page = std::fs::read_to_string(p.join(format!("share/man/man1/{tool}.1"))).unwrap();
        assert!(page.contains(".TH"), "{tool}.1 is a man page");
    }
    for page in ["phonectl-enroll.1", "imagegen-flash.1"] {
        assert!(p.join("share/man/man1").join(page).is_file(), "{page}");
    }

    // The installed imagegen finds the installed node-runtime on its own.
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(p.join("bin/imagegen"))
        .args(["rootfs", "--json", "--base"])
        .arg(mini_base_tarball())
        .env("ARMFLEET_CACHE_DIR", cache.path())
        .env("SOURCE_DATE_EPOCH", FIXTURE_EPOCH.to_string())
        .env_remove("ARMFLEET_NODE_RUNTIME")
        .env("HOME", cache.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let built: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        built["manifest"]["inputs"]["node_runtime"]["sha256"]
            .as_str()
            .unwrap(),
        bootstrap::digest::sha256_file(&p.join("bin/node-runtime-aarch64")).unwrap()
    );
}

#[test]
fn install_refuses_a_wrong_argument_and_installs_nothing() {
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path().join("pfx");
    for args in [
        vec!["--profile", "fast", "--prefix", p.to_str().unwrap()],
        vec!["--prefix"],
        vec!["--frobnicate"],
    ] {
        let o = install(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("install: "), "{err}");
    }
    assert!(!Path::new(&p).exists());
}
