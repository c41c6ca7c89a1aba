//! Sans-I/O peek at the TLS ClientHello sitting in the receive buffer.
//!
//! Before handing the connection to the TLS library the server wants to know which
//! session-ticket key the client's ticket was sealed with (so it can pick or refresh the
//! right key) and whether the client wants tickets at all. The TLS library does not expose
//! that before the handshake, so we read it from the raw records ourselves.
//!
//! The parser is deliberately all-or-nothing: it looks only at complete length-delimited
//! structures, so a prefix of a valid ClientHello is always `Incomplete`, and anything it
//! cannot read is `NotClientHello`, in which case the caller simply starts the handshake and
//! lets the TLS library produce the proper alert. It never panics and allocates at most one
//! buffer of `MAX_HELLO` bytes, and only when the hello is split across records.

use std::borrow::Cow;

/// Length of the key name GnuTLS (and OpenSSL) put at the start of their tickets.
pub const KEY_NAME_LEN: usize = 16;

/// Largest handshake message (4-byte header included) we are willing to reassemble.
/// Real ClientHellos are a few hundred bytes (a few KiB with post-quantum key shares);
/// this bounds the memory an unauthenticated peer can make us hold.
pub const MAX_HELLO: usize = 64 * 1024;

/// What the server needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// First 16 bytes of the ticket the client offers: the TLS 1.2 `session_ticket`
    /// extension (type 35) when non-empty, else the first identity of the TLS 1.3
    /// `pre_shared_key` extension (type 41). GnuTLS puts its key name there.
    /// None when no ticket/identity is offered or it is shorter than 16 bytes.
    pub ticket_key_name: Option<[u8; KEY_NAME_LEN]>,
    /// The client asked for tickets: `session_ticket` extension present (empty or not) or
    /// `psk_key_exchange_modes` (type 45) present.
    pub requests_ticket: bool,
    /// The client offers to resume: non-empty session_ticket, or a pre_shared_key extension
    /// with ≥1 identity.
    pub offers_ticket: bool,
    /// The offered ticket is a TLS 1.2 one: a non-empty `session_ticket` extension.
    pub offers_tls12_ticket: bool,
    /// The legacy session_id (0 to 32 bytes): a TLS 1.2 client that wants
    /// to resume by session ID names its session here; TLS 1.3 clients
    /// send random bytes for middlebox compatibility.
    pub session_id: Vec<u8>,
    /// supported_versions (43) lists TLS 1.3 (0x0304).
    pub offers_tls13: bool,
    /// early_data extension (42) present (the server never accepts 0-RTT, but logs it).
    pub early_data: bool,
}

/// Outcome of looking at the buffered bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed to see the whole ClientHello.
    Incomplete,
    Complete(Hello),
    /// Not a ClientHello we can read (not TLS, SSLv2, wrong message type, malformed): the
    /// caller just starts the handshake and lets the TLS library produce the proper alert.
    NotClientHello,
}

const CONTENT_HANDSHAKE: u8 = 22;
const RECORD_HEADER_LEN: usize = 5;
/// The brief's limit (RFC 8446 allows 2^14 for plaintext, 2^14+256 for ciphertext); being a
/// little lenient costs nothing since the TLS library enforces the exact rule.
const MAX_RECORD_LEN: usize = (1 << 14) + 256;
/// Most records a ClientHello may be split into. Legal TLS allows one byte per record,
/// but the caller re-parses after every read, and each parse walks every record header, so
/// a peer trickling tiny records could make the total work quadratic. Real clients use one
/// record, or a handful for very large hellos (4 suffice for `MAX_HELLO`). Beyond this we
/// answer `NotClientHello`, which only costs that client the ticket-key lookup.
const MAX_RECORDS: usize = 256;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;
/// `PskBinderEntry<32..255>` inside `binders<33..2^16-1>`.
const MIN_BINDERS_LEN: usize = 33;
/// `opaque identity<1..2^16-1>` is followed by this `uint32 obfuscated_ticket_age`.
const TICKET_AGE_LEN: usize = 4;

const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const TLS13: [u8; 2] = [0x03, 0x04];

/// Looks at everything received since TLS started (`buffered` begins with a TLS record
/// header) and says whether it holds a complete ClientHello. Bytes after the ClientHello
/// (e.g. a compatibility ChangeCipherSpec or early data) are ignored.
///
/// Cost is linear in the buffered bytes; callers re-run it after every read, which is fine
/// because the buffer is bounded by `MAX_HELLO` plus record overhead before we answer.
pub fn parse(buffered: &[u8]) -> Parse {
    let total = match message_len(buffered) {
        Ok(total) => total,
        Err(Short::Incomplete) => return Parse::Incomplete,
        Err(Short::NotHello) => return Parse::NotClientHello,
    };
    let body = reassemble(buffered, total)
        .as_deref()
        .and_then(|message| message.get(HANDSHAKE_HEADER_LEN..))
        .and_then(parse_body);
    match body {
        Some(hello) => Parse::Complete(hello),
        None => Parse::NotClientHello,
    }
}

/// Why the record layer stopped before a whole handshake message was seen.
enum Short {
    Incomplete,
    NotHello,
}

/// Walks the handshake records at the front of the buffer, yielding each record's payload
/// (the last one possibly cut short by the end of the buffer). Ends (`None`) when the
/// buffer ends, including in the middle of a record header whose bytes so far are valid.
struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], Short>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let header = self.rest;
        let len = match record_len(header) {
            Ok(Some(len)) => len,
            Ok(None) => {
                self.rest = &[];
                return None;
            }
            Err(short) => {
                self.rest = &[];
                return Some(Err(short));
            }
        };
        let payload = header.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let (fragment, after) = payload.split_at_checked(len).unwrap_or((payload, &[]));
        self.rest = after;
        Some(Ok(fragment))
    }
}

/// Checks as much of a record header as is present, so garbage (an HTTP request, an SSLv2
/// hello) is rejected from its first byte instead of waiting for more input. Returns the
/// payload length once the whole header is there.
fn record_len(header: &[u8]) -> Result<Option<usize>, Short> {
    // Only handshake records may come before the ClientHello is complete: anything else
    // (alert, application data, SSLv2's 0x80 length byte, ASCII) is not for us.
    if header.first().is_some_and(|&ty| ty != CONTENT_HANDSHAKE) {
        return Err(Short::NotHello);
    }
    // legacy_record_version 0x0301..=0x0304.
    if header.get(1).is_some_and(|&major| major != 3) {
        return Err(Short::NotHello);
    }
    if header
        .get(2)
        .is_some_and(|&minor| !(1..=4).contains(&minor))
    {
        return Err(Short::NotHello);
    }
    let (Some(&hi), Some(&lo)) = (header.get(3), header.get(4)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Empty handshake records are forbidden (RFC 8446 §5.1), and accepting them would let a
    // peer keep us busy on headers alone.
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Short::NotHello);
    }
    Ok(Some(len))
}

/// First pass, without copying: finds the length of the handshake message (header
/// included) once all of its bytes are buffered.
fn message_len(buffered: &[u8]) -> Result<usize, Short> {
    let mut header = [0u8; HANDSHAKE_HEADER_LEN];
    // Handshake-layer bytes seen so far, across records.
    let mut seen = 0usize;
    for (index, fragment) in (Records { rest: buffered }).enumerate() {
        if index >= MAX_RECORDS {
            return Err(Short::NotHello);
        }
        let mut fragment = fragment?;
        // The 4-byte handshake header may itself be split across records, so gather it
        // byte by byte.
        while seen < HANDSHAKE_HEADER_LEN
            && let Some((&byte, tail)) = fragment.split_first()
        {
            if let Some(slot) = header.get_mut(seen) {
                *slot = byte;
            }
            if seen == 0 && byte != HANDSHAKE_CLIENT_HELLO {
                return Err(Short::NotHello);
            }
            seen = seen.saturating_add(1);
            fragment = tail;
        }
        seen = seen.saturating_add(fragment.len());
        if seen >= HANDSHAKE_HEADER_LEN {
            let [_, b0, b1, b2] = header;
            let body_len = u32::from_be_bytes([0, b0, b1, b2]);
            let total = usize::try_from(body_len)
                .ok()
                .and_then(|len| len.checked_add(HANDSHAKE_HEADER_LEN))
                .ok_or(Short::NotHello)?;
            // Decided from the header alone, so an oversized hello never gets buffered.
            if total > MAX_HELLO {
                return Err(Short::NotHello);
            }
            if seen >= total {
                return Ok(total);
            }
        }
    }
    Err(Short::Incomplete)
}

/// Second pass: returns the `total` bytes of the handshake message, borrowed when it sits
/// in the first record (the usual case), otherwise copied into one bounded buffer.
/// `None` only if the buffer disagrees with what `message_len` saw, which cannot happen.
fn reassemble(buffered: &[u8], total: usize) -> Option<Cow<'_, [u8]>> {
    let mut records = Records { rest: buffered };
    let first = records.next()?.ok()?;
    if let Some(message) = first.get(..total) {
        return Some(Cow::Borrowed(message));
    }
    // `total` ≤ MAX_HELLO was checked by `message_len`.
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(first);
    for fragment in records {
        let fragment = fragment.ok()?;
        let want = total.checked_sub(message.len())?;
        message.extend_from_slice(fragment.get(..want).unwrap_or(fragment));
        if message.len() >= total {
            return Some(Cow::Owned(message));
        }
    }
    None
}

/// Bounds-checked cursor over TLS wire encodings; every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&byte, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(byte)
    }

    fn u16(&mut self) -> Option<u16> {
        let (bytes, tail) = self.0.split_first_chunk::<2>()?;
        self.0 = tail;
        Some(u16::from_be_bytes(*bytes))
    }

    /// `opaque x<0..2^8-1>`
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// `opaque x<0..2^16-1>`
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

/// Parses the ClientHello body (after the 4-byte handshake header). `None` = malformed.
fn parse_body(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    let [major, _minor] = r.u16()?.to_be_bytes();
    if major != 3 {
        return None;
    }
    r.take(RANDOM_LEN)?;
    let session_id = r.vec8()?;
    if session_id.len() > MAX_SESSION_ID_LEN {
        return None;
    }
    // cipher_suites<2..2^16-2> of u16.
    let suites = r.vec16()?;
    if suites.len() < 2 || !suites.len().is_multiple_of(2) {
        return None;
    }
    // legacy_compression_methods<1..2^8-1>.
    if r.vec8()?.is_empty() {
        return None;
    }
    let mut hello = Hello {
        session_id: session_id.to_vec(),
        ..Hello::default()
    };
    // A hello may end right after compression_methods (no extensions block at all).
    if r.is_empty() {
        return Some(hello);
    }
    let mut extensions = Reader(r.vec16()?);
    // Nothing may follow the extensions block.
    if !r.is_empty() {
        return None;
    }

    let mut seen = SeenTypes::default();
    let mut session_ticket: Option<&[u8]> = None;
    let mut first_identity: Option<&[u8]> = None;
    while !extensions.is_empty() {
        // RFC 8446 §4.2.11: pre_shared_key MUST be the last extension, since the binders
        // are computed over everything before them.
        if first_identity.is_some() {
            return None;
        }
        let ty = extensions.u16()?;
        let data = extensions.vec16()?;
        // RFC 8446 §4.2: no duplicate extensions. A duplicate would also make "which
        // ticket does the client offer" ambiguous.
        if !seen.insert(ty) {
            return None;
        }
        match ty {
            EXT_SESSION_TICKET => {
                // RFC 5077: an empty extension asks for a ticket, a non-empty one also
                // offers one; the content is opaque to the client.
                hello.requests_ticket = true;
                session_ticket = Some(data);
            }
            EXT_PSK_KEY_EXCHANGE_MODES => {
                // TLS 1.3 servers only send NewSessionTicket to clients that send this.
                psk_key_exchange_modes(data)?;
                hello.requests_ticket = true;
            }
            EXT_PRE_SHARED_KEY => first_identity = Some(pre_shared_key(data)?),
            EXT_SUPPORTED_VERSIONS => hello.offers_tls13 = supported_versions(data)?,
            EXT_EARLY_DATA => hello.early_data = true,
            _ => {}
        }
    }

    // The TLS 1.2 ticket wins when both are present: a client offering both resumes
    // whichever version is negotiated, and the brief asks for this order.
    hello.offers_tls12_ticket = session_ticket.is_some_and(|t| !t.is_empty());
    let ticket = match session_ticket {
        Some(ticket) if hello.offers_tls12_ticket => Some(ticket),
        _ => first_identity,
    };
    if let Some(ticket) = ticket {
        hello.offers_ticket = true;
        hello.ticket_key_name = ticket.first_chunk::<KEY_NAME_LEN>().copied();
    }
    Some(hello)
}

/// `PskKeyExchangeMode ke_modes<1..255>`; only validated, the modes themselves don't matter.
fn psk_key_exchange_modes(data: &[u8]) -> Option<()> {
    let mut r = Reader(data);
    let modes = r.vec8()?;
    (r.is_empty() && !modes.is_empty()).then_some(())
}

/// `PskIdentity identities<7..2^16-1>; PskBinderEntry binders<33..2^16-1>;`
/// Returns the first identity; all identities are walked so a malformed list is rejected
/// rather than half-read.
fn pre_shared_key(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let mut identities = Reader(r.vec16()?);
    let binders = r.vec16()?;
    if !r.is_empty() || binders.len() < MIN_BINDERS_LEN {
        return None;
    }
    let mut first = None;
    while !identities.is_empty() {
        let identity = identities.vec16()?;
        if identity.is_empty() {
            return None;
        }
        identities.take(TICKET_AGE_LEN)?;
        first.get_or_insert(identity);
    }
    // An empty identity list is malformed (the minimum length is 7).
    first
}

/// ClientHello form: `ProtocolVersion versions<2..254>`. Returns whether TLS 1.3 is listed.
fn supported_versions(data: &[u8]) -> Option<bool> {
    let mut r = Reader(data);
    let versions = r.vec8()?;
    if !r.is_empty() || versions.len() < 2 || !versions.len().is_multiple_of(2) {
        return None;
    }
    Some(versions.chunks_exact(2).any(|version| version == TLS13))
}

/// Set of extension types seen so far. Real hellos carry a few dozen
/// extensions: those are kept in a small inline list (no 8 KiB bitmap to
/// zero on every connection). Past that, one bit per possible u16 on the
/// heap, so duplicate detection stays O(1) per extension even for a hostile
/// hello with ~16k empty extensions.
#[derive(Default)]
struct SeenTypes {
    few: [u16; SEEN_INLINE],
    len: usize,
    many: Option<Box<[u64; 1 << 10]>>,
}

const SEEN_INLINE: usize = 32;

impl SeenTypes {
    /// Records `ty`; false if it was already there.
    fn insert(&mut self, ty: u16) -> bool {
        if self.many.is_none() {
            let few = &self.few[..self.len];
            if few.contains(&ty) {
                return false;
            }
            if let Some(slot) = self.few.get_mut(self.len) {
                *slot = ty;
                self.len += 1;
                return true;
            }
            let mut bits = Box::new([0u64; 1 << 10]);
            for &t in &self.few {
                set_bit(&mut bits, t);
            }
            self.many = Some(bits);
        }
        match self.many.as_deref_mut() {
            Some(bits) => set_bit(bits, ty),
            None => false,
        }
    }
}

/// Sets `ty`'s bit; false if it was already set.
fn set_bit(bits: &mut [u64; 1 << 10], ty: u16) -> bool {
    let bit = 1u64 << (ty & 63);
    match bits.get_mut(usize::from(ty >> 6)) {
        Some(word) if *word & bit == 0 => {
            *word |= bit;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TY_HANDSHAKE: u8 = 22;
    const TY_ALERT: u8 = 21;
    const TY_CCS: u8 = 20;
    const TY_APPDATA: u8 = 23;
    const EXT_SERVER_NAME: u16 = 0;
    const EXT_PADDING: u16 = 21;
    const EXT_KEY_SHARE: u16 = 51;

    // ---- builder -------------------------------------------------------------------------

    /// Builds ClientHello messages field by field so tests can break any one of them.
    #[derive(Clone)]
    struct Builder {
        version: [u8; 2],
        session_id: Vec<u8>,
        suites: Vec<u8>,
        compression: Vec<u8>,
        /// None = no extensions block at all (legal).
        extensions: Option<Vec<(u16, Vec<u8>)>>,
        /// Bytes appended after the extensions block, inside the body (malformed).
        body_trailer: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                version: [3, 3],
                session_id: Vec::new(),
                suites: vec![0x13, 0x01, 0xc0, 0x2f],
                compression: vec![0],
                extensions: Some(Vec::new()),
                body_trailer: Vec::new(),
            }
        }

        fn session_id(mut self, id: &[u8]) -> Self {
            self.session_id = id.to_vec();
            self
        }

        fn ext(mut self, (ty, data): (u16, Vec<u8>)) -> Self {
            self.extensions
                .get_or_insert_with(Vec::new)
                .push((ty, data));
            self
        }

        fn no_extensions(mut self) -> Self {
            self.extensions = None;
            self
        }

        fn body(&self) -> Vec<u8> {
            let mut b = self.version.to_vec();
            b.extend((0u8..32).map(|i| i.wrapping_mul(7)));
            b.extend(vec8(&self.session_id));
            b.extend(vec16(&self.suites));
            b.extend(vec8(&self.compression));
            if let Some(exts) = &self.extensions {
                let mut block = Vec::new();
                for (ty, data) in exts {
                    block.extend(ty.to_be_bytes());
                    block.extend(vec16(data));
                }
                b.extend(vec16(&block));
            }
            b.extend(&self.body_trailer);
            b
        }

        /// Handshake message: type 1, u24 length, body.
        fn message(&self) -> Vec<u8> {
            handshake(HANDSHAKE_CLIENT_HELLO, &self.body())
        }

        /// The message in a single handshake record.
        fn record(&self) -> Vec<u8> {
            record(TY_HANDSHAKE, &self.message())
        }
    }

    fn handshake(ty: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut m = vec![ty, len[1], len[2], len[3]];
        m.extend(body);
        m
    }

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut v = vec![u8::try_from(data.len()).unwrap()];
        v.extend(data);
        v
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        v.extend(data);
        v
    }

    fn record(ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![ty, 3, 1];
        r.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
        r.extend(payload);
        r
    }

    /// Splits `message` into handshake records of the given sizes; the rest goes into a
    /// final record.
    fn fragmented(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        for &n in sizes {
            let (head, tail) = rest.split_at(n);
            out.extend(record(TY_HANDSHAKE, head));
            rest = tail;
        }
        if !rest.is_empty() {
            out.extend(record(TY_HANDSHAKE, rest));
        }
        out
    }

    fn session_ticket(ticket: &[u8]) -> (u16, Vec<u8>) {
        (EXT_SESSION_TICKET, ticket.to_vec())
    }

    fn psk_modes() -> (u16, Vec<u8>) {
        (EXT_PSK_KEY_EXCHANGE_MODES, vec8(&[1]))
    }

    fn versions(list: &[u16]) -> (u16, Vec<u8>) {
        let bytes: Vec<u8> = list.iter().flat_map(|v| v.to_be_bytes()).collect();
        (EXT_SUPPORTED_VERSIONS, vec8(&bytes))
    }

    /// pre_shared_key with the given identities (age 0x01020304) and one 32-byte binder
    /// per identity.
    fn psk(identities: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut ids = Vec::new();
        let mut binders = Vec::new();
        for id in identities {
            ids.extend(vec16(id));
            ids.extend([1, 2, 3, 4]);
            binders.extend(vec8(&[0x5a; 32]));
        }
        let mut data = vec16(&ids);
        data.extend(vec16(&binders));
        (EXT_PRE_SHARED_KEY, data)
    }

    fn other(ty: u16, data: &[u8]) -> (u16, Vec<u8>) {
        (ty, data.to_vec())
    }

    fn complete(buffered: &[u8]) -> Hello {
        match parse(buffered) {
            Parse::Complete(hello) => hello,
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    fn key(bytes: &[u8]) -> Option<[u8; KEY_NAME_LEN]> {
        Some(bytes.try_into().unwrap())
    }

    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// Every strict prefix of `buffered` must be Incomplete, and the whole Complete.
    fn assert_prefixes_incomplete(buffered: &[u8]) {
        for end in 0..buffered.len() {
            assert_eq!(
                parse(&buffered[..end]),
                Parse::Incomplete,
                "prefix of {end}/{} bytes",
                buffered.len()
            );
        }
        complete(buffered);
    }

    fn tls13_hello() -> Builder {
        Builder::new()
            .session_id(&[0x11; 32])
            .ext(other(EXT_SERVER_NAME, &[0, 4, 0, 0, 1, b'x']))
            .ext(versions(&[0x0a0a, 0x0304, 0x0303]))
            .ext(other(EXT_KEY_SHARE, &[0, 6, 0, 0x1d, 0, 2, 9, 9]))
            .ext(psk_modes())
    }

    // ---- ticket / psk semantics ------------------------------------------------------------

    #[test]
    fn tls12_ticket_gives_key_name() {
        let ticket: Vec<u8> = (0u8..200).collect();
        let buf = Builder::new()
            .ext(other(EXT_SERVER_NAME, &[0, 4, 0, 0, 1, b'x']))
            .ext(session_ticket(&ticket))
            .record();
        let hello = complete(&buf);
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: key(&ticket[..16]),
                requests_ticket: true,
                offers_ticket: true,
                offers_tls12_ticket: true,
                session_id: vec![],
                offers_tls13: false,
                early_data: false,
            }
        );
    }

    #[test]
    fn empty_session_ticket_only_requests() {
        let buf = Builder::new()
            .session_id(&[7; 32])
            .ext(session_ticket(&[]))
            .record();
        let hello = complete(&buf);
        assert_eq!(
            hello,
            Hello {
                requests_ticket: true,
                session_id: vec![7; 32],
                ..Hello::default()
            }
        );
    }

    #[test]
    fn short_session_ticket_offers_without_key_name() {
        let buf = Builder::new().ext(session_ticket(&[1; 15])).record();
        let hello = complete(&buf);
        assert!(hello.requests_ticket && hello.offers_ticket && hello.offers_tls12_ticket);
        assert_eq!(hello.ticket_key_name, None);
    }

    #[test]
    fn ticket_of_exactly_key_name_len() {
        let buf = Builder::new().ext(session_ticket(&[9; 16])).record();
        assert_eq!(complete(&buf).ticket_key_name, Some([9; 16]));
    }

    #[test]
    fn tls13_psk_first_identity_gives_key_name() {
        let first: Vec<u8> = (100u8..180).collect();
        let second = [0xEE; 64];
        let buf = tls13_hello().ext(psk(&[&first, &second])).record();
        let hello = complete(&buf);
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: key(&first[..16]),
                requests_ticket: true,
                offers_ticket: true,
                offers_tls12_ticket: false,
                session_id: vec![0x11; 32],
                offers_tls13: true,
                early_data: false,
            }
        );
    }

    #[test]
    fn short_psk_identity_offers_without_key_name() {
        let buf = tls13_hello().ext(psk(&[&[1, 2, 3], &[5; 40]])).record();
        let hello = complete(&buf);
        assert!(hello.offers_ticket);
        assert_eq!(hello.ticket_key_name, None);
    }

    #[test]
    fn psk_without_modes_offers_but_does_not_request() {
        let buf = Builder::new()
            .ext(versions(&[0x0304]))
            .ext(psk(&[&[3; 20]]))
            .record();
        let hello = complete(&buf);
        assert!(hello.offers_ticket && !hello.requests_ticket && !hello.offers_tls12_ticket);
        assert_eq!(hello.ticket_key_name, Some([3; 16]));
    }

    #[test]
    fn psk_modes_alone_only_requests() {
        let hello = complete(&tls13_hello().record());
        assert!(hello.requests_ticket && !hello.offers_ticket);
        assert!(hello.offers_tls13);
        assert_eq!(hello.ticket_key_name, None);
    }

    #[test]
    fn non_empty_session_ticket_wins_over_psk() {
        let buf = tls13_hello()
            .ext(session_ticket(&[0xAA; 50]))
            .ext(psk(&[&[0xBB; 50]]))
            .record();
        assert_eq!(complete(&buf).ticket_key_name, Some([0xAA; 16]));
    }

    #[test]
    fn empty_session_ticket_falls_back_to_psk() {
        let buf = tls13_hello()
            .ext(session_ticket(&[]))
            .ext(psk(&[&[0xBB; 50]]))
            .record();
        let hello = complete(&buf);
        assert_eq!(hello.ticket_key_name, Some([0xBB; 16]));
        assert!(hello.requests_ticket && hello.offers_ticket);
    }

    #[test]
    fn early_data_flag() {
        let buf = tls13_hello()
            .ext(other(EXT_EARLY_DATA, &[]))
            .ext(psk(&[&[1; 32]]))
            .record();
        assert!(complete(&buf).early_data);
        assert!(!complete(&tls13_hello().record()).early_data);
    }

    #[test]
    fn supported_versions_without_tls13() {
        let buf = Builder::new().ext(versions(&[0x0303, 0x0302])).record();
        assert!(!complete(&buf).offers_tls13);
    }

    #[test]
    fn hello_without_extensions_block() {
        let buf = Builder::new().session_id(&[1; 8]).no_extensions().record();
        assert_eq!(
            complete(&buf),
            Hello {
                session_id: vec![1; 8],
                ..Hello::default()
            }
        );
        assert_prefixes_incomplete(&buf);
    }

    #[test]
    fn hello_with_empty_extensions_block() {
        let buf = Builder::new().record();
        assert_eq!(complete(&buf), Hello::default());
    }

    #[test]
    fn unknown_and_grease_extensions_are_skipped() {
        let buf = Builder::new()
            .ext(other(0x0a0a, &[]))
            .ext(other(0xfafa, &[0]))
            .ext(other(0xffff, &[1, 2, 3]))
            .ext(session_ticket(&[4; 20]))
            .record();
        assert_eq!(complete(&buf).ticket_key_name, Some([4; 16]));
    }

    // ---- record layer ----------------------------------------------------------------------

    #[test]
    fn fragmented_across_three_records() {
        let ticket: Vec<u8> = (0u8..200).collect();
        let builder = Builder::new().ext(session_ticket(&ticket));
        let message = builder.message();
        let whole = complete(&builder.record());
        // Split inside the handshake header, then inside the ticket.
        let buf = fragmented(&message, &[2, 100]);
        assert_eq!(buf.len(), message.len() + 3 * RECORD_HEADER_LEN);
        assert_eq!(complete(&buf), whole);
        assert_prefixes_incomplete(&buf);
        // Split at the header boundary and near the end.
        let buf = fragmented(&message, &[4, message.len() - 5]);
        assert_eq!(complete(&buf), whole);
    }

    #[test]
    fn record_count_limit() {
        let message = Builder::new().ext(other(EXT_PADDING, &[0; 400])).message();
        // MAX_RECORDS records (one byte each, the rest in the last) are fine...
        let buf = fragmented(&message, &[1; MAX_RECORDS - 1]);
        assert_eq!(complete(&buf), Hello::default());
        assert_prefixes_incomplete(&buf);
        // ...one more is rejected once that record's header is in.
        let buf = fragmented(&message, &[1; MAX_RECORDS]);
        assert_eq!(parse(&buf), Parse::NotClientHello);
        let limit = MAX_RECORDS * (RECORD_HEADER_LEN + 1);
        assert_eq!(parse(&buf[..limit + 4]), Parse::Incomplete);
        assert_eq!(parse(&buf[..limit + 5]), Parse::NotClientHello);
    }

    #[test]
    fn fragmented_into_one_byte_records() {
        let builder = tls13_hello().ext(psk(&[&[0x42; 33]]));
        let message = builder.message();
        let sizes = vec![1; message.len() - 1];
        let buf = fragmented(&message, &sizes);
        assert_eq!(complete(&buf), complete(&builder.record()));
        assert_prefixes_incomplete(&buf);
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let ticket: Vec<u8> = (0u8..200).collect();
        assert_prefixes_incomplete(&Builder::new().ext(session_ticket(&ticket)).record());
        assert_prefixes_incomplete(&tls13_hello().ext(psk(&[&[1; 40], &[2; 3]])).record());
        assert_prefixes_incomplete(&Builder::new().record());
    }

    #[test]
    fn exactly_complete_and_trailing_bytes_ignored() {
        let buf = tls13_hello().ext(psk(&[&[8; 40]])).record();
        let hello = complete(&buf);
        // Compatibility-mode ChangeCipherSpec and early data follow the hello.
        let mut more = buf.clone();
        more.extend(record(TY_CCS, &[1]));
        more.extend(record(TY_APPDATA, &[0xde; 100]));
        assert_eq!(complete(&more), hello);
        // Even garbage or a half record header after it.
        for tail in [&b"GET / HTTP/1.1\r\n"[..], &[0x16, 0x03], &[0xff; 7]] {
            let mut more = buf.clone();
            more.extend(tail);
            assert_eq!(complete(&more), hello);
        }
    }

    #[test]
    fn bytes_after_hello_in_same_record_are_ignored() {
        let builder = tls13_hello();
        let mut payload = builder.message();
        payload.extend(handshake(20, &[0; 32]));
        assert_eq!(
            complete(&record(TY_HANDSHAKE, &payload)),
            complete(&builder.record())
        );
    }

    #[test]
    fn complete_once_message_is_in_even_if_last_record_is_not() {
        let builder = Builder::new();
        let mut payload = builder.message();
        let hello_len = payload.len();
        payload.extend([0; 50]);
        let buf = record(TY_HANDSHAKE, &payload);
        let end = RECORD_HEADER_LEN + hello_len;
        assert_eq!(parse(&buf[..end - 1]), Parse::Incomplete);
        assert_eq!(complete(&buf[..end]), complete(&builder.record()));
    }

    #[test]
    fn buffer_ending_inside_record_header() {
        let message = Builder::new().message();
        let buf = fragmented(&message, &[10]);
        for cut in [1, 3, 4, 15, 16, 17, 19] {
            assert_eq!(parse(&buf[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(&[]), Parse::Incomplete);
    }

    #[test]
    fn garbage_is_not_client_hello() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parse::NotClientHello
        );
        // Rejected from the first byte, without waiting for more.
        assert_eq!(parse(b"G"), Parse::NotClientHello);
        assert_eq!(parse(b"EHLO example.org\r\n"), Parse::NotClientHello);
        // SSLv2-compatible ClientHello: 2-byte length with the high bit set, msg type 1.
        let sslv2 = [
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x01, 0x00, 0x80,
        ];
        assert_eq!(parse(&sslv2), Parse::NotClientHello);
        assert_eq!(parse(&sslv2[..1]), Parse::NotClientHello);
        // Application data, alert and CCS records.
        assert_eq!(parse(&record(TY_APPDATA, &[1; 20])), Parse::NotClientHello);
        assert_eq!(parse(&record(TY_ALERT, &[2, 40])), Parse::NotClientHello);
        assert_eq!(parse(&record(TY_CCS, &[1])), Parse::NotClientHello);
        assert_eq!(parse(&[TY_APPDATA]), Parse::NotClientHello);
        assert_eq!(parse(&[0; 64]), Parse::NotClientHello);
    }

    #[test]
    fn record_versions() {
        let good = Builder::new().record();
        for (version, ok) in [
            ([3, 1], true),
            ([3, 2], true),
            ([3, 3], true),
            ([3, 4], true),
            ([3, 0], false),
            ([3, 5], false),
            ([2, 0], false),
            ([0xfe, 0xfd], false),
        ] {
            let mut buf = good.clone();
            buf[1..3].copy_from_slice(&version);
            assert_eq!(matches!(parse(&buf), Parse::Complete(_)), ok, "{version:?}");
            // A bad version is seen as soon as its byte arrives.
            if !ok {
                let first_bad = if version[0] == 3 { 3 } else { 2 };
                assert_eq!(parse(&buf[..first_bad]), Parse::NotClientHello);
            }
        }
    }

    #[test]
    fn client_hello_version_major_must_be_3() {
        let mut builder = Builder::new();
        builder.version = [2, 0];
        assert_eq!(parse(&builder.record()), Parse::NotClientHello);
        builder.version = [3, 1];
        assert!(matches!(parse(&builder.record()), Parse::Complete(_)));
    }

    #[test]
    fn zero_length_record_is_rejected() {
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Parse::NotClientHello);
        let message = Builder::new().message();
        let mut buf = fragmented(&message[..10], &[]);
        buf.extend([22, 3, 1, 0, 0]);
        buf.extend(record(TY_HANDSHAKE, &message[10..]));
        assert_eq!(parse(&buf), Parse::NotClientHello);
    }

    #[test]
    fn record_length_limit() {
        // A hello padded so its record is exactly the limit is fine...
        let pad = MAX_RECORD_LEN - Builder::new().message().len() - 4;
        let builder = Builder::new().ext(other(EXT_PADDING, &vec![0; pad]));
        let buf = builder.record();
        assert_eq!(buf.len(), RECORD_HEADER_LEN + MAX_RECORD_LEN);
        complete(&buf);
        // ...one more byte is rejected from the header alone.
        let buf = Builder::new()
            .ext(other(EXT_PADDING, &vec![0; pad + 1]))
            .record();
        assert_eq!(parse(&buf[..RECORD_HEADER_LEN]), Parse::NotClientHello);
        assert_eq!(parse(&[22, 3, 3, 0xff, 0xff]), Parse::NotClientHello);
    }

    #[test]
    fn non_handshake_record_before_completion() {
        let message = tls13_hello().message();
        let mut buf = fragmented(&message[..30], &[]);
        buf.extend(record(TY_CCS, &[1]));
        buf.extend(record(TY_HANDSHAKE, &message[30..]));
        assert_eq!(parse(&buf), Parse::NotClientHello);
        // Rejected as soon as the intruder's type byte is there.
        assert_eq!(parse(&buf[..RECORD_HEADER_LEN + 31]), Parse::NotClientHello);
    }

    #[test]
    fn wrong_handshake_type() {
        let body = Builder::new().body();
        for ty in [0, 2, 4, 11, 16, 20, 0xff] {
            let buf = record(TY_HANDSHAKE, &handshake(ty, &body));
            assert_eq!(parse(&buf), Parse::NotClientHello, "type {ty}");
            assert_eq!(parse(&buf[..6]), Parse::NotClientHello);
        }
    }

    #[test]
    fn oversized_hello_is_rejected() {
        // Handshake length far beyond the limit, visible from the first record.
        let buf = record(TY_HANDSHAKE, &[1, 0xff, 0xff, 0xff, 3, 3]);
        assert_eq!(parse(&buf), Parse::NotClientHello);
        // Exactly MAX_HELLO bytes (header included), spread over records, is accepted.
        let base = Builder::new().message().len();
        let pad = MAX_HELLO - base - 4;
        let builder = Builder::new().ext(other(EXT_PADDING, &vec![0; pad]));
        let message = builder.message();
        assert_eq!(message.len(), MAX_HELLO);
        let buf = fragmented(&message, &[16384, 16384, 16384]);
        assert_eq!(complete(&buf), Hello::default());
        assert_eq!(parse(&buf[..buf.len() - 1]), Parse::Incomplete);
        // One byte more is rejected as soon as the header is in.
        let builder = Builder::new().ext(other(EXT_PADDING, &vec![0; pad + 1]));
        let message = builder.message();
        assert_eq!(message.len(), MAX_HELLO + 1);
        let buf = fragmented(&message, &[16384, 16384, 16384, 16384]);
        assert_eq!(parse(&buf), Parse::NotClientHello);
        assert_eq!(parse(&buf[..RECORD_HEADER_LEN + 4]), Parse::NotClientHello);
    }

    // ---- malformed bodies ------------------------------------------------------------------

    #[test]
    fn duplicate_extensions_are_rejected() {
        let buf = Builder::new()
            .ext(session_ticket(&[]))
            .ext(session_ticket(&[1; 20]))
            .record();
        assert_eq!(parse(&buf), Parse::NotClientHello);
        let buf = tls13_hello().ext(other(EXT_SERVER_NAME, &[])).record();
        assert_eq!(parse(&buf), Parse::NotClientHello);
        let buf = Builder::new()
            .ext(other(0xffff, &[]))
            .ext(other(0, &[]))
            .ext(other(0xffff, &[]))
            .record();
        assert_eq!(parse(&buf), Parse::NotClientHello);
    }

    #[test]
    fn duplicates_are_found_past_the_inline_list() {
        // Distinct types beyond the inline list are fine...
        let many = |extra: Option<u16>| {
            let mut b = Builder::new();
            for ty in 0..(SEEN_INLINE as u16 + 20) {
                b = b.ext(other(0x1000 + ty, &[]));
            }
            if let Some(ty) = extra {
                b = b.ext(other(ty, &[]));
            }
            b.record()
        };
        assert!(matches!(parse(&many(None)), Parse::Complete(_)));
        // ...and a repeat of one kept inline, or of one only in the bitmap,
        // is still caught.
        assert_eq!(parse(&many(Some(0x1000))), Parse::NotClientHello);
        assert_eq!(
            parse(&many(Some(0x1000 + SEEN_INLINE as u16 + 5))),
            Parse::NotClientHello
        );
        let mut seen = SeenTypes::default();
        for ty in 0..=u16::MAX {
            assert!(seen.insert(ty));
        }
        assert!(!seen.insert(7) && !seen.insert(u16::MAX));
    }

    #[test]
    fn pre_shared_key_must_be_last() {
        let buf = Builder::new()
            .ext(psk(&[&[1; 20]]))
            .ext(psk_modes())
            .record();
        assert_eq!(parse(&buf), Parse::NotClientHello);
    }

    #[test]
    fn malformed_pre_shared_key() {
        let cases: Vec<Vec<u8>> = vec![
            // No identities.
            [vec16(&[]), vec16(&[0; 33])].concat(),
            // Empty identity.
            [vec16(&[0, 0, 1, 2, 3, 4]), vec16(&[0; 33])].concat(),
            // Identity missing its ticket age.
            [vec16(&[0, 2, 9, 9]), vec16(&[0; 33])].concat(),
            // Identity length running past the list.
            [vec16(&[0xff, 0xff, 9, 9, 1, 2, 3, 4]), vec16(&[0; 33])].concat(),
            // Binders missing or too short.
            vec16(&[0, 1, 9, 1, 2, 3, 4]),
            [vec16(&[0, 1, 9, 1, 2, 3, 4]), vec16(&[0; 32])].concat(),
            // Trailing bytes.
            [vec16(&[0, 1, 9, 1, 2, 3, 4]), vec16(&[0; 33]), vec![0]].concat(),
            // Identities length overflowing the extension.
            vec![0xff, 0xff, 0, 1, 9],
            vec![],
        ];
        for (i, data) in cases.into_iter().enumerate() {
            let buf = tls13_hello().ext((EXT_PRE_SHARED_KEY, data)).record();
            assert_eq!(parse(&buf), Parse::NotClientHello, "case {i}");
        }
    }

    #[test]
    fn malformed_supported_versions_and_modes() {
        for data in [
            vec![],
            vec![0],
            vec![1, 3],
            vec![3, 3, 4, 3],
            vec![2, 3, 4, 0],
        ] {
            let buf = Builder::new()
                .ext((EXT_SUPPORTED_VERSIONS, data.clone()))
                .record();
            assert_eq!(parse(&buf), Parse::NotClientHello, "{data:?}");
        }
        for data in [vec![], vec![0], vec![2, 1], vec![1, 1, 0]] {
            let buf = Builder::new()
                .ext((EXT_PSK_KEY_EXCHANGE_MODES, data.clone()))
                .record();
            assert_eq!(parse(&buf), Parse::NotClientHello, "{data:?}");
        }
    }

    #[test]
    fn malformed_fixed_fields() {
        let mut b = Builder::new();
        b.session_id = vec![0; 33];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        let mut b = Builder::new();
        b.suites = vec![];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        let mut b = Builder::new();
        b.suites = vec![0x13, 0x01, 0x00];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        let mut b = Builder::new();
        b.compression = vec![];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        // Junk after the extensions block, or a lone byte where the block should be.
        let mut b = Builder::new().ext(session_ticket(&[]));
        b.body_trailer = vec![0];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        let mut b = Builder::new().no_extensions();
        b.body_trailer = vec![0];
        assert_eq!(parse(&b.record()), Parse::NotClientHello);
        // Body too short for random.
        let buf = record(TY_HANDSHAKE, &handshake(1, &[3, 3, 0, 0]));
        assert_eq!(parse(&buf), Parse::NotClientHello);
        // Empty body.
        assert_eq!(
            parse(&record(TY_HANDSHAKE, &[1, 0, 0, 0])),
            Parse::NotClientHello
        );
    }

    #[test]
    fn overflowing_length_fields() {
        let base = Builder::new().ext(session_ticket(&[1; 20])).message();
        // Offsets into the message: header 4, version 2, random 32.
        let sid = 4 + 2 + 32;
        // session_id length 0xff: runs past the body.
        let mut m = base.clone();
        m[sid] = 0xff;
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
        // cipher_suites length 0xffff.
        let mut m = base.clone();
        m[sid + 1..sid + 3].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
        // Extensions block length 0xffff, then the single extension's length 0xffff.
        let ext_block = sid + 1 + 2 + 4 + 1 + 1;
        let mut m = base.clone();
        m[ext_block..ext_block + 2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
        let mut m = base.clone();
        m[ext_block + 4..ext_block + 6].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
        // Handshake length shorter than the body: the body is cut and malformed.
        let mut m = base.clone();
        m[1..4].copy_from_slice(&[0, 0, 40]);
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
        // Handshake length 2^24-1: rejected, never waited for.
        let mut m = base;
        m[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(parse(&record(TY_HANDSHAKE, &m)), Parse::NotClientHello);
    }

    // ---- real clients ----------------------------------------------------------------------
    //
    // Captured with a logging TCP proxy in front of `gnutls-serv` (GnuTLS 3.7.9):
    // `gnutls-cli --insecure -r` (connects, then resumes), the same with
    // `--priority NORMAL:-VERS-TLS1.3`, and `openssl s_client` (OpenSSL 3.0) with
    // `-sess_out` then `-sess_in`. Only the ClientHello records are kept. All tickets were
    // issued by the same gnutls-serv, so they all start with its key name.

    const GNUTLS_KEY_NAME: [u8; 16] = [
        0x87, 0x6f, 0x11, 0x63, 0x7d, 0x0f, 0x03, 0x59, 0x5b, 0x97, 0xf2, 0x37, 0xf9, 0x9b, 0xc5,
        0x0e,
    ];

    const GNUTLS_TLS13_FRESH: &str = "\
        16030101700100016c0303eeabbd68df6c4b5a03cd750fd381dc9ccf22e37405\
        b218db84ffa66454fe164a202c9d7ff6b692be5a5df69393920c4dec9ce9df85\
        2bc165dc6fe35f5280932356003a1302130313011304c02ccca9c0adc00ac02b\
        c0acc009c030cca8c014c02fc013009dc09d0035009cc09c002f009fccaac09f\
        0039009ec09e0033010000e9000500050100000000000a001600140017001800\
        19001d001e01000101010201030104000b00020100000d002200200401080908\
        04040308070501080a0805050308080601080b08060603020102030016000000\
        170000002300000033006b006900170041043d9518e586e2e74b1c4f907e4856\
        8b2a918cbcae4bc1fba1a196e76e30ce3175b0c14a90adb556c7eac753109584\
        f5f9471bd62d7454a0129545624cdaa42523001d00204fe5e6811325f75a5e56\
        1ba2aa5f17d61086c428418aabf737c7a41c5b172539002b0009080304030303\
        020301ff01000100002d0003020100001c00024001";

    const GNUTLS_TLS13_RESUME: &str = "\
        16030102a5010002a10303052f299d9c9fd3ad6026da9b3850755fa1fb60aa8e\
        a70ea0946a81e0daa67fce202c9d7ff6b692be5a5df69393920c4dec9ce9df85\
        2bc165dc6fe35f5280932356003a1302130313011304c02ccca9c0adc00ac02b\
        c0acc009c030cca8c014c02fc013009dc09d0035009cc09c002f009fccaac09f\
        0039009ec09e00330100021e000500050100000000000a001600140017001800\
        19001d001e01000101010201030104000b00020100000d002200200401080908\
        04040308070501080a0805050308080601080b08060603020102030016000000\
        170000002300000033006b00690017004104d85b93f60e51a041f8ed71156b2c\
        a8bd78562c39f4919cc1d19e89648dc6bcb43cf31785460d575fb3e8c46ff6ea\
        4cae808cb874c3be091fee1be11e1f843370001d0020c545059aee25a217419f\
        6fb2149633fdf23021c881319421f171e7019b03c029002b0009080304030303\
        020301ff01000100002d0003020100001c000240010029013100fc00f6876f11\
        637d0f03595b97f237f99bc50e575062e73a76181d8ec770f93005cf7900c000\
        a62c8e61c4d2bd250423cc6c81566532453ef0cfb7c50d385110d13e3d35578c\
        941735b533b1f8a401d35a0209d3a4de26fd34b5b884179e640799ec7301bb28\
        d0e455fa9bcf940b7fd9ff0c433975a915c02280983a2ca0efa139cfa1b3dc06\
        890d9f8c15712cbe53ed36e634edfc6041ea3a6151a45cca82df3514c52fb28b\
        92e1b0cc7bdd5ff3dd5a50357fbf6082b9c507542e1e89c520e8a8400d4d83b1\
        a8e08ac33e1f422607bb8c9b502635e4a76d817d884bf50f3e851e8f42bb0776\
        e528789cc81e09006fd5aeba62f03374daee40e8368c8100313005f990e9cbcc\
        bf249ef68feba558d47d7a0c2d1379fec61cdede9ee09ec6201b5a442cfa067e\
        9991528e7c68ab6d3f11";

    const GNUTLS_TLS12_FRESH: &str = "\
        16030100c5010000c10303cff72f0b8801a428573e9eac7ababcdaede8a04ad3\
        3ae69bbada7095966b1b5e000032c02ccca9c0adc00ac02bc0acc009c030cca8\
        c014c02fc013009dc09d0035009cc09c002f009fccaac09f0039009ec09e0033\
        01000066000500050100000000000a00160014001700180019001d001e010001\
        01010201030104000b00020100000d0022002004010809080404030807050108\
        0a0805050308080601080b0806060302010203001600000017000000230000ff\
        01000100001c00024000";

    const GNUTLS_TLS12_RESUME: &str = "\
        160301026b010002670303a9b6811eeeb9808a3556ab858d889fcd1fe8d5839f\
        4e7727724f5fb0d9e0df5320156575126249da9b704b260fda5fa4088c518911\
        b307d037567b39250c8000030032c02ccca9c0adc00ac02bc0acc009c030cca8\
        c014c02fc013009dc09d0035009cc09c002f009fccaac09f0039009ec09e0033\
        010001ec000500050100000000000a00160014001700180019001d001e010001\
        01010201030104000b00020100000d0022002004010809080404030807050108\
        0a0805050308080601080b080606030201020300160000001700000023018687\
        6f11637d0f03595b97f237f99bc50ed0a7ead4da6a2901deddba19fd08f4c801\
        50191ec412c36564df6b85182afefc94a946128b1c3268e70810da29fe15cb5f\
        445784f3346925832f2b12574404fc7264045b911ec23b243db0a876795c4176\
        5b1dd7df2d2e1de4f4fcacbfe168809fba032c441d67a7c764e3db8dc85ddfe1\
        7c13d37839945344812974abe49fb3a8a58c77fb0da6b1ec5649b59c7af0717e\
        80979f8da86371c7d2b3edc6fadcda0978494e9ad47053ae5bcc5d7e83345d98\
        7c6a348aa435e5f69f84d2b309e01e5a4d60ee9dbdc94f1d835b7227ffc19f5b\
        9106cb6b46a61f7e9ab4c958e19834ceb9d8acb75b46c941a231bcd3062f69a0\
        ea5a856861dbe0de2a059b950cdee8b4b00f99e6b318a07902a4f99982dd9f1f\
        ba6b08eea2dd9b6cc55ce80c595bd9f57527da90b38bef9a575a03778fa667b4\
        f9a36e9e8612d53c384b1edb26410f9f8025a247c851421a0840288437764533\
        cea7185608206f62bd2f5fbba2f0b9bff90cbb73a8bb6e4e14ab6820bed68c53\
        f90505ede5ff01000100001c00024000";

    const OPENSSL_FRESH: &str = "\
        160301012401000120030383416dd193846cb09aaf4e80e81cbacb44f5c065b2\
        a893624340875e2780341e20839f8d229fd2685e2154e0a8b94083fb56b5d487\
        13f13bb583cebd79c00db117003e130213031301c02cc030009fcca9cca8ccaa\
        c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d\
        009c003d003c0035002f00ff01000099000b000403000102000a00160014001d\
        0017001e0019001801000101010201030104002300000016000000170000000d\
        002a0028040305030603080708080809080a080b080408050806040105010601\
        030303010302040205020602002b0009080304030303020301002d0002010100\
        3300260024001d002053559c588ed8f725515868609c4f49a73480e526edd8f8\
        effc0261d5baca2f60";

    const OPENSSL_RESUME: &str = "\
        1603010259010002550303ed37e65af85caa04fa28549d6e6cbe4d86e13e689b\
        3cb083d0fb5b6dc341b7b320e1c12925ab9a22be83a44ba52ff2bfc22dcb1e25\
        ec6f6895cab4ba40c3807373003e130213031301c02cc030009fcca9cca8ccaa\
        c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d\
        009c003d003c0035002f00ff010001ce000b000403000102000a00160014001d\
        0017001e0019001801000101010201030104002300000016000000170000000d\
        002a0028040305030603080708080809080a080b080408050806040105010601\
        030303010302040205020602002b0009080304030303020301002d0002010100\
        3300260024001d0020abfcc92d5f3ce6b0cb40461cdb46de2688c21ce89094a6\
        7a4efcedf4953ea8310029013100fc00f6876f11637d0f03595b97f237f99bc5\
        0e312032d887a620e212b3aa080fbca88000c032cdae9400b67822c510a13d6e\
        2df4d056a4075fbf74257de6150a6f6fd0f792df8231fa5e99eca7fadf946d6c\
        bed505ab9fb04597fb7d490ed6a22e93a46a1c3225811fdb81654eefb5392218\
        b5132be0ea0674c5f82c0bd73cc0463813c0bf2e606f222dfbe6ed6aa645490b\
        e66d22c12357cd140f22d44b5a56a95f45603c7697460ad05c7e68c96ff7c235\
        531e654d69a15f8d2f177d7408c8d214613628e6f4a68cd74250b612f3a6dd0e\
        9bc2ef59b7425929d33ef04909a2057a87b1435d4802561bea4438914544f959\
        bdae958653890455dcf348003130fc0014d443257d647d1f0c0101f9a99a96b1\
        4097f4e7800f03dd9790a642d609441b6da36eee21255698fe7050ef0f41";

    fn captured() -> Vec<(&'static str, Vec<u8>)> {
        [
            ("gnutls tls13 fresh", GNUTLS_TLS13_FRESH),
            ("gnutls tls13 resume", GNUTLS_TLS13_RESUME),
            ("gnutls tls12 fresh", GNUTLS_TLS12_FRESH),
            ("gnutls tls12 resume", GNUTLS_TLS12_RESUME),
            ("openssl fresh", OPENSSL_FRESH),
            ("openssl resume", OPENSSL_RESUME),
        ]
        .into_iter()
        .map(|(name, hex)| (name, unhex(hex)))
        .collect()
    }

    #[test]
    fn gnutls_tls13_fresh() {
        let hello = complete(&unhex(GNUTLS_TLS13_FRESH));
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: None,
                requests_ticket: true,
                offers_ticket: false,
                offers_tls12_ticket: false,
                session_id: hello.session_id.clone(),
                offers_tls13: true,
                early_data: false,
            }
        );
    }

    #[test]
    fn gnutls_tls13_resume() {
        // Sends an empty session_ticket too, so the key name comes from the PSK identity.
        let hello = complete(&unhex(GNUTLS_TLS13_RESUME));
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: Some(GNUTLS_KEY_NAME),
                requests_ticket: true,
                offers_ticket: true,
                offers_tls12_ticket: false,
                session_id: hello.session_id.clone(),
                offers_tls13: true,
                early_data: false,
            }
        );
    }

    #[test]
    fn gnutls_tls12_fresh() {
        let hello = complete(&unhex(GNUTLS_TLS12_FRESH));
        assert_eq!(
            hello,
            Hello {
                requests_ticket: true,
                ..Hello::default()
            }
        );
    }

    #[test]
    fn gnutls_tls12_resume() {
        let hello = complete(&unhex(GNUTLS_TLS12_RESUME));
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: Some(GNUTLS_KEY_NAME),
                requests_ticket: true,
                offers_ticket: true,
                offers_tls12_ticket: true,
                session_id: hello.session_id.clone(),
                offers_tls13: false,
                early_data: false,
            }
        );
    }

    #[test]
    fn openssl_fresh() {
        // 32-byte session_id: OpenSSL's middlebox compatibility mode.
        let hello = complete(&unhex(OPENSSL_FRESH));
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: None,
                requests_ticket: true,
                offers_ticket: false,
                offers_tls12_ticket: false,
                session_id: hello.session_id.clone(),
                offers_tls13: true,
                early_data: false,
            }
        );
    }

    #[test]
    fn openssl_resume() {
        let hello = complete(&unhex(OPENSSL_RESUME));
        assert_eq!(
            hello,
            Hello {
                ticket_key_name: Some(GNUTLS_KEY_NAME),
                requests_ticket: true,
                offers_ticket: true,
                offers_tls12_ticket: false,
                session_id: hello.session_id.clone(),
                offers_tls13: true,
                early_data: false,
            }
        );
    }

    #[test]
    fn captured_hellos_truncated_and_refragmented() {
        for (name, buf) in captured() {
            let hello = complete(&buf);
            assert_prefixes_incomplete(&buf);
            let message = &buf[RECORD_HEADER_LEN..];
            for sizes in [&[1][..], &[3], &[4, 1], &[50, 50], &[7, 100, 13]] {
                let again = fragmented(message, sizes);
                assert_eq!(complete(&again), hello, "{name} {sizes:?}");
            }
            assert_prefixes_incomplete(&fragmented(message, &[3, 60]));
        }
    }

    // ---- fuzz ------------------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    #[test]
    fn fuzz_mutations_never_panic() {
        let mut bases: Vec<Vec<u8>> = captured().into_iter().map(|(_, b)| b).collect();
        let ticket: Vec<u8> = (0u8..200).collect();
        let tls12 = Builder::new().ext(session_ticket(&ticket));
        bases.push(tls12.record());
        bases.push(fragmented(&tls12.message(), &[2, 100]));
        let tls13 = tls13_hello().ext(other(EXT_EARLY_DATA, &[]));
        bases.push(tls13.ext(psk(&[&[1; 40], &[2; 3]])).record());
        bases.push(Builder::new().no_extensions().record());

        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut complete_n, mut incomplete_n, mut not_n) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut buf = bases[rng.below(bases.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len());
                match rng.below(8) {
                    0 => buf[at] = rng.byte(),
                    1 => buf[at] ^= 1 << rng.below(8),
                    2 => buf[at] = [0x00, 0xff, 0x01, 0x7f][rng.below(4)],
                    3 => buf.truncate(at),
                    4 => buf.insert(at, rng.byte()),
                    5 => {
                        buf.remove(at);
                    }
                    6 => {
                        // Extreme 16-bit length.
                        let v = [0x0000u16, 0xffff, 0x8000, 0x0001][rng.below(4)].to_be_bytes();
                        for (i, b) in v.into_iter().enumerate() {
                            if let Some(slot) = buf.get_mut(at + i) {
                                *slot = b;
                            }
                        }
                    }
                    _ => {
                        // Duplicate a chunk (repeats extensions, records, lengths).
                        let end = (at + rng.below(64)).min(buf.len());
                        let chunk = buf[at..end].to_vec();
                        let pos = rng.below(buf.len());
                        buf.splice(pos..pos, chunk);
                    }
                }
                if buf.is_empty() {
                    break;
                }
            }
            match parse(&buf) {
                Parse::Complete(hello) => {
                    complete_n += 1;
                    assert!(hello.session_id.len() <= MAX_SESSION_ID_LEN);
                    assert!(hello.ticket_key_name.is_none() || hello.offers_ticket);
                    // Trailing bytes never change a complete answer.
                    let mut more = buf.clone();
                    more.extend([0x17, 0x03, 0x03]);
                    assert_eq!(parse(&more), Parse::Complete(hello));
                }
                Parse::Incomplete => incomplete_n += 1,
                Parse::NotClientHello => not_n += 1,
            }
        }
        // The mutations must exercise all three outcomes to be worth anything.
        assert!(complete_n > 100 && incomplete_n > 100 && not_n > 100);
    }
}
