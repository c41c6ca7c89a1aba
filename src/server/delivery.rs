//! The bridge from the SMTP state machine's `MessageSink` to the store:
//! one message in progress per connection, written into the Maildir for
//! our own recipients and into the outbound queue for the others (both
//! copies made durable together), the trace headers, the list of complete
//! messages that the loop commits as a group, and the `<=` log line once a
//! message is durable.

use std::net::SocketAddr;

use super::Shared;
use super::timers::TimerKey;
use crate::queue;
use crate::received;
use crate::smtp::{Body, Commit, Envelope, MessageSink, SinkError, TlsInfo};
use crate::store::{self, Delivery, MessageId, Store};

/// A message being received: lives in the connection across reads.
pub struct Pending {
    id: String,
    /// Its Maildir copy (our recipients) and its queue file (the others).
    deliveries: Vec<Delivery>,
}

/// A complete message waiting for the loop's group commit.
pub struct Queued {
    /// The connection waiting for the outcome.
    pub conn: TimerKey,
    id: String,
    /// The `<=` line, logged once the message is durable.
    arrival: String,
    deliveries: Vec<Delivery>,
    /// It has recipients for the queue (to be sent onward).
    for_queue: bool,
}

/// Borrowed for one call into the state machine.
pub struct StoreSink<'a> {
    store: &'a mut Store,
    queue: &'a mut Vec<Queued>,
    pending: &'a mut Option<Pending>,
    hostname: &'a str,
    peer: SocketAddr,
    conn: TimerKey,
}

impl<'a> StoreSink<'a> {
    /// For the connection `conn` from `peer`, whose message in progress
    /// is `pending`.
    pub fn new(
        shared: &'a mut Shared,
        pending: &'a mut Option<Pending>,
        peer: SocketAddr,
        conn: TimerKey,
    ) -> StoreSink<'a> {
        StoreSink {
            store: &mut shared.store,
            queue: &mut shared.commits,
            pending,
            hostname: &shared.smtp_config.hostname,
            peer,
            conn,
        }
    }
}

fn sink_error(what: &str, e: std::io::Error) -> SinkError {
    SinkError(format!("{what}: {e}"))
}

impl MessageSink for StoreSink<'_> {
    fn begin(&mut self, env: &Envelope) -> Result<(), SinkError> {
        let message = self.store.next_id();
        let id = message.to_string();
        let now = crate::clock::unix_secs();
        let mut deliveries = Vec::with_capacity(2);
        let mailboxes: Vec<(String, String)> = env
            .recipients
            .iter()
            .filter(|r| !r.relay)
            .map(|r| (r.domain.clone(), r.local.to_lowercase()))
            .collect();
        if !mailboxes.is_empty() {
            let header = received::trace_headers(env, &id, self.hostname, now);
            let delivery = self
                .store
                .begin(message, &mailboxes, &header)
                .map_err(|e| sink_error("starting delivery", e))?;
            deliveries.push(delivery);
        }
        if env.recipients.iter().any(|r| r.relay) {
            let head = queue_head(env, message, self.hostname, now);
            let delivery = self
                .store
                .begin_queued(message, &head)
                .map_err(|e| sink_error("starting the queue file", e))?;
            deliveries.push(delivery);
        }
        *self.pending = Some(Pending { id, deliveries });
        Ok(())
    }

    fn write(&mut self, content: &[u8]) -> Result<(), SinkError> {
        let pending = self
            .pending
            .as_mut()
            .ok_or_else(|| SinkError("no message in progress".into()))?;
        for delivery in &mut pending.deliveries {
            delivery
                .write(content)
                .map_err(|e| sink_error("writing message", e))?;
        }
        Ok(())
    }

    fn commit(&mut self, env: &Envelope, size: u64) -> Result<Commit, SinkError> {
        let Pending { id, deliveries } = self
            .pending
            .take()
            .ok_or_else(|| SinkError("no message in progress".into()))?;
        let arrival = arrival_line(env, &id, size, self.peer);
        self.queue.push(Queued {
            conn: self.conn,
            id,
            arrival,
            deliveries,
            for_queue: env.recipients.iter().any(|r| r.relay),
        });
        Ok(Commit::Queued)
    }

    fn abort(&mut self) {
        // Dropping the deliveries removes their temporary files.
        self.pending.take();
    }
}

/// What a queue file begins with: the envelope of the recipients it is for
/// (those not ours), then our `Received:` line as it goes on the wire.
fn queue_head(env: &Envelope, id: MessageId, hostname: &str, now: u64) -> Vec<u8> {
    let id = id.to_string();
    let envelope = queue::Envelope {
        id: id.clone(),
        arrival: now,
        sender: env.sender.clone(),
        recipients: env
            .recipients
            .iter()
            .filter(|r| r.relay)
            .map(|r| r.mailbox())
            .collect(),
        eight_bit: env.body == Body::EightBitMime,
        smtputf8: env.smtputf8,
        received_from: format!(
            "({}) [{}]:{}",
            env.helo.escape_debug(),
            env.peer.ip(),
            env.peer.port()
        ),
    };
    let mut head = envelope.encode();
    let received = received::received(env, &id, hostname, now);
    head.extend_from_slice(received.replace('\n', "\r\n").as_bytes());
    head
}

/// How a group is made durable (`--durability`).
pub enum GroupCommit<'a> {
    Sync,
    /// The log, and the directory of the queue the worker holds its queue
    /// files in until a checkpoint.
    Log(&'a mut crate::wal::Log, &'a str),
    /// The log's checkpoints keep failing: nothing is acknowledged.
    Refused,
}

/// A waiting connection and its message's fate: the id for its 250, or
/// why it is not stored.
pub type Outcome = (TimerKey, Result<String, SinkError>);

/// Makes the queued messages durable together (one group commit) and
/// returns each waiting connection's outcome: the id for its 250, or why
/// its message is not stored; and the ids of those now in the queue (or,
/// under the log, held for its next checkpoint).
pub fn commit_queued(
    queue: Vec<Queued>,
    durability: GroupCommit<'_>,
) -> (Vec<Outcome>, Vec<String>) {
    let mut waiting = Vec::with_capacity(queue.len());
    let mut deliveries = Vec::with_capacity(queue.len());
    for q in queue {
        waiting.push((q.conn, q.id, q.arrival, q.for_queue));
        deliveries.push(q.deliveries);
    }
    let results = match durability {
        GroupCommit::Sync => store::commit_all(deliveries),
        GroupCommit::Log(log, held) => store::commit_logged(deliveries, log, Some(held)),
        GroupCommit::Refused => deliveries
            .iter()
            .map(|_| {
                Err(std::io::Error::other(
                    "the write-ahead log's checkpoints keep failing",
                ))
            })
            .collect(),
    };
    let mut queued = Vec::new();
    let outcomes = waiting
        .into_iter()
        .zip(results)
        .map(|((conn, id, arrival, for_queue), result)| match result {
            Ok(_) => {
                log::info!("{arrival}");
                if for_queue {
                    queued.push(id.clone());
                }
                (conn, Ok(id))
            }
            Err(e) => (conn, Err(sink_error("committing message", e))),
        })
        .collect();
    (outcomes, queued)
}

/// Exim's `<=` line: `<= sender H=(helo) [ip]:port P=esmtps
/// X=TLS1.3:CIPHER:BITS* S=size id=ID for rcpt...`.
pub fn arrival_line(env: &Envelope, id: &str, size: u64, peer: SocketAddr) -> String {
    let sender = if env.sender.is_empty() {
        "<>"
    } else {
        env.sender.as_str()
    };
    let mut line = format!(
        "<= {sender} H=({}) [{}]:{} P={}",
        env.helo.escape_debug(),
        peer.ip(),
        peer.port(),
        env.protocol().to_ascii_lowercase()
    );
    if let Some(tls) = &env.tls {
        line.push_str(" X=");
        line.push_str(&tls_field(tls));
    }
    line.push_str(&format!(" S={size} id={id}"));
    match env.early_pipelining {
        Some(true) => line.push_str(" L*"),
        Some(false) => line.push_str(" L."),
        None => {}
    }
    line.push_str(" for");
    for r in &env.recipients {
        line.push_str(&format!(" {}", r.mailbox().escape_debug()));
    }
    line
}

/// `TLS1.3:TLS_AES_256_GCM_SHA384:256`, with `*` appended when resumed
/// (Exim's tls_resumption log selector).
pub fn tls_field(tls: &TlsInfo) -> String {
    let star = if tls.resumed { "*" } else { "" };
    format!("{}:{}:{}{star}", tls.version, tls.cipher, tls.bits)
}
