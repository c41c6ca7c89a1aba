//! The trace header block gsmtpd prepends to every stored message
//! (RFC 5321 4.4): `Return-Path:` and `Received:`, the latter naming the
//! TLS version and cipher so a reader can see how the message arrived.

use std::fmt::Write;

use crate::smtp::{Envelope, TlsInfo};

/// The header lines, LF-terminated as the Maildir file stores them.
pub fn trace_headers(env: &Envelope, id: &str, hostname: &str, unix_secs: u64) -> Vec<u8> {
    let mut h = format!("Return-Path: <{}>\n", clean(&env.sender));
    h.push_str(&received(env, id, hostname, unix_secs));
    h.into_bytes()
}

/// The `Received:` header alone, LF-terminated: what a message sent
/// onward carries (a Return-Path is added only at final delivery).
pub fn received(env: &Envelope, id: &str, hostname: &str, unix_secs: u64) -> String {
    let mut h = String::with_capacity(256);
    let _ = writeln!(
        h,
        "Received: from {} ([{}])",
        clean(&env.helo),
        env.peer.ip()
    );
    let _ = write!(h, "\tby {hostname} (gsmtpd) with {}", env.protocol());
    if let Some(tls) = &env.tls {
        let _ = write!(h, "\n\t{}", tls_comment(tls));
    }
    let _ = write!(h, "\n\tid {id}");
    if let [only] = env.recipients.as_slice() {
        // RFC 5321 4.4: a "for" clause only when it names one recipient,
        // so that it does not disclose the other (bcc) recipients.
        let _ = write!(h, "\n\tfor <{}>", clean(&only.mailbox()));
    }
    let _ = writeln!(h, ";\n\t{}", rfc5322_date(unix_secs));
    h
}

/// `(using TLS1.3 with cipher TLS_AES_256_GCM_SHA384 (256 bits))`
pub fn tls_comment(tls: &TlsInfo) -> String {
    format!(
        "(using {} with cipher {} ({} bits))",
        tls.version, tls.cipher, tls.bits
    )
}

/// Client-supplied text goes into a header: nothing may break the line or
/// the comment syntax around it.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// RFC 5322 date-time in UTC, e.g. `Tue, 24 Nov 2026 01:42:47 +0000`.
pub fn rfc5322_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), after Howard
/// Hinnant's algorithm for the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Body, Recipient};

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_484_567),
            "Tue, 24 Nov 2026 01:42:47 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_799),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }

    fn envelope(recipients: usize) -> Envelope {
        Envelope {
            helo: "client\r\nX-Evil: (yes)".into(),
            esmtp: true,
            peer: "192.0.2.7:4321".parse().unwrap(),
            tls: Some(TlsInfo {
                version: "TLS1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                bits: 256,
                resumed: false,
            }),
            sender: "a@example.net".into(),
            recipients: (0..recipients)
                .map(|i| Recipient {
                    local: format!("u{i}"),
                    domain: "example.org".into(),
                    relay: false,
                })
                .collect(),
            body: Body::EightBitMime,
            smtputf8: false,
            chunking: false,
            early_pipelining: None,
        }
    }

    #[test]
    fn header_names_tls_and_cannot_be_broken_by_the_client() {
        let text =
            String::from_utf8(trace_headers(&envelope(1), "ID1", "mx.example.org", 0)).unwrap();
        assert_eq!(
            text,
            "Return-Path: <a@example.net>\n\
             Received: from client??X-Evil: ?yes? ([192.0.2.7])\n\
             \tby mx.example.org (gsmtpd) with ESMTPS\n\
             \t(using TLS1.3 with cipher TLS_AES_256_GCM_SHA384 (256 bits))\n\
             \tid ID1\n\
             \tfor <u0@example.org>;\n\
             \tThu, 01 Jan 1970 00:00:00 +0000\n"
        );
        let two = String::from_utf8(trace_headers(&envelope(2), "ID2", "mx", 0)).unwrap();
        assert!(!two.contains("for <"), "no recipient disclosed: {two}");
    }
}
