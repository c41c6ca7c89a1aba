//! Splits command input into lines with bounded memory.

use std::borrow::Cow;

/// Command line limit including the line terminator (RFC 5321 4.5.3.1.4 asks for
/// at least 512; larger leaves room for ESMTP parameters).
pub(super) const MAX_LINE: usize = 2048;

pub(super) enum Event<'a> {
    /// A complete line without its LF and without one trailing CR.
    Line(Cow<'a, [u8]>),
    /// The line exceeds MAX_LINE; reported once, the rest of it is skipped.
    TooLong,
    /// The input was kept (or skipped) and no line is complete yet.
    Pending,
}

/// Holds the unterminated tail of a line across receive() calls, never more than MAX_LINE bytes.
#[derive(Default)]
pub(super) struct LineReader {
    partial: Vec<u8>,
    skipping: bool,
}

impl LineReader {
    /// Returns how many input bytes were used and what they completed.
    pub fn read<'a>(&mut self, input: &'a [u8]) -> (usize, Event<'a>) {
        let newline = input.iter().position(|&b| b == b'\n');
        if self.skipping {
            self.skipping = newline.is_none();
            return (newline.map_or(input.len(), |pos| pos + 1), Event::Pending);
        }
        match newline {
            Some(pos) => (pos + 1, self.complete(input.get(..pos).unwrap_or_default())),
            None => (input.len(), self.keep(input)),
        }
    }

    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Part of a command line has arrived and its end has not.
    pub fn in_line(&self) -> bool {
        !self.partial.is_empty() || self.skipping
    }

    pub fn clear(&mut self) {
        self.partial = Vec::new();
        self.skipping = false;
    }

    fn complete<'a>(&mut self, head: &'a [u8]) -> Event<'a> {
        // A line of MAX_LINE bytes before the LF is MAX_LINE + 1 with it.
        if self.partial.len() + head.len() >= MAX_LINE {
            self.partial.clear();
            return Event::TooLong;
        }
        let line = if self.partial.is_empty() {
            Cow::Borrowed(head)
        } else {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(head);
            Cow::Owned(line)
        };
        Event::Line(strip_cr(line))
    }

    fn keep(&mut self, input: &[u8]) -> Event<'static> {
        if self.partial.len() + input.len() >= MAX_LINE {
            self.partial.clear();
            self.skipping = true;
            return Event::TooLong;
        }
        self.partial.extend_from_slice(input);
        Event::Pending
    }
}

fn strip_cr(line: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    match line {
        Cow::Borrowed(bytes) => Cow::Borrowed(bytes.strip_suffix(b"\r").unwrap_or(bytes)),
        Cow::Owned(mut bytes) => {
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            Cow::Owned(bytes)
        }
    }
}
