//! Where queued mail goes: recipients are grouped by destination (the
//! next hop their domain routes to, and the TLS that domain requires), and
//! each destination keeps its waiting jobs, the addresses its lookup gave,
//! and how many connections it has open. Sans-I/O.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::dns::{Query, Target};
use crate::routing::{self, NextHop, Route, TlsPolicy, TlsRequirement};

/// Connections one destination may have open at once (Postfix's
/// default_destination_concurrency_limit is 20; a hop that takes mail
/// slowly should not tie up more than a few).
pub const CONCURRENCY: usize = 5;

/// How a destination is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hop {
    /// The recipient domain's MX records (then its A/AAAA).
    Mx { domain: String, port: u16 },
    /// A `--route` next hop.
    Route(NextHop),
}

impl Hop {
    /// The next hop for recipient domain `domain`.
    pub fn for_domain(routes: &[Route], domain: &str) -> Hop {
        match routing::routes_for(routes, domain) {
            Some(next_hop) => Hop::Route(next_hop.clone()),
            // An address literal is its own (only) address.
            None => match literal(domain) {
                Some(ip) => Hop::Route(NextHop {
                    host: ip.to_string(),
                    ip: Some(ip),
                    port: 25,
                    mx_lookup: false,
                    implicit_tls: false,
                }),
                None => Hop::Mx {
                    domain: domain.to_string(),
                    port: 25,
                },
            },
        }
    }

    /// What to ask the resolver.
    pub fn query(&self) -> Query {
        match self {
            Hop::Mx { domain, .. } => Query::Mx(domain.clone()),
            Hop::Route(h) if h.mx_lookup => Query::Mx(h.host.clone()),
            Hop::Route(h) => Query::Host(h.host.clone()),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Hop::Mx { port, .. } => *port,
            Hop::Route(h) => h.port,
        }
    }

    pub fn implicit_tls(&self) -> bool {
        matches!(self, Hop::Route(h) if h.implicit_tls)
    }

    /// For log lines and the key of a destination.
    pub fn describe(&self) -> String {
        match self {
            Hop::Mx { domain, .. } => domain.clone(),
            Hop::Route(h) => {
                let scheme = if h.implicit_tls { "smtps:" } else { "" };
                if h.mx_lookup {
                    format!("{scheme}{}:{}", h.host, h.port)
                } else {
                    format!("{scheme}[{}]:{}", h.host, h.port)
                }
            }
        }
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
    inner.parse().ok()
}

/// Identifies a destination: how it is reached and with what TLS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub hop: Hop,
    pub tls: TlsRequirement,
}

impl Key {
    pub fn for_domain(routes: &[Route], policies: &[TlsPolicy], domain: &str) -> Key {
        Key {
            hop: Hop::for_domain(routes, domain),
            tls: routing::tls_policy_for(policies, domain),
        }
    }
}

/// One message's recipients for one destination: one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    /// Indices into the message's envelope recipients.
    pub rcpts: Vec<usize>,
}

/// Where one attempt may connect, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The MX (or route) host name: for SNI, verification and the log.
    pub host: String,
    pub addr: SocketAddr,
}

#[derive(Debug)]
pub struct Destination {
    pub key: Key,
    pub jobs: VecDeque<Job>,
    /// What the last lookup gave, in the order to try.
    pub addresses: Option<Vec<Address>>,
    pub resolving: bool,
    pub connections: usize,
    /// Connections it may have at once: `CONCURRENCY`, lowered to what
    /// worked when a further connection failed while others delivered (a
    /// server that takes only so many at a time), until the destination is
    /// forgotten.
    pub limit: usize,
    /// Unreachable (every address failed, or the lookup did): new jobs are
    /// deferred without a try until then, as Postfix's queue manager does
    /// with a dead destination, rather than each paying its own failed
    /// connection.
    pub down: Option<(Instant, String)>,
}

impl Destination {
    pub fn new(key: Key) -> Destination {
        Destination {
            key,
            jobs: VecDeque::new(),
            addresses: None,
            resolving: false,
            connections: 0,
            limit: CONCURRENCY,
            down: None,
        }
    }

    /// Another connection would help: jobs wait beyond what the open
    /// connections will take, and the limit allows one.
    pub fn wants_connection(&self) -> bool {
        !self.jobs.is_empty() && self.jobs.len() > self.connections && self.connections < self.limit
    }

    /// Why it is down, if it still is at `now`.
    pub fn down_at(&self, now: Instant) -> Option<&str> {
        match &self.down {
            Some((until, why)) if *until > now => Some(why),
            _ => None,
        }
    }

    /// Worth keeping: it has work, or remembers being down.
    pub fn in_use(&self, now: Instant) -> bool {
        !self.jobs.is_empty()
            || self.connections > 0
            || self.resolving
            || self.down_at(now).is_some()
    }

    /// The resolver's answer, flattened into addresses to try in order.
    pub fn resolved(&mut self, targets: &[Target]) {
        let port = self.key.hop.port();
        let mut addresses = Vec::new();
        for target in targets {
            for ip in &target.addrs {
                let addr = SocketAddr::new(*ip, port);
                if !addresses.iter().any(|a: &Address| a.addr == addr) {
                    addresses.push(Address {
                        host: target.host.clone(),
                        addr,
                    });
                }
            }
        }
        self.addresses = Some(addresses);
        self.resolving = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(specs: &[&str]) -> Vec<Route> {
        specs.iter().map(|s| Route::parse(s).unwrap()).collect()
    }

    #[test]
    fn domains_route_to_mx_lookups_routes_or_their_literal() {
        let r = routes(&[
            ".relay.example=[127.0.0.1]:2525",
            "smarthost.example=smtps:hub.example",
        ]);
        let hop = Hop::for_domain(&r, "a.relay.example");
        assert_eq!(hop.describe(), "[127.0.0.1]:2525");
        assert_eq!(hop.query(), Query::Host("127.0.0.1".into()));
        let hop = Hop::for_domain(&r, "smarthost.example");
        assert!(hop.implicit_tls());
        assert_eq!(hop.port(), 465);
        assert_eq!(hop.query(), Query::Mx("hub.example".into()));
        let hop = Hop::for_domain(&r, "other.example");
        assert_eq!(hop.query(), Query::Mx("other.example".into()));
        assert_eq!(hop.port(), 25);
        let hop = Hop::for_domain(&r, "[192.0.2.1]");
        assert_eq!(hop.query(), Query::Host("192.0.2.1".into()));
        let hop = Hop::for_domain(&r, "[IPv6:2001:db8::1]");
        assert_eq!(hop.query(), Query::Host("2001:db8::1".into()));
    }

    #[test]
    fn addresses_keep_mx_order_without_repeats() {
        let key = Key::for_domain(&[], &[], "x.example");
        let mut d = Destination::new(key);
        let t = |host: &str, pref, ips: &[&str]| Target {
            host: host.into(),
            preference: pref,
            addrs: ips.iter().map(|i| i.parse().unwrap()).collect(),
        };
        d.resolved(&[
            t("mx1.x.example", 10, &["192.0.2.1", "2001:db8::1"]),
            t("mx2.x.example", 20, &["192.0.2.1", "192.0.2.2"]),
        ]);
        let got: Vec<String> = d
            .addresses
            .unwrap()
            .iter()
            .map(|a| format!("{} {}", a.host, a.addr))
            .collect();
        assert_eq!(
            got,
            [
                "mx1.x.example 192.0.2.1:25",
                "mx1.x.example [2001:db8::1]:25",
                "mx2.x.example 192.0.2.2:25"
            ]
        );
    }

    #[test]
    fn connections_open_while_jobs_wait_up_to_the_limit() {
        let mut d = Destination::new(Key::for_domain(&[], &[], "x.example"));
        assert!(!d.wants_connection());
        for i in 0..10 {
            d.jobs.push_back(Job {
                id: format!("m{i}"),
                rcpts: vec![0],
            });
        }
        d.connections = CONCURRENCY - 1;
        assert!(d.wants_connection());
        d.connections = CONCURRENCY;
        assert!(!d.wants_connection());
        d.connections = 2;
        d.limit = 2;
        assert!(!d.wants_connection(), "a lowered limit holds");
        d.limit = CONCURRENCY;
        d.jobs.truncate(2);
        d.connections = 2;
        assert!(!d.wants_connection(), "enough connections for the jobs");
    }
}
