//! The example commands a user is shown: in a tool's help texts (its `after_help` blocks) and in
//! the Markdown docs (README.md, PHONES.md, docs/). The examples tests check each against the
//! tool's own command line and run the ones that can run on a build machine.

use crate::util::workspace_root;

/// One example: where it is shown and the command line.
#[derive(Debug, Clone)]
pub struct Example {
    /// `phonectl enroll --help`, `README.md`, …
    pub place: String,
    /// The command as a user would type it, comments and optional brackets removed.
    pub line: String,
}

impl Example {
    /// The line as argv (shell quoting undone).
    pub fn words(&self) -> Vec<String> {
        shlex::split(&self.line).unwrap_or_default()
    }
}

/// The command lines in `text` that start with `tool`: in help texts the indented lines (an
/// unindented one is prose), in Markdown those inside fenced code blocks. A `# comment` is
/// dropped, `[--opt]` (optional, as docs write it) counts as given, and a pipe, `&&` or a
/// redirection ends the command.
pub fn command_lines(text: &str, tool: &str, markdown: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = !markdown;
    for line in text.lines() {
        let trimmed = line.trim();
        if markdown && trimmed.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code || (!markdown && !line.starts_with(' ')) {
            continue;
        }
        let command = trimmed.trim_start_matches("$ ");
        if !command.starts_with(&format!("{tool} ")) && command != tool {
            continue;
        }
        let mut command = command;
        for end in [" # ", " | ", " && ", " > "] {
            command = command.split(end).next().unwrap();
        }
        found.push(command.replace(['[', ']'], "").trim().to_owned());
    }
    found
}

/// Every example of `tool`: from the after-help texts of `cmd` and its subcommands, from
/// `more_help` (help made at run time), then from the docs.
pub fn examples_of(tool: &str, cmd: &clap::Command, more_help: &[String]) -> Vec<Example> {
    let mut help = Vec::new();
    help_texts(cmd, tool, &mut help);
    help.extend(
        more_help
            .iter()
            .map(|h| (format!("{tool} --help"), h.clone())),
    );
    let mut found = Vec::new();
    for (markdown, sources) in [(false, help), (true, docs())] {
        for (place, text) in sources {
            found.extend(
                command_lines(&text, tool, markdown)
                    .into_iter()
                    .map(|line| Example {
                        place: place.clone(),
                        line,
                    }),
            );
        }
    }
    found
}

fn help_texts(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
    for help in [cmd.get_after_help(), cmd.get_after_long_help()]
        .into_iter()
        .flatten()
    {
        out.push((format!("{path} --help"), help.to_string()));
    }
    for sub in cmd.get_subcommands() {
        help_texts(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

/// README.md, PHONES.md and docs/*.md, with their paths relative to the checkout.
fn docs() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md"), root.join("PHONES.md")];
    let mut more: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    files.extend(more);
    files
        .into_iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_blocks_and_indented_help_lines_only() {
        let md = "imagegen prose\n```sh\nimagegen flash a.img [--yes]   # note\nimagegen x > f\n```\nimagegen y";
        assert_eq!(
            command_lines(md, "imagegen", true),
            vec!["imagegen flash a.img --yes", "imagegen x"]
        );
        let help = "Examples:\n  imagegen boards | less\nimagegen starts prose";
        assert_eq!(
            command_lines(help, "imagegen", false),
            vec!["imagegen boards"]
        );
    }
}
