//! SMTP client protocol engine (RFC 5321 with PIPELINING, CHUNKING, SIZE,
//! 8BITMIME, SMTPUTF8, STARTTLS and ENHANCEDSTATUSCODES), sans-I/O like
//! `crate::smtp`: the driver owns the socket, TLS, the clock and the queue;
//! the engine turns the server's bytes into commands and per-recipient
//! results. Nothing here reads a clock, touches a socket or logs: the engine
//! reports facts and the driver acts on them and logs them.
//!
//! One [`Client`] per connection, carrying any number of messages one after
//! the other. The driver's loop:
//!
//! - after connecting, and after every call into the engine, call
//!   [`Client::next_action`] until it returns [`Action::Wait`] (or `Ready`
//!   with no message to send yet), doing what each action asks; then write
//!   out [`Client::output`] and [`Client::consume_output`] what was written
//!   (a whole pipelined group is in the output by then, so it goes out in
//!   one write);
//! - feed every byte read from the server to [`Client::receive`] (after
//!   STARTTLS: the decrypted bytes);
//! - apply the timeout of [`Client::wait`] while waiting, and call
//!   [`Client::timed_out`] when it expires, or [`Client::connection_lost`]
//!   when the connection fails (EOF, reset, a TLS error): every recipient
//!   still open is then reported deferred.
//!
//! Decisions the engine makes (see also `encode.rs`):
//!
//! - Content without a final line end gets CRLF, and bare CR or LF in the
//!   content become CRLF, in DATA and BDAT alike.
//! - 8-bit content to a server without 8BITMIME goes out as it is, without
//!   BODY=, as Postfix (with `disable_mime_output_conversion`) and Exim do:
//!   nearly every server takes it, and converting MIME parts to 7 bits is a
//!   job for the queue if ever needed. Bouncing it would lose mail that
//!   would have arrived.
//! - Addresses that are not ASCII make a message need SMTPUTF8 even when
//!   [`Outgoing::smtputf8`] is false.
//! - Any 2xx greeting is taken (RFC 5321 says 220; Postfix also only checks
//!   the class), and any 2xx to STARTTLS starts TLS (RFC 3207 says 220): a
//!   server that said yes to STARTTLS expects a ClientHello.
//! - RSET goes out before the next MAIL after a transaction the server may
//!   still hold: MAIL was accepted and the message did not end with the
//!   reply to the end of DATA or a successful BDAT LAST.
//! - A reply whose class the command cannot have (a 354 to MAIL, a 2xx to
//!   DATA) is a protocol error: the connection fails and everything open is
//!   deferred, never counted as delivered.

mod client;
mod ehlo;
mod encode;
mod output;
mod reply;
mod transaction;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use client::Client;
pub use ehlo::Ehlo;
pub use reply::{EnhancedCode, MAX_LINE, MAX_REPLY, Reply};
pub use transaction::CONTENT_LOW_WATER;

/// When STARTTLS is used (Postfix's `smtp_tls_security_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsWanted {
    /// `none`: never.
    Never,
    /// `may`: when the server offers it. A refusal is the driver's to
    /// decide ([`Action::TlsRefused`]).
    IfOffered,
    /// `encrypt` and stricter: a server that does not offer it or refuses
    /// it fails the connection, temporarily.
    Required,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The EHLO/HELO argument: our host name.
    pub helo_name: String,
    pub tls: TlsWanted,
    /// The connection is TLS from its start (RFC 8314, port 465): no
    /// STARTTLS, and `Required` is met.
    pub implicit_tls: bool,
    /// What this server said to EHLO on an earlier connection, for early
    /// pipelining (see [`Early`]).
    pub early: Early,
}

/// EHLO responses the driver kept from an earlier connection to the same
/// address and port. Where the one that applies offered PIPECONNECT (and
/// PIPELINING), the engine pipelines early, as Exim's `hosts_pipe_connect`
/// does:
///
/// - plaintext (and implicit TLS, inside it): EHLO before the banner, and
///   the first message's MAIL, RCPT and DATA right behind it;
/// - STARTTLS: EHLO and STARTTLS before the banner; after the handshake,
///   with `tls` kept too, EHLO and the first message's commands in one
///   write.
///
/// The message goes whole, content included (BDAT), as Exim's does, so a
/// later delivery costs no more round trips than the server's replies
/// need. Surprises:
///
/// - a banner other than 2xx, or a refused EHLO: the server takes
///   nothing; the connection fails with [`ConnectionError::EarlyPipelining`]
///   and the message is deferred that way;
/// - an EHLO reply that offers something else than the kept one: the
///   replies to the commands behind it still say what the server did with
///   the message, so what it delivered counts, and every other recipient
///   is deferred that way instead of being failed (a 5xx to a command the
///   server no longer knows is no verdict on the message). The connection
///   goes on with the new reply.
///
/// The driver sends what was deferred for early pipelining again at once,
/// the ordinary way, and keeps the new response (or drops the kept ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Early {
    /// The response outside TLS.
    pub plain: Option<Ehlo>,
    /// The response inside TLS (after STARTTLS, or on implicit TLS).
    pub tls: Option<Ehlo>,
}

/// One message for [`Client::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The reverse-path as it goes between `<` and `>`; "" for the null
    /// sender of a bounce.
    pub sender: String,
    /// Forward-paths as they go between `<` and `>`, in the order results
    /// are reported.
    pub recipients: Vec<String>,
    /// The content is 8-bit MIME: BODY=8BITMIME where advertised.
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531): UTF-8 in its header fields or
    /// addresses.
    pub smtputf8: bool,
    /// The content's size in bytes, for SIZE= and the server's limit.
    pub size: u64,
}

/// The engine's name for a submitted message, unique per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// What the driver should do now; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the output, read, and wait (with the timeout of
    /// [`Client::wait`]).
    Wait,
    /// The server said yes to STARTTLS and the output is empty: run the
    /// TLS handshake on this connection, then call [`Client::tls_started`].
    /// Feed nothing to `receive` before: plaintext received now is an
    /// attack and fails the connection.
    StartTls,
    /// Under [`TlsWanted::IfOffered`] the server refused STARTTLS: call
    /// [`Client::continue_without_tls`] to go on in plaintext on this
    /// connection (as Postfix does), or [`Client::quit`] to give up on it
    /// (and, say, try again without STARTTLS on a new one).
    TlsRefused(Reply),
    /// The connection may take a message: [`Client::submit`] one, or
    /// [`Client::quit`].
    Ready,
    /// Call [`Client::supply_content`] with the next chunk of this message.
    NeedContent(MessageId),
    /// A message is finished: a result for every recipient.
    Done(Delivery),
    /// The connection is over: write what the output holds, if the
    /// connection still can (a QUIT, after the rest of a command the
    /// driver had begun to write), then close. Every message was reported
    /// before.
    Closed(End),
}

/// The results of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: MessageId,
    /// In the order of [`Outgoing::recipients`].
    pub recipients: Vec<RecipientResult>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientResult {
    pub address: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server's reply to the end of the message, e.g.
    /// `250 2.0.0 OK id=1tFz3c-0009Ld-00`.
    Delivered(Reply),
    /// Try again later.
    Deferred(Failure),
    /// Bounce.
    Failed(Failure),
}

/// Why a recipient was not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server's reply to `command`: 4xx defers, 5xx fails. A reply to
    /// MAIL, DATA, BDAT or the end of data applies to every recipient the
    /// server had accepted; a 421 also to every other one still open; a
    /// refused RSET defers the message whatever its class.
    Reply { command: Command, reply: Reply },
    /// The engine did not send the message (always a failure).
    Refused(Refusal),
    /// The connection failed before the reply (always a deferral).
    Connection(ConnectionError),
}

/// A message the server cannot take, so it was not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the server's SIZE limit (RFC 1870).
    TooBig { size: u64, limit: u64 },
    /// Needs SMTPUTF8, which the server does not offer.
    NeedsSmtputf8,
    /// An address the engine will not put into a command (empty, or with
    /// a control character that could split the command line).
    BadAddress(String),
}

impl Refusal {
    /// The RFC 3463 code for a bounce.
    pub fn status(&self) -> EnhancedCode {
        let (subject, detail) = match self {
            Refusal::TooBig { .. } => (3, 4),
            Refusal::NeedsSmtputf8 => (6, 7),
            Refusal::BadAddress(_) => (1, 3),
        };
        EnhancedCode {
            class: 5,
            subject,
            detail,
        }
    }
}

/// Why a connection failed (always temporary for its messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionError {
    /// [`Client::connection_lost`] during this wait.
    Lost(Wait),
    /// [`Client::timed_out`] during this wait.
    TimedOut(Wait),
    /// The server's bytes were not a valid reply, or not a possible one.
    Protocol(ProtocolError),
    /// A reply when none was due; a 421 here is a server closing an idle
    /// connection (RFC 5321 3.8).
    Unsolicited(Reply),
    /// Early pipelining met a surprise (see [`Early`]); nothing was sent
    /// that the server could have taken as a message.
    EarlyPipelining(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A line that is not a reply line; its start, made safe.
    BadReply(String),
    /// A reply line over [`MAX_LINE`] bytes.
    LineTooLong,
    /// A reply over [`MAX_REPLY`] bytes.
    ReplyTooLong,
    /// The lines of a multi-line reply disagree on the code.
    MixedCodes,
    /// A reply of a class the command cannot get.
    UnexpectedReply { command: Command, reply: Reply },
    /// Bytes after the server's yes to STARTTLS and before TLS: a
    /// response injection attempt (the client side of CVE-2011-0411).
    StartTlsInjection,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// After [`Client::quit`]: the server answered the QUIT, or the
    /// connection ended after it was sent.
    Quit,
    /// The server refused to go on: a banner other than 2xx, EHLO 4xx,
    /// HELO 4xx/5xx, STARTTLS refused under `Required`, a refused RSET, or
    /// a 421 to any command. See [`End::is_permanent`].
    Refused {
        command: Command,
        reply: Reply,
    },
    /// `Required`, and the server does not offer STARTTLS.
    TlsNotOffered,
    Error(ConnectionError),
}

impl End {
    /// A 5xx greeting or a 5xx to HELO (after a 5xx to EHLO): the server
    /// will never take mail from us, so the messages queued for it fail
    /// (the driver may still try another MX first). Everything else is
    /// temporary.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            End::Refused { command: Command::Greeting | Command::Helo, reply } if reply.is_permanent()
        )
    }
}

/// What a reply answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The banner, which answers the connection.
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt,
    /// The DATA command (354 expected).
    Data,
    /// The final "." of DATA.
    EndOfData,
    /// A BDAT chunk other than the last.
    Bdat,
    BdatLast,
    Rset,
    Quit,
}

impl fmt::Display for Command {
    /// In the words of Postfix's "(in reply to ... command)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Greeting => "initial greeting",
            Command::Ehlo => "EHLO",
            Command::Helo => "HELO",
            Command::StartTls => "STARTTLS",
            Command::Mail => "MAIL FROM",
            Command::Rcpt => "RCPT TO",
            Command::Data => "DATA",
            Command::EndOfData => "end of DATA",
            Command::Bdat => "BDAT",
            Command::BdatLast => "BDAT LAST",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
        })
    }
}

/// What the engine is waiting for, so the driver can apply the timeout
/// (RFC 5321 4.5.3.2, see [`Wait::timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    Greeting,
    /// The reply to EHLO or HELO.
    Hello,
    StartTls,
    /// The driver's TLS handshake.
    Tls,
    /// Nothing outstanding: ready for a message, or for the driver's
    /// decision after a refused STARTTLS.
    Idle,
    Rset,
    Mail,
    Rcpt,
    /// The reply to DATA.
    DataInit,
    /// Sending content: each write of it, or the driver's next chunk, or
    /// the reply to a BDAT that is not the last.
    DataBlock,
    /// The reply to the end of the content (the final dot or BDAT LAST).
    DataEnd,
    Quit,
    Closed,
}

impl Wait {
    /// RFC 5321 4.5.3.2's minimum timeouts, and 5 minutes for the commands
    /// it does not name (Postfix's choice for EHLO, STARTTLS, RSET, QUIT);
    /// None where the driver's own policy applies (the handshake, idle
    /// connections, a closed one).
    pub fn timeout(self) -> Option<Duration> {
        let minutes = match self {
            Wait::Greeting | Wait::Hello | Wait::StartTls | Wait::Rset => 5,
            Wait::Mail | Wait::Rcpt | Wait::Quit => 5,
            Wait::DataInit => 2,
            Wait::DataBlock => 3,
            Wait::DataEnd => 10,
            Wait::Tls | Wait::Idle | Wait::Closed => return None,
        };
        Some(Duration::from_secs(minutes * 60))
    }
}

impl fmt::Display for Failure {
    /// For a log line or a bounce, e.g. `550 5.1.1 No such user (in reply
    /// to RCPT TO command)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Reply { command, reply } => {
                write!(f, "{reply} (in reply to {command} command)")
            }
            Failure::Refused(refusal) => refusal.fmt(f),
            Failure::Connection(error) => error.fmt(f),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooBig { size, limit } => write!(
                f,
                "message size {size} exceeds the size limit {limit} of the server"
            ),
            Refusal::NeedsSmtputf8 => {
                f.write_str("the message needs SMTPUTF8, which the server does not offer")
            }
            Refusal::BadAddress(address) => write!(f, "invalid address {address:?}"),
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Lost(wait) => write!(f, "connection lost ({})", wait.describe()),
            ConnectionError::TimedOut(wait) => write!(f, "timed out ({})", wait.describe()),
            ConnectionError::Protocol(error) => write!(f, "protocol error: {error}"),
            ConnectionError::Unsolicited(reply) => write!(f, "unsolicited reply: {reply}"),
            ConnectionError::EarlyPipelining(why) => write!(f, "early pipelining: {why}"),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadReply(line) => write!(f, "malformed reply {line:?}"),
            ProtocolError::LineTooLong => write!(f, "reply line over {MAX_LINE} bytes"),
            ProtocolError::ReplyTooLong => write!(f, "reply over {MAX_REPLY} bytes"),
            ProtocolError::MixedCodes => f.write_str("multi-line reply with different codes"),
            ProtocolError::UnexpectedReply { command, reply } => {
                write!(f, "unexpected reply to {command}: {reply}")
            }
            ProtocolError::StartTlsInjection => {
                f.write_str("plaintext after the reply to STARTTLS (response injection)")
            }
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Quit => f.write_str("QUIT"),
            End::Refused { command, reply } => {
                write!(f, "{reply} (in reply to {command} command)")
            }
            End::TlsNotOffered => f.write_str("TLS is required, but STARTTLS is not offered"),
            End::Error(error) => error.fmt(f),
        }
    }
}

impl Wait {
    fn describe(self) -> &'static str {
        match self {
            Wait::Greeting => "waiting for the greeting",
            Wait::Hello => "waiting for the reply to EHLO/HELO",
            Wait::StartTls => "waiting for the reply to STARTTLS",
            Wait::Tls => "during the TLS handshake",
            Wait::Idle => "while idle",
            Wait::Rset => "waiting for the reply to RSET",
            Wait::Mail => "waiting for the reply to MAIL FROM",
            Wait::Rcpt => "waiting for the reply to RCPT TO",
            Wait::DataInit => "waiting for the reply to DATA",
            Wait::DataBlock => "while sending message content",
            Wait::DataEnd => "waiting for the reply to the end of the message",
            Wait::Quit => "waiting for the reply to QUIT",
            Wait::Closed => "after the connection closed",
        }
    }
}
