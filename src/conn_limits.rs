//! Connection counts shared by every worker, so that `--max-connections`
//! and `--max-per-ip` hold for the whole server rather than per process.
//!
//! The supervisor maps the counts before its first fork; each worker slot
//! owns one region of the mapping and is its only writer: its number of
//! connections and a table of connections per client address. A reader
//! sums every slot (a handful of loads per slot). When a worker dies the
//! supervisor zeroes its region, so the connections it held stop counting
//! before its replacement starts.
//!
//! Readers may see a slot mid-update and be off by one for that instant;
//! two workers admitting at the same moment may both take the last place.
//! Both are bounded by the number of workers, which is what nginx's
//! shared-memory limits accept too.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::os::SharedWords;

pub struct ConnCounts {
    shared: SharedWords,
    slots: usize,
    /// Entries per slot table (a power of two).
    cap: usize,
    /// Keyed by the supervisor before the first fork, so every worker
    /// hashes an address alike, and a client cannot aim at collisions.
    hasher: RandomState,
}

impl ConnCounts {
    /// Counts for `slots` workers, none of which can hold more than
    /// `max_connections` connections.
    pub fn new(slots: usize, max_connections: usize) -> io::Result<ConnCounts> {
        // At most half full: one entry per distinct address of a slot.
        let cap = (max_connections.max(8) * 2).next_power_of_two();
        let per_slot = 1 + 2 * cap;
        let words = slots
            .checked_mul(per_slot)
            .ok_or(io::ErrorKind::InvalidInput)?;
        Ok(ConnCounts {
            shared: SharedWords::new(words)?,
            slots,
            cap,
            hasher: RandomState::new(),
        })
    }

    fn region(&self, slot: usize) -> &[AtomicU64] {
        let per_slot = 1 + 2 * self.cap;
        let start = slot.min(self.slots.saturating_sub(1)) * per_slot;
        self.shared
            .words()
            .get(start..start + per_slot)
            .unwrap_or_default()
    }

    fn table(&self, slot: usize) -> Table<'_> {
        Table(self.region(slot).get(1..).unwrap_or_default())
    }

    fn key(&self, ip: IpAddr) -> u64 {
        // An IPv4 client is the same client however it reached us.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // Zero marks a free entry.
        self.hasher.hash_one(ip) | 1
    }

    /// Connections open in every worker.
    pub fn total(&self) -> u64 {
        (0..self.slots)
            .map(|s| {
                self.region(s)
                    .first()
                    .map_or(0, |w| w.load(Ordering::Relaxed))
            })
            .sum()
    }

    /// Connections open from `ip` in every worker.
    pub fn from_ip(&self, ip: IpAddr) -> u64 {
        let key = self.key(ip);
        (0..self.slots).map(|s| self.table(s).get(key)).sum()
    }

    /// Worker `slot` took a connection from `ip`.
    pub fn add(&self, slot: usize, ip: IpAddr) {
        let key = self.key(ip);
        if let Some(total) = self.region(slot).first() {
            total.fetch_add(1, Ordering::Relaxed);
        }
        self.table(slot).add(key);
    }

    /// Worker `slot` closed a connection from `ip`.
    pub fn remove(&self, slot: usize, ip: IpAddr) {
        let key = self.key(ip);
        if let Some(total) = self.region(slot).first() {
            let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.table(slot).remove(key);
    }

    /// The worker of `slot` is gone, and its connections with it.
    pub fn clear(&self, slot: usize) {
        for w in self.region(slot) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// Open addressing with linear probing over (key, count) pairs, written by
/// one process only; removal shifts the rest of a run back, so no
/// tombstones pile up.
struct Table<'a>(&'a [AtomicU64]);

impl Table<'_> {
    fn cap(&self) -> usize {
        self.0.len() / 2
    }

    fn key_at(&self, i: usize) -> u64 {
        self.0[2 * i].load(Ordering::Relaxed)
    }

    fn count_at(&self, i: usize) -> &AtomicU64 {
        &self.0[2 * i + 1]
    }

    fn home(&self, key: u64) -> usize {
        (key as usize) & (self.cap() - 1)
    }

    /// The entry holding `key`, or the free entry where it would go.
    fn probe(&self, key: u64) -> Option<usize> {
        let cap = self.cap();
        if cap == 0 {
            return None;
        }
        let mut i = self.home(key);
        for _ in 0..cap {
            let k = self.key_at(i);
            if k == key || k == 0 {
                return Some(i);
            }
            i = (i + 1) & (cap - 1);
        }
        None
    }

    fn get(&self, key: u64) -> u64 {
        match self.probe(key) {
            Some(i) if self.key_at(i) == key => self.count_at(i).load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn add(&self, key: u64) {
        // Full only if the caller admitted more connections than the
        // table was sized for; the address then goes uncounted.
        let Some(i) = self.probe(key) else { return };
        if self.key_at(i) == key {
            self.count_at(i).fetch_add(1, Ordering::Relaxed);
        } else {
            // The count first: a reader that sees the key sees its count.
            self.count_at(i).store(1, Ordering::Relaxed);
            self.0[2 * i].store(key, Ordering::Release);
        }
    }

    fn remove(&self, key: u64) {
        let Some(mut hole) = self.probe(key).filter(|&i| self.key_at(i) == key) else {
            return;
        };
        let left = self
            .count_at(hole)
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        self.count_at(hole).store(left, Ordering::Relaxed);
        if left > 0 {
            return;
        }
        let mask = self.cap() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let k = self.key_at(j);
            if k == 0 {
                break;
            }
            // Entry j may fill the hole unless its home lies cyclically in
            // (hole, j]: then a lookup from its home would stop at the hole.
            let home = self.home(k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                let count = self.count_at(j).load(Ordering::Relaxed);
                self.count_at(hole).store(count, Ordering::Relaxed);
                self.0[2 * hole].store(k, Ordering::Release);
                hole = j;
            }
        }
        self.0[2 * hole].store(0, Ordering::Release);
        self.count_at(hole).store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_add_up_across_slots_and_a_dead_slot_is_cleared() {
        let c = ConnCounts::new(3, 10).unwrap();
        c.add(0, ip("192.0.2.1"));
        c.add(1, ip("192.0.2.1"));
        c.add(2, ip("::ffff:192.0.2.1"));
        c.add(2, ip("2001:db8::1"));
        assert_eq!(c.total(), 4);
        assert_eq!(
            c.from_ip(ip("192.0.2.1")),
            3,
            "v4-mapped is the same client"
        );
        assert_eq!(c.from_ip(ip("2001:db8::1")), 1);
        assert_eq!(c.from_ip(ip("192.0.2.2")), 0);
        c.remove(1, ip("192.0.2.1"));
        assert_eq!(c.from_ip(ip("192.0.2.1")), 2);
        c.clear(2);
        assert_eq!(c.total(), 1);
        assert_eq!(c.from_ip(ip("192.0.2.1")), 1);
        assert_eq!(c.from_ip(ip("2001:db8::1")), 0);
        // Removing what is not there changes nothing.
        c.remove(2, ip("2001:db8::1"));
        assert_eq!(c.total(), 1);
    }

    /// Keys chosen so that they collide in a small table and form runs
    /// that wrap around its end; every removal order must leave every
    /// remaining key findable with its count.
    #[test]
    fn removal_keeps_every_run_findable() {
        let words: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let t = Table(&words); // 8 entries
        // Homes (key & 7): 7, 7, 1, 7, 7, 1.
        let keys: Vec<u64> = vec![15, 23, 25, 39, 47, 49];
        let mut rng = 0x2545F4914F6CDD1Du64;
        for round in 0..200 {
            let mut order = keys.clone();
            for i in (1..order.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng as usize) % (i + 1));
            }
            for (n, &k) in keys.iter().enumerate() {
                for _ in 0..=n {
                    t.add(k);
                }
            }
            let mut left: Vec<u64> = keys.clone();
            for &k in &order {
                for _ in 0..=keys.iter().position(|&x| x == k).unwrap() {
                    t.remove(k);
                }
                left.retain(|&x| x != k);
                for &other in &left {
                    let n = keys.iter().position(|&x| x == other).unwrap() as u64 + 1;
                    assert_eq!(
                        t.get(other),
                        n,
                        "round {round}: key {other} after removing {k}"
                    );
                }
                assert_eq!(t.get(k), 0);
            }
            assert!(words.iter().all(|w| w.load(Ordering::Relaxed) == 0));
        }
    }
}
