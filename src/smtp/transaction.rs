//! MAIL and RCPT: building the envelope of a mail transaction.

use super::address::{self, PathError};
use super::data::BareEol;
use super::params;
use super::reply::{self, Reply};
use super::session::Smtp;
use super::{Envelope, Recipient};

/// A mail transaction, from an accepted MAIL to the end of its content or a reset.
pub(super) struct Transaction {
    pub envelope: Envelope,
    /// Content bytes accepted so far.
    pub size: u64,
    /// Set once the content is refused; the first reason wins.
    pub failure: Option<Failure>,
    /// Bare CR / LF detection across BDAT chunks.
    pub eol: BareEol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    TooBig,
    BareEol,
    Storage,
}

impl Failure {
    pub fn reply(self) -> Reply {
        match self {
            Failure::TooBig => reply::TOO_BIG,
            Failure::BareEol => reply::BARE_EOL,
            Failure::Storage => reply::STORAGE,
        }
    }
}

impl Smtp {
    pub(super) fn mail(&mut self, arg: &str) {
        let reply = match self.start_transaction(arg) {
            Ok(()) => reply::MAIL_OK,
            Err(refusal) => refusal,
        };
        self.reply(&reply);
    }

    pub(super) fn rcpt(&mut self, arg: &str) {
        let reply = match self.add_recipient(arg) {
            Ok(()) => reply::RCPT_OK,
            Err(refusal) => refusal,
        };
        self.reply(&reply);
    }

    fn start_transaction(&mut self, arg: &str) -> Result<(), Reply> {
        let helo = self.helo.as_ref().ok_or(reply::NEED_HELO)?;
        if self.txn.is_some() {
            return Err(reply::NESTED_MAIL);
        }
        let (path, params) = address::split_path(arg).map_err(|_| reply::MAIL_SYNTAX)?;
        if !helo.esmtp && !params.is_empty() {
            return Err(reply::UNKNOWN_PARAM);
        }
        let params = params::mail_params(params)?;
        let sender = sender(path, params.smtputf8)?;
        if params.size > Some(self.config.max_message_size) {
            return Err(reply::TOO_BIG);
        }
        let envelope = Envelope {
            helo: helo.name.clone(),
            esmtp: helo.esmtp,
            peer: self.conn.peer,
            tls: self.conn.tls.clone(),
            sender,
            recipients: Vec::new(),
            body: params.body,
            smtputf8: params.smtputf8,
            chunking: false,
            early_pipelining: (self.conn.pipe_connect && helo.esmtp)
                .then_some(self.early_pipelining),
        };
        self.txn = Some(Transaction {
            envelope,
            size: 0,
            failure: None,
            eol: BareEol::default(),
        });
        Ok(())
    }

    fn add_recipient(&mut self, arg: &str) -> Result<(), Reply> {
        let utf8 = match &self.txn {
            // The sink took the recipients when the first chunk began the
            // message (RFC 3030: all RCPTs come before the first BDAT).
            Some(txn) if txn.envelope.chunking => return Err(reply::RCPT_AFTER_BDAT),
            Some(txn) => txn.envelope.smtputf8,
            None => return Err(reply::NEED_MAIL),
        };
        let (path, params) = address::split_path(arg).map_err(|_| reply::RCPT_SYNTAX)?;
        if !params.is_empty() {
            return Err(reply::UNKNOWN_PARAM);
        }
        let recipient = self.recipient(path, utf8)?;
        let max = self.config.max_recipients;
        let Some(txn) = self.txn.as_mut() else {
            return Err(reply::NEED_MAIL);
        };
        let recipients = &mut txn.envelope.recipients;
        // A repeated recipient would be delivered twice; accept it silently instead.
        if !recipients.contains(&recipient) {
            if recipients.len() >= max {
                return Err(reply::TOO_MANY_RECIPIENTS);
            }
            log::debug!(
                "{}: recipient {}@{}",
                self.conn.peer,
                recipient.local,
                recipient.domain
            );
            recipients.push(recipient);
        }
        Ok(())
    }

    fn recipient(&self, path: &str, utf8: bool) -> Result<Recipient, Reply> {
        // RFC 5321 4.5.1: "<Postmaster>" without a domain must be accepted.
        if path.eq_ignore_ascii_case("postmaster") {
            return self.postmaster();
        }
        let mailbox = address::parse_mailbox(path, utf8).map_err(|error| match error {
            PathError::NeedUtf8 => reply::NEED_SMTPUTF8,
            PathError::Syntax | PathError::Mailbox => reply::BAD_RECIPIENT,
        })?;
        let domain = mailbox.domain.to_ascii_lowercase();
        let ours = !mailbox.literal && self.config.domains.contains(&domain);
        if !ours && !self.conn.relay {
            return Err(reply::RELAY_DENIED);
        }
        // A local-part becomes a directory name; one sent onward only has
        // to be a valid address, which parse_mailbox checked.
        if ours && !address::safe_local_part(&mailbox.local) {
            return Err(reply::BAD_RECIPIENT);
        }
        Ok(Recipient {
            local: mailbox.local,
            domain,
            relay: !ours,
        })
    }

    fn postmaster(&self) -> Result<Recipient, Reply> {
        let domain = self.config.domains.first().ok_or(reply::RELAY_DENIED)?;
        Ok(Recipient {
            local: "postmaster".to_owned(),
            domain: domain.clone(),
            relay: false,
        })
    }
}

fn sender(path: &str, utf8: bool) -> Result<String, Reply> {
    if path.is_empty() {
        return Ok(String::new());
    }
    match address::parse_mailbox(path, utf8) {
        Ok(mailbox) => Ok(mailbox.text.to_owned()),
        Err(PathError::NeedUtf8) => Err(reply::NEED_SMTPUTF8),
        Err(PathError::Syntax | PathError::Mailbox) => Err(reply::BAD_SENDER),
    }
}
