//! Where the ticket masters come from, in the supervisor: its own
//! rotation (a fresh random master every `--ticket-rotation`, each retired
//! one kept until its tickets have expired) or the operator's
//! `--ticket-key-file`, shared with other hosts. Either way the result is
//! a list of changes that the supervisor applies to its own ring (from
//! which a new worker gets the whole set) and sends to every worker.
//!
//! Times are Unix seconds passed in by the caller.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::control::ToChild;
use crate::control::message::key_packet;
use crate::ticket_key_file;
use crate::tls::TlsError;
use crate::tls::ticket_keys::{KeyRing, MasterKey};

/// A change to the ring.
pub enum Change {
    Add {
        id: u64,
        created: u64,
        retired: Option<u64>,
        key: MasterKey,
    },
    Retire {
        id: u64,
        at: u64,
    },
    Drop {
        id: u64,
        why: &'static str,
    },
}

const EXPIRED: &str = "every ticket it issued has expired";
const NOT_IN_FILE: &str = "no longer in the key file";

pub type Generator = Box<dyn FnMut() -> Result<MasterKey, TlsError>>;

pub struct Keys {
    ring: KeyRing,
    source: Source,
    next_id: u64,
    rotation: u64,
    lifetime: u64,
}

enum Source {
    Rotation(Generator),
    File(KeyFile),
}

struct KeyFile {
    path: PathBuf,
    /// What the file was when last read.
    seen: Option<(u64, u64, i64, i64, u64)>,
}

impl Keys {
    /// The supervisor's own rotation, starting with a fresh master.
    pub fn rotating(
        rotation: u64,
        lifetime: u64,
        now: u64,
        generate: Generator,
    ) -> Result<Keys, String> {
        let mut keys = Keys::new(Source::Rotation(generate), rotation, lifetime);
        let first = keys
            .rotate(now)
            .map_err(|e| format!("session tickets: {e}"))?;
        keys.apply(first);
        log::info!(
            "session tickets on: key rotation every {rotation} s, ticket lifetime {lifetime} s, \
             at most {} key(s) held",
            1 + lifetime.div_ceil(rotation.max(1))
        );
        Ok(keys)
    }

    /// Masters from the operator's file; a file that cannot be used stops
    /// the start.
    pub fn from_file(
        path: PathBuf,
        rotation: u64,
        lifetime: u64,
        now: u64,
    ) -> Result<Keys, String> {
        let file = KeyFile { path, seen: None };
        let mut keys = Keys::new(Source::File(file), rotation, lifetime);
        let changes = keys.read_file(now)?;
        keys.apply(changes);
        log::info!(
            "session tickets on: {} key(s) from {}, ticket lifetime {lifetime} s",
            keys.ring.len(),
            keys.file_path().unwrap_or_default()
        );
        Ok(keys)
    }

    fn new(source: Source, rotation: u64, lifetime: u64) -> Keys {
        Keys {
            ring: KeyRing::new(lifetime),
            source,
            next_id: 0,
            rotation: rotation.max(1),
            lifetime,
        }
    }

    fn file_path(&self) -> Option<String> {
        match &self.source {
            Source::File(f) => Some(f.path.display().to_string()),
            Source::Rotation(_) => None,
        }
    }

    /// Packets that give a new worker the whole ring, oldest first.
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.ring
            .iter()
            .map(|(id, created, retired, key)| key_packet(id, created, retired, key))
            .collect()
    }

    /// Whatever is due at `now`: a rotation, a drop, a changed key file.
    /// Returns the packets for every worker.
    pub fn tick(&mut self, now: u64) -> Vec<Vec<u8>> {
        let changes = match &self.source {
            Source::Rotation(_) => self.rotation_due(now),
            Source::File(_) => match self.read_file(now) {
                Ok(changes) => changes,
                Err(e) => {
                    log::warn!("{e}; keeping the previous ticket keys");
                    Vec::new()
                }
            },
        };
        self.apply(changes)
    }

    /// SIGHUP: re-read the key file even if it looks unchanged.
    pub fn reload(&mut self, now: u64) -> Vec<Vec<u8>> {
        if let Source::File(f) = &mut self.source {
            f.seen = None;
        }
        self.tick(now)
    }

    /// The Unix time `tick` next has work to do.
    pub fn next_due(&self, now: u64) -> u64 {
        match &self.source {
            // The file is checked (a stat) every second.
            Source::File(_) => now + 1,
            Source::Rotation(_) => {
                let rotation = self
                    .current()
                    .map_or(now, |(_, created)| created + self.rotation);
                self.ring
                    .iter()
                    .filter_map(|(_, _, retired, _)| retired.map(|at| at + self.lifetime))
                    .fold(rotation, u64::min)
            }
        }
    }

    fn current(&self) -> Option<(u64, u64)> {
        let id = self.ring.current_id()?;
        self.ring
            .iter()
            .find(|(i, ..)| *i == id)
            .map(|(id, created, ..)| (id, created))
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A new master that issues tickets from `now`, the old one retired.
    fn rotate(&mut self, now: u64) -> Result<Vec<Change>, TlsError> {
        let Source::Rotation(generate) = &mut self.source else {
            return Ok(Vec::new());
        };
        let key = generate()?;
        let old = self.current().map(|(id, _)| id);
        let mut changes = vec![Change::Add {
            id: self.fresh_id(),
            created: now,
            retired: None,
            key,
        }];
        if let Some(id) = old {
            changes.push(Change::Retire { id, at: now });
        }
        Ok(changes)
    }

    fn rotation_due(&mut self, now: u64) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .ring
            .iter()
            .filter(|(_, _, retired, _)| retired.is_some_and(|at| now >= at + self.lifetime))
            .map(|(id, ..)| Change::Drop { id, why: EXPIRED })
            .collect();
        if self
            .current()
            .is_none_or(|(_, created)| now >= created + self.rotation)
        {
            match self.rotate(now) {
                Ok(more) => changes.extend(more),
                // Keep the old key rather than stop issuing tickets.
                Err(e) => log::error!("ticket key rotation failed, keeping the current key: {e}"),
            }
        }
        changes
    }

    /// The changes that make the ring what the key file says, if the file
    /// changed since it was last read.
    fn read_file(&mut self, now: u64) -> Result<Vec<Change>, String> {
        let Source::File(file) = &mut self.source else {
            return Ok(Vec::new());
        };
        let stamp = fs::metadata(&file.path)
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.ctime(), m.size()))
            .map_err(|e| format!("ticket key file {}: {e}", file.path.display()))?;
        if file.seen == Some(stamp) {
            return Ok(Vec::new());
        }
        // Remembered even if it does not parse, so a bad file is reported
        // once, not every second; the next change is read again.
        file.seen = Some(stamp);
        let wanted = ticket_key_file::read(&file.path)?;
        let path = file.path.display().to_string();
        if let Some(newest) = wanted.first()
            && now > newest.created + 2 * self.rotation
        {
            log::warn!(
                "ticket key file {path}: its newest key was made {} s ago; \
                 run 'gsmtpd ticket-key rotate {path}' every --ticket-rotation ({} s)",
                now - newest.created,
                self.rotation
            );
        }
        Ok(self.changes_to(wanted, now))
    }

    fn changes_to(&mut self, wanted: Vec<ticket_key_file::FileKey>, now: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut kept = Vec::new();
        let mut newer_created = None;
        for (i, fk) in wanted.into_iter().enumerate() {
            let held = self
                .ring
                .iter()
                .find(|(.., key)| key.expose() == fk.key.expose())
                .map(|(id, _, retired, _)| (id, retired));
            // Each key but the first was retired when the one above it was made.
            let retired = (i > 0).then(|| newer_created.unwrap_or(now));
            newer_created = Some(fk.created);
            match held {
                Some((id, was)) if was.is_some() == retired.is_some() => kept.push(id),
                Some((id, None)) => {
                    changes.push(Change::Retire { id, at: now });
                    kept.push(id);
                }
                // A retired key back on the first line: re-added, issuing.
                Some((id, Some(_))) => {
                    changes.push(Change::Drop {
                        id,
                        why: "back on the key file's first line, added again",
                    });
                    self.add_from_file(&mut changes, &mut kept, fk, retired);
                }
                None => self.add_from_file(&mut changes, &mut kept, fk, retired),
            }
        }
        for (id, ..) in self.ring.iter() {
            if !kept.contains(&id) {
                changes.push(Change::Drop {
                    id,
                    why: NOT_IN_FILE,
                });
            }
        }
        changes
    }

    fn add_from_file(
        &mut self,
        changes: &mut Vec<Change>,
        kept: &mut Vec<u64>,
        fk: ticket_key_file::FileKey,
        retired: Option<u64>,
    ) {
        let id = self.fresh_id();
        kept.push(id);
        changes.push(Change::Add {
            id,
            created: fk.created,
            retired,
            key: fk.key,
        });
    }

    /// Applies `changes` to the supervisor's ring, logs them, and returns
    /// the packets that tell every worker.
    fn apply(&mut self, changes: Vec<Change>) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        for change in changes {
            match change {
                Change::Add {
                    id,
                    created,
                    retired,
                    key,
                } => {
                    packets.push(key_packet(id, created, retired, &key));
                    let role = if retired.is_some() {
                        "decrypts only"
                    } else {
                        "issues new tickets"
                    };
                    log::info!("ticket key {} added: {role}", key.fingerprint());
                    self.ring.insert(id, key, created, retired);
                }
                Change::Retire { id, at } => {
                    if self.ring.retire(id, at) {
                        log::info!(
                            "ticket key {} retired: decrypts its tickets until they expire",
                            self.ring.fingerprint(id)
                        );
                        packets.push(ToChild::Retire { id, at }.encode());
                    }
                }
                Change::Drop { id, why } => {
                    let fingerprint = self.ring.fingerprint(id).to_string();
                    if self.ring.remove(id) {
                        log::info!("ticket key {fingerprint} dropped: {why}");
                        packets.push(ToChild::Drop { id }.encode());
                    }
                }
            }
        }
        if !packets.is_empty() {
            log::info!("{} ticket key(s) held", self.ring.len());
        }
        packets
    }

    #[cfg(test)]
    fn held(&self) -> Vec<(u64, Option<u64>)> {
        self.ring
            .iter()
            .map(|(_, created, retired, _)| (created, retired))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ticket_keys::MASTER_LEN;
    use std::cell::Cell;
    use std::rc::Rc;

    fn counting_generator() -> (Generator, Rc<Cell<u8>>) {
        let made = Rc::new(Cell::new(0u8));
        let counter = Rc::clone(&made);
        let generate: Generator = Box::new(move || {
            counter.set(counter.get() + 1);
            Ok(MasterKey::from_bytes([counter.get(); MASTER_LEN]))
        });
        (generate, made)
    }

    #[test]
    fn rotates_on_time_and_keeps_retired_keys_exactly_for_the_ticket_lifetime() {
        let (generate, made) = counting_generator();
        let mut keys = Keys::rotating(100, 250, 1_000, generate).unwrap();
        assert_eq!(keys.held(), vec![(1_000, None)]);
        assert_eq!(keys.next_due(1_000), 1_100);
        assert!(keys.tick(1_099).is_empty(), "not yet due");
        let packets = keys.tick(1_100);
        assert_eq!(made.get(), 2, "rotated at created + rotation");
        assert_eq!(
            packets.len(),
            2,
            "the new key, and the old one's retirement"
        );
        assert_eq!(keys.held(), vec![(1_000, Some(1_100)), (1_100, None)]);
        keys.tick(1_200);
        keys.tick(1_300);
        assert_eq!(
            keys.held().len(),
            4,
            "1100 + 250 > 1300: the first is still held"
        );
        assert_eq!(keys.next_due(1_300), 1_350, "its drop comes first");
        keys.tick(1_350);
        assert_eq!(keys.held()[0], (1_100, Some(1_200)), "dropped at 1350");
        // Never more than the lifetime requires.
        let mut most = 0;
        for t in 1_350..3_000 {
            keys.tick(t);
            most = most.max(keys.held().len());
        }
        assert_eq!(most, 1 + 250_usize.div_ceil(100));
    }

    #[test]
    fn a_new_worker_gets_every_key_with_its_role() {
        let (generate, _) = counting_generator();
        let mut keys = Keys::rotating(10, 100, 0, generate).unwrap();
        keys.tick(10);
        let snapshot: Vec<ToChild> = keys
            .snapshot()
            .iter()
            .map(|p| ToChild::decode(p).unwrap())
            .collect();
        assert_eq!(snapshot.len(), 2);
        assert!(matches!(
            snapshot[0],
            ToChild::Key {
                created: 0,
                retired: Some(10),
                ..
            }
        ));
        assert!(matches!(
            snapshot[1],
            ToChild::Key {
                created: 10,
                retired: None,
                ..
            }
        ));
    }

    fn write_key_file(path: &std::path::Path, lines: &[(u64, u8)]) {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        let text: String = lines
            .iter()
            .map(|(created, byte)| {
                let b64 = base64::engine::general_purpose::STANDARD.encode([*byte; MASTER_LEN]);
                format!("{created} {b64}\n")
            })
            .collect();
        let tmp = path.with_extension("new");
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn the_key_file_decides_the_ring_and_a_bad_one_changes_nothing() {
        let dir = crate::test_support::TempDir::new("keys");
        let path = dir.path().join("keys");
        write_key_file(&path, &[(500, 2), (100, 1)]);
        let mut keys = Keys::from_file(path.clone(), 600, 300, 1_000).unwrap();
        assert_eq!(keys.held(), vec![(500, None), (100, Some(500))]);
        assert!(keys.tick(1_001).is_empty(), "unchanged file: nothing to do");

        // The operator rotated: a new first line, the oldest dropped.
        write_key_file(&path, &[(1_100, 3), (500, 2)]);
        let packets = keys.tick(1_101);
        let msgs: Vec<ToChild> = packets
            .iter()
            .map(|p| ToChild::decode(p).unwrap())
            .collect();
        assert!(matches!(msgs[0], ToChild::Key { retired: None, .. }));
        assert!(matches!(msgs[1], ToChild::Retire { .. }));
        assert!(matches!(msgs[2], ToChild::Drop { .. }));
        assert_eq!(keys.held(), vec![(500, Some(1_101)), (1_100, None)]);

        // A broken replacement keeps what we have.
        fs::write(&path, "garbage\n").unwrap();
        assert!(keys.tick(1_102).is_empty());
        assert_eq!(keys.held().len(), 2);
        // A file others can read is refused at start.
        use std::os::unix::fs::PermissionsExt;
        write_key_file(&path, &[(500, 2)]);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keys::from_file(path.clone(), 600, 300, 1_000)
            .err()
            .unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
