//! The `Origin` check, against cross-site WebSocket hijacking.
//!
//! Browsers send `Origin` on every WebSocket handshake and let any page open a socket to
//! any server, cookies included; the server is the only one who can refuse a foreign
//! page. Clients that are not browsers send no `Origin` and can send any they like, so
//! a request without one is accepted: this check protects browser users, it does not
//! authenticate anybody.

use crate::proto::handshake::Request;
use std::fmt;

/// Which `Origin` values are accepted. The default is [`OriginPolicy::same_host`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPolicy {
    rule: Rule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    SameHost,
    AllowList(Vec<Entry>),
    Any,
}

/// An allowed origin, normalized: lowercase scheme and host, port made explicit where
/// the scheme has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        OriginPolicy::same_host()
    }
}

impl OriginPolicy {
    /// Accepts an `Origin` whose host and port equal the `Host` header's, ASCII
    /// case-insensitively. A port left out is the default of the origin's scheme (80 for
    /// `http`/`ws`, 443 for `https`/`wss`) on both sides, so `https://example.com`
    /// matches `Host: example.com` and `Host: example.com:443`. The scheme itself is not
    /// compared: the server cannot tell whether a proxy terminated TLS in front of it.
    /// Only `http`, `https`, `ws` and `wss` origins can match; `Origin: null` (sandboxed
    /// frames, `file:` pages) and other schemes are refused.
    pub fn same_host() -> Self {
        OriginPolicy { rule: Rule::SameHost }
    }

    /// Accepts any `Origin`, including `null`.
    pub fn any() -> Self {
        OriginPolicy { rule: Rule::Any }
    }

    /// Accepts exactly the listed origins, each `scheme://host[:port]` as a browser
    /// serializes it (no path, no trailing `/`), compared ASCII case-insensitively with
    /// default ports made explicit (`https://a.example` equals `https://a.example:443`).
    /// An entry `*` accepts any origin. `null` cannot be listed: it names no site, so
    /// allowing it admits every sandboxed frame on the web; use [`OriginPolicy::any`].
    /// The `Host` header plays no part.
    pub fn allow_list<I, S>(origins: I) -> Result<Self, InvalidOrigin>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut entries = Vec::new();
        for origin in origins {
            let origin = origin.as_ref().trim();
            if origin == "*" {
                return Ok(OriginPolicy::any());
            }
            let o = SerializedOrigin::parse(origin).ok_or_else(|| InvalidOrigin(origin.to_owned()))?;
            entries.push(Entry {
                scheme: o.scheme.to_ascii_lowercase(),
                host: o.host.to_ascii_lowercase(),
                port: o.effective_port(),
            });
        }
        Ok(OriginPolicy { rule: Rule::AllowList(entries) })
    }

    /// Whether `req` may proceed. Without an `Origin` header it always may.
    pub fn check(&self, req: &Request<'_, '_>) -> Result<(), OriginRejected> {
        let mut origins = req.headers().filter(|(name, _)| name.eq_ignore_ascii_case("origin"));
        let raw = match (origins.next(), origins.next()) {
            (None, _) => return Ok(()),
            (Some(_), Some(_)) => return Err(OriginRejected::Multiple),
            (Some((_, value)), None) => value,
        };
        if self.rule == Rule::Any {
            return Ok(());
        }
        let origin = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| SerializedOrigin::parse(s.trim()))
            .ok_or(OriginRejected::Malformed)?;
        match &self.rule {
            Rule::Any => Ok(()),
            Rule::SameHost => {
                let (host, port) = req.host().and_then(|h| split_host_port(h.trim())).ok_or(OriginRejected::NoHost)?;
                // Only web origins can be "this site"; `chrome-extension://x` names no host.
                let Some(default) = default_port(origin.scheme) else {
                    return Err(OriginRejected::CrossOrigin);
                };
                if origin.host.eq_ignore_ascii_case(host) && origin.port.unwrap_or(default) == port.unwrap_or(default) {
                    Ok(())
                } else {
                    Err(OriginRejected::CrossOrigin)
                }
            }
            Rule::AllowList(entries) => {
                let port = origin.effective_port();
                let listed = entries.iter().any(|e| {
                    e.port == port
                        && e.scheme.eq_ignore_ascii_case(origin.scheme)
                        && e.host.eq_ignore_ascii_case(origin.host)
                });
                if listed {
                    Ok(())
                } else {
                    Err(OriginRejected::NotAllowed)
                }
            }
        }
    }
}

/// Why the `Origin` check refused a request. Every kind is answered with 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginRejected {
    /// `Origin` is not `scheme://host[:port]` (this includes `null`).
    Malformed,
    /// More than one `Origin` header field.
    Multiple,
    /// Same-host policy, and the `Host` header is missing or not `host[:port]`.
    NoHost,
    /// Same-host policy, and the origin's host or port differs from `Host`, or its scheme
    /// is not a web one.
    CrossOrigin,
    /// Allow-list policy, and the origin is not on the list.
    NotAllowed,
}

impl OriginRejected {
    /// The HTTP status: always 403 Forbidden.
    pub fn status(self) -> u16 {
        403
    }

    /// Short description, for logs and the response body.
    pub fn reason(self) -> &'static str {
        match self {
            OriginRejected::Malformed => "Origin header malformed",
            OriginRejected::Multiple => "more than one Origin header",
            OriginRejected::NoHost => "Host header missing or malformed",
            OriginRejected::CrossOrigin => "cross-origin request refused",
            OriginRejected::NotAllowed => "origin not allowed",
        }
    }
}

impl fmt::Display for OriginRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for OriginRejected {}

/// An allow-list entry that is not `*` nor `scheme://host[:port]`; holds the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOrigin(pub String);

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an origin (want scheme://host[:port] or *): {:?}", self.0)
    }
}

impl std::error::Error for InvalidOrigin {}

/// `scheme://host[:port]`, the ASCII serialization of a tuple origin (RFC 6454 section 6.2).
struct SerializedOrigin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl<'a> SerializedOrigin<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let (scheme, authority) = s.split_once("://")?;
        let mut chars = scheme.chars();
        let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        // No path, query, fragment or userinfo: browsers never send them in Origin.
        if !scheme_ok || authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = split_host_port(authority)?;
        Some(SerializedOrigin { scheme, host, port })
    }

    fn effective_port(&self) -> Option<u16> {
        self.port.or_else(|| default_port(self.scheme))
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (`[v6]:port` for IPv6). An empty port (`host:`) counts as absent,
/// as RFC 3986 allows.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'));
    if !host_ok {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::with_request;

    fn check(policy: &OriginPolicy, host: Option<&str>, origin: Option<&str>) -> Result<(), OriginRejected> {
        let mut fields = Vec::new();
        fields.extend(host.map(|h| ("Host", h)));
        fields.extend(origin.map(|o| ("Origin", o)));
        with_request("/", &fields, |req| policy.check(req))
    }

    #[test]
    fn same_host_table() {
        use OriginRejected::*;
        // (Host, Origin, outcome)
        type Case = (Option<&'static str>, Option<&'static str>, Result<(), OriginRejected>);
        let cases: &[Case] = &[
            // No Origin: not a browser, accepted whatever Host says.
            (Some("example.com"), None, Ok(())),
            (None, None, Ok(())),
            (Some("example.com"), Some("https://example.com"), Ok(())),
            (Some("example.com"), Some("http://example.com"), Ok(())),
            (Some("EXAMPLE.com"), Some("https://example.COM"), Ok(())),
            (Some("example.com:443"), Some("https://example.com"), Ok(())),
            (Some("example.com:80"), Some("http://example.com"), Ok(())),
            (Some("example.com"), Some("https://example.com:443"), Ok(())),
            (Some("example.com:8080"), Some("http://example.com:8080"), Ok(())),
            (Some("example.com:"), Some("https://example.com"), Ok(())),
            (Some("127.0.0.1:9001"), Some("http://127.0.0.1:9001"), Ok(())),
            (Some("[::1]:9001"), Some("http://[::1]:9001"), Ok(())),
            (Some("[::1]"), Some("https://[::1]"), Ok(())),
            (Some("example.com"), Some("wss://example.com"), Ok(())),
            (Some("example.com"), Some("https://evil.com"), Err(CrossOrigin)),
            (Some("example.com"), Some("https://example.com.evil.com"), Err(CrossOrigin)),
            (Some("example.com"), Some("https://sub.example.com"), Err(CrossOrigin)),
            (Some("example.com:443"), Some("http://example.com"), Err(CrossOrigin)),
            (Some("example.com:8080"), Some("http://example.com"), Err(CrossOrigin)),
            (Some("example.com"), Some("http://example.com:8080"), Err(CrossOrigin)),
            (Some("[::1]:9001"), Some("http://[::2]:9001"), Err(CrossOrigin)),
            (Some("example.com"), Some("chrome-extension://example.com"), Err(CrossOrigin)),
            (None, Some("https://example.com"), Err(NoHost)),
            (Some("exa mple.com"), Some("https://example.com"), Err(NoHost)),
            (Some("example.com:99999"), Some("https://example.com"), Err(NoHost)),
            (Some("example.com"), Some("null"), Err(Malformed)),
            (Some("example.com"), Some("example.com"), Err(Malformed)),
            (Some("example.com"), Some("https://example.com/"), Err(Malformed)),
            (Some("example.com"), Some("https://user@example.com"), Err(Malformed)),
            (Some("example.com"), Some("https://example.com:x"), Err(Malformed)),
            (Some("example.com"), Some("https://"), Err(Malformed)),
            (Some("example.com"), Some("https://a.com https://example.com"), Err(Malformed)),
        ];
        let policy = OriginPolicy::default();
        for (host, origin, want) in cases {
            assert_eq!(check(&policy, *host, *origin), *want, "Host {host:?}, Origin {origin:?}");
        }
    }

    #[test]
    fn two_origin_headers_are_refused() {
        let fields = [("Host", "example.com"), ("Origin", "https://example.com"), ("Origin", "https://example.com")];
        for policy in [OriginPolicy::same_host(), OriginPolicy::any()] {
            assert_eq!(with_request("/", &fields, |req| policy.check(req)), Err(OriginRejected::Multiple));
        }
    }

    #[test]
    fn allow_list() {
        let policy =
            OriginPolicy::allow_list(["https://app.example.com", "HTTP://LOCALHOST:3000", "https://b.example:443"])
                .unwrap();
        let host = Some("api.example.com");
        for ok in
            ["https://app.example.com", "https://APP.example.com:443", "http://localhost:3000", "https://b.example"]
        {
            assert_eq!(check(&policy, host, Some(ok)), Ok(()), "{ok}");
        }
        for bad in
            ["http://app.example.com", "https://app.example.com:8443", "http://localhost", "https://api.example.com"]
        {
            assert_eq!(check(&policy, host, Some(bad)), Err(OriginRejected::NotAllowed), "{bad}");
        }
        assert_eq!(check(&policy, host, Some("null")), Err(OriginRejected::Malformed));
        assert_eq!(check(&policy, host, None), Ok(()));
        // The Host header is not consulted.
        assert_eq!(check(&policy, None, Some("https://app.example.com")), Ok(()));
    }

    #[test]
    fn wildcard_accepts_anything() {
        let policy = OriginPolicy::allow_list(["https://a.example", "*"]).unwrap();
        assert_eq!(policy, OriginPolicy::any());
        for origin in ["https://evil.com", "null", "garbage"] {
            assert_eq!(check(&policy, Some("example.com"), Some(origin)), Ok(()));
        }
    }

    #[test]
    fn invalid_allow_list_entries() {
        for bad in ["null", "example.com", "https://example.com/", "https://example.com/path", "", "*.example.com"] {
            assert_eq!(OriginPolicy::allow_list([bad]), Err(InvalidOrigin(bad.to_owned())), "{bad}");
        }
        // An empty list is valid and refuses every browser.
        let none = OriginPolicy::allow_list(Vec::<String>::new()).unwrap();
        assert_eq!(check(&none, Some("example.com"), Some("https://example.com")), Err(OriginRejected::NotAllowed));
    }

    #[test]
    fn rejections_are_403() {
        use OriginRejected::*;
        for r in [Malformed, Multiple, NoHost, CrossOrigin, NotAllowed] {
            assert_eq!(r.status(), 403);
            assert!(r.to_string().ends_with("(403)"));
        }
    }
}
