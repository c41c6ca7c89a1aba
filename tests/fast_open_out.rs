//! TCP Fast Open on the way out: toward a next hop whose kept EHLO
//! response allows early pipelining, the delivery process speaks first,
//! so its first commands ride in the SYN once the kernel holds a cookie.
//! (Its own binary: the kernel's counters are global, and no other test
//! may use Fast Open meanwhile.)

mod common;

use common::*;

#[test]
fn early_commands_ride_in_the_syn() {
    let _fast_open = fast_open_on();
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
