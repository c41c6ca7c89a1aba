use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::*;
use crate::test_support::TempDir;

fn parts() -> KeyParts<'static> {
    KeyParts {
        host: "mx.example.net",
        addr: "192.0.2.25:25".parse().unwrap(),
        sni: Some("mx.example.net"),
        implicit_tls: false,
        policy: "verify+ocsp",
        priority: "NORMAL",
        trust: "system",
    }
}

fn key() -> SessionKey {
    SessionKey::new(&parts())
}

fn temp() -> (TempDir, PathBuf) {
    let dir = TempDir::new("client-cache-test");
    let path = dir.path().join("client-cache.sqlite");
    (dir, path)
}

fn tls13(data: &[u8], expires: i64) -> NewSession {
    NewSession {
        data: data.to_vec(),
        expires,
        ocsp_until: None,
        once: true,
    }
}

fn tls12(data: &[u8], expires: i64) -> NewSession {
    NewSession {
        once: false,
        ..tls13(data, expires)
    }
}

#[test]
fn every_field_of_the_key_changes_it() {
    let base = key();
    let p = parts();
    let variants = [
        KeyParts {
            host: "mx2.example.net",
            ..p.clone()
        },
        KeyParts {
            addr: "192.0.2.26:25".parse().unwrap(),
            ..p.clone()
        },
        KeyParts {
            addr: "192.0.2.25:587".parse().unwrap(),
            ..p.clone()
        },
        KeyParts {
            sni: None,
            ..p.clone()
        },
        KeyParts {
            implicit_tls: true,
            ..p.clone()
        },
        KeyParts {
            policy: "verify",
            ..p.clone()
        },
        KeyParts {
            priority: "NORMAL:-VERS-TLS1.3",
            ..p.clone()
        },
        KeyParts {
            trust: "file:/etc/ca.pem:00",
            ..p.clone()
        },
    ];
    let mut seen = vec![base.clone()];
    for v in &variants {
        let k = SessionKey::new(v);
        assert!(!seen.contains(&k), "{v:?} gives a key already seen");
        seen.push(k);
    }
    assert_eq!(
        SessionKey::new(&parts()),
        base,
        "the same parts, the same key"
    );
}

#[test]
fn fields_cannot_run_into_each_other() {
    let a = KeyParts {
        host: "a;sni:1:b",
        sni: None,
        ..parts()
    };
    let b = KeyParts {
        host: "a",
        sni: Some("b"),
        ..parts()
    };
    assert_ne!(SessionKey::new(&a), SessionKey::new(&b));
}

#[test]
fn the_trust_label_follows_the_ca_file_contents() {
    let (_dir, path) = temp();
    fs::write(&path, "one").unwrap();
    let first = trust_label(Some(&path));
    fs::write(&path, "two").unwrap();
    let second = trust_label(Some(&path));
    assert_ne!(first, second);
    assert!(first.starts_with("file:"), "{first}");
    assert_eq!(trust_label(None), "system");
}

#[test]
fn a_tls13_ticket_is_used_once() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(&key(), &tls13(b"ticket", 2000));
    let got = cache.take(&key(), 1001, false).expect("stored");
    assert_eq!(got.data, b"ticket");
    assert_eq!(cache.take(&key(), 1001, false), None, "taken once only");
}

#[test]
fn tls13_tickets_wait_side_by_side_newest_first_and_a_few_per_key() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    for i in 0..6u8 {
        cache.store(&key(), &tls13(&[i + 1], 2000));
    }
    let mut taken = Vec::new();
    while let Some(c) = cache.take(&key(), 1001, false) {
        taken.push(c.data[0]);
    }
    assert_eq!(
        taken,
        [6, 5, 4, 3],
        "the newest TICKETS_PER_KEY, newest first"
    );
}

#[test]
fn a_tls12_session_is_offered_again_until_replaced() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(&key(), &tls12(b"old", 2000));
    assert_eq!(cache.take(&key(), 1001, false).unwrap().data, b"old");
    assert_eq!(cache.take(&key(), 1002, false).unwrap().data, b"old");
    cache.store(&key(), &tls12(b"new", 2000));
    assert_eq!(cache.take(&key(), 1003, false).unwrap().data, b"new");
    assert_eq!(cache.keys().len(), 1, "the old one is gone");
}

#[test]
fn rows_expire_with_the_ticket_lifetime() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(&key(), &tls12(b"s", 1500));
    assert!(cache.take(&key(), 1499, false).is_some());
    assert_eq!(cache.take(&key(), 1500, false), None, "expired at its time");
    cache.purge(1500);
    assert!(cache.keys().is_empty(), "purged");
}

#[test]
fn ocsp_needs_a_staple_that_still_holds() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(
        &key(),
        &NewSession {
            ocsp_until: Some(1200),
            ..tls12(b"stapled", 5000)
        },
    );
    let got = cache.take(&key(), 1100, true).expect("staple holds");
    assert_eq!(got.ocsp_until, Some(1200));
    assert_eq!(cache.take(&key(), 1200, true), None, "past nextUpdate");
    assert!(
        cache.take(&key(), 1200, false).is_some(),
        "fine without +ocsp"
    );
    cache.store(&key(), &tls12(b"unstapled", 5000));
    assert_eq!(
        cache.take(&key(), 1100, true),
        None,
        "no staple, no resumption"
    );
}

#[test]
fn forget_drops_every_session_of_a_key_only() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    let other = SessionKey::new(&KeyParts {
        host: "other.example",
        ..parts()
    });
    cache.store(&key(), &tls13(b"a", 2000));
    cache.store(&key(), &tls13(b"b", 2000));
    cache.store(&other, &tls13(b"c", 2000));
    cache.forget(&key());
    assert_eq!(cache.take(&key(), 1001, false), None);
    assert!(cache.take(&other, 1001, false).is_some());
}

#[test]
fn sessions_survive_a_restart_and_expired_ones_do_not() {
    let (_dir, path) = temp();
    {
        let mut cache = ClientCache::open(&path, 1000);
        cache.store(&key(), &tls13(b"lives", 5000));
        let short = SessionKey::new(&KeyParts {
            host: "short.example",
            ..parts()
        });
        cache.store(&short, &tls13(b"dies", 1100));
    }
    let mut cache = ClientCache::open(&path, 2000);
    assert_eq!(cache.keys(), [key().as_str().to_string()], "purged at open");
    assert_eq!(cache.take(&key(), 2000, false).unwrap().data, b"lives");
}

#[test]
fn the_file_is_private() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(&key(), &tls13(b"x", 2000));
    for p in [path.clone(), sqlite_file::sidecar(&path, "-wal")] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn a_broken_file_is_moved_aside_and_replaced() {
    let (_dir, path) = temp();
    fs::write(&path, vec![0x55u8; 8192]).unwrap();
    let mut cache = ClientCache::open(&path, 1000);
    assert!(cache.is_on());
    cache.store(&key(), &tls13(b"x", 2000));
    assert!(cache.take(&key(), 1001, false).is_some());
    let aside = sqlite_file::sidecar(&path, ".broken");
    assert_eq!(fs::read(aside).unwrap(), vec![0x55u8; 8192]);
}

#[test]
fn an_unusable_path_leaves_the_cache_off_without_failing() {
    let (dir, _) = temp();
    let mut cache = ClientCache::open(dir.path(), 1000);
    assert!(!cache.is_on());
    cache.store(&key(), &tls13(b"x", 2000));
    assert_eq!(cache.take(&key(), 1001, false), None);
}

#[test]
fn oversized_or_empty_data_is_not_stored() {
    let (_dir, path) = temp();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store(&key(), &tls13(b"", 2000));
    cache.store(&key(), &tls13(&vec![1u8; MAX_DATA_LEN + 1], 2000));
    assert!(cache.keys().is_empty());
}

#[test]
fn off_caches_nothing() {
    let mut cache = ClientCache::off();
    assert!(!cache.is_on());
    cache.store(&key(), &tls13(b"x", 2000));
    assert_eq!(cache.take(&key(), 1001, false), None);
}

#[test]
fn ehlo_responses_are_kept_per_address_and_tls_until_they_expire() {
    let (_dir, path) = temp();
    let addr: SocketAddr = "192.0.2.25:25".parse().unwrap();
    let other: SocketAddr = "192.0.2.25:587".parse().unwrap();
    let mut cache = ClientCache::open(&path, 1000);
    cache.store_ehlo(addr, false, b"250-clear\r\n250 PIPECONNECT\r\n", 2000);
    cache.store_ehlo(addr, true, b"250-tls\r\n250 PIPECONNECT\r\n", 2000);
    cache.store_ehlo(other, false, b"250 other\r\n", 2000);
    assert_eq!(
        cache.ehlo(addr, false, 1500).unwrap(),
        b"250-clear\r\n250 PIPECONNECT\r\n"
    );
    assert_eq!(
        cache.ehlo(addr, true, 1500).unwrap(),
        b"250-tls\r\n250 PIPECONNECT\r\n"
    );
    assert_eq!(cache.ehlo(addr, false, 2000), None, "expired");
    cache.store_ehlo(addr, false, b"250 changed\r\n", 3000);
    assert_eq!(cache.ehlo(addr, false, 2500).unwrap(), b"250 changed\r\n");
    cache.forget_ehlo(addr);
    assert_eq!(cache.ehlo(addr, false, 1500), None);
    assert_eq!(cache.ehlo(addr, true, 1500), None);
    assert!(
        cache.ehlo(other, false, 1500).is_some(),
        "another port is kept"
    );
    drop(cache);
    let mut cache = ClientCache::open(&path, 2500);
    assert_eq!(cache.ehlo(other, false, 1500), None, "purged at open");
}
