//! The resolver against a real DNS server: dnsmasq on a loopback port,
//! started by each test with the records it needs, driven by a small mio
//! loop like the delivery process's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::*;

#[path = "../../tests/common/dnsmasq.rs"]
#[allow(dead_code)]
mod dnsmasq;
use dnsmasq::Dnsmasq;

/// A "server" that takes queries and never answers.
fn silent_server() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The records most tests share, all under the local domain `test`
/// (anything else under it is NXDOMAIN; outside it, REFUSED).
fn zone() -> Vec<String> {
    args(&[
        "--local=/test/",
        // Three exchangers, two at 10; IPv4 only, both, IPv6 only.
        "--mx-host=multi.test,mx1.multi.test,10",
        "--mx-host=multi.test,mx2.multi.test,20",
        "--mx-host=multi.test,mx3.multi.test,10",
        "--host-record=mx1.multi.test,192.0.2.1",
        "--host-record=mx2.multi.test,192.0.2.2,2001:db8::2",
        "--host-record=mx3.multi.test,2001:db8::3",
        // No MX: the A record is the implicit MX.
        "--host-record=plain.test,192.0.2.9",
        // RFC 7505 null MX.
        "--mx-host=nullmx.test,.,0",
        // A CNAME'd domain, a CNAME to a domain without MX, an exchanger
        // that is a CNAME.
        "--cname=alias.test,multi.test",
        "--cname=www.test,plain.test",
        "--mx-host=viacname.test,mxalias.test,5",
        "--cname=mxalias.test,mx1.multi.test",
        // Exchangers without addresses.
        "--mx-host=noaddr.test,nothing.noaddr.test,10",
        "--mx-host=partial.test,missing.partial.test,5",
        "--mx-host=partial.test,mx2.multi.test,10",
        "--host-record=v6only.test,2001:db8::6",
    ])
}

/// The caller's side: a mio loop that registers what the resolver asks
/// for and checks that what it is told is always valid.
struct Harness {
    poll: Poll,
    events: Events,
    registered: HashMap<RawFd, (bool, bool)>,
    registrations: usize,
    /// Whether any socket was watched for writing (a TCP connect).
    wrote: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(64),
            registered: HashMap::new(),
            registrations: 0,
            wrote: false,
        }
    }

    fn sync(&mut self, resolver: &mut Resolver) {
        for change in resolver.interest() {
            let fd = change.fd();
            match change {
                FdChange::Register {
                    readable, writable, ..
                } => {
                    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
                    assert!(
                        link.to_string_lossy().starts_with("socket:"),
                        "{fd}: {link:?}"
                    );
                    let before = self.registered.insert(fd, (readable, writable));
                    assert!(before.is_none(), "{fd} registered twice");
                    self.registrations += 1;
                    self.wrote |= writable;
                }
                FdChange::Reregister {
                    readable, writable, ..
                } => {
                    let before = self.registered.insert(fd, (readable, writable));
                    assert!(before.is_some(), "{fd} reregistered unregistered");
                    assert_ne!(before, Some((readable, writable)), "{fd}: no change");
                    self.wrote |= writable;
                }
                FdChange::Closed(_) => {
                    assert!(
                        self.registered.remove(&fd).is_some(),
                        "{fd} closed unregistered"
                    );
                }
            }
            change
                .apply(self.poll.registry(), Token(fd as usize))
                .unwrap_or_else(|e| panic!("{change:?}: {e}"));
        }
    }

    /// Runs the loop until `want` results have come, at most `limit`.
    fn run(
        &mut self,
        resolver: &mut Resolver,
        want: usize,
        limit: Duration,
    ) -> HashMap<u64, Result<Vec<Target>, DnsError>> {
        let start = Instant::now();
        let mut out = HashMap::new();
        loop {
            self.sync(resolver);
            for (id, result) in resolver.take_results() {
                assert!(out.insert(id, result).is_none(), "two results for {id}");
            }
            if out.len() >= want {
                assert_eq!(resolver.in_flight(), 0);
                return out;
            }
            let elapsed = start.elapsed();
            assert!(
                elapsed < limit,
                "{} of {want} results after {elapsed:?}",
                out.len()
            );
            let wait = resolver.next_timeout();
            assert!(wait.is_some(), "lookups in flight, yet nothing to wait for");
            let wait = wait.unwrap().min(limit - elapsed);
            let due = Instant::now() + wait;
            self.poll.poll(&mut self.events, Some(wait)).unwrap();
            let ready: Vec<(RawFd, bool, bool)> = self
                .events
                .iter()
                .map(|e| {
                    (
                        e.token().0 as RawFd,
                        e.is_readable() || e.is_read_closed() || e.is_error(),
                        e.is_writable(),
                    )
                })
                .collect();
            for (fd, readable, writable) in ready {
                // An event for a socket closed meanwhile: dropped, as a
                // caller drops events of tokens it has forgotten.
                if self.registered.contains_key(&fd) {
                    resolver.ready(fd, readable, writable);
                    self.sync(resolver);
                }
            }
            if Instant::now() >= due {
                resolver.on_timeout();
            }
        }
    }

    /// One lookup, start to end.
    fn one(&mut self, resolver: &mut Resolver, query: Query) -> Result<Vec<Target>, DnsError> {
        resolver.lookup(7, query);
        self.run(resolver, 1, Duration::from_secs(10))
            .remove(&7)
            .unwrap()
    }
}

fn resolver_for(server: SocketAddr) -> Resolver {
    Resolver::with_timeout(&[server], Duration::from_millis(150), 2).unwrap()
}

fn target(host: &str, preference: u16, addrs: &[&str]) -> Target {
    Target {
        host: host.into(),
        preference,
        addrs: addrs.iter().map(|a| ip(a)).collect(),
    }
}

fn mx(domain: &str) -> Query {
    Query::Mx(domain.into())
}

fn hosts(targets: &[Target]) -> Vec<&str> {
    targets.iter().map(|t| t.host.as_str()).collect()
}

#[test]
fn mx_hosts_in_preference_order_with_v6_then_v4() {
    let dns = Dnsmasq::start(&zone());
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    let targets = harness.one(&mut resolver, mx("multi.test")).unwrap();
    assert!(!harness.wrote, "UDP only");
    assert_eq!(targets.len(), 3, "{targets:?}");
    let mut first_two = targets[..2].to_vec();
    first_two.sort_by(|a, b| a.host.cmp(&b.host));
    assert_eq!(
        first_two,
        [
            target("mx1.multi.test", 10, &["192.0.2.1"]),
            target("mx3.multi.test", 10, &["2001:db8::3"]),
        ]
    );
    assert_eq!(
        targets[2],
        target("mx2.multi.test", 20, &["2001:db8::2", "192.0.2.2"])
    );

    assert_eq!(
        harness.one(&mut resolver, Query::Host("MX2.multi.test.".into())),
        Ok(vec![target(
            "mx2.multi.test",
            0,
            &["2001:db8::2", "192.0.2.2"]
        )])
    );
    assert_eq!(
        harness.one(&mut resolver, Query::Host("v6only.test".into())),
        Ok(vec![target("v6only.test", 0, &["2001:db8::6"])])
    );
}

#[test]
fn equal_preferences_come_in_both_orders() {
    let dns = Dnsmasq::start(&zone());
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    for id in 0..40 {
        resolver.lookup(id, mx("multi.test"));
    }
    let results = harness.run(&mut resolver, 40, Duration::from_secs(10));
    let mut orders = std::collections::HashSet::new();
    for result in results.values() {
        let targets = result.as_ref().unwrap();
        assert_eq!(hosts(targets)[2], "mx2.multi.test");
        orders.insert(hosts(targets)[..2].join(" "));
    }
    assert_eq!(orders.len(), 2, "{orders:?}");
}

#[test]
fn no_mx_null_mx_nxdomain_and_no_address() {
    let dns = Dnsmasq::start(&zone());
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    let mut one = |q| harness.one(&mut resolver, q);
    assert_eq!(
        one(mx("plain.test")),
        Ok(vec![target("plain.test", 0, &["192.0.2.9"])]),
        "implicit MX"
    );
    assert_eq!(one(mx("nullmx.test")), Err(DnsError::NullMx));
    assert_eq!(one(mx("nx.test")), Err(DnsError::NoSuchDomain));
    assert_eq!(
        one(Query::Host("nx.test".into())),
        Err(DnsError::NoSuchDomain)
    );
    assert_eq!(
        one(mx("noaddr.test")),
        Err(DnsError::NoAddress(
            "no MX host of noaddr.test has an address (nothing.noaddr.test)".into()
        ))
    );
    assert_eq!(
        one(mx("partial.test")),
        Ok(vec![target(
            "mx2.multi.test",
            10,
            &["2001:db8::2", "192.0.2.2"]
        )]),
        "an exchanger without address is skipped"
    );
    // Exists (it has an MX) but has no address of its own.
    assert_eq!(
        one(Query::Host("nullmx.test".into())),
        Err(DnsError::NoAddress(
            "nullmx.test has no A or AAAA record".into()
        ))
    );
    // Cannot be asked at all: answered without the network.
    assert_eq!(one(mx("a..b.test")), Err(DnsError::NoSuchDomain));
    assert_eq!(
        one(Query::Host("2001:db8::25".into())),
        Ok(vec![target("2001:db8::25", 0, &["2001:db8::25"])])
    );
}

#[test]
fn cname_chains_are_followed() {
    let dns = Dnsmasq::start(&zone());
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    let targets = harness.one(&mut resolver, mx("alias.test")).unwrap();
    let mut names = hosts(&targets);
    names[..2].sort();
    assert_eq!(
        names,
        ["mx1.multi.test", "mx3.multi.test", "mx2.multi.test"]
    );
    assert_eq!(
        harness.one(&mut resolver, mx("www.test")),
        Ok(vec![target("www.test", 0, &["192.0.2.9"])]),
        "CNAME to a domain without MX: implicit MX under the name asked"
    );
    assert_eq!(
        harness.one(&mut resolver, mx("viacname.test")),
        Ok(vec![target("mxalias.test", 5, &["192.0.2.1"])]),
        "an exchanger that is a CNAME"
    );
}

#[test]
fn a_large_answer_comes_over_tcp() {
    // 40 exchangers with long names do not fit in 1232 bytes: dnsmasq sets
    // TC and c-ares asks again over TCP.
    let mut records = args(&["--local=/test/"]);
    for i in 1..=40 {
        let name = format!("exchanger-with-a-long-name-{i:02}.big.test");
        records.push(format!("--mx-host=big.test,{name},{i}"));
        records.push(format!("--host-record={name},192.0.2.{i}"));
    }
    let dns = Dnsmasq::start(&records);
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    let targets = harness.one(&mut resolver, mx("big.test")).unwrap();
    assert!(harness.wrote, "no TCP connection");
    assert_eq!(targets.len(), MAX_EXCHANGERS);
    for (i, t) in targets.iter().enumerate() {
        let n = i + 1;
        assert_eq!(
            *t,
            target(
                &format!("exchanger-with-a-long-name-{n:02}.big.test"),
                n as u16,
                &[&format!("192.0.2.{n}")]
            )
        );
    }
}

#[test]
fn timeouts_and_refusals_are_temporary_and_bounded() {
    let silent = silent_server();
    let mut records = zone();
    let silent_port = silent.local_addr().unwrap().port();
    records.push(format!("--server=/slow.test/127.0.0.1#{silent_port}"));
    records.push("--mx-host=mixed.test,mx.slow.test,5".into());
    records.push("--mx-host=mixed.test,mx1.multi.test,10".into());
    let dns = Dnsmasq::start(&records);
    let mut harness = Harness::new();

    // Nobody answers at all.
    let mut resolver = resolver_for(silent.local_addr().unwrap());
    let start = Instant::now();
    let result = harness.one(&mut resolver, mx("multi.test"));
    assert_eq!(
        result,
        Err(DnsError::TempFail(
            "MX lookup of multi.test: timed out".into()
        ))
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // The server forwards to nobody: the same, through a real server.
    let mut resolver = resolver_for(dns.addr);
    let start = Instant::now();
    let result = harness.one(&mut resolver, mx("x.slow.test"));
    assert!(
        matches!(&result, Err(DnsError::TempFail(why)) if why.contains("timed out")),
        "{result:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));

    // One exchanger times out, the other answers: the lookup succeeds.
    assert_eq!(
        harness.one(&mut resolver, mx("mixed.test")),
        Ok(vec![target("mx1.multi.test", 10, &["192.0.2.1"])])
    );

    // REFUSED (dnsmasq has no upstream for other domains).
    let result = harness.one(&mut resolver, mx("example.org"));
    assert!(
        matches!(&result, Err(e @ DnsError::TempFail(why)) if why.contains("REFUSED") && !e.is_permanent()),
        "{result:?}"
    );

    // Nothing listens on the port: the refusal comes back at once.
    let closed = {
        let s = silent_server();
        s.local_addr().unwrap()
    };
    let mut resolver = resolver_for(closed);
    let start = Instant::now();
    let result = harness.one(&mut resolver, mx("multi.test"));
    assert!(matches!(result, Err(DnsError::TempFail(_))), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn many_lookups_at_once() {
    let dns = Dnsmasq::start(&zone());
    let mut resolver = resolver_for(dns.addr);
    let mut harness = Harness::new();
    let queries = [
        mx("multi.test"),
        mx("plain.test"),
        mx("nullmx.test"),
        mx("nx.test"),
        mx("alias.test"),
        Query::Host("mx2.multi.test".into()),
    ];
    let n = 300u64;
    for id in 0..n {
        resolver.lookup(id, queries[id as usize % queries.len()].clone());
        // The caller registers as it goes, lookups and events interleaved.
        harness.sync(&mut resolver);
    }
    assert!(resolver.in_flight() > 0);
    let start = Instant::now();
    let results = harness.run(&mut resolver, n as usize, Duration::from_secs(20));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    for (id, result) in &results {
        match id % 6 {
            0 | 4 => assert_eq!(result.as_ref().unwrap().len(), 3, "{id}: {result:?}"),
            1 => assert_eq!(result, &Ok(vec![target("plain.test", 0, &["192.0.2.9"])])),
            2 => assert_eq!(result, &Err(DnsError::NullMx)),
            3 => assert_eq!(result, &Err(DnsError::NoSuchDomain)),
            _ => assert_eq!(
                result,
                &Ok(vec![target(
                    "mx2.multi.test",
                    0,
                    &["2001:db8::2", "192.0.2.2"]
                )])
            ),
        }
    }
    // Around 1200 queries on sockets of 32 queries each: c-ares moved on
    // to new sockets (new source ports) many times, and the caller was told
    // each time.
    assert!(harness.registrations > 10, "{}", harness.registrations);
    assert_eq!(resolver.next_timeout(), None, "idle");
}

#[test]
fn interest_changes_are_valid_in_order() {
    let mut resolver = Resolver::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
    let mut report = |reports: &[(RawFd, bool, bool)]| {
        lock(&resolver.inbox).sockets.extend_from_slice(reports);
        resolver.interest()
    };
    let register = |fd, writable| FdChange::Register {
        fd,
        readable: true,
        writable,
    };
    assert_eq!(report(&[(5, true, false)]), [register(5, false)]);
    assert_eq!(
        report(&[(5, true, true)]),
        [FdChange::Reregister {
            fd: 5,
            readable: true,
            writable: true
        }]
    );
    assert_eq!(report(&[(5, true, true)]), [], "no change");
    assert_eq!(
        report(&[(5, true, false), (5, true, true)]),
        [],
        "back where it was"
    );
    // Closed and the number reused by a new socket: forget, register anew.
    assert_eq!(
        report(&[(5, false, false), (5, true, true)]),
        [FdChange::Closed(5), register(5, true)]
    );
    // Opened and closed between two calls: nothing to do.
    assert_eq!(report(&[(6, true, false), (6, false, false)]), []);
    assert_eq!(
        report(&[(7, true, true), (5, false, false), (7, true, false)]),
        [register(7, false), FdChange::Closed(5)]
    );
    assert_eq!(report(&[(5, false, false)]), [], "already closed");
    assert_eq!(report(&[]), []);

    let change = register(3, true);
    assert_eq!(
        change.interest(),
        Some(mio::Interest::READABLE | mio::Interest::WRITABLE)
    );
    assert_eq!(register(3, false).interest(), Some(mio::Interest::READABLE));
    assert_eq!(FdChange::Closed(3).interest(), None);
}

#[test]
fn resolv_conf_servers_by_default() {
    let resolver = Resolver::new(&[]).unwrap();
    assert_eq!(resolver.next_timeout(), None);
    assert_eq!(resolver.in_flight(), 0);
    assert!(c_ares_version().starts_with("1."), "{}", c_ares_version());
}

#[test]
fn dns_server_flags() {
    let ok = |t: &str| parse_server(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(ok("192.0.2.53"), "192.0.2.53:53".parse().unwrap());
    assert_eq!(ok("192.0.2.53:5353"), "192.0.2.53:5353".parse().unwrap());
    assert_eq!(ok("2001:db8::53"), "[2001:db8::53]:53".parse().unwrap());
    assert_eq!(ok("[2001:db8::53]"), "[2001:db8::53]:53".parse().unwrap());
    assert_eq!(ok("[::1]:5353"), "[::1]:5353".parse().unwrap());
    for bad in [
        "",
        "dns.example",
        "192.0.2.53:",
        "192.0.2.53:0",
        "192.0.2.53:99999",
        "[::1",
    ] {
        let err = parse_server(bad).unwrap_err();
        assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
    }
    let mut two = Resolver::new(&[ok("127.0.0.1:5353"), ok("[::1]:5353")]).unwrap();
    assert_eq!(two.interest(), []);
}

#[test]
fn c_ares_statuses_map_to_permanent_or_temporary() {
    use c_ares::Error as E;
    assert_eq!(failure(E::ENOTFOUND), Failure::NoSuchName);
    assert_eq!(failure(E::ENODATA), Failure::NoData);
    assert_eq!(failure(E::EBADNAME), Failure::BadName);
    for (status, text) in [
        (E::ESERVFAIL, "SERVFAIL"),
        (E::EREFUSED, "REFUSED"),
        (E::ETIMEOUT, "timed out"),
        (E::ECONNREFUSED, "refused"),
        (E::EBADRESP, ""),
        (E::ECANCELLED, ""),
    ] {
        match failure(status) {
            Failure::Temporary(why) => assert!(why.contains(text), "{status:?}: {why}"),
            other => panic!("{status:?}: {other:?}"),
        }
    }
    assert!(DnsError::NullMx.is_permanent());
    assert!(DnsError::NoSuchDomain.is_permanent());
    assert!(DnsError::NoAddress(String::new()).is_permanent());
    assert!(!DnsError::TempFail(String::new()).is_permanent());
    assert_eq!(
        DnsError::NullMx.to_string(),
        "the domain accepts no mail (null MX)"
    );
}

#[test]
fn a_host_in_the_hosts_file_needs_no_dns_server_and_an_exchanger_does() {
    // Nothing answers on port 9 of loopback: any DNS query fails.
    let mut resolver = resolver_for("127.0.0.1:9".parse().unwrap());
    let mut harness = Harness::new();
    let found = harness
        .one(&mut resolver, Query::Host("LocalHost".into()))
        .expect("localhost from the hosts file");
    assert_eq!(hosts(&found), ["localhost"]);
    assert!(found[0].addrs.contains(&ip("127.0.0.1")), "{found:?}");
    // MX lookups never look in the file.
    assert!(matches!(
        harness.one(&mut resolver, mx("localhost")),
        Err(DnsError::TempFail(_))
    ));
}
