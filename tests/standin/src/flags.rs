//! The `k3s agent` command line as k3s parses it: urfave/cli v2 flag definitions on top of Go's
//! `flag` package, so the stand-in refuses exactly what the real agent refuses.
//!
//! The table is the agent's `Flags:` list of the urfave/cli v2 era, from the sources named in
//! `/work/notes/research-13.md` §1: k3s-vip/k3s `pkg/cli/cmds/agent.go` @94385529 (a fork that
//! tracks k3s master, whole file read) checked against the `k3s agent --help` dump in k3s-io/docs
//! `docs/cli/agent.md` @1f023c05. Caveat: k3s' own `agent.go` at the pinned tag (v1.36.4+k3s1)
//! was not found; `k3s agent --help` of the pinned binary is the authority when it differs.
//!
//! What Go's `flag` package does, and so this parser:
//! - a flag is `-name` or `--name` (either number of dashes, for long and short names alike),
//!   with its value as `-name=value` or as the next argument (taken whatever it looks like);
//! - a bool flag takes a value only as `-name=value`; `-name value` leaves `value` as an argument;
//! - parsing stops at the first argument that is not a flag (`-` alone counts as one) or after
//!   `--`; the rest are positional arguments (`k3s agent` ignores them);
//! - an undefined name fails with `flag provided but not defined: -NAME` (one dash, whatever was
//!   typed, without the `=value` part);
//! - k3s sets `DisableSliceFlagSeparator`: a slice flag keeps `a=b,c=d` whole, one entry per use.

use std::collections::BTreeMap;
use std::fmt;

/// What a flag holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `BoolFlag`: present means true; a value only as `--name=value`.
    Bool,
    /// `StringFlag`.
    Text,
    /// `IntFlag` (Go's `strconv.ParseInt(s, 0, 64)`).
    Int,
    /// `StringSliceFlag`: repeatable, each use one entry.
    List,
}

/// One flag of `k3s agent`.
#[derive(Debug)]
pub struct Flag {
    /// The long name (`token` for `--token`).
    pub name: &'static str,
    /// The one-letter alias, if any (`t` for `-t`).
    pub alias: Option<&'static str>,
    /// What it holds.
    pub kind: Kind,
    /// The environment variable that also sets it.
    pub env: Option<&'static str>,
    /// The default the help text shows.
    pub default: Option<&'static str>,
    /// Left out of the help text (urfave's `Hidden`).
    pub hidden: bool,
    /// The help line's text (short; the stand-in's own words).
    pub usage: &'static str,
}

const fn flag(name: &'static str, kind: Kind, usage: &'static str) -> Flag {
    Flag {
        name,
        alias: None,
        kind,
        env: None,
        default: None,
        hidden: false,
        usage,
    }
}

const fn aliased(name: &'static str, alias: &'static str, kind: Kind, usage: &'static str) -> Flag {
    Flag {
        name,
        alias: Some(alias),
        kind,
        env: None,
        default: None,
        hidden: false,
        usage,
    }
}

const fn env(mut f: Flag, var: &'static str) -> Flag {
    f.env = Some(var);
    f
}

const fn default(mut f: Flag, value: &'static str) -> Flag {
    f.default = Some(value);
    f
}

const fn hidden(mut f: Flag) -> Flag {
    f.hidden = true;
    f
}

use Kind::{Bool, Int, List, Text};

/// Every flag `k3s agent` defines, in its `Flags:` order, then urfave's own `--help`.
pub const AGENT_FLAGS: &[Flag] = &[
    env(
        default(
            aliased("config", "c", Text, "(config) Load configuration from FILE"),
            "/etc/rancher/k3s/config.yaml",
        ),
        "K3S_CONFIG_FILE",
    ),
    env(
        flag("debug", Bool, "(logging) Turn on debug logs"),
        "K3S_DEBUG",
    ),
    default(flag("v", Int, "(logging) Log level verbosity"), "0"),
    flag("vmodule", Text, "(logging) FILE_PATTERN=LOG_LEVEL list"),
    aliased("log", "l", Text, "(logging) Log to file"),
    flag(
        "alsologtostderr",
        Bool,
        "(logging) Also log to standard error",
    ),
    env(aliased("token", "t", Text, "(cluster) Token"), "K3S_TOKEN"),
    env(
        flag("token-file", Text, "(cluster) Token file"),
        "K3S_TOKEN_FILE",
    ),
    env(
        aliased("server", "s", Text, "(cluster) Server URL"),
        "K3S_URL",
    ),
    env(
        default(
            aliased("data-dir", "d", Text, "(agent/data) State directory"),
            "/var/lib/rancher/k3s",
        ),
        "K3S_DATA_DIR",
    ),
    env(
        flag("node-name", Text, "(agent/node) Node name"),
        "K3S_NODE_NAME",
    ),
    flag(
        "with-node-id",
        Bool,
        "(agent/node) Append an id to the node name",
    ),
    flag("node-label", List, "(agent/node) Labels at registration"),
    flag("node-taint", List, "(agent/node) Taints at registration"),
    default(
        flag(
            "image-credential-provider-bin-dir",
            Text,
            "(agent/node) Credential provider plugins",
        ),
        "/var/lib/rancher/credentialprovider/bin",
    ),
    default(
        flag(
            "image-credential-provider-config",
            Text,
            "(agent/node) Credential provider config",
        ),
        "/var/lib/rancher/credentialprovider/config.yaml",
    ),
    env(
        flag("selinux", Bool, "(agent/node) SELinux in containerd"),
        "K3S_SELINUX",
    ),
    env(
        default(
            flag(
                "lb-server-port",
                Int,
                "(agent/node) Client load-balancer port",
            ),
            "6444",
        ),
        "K3S_LB_SERVER_PORT",
    ),
    flag(
        "protect-kernel-defaults",
        Bool,
        "(agent/node) Refuse other kernel tunables",
    ),
    flag(
        "container-runtime-endpoint",
        Text,
        "(agent/runtime) External CRI socket",
    ),
    flag(
        "default-runtime",
        Text,
        "(agent/runtime) containerd default runtime",
    ),
    flag(
        "image-service-endpoint",
        Text,
        "(agent/runtime) External image service",
    ),
    flag("pause-image", Text, "(agent/runtime) Pause image"),
    default(
        flag(
            "snapshotter",
            Text,
            "(agent/runtime) containerd snapshotter",
        ),
        "overlayfs",
    ),
    default(
        flag(
            "private-registry",
            Text,
            "(agent/runtime) Registry configuration",
        ),
        "/etc/rancher/k3s/registries.yaml",
    ),
    flag(
        "disable-default-registry-endpoint",
        Bool,
        "(agent/containerd) No default endpoint fallback",
    ),
    flag(
        "nonroot-devices",
        Bool,
        "(agent/containerd) Device access for non-root pods",
    ),
    hidden(flag(
        "airgap-extra-registry",
        List,
        "(agent/runtime) Extra air-gap registry",
    )),
    aliased("node-ip", "i", List, "(agent/networking) Node addresses"),
    default(
        flag("bind-address", Text, "(listener) Bind address"),
        "0.0.0.0",
    ),
    flag(
        "node-external-ip",
        List,
        "(agent/networking) External addresses",
    ),
    flag(
        "node-internal-dns",
        List,
        "(agent/networking) Internal DNS names",
    ),
    flag(
        "node-external-dns",
        List,
        "(agent/networking) External DNS names",
    ),
    env(
        flag(
            "resolv-conf",
            Text,
            "(agent/networking) Kubelet resolv.conf",
        ),
        "K3S_RESOLV_CONF",
    ),
    flag(
        "flannel-iface",
        Text,
        "(agent/networking) Flannel interface",
    ),
    flag(
        "flannel-conf",
        Text,
        "(agent/networking) Flannel config file",
    ),
    flag(
        "flannel-cni-conf",
        Text,
        "(agent/networking) Flannel CNI config file",
    ),
    flag("kubelet-arg", List, "(agent/flags) Kubelet flag"),
    flag("kube-proxy-arg", List, "(agent/flags) kube-proxy flag"),
    flag(
        "enable-pprof",
        Bool,
        "(experimental) pprof on the supervisor port",
    ),
    flag("rootless", Bool, "(experimental) Run rootless"),
    flag(
        "prefer-bundled-bin",
        Bool,
        "(experimental) Prefer bundled binaries",
    ),
    flag("docker", Bool, "(agent/runtime) (experimental) cri-dockerd"),
    env(
        flag(
            "vpn-auth",
            Text,
            "(agent/networking) (experimental) VPN credentials",
        ),
        "K3S_VPN_AUTH",
    ),
    env(
        flag(
            "vpn-auth-file",
            Text,
            "(agent/networking) (experimental) VPN credentials file",
        ),
        "K3S_VPN_AUTH_FILE",
    ),
    flag(
        "disable-apiserver-lb",
        Bool,
        "(agent/networking) (experimental) No client load-balancer",
    ),
    aliased("help", "h", Bool, "show help"),
];

/// Why a command line is refused, worded as Go's `flag` package words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A name no flag has.
    Undefined(String),
    /// `---x`, `-=x`: not a flag at all.
    BadSyntax(String),
    /// A value flag last on the line.
    NeedsArgument(String),
    /// `--debug=maybe`.
    BadBool { value: String, name: String },
    /// `-v=high`.
    BadValue { value: String, name: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Undefined(n) => write!(f, "flag provided but not defined: -{n}"),
            ParseError::BadSyntax(a) => write!(f, "bad flag syntax: {a}"),
            ParseError::NeedsArgument(n) => write!(f, "flag needs an argument: -{n}"),
            ParseError::BadBool { value, name } => {
                write!(
                    f,
                    "invalid boolean value {} for -{name}: parse error",
                    go_quote(value)
                )
            }
            ParseError::BadValue { value, name } => {
                write!(
                    f,
                    "invalid value {} for flag -{name}: parse error",
                    go_quote(value)
                )
            }
        }
    }
}

/// A command line that parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Values by long name, as given (bools as `true`/`false`); a slice flag has one per use,
    /// any other flag only its last.
    pub values: BTreeMap<String, Vec<String>>,
    /// The arguments after the flags.
    pub positional: Vec<String>,
}

impl Parsed {
    /// The value of a single-valued flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.last().map(String::as_str)
    }

    /// Every value of a slice flag.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A bool flag's value (unset: false).
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| parse_bool(v) == Some(true))
    }

    /// The value from the command line, else from the flag's environment variable, else its
    /// default (urfave's order).
    pub fn effective(
        &self,
        name: &str,
        environment: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        if let Some(v) = self.get(name) {
            return Some(v.to_owned());
        }
        let f = lookup(name)?;
        if let Some(v) = f.env.and_then(&environment).filter(|v| !v.is_empty()) {
            return Some(v);
        }
        f.default.map(str::to_owned)
    }
}

fn lookup(name: &str) -> Option<&'static Flag> {
    AGENT_FLAGS
        .iter()
        .find(|f| f.name == name || f.alias == Some(name))
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: a sign, then `0x`/`0o`/`0b` or a leading `0` (octal).
fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b.to_owned())
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b.to_owned())
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b.to_owned())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned())
    } else {
        (10, lower)
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let v = i64::from_str_radix(&body, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// Go's `%q` for the plain strings a command line holds.
pub fn go_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() => q.push_str(&format!("\\x{:02x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Parses the arguments after `agent`.
pub fn parse(args: &[String]) -> Result<Parsed, ParseError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let dashes = if arg.starts_with("--") { 2 } else { 1 };
        if arg == "--" {
            i += 1;
            break;
        }
        let body = &arg[dashes..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ParseError::BadSyntax(arg.clone()));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let f = lookup(name).ok_or_else(|| ParseError::Undefined(name.to_owned()))?;
        i += 1;
        let value = match f.kind {
            Bool => {
                let v = inline.unwrap_or_else(|| "true".into());
                let b = parse_bool(&v).ok_or_else(|| ParseError::BadBool {
                    value: v.clone(),
                    name: name.to_owned(),
                })?;
                b.to_string()
            }
            Text | Int | List => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| ParseError::NeedsArgument(name.to_owned()))?;
                        i += 1;
                        v
                    }
                };
                if f.kind == Int && parse_int(&v).is_none() {
                    return Err(ParseError::BadValue {
                        value: v,
                        name: name.to_owned(),
                    });
                }
                v
            }
        };
        let slot = out.values.entry(f.name.to_owned()).or_default();
        if f.kind != List {
            slot.clear();
        }
        slot.push(value);
    }
    out.positional = args[i.min(args.len())..].to_vec();
    Ok(out)
}

/// The agent's help, as urfave/cli lays out a command's (what k3s prints after
/// `Incorrect Usage:` and for `--help`).
pub fn usage() -> String {
    let shown: Vec<(String, &Flag)> = AGENT_FLAGS
        .iter()
        .filter(|f| !f.hidden && f.name != "help")
        .map(|f| {
            let placeholder = if f.name == "config" {
                " FILE"
            } else {
                " value"
            };
            let with = |dash: &str, n: &str| match f.kind {
                Bool => format!("{dash}{n}"),
                _ => format!("{dash}{n}{placeholder}"),
            };
            let dash = if f.name.len() == 1 { "-" } else { "--" };
            let mut names = with(dash, f.name);
            if let Some(a) = f.alias {
                names.push_str(", ");
                names.push_str(&with("-", a));
            }
            (names, f)
        })
        .collect();
    let width = shown.iter().map(|(n, _)| n.len()).max().unwrap_or(0) + 2;
    let mut text = String::from(
        "NAME:\n   k3s agent - Run node agent\n\nUSAGE:\n   k3s agent [OPTIONS]\n\nOPTIONS:\n",
    );
    for (names, f) in shown {
        let mut line = format!("   {names:width$}{}", f.usage);
        if let Some(d) = f.default {
            if f.kind == Int || f.name == "bind-address" {
                line.push_str(&format!(" (default: {d})"));
            } else {
                line.push_str(&format!(" (default: {})", go_quote(d)));
            }
        }
        if let Some(e) = f.env {
            line.push_str(&format!(" [${e}]"));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn node_runtimes_argv_parses_in_both_forms() {
        let p = parse(&args(
            "--server https://10.10.0.1:6443 --token-file /etc/armfleet/token --node-name phone-1 \
             --node-label a=b,c=d --node-label e=f --node-ip 10.0.0.7 --flannel-iface wlan0 \
             --data-dir=/var/lib/rancher/k3s --kubelet-arg=fail-cgroupv1=false \
             --kubelet-arg healthz-port=10300 --disable-apiserver-lb",
        ))
        .unwrap();
        assert_eq!(p.get("server"), Some("https://10.10.0.1:6443"));
        assert_eq!(p.get("data-dir"), Some("/var/lib/rancher/k3s"));
        // No splitting at commas (DisableSliceFlagSeparator), one entry per use.
        assert_eq!(p.all("node-label"), ["a=b,c=d", "e=f"]);
        assert_eq!(
            p.all("kubelet-arg"),
            ["fail-cgroupv1=false", "healthz-port=10300"]
        );
        assert!(p.is_set("disable-apiserver-lb"));
        assert!(p.positional.is_empty());
    }

    #[test]
    fn aliases_and_single_dash_long_names_are_the_same_flags() {
        let p = parse(&args(
            "-s https://s:6443 -t secret -d /d -i 10.0.0.1 -c /c.yaml -l /log -token-file /t --v=2",
        ))
        .unwrap();
        assert_eq!(p.get("server"), Some("https://s:6443"));
        assert_eq!(p.get("token"), Some("secret"));
        assert_eq!(p.get("data-dir"), Some("/d"));
        assert_eq!(p.all("node-ip"), ["10.0.0.1"]);
        assert_eq!(p.get("config"), Some("/c.yaml"));
        assert_eq!(p.get("log"), Some("/log"));
        assert_eq!(p.get("token-file"), Some("/t"));
        assert_eq!(p.get("v"), Some("2"));
        // A single-valued flag given twice keeps the last.
        let p = parse(&args("--server a --server b")).unwrap();
        assert_eq!(p.get("server"), Some("b"));
    }

    #[test]
    fn undefined_flags_are_named_with_one_dash() {
        for (line, name) in [
            ("--server s --disable traefik", "disable"),
            ("--no-flannel", "no-flannel"),
            ("--cluster-secret=x", "cluster-secret"),
            ("--disable-selinux", "disable-selinux"),
            ("-x", "x"),
            ("--kubelet-args fail-cgroupv1=false", "kubelet-args"),
            ("--failCgroupV1=false", "failCgroupV1"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert_eq!(e, ParseError::Undefined(name.into()), "{line}");
            assert_eq!(
                e.to_string(),
                format!("flag provided but not defined: -{name}")
            );
        }
    }

    #[test]
    fn values_bools_and_ints_as_go_reads_them() {
        // A value flag takes the next argument whatever it looks like.
        let p = parse(&args("--node-name --debug")).unwrap();
        assert_eq!(p.get("node-name"), Some("--debug"));
        assert!(!p.is_set("debug"));
        // A bool takes a value only after `=`; a bare word after it ends the flags.
        let p = parse(&args("--debug=false --rootless")).unwrap();
        assert!(!p.is_set("debug") && p.is_set("rootless"));
        let p = parse(&args("--debug false --bogus")).unwrap();
        assert!(p.is_set("debug"));
        assert_eq!(p.positional, ["false", "--bogus"]);
        assert_eq!(
            parse(&args("--debug=maybe")).unwrap_err().to_string(),
            "invalid boolean value \"maybe\" for -debug: parse error"
        );
        assert_eq!(parse(&args("-v 0x10")).unwrap().get("v"), Some("0x10"));
        assert_eq!(
            parse(&args("--lb-server-port=high"))
                .unwrap_err()
                .to_string(),
            "invalid value \"high\" for flag -lb-server-port: parse error"
        );
        assert_eq!(
            parse(&args("--server")).unwrap_err().to_string(),
            "flag needs an argument: -server"
        );
        assert_eq!(
            parse(&args("---server x")).unwrap_err().to_string(),
            "bad flag syntax: ---server"
        );
    }

    #[test]
    fn double_dash_and_positionals_end_the_flags() {
        let p = parse(&args("--server s -- --bogus")).unwrap();
        assert_eq!(p.positional, ["--bogus"]);
        let p = parse(&args("--server s extra --bogus")).unwrap();
        assert_eq!(p.positional, ["extra", "--bogus"]);
        let p = parse(&args("- --bogus")).unwrap();
        assert_eq!(p.positional, ["-", "--bogus"]);
    }

    #[test]
    fn environment_and_defaults_fill_what_the_line_leaves() {
        let p = parse(&args("--server s")).unwrap();
        let env = |k: &str| (k == "K3S_TOKEN_FILE").then(|| "/from/env".to_owned());
        assert_eq!(p.effective("token-file", env).as_deref(), Some("/from/env"));
        assert_eq!(
            p.effective("data-dir", env).as_deref(),
            Some("/var/lib/rancher/k3s")
        );
        assert_eq!(p.effective("server", env).as_deref(), Some("s"));
        assert_eq!(p.effective("node-name", env), None);
    }

    #[test]
    fn help_lists_every_shown_flag_once() {
        let u = usage();
        assert!(u.starts_with("NAME:\n   k3s agent - Run node agent\n"));
        for f in AGENT_FLAGS.iter().filter(|f| f.name != "help") {
            let n = if f.name.len() == 1 {
                format!("   -{} ", f.name)
            } else {
                format!("   --{}", f.name)
            };
            assert_eq!(u.contains(&n), !f.hidden, "{}", f.name);
        }
        assert!(u.contains("--token value, -t value"));
        assert!(u.contains("--config FILE, -c FILE"));
        assert!(u.contains("[$K3S_DATA_DIR]"));
    }
}
