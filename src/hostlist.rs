//! Client address lists such as `--pipe-connect-hosts`: addresses and
//! CIDR blocks, IPv4 and IPv6, `*` for all, empty for none.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostList {
    any: bool,
    nets: Vec<(IpAddr, u8)>,
}

impl HostList {
    /// Parses a comma-separated list; the error names the bad item.
    pub fn parse(text: &str) -> Result<HostList, String> {
        let mut list = HostList {
            any: false,
            nets: Vec::new(),
        };
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                list.any = true;
                continue;
            }
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("'{item}' is not an address or CIDR"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or(format!("'{item}' has a bad prefix"))?,
            };
            list.nets.push((addr, prefix));
        }
        Ok(list)
    }

    pub fn matches(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.any
            || self
                .nets
                .iter()
                .any(|&(net, prefix)| in_net(ip, net, prefix))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            same_prefix(u32::from(a).into(), u32::from(n).into(), prefix, 32)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => same_prefix(u128::from(a), u128::from(n), prefix, 128),
        _ => false,
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn star_empty_addresses_and_cidrs() {
        assert!(HostList::parse("*").unwrap().matches(ip("203.0.113.9")));
        assert!(!HostList::parse("").unwrap().matches(ip("127.0.0.1")));
        let list = HostList::parse("127.0.0.1, 192.0.2.0/24,2001:db8::/32").unwrap();
        assert!(list.matches(ip("127.0.0.1")));
        assert!(!list.matches(ip("127.0.0.2")));
        assert!(list.matches(ip("192.0.2.200")));
        assert!(!list.matches(ip("192.0.3.1")));
        assert!(list.matches(ip("2001:db8:ffff::1")));
        assert!(!list.matches(ip("2001:db9::1")));
        assert!(list.matches(ip("::ffff:192.0.2.1")), "v4-mapped");
        assert!(HostList::parse("0.0.0.0/0").unwrap().matches(ip("8.8.8.8")));
        assert!(HostList::parse("::/0").unwrap().matches(ip("::1")));
    }

    #[test]
    fn bad_items_are_named() {
        assert!(
            HostList::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("10.0.0.0/33")
        );
        assert!(
            HostList::parse("example.org")
                .unwrap_err()
                .contains("example.org")
        );
        assert!(HostList::parse("::1/129").is_err());
    }
}
