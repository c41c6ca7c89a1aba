//! One message: MAIL, RCPT, DATA or BDAT, pipelined or one command at a
//! time, and the per-recipient results.
//!
//! With PIPELINING, MAIL, every RCPT and DATA go out in one write (with
//! CHUNKING the first BDAT takes DATA's place, as soon as the driver
//! supplies its chunk); the replies are matched in order. Further BDAT
//! chunks wait until every RCPT is answered and one was accepted, then
//! stream without waiting for their replies. Without PIPELINING every
//! command, and every BDAT chunk, waits for the previous reply.

use super::client::{Client, Expect};
use super::encode::Encoder;
use super::{
    Command, ConnectionError, Delivery, Failure, MessageId, Outcome, Outgoing, RecipientResult,
    Refusal, Reply, Wait,
};

/// The engine asks for content while less than this is waiting to be
/// written, so memory stays bounded by this plus one chunk and the socket
/// has a full buffer behind it while the driver reads the next chunk.
pub const CONTENT_LOW_WATER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Pending,
    Accepted,
    Refused,
}

/// The next command to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    Rset,
    Mail,
    /// The first recipient index not sent yet.
    Rcpt(usize),
    /// DATA, or the start of BDAT content.
    Body,
    /// Every command is out; content may follow.
    Sent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// Not yet: waiting for the recipients or for 354.
    Waiting,
    /// Content is wanted from the driver.
    Streaming,
    /// The whole content and its end are in the output.
    Sent,
}

#[derive(Debug)]
enum RcptState {
    /// Not answered yet (or not sent yet).
    Pending,
    Accepted,
    Done(Outcome),
}

#[derive(Debug)]
struct Rcpt {
    address: String,
    state: RcptState,
}

#[derive(Debug)]
pub(super) struct Transaction {
    pub id: MessageId,
    /// `MAIL FROM:<...> params`.
    mail: String,
    rcpts: Vec<Rcpt>,
    /// DATA; otherwise BDAT.
    data: bool,
    cursor: Cursor,
    mail_answer: Answer,
    body: Body,
    encoder: Encoder,
    first_chunk_sent: bool,
    /// A failure of the whole transaction (MAIL, DATA, a BDAT) was applied;
    /// replies still due to it are only consumed.
    over: bool,
    /// The server's transaction ended with the end of the content, so no
    /// RSET is needed before the next one.
    clean_end: bool,
}

impl Transaction {
    /// Something remains to do: MAIL not refused, no failure applied, a
    /// recipient not yet answered or accepted.
    fn viable(&self) -> bool {
        self.mail_answer != Answer::Refused
            && !self.over
            && self
                .rcpts
                .iter()
                .any(|r| matches!(r.state, RcptState::Pending | RcptState::Accepted))
    }

    fn answered(&self) -> bool {
        !self
            .rcpts
            .iter()
            .any(|r| matches!(r.state, RcptState::Pending))
    }

    fn finished(&self) -> bool {
        self.rcpts
            .iter()
            .all(|r| matches!(r.state, RcptState::Done(_)))
    }

    /// Content has started to go out (or the driver is reading it).
    pub fn sending_content(&self) -> bool {
        if self.data {
            self.body != Body::Waiting
        } else {
            self.first_chunk_sent
        }
    }

    pub fn awaits_content(&self) -> bool {
        self.body == Body::Streaming && self.viable()
    }

    /// Every open recipient (not yet answered, or accepted) gets `outcome`.
    pub fn settle_all(&mut self, outcome: impl Fn() -> Outcome) {
        for rcpt in &mut self.rcpts {
            if !matches!(rcpt.state, RcptState::Done(_)) {
                rcpt.state = RcptState::Done(outcome());
            }
        }
    }

    /// A 4xx or 5xx to the whole transaction.
    fn fail_open(&mut self, command: Command, reply: &Reply) {
        self.settle_all(|| outcome(command, reply));
        self.over = true;
    }

    fn deliver(&mut self, reply: &Reply) {
        for rcpt in &mut self.rcpts {
            if matches!(rcpt.state, RcptState::Accepted) {
                rcpt.state = RcptState::Done(Outcome::Delivered(reply.clone()));
            }
        }
    }

    /// Only once finished: every recipient has its result.
    pub fn delivery(self) -> Delivery {
        let recipients = self
            .rcpts
            .into_iter()
            .map(|rcpt| RecipientResult {
                address: rcpt.address,
                outcome: match rcpt.state {
                    RcptState::Done(outcome) => outcome,
                    // Unreachable by construction; a deferral is the safe
                    // answer should it ever happen.
                    RcptState::Pending | RcptState::Accepted => {
                        Outcome::Deferred(Failure::Connection(ConnectionError::Lost(Wait::Closed)))
                    }
                },
            })
            .collect();
        Delivery {
            id: self.id,
            recipients,
        }
    }
}

/// 4xx defers, 5xx fails.
fn outcome(command: Command, reply: &Reply) -> Outcome {
    let failure = Failure::Reply {
        command,
        reply: reply.clone(),
    };
    if reply.is_permanent() {
        Outcome::Failed(failure)
    } else {
        Outcome::Deferred(failure)
    }
}

/// An address the engine puts between `<` and `>`: no control character
/// (a CR or LF would end the command early, into a command of the
/// server's choosing) and no angle bracket (which could add parameters).
fn valid_address(address: &str, may_be_empty: bool) -> bool {
    (may_be_empty || !address.is_empty())
        && !address
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>')
}

impl Client {
    /// Checks the message against the server and starts it, or reports it
    /// failed at once.
    pub(super) fn start(&mut self, id: MessageId, message: Outgoing) {
        let ehlo = self.ehlo.as_ref();
        let needs_utf8 = message.smtputf8
            || !message.sender.is_ascii()
            || message.recipients.iter().any(|r| !r.is_ascii());
        let size_limit = ehlo.and_then(|e| e.size_limit);
        let refusal = if !valid_address(&message.sender, true) {
            Some(Refusal::BadAddress(message.sender.clone()))
        } else if needs_utf8 && !ehlo.is_some_and(|e| e.smtputf8) {
            Some(Refusal::NeedsSmtputf8)
        } else {
            size_limit
                .filter(|&limit| message.size > limit)
                .map(|limit| Refusal::TooBig {
                    size: message.size,
                    limit,
                })
        };
        let failed = |refusal: Refusal| RcptState::Done(Outcome::Failed(Failure::Refused(refusal)));
        let rcpts: Vec<Rcpt> = message
            .recipients
            .into_iter()
            .map(|address| {
                let state = match &refusal {
                    Some(refusal) => failed(refusal.clone()),
                    None if !valid_address(&address, false) => {
                        failed(Refusal::BadAddress(address.clone()))
                    }
                    None => RcptState::Pending,
                };
                Rcpt { address, state }
            })
            .collect();
        let mut mail = format!("MAIL FROM:<{}>", message.sender);
        if ehlo.is_some_and(|e| e.size) {
            mail += &format!(" SIZE={}", message.size);
        }
        if message.eight_bit && ehlo.is_some_and(|e| e.eight_bit_mime) {
            mail += " BODY=8BITMIME";
        }
        if needs_utf8 {
            mail += " SMTPUTF8";
        }
        let data = !ehlo.is_some_and(|e| e.chunking);
        let txn = Transaction {
            id,
            mail,
            rcpts,
            data,
            cursor: if self.needs_rset {
                Cursor::Rset
            } else {
                Cursor::Mail
            },
            mail_answer: Answer::Pending,
            body: Body::Waiting,
            encoder: Encoder::new(data),
            first_chunk_sent: false,
            over: false,
            clean_end: false,
        };
        if txn.finished() {
            // Nothing to send: the server never hears of it.
            self.report(txn.delivery());
            return;
        }
        self.txn = Some(txn);
        self.pump();
    }

    /// Sends the message's next commands: all of them with PIPELINING,
    /// else the next one once every reply is in. Then reports the message
    /// if it is finished.
    pub(super) fn pump(&mut self) {
        let pipelining = self.pipelining();
        while let Some(txn) = self.txn.as_mut() {
            if !pipelining && !self.expect.is_empty() {
                break;
            }
            match txn.cursor {
                Cursor::Rset => {
                    self.out.command("RSET");
                    self.expect.push_back(Expect::Rset);
                    self.needs_rset = false;
                    txn.cursor = Cursor::Mail;
                }
                Cursor::Mail => {
                    self.out.command(&txn.mail);
                    self.expect.push_back(Expect::Mail);
                    txn.cursor = Cursor::Rcpt(0);
                }
                Cursor::Rcpt(_) if !txn.viable() => txn.cursor = Cursor::Sent,
                Cursor::Rcpt(from) => {
                    let next = (from..txn.rcpts.len())
                        .find(|&i| matches!(txn.rcpts[i].state, RcptState::Pending));
                    match next {
                        Some(i) => {
                            let line = format!("RCPT TO:<{}>", txn.rcpts[i].address);
                            self.out.command(&line);
                            self.expect.push_back(Expect::Rcpt(i));
                            txn.cursor = Cursor::Rcpt(i + 1);
                        }
                        None => txn.cursor = Cursor::Body,
                    }
                }
                Cursor::Body => {
                    txn.cursor = Cursor::Sent;
                    if !txn.viable() {
                        // Without PIPELINING: no recipient was accepted.
                        continue;
                    }
                    if txn.data {
                        self.out.command("DATA");
                        self.expect.push_back(Expect::Data);
                    } else {
                        txn.body = Body::Streaming;
                    }
                }
                Cursor::Sent => break,
            }
        }
        self.check_finished();
    }

    /// Reports the message once every recipient has its result and every
    /// reply due to it has arrived.
    fn check_finished(&mut self) {
        let finished = self
            .txn
            .as_ref()
            .is_some_and(|txn| txn.finished() && self.expect.is_empty());
        if !finished {
            return;
        }
        if let Some(txn) = self.txn.take() {
            self.needs_rset = txn.mail_answer == Answer::Accepted && !txn.clean_end;
            self.report(txn.delivery());
        }
    }

    /// The message whose content the engine wants now.
    pub(super) fn content_wanted(&self) -> Option<MessageId> {
        let id = self.txn.as_ref()?.id;
        (self.accepts_content() && self.out.len() < CONTENT_LOW_WATER).then_some(id)
    }

    fn accepts_content(&self) -> bool {
        let Some(txn) = &self.txn else {
            return false;
        };
        if !txn.awaits_content() {
            return false;
        }
        // DATA content flows once 354 came; the first BDAT chunk as soon as
        // the recipients are out; later ones once the recipients are
        // answered, and without PIPELINING only after the last reply.
        txn.data
            || !txn.first_chunk_sent
            || (txn.answered() && (self.pipelining() || self.expect.is_empty()))
    }

    pub(super) fn content(&mut self, chunk: &[u8], last: bool) {
        if !self.accepts_content() {
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if txn.data {
            txn.encoder.encode(chunk, self.out.buf());
            if last {
                txn.encoder.finish(self.out.buf());
                self.out.command(".");
                self.expect.push_back(Expect::EndOfData);
                txn.body = Body::Sent;
            }
            return;
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        txn.encoder.encode(chunk, &mut bytes);
        if last {
            txn.encoder.finish(&mut bytes);
        }
        if !bytes.is_empty() || last {
            let suffix = if last { " LAST" } else { "" };
            self.out.command(&format!("BDAT {}{suffix}", bytes.len()));
            self.out.buf().extend_from_slice(&bytes);
            self.expect.push_back(Expect::Bdat { last });
            txn.first_chunk_sent = true;
            if last {
                txn.body = Body::Sent;
            }
        }
        self.scratch = bytes;
    }

    /// A reply to RSET, MAIL, RCPT, DATA, the end of data or BDAT (421s
    /// are handled before).
    pub(super) fn on_transaction_reply(&mut self, expect: Expect, reply: Reply) {
        let command = expect.command();
        let Some(txn) = self.txn.as_mut() else {
            return self.unexpected(command, reply);
        };
        let class = reply.class();
        match expect {
            Expect::Rset if class != 2 => self.refuse(command, reply),
            Expect::Rset => {}
            Expect::Mail => match class {
                2 => txn.mail_answer = Answer::Accepted,
                4 | 5 => {
                    txn.mail_answer = Answer::Refused;
                    txn.fail_open(command, &reply);
                }
                _ => self.unexpected(command, reply),
            },
            Expect::Rcpt(i) => {
                let Some(rcpt) = txn.rcpts.get_mut(i) else {
                    return;
                };
                if !matches!(rcpt.state, RcptState::Pending) {
                    // Pipelined behind a refused MAIL: its 503 says nothing.
                    return;
                }
                match class {
                    2 => rcpt.state = RcptState::Accepted,
                    4 | 5 => rcpt.state = RcptState::Done(outcome(command, &reply)),
                    _ => self.unexpected(command, reply),
                }
            }
            Expect::Data if !txn.viable() => {
                // DATA pipelined behind refused recipients (or MAIL): its
                // 503/554 is expected. A server that says 354 anyway gets an
                // empty message ended at once, as Postfix and Exim do.
                if class == 3 {
                    self.out.command(".");
                    self.expect.push_back(Expect::EndOfData);
                }
            }
            Expect::Data => match class {
                3 => txn.body = Body::Streaming,
                4 | 5 => txn.fail_open(command, &reply),
                _ => self.unexpected(command, reply),
            },
            Expect::EndOfData => {
                // Whatever it says, the server's transaction is over.
                txn.clean_end = true;
                if txn.viable() {
                    match class {
                        2 => txn.deliver(&reply),
                        4 | 5 => txn.fail_open(command, &reply),
                        _ => self.unexpected(command, reply),
                    }
                }
            }
            Expect::Bdat { last } => {
                if !txn.viable() {
                    // Behind refused recipients, or after a refused chunk.
                    return;
                }
                match class {
                    2 if last => {
                        txn.clean_end = true;
                        txn.deliver(&reply);
                    }
                    2 => {}
                    // RFC 3030 4.2: no further chunks once one is refused.
                    4 | 5 => txn.fail_open(command, &reply),
                    _ => self.unexpected(command, reply),
                }
            }
            Expect::Greeting | Expect::Ehlo | Expect::Helo | Expect::StartTls | Expect::Quit => {
                self.unexpected(command, reply)
            }
        }
    }
}
