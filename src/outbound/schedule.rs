//! What the delivery process knows of the queue, and when each recipient
//! is tried: at once when it arrives, then after `retry_min`, doubling up
//! to `retry_max` between attempts, until `queue_lifetime` after its
//! arrival, when it fails for good (and is bounced). Sans-I/O: times are
//! Unix seconds passed in, so tests drive the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::queue::{Envelope, Loaded, Outcome};

/// The retry rules, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub retry_min: u64,
    pub retry_max: u64,
    pub lifetime: u64,
}

impl Rules {
    pub fn new(retry_min: Duration, retry_max: Duration, lifetime: Duration) -> Rules {
        Rules {
            retry_min: retry_min.as_secs().max(1),
            retry_max: retry_max.as_secs().max(1),
            lifetime: lifetime.as_secs(),
        }
    }

    /// The wait after the `attempts`-th failed attempt (1 for the first).
    pub fn wait(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(32);
        self.retry_min
            .saturating_mul(1u64 << doublings)
            .min(self.retry_max)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// To be tried at `next`.
    Pending {
        next: u64,
        attempts: u32,
        /// The last deferral's reason, for `queue list` and bounces.
        last: Option<String>,
    },
    /// Being tried now.
    Trying { attempts: u32 },
    /// Delivered or failed: recorded, nothing more to do.
    Done,
}

#[derive(Debug)]
pub struct Message {
    pub envelope: Envelope,
    pub size: u64,
    pub content_offset: u64,
    pub rcpts: Vec<RcptState>,
}

impl Message {
    pub fn finished(&self) -> bool {
        self.rcpts.iter().all(|r| *r == RcptState::Done)
    }
}

/// What a deferral leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Deferred {
    /// Tried again at this time.
    Retry(u64),
    /// Its time in the queue is over: bounce it.
    Expired,
}

#[derive(Debug)]
pub struct Schedule {
    rules: Rules,
    /// By id: oldest ids (arrival order) first.
    messages: BTreeMap<String, Message>,
}

impl Schedule {
    pub fn new(rules: Rules) -> Schedule {
        Schedule {
            rules,
            messages: BTreeMap::new(),
        }
    }

    /// A message read from the queue: its recipients already delivered or
    /// failed are done, the deferred ones wait until their next attempt,
    /// new ones are due now.
    pub fn add(&mut self, loaded: Loaded, now: u64) {
        let deferrals = |rcpt: usize| {
            loaded
                .records
                .iter()
                .filter(|r| r.rcpt == rcpt && !r.is_final())
                .count() as u32
        };
        let rcpts = loaded
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, last)| match last.as_ref().map(|r| &r.outcome) {
                Some(Outcome::Delivered { .. } | Outcome::Failed { .. }) => RcptState::Done,
                Some(Outcome::Deferred { next, reason }) => RcptState::Pending {
                    next: *next,
                    attempts: deferrals(i),
                    last: Some(reason.clone()),
                },
                None => RcptState::Pending {
                    next: now,
                    attempts: 0,
                    last: None,
                },
            })
            .collect();
        let id = loaded.envelope.id.clone();
        self.messages.insert(
            id,
            Message {
                envelope: loaded.envelope,
                size: loaded.size,
                content_offset: loaded.content_offset,
                rcpts,
            },
        );
    }

    pub fn contains(&self, id: &str) -> bool {
        self.messages.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Message> {
        self.messages.get(id)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Recipients due at `now`, by message, oldest message first; they
    /// become `Trying` until their outcome is reported.
    pub fn take_due(&mut self, now: u64) -> Vec<(String, Vec<usize>)> {
        let mut due = Vec::new();
        for (id, m) in &mut self.messages {
            let mut rcpts = Vec::new();
            for (i, r) in m.rcpts.iter_mut().enumerate() {
                if let RcptState::Pending { next, attempts, .. } = *r
                    && next <= now
                {
                    *r = RcptState::Trying { attempts };
                    rcpts.push(i);
                }
            }
            if !rcpts.is_empty() {
                due.push((id.clone(), rcpts));
            }
        }
        due
    }

    /// `gsmtpd queue flush`: everything waiting is due now.
    pub fn flush(&mut self, now: u64) {
        for m in self.messages.values_mut() {
            for r in &mut m.rcpts {
                if let RcptState::Pending { next, .. } = r {
                    *next = now;
                }
            }
        }
    }

    /// The earliest next attempt of a waiting recipient.
    pub fn next_due(&self) -> Option<u64> {
        self.messages
            .values()
            .flat_map(|m| &m.rcpts)
            .filter_map(|r| match r {
                RcptState::Pending { next, .. } => Some(*next),
                _ => None,
            })
            .min()
    }

    /// Recipient `rcpt` was delivered or failed for good.
    pub fn done(&mut self, id: &str, rcpt: usize) {
        if let Some(r) = self.rcpt_mut(id, rcpt) {
            *r = RcptState::Done;
        }
    }

    /// Recipient `rcpt` could not be delivered this time.
    pub fn deferred(&mut self, id: &str, rcpt: usize, now: u64, reason: &str) -> Deferred {
        let rules = self.rules;
        let Some(m) = self.messages.get_mut(id) else {
            return Deferred::Expired;
        };
        if now >= m.envelope.arrival.saturating_add(rules.lifetime) {
            return Deferred::Expired;
        }
        let Some(r) = m.rcpts.get_mut(rcpt) else {
            return Deferred::Expired;
        };
        let attempts = match r {
            RcptState::Trying { attempts } | RcptState::Pending { attempts, .. } => *attempts + 1,
            RcptState::Done => return Deferred::Expired,
        };
        let next = now + rules.wait(attempts);
        *r = RcptState::Pending {
            next,
            attempts,
            last: Some(reason.to_string()),
        };
        Deferred::Retry(next)
    }

    /// Messages none of whose recipients is being tried now.
    pub fn idle_ids(&self) -> impl Iterator<Item = &String> + '_ {
        self.messages
            .iter()
            .filter(|(_, m)| {
                !m.rcpts
                    .iter()
                    .any(|r| matches!(r, RcptState::Trying { .. }))
            })
            .map(|(id, _)| id)
    }

    /// Forgets a message (finished, or removed from the queue).
    pub fn remove(&mut self, id: &str) -> Option<Message> {
        self.messages.remove(id)
    }

    /// Ids of the messages whose recipients are all done.
    pub fn finished(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(_, m)| m.finished())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn rcpt_mut(&mut self, id: &str, rcpt: usize) -> Option<&mut RcptState> {
        self.messages.get_mut(id)?.rcpts.get_mut(rcpt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Record;

    const T0: u64 = 1_000_000;

    fn rules() -> Rules {
        Rules::new(
            Duration::from_secs(300),
            Duration::from_secs(4000),
            Duration::from_secs(5 * 86_400),
        )
    }

    fn loaded(id: &str, rcpts: usize, records: Vec<Record>) -> Loaded {
        let outcomes = crate::queue::journal::last_outcomes(&records, rcpts);
        Loaded {
            envelope: Envelope {
                id: id.into(),
                arrival: T0,
                sender: "a@b.example".into(),
                recipients: (0..rcpts).map(|i| format!("r{i}@x.example")).collect(),
                eight_bit: false,
                smtputf8: false,
                received_from: "(c) [192.0.2.1]:1".into(),
            },
            size: 10,
            content_offset: 100,
            outcomes,
            records,
        }
    }

    #[test]
    fn retries_double_from_the_minimum_to_the_maximum() {
        let r = rules();
        let waits: Vec<u64> = (1..=7).map(|n| r.wait(n)).collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 4000, 4000, 4000]);
    }

    #[test]
    fn a_new_message_is_due_at_once_and_deferrals_back_off() {
        let mut s = Schedule::new(rules());
        s.add(loaded("m1", 2, vec![]), T0);
        assert_eq!(s.next_due(), Some(T0));
        assert_eq!(s.take_due(T0), vec![("m1".to_string(), vec![0, 1])]);
        assert!(s.take_due(T0).is_empty(), "being tried: not due again");
        s.done("m1", 1);
        assert_eq!(
            s.deferred("m1", 0, T0 + 1, "451 later"),
            Deferred::Retry(T0 + 301)
        );
        assert!(s.take_due(T0 + 300).is_empty());
        assert_eq!(s.take_due(T0 + 301), vec![("m1".to_string(), vec![0])]);
        assert_eq!(
            s.deferred("m1", 0, T0 + 301, "451 later"),
            Deferred::Retry(T0 + 901)
        );
        // flush makes it due now.
        s.flush(T0 + 400);
        assert_eq!(s.take_due(T0 + 400).len(), 1);
        // Past its lifetime: no more retries.
        assert_eq!(
            s.deferred("m1", 0, T0 + 5 * 86_400, "451 still"),
            Deferred::Expired
        );
        s.done("m1", 0);
        assert_eq!(s.finished(), vec!["m1".to_string()]);
    }

    #[test]
    fn a_message_read_back_resumes_where_its_journal_left_it() {
        let records = vec![
            Record {
                rcpt: 0,
                at: T0,
                outcome: Outcome::Delivered {
                    host: "h".into(),
                    reply: "250".into(),
                },
            },
            Record {
                rcpt: 1,
                at: T0,
                outcome: Outcome::Deferred {
                    next: T0 + 300,
                    reason: "451".into(),
                },
            },
            Record {
                rcpt: 1,
                at: T0 + 300,
                outcome: Outcome::Deferred {
                    next: T0 + 900,
                    reason: "452".into(),
                },
            },
        ];
        let mut s = Schedule::new(rules());
        s.add(loaded("m2", 3, records), T0 + 400);
        let m = s.get("m2").unwrap();
        assert_eq!(m.rcpts[0], RcptState::Done, "delivered: never sent again");
        assert_eq!(
            m.rcpts[1],
            RcptState::Pending {
                next: T0 + 900,
                attempts: 2,
                last: Some("452".into())
            }
        );
        assert_eq!(s.take_due(T0 + 400), vec![("m2".to_string(), vec![2])]);
        assert_eq!(s.next_due(), Some(T0 + 900));
    }
}
