//! TCP Fast Open on the way out: toward a next hop whose kept EHLO
//! response allows early pipelining, the delivery process speaks first,
//! so its first commands ride in the SYN once the kernel holds a cookie.
//! (Its own binary: the kernel's counters are global, and no other test
//! may use Fast Open meanwhile.)

mod common;

use common::*;

fn tcp_ext(name: &str) -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn early_commands_ride_in_the_syn() {
    // Client (1) and server (2) bits of net.ipv4.tcp_fastopen, put back
    // afterwards.
    let sysctl = "/proc/sys/net/ipv4/tcp_fastopen";
    let old: u32 = std::fs::read_to_string(sysctl)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::write(sysctl, (old | 3).to_string()).unwrap();
    struct Restore(&'static str, u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, self.1.to_string());
        }
    }
    let _restore = Restore(sysctl, old);

    let next_hop = receiver(&[]);
    let hop = format!("[127.0.0.1]:{}", next_hop.port());
    let sender = sender_with(None, &route(&hop));
    let deliver = |n: usize| {
        let id = submit(
            &sender,
            "a@client.test",
            "bob@remote.example",
            &format!("Subject: {n}\n\nx\n"),
        );
        sender.wait_log(&format!("{id} Completed"));
        let log = sender.log();
        log.lines()
            .find(|l| l.contains(&format!("{id} => ")))
            .unwrap()
            .to_string()
    };
    // The first learns the EHLO response; the second pipelines early,
    // with Fast Open, and fetches the cookie.
    deliver(1);
    assert!(deliver(2).contains(" L* "));
    let before = tcp_ext("TCPFastOpenActive");
    for n in 3..6 {
        assert!(deliver(n).contains(" L* "));
    }
    assert!(
        tcp_ext("TCPFastOpenActive") >= before + 3,
        "the early commands did not ride in the SYN (TcpExt TCPFastOpenActive {} -> {})",
        before,
        tcp_ext("TCPFastOpenActive")
    );
    assert_eq!(next_hop.mailbox_of("remote.example", "bob").len(), 5);
}
