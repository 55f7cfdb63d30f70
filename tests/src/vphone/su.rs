//! `su`'s command line, as Magisk's su client reads it (`su [options] [-] [user [argument...]]`).

/// What a `su` invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `-v`: the version name.
    Version,
    /// `-V`: the version code.
    VersionCode,
    /// A usage error or `-h` (message, exit status).
    Usage(String, i32),
    /// Run `/system/bin/sh` with these arguments as root (`-c CMD`, or none: read stdin).
    Run {
        /// Arguments for the root shell.
        sh_args: Vec<String>,
    },
}

const USAGE: &str = "MagiskSU\n\nUsage: su [options] [-] [user [argument...]]\n\n\
Options:\n  -c, --command COMMAND         Pass COMMAND to the invoked shell\n  \
-h, --help                    Display this help message and exit\n  \
-, -l, --login                Pretend the shell to be a login shell\n  \
-m, -p,\n  --preserve-environment        Preserve the entire environment\n  \
-s, --shell SHELL             Use SHELL instead of the default /system/bin/sh\n  \
-v, --version                 Display version number and exit\n  \
-V                            Display version code and exit\n  \
-mm, -M,\n  --mount-master                Force run in the global mount namespace\n";

/// Parses su's arguments (without argv[0]).
pub(crate) fn parse_args(args: &[String]) -> Request {
    let mut i = 0;
    let mut sh_args = Vec::new();
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-v" | "--version" => return Request::Version,
            "-V" => return Request::VersionCode,
            "-h" | "--help" => return Request::Usage(USAGE.into(), 0),
            "-c" | "--command" => {
                // Magisk joins everything after -c into one command line.
                let rest = &args[i + 1..];
                if rest.is_empty() {
                    return Request::Usage(USAGE.into(), 2);
                }
                sh_args = vec!["-c".into(), rest.join(" ")];
                break;
            }
            "-"
            | "-l"
            | "--login"
            | "-m"
            | "-p"
            | "--preserve-environment"
            | "-mm"
            | "-M"
            | "--mount-master" => {}
            "-s" | "--shell" => i += 1,
            "0" | "root" => {}
            s if s.starts_with('-') => return Request::Usage(USAGE.into(), 2),
            _ => {}
        }
        i += 1;
    }
    Request::Run { sh_args }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Request {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn su_command_lines() {
        assert_eq!(p(&["-v"]), Request::Version);
        assert_eq!(p(&["-V"]), Request::VersionCode);
        assert_eq!(
            p(&["-c", "id", "-u"]),
            Request::Run {
                sh_args: vec!["-c".into(), "id -u".into()]
            }
        );
        assert_eq!(
            p(&["-mm", "0", "-c", "true"]),
            Request::Run {
                sh_args: vec!["-c".into(), "true".into()]
            }
        );
        assert_eq!(p(&[]), Request::Run { sh_args: vec![] });
        assert!(matches!(p(&["-x"]), Request::Usage(_, 2)));
    }
}
