//! The public CI workflow is valid YAML and carries the cross-build matrix the project promises.

use armfleet_tests::util::workspace_root;
use serde_yaml::Value;

fn workflow() -> Value {
    let path = workspace_root().join(".github/workflows/ci.yml");
    let text = std::fs::read_to_string(&path).expect("read ci.yml");
    serde_yaml::from_str(&text).expect("ci.yml is valid YAML")
}

fn matrix_rows(wf: &Value) -> Vec<(String, String, String, bool)> {
    let include = wf["jobs"]["build"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("build job has a matrix include list");
    include
        .iter()
        .map(|row| {
            (
                row["target"].as_str().expect("target").to_owned(),
                row["packages"].as_str().expect("packages").to_owned(),
                row["command"].as_str().expect("command").to_owned(),
                row["cross"].as_bool().expect("cross"),
            )
        })
        .collect()
}

#[test]
fn matrix_builds_the_worker_target_and_both_hosts() {
    let rows = matrix_rows(&workflow());
    let has = |target: &str, package: &str, command: &str| {
        rows.iter()
            .any(|(t, p, c, _)| t == target && p.contains(package) && c == command)
    };
    assert!(
        has("aarch64-unknown-linux-musl", "-p node-runtime", "build"),
        "{rows:?}"
    );
    assert!(
        has("aarch64-linux-android", "-p node-runtime", "check"),
        "{rows:?}"
    );
    for host in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        assert!(has(host, "-p phonectl", "build"), "{host}: {rows:?}");
        assert!(has(host, "-p imagegen", "build"), "{host}: {rows:?}");
    }
    // Only foreign targets go through cross; the x86_64 host builds natively.
    for (target, _, _, cross) in &rows {
        assert_eq!(*cross, target != "x86_64-unknown-linux-gnu", "{target}");
    }
}

#[test]
fn workflow_lints_tests_and_uploads() {
    let wf = workflow();
    let jobs = wf["jobs"].as_mapping().expect("jobs");
    let steps_text = |job: &str| serde_yaml::to_string(&wf["jobs"][job]["steps"]).unwrap();
    assert!(jobs.contains_key("lint") && steps_text("lint").contains("ci/lint.sh"));
    assert!(jobs.contains_key("test") && steps_text("test").contains("scripts/test.sh"));
    assert!(steps_text("build").contains("actions/upload-artifact"));
    let lint = std::fs::read_to_string(workspace_root().join("ci/lint.sh")).unwrap();
    assert!(lint.contains("cargo fmt --all -- --check"));
    assert!(lint.contains("-D warnings"));
}

#[test]
fn ci_entry_point_is_the_readme_test_command() {
    let run = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    assert!(run.contains("scripts/test.sh"));
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    assert!(readme.contains("scripts/test.sh"));
}
