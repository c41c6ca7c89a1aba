//! Bytes for the server that the driver has not written yet.

#[derive(Default)]
pub(super) struct Output {
    buf: Vec<u8>,
    written: usize,
}

impl Output {
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.written..).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.written
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn consume(&mut self, n: usize) {
        self.written = self.written.saturating_add(n).min(self.buf.len());
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        } else if self.written > self.buf.len() / 2 {
            // Amortised compaction keeps consume O(1) per byte without growing forever.
            self.buf.drain(..self.written);
            self.written = 0;
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.written = 0;
    }

    /// A command line; `line` is without its CRLF.
    pub fn command(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The buffer itself, to append content to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}
