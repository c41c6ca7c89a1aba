//! Message content on its way out: line ends made CRLF, dots stuffed for
//! DATA (RFC 5321 4.5.2), and a last line completed, in a streaming encoder
//! with O(1) state so the driver's chunks may split the content anywhere.
//!
//! Content comes in wire form (CRLF line ends). Should a bare CR or bare LF
//! be in it anyway, it becomes CRLF, in BDAT as in DATA: then no receiver,
//! whichever line ends it accepts, can see the end of DATA anywhere but at
//! the real end (the SMTP smuggling class), and DATA and BDAT deliver the
//! same bytes. A last line without its line end gets CRLF, as Postfix does:
//! DATA needs it before the final dot anyway. Empty content stays empty.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// At the start of the content or after CRLF.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR whose LF has not been written.
    Cr,
}

#[derive(Debug)]
pub(super) struct Encoder {
    position: Position,
    /// DATA: a dot that starts a line is doubled.
    stuff_dots: bool,
}

impl Encoder {
    pub fn new(stuff_dots: bool) -> Encoder {
        Encoder {
            position: Position::LineStart,
            stuff_dots,
        }
    }

    /// Appends the encoding of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64);
        let mut i = 0;
        while let Some(&byte) = input.get(i) {
            match (self.position, byte) {
                (Position::Cr, b'\n') => {
                    out.push(b'\n');
                    self.position = Position::LineStart;
                    i += 1;
                    continue;
                }
                (Position::Cr, _) => {
                    // A bare CR: complete it, then look at this byte again.
                    out.push(b'\n');
                    self.position = Position::LineStart;
                    continue;
                }
                (_, b'\r') => {
                    out.push(b'\r');
                    self.position = Position::Cr;
                    i += 1;
                    continue;
                }
                (_, b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    self.position = Position::LineStart;
                    i += 1;
                    continue;
                }
                (Position::LineStart, b'.') if self.stuff_dots => out.push(b'.'),
                _ => {}
            }
            // Text up to the next CR or LF goes out as it is.
            let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
            out.extend_from_slice(&input[i..i + run]);
            self.position = Position::Text;
            i += run;
        }
    }

    /// Completes the last line; the content ends in CRLF unless it is empty.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.position {
            Position::LineStart => {}
            Position::Text => out.extend_from_slice(b"\r\n"),
            Position::Cr => out.push(b'\n'),
        }
        self.position = Position::LineStart;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pieces: &[&[u8]], stuff_dots: bool) -> Vec<u8> {
        let mut encoder = Encoder::new(stuff_dots);
        let mut out = Vec::new();
        for piece in pieces {
            encoder.encode(piece, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    /// Every way of cutting the input in two gives the same result.
    fn check(input: &[u8], stuff_dots: bool, expected: &[u8]) {
        assert_eq!(encode(&[input], stuff_dots), expected, "{input:?}");
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(encode(&[a, b], stuff_dots), expected, "{input:?} at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(encode(&bytes, stuff_dots), expected, "{input:?} bytewise");
    }

    #[test]
    fn well_formed_content_is_unchanged_but_for_dots() {
        check(
            b"Subject: x\r\n\r\nbody\r\n",
            true,
            b"Subject: x\r\n\r\nbody\r\n",
        );
        check(
            b".\r\n..\r\n.x\r\nx.\r\n",
            true,
            b"..\r\n...\r\n..x\r\nx.\r\n",
        );
        check(
            b".\r\n..\r\n.x\r\nx.\r\n",
            false,
            b".\r\n..\r\n.x\r\nx.\r\n",
        );
        check(b"", true, b"");
        check(b"\r\n", true, b"\r\n");
    }

    #[test]
    fn last_line_is_completed() {
        check(b"no end", true, b"no end\r\n");
        check(b".", true, b"..\r\n");
        check(b"a\r\n.", false, b"a\r\n.\r\n");
        check(b"cr at end\r", true, b"cr at end\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf() {
        check(b"a\nb\rc\r\n", true, b"a\r\nb\r\nc\r\n");
        // The smuggling sequences: no lone "." line can appear but at the end.
        check(b"a\n.\nb", true, b"a\r\n..\r\nb\r\n");
        check(b"a\r.\rb", true, b"a\r\n..\r\nb\r\n");
        check(b"a\r\n.\nb", true, b"a\r\n..\r\nb\r\n");
        check(b"\r\r\n\n", false, b"\r\n\r\n\r\n");
        check(b"\n.", true, b"\r\n..\r\n");
    }
}
