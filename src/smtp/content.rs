//! Message content: DATA and BDAT, streaming into the sink.

use std::mem;

use super::data::{DotDecoder, Step};
use super::params;
use super::reply::{self, Reply};
use super::session::{Mode, Smtp};
use super::transaction::{Failure, Transaction};
use super::{Commit, MessageSink, Next, SinkError};

/// A BDAT chunk whose bytes are still arriving.
pub(super) struct Chunk {
    remaining: u64,
    size: u64,
    last: bool,
    /// The reply for a refused BDAT, sent once its bytes have been skipped.
    refusal: Option<Reply>,
}

/// The part of a chunk present in one input batch.
#[derive(Clone, Copy)]
pub(super) struct ChunkPart {
    pub len: usize,
    refused: bool,
    done: bool,
}

impl Chunk {
    pub fn take(&mut self, available: usize) -> ChunkPart {
        let len = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
        self.remaining = self.remaining.saturating_sub(len as u64);
        ChunkPart {
            len,
            refused: self.refusal.is_some(),
            done: self.remaining == 0,
        }
    }
}

impl Smtp {
    /// `more`: the client sent input after DATA without waiting for 354.
    pub(super) fn data(&mut self, arg: &str, more: bool, sink: &mut dyn MessageSink) -> Next {
        if let Some(refusal) = self.data_refusal(arg) {
            self.reply(&refusal);
            return Next::Continue;
        }
        if more {
            // RFC 2920 3.1: DATA ends a pipelined group. What follows was sent
            // blind and must not become content (nor commands).
            log::warn!("{}: input after DATA before the 354 reply", self.conn.peer);
            self.reply(&reply::SYNC_ERROR);
            return Next::Close;
        }
        self.begin_message(sink);
        self.reply(&reply::START_DATA);
        self.mode = Mode::Data(DotDecoder::new());
        Next::Continue
    }

    pub(super) fn data_input(
        &mut self,
        input: &[u8],
        step: Step,
        bare: bool,
        sink: &mut dyn MessageSink,
    ) {
        // The run ends at the first bare line end: what precedes it comes first.
        self.write_content(input.get(step.content).unwrap_or_default(), sink);
        if bare {
            self.fail(Failure::BareEol, sink);
        }
        if step.end {
            self.finish_message(sink);
        }
    }

    pub(super) fn bdat(&mut self, arg: &str, sink: &mut dyn MessageSink) {
        let Some((size, last)) = bdat_args(arg) else {
            return self.reply(&reply::BDAT_SYNTAX);
        };
        let refusal = self.chunk_refusal(size, sink);
        self.mode = Mode::Chunk(Chunk {
            remaining: size,
            size,
            last,
            refusal,
        });
        if size == 0 {
            self.finish_chunk(sink);
        }
    }

    pub(super) fn chunk_input(
        &mut self,
        bytes: &[u8],
        part: ChunkPart,
        sink: &mut dyn MessageSink,
    ) {
        if !part.refused {
            if let Some(txn) = self.txn.as_mut() {
                txn.eol.feed(bytes);
            }
            if self.txn.as_ref().is_some_and(|txn| txn.eol.found(false)) {
                self.fail(Failure::BareEol, sink);
            }
            self.write_content(bytes, sink);
        }
        if part.done {
            self.finish_chunk(sink);
        }
    }

    fn data_refusal(&self, arg: &str) -> Option<Reply> {
        let Some(txn) = &self.txn else {
            return Some(reply::NEED_MAIL);
        };
        if txn.envelope.recipients.is_empty() {
            Some(reply::NO_RECIPIENTS)
        } else if txn.envelope.chunking {
            Some(reply::DATA_AFTER_BDAT)
        } else if !arg.is_empty() {
            Some(reply::NO_ARGUMENTS)
        } else {
            None
        }
    }

    /// Checks a BDAT before its bytes arrive. A refusal is replied to only
    /// after the bytes, which RFC 3030 requires the server to consume anyway.
    fn chunk_refusal(&mut self, size: u64, sink: &mut dyn MessageSink) -> Option<Reply> {
        let max = self.config.max_message_size;
        let Some(txn) = self.txn.as_mut() else {
            return Some(reply::NEED_MAIL);
        };
        if txn.envelope.recipients.is_empty() {
            return Some(reply::NO_RECIPIENTS);
        }
        let first = !txn.envelope.chunking;
        txn.envelope.chunking = true;
        if txn.size.checked_add(size).is_none_or(|total| total > max) {
            self.fail(Failure::TooBig, sink);
        } else if first {
            self.begin_message(sink);
        }
        None
    }

    fn finish_chunk(&mut self, sink: &mut dyn MessageSink) {
        let Mode::Chunk(chunk) = mem::replace(&mut self.mode, Mode::Command) else {
            return;
        };
        if let Some(refusal) = chunk.refusal {
            return self.reply(&refusal);
        }
        let failure = self.txn.as_ref().and_then(|txn| txn.failure);
        if chunk.last {
            if self.txn.as_ref().is_some_and(|txn| txn.eol.found(true)) {
                self.fail(Failure::BareEol, sink);
            }
            self.finish_message(sink);
        } else if matches!(failure, Some(Failure::TooBig | Failure::Storage)) {
            // The transaction cannot succeed; RFC 3030 has the client stop sending chunks.
            self.finish_message(sink);
        } else {
            let text = format!("2.0.0 {} octets received", chunk.size);
            self.final_reply(&Reply::owned(250, text));
        }
    }

    fn begin_message(&mut self, sink: &mut dyn MessageSink) {
        self.abort_message(sink);
        let Some(txn) = &self.txn else {
            return;
        };
        let result = sink.begin(&txn.envelope);
        // Abort even after a failed begin, so the sink can drop partial state.
        self.sink_open = true;
        if let Err(error) = result {
            log::warn!("{}: sink begin failed: {}", self.conn.peer, error.0);
            self.fail(Failure::Storage, sink);
        }
    }

    fn write_content(&mut self, content: &[u8], sink: &mut dyn MessageSink) {
        let max = self.config.max_message_size;
        let peer = self.conn.peer;
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if content.is_empty() || txn.failure.is_some() {
            return;
        }
        txn.size = txn.size.saturating_add(content.len() as u64);
        let failure = if txn.size > max {
            Some(Failure::TooBig)
        } else if let Err(error) = sink.write(content) {
            log::warn!("{peer}: sink write failed: {}", error.0);
            Some(Failure::Storage)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.fail(failure, sink);
        }
    }

    /// Refuses the content: the sink's copy goes at once, the reply waits for the end.
    fn fail(&mut self, failure: Failure, sink: &mut dyn MessageSink) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        if txn.failure.is_none() {
            txn.failure = Some(failure);
            log::info!("{}: message refused: {failure:?}", self.conn.peer);
            self.abort_message(sink);
        }
    }

    /// Ends the transaction after its content, with the final reply (which
    /// waits for `commit_finished` when the sink queues the message).
    pub(super) fn finish_message(&mut self, sink: &mut dyn MessageSink) {
        self.mode = Mode::Command;
        let Some(txn) = self.txn.take() else {
            return;
        };
        if let Some(failure) = txn.failure {
            self.abort_message(sink);
            return self.final_reply(&failure.reply());
        }
        self.sink_open = false;
        let outcome = match sink.commit(&txn.envelope, txn.size) {
            Ok(Commit::Queued) => {
                self.awaiting_commit = Some(txn);
                return;
            }
            Ok(Commit::Done(id)) => Ok(id),
            Err(error) => {
                sink.abort();
                Err(error)
            }
        };
        let reply = self.commit_reply(&txn, outcome);
        self.final_reply(&reply);
    }

    /// 250 with the message's id once it is durable, 452 if it could not be.
    pub(super) fn commit_reply(
        &mut self,
        txn: &Transaction,
        outcome: Result<String, SinkError>,
    ) -> Reply {
        let envelope = &txn.envelope;
        match outcome {
            Ok(id) => {
                // The server logs the Exim-style `<=` line for it at info.
                log::debug!(
                    "{}: accepted id={id} helo={} from=<{}> rcpts={} size={} body={:?} with={} chunking={}",
                    envelope.peer,
                    envelope.helo,
                    envelope.sender,
                    envelope.recipients.len(),
                    txn.size,
                    envelope.body,
                    envelope.protocol(),
                    envelope.chunking
                );
                // The id comes from the sink, but a stray CR or LF would still forge reply lines.
                let id: String = id.chars().filter(|c| !c.is_control()).collect();
                Reply::owned(250, format!("2.0.0 OK id={id}"))
            }
            Err(error) => {
                log::warn!("{}: sink commit failed: {}", self.conn.peer, error.0);
                reply::STORAGE
            }
        }
    }
}

/// "size [LAST]"; the size has at most 20 digits and fits in u64.
fn bdat_args(arg: &str) -> Option<(u64, bool)> {
    let mut words = arg.split(' ').filter(|word| !word.is_empty());
    let size = params::decimal(words.next()?)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}
