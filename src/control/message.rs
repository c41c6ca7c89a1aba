//! What the supervisor and a worker tell each other, and its encoding:
//! one message per packet, a tag byte, then fixed fields (little-endian
//! u64) and length-prefixed byte strings (u32 length). Sans-I/O.
//!
//! Messages carry secrets (ticket masters, TLS 1.2 session state with its
//! master secret): buffers are wiped by the channel once used.

use crate::tls::ticket_keys::{MASTER_LEN, MasterKey, wipe};

/// Supervisor to a child: a worker, or the delivery process (which gets
/// `Start` and `Flush` only).
#[derive(Debug)]
pub enum ToChild {
    /// A ticket master for the ring. `retired`: since when it only
    /// decrypts; None for the one that issues tickets.
    Key {
        id: u64,
        created: u64,
        retired: Option<u64>,
        key: MasterKey,
    },
    /// The master stops issuing tickets (a newer one took over).
    Retire { id: u64, at: u64 },
    /// Every ticket the master issued has expired: forget it.
    Drop { id: u64 },
    /// The worker has its whole starting state (the ring): it may serve.
    Start,
    /// The answer to `ToSupervisor::Lookup`.
    Session { request: u64, data: Option<Secret> },
    /// `gsmtpd queue flush`: try every queued message now.
    Flush,
    /// To the delivery process: these messages are in the queue now.
    Queued { ids: Vec<String> },
}

/// Worker to supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum ToSupervisor {
    /// Listening: every listener is in the worker's loop.
    Ready,
    /// A TLS 1.2 session to cache under its session ID.
    Store {
        id: Vec<u8>,
        data: Secret,
    },
    Remove {
        id: Vec<u8>,
    },
    /// The cached session for this ID, for a handshake about to begin.
    Lookup {
        request: u64,
        id: Vec<u8>,
    },
    /// These messages are durably queued and their clients answered: for
    /// the delivery process.
    Queued {
        ids: Vec<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed control message: {}", self.0)
    }
}

const KEY: u8 = 1;
const RETIRE: u8 = 2;
const DROP: u8 = 3;
const START: u8 = 4;
const SESSION: u8 = 5;
const FLUSH: u8 = 6;
const QUEUED: u8 = 7;
const READY: u8 = 64;
const STORE: u8 = 65;
const REMOVE: u8 = 66;
const LOOKUP: u8 = 67;
const QUEUED_BY_WORKER: u8 = 68;

impl ToChild {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            ToChild::Key {
                id,
                created,
                retired,
                key,
            } => return key_packet(*id, *created, *retired, key),
            ToChild::Retire { id, at } => {
                w.tag(RETIRE).u64(*id).u64(*at);
            }
            ToChild::Drop { id } => {
                w.tag(DROP).u64(*id);
            }
            ToChild::Start => {
                w.tag(START);
            }
            ToChild::Flush => {
                w.tag(FLUSH);
            }
            ToChild::Queued { ids } => {
                w.tag(QUEUED).ids(ids);
            }
            ToChild::Session { request, data } => {
                w.tag(SESSION).u64(*request);
                match data {
                    Some(d) => w.u8(1).bytes(&d.0),
                    None => w.u8(0),
                };
            }
        }
        w.0
    }

    pub fn decode(packet: &[u8]) -> Result<ToChild, Malformed> {
        let mut r = Reader(packet);
        let msg = match r.u8()? {
            KEY => {
                let (id, created, retired) = (r.u64()?, r.u64()?, r.opt_u64()?);
                let bytes = r.bytes()?;
                if bytes.len() != MASTER_LEN {
                    return Err(Malformed("ticket master of the wrong size"));
                }
                let key = MasterKey::from_slice(bytes).ok_or(Malformed("ticket master"))?;
                ToChild::Key {
                    id,
                    created,
                    retired,
                    key,
                }
            }
            RETIRE => ToChild::Retire {
                id: r.u64()?,
                at: r.u64()?,
            },
            DROP => ToChild::Drop { id: r.u64()? },
            START => ToChild::Start,
            FLUSH => ToChild::Flush,
            QUEUED => ToChild::Queued { ids: r.ids()? },
            SESSION => {
                let request = r.u64()?;
                let data = match r.u8()? {
                    0 => None,
                    1 => Some(Secret(r.bytes()?.to_vec())),
                    _ => return Err(Malformed("session flag")),
                };
                ToChild::Session { request, data }
            }
            _ => return Err(Malformed("unknown message to a worker")),
        };
        r.end()?;
        Ok(msg)
    }
}

/// The packet of a `ToChild::Key`, from a master the sender keeps.
pub fn key_packet(id: u64, created: u64, retired: Option<u64>, key: &MasterKey) -> Vec<u8> {
    let mut w = Writer::default();
    w.tag(KEY).u64(id).u64(created).opt_u64(retired);
    w.bytes(key.expose());
    w.0
}

impl ToSupervisor {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            ToSupervisor::Ready => {
                w.tag(READY);
            }
            ToSupervisor::Store { id, data } => {
                w.tag(STORE).bytes(id).bytes(&data.0);
            }
            ToSupervisor::Remove { id } => {
                w.tag(REMOVE).bytes(id);
            }
            ToSupervisor::Lookup { request, id } => {
                w.tag(LOOKUP).u64(*request).bytes(id);
            }
            ToSupervisor::Queued { ids } => {
                w.tag(QUEUED_BY_WORKER).ids(ids);
            }
        }
        w.0
    }

    pub fn decode(packet: &[u8]) -> Result<ToSupervisor, Malformed> {
        let mut r = Reader(packet);
        let msg = match r.u8()? {
            READY => ToSupervisor::Ready,
            STORE => ToSupervisor::Store {
                id: r.bytes()?.to_vec(),
                data: Secret(r.bytes()?.to_vec()),
            },
            REMOVE => ToSupervisor::Remove {
                id: r.bytes()?.to_vec(),
            },
            LOOKUP => ToSupervisor::Lookup {
                request: r.u64()?,
                id: r.bytes()?.to_vec(),
            },
            QUEUED_BY_WORKER => ToSupervisor::Queued { ids: r.ids()? },
            _ => return Err(Malformed("unknown message to the supervisor")),
        };
        r.end()?;
        Ok(msg)
    }
}

/// Bytes that hold a secret (a packed TLS session holds its master
/// secret): wiped when dropped.
#[derive(PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn tag(&mut self, tag: u8) -> &mut Self {
        self.u8(tag)
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u64(v),
            None => self.u8(0),
        }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Packets are far below 4 GiB (the socket buffer bounds them).
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }

    fn ids(&mut self, ids: &[String]) -> &mut Self {
        self.0.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            self.bytes(id.as_bytes());
        }
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| Malformed("u64"))?,
        ))
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.u64().map(Some),
            _ => Err(Malformed("option flag")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| Malformed("length"))?);
        self.take(len as usize)
    }

    /// A count, then that many strings. No capacity is reserved from the
    /// count: each id takes at least its length field, so a lying count
    /// runs out of packet first.
    fn ids(&mut self) -> Result<Vec<String>, Malformed> {
        let count = u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Malformed("count"))?);
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("id"))?;
            ids.push(id.to_string());
        }
        Ok(ids)
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_slice(&[byte; MASTER_LEN]).unwrap()
    }

    #[test]
    fn worker_messages_round_trip() {
        let msgs = [
            ToChild::Key {
                id: 7,
                created: 1_700_000_000,
                retired: Some(1_700_021_600),
                key: key(9),
            },
            ToChild::Key {
                id: 8,
                created: 1,
                retired: None,
                key: key(1),
            },
            ToChild::Retire { id: 7, at: 5 },
            ToChild::Drop { id: 7 },
            ToChild::Start,
            ToChild::Flush,
            ToChild::Queued { ids: vec![] },
            ToChild::Queued {
                ids: vec!["1XyH6j-0002Sg-01".into(), "1XyH6j-0002Sg-02".into()],
            },
            ToChild::Session {
                request: 3,
                data: Some(Secret(vec![1, 2, 3])),
            },
            ToChild::Session {
                request: 4,
                data: None,
            },
        ];
        for msg in msgs {
            let packet = msg.encode();
            let back = ToChild::decode(&packet).unwrap();
            // MasterKey has no PartialEq (it is compared by what it is
            // used for); compare the encodings instead.
            assert_eq!(back.encode(), packet, "{msg:?}");
        }
    }

    #[test]
    fn supervisor_messages_round_trip() {
        let msgs = [
            ToSupervisor::Ready,
            ToSupervisor::Store {
                id: vec![1; 32],
                data: Secret(vec![2; 3000]),
            },
            ToSupervisor::Remove { id: vec![3; 32] },
            ToSupervisor::Lookup {
                request: u64::MAX,
                id: vec![],
            },
            ToSupervisor::Queued {
                ids: vec!["1XyH6j-0002Sg-01".into()],
            },
        ];
        for msg in msgs {
            assert_eq!(ToSupervisor::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn malformed_packets_are_refused_not_trusted() {
        let good = ToSupervisor::Store {
            id: vec![1; 4],
            data: Secret(vec![2; 4]),
        }
        .encode();
        for cut in 0..good.len() {
            assert!(ToSupervisor::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            ToSupervisor::decode(&long),
            Err(Malformed("trailing bytes"))
        );
        assert!(ToSupervisor::decode(&[200]).is_err());
        // A length field far beyond the packet.
        assert!(ToSupervisor::decode(&[STORE, 0xff, 0xff, 0xff, 0xff]).is_err());
        let short_key = {
            let mut w = Writer::default();
            w.tag(KEY).u64(1).u64(1).opt_u64(None).bytes(&[0; 63]);
            w.0
        };
        assert!(ToChild::decode(&short_key).is_err());
        assert!(ToChild::decode(&[]).is_err());
        // A count of ids far beyond the packet, and an id not UTF-8.
        assert!(ToChild::decode(&[QUEUED, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(ToChild::decode(&[QUEUED, 1, 0, 0, 0, 1, 0, 0, 0, 0xff]).is_err());
    }
}
