//! SMTP server protocol engine (RFC 5321 with the extensions gsmtpd advertises),
//! written sans-I/O: the caller feeds received bytes, writes out the reply bytes
//! and hands in a [`MessageSink`] for message content. Nothing here touches
//! sockets, TLS, clocks or files, so every behaviour is testable byte for byte.
//!
//! The server's loop: `greet()`, then for every read `receive()`, write out
//! `output()` and `consume_output()` what was written. On `Next::StartTls`
//! it hands over to TLS and calls `tls_established()`; on `Next::Close` it
//! closes. On a read timeout it calls `timed_out()`, on shutdown
//! `shutting_down()`, writes the 421 and closes. A message still open in the
//! sink when the connection ends is the sink's to discard (gsmtpd's store
//! removes its temporary file when the connection is dropped).
//! It should write the output before reading more: replies are only bounded
//! by what the client sends. While `awaiting_commit()` it should not read at
//! all: the engine keeps whatever it is given until `commit_finished()`.

mod address;
mod command;
mod content;
mod data;
mod line;
mod params;
mod reply;
mod session;
mod transaction;

#[cfg(test)]
mod tests;

pub use session::Smtp;

use std::net::SocketAddr;

pub struct SmtpConfig {
    /// Shown in the banner, the EHLO reply and the 221/421 replies.
    pub hostname: String,
    /// Accepted recipient domains, already lowercase ASCII.
    pub domains: Vec<String>,
    /// Advertised with SIZE and enforced on content bytes after dot-unstuffing.
    pub max_message_size: u64,
    /// Further RCPTs get 452 4.5.3.
    pub max_recipients: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// For example "TLS1.3".
    pub version: String,
    pub cipher: String,
    pub bits: u32,
    pub resumed: bool,
}

pub struct ConnInfo {
    pub peer: SocketAddr,
    /// True on the plain listener: STARTTLS is offered while not yet in TLS.
    pub starttls_available: bool,
    /// Some on the implicit-TLS listener from the start.
    pub tls: Option<TlsInfo>,
    /// Advertise PIPECONNECT in the EHLO reply.
    pub pipe_connect: bool,
    /// The client may send to any domain (`--relay-from`): recipients
    /// outside ours are accepted, to be sent onward.
    pub relay: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// As the client wrote it, without quoting; for a local recipient
    /// checked to be safe as a directory name.
    pub local: String,
    /// Lowercased.
    pub domain: String,
    /// Not one of our domains: accepted from a relay client, to be queued
    /// and sent onward.
    pub relay: bool,
}

/// A mailbox "local@domain" split into its unquoted local-part and its
/// lowercase domain, when it is valid and the local-part is safe as a
/// directory name (as our own recipients' are): where a bounce to one of
/// our senders is delivered.
pub fn local_mailbox(text: &str) -> Option<(String, String)> {
    let mailbox = address::parse_mailbox(text, true).ok()?;
    if mailbox.literal || !address::safe_local_part(&mailbox.local) {
        return None;
    }
    Some((mailbox.local, mailbox.domain.to_ascii_lowercase()))
}

impl Recipient {
    /// "local@domain" as it goes into a RCPT TO (quoted where needed).
    pub fn mailbox(&self) -> String {
        address::mailbox_text(&self.local, &self.domain)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug)]
pub struct Envelope {
    pub helo: String,
    pub esmtp: bool,
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
    /// Reverse-path without the angle brackets (and without a source route); "" for the null sender.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub body: Body,
    pub smtputf8: bool,
    /// The content came by BDAT.
    pub chunking: bool,
    /// PIPECONNECT was advertised to this client: whether it used early
    /// pipelining on this connection (Exim's `L*`) or not (`L.`).
    pub early_pipelining: Option<bool>,
}

impl Envelope {
    /// Protocol name for the Received header's "with" clause (RFC 3848, RFC 6531).
    pub fn protocol(&self) -> &'static str {
        match (self.smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, false, _) => "SMTP",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
        }
    }
}

/// Why the sink failed; only logged, the client sees a generic 452.
#[derive(Debug)]
pub struct SinkError(pub String);

/// Where message content goes. The server implements it with durable Maildir
/// delivery; tests with a Vec.
///
/// After `begin`, the engine calls exactly one of `commit` (successful) or
/// `abort`, except when the connection ends in `timed_out`/`shutting_down`:
/// then the abort happens in the next `receive`, or never, and the sink
/// discards what it holds when the connection is dropped.
///
/// A sink may answer `commit` with [`Commit::Queued`] to make several
/// messages durable together (group commit): the engine then holds the
/// reply, and every byte of input after the message, until the caller
/// reports the outcome with [`Smtp::commit_finished`]. Replies keep their
/// order, and no 250 exists before the sink says the message is durable.
pub trait MessageSink {
    fn begin(&mut self, envelope: &Envelope) -> Result<(), SinkError>;
    /// Content exactly as it must be stored: dot-unstuffed, CRLF line ends as
    /// on the wire, without the final ".\r\n"; in runs as large as the input allows.
    fn write(&mut self, content: &[u8]) -> Result<(), SinkError>;
    /// Makes the message durable, or queues it to be made durable; size =
    /// content bytes.
    fn commit(&mut self, envelope: &Envelope, size: u64) -> Result<Commit, SinkError>;
    /// Discards whatever begin/write produced.
    fn abort(&mut self);
}

/// What a sink did with a complete message.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// On stable storage now; the id for the 250 reply.
    Done(String),
    /// Complete but not yet durable: the outcome comes later, through
    /// [`Smtp::commit_finished`].
    Queued,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Write the pending output, then start the TLS handshake.
    StartTls,
    /// Write the pending output, then close.
    Close,
}

/// Lets the server pick the read timeout: RFC 5321 4.5.3.2 allows longer ones for content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Command,
    Data,
}
