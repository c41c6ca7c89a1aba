//! One lookup as a state machine without I/O: which DNS questions to ask,
//! and how their answers make the list of targets (RFC 5321 section 5,
//! RFC 7505). `Resolver` asks the questions through c-ares and feeds the
//! answers back here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{DnsError, Query, Target};

/// Exchangers whose addresses are looked up, in preference order; the rest
/// of a longer MX set is ignored. No delivery attempt tries more hosts than
/// this, and it bounds the queries one hostile domain can cause (two per
/// exchanger).
pub const MAX_EXCHANGERS: usize = 16;

/// How one DNS question ended, as far as a lookup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// NXDOMAIN: the name does not exist.
    NoSuchName,
    /// The name exists without records of the type asked (NODATA).
    NoData,
    /// A name that cannot be put in a query (an empty label, over 255
    /// bytes): it cannot exist.
    BadName,
    /// Timeout, SERVFAIL, REFUSED, an unreachable server...: try later.
    Temporary(String),
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// (preference, exchanger) as they came.
    Mx(Result<Vec<(u16, String)>, Failure>),
    A(Result<Vec<Ipv4Addr>, Failure>),
    Aaaa(Result<Vec<Ipv6Addr>, Failure>),
    /// The host's addresses in the hosts file (none: not there).
    HostsFile(Vec<IpAddr>),
}

/// A question to ask: `host` is the index of the exchanger (or host) the
/// answer belongs to; MX questions have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    Mx,
    A(usize),
    Aaaa(usize),
    /// The hosts file, for a `Query::Host` (answered without the network).
    HostsFile,
}

#[derive(Debug)]
struct Host {
    name: String,
    preference: u16,
    v6: Option<Result<Vec<Ipv6Addr>, Failure>>,
    v4: Option<Result<Vec<Ipv4Addr>, Failure>>,
}

#[derive(Debug)]
pub struct Lookup {
    /// The domain (`Query::Mx`) or host (`Query::Host`) asked for.
    name: String,
    mx: bool,
    /// No MX records: the domain is its own exchanger.
    implicit: bool,
    /// Empty until the MX answer (for `Query::Mx`).
    hosts: Vec<Host>,
    /// Questions asked and not answered yet.
    waiting: usize,
}

/// What a lookup needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask these (`name`, question) and feed their answers back.
    Ask(Vec<(String, Question)>),
    /// Waiting for answers already asked for.
    Wait,
    Done(Result<Vec<Target>, DnsError>),
}

impl Lookup {
    pub fn start(query: Query) -> (Lookup, Step) {
        let (name, mx) = match query {
            Query::Mx(domain) => (domain, true),
            Query::Host(host) => (host, false),
        };
        let name = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
        let mut lookup = Lookup {
            name,
            mx,
            implicit: false,
            hosts: Vec::new(),
            waiting: 0,
        };
        // An address needs no lookup: a bare one for a host, a bracketed
        // address literal (RFC 5321 4.1.3) for either.
        let literal = address_literal(&lookup.name).or_else(|| match mx {
            true => None,
            false => lookup.name.parse::<IpAddr>().ok(),
        });
        if let Some(ip) = literal {
            let target = Target {
                host: ip.to_string(),
                preference: 0,
                addrs: vec![ip],
            };
            return (lookup, Step::Done(Ok(vec![target])));
        }
        if !mx {
            // A host named by the operator (a `[host]` route) may be one
            // the hosts file knows, as for Exim's `byname` and every other
            // program on the machine; exchangers come from the DNS only.
            lookup.waiting = 1;
            let step = Step::Ask(vec![(lookup.name.clone(), Question::HostsFile)]);
            return (lookup, step);
        }
        lookup.waiting = 1;
        let step = Step::Ask(vec![(lookup.name.clone(), Question::Mx)]);
        (lookup, step)
    }

    /// Feeds the answer to `question`. `random(n)` picks a number below
    /// `n`: it orders exchangers of equal preference.
    pub fn answer(
        &mut self,
        question: Question,
        answer: Answer,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Step {
        self.waiting = self.waiting.saturating_sub(1);
        match (question, answer) {
            (Question::Mx, Answer::Mx(result)) => self.on_mx(result, random),
            (Question::A(i), Answer::A(result)) => {
                if let Some(host) = self.hosts.get_mut(i) {
                    host.v4 = Some(result);
                }
                self.after_address()
            }
            (Question::Aaaa(i), Answer::Aaaa(result)) => {
                if let Some(host) = self.hosts.get_mut(i) {
                    host.v6 = Some(result);
                }
                self.after_address()
            }
            (Question::HostsFile, Answer::HostsFile(found)) => self.on_hosts_file(found),
            // Cannot happen: each question's callback makes its own kind.
            _ => self.after_address(),
        }
    }

    fn on_mx(
        &mut self,
        result: Result<Vec<(u16, String)>, Failure>,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Step {
        let records = match result {
            // An answer of nothing but a CNAME chain leads to a name without
            // MX: NODATA as well.
            Ok(records) if !records.is_empty() => records,
            Ok(_) | Err(Failure::NoData) => {
                // RFC 5321 5.1: no MX, so the domain itself is the one
                // exchanger, at preference 0.
                self.implicit = true;
                return self.ask_addresses(vec![(self.name.clone(), 0)]);
            }
            Err(Failure::NoSuchName | Failure::BadName) => {
                return Step::Done(Err(DnsError::NoSuchDomain));
            }
            Err(Failure::Temporary(why)) => {
                return Step::Done(Err(DnsError::TempFail(format!(
                    "MX lookup of {}: {why}",
                    self.name
                ))));
            }
        };
        if let [(0, host)] = records.as_slice()
            && is_root(host)
        {
            return Step::Done(Err(DnsError::NullMx));
        }
        let exchangers = order_exchangers(records, random);
        if exchangers.is_empty() {
            return Step::Done(Err(DnsError::NoAddress(format!(
                "the MX records of {} name no host",
                self.name
            ))));
        }
        self.ask_addresses(exchangers)
    }

    fn on_hosts_file(&mut self, mut found: Vec<IpAddr>) -> Step {
        if found.is_empty() {
            return self.ask_addresses(vec![(self.name.clone(), 0)]);
        }
        // IPv6 first, as from the DNS; stable, so the file's order within
        // each family stays.
        let mut seen = std::collections::HashSet::new();
        found.retain(|ip| seen.insert(*ip));
        found.sort_by_key(|ip| ip.is_ipv4());
        Step::Done(Ok(vec![Target {
            host: self.name.clone(),
            preference: 0,
            addrs: found,
        }]))
    }

    fn ask_addresses(&mut self, hosts: Vec<(String, u16)>) -> Step {
        let mut questions = Vec::with_capacity(hosts.len() * 2);
        for (i, (name, preference)) in hosts.into_iter().enumerate() {
            questions.push((name.clone(), Question::Aaaa(i)));
            questions.push((name.clone(), Question::A(i)));
            self.hosts.push(Host {
                name,
                preference,
                v6: None,
                v4: None,
            });
        }
        self.waiting += questions.len();
        Step::Ask(questions)
    }

    fn after_address(&mut self) -> Step {
        if self.waiting > 0 {
            return Step::Wait;
        }
        Step::Done(self.targets())
    }

    /// Every host with an address, in order; a host one of whose families
    /// failed temporarily still goes with the addresses of the other.
    fn targets(&mut self) -> Result<Vec<Target>, DnsError> {
        let mut targets = Vec::new();
        let mut temporary: Option<String> = None;
        let mut all_missing = true;
        for host in &mut self.hosts {
            let v6 = host.v6.take().unwrap_or(Ok(Vec::new()));
            let v4 = host.v4.take().unwrap_or(Ok(Vec::new()));
            let mut addrs: Vec<IpAddr> = Vec::new();
            for (family, result) in [
                (
                    "AAAA",
                    v6.map(|v| v.into_iter().map(IpAddr::V6).collect::<Vec<_>>()),
                ),
                ("A", v4.map(|v| v.into_iter().map(IpAddr::V4).collect())),
            ] {
                match result {
                    Ok(found) => {
                        addrs.extend(found);
                        all_missing = false;
                    }
                    Err(Failure::Temporary(why)) => {
                        all_missing = false;
                        temporary.get_or_insert(format!("{family} lookup of {}: {why}", host.name));
                    }
                    Err(Failure::NoData) => all_missing = false,
                    Err(Failure::NoSuchName | Failure::BadName) => {}
                }
            }
            if !addrs.is_empty() {
                targets.push(Target {
                    host: std::mem::take(&mut host.name),
                    preference: host.preference,
                    addrs,
                });
            }
        }
        if !targets.is_empty() {
            return Ok(targets);
        }
        if let Some(why) = temporary {
            return Err(DnsError::TempFail(why));
        }
        let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        if !self.mx || self.implicit {
            // The host (or the domain as its own implicit MX) itself.
            return Err(if all_missing {
                DnsError::NoSuchDomain
            } else {
                DnsError::NoAddress(format!("{} has no A or AAAA record", self.name))
            });
        }
        Err(DnsError::NoAddress(format!(
            "no MX host of {} has an address ({})",
            self.name,
            names.join(", ")
        )))
    }
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]` (or `[2001:db8::1]`).
fn address_literal(name: &str) -> Option<IpAddr> {
    let inside = name.strip_prefix('[')?.strip_suffix(']')?;
    match inside.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inside[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => inside.parse().ok(),
    }
}

/// The root name, as c-ares gives the exchanger of a null MX.
fn is_root(host: &str) -> bool {
    host.is_empty() || host == "."
}

/// Lowest preference first, equal preferences in random order (RFC 5321
/// 5.1); a name listed twice keeps its best preference; the root (a null
/// MX among other records, which RFC 7505 forbids) is skipped, as it has no
/// address anyway; at most `MAX_EXCHANGERS`.
fn order_exchangers(
    records: Vec<(u16, String)>,
    random: &mut dyn FnMut(usize) -> usize,
) -> Vec<(String, u16)> {
    let mut records: Vec<(u16, String)> = records
        .into_iter()
        .filter(|(_, host)| !is_root(host))
        .map(|(p, host)| {
            (
                p,
                host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase(),
            )
        })
        .collect();
    records.sort_by_key(|(p, _)| *p);
    let mut seen = std::collections::HashSet::new();
    records.retain(|(_, host)| seen.insert(host.clone()));
    // Fisher-Yates within each run of equal preference.
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].0;
        let end = records[start..]
            .iter()
            .position(|(p, _)| *p != pref)
            .map_or(records.len(), |n| start + n);
        for i in (start + 1..end).rev() {
            let j = start + random(i - start + 1).min(i - start);
            records.swap(i, j);
        }
        start = end;
    }
    records.truncate(MAX_EXCHANGERS);
    records.into_iter().map(|(p, h)| (h, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_shuffle(_: usize) -> usize {
        0
    }

    fn mx(records: &[(u16, &str)]) -> Answer {
        Answer::Mx(Ok(records
            .iter()
            .map(|(p, h)| (*p, h.to_string()))
            .collect()))
    }

    fn v4(list: &[&str]) -> Answer {
        Answer::A(Ok(list.iter().map(|a| a.parse().unwrap()).collect()))
    }

    fn v6(list: &[&str]) -> Answer {
        Answer::Aaaa(Ok(list.iter().map(|a| a.parse().unwrap()).collect()))
    }

    fn temp(why: &str) -> Failure {
        Failure::Temporary(why.into())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Starts an MX lookup and feeds it `mx_answer`; returns the lookup and
    /// the names of the questions it asked next.
    fn after_mx(domain: &str, mx_answer: Answer) -> (Lookup, Vec<(String, Question)>) {
        let (mut lookup, step) = Lookup::start(Query::Mx(domain.into()));
        let asked = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        assert_eq!(step, Step::Ask(vec![(asked, Question::Mx)]));
        match lookup.answer(Question::Mx, mx_answer, &mut no_shuffle) {
            Step::Ask(questions) => (lookup, questions),
            other => panic!("{other:?}"),
        }
    }

    fn done(step: Step) -> Result<Vec<Target>, DnsError> {
        match step {
            Step::Done(result) => result,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn mx_hosts_in_preference_order_v6_before_v4() {
        let (mut lookup, asked) = after_mx(
            "Example.ORG.",
            mx(&[
                (20, "mx2.example.org"),
                (10, "MX1.example.org."),
                (30, "mx3.example.org"),
            ]),
        );
        assert_eq!(
            asked,
            vec![
                ("mx1.example.org".into(), Question::Aaaa(0)),
                ("mx1.example.org".into(), Question::A(0)),
                ("mx2.example.org".into(), Question::Aaaa(1)),
                ("mx2.example.org".into(), Question::A(1)),
                ("mx3.example.org".into(), Question::Aaaa(2)),
                ("mx3.example.org".into(), Question::A(2)),
            ]
        );
        let r = &mut no_shuffle;
        assert_eq!(
            lookup.answer(Question::A(2), v4(&["192.0.2.3"]), r),
            Step::Wait
        );
        assert_eq!(
            lookup.answer(Question::A(0), v4(&["192.0.2.1"]), r),
            Step::Wait
        );
        lookup.answer(Question::Aaaa(0), v6(&["2001:db8::1", "2001:db8::11"]), r);
        lookup.answer(Question::Aaaa(2), Answer::Aaaa(Err(Failure::NoData)), r);
        lookup.answer(Question::Aaaa(1), Answer::Aaaa(Err(Failure::NoSuchName)), r);
        let last = lookup.answer(Question::A(1), Answer::A(Err(Failure::NoSuchName)), r);
        assert_eq!(
            done(last).unwrap(),
            vec![
                Target {
                    host: "mx1.example.org".into(),
                    preference: 10,
                    addrs: vec![ip("2001:db8::1"), ip("2001:db8::11"), ip("192.0.2.1")],
                },
                Target {
                    host: "mx3.example.org".into(),
                    preference: 30,
                    addrs: vec![ip("192.0.2.3")],
                },
            ],
            "mx2 has no address and is left out"
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_and_duplicates_dropped() {
        let records: Vec<(u16, String)> = [
            (10, "a"),
            (5, "first"),
            (10, "b"),
            (10, "c"),
            (20, "last"),
            (10, "A."),
            (30, "first"),
        ]
        .iter()
        .map(|(p, h)| (*p, h.to_string()))
        .collect();
        let names = |order: Vec<(String, u16)>| -> Vec<String> {
            order.into_iter().map(|(h, _)| h).collect()
        };
        assert_eq!(
            names(order_exchangers(records.clone(), &mut no_shuffle)),
            ["first", "b", "c", "a", "last"]
        );
        let mut seen = std::collections::HashSet::new();
        let mut state = 7usize;
        for _ in 0..200 {
            let mut rng = |n: usize| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) % n
            };
            let order = names(order_exchangers(records.clone(), &mut rng));
            assert_eq!(order.first().unwrap(), "first");
            assert_eq!(order.last().unwrap(), "last");
            let mut middle = order[1..4].to_vec();
            seen.insert(middle.clone());
            middle.sort();
            assert_eq!(middle, ["a", "b", "c"]);
        }
        assert_eq!(seen.len(), 6, "every order of the three at 10 turns up");
        // A random source out of range cannot push an entry out of its run.
        let order = order_exchangers(records, &mut |n| n + 5);
        assert_eq!(order.first().unwrap().0, "first");
        assert_eq!(order.last().unwrap().0, "last");
    }

    #[test]
    fn at_most_max_exchangers() {
        let records: Vec<(u16, String)> = (0..40u16).map(|i| (i, format!("mx{i}"))).collect();
        let order = order_exchangers(records, &mut no_shuffle);
        assert_eq!(order.len(), MAX_EXCHANGERS);
        assert_eq!(
            order.last().unwrap(),
            &(format!("mx{}", MAX_EXCHANGERS - 1), 15)
        );
    }

    #[test]
    fn null_mx_is_permanent() {
        for root in ["", "."] {
            let (mut lookup, _) = Lookup::start(Query::Mx("nullmx.example".into()));
            let step = lookup.answer(Question::Mx, mx(&[(0, root)]), &mut no_shuffle);
            assert_eq!(done(step), Err(DnsError::NullMx));
        }
        // '.' at another preference, alone: no host with an address.
        let (mut lookup, _) = Lookup::start(Query::Mx("odd.example".into()));
        let step = lookup.answer(Question::Mx, mx(&[(10, ".")]), &mut no_shuffle);
        assert!(matches!(done(step), Err(DnsError::NoAddress(_))));
        // '.' beside real exchangers (forbidden by RFC 7505): skipped.
        let (_, asked) = after_mx("mixed.example", mx(&[(0, ""), (10, "mx.mixed.example")]));
        assert_eq!(asked.len(), 2);
        assert!(asked.iter().all(|(name, _)| name == "mx.mixed.example"));
    }

    #[test]
    fn no_mx_means_the_domain_itself_at_preference_0() {
        for nodata in [Answer::Mx(Err(Failure::NoData)), mx(&[])] {
            let (mut lookup, asked) = after_mx("plain.example", nodata);
            assert_eq!(
                asked,
                vec![
                    ("plain.example".into(), Question::Aaaa(0)),
                    ("plain.example".into(), Question::A(0)),
                ]
            );
            let r = &mut no_shuffle;
            lookup.answer(Question::A(0), v4(&["192.0.2.9"]), r);
            let step = lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(Failure::NoData)), r);
            assert_eq!(
                done(step).unwrap(),
                vec![Target {
                    host: "plain.example".into(),
                    preference: 0,
                    addrs: vec![ip("192.0.2.9")],
                }]
            );
        }
        // Nothing at all under the name.
        let (mut lookup, _) = after_mx("bare.example", Answer::Mx(Err(Failure::NoData)));
        let r = &mut no_shuffle;
        lookup.answer(Question::A(0), Answer::A(Err(Failure::NoData)), r);
        let step = lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(Failure::NoData)), r);
        assert_eq!(
            done(step),
            Err(DnsError::NoAddress(
                "bare.example has no A or AAAA record".into()
            ))
        );
    }

    #[test]
    fn mx_failures() {
        let cases = [
            (Failure::NoSuchName, DnsError::NoSuchDomain),
            (Failure::BadName, DnsError::NoSuchDomain),
            (
                temp("timed out"),
                DnsError::TempFail("MX lookup of x.example: timed out".into()),
            ),
        ];
        for (failure, error) in cases {
            let (mut lookup, _) = Lookup::start(Query::Mx("x.example".into()));
            let step = lookup.answer(Question::Mx, Answer::Mx(Err(failure)), &mut no_shuffle);
            assert_eq!(done(step), Err(error));
        }
    }

    #[test]
    fn temporary_failures_of_some_hosts_only_leave_them_out() {
        let (mut lookup, _) = after_mx(
            "t.example",
            mx(&[(10, "mx1.t.example"), (20, "mx2.t.example")]),
        );
        let r = &mut no_shuffle;
        lookup.answer(Question::A(0), Answer::A(Err(temp("timed out"))), r);
        lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(temp("timed out"))), r);
        lookup.answer(Question::A(1), v4(&["192.0.2.2"]), r);
        let step = lookup.answer(Question::Aaaa(1), Answer::Aaaa(Err(Failure::NoData)), r);
        let targets = done(step).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].host, "mx2.t.example");

        // One family failing temporarily: the other's addresses are used.
        let (mut lookup, _) = Lookup::start(Query::Host("h.example".into()));
        lookup.answer(Question::HostsFile, Answer::HostsFile(Vec::new()), r);
        lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(temp("SERVFAIL"))), r);
        let step = lookup.answer(Question::A(0), v4(&["192.0.2.7"]), r);
        assert_eq!(done(step).unwrap()[0].addrs, vec![ip("192.0.2.7")]);

        // All temporary (or temporary beside permanent): TempFail.
        let (mut lookup, _) = after_mx(
            "t.example",
            mx(&[(10, "mx1.t.example"), (20, "mx2.t.example")]),
        );
        lookup.answer(Question::A(0), Answer::A(Err(Failure::NoSuchName)), r);
        lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(Failure::NoSuchName)), r);
        lookup.answer(Question::A(1), Answer::A(Err(temp("timed out"))), r);
        let step = lookup.answer(Question::Aaaa(1), Answer::Aaaa(Err(Failure::NoData)), r);
        assert_eq!(
            done(step),
            Err(DnsError::TempFail(
                "A lookup of mx2.t.example: timed out".into()
            ))
        );
    }

    #[test]
    fn exchangers_without_addresses_are_permanent() {
        let (mut lookup, _) = after_mx(
            "n.example",
            mx(&[(10, "gone.n.example"), (20, "empty.n.example")]),
        );
        let r = &mut no_shuffle;
        lookup.answer(Question::A(0), Answer::A(Err(Failure::NoSuchName)), r);
        lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(Failure::NoSuchName)), r);
        lookup.answer(Question::A(1), Answer::A(Err(Failure::NoData)), r);
        let step = lookup.answer(Question::Aaaa(1), Answer::Aaaa(Err(Failure::NoData)), r);
        assert_eq!(
            done(step),
            Err(DnsError::NoAddress(
                "no MX host of n.example has an address (gone.n.example, empty.n.example)".into()
            ))
        );
    }

    #[test]
    fn hosts_and_literals() {
        for literal in ["192.0.2.1", "2001:db8::1"] {
            let (_, step) = Lookup::start(Query::Host(literal.into()));
            assert_eq!(
                done(step).unwrap(),
                vec![Target {
                    host: literal.into(),
                    preference: 0,
                    addrs: vec![ip(literal)],
                }],
                "no query for an address"
            );
        }
        for (query, literal) in [
            (Query::Mx("[192.0.2.5]".into()), "192.0.2.5"),
            (Query::Mx("[IPv6:2001:DB8::5]".into()), "2001:db8::5"),
            (Query::Host("[2001:db8::5]".into()), "2001:db8::5"),
        ] {
            let (_, step) = Lookup::start(query);
            assert_eq!(
                done(step).unwrap(),
                vec![Target {
                    host: literal.into(),
                    preference: 0,
                    addrs: vec![ip(literal)],
                }],
                "address literal"
            );
        }
        let (_, step) = Lookup::start(Query::Mx("192.0.2.5".into()));
        assert_eq!(
            step,
            Step::Ask(vec![("192.0.2.5".into(), Question::Mx)]),
            "a domain is no address without brackets"
        );
        // A host name: the hosts file first, then the DNS.
        let (mut lookup, step) = Lookup::start(Query::Host("Relay.Example.".into()));
        assert_eq!(
            step,
            Step::Ask(vec![("relay.example".into(), Question::HostsFile)])
        );
        let r = &mut no_shuffle;
        let step = lookup.answer(Question::HostsFile, Answer::HostsFile(Vec::new()), r);
        assert_eq!(
            step,
            Step::Ask(vec![
                ("relay.example".into(), Question::Aaaa(0)),
                ("relay.example".into(), Question::A(0)),
            ])
        );
        lookup.answer(Question::A(0), Answer::A(Err(Failure::NoSuchName)), r);
        let step = lookup.answer(Question::Aaaa(0), Answer::Aaaa(Err(Failure::NoSuchName)), r);
        assert_eq!(done(step), Err(DnsError::NoSuchDomain));

        let (mut lookup, _) = Lookup::start(Query::Host("files.example".into()));
        let found = vec![ip("192.0.2.9"), ip("2001:db8::9"), ip("192.0.2.9")];
        let step = lookup.answer(Question::HostsFile, Answer::HostsFile(found), r);
        assert_eq!(
            done(step).unwrap(),
            vec![Target {
                host: "files.example".into(),
                preference: 0,
                addrs: vec![ip("2001:db8::9"), ip("192.0.2.9")],
            }],
            "from the hosts file, IPv6 first, no query"
        );
    }
}
