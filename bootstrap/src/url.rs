//! The few parts of a URL the tools read from the topology and `node.toml` (`cluster.server`,
//! `cluster.mirror`): no query strings or user info are ever written there.

/// `scheme://host[:port][/path]`, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// `https`, `http`.
    pub scheme: &'a str,
    /// The host, without the brackets of an IPv6 literal; never empty.
    pub host: &'a str,
    /// The port as written, when one is.
    pub port: Option<&'a str>,
    /// The path, `/` when none is written.
    pub path: &'a str,
}

/// Splits `url`; `None` when it has no `://` or no host.
pub fn split(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    (!host.is_empty()).then_some(UrlParts {
        scheme,
        host,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_as_written() {
        let p = split("https://10.10.10.1:6443").unwrap();
        assert_eq!(
            (p.scheme, p.host, p.port, p.path),
            ("https", "10.10.10.1", Some("6443"), "/")
        );
        let p = split("http://rpi4-1.lab.home.arpa:8080/k3s/").unwrap();
        assert_eq!(
            (p.host, p.port, p.path),
            ("rpi4-1.lab.home.arpa", Some("8080"), "/k3s/")
        );
        let p = split("https://[fd00::1]:6443/x").unwrap();
        assert_eq!((p.host, p.port, p.path), ("fd00::1", Some("6443"), "/x"));
        assert_eq!(split("https://k3s.lab").unwrap().port, None);
        assert_eq!(split("k3s.lab:6443"), None);
        assert_eq!(split("https://:6443"), None);
        assert_eq!(split("https://[fd00::1"), None);
    }
}
