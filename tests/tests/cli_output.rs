//! What the three tools do with their standard output, shared through armfleet-cli.

use armfleet_tests::util::host_bin;
use std::process::{Command, Stdio};

/// Runs `bin args` with its stdout a pipe whose reading end is already closed, as in
/// `phonectl completions bash | head -0`: every write fails with EPIPE.
fn run_into_a_closed_pipe(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// A reader that stops early (`| head`) is not an error: the tool exits 0 quietly, never with a
/// panic about "failed printing to stdout".
#[test]
fn a_closed_pipe_on_stdout_ends_each_tool_quietly_and_successfully() {
    let cases: [(&str, &str, &[&str]); 4] = [
        ("phonectl", "phonectl", &["completions", "bash"]),
        ("imagegen", "imagegen", &["boards"]),
        ("imagegen", "imagegen", &["completions", "bash"]),
        ("node-runtime", "node-runtime", &["unit"]),
    ];
    for (package, bin, args) in cases {
        let out = run_into_a_closed_pipe(&host_bin(package, bin), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{bin} {args:?} into a closed pipe: {:?}, stderr: {stderr}",
            out.status
        );
        assert!(
            stderr.trim().is_empty(),
            "{bin} {args:?} into a closed pipe said: {stderr}"
        );
    }
}
