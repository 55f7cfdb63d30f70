//! The `k3s agent` and `k3s server` command lines as k3s parses them: urfave/cli v2 flag
//! definitions on top of Go's `flag` package, so the stand-in refuses exactly what the real
//! k3s refuses. The server's table is [`SERVER_FLAGS`] (`server_flags.rs`, sources named there).
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
    /// `DurationFlag` (Go's `time.ParseDuration`); only the server has any.
    Duration,
}

/// One flag of a `k3s` command.
#[derive(Debug, PartialEq, Eq)]
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

pub(crate) const fn flag(name: &'static str, kind: Kind, usage: &'static str) -> Flag {
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

pub(crate) const fn aliased(
    name: &'static str,
    alias: &'static str,
    kind: Kind,
    usage: &'static str,
) -> Flag {
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

pub(crate) const fn env(mut f: Flag, var: &'static str) -> Flag {
    f.env = Some(var);
    f
}

pub(crate) const fn default(mut f: Flag, value: &'static str) -> Flag {
    f.default = Some(value);
    f
}

pub(crate) const fn hidden(mut f: Flag) -> Flag {
    f.hidden = true;
    f
}

use Kind::{Bool, Duration, Int, List, Text};

#[path = "server_flags.rs"]
pub mod server_flags;
pub use server_flags::SERVER_FLAGS;

// Flags `k3s agent` and `k3s server` share (k3s defines them once and lists them in both).

/// `--config` (agent and server).
pub(crate) const CONFIG: Flag = env(
    default(
        aliased("config", "c", Text, "(config) Load configuration from FILE"),
        "/etc/rancher/k3s/config.yaml",
    ),
    "K3S_CONFIG_FILE",
);

/// `--debug` (agent and server).
pub(crate) const DEBUG: Flag = env(
    flag("debug", Bool, "(logging) Turn on debug logs"),
    "K3S_DEBUG",
);

/// `--v` (agent and server).
pub(crate) const V: Flag = default(flag("v", Int, "(logging) Log level verbosity"), "0");

/// `--vmodule` (agent and server).
pub(crate) const VMODULE: Flag = flag("vmodule", Text, "(logging) FILE_PATTERN=LOG_LEVEL list");

/// `--log` (agent and server).
pub(crate) const LOG: Flag = aliased("log", "l", Text, "(logging) Log to file");

/// `--alsologtostderr` (agent and server).
pub(crate) const ALSOLOGTOSTDERR: Flag = flag(
    "alsologtostderr",
    Bool,
    "(logging) Also log to standard error",
);

/// `--node-name` (agent and server).
pub(crate) const NODE_NAME: Flag = env(
    flag("node-name", Text, "(agent/node) Node name"),
    "K3S_NODE_NAME",
);

/// `--with-node-id` (agent and server).
pub(crate) const WITH_NODE_ID: Flag = flag(
    "with-node-id",
    Bool,
    "(agent/node) Append an id to the node name",
);

/// `--node-label` (agent and server).
pub(crate) const NODE_LABEL: Flag = flag("node-label", List, "(agent/node) Labels at registration");

/// `--node-taint` (agent and server).
pub(crate) const NODE_TAINT: Flag = flag("node-taint", List, "(agent/node) Taints at registration");

/// `--image-credential-provider-bin-dir` (agent and server).
pub(crate) const IMAGE_CREDENTIAL_PROVIDER_BIN_DIR: Flag = default(
    flag(
        "image-credential-provider-bin-dir",
        Text,
        "(agent/node) Credential provider plugins",
    ),
    "/var/lib/rancher/credentialprovider/bin",
);

/// `--image-credential-provider-config` (agent and server).
pub(crate) const IMAGE_CREDENTIAL_PROVIDER_CONFIG: Flag = default(
    flag(
        "image-credential-provider-config",
        Text,
        "(agent/node) Credential provider config",
    ),
    "/var/lib/rancher/credentialprovider/config.yaml",
);

/// `--selinux` (agent and server).
pub(crate) const SELINUX: Flag = env(
    flag("selinux", Bool, "(agent/node) SELinux in containerd"),
    "K3S_SELINUX",
);

/// `--lb-server-port` (agent and server).
pub(crate) const LB_SERVER_PORT: Flag = env(
    default(
        flag(
            "lb-server-port",
            Int,
            "(agent/node) Client load-balancer port",
        ),
        "6444",
    ),
    "K3S_LB_SERVER_PORT",
);

/// `--protect-kernel-defaults` (agent and server).
pub(crate) const PROTECT_KERNEL_DEFAULTS: Flag = flag(
    "protect-kernel-defaults",
    Bool,
    "(agent/node) Refuse other kernel tunables",
);

/// `--container-runtime-endpoint` (agent and server).
pub(crate) const CONTAINER_RUNTIME_ENDPOINT: Flag = flag(
    "container-runtime-endpoint",
    Text,
    "(agent/runtime) External CRI socket",
);

/// `--default-runtime` (agent and server).
pub(crate) const DEFAULT_RUNTIME: Flag = flag(
    "default-runtime",
    Text,
    "(agent/runtime) containerd default runtime",
);

/// `--image-service-endpoint` (agent and server).
pub(crate) const IMAGE_SERVICE_ENDPOINT: Flag = flag(
    "image-service-endpoint",
    Text,
    "(agent/runtime) External image service",
);

/// `--pause-image` (agent and server).
pub(crate) const PAUSE_IMAGE: Flag = flag("pause-image", Text, "(agent/runtime) Pause image");

/// `--snapshotter` (agent and server).
pub(crate) const SNAPSHOTTER: Flag = default(
    flag(
        "snapshotter",
        Text,
        "(agent/runtime) containerd snapshotter",
    ),
    "overlayfs",
);

/// `--private-registry` (agent and server).
pub(crate) const PRIVATE_REGISTRY: Flag = default(
    flag(
        "private-registry",
        Text,
        "(agent/runtime) Registry configuration",
    ),
    "/etc/rancher/k3s/registries.yaml",
);

/// `--disable-default-registry-endpoint` (agent and server).
pub(crate) const DISABLE_DEFAULT_REGISTRY_ENDPOINT: Flag = flag(
    "disable-default-registry-endpoint",
    Bool,
    "(agent/containerd) No default endpoint fallback",
);

/// `--nonroot-devices` (agent and server).
pub(crate) const NONROOT_DEVICES: Flag = flag(
    "nonroot-devices",
    Bool,
    "(agent/containerd) Device access for non-root pods",
);

/// `--airgap-extra-registry` (agent and server).
pub(crate) const AIRGAP_EXTRA_REGISTRY: Flag = hidden(flag(
    "airgap-extra-registry",
    List,
    "(agent/runtime) Extra air-gap registry",
));

/// `--node-ip` (agent and server).
pub(crate) const NODE_IP: Flag = aliased("node-ip", "i", List, "(agent/networking) Node addresses");

/// `--bind-address` (agent and server).
pub(crate) const BIND_ADDRESS: Flag = default(
    flag("bind-address", Text, "(listener) Bind address"),
    "0.0.0.0",
);

/// `--node-external-ip` (agent and server).
pub(crate) const NODE_EXTERNAL_IP: Flag = flag(
    "node-external-ip",
    List,
    "(agent/networking) External addresses",
);

/// `--node-internal-dns` (agent and server).
pub(crate) const NODE_INTERNAL_DNS: Flag = flag(
    "node-internal-dns",
    List,
    "(agent/networking) Internal DNS names",
);

/// `--node-external-dns` (agent and server).
pub(crate) const NODE_EXTERNAL_DNS: Flag = flag(
    "node-external-dns",
    List,
    "(agent/networking) External DNS names",
);

/// `--resolv-conf` (agent and server).
pub(crate) const RESOLV_CONF: Flag = env(
    flag(
        "resolv-conf",
        Text,
        "(agent/networking) Kubelet resolv.conf",
    ),
    "K3S_RESOLV_CONF",
);

/// `--flannel-iface` (agent and server).
pub(crate) const FLANNEL_IFACE: Flag = flag(
    "flannel-iface",
    Text,
    "(agent/networking) Flannel interface",
);

/// `--flannel-conf` (agent and server).
pub(crate) const FLANNEL_CONF: Flag = flag(
    "flannel-conf",
    Text,
    "(agent/networking) Flannel config file",
);

/// `--flannel-cni-conf` (agent and server).
pub(crate) const FLANNEL_CNI_CONF: Flag = flag(
    "flannel-cni-conf",
    Text,
    "(agent/networking) Flannel CNI config file",
);

/// `--kubelet-arg` (agent and server).
pub(crate) const KUBELET_ARG: Flag = flag("kubelet-arg", List, "(agent/flags) Kubelet flag");

/// `--kube-proxy-arg` (agent and server).
pub(crate) const KUBE_PROXY_ARG: Flag =
    flag("kube-proxy-arg", List, "(agent/flags) kube-proxy flag");

/// `--enable-pprof` (agent and server).
pub(crate) const ENABLE_PPROF: Flag = flag(
    "enable-pprof",
    Bool,
    "(experimental) pprof on the supervisor port",
);

/// `--rootless` (agent and server).
pub(crate) const ROOTLESS: Flag = flag("rootless", Bool, "(experimental) Run rootless");

/// `--prefer-bundled-bin` (agent and server).
pub(crate) const PREFER_BUNDLED_BIN: Flag = flag(
    "prefer-bundled-bin",
    Bool,
    "(experimental) Prefer bundled binaries",
);

/// `--docker` (agent and server).
pub(crate) const DOCKER: Flag = flag("docker", Bool, "(agent/runtime) (experimental) cri-dockerd");

/// `--vpn-auth` (agent and server).
pub(crate) const VPN_AUTH: Flag = env(
    flag(
        "vpn-auth",
        Text,
        "(agent/networking) (experimental) VPN credentials",
    ),
    "K3S_VPN_AUTH",
);

/// `--vpn-auth-file` (agent and server).
pub(crate) const VPN_AUTH_FILE: Flag = env(
    flag(
        "vpn-auth-file",
        Text,
        "(agent/networking) (experimental) VPN credentials file",
    ),
    "K3S_VPN_AUTH_FILE",
);

/// `--help` (agent and server).
pub(crate) const HELP: Flag = aliased("help", "h", Bool, "show help");

/// Every flag `k3s agent` defines, in its `Flags:` order, then urfave's own `--help`.
pub const AGENT_FLAGS: &[Flag] = &[
    CONFIG,
    DEBUG,
    V,
    VMODULE,
    LOG,
    ALSOLOGTOSTDERR,
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
    NODE_NAME,
    WITH_NODE_ID,
    NODE_LABEL,
    NODE_TAINT,
    IMAGE_CREDENTIAL_PROVIDER_BIN_DIR,
    IMAGE_CREDENTIAL_PROVIDER_CONFIG,
    SELINUX,
    LB_SERVER_PORT,
    PROTECT_KERNEL_DEFAULTS,
    CONTAINER_RUNTIME_ENDPOINT,
    DEFAULT_RUNTIME,
    IMAGE_SERVICE_ENDPOINT,
    PAUSE_IMAGE,
    SNAPSHOTTER,
    PRIVATE_REGISTRY,
    DISABLE_DEFAULT_REGISTRY_ENDPOINT,
    NONROOT_DEVICES,
    AIRGAP_EXTRA_REGISTRY,
    NODE_IP,
    BIND_ADDRESS,
    NODE_EXTERNAL_IP,
    NODE_INTERNAL_DNS,
    NODE_EXTERNAL_DNS,
    RESOLV_CONF,
    FLANNEL_IFACE,
    FLANNEL_CONF,
    FLANNEL_CNI_CONF,
    KUBELET_ARG,
    KUBE_PROXY_ARG,
    ENABLE_PPROF,
    ROOTLESS,
    PREFER_BUNDLED_BIN,
    DOCKER,
    VPN_AUTH,
    VPN_AUTH_FILE,
    flag(
        "disable-apiserver-lb",
        Bool,
        "(agent/networking) (experimental) No client load-balancer",
    ),
    HELP,
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
    /// The command's flag table (for environment variables and defaults).
    table: Table,
}

/// A flag table, compared by identity and shown by size.
#[derive(Clone, Copy)]
struct Table(&'static [Flag]);

impl Default for Table {
    fn default() -> Self {
        Table(AGENT_FLAGS)
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Table {}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} flags>", self.0.len())
    }
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
        let f = lookup(self.table.0, name)?;
        if let Some(v) = f.env.and_then(&environment).filter(|v| !v.is_empty()) {
            return Some(v);
        }
        f.default.map(str::to_owned)
    }
}

fn lookup(table: &'static [Flag], name: &str) -> Option<&'static Flag> {
    table
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

/// Go's `time.ParseDuration`: `[-+]` then one or more `<number><unit>` (`1h30m`, `1.5s`, `.5m`),
/// units `ns us µs μs ms s m h`; a bare `0` is the only number without a unit.
fn parse_duration(s: &str) -> Option<()> {
    let mut rest = s.strip_prefix(['-', '+']).unwrap_or(s);
    let neg = s.starts_with('-');
    if rest == "0" {
        return Some(());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int: u128 = if int_len == 0 {
            0
        } else {
            rest[..int_len].parse().ok().filter(|v| *v <= 1 << 63)?
        };
        rest = &rest[int_len..];
        let mut frac = 0.0;
        let mut frac_len = 0;
        if let Some(after) = rest.strip_prefix('.') {
            frac_len = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            let mut scale = 1.0;
            for d in after[..frac_len].bytes() {
                scale /= 10.0;
                frac += f64::from(d - b'0') * scale;
            }
            rest = &after[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Go drops the fraction's sub-nanosecond part; so does the `as` here.
        total = total
            .checked_add(int.checked_mul(unit)?)?
            .checked_add((frac * unit as f64) as u128)?;
        if total > 1 << 63 {
            return None;
        }
    }
    (neg || total < 1 << 63).then_some(())
}

/// Parses the arguments after `agent`.
#[cfg(test)]
pub fn parse(args: &[String]) -> Result<Parsed, ParseError> {
    parse_with(AGENT_FLAGS, args)
}

/// Parses the arguments after a command whose flags are `table`.
pub fn parse_with(table: &'static [Flag], args: &[String]) -> Result<Parsed, ParseError> {
    let mut out = Parsed {
        table: Table(table),
        ..Parsed::default()
    };
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
        let f = lookup(table, name).ok_or_else(|| ParseError::Undefined(name.to_owned()))?;
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
            Text | Int | List | Duration => {
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
                let bad = match f.kind {
                    Int => parse_int(&v).is_none(),
                    Duration => parse_duration(&v).is_none(),
                    _ => false,
                };
                if bad {
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
#[cfg(test)]
pub fn usage() -> String {
    usage_for("agent", AGENT_FLAGS)
}

/// The help of `k3s COMMAND` whose flags are `table`.
pub fn usage_for(command: &str, table: &[Flag]) -> String {
    let shown: Vec<(String, &Flag)> = table
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
    let title = match command {
        "agent" => " - Run node agent",
        "server" => " - Run management server",
        _ => "",
    };
    let mut text = format!(
        "NAME:\n   k3s {command}{title}\n\nUSAGE:\n   k3s {command} [OPTIONS]\n\nOPTIONS:\n"
    );
    for (names, f) in shown {
        let mut line = format!("   {names:width$}{}", f.usage);
        if let Some(d) = f.default {
            // Only strings are quoted; `bind-address` and the slices' defaults are really part
            // of their usage text.
            if f.kind != Text || f.name == "bind-address" {
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

    fn server(line: &str) -> Result<Parsed, ParseError> {
        parse_with(SERVER_FLAGS, &args(line))
    }

    #[test]
    fn server_argv_parses() {
        let p = server(
            "--token-file /x --write-kubeconfig-mode 0600 --cluster-cidr 10.42.0.0/16 \
             --tls-san a --tls-san b --node-ip 10.10.10.1 --disable=traefik \
             --kubelet-arg=fail-cgroupv1=false",
        )
        .unwrap();
        assert_eq!(p.get("token-file"), Some("/x"));
        assert_eq!(p.get("write-kubeconfig-mode"), Some("0600"));
        assert_eq!(p.all("cluster-cidr"), ["10.42.0.0/16"]);
        assert_eq!(p.all("tls-san"), ["a", "b"]);
        assert_eq!(p.all("node-ip"), ["10.10.10.1"]);
        assert_eq!(p.all("disable"), ["traefik"]);
        assert_eq!(p.all("kubelet-arg"), ["fail-cgroupv1=false"]);
        assert!(p.positional.is_empty());
        // Aliases, hidden flags and the agent flags a server shares.
        let p = server(
            "-o /k -t s -d /d -i 10.0.0.1 --disable-agent --kine-tls --lb-server-port 7000 \
             --cluster-init",
        )
        .unwrap();
        assert_eq!(p.get("write-kubeconfig"), Some("/k"));
        assert_eq!(p.get("token"), Some("s"));
        assert_eq!(p.get("data-dir"), Some("/d"));
        assert!(p.is_set("disable-agent") && p.is_set("kine-tls") && p.is_set("cluster-init"));
        assert_eq!(p.get("lb-server-port"), Some("7000"));
    }

    #[test]
    fn each_command_refuses_the_others_own_flags() {
        for (line, name) in [
            ("--server-only-nonsense", "server-only-nonsense"),
            ("--disable-apiserver-lb", "disable-apiserver-lb"),
            ("--no-deploy traefik", "no-deploy"),
            ("--cluster-secret=x", "cluster-secret"),
            ("--kubelet-args x", "kubelet-args"),
        ] {
            assert_eq!(
                server(line).unwrap_err(),
                ParseError::Undefined(name.into()),
                "{line}"
            );
        }
        for (line, name) in [
            ("--cluster-init", "cluster-init"),
            ("--write-kubeconfig-mode 0600", "write-kubeconfig-mode"),
            ("-o /k", "o"),
            ("--tls-san a", "tls-san"),
        ] {
            assert_eq!(
                parse(&args(line)).unwrap_err(),
                ParseError::Undefined(name.into()),
                "{line}"
            );
        }
    }

    #[test]
    fn durations_as_go_reads_them() {
        for ok in [
            "0", "5m0s", "90s", "1h30m", "1.5h", ".5s", "-2ms", "+3us", "1\u{b5}s",
        ] {
            assert!(parse_duration(ok).is_some(), "{ok}");
            assert_eq!(
                server(&format!("--etcd-s3-timeout={ok}"))
                    .unwrap()
                    .get("etcd-s3-timeout"),
                Some(ok)
            );
        }
        for bad in [
            "",
            "5",
            "1x",
            ".s",
            "1h-2m",
            "-",
            "3000000h",
            "9223372036854775808ns",
        ] {
            assert!(parse_duration(bad).is_none(), "{bad}");
        }
        assert_eq!(parse_duration("-9223372036854775808ns"), Some(()));
        assert_eq!(
            server("--etcd-snapshot-reconcile-interval 10")
                .unwrap_err()
                .to_string(),
            "invalid value \"10\" for flag -etcd-snapshot-reconcile-interval: parse error"
        );
    }

    #[test]
    fn server_environment_and_defaults() {
        let p = server("--node-name n").unwrap();
        let env = |k: &str| (k == "K3S_KUBECONFIG_MODE").then(|| "0644".to_owned());
        assert_eq!(
            p.effective("write-kubeconfig-mode", env).as_deref(),
            Some("0644")
        );
        assert_eq!(
            p.effective("cluster-domain", env).as_deref(),
            Some("cluster.local")
        );
        assert_eq!(
            p.effective("https-listen-port", env).as_deref(),
            Some("6443")
        );
        assert_eq!(p.effective("node-name", env).as_deref(), Some("n"));
        // The server's data-dir default depends on the user, so it has none here.
        assert_eq!(p.effective("data-dir", env), None);
        assert_eq!(
            parse(&args(""))
                .unwrap()
                .effective("data-dir", env)
                .as_deref(),
            Some("/var/lib/rancher/k3s")
        );
    }

    #[test]
    fn server_table_names_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for f in SERVER_FLAGS {
            for n in std::iter::once(f.name).chain(f.alias) {
                assert!(seen.insert(n), "{n} twice");
            }
        }
        assert_eq!(SERVER_FLAGS.last().map(|f| f.name), Some("help"));
    }

    #[test]
    fn server_help_lists_each_shown_flag_once() {
        let u = usage_for("server", SERVER_FLAGS);
        assert!(u.starts_with(
            "NAME:\n   k3s server - Run management server\n\nUSAGE:\n   k3s server [OPTIONS]\n"
        ));
        let firsts: Vec<&str> = u
            .lines()
            .skip_while(|l| *l != "OPTIONS:")
            .skip(1)
            .map(|l| l.trim_start().split([' ', ',']).next().unwrap_or(""))
            .collect();
        for f in SERVER_FLAGS.iter().filter(|f| f.name != "help") {
            let dash = if f.name.len() == 1 { "-" } else { "--" };
            let n = format!("{dash}{}", f.name);
            let count = firsts.iter().filter(|l| **l == n).count();
            assert_eq!(count, usize::from(!f.hidden), "{}", f.name);
        }
        assert!(u.contains("--write-kubeconfig value, -o value"));
        assert!(u.contains("[$K3S_KUBECONFIG_OUTPUT]"));
        assert!(u.contains("(default: 5m0s)"));
        assert!(u.contains("(default: 10.42.0.0/16)"));
        assert!(u.contains("(default: \"cluster.local\")"));
        assert!(!u.contains("--disable-apiserver-lb"));
    }
}
