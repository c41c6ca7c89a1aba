//! Where mail for a domain goes (`--route PATTERN=NEXTHOP`) and how much
//! TLS it gets on the way (`--tls-policy PATTERN=LEVEL`). Parsed once at
//! start; matching reads no clock and does no I/O.
//!
//! Patterns: `*` matches every domain, `.example.com` the subdomains of
//! example.com at any depth (not example.com itself), `example.com`
//! exactly that domain. Domains compare ASCII case-insensitively and a
//! trailing dot is ignored; the first matching entry wins.
//!
//! Next hops follow Postfix's syntax:
//!
//! | form | meaning |
//! | --- | --- |
//! | `HOST`, `HOST:PORT` | MX lookup of HOST (its A/AAAA when it has no MX) |
//! | `[HOST]`, `[HOST]:PORT` | HOST's A/AAAA as it is, no MX lookup |
//! | `[192.0.2.1]`, `[192.0.2.1]:PORT` | that IPv4 address, no lookup at all |
//! | `[2001:db8::1]`, `[IPv6:2001:db8::1]:PORT` | that IPv6 address (the `IPv6:` tag of RFC 5321 address literals is optional) |
//!
//! each optionally prefixed by `smtps:` (implicit TLS, RFC 8314; port 465
//! unless given) or `smtp:` (the default: plain SMTP with STARTTLS as the
//! TLS policy says, port 25 unless given). An address always needs the
//! brackets: an MX lookup of an address would mean nothing, and a bare
//! IPv6 address cannot be told from `HOST:PORT`.

#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Which recipient domains a route or TLS policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`
    Any,
    /// `.example.com`: stored as `.example.com`, lowercase.
    Subdomains(String),
    /// `example.com`: stored lowercase.
    Exact(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let (subdomains, name) = match text.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if !is_domain(name) {
            return Err(format!(
                "'{text}' is not a domain pattern (*, .domain or domain)"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if subdomains {
            Pattern::Subdomains(format!(".{name}"))
        } else {
            Pattern::Exact(name)
        })
    }

    pub fn matches(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        match self {
            Pattern::Any => true,
            Pattern::Exact(name) => domain.eq_ignore_ascii_case(name),
            Pattern::Subdomains(suffix) => {
                domain.len() > suffix.len()
                    && domain
                        .get(domain.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// Labels of letters, digits, `-` and `_` (and any non-ASCII character,
/// for internationalised names), none empty, 253 bytes at most.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
}

/// Where to connect for a routed domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// A host name (lowercase, no trailing dot), or the text of `ip`.
    pub host: String,
    /// Set for an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`):
    /// connect there, no lookup at all.
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// `HOST` form: look up HOST's MX records (RFC 5321 section 5) rather
    /// than its addresses.
    pub mx_lookup: bool,
    /// `smtps:`: TLS from the first byte (RFC 8314) instead of STARTTLS.
    pub implicit_tls: bool,
}

impl NextHop {
    pub fn parse(text: &str) -> Result<NextHop, String> {
        let bad = |why: &str| format!("'{text}': {why}");
        let (implicit_tls, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "smtps:") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "smtp:") {
            (false, rest)
        } else {
            (false, text)
        };
        let default_port = if implicit_tls { 465 } else { 25 };

        let (host, port, mx_lookup, ip) = if let Some(inside) = rest.strip_prefix('[') {
            let (inside, after) = inside
                .split_once(']')
                .ok_or_else(|| bad("no ']' after '['"))?;
            let port = match after {
                "" => default_port,
                _ => match after.strip_prefix(':') {
                    Some(port) => parse_port(port).ok_or_else(|| bad("bad port"))?,
                    None => return Err(bad("expected ':PORT' after ']'")),
                },
            };
            let (host, ip) = if let Some(v6) = strip_prefix_ignore_case(inside, "IPv6:") {
                let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad("bad IPv6 address"))?;
                (ip.to_string(), Some(IpAddr::V6(ip)))
            } else if let Ok(ip) = inside.parse::<IpAddr>() {
                (ip.to_string(), Some(ip))
            } else {
                (host_name(inside).ok_or_else(|| bad("bad host name"))?, None)
            };
            (host, port, false, ip)
        } else {
            if let Some((prefix, _)) = rest.split_once('[') {
                return Err(bad(&format!(
                    "unknown prefix '{prefix}' (smtp: or smtps:, then HOST or [HOST])"
                )));
            }
            if rest.parse::<IpAddr>().is_ok() {
                return Err(bad(
                    "an address needs brackets, as in [192.0.2.1] or [2001:db8::1]",
                ));
            }
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port).ok_or_else(|| bad("bad port"))?),
                None => (rest, default_port),
            };
            if host.parse::<IpAddr>().is_ok() {
                return Err(bad("an address needs brackets, as in [192.0.2.1]:PORT"));
            }
            (
                host_name(host).ok_or_else(|| bad("bad host name"))?,
                port,
                true,
                None,
            )
        };
        Ok(NextHop {
            host,
            ip,
            port,
            mx_lookup,
            implicit_tls,
        })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

fn host_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    is_domain(name).then(|| name.to_ascii_lowercase())
}

/// One `--route PATTERN=NEXTHOP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pattern: Pattern,
    pub next_hop: NextHop,
}

impl Route {
    pub fn parse(text: &str) -> Result<Route, String> {
        let (pattern, hop) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not PATTERN=NEXTHOP"))?;
        Ok(Route {
            pattern: Pattern::parse(pattern)?,
            next_hop: NextHop::parse(hop)?,
        })
    }
}

/// The next hop of the first route whose pattern matches `domain`; `None`:
/// the domain's own MX records.
pub fn routes_for<'a>(routes: &'a [Route], domain: &str) -> Option<&'a NextHop> {
    routes
        .iter()
        .find(|r| r.pattern.matches(domain))
        .map(|r| &r.next_hop)
}

/// How much TLS a next hop must give, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsLevel {
    /// Plaintext: no STARTTLS even when offered.
    None,
    /// STARTTLS when offered, plaintext otherwise.
    May,
    /// TLS or no delivery; any certificate.
    Encrypt,
    /// TLS with a chain that verifies against the trust anchors and names
    /// the next hop.
    Verify,
}

/// What `--tls-policy` asks for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlsRequirement {
    pub level: TlsLevel,
    /// `+ocsp`: whenever TLS is used, it must come with a valid stapled
    /// OCSP response (kept with the cached session for resumptions).
    pub ocsp: bool,
}

impl Default for TlsRequirement {
    /// `*=may`.
    fn default() -> TlsRequirement {
        TlsRequirement {
            level: TlsLevel::May,
            ocsp: false,
        }
    }
}

impl TlsRequirement {
    /// `none`, `may`, `encrypt` or `verify`, optionally followed by `+ocsp`
    /// (case-insensitive). `none+ocsp` is refused: a staple needs TLS.
    pub fn parse(text: &str) -> Result<TlsRequirement, String> {
        let (level, ocsp) = match text.split_once('+') {
            Some((level, extra)) if extra.eq_ignore_ascii_case("ocsp") => (level, true),
            Some(_) => return Err(format!("'{text}': the only option after '+' is ocsp")),
            None => (text, false),
        };
        let level = match level.to_ascii_lowercase().as_str() {
            "none" => TlsLevel::None,
            "may" => TlsLevel::May,
            "encrypt" => TlsLevel::Encrypt,
            "verify" => TlsLevel::Verify,
            _ => {
                return Err(format!(
                    "'{text}' is not a TLS level (none, may, encrypt, verify, each optionally +ocsp)"
                ));
            }
        };
        if ocsp && level == TlsLevel::None {
            return Err(format!("'{text}': +ocsp needs TLS, and none has none"));
        }
        Ok(TlsRequirement { level, ocsp })
    }
}

/// One `--tls-policy PATTERN=LEVEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub pattern: Pattern,
    pub requirement: TlsRequirement,
}

impl TlsPolicy {
    pub fn parse(text: &str) -> Result<TlsPolicy, String> {
        let (pattern, level) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not PATTERN=LEVEL"))?;
        Ok(TlsPolicy {
            pattern: Pattern::parse(pattern)?,
            requirement: TlsRequirement::parse(level)?,
        })
    }
}

/// The requirement of the first policy whose pattern matches `domain`;
/// `may` without `+ocsp` when none does.
pub fn tls_policy_for(policies: &[TlsPolicy], domain: &str) -> TlsRequirement {
    policies
        .iter()
        .find(|p| p.pattern.matches(domain))
        .map(|p| p.requirement)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(text: &str) -> NextHop {
        NextHop::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn patterns_match_any_subdomains_or_exactly() {
        let any = Pattern::parse("*").unwrap();
        assert!(any.matches("example.com") && any.matches("x") && any.matches(""));

        let exact = Pattern::parse("Example.COM").unwrap();
        assert_eq!(exact, Pattern::Exact("example.com".into()));
        assert!(exact.matches("example.com"));
        assert!(exact.matches("EXAMPLE.com"));
        assert!(exact.matches("example.com."), "trailing dot");
        assert!(!exact.matches("a.example.com"));
        assert!(!exact.matches("xexample.com"));
        assert!(!exact.matches("example.co"));

        let subs = Pattern::parse(".Example.com").unwrap();
        assert_eq!(subs, Pattern::Subdomains(".example.com".into()));
        assert!(subs.matches("a.example.com"));
        assert!(subs.matches("B.A.EXAMPLE.COM"));
        assert!(subs.matches("a.example.com."));
        assert!(!subs.matches("example.com"), "not the domain itself");
        assert!(!subs.matches("xexample.com"));
        assert!(!subs.matches("a.example.com.evil"));

        assert_eq!(Pattern::parse("example.com.").unwrap(), exact);
        assert!(
            Pattern::parse("bücher.example")
                .unwrap()
                .matches("bücher.example")
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "",
            ".",
            "..example.com",
            "a..b",
            "exa mple.com",
            "*.example.com",
            "a@b",
            "[x]",
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
        assert!(Pattern::parse(&"a".repeat(64)).is_err(), "label over 63");
        assert!(
            Pattern::parse(&["a"; 128].join(".")).is_err(),
            "name over 253"
        );
    }

    #[test]
    fn next_hop_forms() {
        assert_eq!(
            hop("mx.example.net"),
            NextHop {
                host: "mx.example.net".into(),
                ip: None,
                port: 25,
                mx_lookup: true,
                implicit_tls: false,
            }
        );
        assert_eq!(
            hop("Relay.Example.NET.:587"),
            NextHop {
                host: "relay.example.net".into(),
                ip: None,
                port: 587,
                mx_lookup: true,
                implicit_tls: false,
            }
        );
        assert_eq!(
            hop("[mx.example.net]"),
            NextHop {
                host: "mx.example.net".into(),
                ip: None,
                port: 25,
                mx_lookup: false,
                implicit_tls: false,
            }
        );
        assert_eq!(
            hop("[127.0.0.1]:2525"),
            NextHop {
                host: "127.0.0.1".into(),
                ip: Some("127.0.0.1".parse().unwrap()),
                port: 2525,
                mx_lookup: false,
                implicit_tls: false,
            }
        );
        let v6 = NextHop {
            host: "2001:db8::1".into(),
            ip: Some("2001:db8::1".parse().unwrap()),
            port: 25,
            mx_lookup: false,
            implicit_tls: false,
        };
        assert_eq!(hop("[2001:db8::1]"), v6);
        assert_eq!(
            hop("[IPv6:2001:DB8:0::1]"),
            v6,
            "RFC 5321 tag, canonical text"
        );
        assert_eq!(hop("[ipv6:2001:db8::1]"), v6);
        assert_eq!(hop("[::1]:2525").port, 2525);
        assert_eq!(hop("[::1]:2525").ip, Some("::1".parse().unwrap()));
    }

    #[test]
    fn smtps_means_implicit_tls_on_465() {
        let h = hop("smtps:[mx.example.net]");
        assert!(h.implicit_tls && !h.mx_lookup);
        assert_eq!((h.host.as_str(), h.port), ("mx.example.net", 465));
        let h = hop("SMTPS:relay.example.net");
        assert!(h.implicit_tls && h.mx_lookup);
        assert_eq!(h.port, 465);
        let h = hop("smtps:[IPv6:::1]:4650");
        assert!(h.implicit_tls);
        assert_eq!((h.ip, h.port), (Some("::1".parse().unwrap()), 4650));
        let h = hop("smtp:[192.0.2.1]");
        assert!(!h.implicit_tls);
        assert_eq!(h.port, 25);
    }

    #[test]
    fn bad_next_hops_are_named() {
        for (bad, why) in [
            ("", "bad host name"),
            ("[", "no ']'"),
            ("[mx.example.net", "no ']'"),
            ("[mx.example.net]x", "':PORT'"),
            ("[mx.example.net]:", "bad port"),
            ("[mx.example.net]:0", "bad port"),
            ("[mx.example.net]:65536", "bad port"),
            ("[mx.example.net]:+25", "bad port"),
            ("mx.example.net:smtp", "bad port"),
            ("mx..example.net", "bad host name"),
            ("[]", "bad host name"),
            ("[IPv6:192.0.2.1]", "bad IPv6"),
            ("[IPv6:mx.example.net]", "bad IPv6"),
            ("192.0.2.1", "brackets"),
            ("192.0.2.1:25", "brackets"),
            ("2001:db8::1", "brackets"),
            ("::1", "brackets"),
            ("smtps:", "bad host name"),
            ("lmtp:[mx.example.net]", "unknown prefix 'lmtp:'"),
            ("smtps:smtp:[mx.example.net]", "unknown prefix 'smtp:'"),
            ("mx.example.net]", "bad host name"),
            ("mx example.net", "bad host name"),
        ] {
            let err = NextHop::parse(bad).unwrap_err();
            assert!(err.starts_with(&format!("'{bad}'")), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let routes: Vec<Route> = [
            "partner.example=[192.0.2.25]:2525",
            ".partner.example=smtps:[mx.partner.example]",
            "*=smarthost.example.net:587",
            "never.example=[192.0.2.99]",
        ]
        .iter()
        .map(|r| Route::parse(r).unwrap())
        .collect();
        assert_eq!(routes_for(&routes, "Partner.Example").unwrap().port, 2525);
        let sub = routes_for(&routes, "eu.partner.example").unwrap();
        assert!(sub.implicit_tls && sub.host == "mx.partner.example");
        let rest = routes_for(&routes, "never.example").unwrap();
        assert_eq!(
            (rest.host.as_str(), rest.port),
            ("smarthost.example.net", 587)
        );
        assert!(
            routes_for(&routes[..2], "other.example").is_none(),
            "no route: MX"
        );
        assert!(routes_for(&[], "example.com").is_none());
    }

    #[test]
    fn bad_routes_name_the_bad_part() {
        assert!(
            Route::parse("example.com")
                .unwrap_err()
                .contains("PATTERN=NEXTHOP")
        );
        assert!(
            Route::parse("exa mple.com=[x]")
                .unwrap_err()
                .contains("'exa mple.com'")
        );
        assert!(Route::parse("example.com=[x").unwrap_err().contains("'[x'"));
        assert!(Route::parse("=[x]").unwrap_err().contains("''"));
        assert!(Route::parse("example.com=").is_err());
        assert!(Route::parse("a=b=c").unwrap_err().contains("'b=c'"));
    }

    #[test]
    fn tls_levels_and_ocsp() {
        let req = |t: &str| TlsRequirement::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(req("none").level, TlsLevel::None);
        assert_eq!(req("may"), TlsRequirement::default());
        assert_eq!(req("encrypt").level, TlsLevel::Encrypt);
        assert_eq!(
            req("verify+ocsp"),
            TlsRequirement {
                level: TlsLevel::Verify,
                ocsp: true
            }
        );
        assert_eq!(
            req("VERIFY+OCSP"),
            TlsRequirement {
                level: TlsLevel::Verify,
                ocsp: true
            }
        );
        assert!(req("encrypt+ocsp").ocsp);
        assert!(req("may+ocsp").ocsp);
        assert!(!req("verify").ocsp);
        assert!(TlsLevel::None < TlsLevel::May && TlsLevel::Encrypt < TlsLevel::Verify);

        for (bad, why) in [
            ("", "not a TLS level"),
            ("secure", "not a TLS level"),
            ("verify+", "only option"),
            ("verify+crl", "only option"),
            ("+ocsp", "not a TLS level"),
            ("verify+ocsp+ocsp", "only option"),
            ("none+ocsp", "needs TLS"),
        ] {
            let err = TlsRequirement::parse(bad).unwrap_err();
            assert!(
                err.contains(&format!("'{bad}'")) && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn first_matching_tls_policy_wins_and_may_is_the_default() {
        let policies: Vec<TlsPolicy> = [
            "bank.example=verify+ocsp",
            ".bank.example=verify",
            "*=encrypt",
            "legacy.example=none",
        ]
        .iter()
        .map(|p| TlsPolicy::parse(p).unwrap())
        .collect();
        let level = |d: &str| tls_policy_for(&policies, d);
        assert_eq!(
            level("BANK.example"),
            TlsRequirement {
                level: TlsLevel::Verify,
                ocsp: true
            }
        );
        assert_eq!(
            level("mx.bank.example"),
            TlsRequirement {
                level: TlsLevel::Verify,
                ocsp: false
            }
        );
        assert_eq!(
            level("legacy.example").level,
            TlsLevel::Encrypt,
            "* came first"
        );
        assert_eq!(
            tls_policy_for(&policies[..2], "other.example"),
            TlsRequirement::default()
        );
        assert_eq!(tls_policy_for(&[], "x").level, TlsLevel::May);

        assert!(
            TlsPolicy::parse("bank.example")
                .unwrap_err()
                .contains("PATTERN=LEVEL")
        );
        assert!(
            TlsPolicy::parse("bank example=may")
                .unwrap_err()
                .contains("'bank example'")
        );
        assert!(TlsPolicy::parse("*=sure").unwrap_err().contains("'sure'"));
    }
}
