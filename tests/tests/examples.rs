//! Every example command a user is shown — in the tools' `--help` texts, README.md, PHONES.md
//! and docs/ — is one the tool accepts. The command-line definitions are the binaries' own
//! (`cli.rs`, compiled in here), so an option renamed or removed fails this test until the
//! examples say the same. The examples that need no phone, card or network (boards, cache,
//! completions, man, help) are run with the real binaries and must succeed.

#[allow(dead_code)]
#[path = "../../android/src/bin/phonectl/cli.rs"]
mod phonectl_cli;

#[allow(dead_code)]
#[path = "../../images/src/bin/imagegen/cli.rs"]
mod imagegen_cli;

use armfleet_tests::examples::examples_of;
use clap::{CommandFactory, Parser};

/// Whether clap accepts `line` as `P`; asking for help or the version counts as accepted.
fn accepted<P: Parser + Examined>(line: &str) -> Result<(), String> {
    let words = shlex::split(line).ok_or_else(|| "unbalanced quotes".to_owned())?;
    parsed(P::try_parse_from(&words)).and_then(|cli| match cli {
        Some(cli) => cli.examine(),
        None => Ok(()),
    })
}

fn parsed<T>(result: Result<T, clap::Error>) -> Result<Option<T>, String> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()),
    }
}

/// What a parsed command line still has to pass that clap leaves to the tool.
trait Examined {
    fn examine(&self) -> Result<(), String>;
}

impl Examined for phonectl_cli::Cli {
    fn examine(&self) -> Result<(), String> {
        Ok(())
    }
}

/// `imagegen BOARD [options]` reaches clap as free words: the board must be one imagegen knows
/// (`BOARD` stands for any) and the options those of a build.
impl Examined for imagegen_cli::Cli {
    fn examine(&self) -> Result<(), String> {
        let imagegen_cli::Command::Build(words) = &self.command else {
            return Ok(());
        };
        let board = words.first().map(String::as_str).unwrap_or("");
        let known = imagegen::board::Registry::builtin().unwrap();
        if board != "BOARD" && known.get(board).is_err() {
            return Err(format!(
                "`{board}` is neither a command nor a built-in board"
            ));
        }
        parsed(imagegen_cli::BuildCli::try_parse_from(
            std::iter::once("imagegen BOARD".to_owned()).chain(words[1..].iter().cloned()),
        ))
        .map(|_| ())
    }
}

/// The examples that can run on a build machine, with no phone, card or network: they only
/// read, or write into a scratch cache.
fn runnable_here(words: &[String]) -> bool {
    let rest: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    matches!(
        rest.as_slice(),
        ["boards", ..]
            | ["completions", ..]
            | ["man"]
            | ["cache"]
            | ["cache", "--json"]
            | [.., "--help"]
            | ["--version"]
    )
}

/// Runs the examples `runnable_here` picks with the real binary (in a scratch directory, with
/// a scratch cache and home); returns how many ran and the ones that failed.
fn run_the_runnable(tool: &str, lines: &[String]) -> (usize, Vec<String>) {
    let bin = armfleet_tests::util::host_bin(tool, tool);
    let scratch = tempfile::tempdir().unwrap();
    let mut ran = 0;
    let mut failed = Vec::new();
    for line in lines {
        let words = shlex::split(line).unwrap();
        if !runnable_here(&words) {
            continue;
        }
        ran += 1;
        let o = std::process::Command::new(&bin)
            .args(&words[1..])
            .current_dir(scratch.path())
            .env("HOME", scratch.path())
            .env("ARMFLEET_CACHE_DIR", scratch.path().join("cache"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        if !o.status.success() || o.stdout.is_empty() {
            failed.push(format!(
                "`{line}`: exit {:?}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    (ran, failed)
}

fn check<P: Parser + CommandFactory + Examined>(
    tool: &str,
    more_help: &[String],
) -> (usize, usize, Vec<String>) {
    let all = examples_of(tool, &P::command(), more_help);
    let mut wrong = Vec::new();
    let mut good = Vec::new();
    for example in &all {
        match accepted::<P>(&example.line) {
            Ok(()) => good.push(example.line.clone()),
            Err(why) => wrong.push(format!("{}: `{}`: {why}", example.place, example.line)),
        }
    }
    good.sort();
    good.dedup();
    let (ran, failed) = run_the_runnable(tool, &good);
    wrong.extend(failed);
    (all.len(), ran, wrong)
}

#[test]
fn every_phonectl_example_is_a_command_phonectl_accepts() {
    let (checked, ran, wrong) = check::<phonectl_cli::Cli>("phonectl", &[]);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The ones that need a phone run against the virtual one in first_five_minutes.rs.
    assert!(ran >= 1, "no phonectl example ran");
    eprintln!("{checked} phonectl examples parsed, {ran} run");
    // The help texts and PHONES.md show dozens; finding few means the extraction broke.
    assert!(checked >= 30, "only {checked} phonectl examples found");
}

#[test]
fn every_imagegen_example_is_a_command_imagegen_accepts() {
    // imagegen's top-level and per-board help are made at run time, for the boards there are.
    let generated = [
        imagegen_cli::after_help("rpi4, rpi3a"),
        imagegen_cli::build_examples("rpi4"),
    ];
    let (checked, ran, wrong) = check::<imagegen_cli::Cli>("imagegen", &generated);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(ran >= 4, "only {ran} imagegen examples ran");
    eprintln!("{checked} imagegen examples parsed, {ran} run");
    assert!(checked >= 20, "only {checked} imagegen examples found");
}

/// The checker itself: an example with an option the tool does not have is caught.
#[test]
fn a_wrong_example_is_caught() {
    assert!(accepted::<phonectl_cli::Cli>("phonectl enroll --rootfs x.tar.gz").is_ok());
    assert!(accepted::<phonectl_cli::Cli>("phonectl enroll --no-such-option").is_err());
    assert!(accepted::<imagegen_cli::Cli>("imagegen flash a.img /dev/sdX --dry-run").is_ok());
    assert!(accepted::<imagegen_cli::Cli>("imagegen flash").is_err());
    assert!(accepted::<imagegen_cli::Cli>("imagegen rpi4 --host rpi4-2").is_ok());
    assert!(accepted::<imagegen_cli::Cli>("imagegen rpi4 --hots rpi4-2").is_err());
    assert!(accepted::<imagegen_cli::Cli>("imagegen rpi5").is_err());
}
