//! What became of each recipient, made durable before it is logged.
//!
//! Outcomes gather during a turn of the loop; `settle` then, in this
//! order: queues the bounce of every message with newly failed recipients
//! (through the store's group commit, like any queued message; none for
//! the null sender), appends every outcome to its message's journal, makes
//! them durable (`QueueLog`) when a delivered or failed one is among
//! them, and only then logs `=>`, `**` and `==` lines. A message whose
//! recipients are all done is logged `Completed` and removed.

use std::io;
use std::time::Instant;

use super::destination::{Address, Job};
use super::queue_log::QueueLog;
use super::schedule::{Deferred, Schedule};
use crate::clock::unix_secs;
use crate::dsn::{self, Diagnostic, Status};
use crate::queue::{self, Outcome as Record, QueueDir};
use crate::smtp;
use crate::smtp_client::{Failure, Outcome};
use crate::store::{self, Store};

/// A recipient not delivered without a reply to say so (a lookup or
/// connection failure).
pub enum Failed {
    Temporary(String),
    /// For good, with the status a bounce gives it.
    Permanent(String, Status),
}

/// A final failure, for the bounce.
struct Bounced {
    rcpt: usize,
    diagnostic: Diagnostic,
    /// The host that refused it.
    remote: Option<String>,
    /// Its time in the queue ran out.
    expired: bool,
}

/// One recipient's outcome, waiting for `settle`.
struct Pending {
    id: String,
    rcpt: usize,
    record: Record,
    /// The log line, after the id.
    line: String,
    /// Failed for good: goes into the message's bounce.
    bounce: Option<Bounced>,
}

pub struct Results {
    hostname: String,
    /// Our domains: a bounce to a sender in one goes into the Maildir.
    domains: Vec<String>,
    pending: Vec<Pending>,
    /// Bounces put in the queue since `take_queued`.
    queued: Vec<String>,
}

impl Results {
    pub fn new(hostname: String, domains: Vec<String>) -> Results {
        Results {
            hostname,
            domains,
            pending: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// The bounces queued (to go onward like any message) since last asked.
    pub fn take_queued(&mut self) -> Vec<String> {
        std::mem::take(&mut self.queued)
    }

    /// A message's results from the next hop at `address`.
    pub fn delivered(
        &mut self,
        schedule: &mut Schedule,
        job: &Job,
        results: Vec<Outcome>,
        address: &Address,
        tls: Option<&str>,
        early: bool,
    ) {
        let host = format!(
            "H={} [{}]:{}",
            address.host,
            address.addr.ip(),
            address.addr.port()
        );
        let mut x = tls.map(|t| format!(" X={t}")).unwrap_or_default();
        if early {
            x.push_str(" L*");
        }
        for (&rcpt, outcome) in job.rcpts.iter().zip(results) {
            let Some(mailbox) = recipient(schedule, &job.id, rcpt) else {
                continue;
            };
            match outcome {
                Outcome::Delivered(reply) => {
                    let reply = reply.to_string();
                    self.pending.push(Pending {
                        id: job.id.clone(),
                        rcpt,
                        record: Record::Delivered {
                            host: format!(
                                "{}[{}]:{}",
                                address.host,
                                address.addr.ip(),
                                address.addr.port()
                            ),
                            reply: reply.clone(),
                        },
                        line: format!("=> {mailbox} {host}{x} C=\"{}\"", reply.escape_debug()),
                        bounce: None,
                    });
                }
                Outcome::Failed(failure) => {
                    let bounced = Bounced {
                        rcpt,
                        diagnostic: diagnostic(&failure),
                        remote: Some(address.host.clone()),
                        expired: false,
                    };
                    self.fail(job, &mailbox, failure.to_string(), bounced, Some(&host));
                }
                Outcome::Deferred(failure) => {
                    let remote = Some(address.host.as_str());
                    self.defer(
                        schedule,
                        job,
                        rcpt,
                        &mailbox,
                        failure.to_string(),
                        (Some(&host), remote),
                    );
                }
            }
        }
    }

    /// Every recipient of `job` failed before any reply (lookup, connect).
    pub fn not_delivered(&mut self, schedule: &mut Schedule, job: &Job, failed: Failed) {
        for &rcpt in &job.rcpts {
            let Some(mailbox) = recipient(schedule, &job.id, rcpt) else {
                continue;
            };
            match &failed {
                Failed::Temporary(why) => {
                    self.defer(schedule, job, rcpt, &mailbox, why.clone(), (None, None));
                }
                Failed::Permanent(why, status) => {
                    let text = why.clone();
                    let bounced = Bounced {
                        rcpt,
                        diagnostic: Diagnostic::Local {
                            status: *status,
                            text: text.clone(),
                        },
                        remote: None,
                        expired: false,
                    };
                    self.fail(job, &mailbox, text, bounced, None);
                }
            }
        }
    }

    fn fail(
        &mut self,
        job: &Job,
        mailbox: &str,
        reason: String,
        bounced: Bounced,
        host: Option<&str>,
    ) {
        let at = host.map(|h| format!(" {h}")).unwrap_or_default();
        self.pending.push(Pending {
            id: job.id.clone(),
            rcpt: bounced.rcpt,
            record: Record::Failed {
                bounce: None,
                reason: reason.clone(),
            },
            line: format!("** {mailbox}{at}: {reason}"),
            bounce: Some(bounced),
        });
    }

    /// `at`: the `H=` field of the log line and the host name, when a
    /// server answered.
    fn defer(
        &mut self,
        schedule: &mut Schedule,
        job: &Job,
        rcpt: usize,
        mailbox: &str,
        reason: String,
        (host, remote): (Option<&str>, Option<&str>),
    ) {
        let now = unix_secs();
        match schedule.deferred(&job.id, rcpt, now, &reason) {
            Deferred::Retry(next) => {
                let at = host.map(|h| format!(" {h}")).unwrap_or_default();
                self.pending.push(Pending {
                    id: job.id.clone(),
                    rcpt,
                    record: Record::Deferred {
                        next,
                        reason: reason.clone(),
                    },
                    line: format!("== {mailbox}{at} defer ({reason})"),
                    bounce: None,
                });
            }
            // Its time in the queue is over.
            Deferred::Expired => {
                let bounced = Bounced {
                    rcpt,
                    diagnostic: Diagnostic::Local {
                        status: Status::EXPIRED,
                        text: reason.clone(),
                    },
                    remote: remote.map(str::to_string),
                    expired: true,
                };
                let reason = format!("retry timeout exceeded; last error: {reason}");
                self.fail(job, mailbox, reason, bounced, host);
            }
        }
    }

    /// Makes the outcomes gathered so far durable, then logs them, then
    /// removes what is finished.
    pub fn settle(
        &mut self,
        schedule: &mut Schedule,
        queue: &QueueDir,
        store: &mut Store,
        log: &mut QueueLog,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut pending = std::mem::take(&mut self.pending);
        self.queue_bounces(&mut pending, schedule, queue, store, log, now);
        let durable = pending
            .iter()
            .any(|p| p.bounce.is_some() || matches!(p.record, Record::Delivered { .. }));
        let at = unix_secs();
        let mut ids: Vec<&str> = pending.iter().map(|p| p.id.as_str()).collect();
        ids.dedup();
        let outcomes: Vec<(String, Vec<queue::Record>)> = ids
            .into_iter()
            .map(|id| {
                let records = pending
                    .iter()
                    .filter(|p| p.id == id)
                    .map(|p| queue::Record {
                        rcpt: p.rcpt,
                        at,
                        outcome: p.record.clone(),
                    })
                    .collect();
                (id.to_string(), records)
            })
            .collect();
        log.record(queue, &outcomes, durable, now);
        for p in &pending {
            log::info!("{} {}", p.id, p.line);
            if p.record.is_final() {
                schedule.done(&p.id, p.rcpt);
            }
        }
        remove_finished(schedule, queue);
    }

    /// One bounce per message with recipients failed for good, queued
    /// durably before their failure is recorded; none for a bounce (the
    /// null sender). A bounce that cannot be queued leaves its recipients
    /// deferred, so that none is lost.
    fn queue_bounces(
        &mut self,
        pending: &mut [Pending],
        schedule: &mut Schedule,
        queue: &QueueDir,
        store: &mut Store,
        log: &mut QueueLog,
        now: Instant,
    ) {
        let mut ids: Vec<String> = pending
            .iter()
            .filter(|p| p.bounce.is_some())
            .map(|p| p.id.clone())
            .collect();
        ids.dedup();
        let mut units = Vec::new();
        // (message, its bounce, the bounce's size, queued rather than
        // delivered here)
        let mut made: Vec<(String, String, usize, bool)> = Vec::new();
        for id in &ids {
            let Some(message) = schedule.get(id) else {
                continue;
            };
            if !dsn::bounce_allowed(&message.envelope.sender) {
                continue;
            }
            let failures: Vec<&Bounced> = pending
                .iter()
                .filter(|p| &p.id == id)
                .filter_map(|p| p.bounce.as_ref())
                .collect();
            match self.bounce(queue, store, &message.envelope, &failures) {
                Ok((bounce_id, size, queued, delivery)) => {
                    units.push(vec![delivery]);
                    made.push((id.clone(), bounce_id, size, queued));
                }
                Err(e) => log::error!("{id}: composing its bounce: {e}"),
            }
        }
        let committed = log.commit_bounces(units, now);
        let mut ok_ids = Vec::new();
        for ((id, bounce_id, size, queued), result) in made.into_iter().zip(committed) {
            match result {
                Ok(_) => {
                    log::info!("{bounce_id} <= <> R={id} U=gsmtpd P=local S={size}");
                    if queued {
                        self.queued.push(bounce_id.clone());
                    }
                    ok_ids.push((id, bounce_id));
                }
                Err(e) => log::error!("{id}: queueing its bounce: {e}"),
            }
        }
        for p in pending.iter_mut() {
            let Some(_) = &p.bounce else { continue };
            let sender_null = schedule
                .get(&p.id)
                .is_some_and(|m| !dsn::bounce_allowed(&m.envelope.sender));
            if let Some((_, bounce_id)) = ok_ids.iter().find(|(id, _)| *id == p.id) {
                if let Record::Failed { bounce, .. } = &mut p.record {
                    *bounce = Some(bounce_id.clone());
                }
            } else if !sender_null {
                // Not bounced: try again later rather than lose it.
                p.record = Record::Deferred {
                    next: unix_secs() + 60,
                    reason: "the bounce could not be queued".into(),
                };
                p.bounce = None;
                p.line = format!("== {}", p.line.trim_start_matches("** "));
            }
        }
    }

    /// Writes the bounce of `env` for `failures`: into the sender's
    /// mailbox when the sender is one of ours, else into a queue file.
    fn bounce(
        &self,
        queue: &QueueDir,
        store: &mut Store,
        env: &queue::Envelope,
        failures: &[&Bounced],
    ) -> io::Result<(String, usize, bool, store::Delivery)> {
        let headers = queue
            .headers(&env.id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let id = store.next_id();
        let now = unix_secs();
        let recipients: Vec<dsn::Recipient> = failures
            .iter()
            .filter_map(|f| {
                let address = env.recipients.get(f.rcpt)?;
                let remote = f.remote.as_deref();
                Some(if f.expired {
                    dsn::Recipient::expired(address, remote, Some(f.diagnostic.clone()), Some(now))
                } else {
                    dsn::Recipient::failed(address, remote, f.diagnostic.clone(), Some(now))
                })
            })
            .collect();
        let bounce_id = id.to_string();
        let composed = dsn::compose(&dsn::Bounce {
            hostname: &self.hostname,
            sender: &env.sender,
            arrival: env.arrival,
            date: now,
            id: &bounce_id,
            recipients: &recipients,
            original: &headers,
        })
        .ok_or_else(|| io::Error::other("nothing to bounce"))?;
        let text = composed.message;
        let ours = smtp::local_mailbox(&env.sender).filter(|(_, d)| self.domains.contains(d));
        let queued = ours.is_none();
        let mut delivery = match ours {
            Some((local, domain)) => {
                store.begin(id, &[(domain, local.to_lowercase())], b"Return-Path: <>\n")?
            }
            _ => {
                let envelope = queue::Envelope {
                    id: id.to_string(),
                    arrival: now,
                    sender: String::new(),
                    recipients: vec![env.sender.clone()],
                    eight_bit: composed.eight_bit,
                    smtputf8: composed.smtputf8,
                    received_from: "(local) [127.0.0.1]:0".into(),
                };
                store.begin_queued(id, &envelope.encode())?
            }
        };
        delivery.write(&text)?;
        Ok((id.to_string(), text.len(), queued, delivery))
    }
}

/// Removes every message whose recipients are all done: logged
/// `Completed`.
pub fn remove_finished(schedule: &mut Schedule, queue: &QueueDir) {
    for id in schedule.finished() {
        log::info!("{id} Completed");
        if let Err(e) = queue.remove(&id) {
            log::error!("{id}: removing it from the queue: {e}");
        }
        schedule.remove(&id);
    }
}

/// The recipient's mailbox, for the log.
fn recipient(schedule: &Schedule, id: &str, rcpt: usize) -> Option<String> {
    schedule.get(id)?.envelope.recipients.get(rcpt).cloned()
}

/// How a bounce explains a failure: the server's reply and the command it
/// answered, or our own reason with its status.
fn diagnostic(failure: &Failure) -> Diagnostic {
    match failure {
        Failure::Reply { command, reply } => Diagnostic::Smtp {
            reply: reply.to_string(),
            command: Some(command.to_string()),
        },
        Failure::Refused(refusal) => {
            let code = refusal.status();
            Diagnostic::Local {
                status: Status::new(code.class, code.subject, code.detail),
                text: refusal.to_string(),
            }
        }
        Failure::Connection(e) => Diagnostic::Local {
            status: Status::new(4, 4, 1),
            text: e.to_string(),
        },
    }
}
