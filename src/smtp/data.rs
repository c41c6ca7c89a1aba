//! Message content decoding: the DATA terminator and dot-unstuffing (RFC 5321
//! 4.5.2), and bare CR / LF detection (RFC 5321 2.3.8) for DATA and BDAT.
//!
//! Only CRLF "." CRLF ends DATA. Treating any other line ending as one is what
//! SMTP smuggling exploits: a receiver that ends the message earlier than the
//! sending relay did sees the rest as new commands.

use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After CRLF, or at the very start of the content.
    LineStart,
    /// After a "." that began a line; the dot is never content.
    Dot,
    /// After "." CR at the start of a line: LF now ends the data.
    DotCr,
    Text,
    /// After a CR inside a line.
    Cr,
}

/// What one byte is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Content,
    /// Not content (a stuffing dot or part of the terminator).
    Skipped,
    End,
}

/// One piece of decoded input.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Step {
    /// Input bytes consumed.
    pub used: usize,
    /// Content as a range of the input; runs break only where a dot was removed.
    pub content: Range<usize>,
    /// The terminator was consumed.
    pub end: bool,
}

/// Streaming DATA decoder with O(1) state, so the terminator may be split across reads.
#[derive(Debug)]
pub(super) struct DotDecoder {
    state: State,
    bare: bool,
}

impl DotDecoder {
    pub fn new() -> DotDecoder {
        DotDecoder {
            state: State::LineStart,
            bare: false,
        }
    }

    /// A bare CR or LF was seen; the content must be refused. Once set, the
    /// content bytes reported are no longer exact (a held-back CR is dropped),
    /// which does not matter because that content is discarded.
    pub fn bare_eol(&self) -> bool {
        self.bare
    }

    /// Decodes until the end of data, a removed dot, the first bare CR or
    /// LF (included), or the end of the input.
    pub fn step(&mut self, input: &[u8]) -> Step {
        let mut start = 0;
        let mut i = 0;
        while let Some(&byte) = input.get(i) {
            if self.state == State::Text && byte != b'\r' && byte != b'\n' {
                // Mid-line text is content up to the next CR or LF: skip
                // to it instead of stepping through every byte.
                match memchr::memchr2(b'\r', b'\n', &input[i + 1..]) {
                    Some(offset) => i += 1 + offset,
                    None => break,
                }
                continue;
            }
            let was_bare = self.bare;
            match self.advance(byte) {
                // The content before the first bare line end is handled
                // (and counted against the size limit) before it, wherever
                // the reads split the input: so the same refusal wins.
                Role::Content if self.bare && !was_bare => return run(start..i + 1, i + 1, false),
                Role::Content => {}
                Role::Skipped if i > start => return run(start..i, i + 1, false),
                Role::Skipped => start = i + 1,
                Role::End => return run(start..i, i + 1, true),
            }
            i += 1;
        }
        run(start..input.len(), input.len(), false)
    }

    fn advance(&mut self, byte: u8) -> Role {
        let (state, role) = match (self.state, byte) {
            (State::LineStart, b'.') => (State::Dot, Role::Skipped),
            (State::Dot, b'\r') => (State::DotCr, Role::Skipped),
            (State::DotCr, b'\n') => (State::LineStart, Role::End),
            (State::Cr, b'\n') => (State::LineStart, Role::Content),
            (State::DotCr | State::Cr, _) => {
                // The CR before this byte is not followed by LF.
                self.bare = true;
                return self.plain(byte);
            }
            _ => return self.plain(byte),
        };
        self.state = state;
        role
    }

    /// A byte that is content and is not preceded by a pending CR.
    fn plain(&mut self, byte: u8) -> Role {
        self.state = match byte {
            b'\r' => State::Cr,
            b'\n' => {
                self.bare = true;
                State::Text
            }
            _ => State::Text,
        };
        Role::Content
    }
}

fn run(content: Range<usize>, used: usize, end: bool) -> Step {
    Step { used, content, end }
}

/// Bare CR / LF detection for BDAT content, where chunks may split a CRLF.
#[derive(Debug, Default)]
pub(super) struct BareEol {
    after_cr: bool,
    bare: bool,
}

impl BareEol {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            // An LF must follow a CR, and a CR must be followed by an LF.
            if self.after_cr != (byte == b'\n') {
                self.bare = true;
            }
            self.after_cr = byte == b'\r';
        }
    }

    /// Whether the content seen so far is refused; at the end of content a trailing CR is bare too.
    pub fn found(&self, at_end: bool) -> bool {
        self.bare || (at_end && self.after_cr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns content, end seen, bare flag, bytes used.
    fn decode(input: &[u8], piece: usize) -> (Vec<u8>, bool, bool, usize) {
        let mut decoder = DotDecoder::new();
        let mut content = Vec::new();
        let mut used_total = 0;
        for chunk in input.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let step = decoder.step(rest);
                content.extend_from_slice(&rest[step.content.clone()]);
                used_total += step.used;
                rest = &rest[step.used..];
                if step.end {
                    return (content, true, decoder.bare_eol(), used_total);
                }
            }
        }
        (content, false, decoder.bare_eol(), used_total)
    }

    #[test]
    fn terminator_and_unstuffing() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b".\r\n", b"", false),
            (b"a\r\n.\r\n", b"a\r\n", false),
            (b"..\r\n.\r\n", b".\r\n", false),
            (b"..x\r\n.y\r\n.\r\n", b".x\r\ny\r\n", false),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", false),
            (b"a.b\r\n.\r\n", b"a.b\r\n", false),
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", true),
            (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", true),
        ];
        for &(input, content, bare) in cases {
            for piece in 1..=input.len() {
                let got = decode(input, piece);
                assert_eq!(
                    got,
                    (content.to_vec(), true, bare, input.len()),
                    "{input:?} {piece}"
                );
            }
        }
    }

    #[test]
    fn no_false_terminators() {
        let fakes: &[&[u8]] = &[
            b"a\n.\nb",
            b"a\n.\rb",
            b"a\r.\nb",
            b"a\r.\rb",
            b"a\n.\r\nb",
            b"a\r.\r\nb",
            b"a\r\n.\nb",
            b"a\r\n\x00.\r\nb",
            b"a\r\n.\r\r\nb",
            b"a\r\n .\r\nb",
        ];
        for fake in fakes {
            for piece in 1..=fake.len() {
                let (_, end, _, used) = decode(fake, piece);
                assert!(!end, "{fake:?} ended the data");
                assert_eq!(used, fake.len());
            }
        }
    }

    #[test]
    fn runs_are_large() {
        let mut decoder = DotDecoder::new();
        let input = b"line one\r\nline two\r\n";
        assert_eq!(
            decoder.step(input),
            Step {
                used: input.len(),
                content: 0..input.len(),
                end: false
            }
        );
    }

    #[test]
    fn bare_eol_across_chunks() {
        let mut eol = BareEol::default();
        eol.feed(b"a\r");
        assert!(!eol.found(false));
        assert!(eol.found(true));
        eol.feed(b"\nb\r\n");
        assert!(!eol.found(true));
        eol.feed(b"\n");
        assert!(eol.found(false));
        let mut eol = BareEol::default();
        eol.feed(b"a\rb");
        assert!(eol.found(false));
    }
}
