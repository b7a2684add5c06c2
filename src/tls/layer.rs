//! One wss connection's TLS layer, sans-IO: rustls' unbuffered API over ciphertext
//! buffers lent from the worker's pool only while they hold bytes.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB (and up to 16 KiB) receive buffer
//! per connection for as long as the connection lives, which was half of an idle wss
//! connection's memory. Here an idle connection holds only rustls' own state (keys and
//! the record layer): the ciphertext that came in is decrypted in place in a lent
//! buffer, and the records that go out are encrypted into another, each given back
//! as soon as it is empty.
//!
//! The worker drives it: bytes from the socket go into [`TlsConn::input_space`] and
//! [`TlsConn::absorb`] turns them into plaintext for the session (and handshake
//! records to send); [`TlsConn::seal`] encrypts the session's outgoing slices;
//! [`TlsConn::output`] is what to write to the socket. No call does I/O.

use crate::buf::{BufPool, Ring};
use crate::session::Flushed;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use std::fmt;
use std::io::IoSlice;
use std::sync::Arc;

/// Largest plaintext in one record (RFC 8446 5.1).
pub const MAX_FRAGMENT: usize = 16 << 10;

/// Size of each buffer the worker's TLS pool lends: two of the largest records a peer
/// may send (16 KiB of plaintext, 2 KiB of expansion, the 5-byte header), so a read
/// can complete one record while holding most of another, and one flush writes up to
/// two full records with one system call. A ClientHello must fit in it (browsers send
/// under 2 KiB).
pub const TLS_BUF: usize = 2 * (MAX_FRAGMENT + 2048 + 5);

/// Bytes a record adds to its plaintext at most with the suites we offer (TLS 1.2
/// AES-GCM: header 5, explicit nonce 8, tag 16; TLS 1.3: header 5, type 1, tag 16).
const RECORD_OVERHEAD: usize = 29;

/// What [`TlsConn::absorb`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// Everything received has been processed: more must come from the socket.
    NeedInput,
    /// Plaintext was added to the ring: let the session decode it, then call again.
    Plaintext,
    /// The peer's close_notify: no more data will come.
    PeerClosed,
}

/// The TLS state of one wss connection, kept by the worker beside the connection's
/// `Conn` (see `Ctx::tls`). No derived `Debug`: rustls' would link the formatting of
/// every handshake message type (tens of KB).
pub struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: a partial record, or records held
    /// back while the session cannot take their plaintext.
    input: Lent,
    /// Records encrypted and not yet written (the socket would block).
    output: Lent,
    /// Plaintext of a record the session's ring had no room for; empty (and holding
    /// no allocation) otherwise.
    held: Vec<u8>,
    held_pos: usize,
    /// What the last flush owes the worker once its records are written (a `Drained`
    /// must not be lost because the ciphertext blocked).
    pub owed: Option<Flushed>,
    /// rustls reported an error: its alert is in the output and rustls is not called
    /// again (a second call would parse the bad bytes again and queue a second alert).
    failed: bool,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.conn.is_handshaking())
            .field("input", &self.input.len())
            .field("output", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// A connection about to receive its ClientHello.
    pub fn new(cfg: &Arc<rustls::ServerConfig>) -> Result<Box<Self>, rustls::Error> {
        Ok(Box::new(TlsConn {
            conn: UnbufferedServerConnection::new(cfg.clone())?,
            input: Lent::default(),
            output: Lent::default(),
            held: Vec::new(),
            held_pos: 0,
            owed: None,
            failed: false,
        }))
    }

    /// The TLS handshake is not finished.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Free space for bytes from the socket (a buffer is lent if none is); empty when
    /// the received bytes fill the buffer, which [`TlsConn::absorb`] then refuses.
    pub fn input_space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        self.input.space(pool)
    }

    /// `n` bytes were written into [`TlsConn::input_space`].
    pub fn commit_input(&mut self, n: usize) {
        self.input.commit(n);
    }

    /// Gives the input buffer back if it holds nothing (after a read that got nothing).
    pub fn settle(&mut self, pool: &mut BufPool) {
        self.input.give_back_if_empty(pool);
        self.output.give_back_if_empty(pool);
    }

    /// Records waiting to be written to the socket.
    pub fn output(&self) -> &[u8] {
        self.output.filled()
    }

    /// `n` bytes of [`TlsConn::output`] were written.
    pub fn wrote(&mut self, n: usize, pool: &mut BufPool) {
        self.output.discard(n, pool);
    }

    /// Processes the received ciphertext: the handshake (its answers go to the
    /// output), then application data, whose plaintext goes into `into` (what does
    /// not fit is held and comes first next time). Stops after each record with
    /// plaintext so the session can make room. On an error rustls' alert, if it
    /// has one, is in the output.
    pub fn absorb(&mut self, into: &mut Ring, pool: &mut BufPool) -> Result<Absorbed, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("the TLS connection failed".into()));
        }
        if self.held_pos < self.held.len() {
            self.held_pos += into.push(&self.held[self.held_pos..]);
            if self.held_pos == self.held.len() {
                self.held = Vec::new();
                self.held_pos = 0;
            }
            return Ok(Absorbed::Plaintext);
        }
        loop {
            let TlsConn { conn, input, output, held, .. } = self;
            let UnbufferedStatus { discard, state } = conn.process_tls_records(input.filled_mut());
            let step = match state {
                Err(e) => {
                    input.discard(discard, pool);
                    self.queue_alert(pool);
                    return Err(e);
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut extra = 0;
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        extra += rec.discard;
                        let n = into.push(rec.payload);
                        held.extend_from_slice(&rec.payload[n..]);
                    }
                    input.discard(discard + extra, pool);
                    return Ok(Absorbed::Plaintext);
                }
                Ok(ConnectionState::ReadEarlyData(mut r)) => {
                    // Not offered (`max_early_data_size` is 0); read as application data.
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        let n = into.push(rec.payload);
                        held.extend_from_slice(&rec.payload[n..]);
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, output, pool);
                    None
                }
                // The records are in `output`; the next flush writes them, before anything
                // encrypted later.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Absorbed::PeerClosed),
                Ok(_) => Some(Absorbed::NeedInput),
            };
            input.discard(discard, pool);
            if step == Some(Absorbed::NeedInput) && input.is_full() {
                // A handshake message (or record) larger than the buffer: it cannot
                // complete, and nothing more fits.
                self.failed = true;
                return Err(rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge));
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// Encrypts as much of `plain` as one output buffer takes, in as few records as
    /// the bytes need: one slice is encrypted where it lies, several are gathered in
    /// `stage` (at least [`MAX_FRAGMENT`] bytes) first so small messages share records.
    /// Returns the plaintext bytes consumed (0 while handshaking or when the output
    /// buffer is full).
    pub fn seal(
        &mut self,
        plain: &[IoSlice<'_>],
        stage: &mut [u8],
        pool: &mut BufPool,
    ) -> Result<usize, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("the TLS connection failed".into()));
        }
        let mut used = 0;
        loop {
            let TlsConn { conn, input, output, held, .. } = self;
            let UnbufferedStatus { discard, state } = conn.process_tls_records(input.filled_mut());
            let done = match state {
                Err(e) => {
                    input.discard(discard, pool);
                    self.failed = true;
                    return Err(e);
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    used = encrypt_all(&mut w, plain, stage, output, pool)?;
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, output, pool);
                    false
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    false
                }
                // Records received while the session could not take them (reading is
                // paused): held for the next read, which the worker owes the connection.
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        held.extend_from_slice(rec?.payload);
                    }
                    false
                }
                Ok(ConnectionState::PeerClosed) => false,
                Ok(_) => true,
            };
            input.discard(discard, pool);
            if done {
                return Ok(used);
            }
        }
    }

    /// Plaintext is held (or ciphertext is buffered) that the session has not seen.
    pub fn has_pending_input(&self) -> bool {
        self.held_pos < self.held.len() || !self.input.is_empty()
    }

    /// Queues close_notify in the output (nothing before the handshake is done).
    pub fn close_notify(&mut self, pool: &mut BufPool) {
        if self.failed {
            return;
        }
        for _ in 0..8 {
            let TlsConn { conn, input, output, .. } = self;
            let UnbufferedStatus { discard, state } = conn.process_tls_records(input.filled_mut());
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let space = output.reserve(64, pool);
                    if let Ok(n) = w.queue_close_notify(space) {
                        output.commit(n);
                    }
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, output, pool);
                    false
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    false
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    // Too late for the session: dropped.
                    while r.next_record().is_some() {}
                    false
                }
                Ok(ConnectionState::PeerClosed) => false,
                Err(_) => {
                    self.failed = true;
                    true
                }
                _ => true,
            };
            input.discard(discard, pool);
            if done {
                return;
            }
        }
    }

    /// After an error: the one alert rustls queued, into the output. Called once:
    /// rustls hands out what it queued before it parses anything, but once that is
    /// out it would parse the bad bytes again.
    fn queue_alert(&mut self, pool: &mut BufPool) {
        self.failed = true;
        let TlsConn { conn, input, output, .. } = self;
        let UnbufferedStatus { state, .. } = conn.process_tls_records(input.filled_mut());
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            encode(&mut e, output, pool);
        }
    }

    /// Gives every lent buffer back (the connection is gone).
    pub fn release(mut self: Box<Self>, pool: &mut BufPool) {
        self.input.release(pool);
        self.output.release(pool);
    }
}

/// Copies one handshake record into the output, growing it past the pool's size if a
/// flight (a long certificate chain) needs that. Never leaves the record unencoded:
/// rustls has already handed it over.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Lent,
    pool: &mut BufPool,
) {
    let mut need = 0;
    loop {
        let space = out.reserve(need, pool);
        match e.encode(space) {
            Ok(n) => return out.commit(n),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > need => {
                need = required_size;
            }
            Err(_) => return,
        }
    }
}

/// Encrypts `plain` into `out` until it is all sealed or `out` is full; returns the
/// plaintext bytes sealed.
fn encrypt_all(
    w: &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    plain: &[IoSlice<'_>],
    stage: &mut [u8],
    out: &mut Lent,
    pool: &mut BufPool,
) -> Result<usize, rustls::Error> {
    let mut used = 0;
    let (mut i, mut off) = (0, 0);
    let total: usize = plain.iter().map(|s| s.len()).sum();
    while used < total {
        let space = out.reserve(0, pool);
        let records = space.len() / (MAX_FRAGMENT + RECORD_OVERHEAD) + 1;
        let room = space.len().saturating_sub(records * RECORD_OVERHEAD);
        if room == 0 {
            break;
        }
        // The next chunk: the rest of a slice that is the last one (or big enough to
        // fill records by itself) in place, else several slices gathered.
        while plain[i].len() == off {
            i += 1;
            off = 0;
        }
        let rest = &plain[i][off..];
        let chunk: &[u8] = if i + 1 == plain.len() || rest.len() >= MAX_FRAGMENT {
            &rest[..rest.len().min(room)]
        } else {
            let cap = stage.len().min(room);
            let (mut n, mut j, mut o) = (0, i, off);
            while n < cap && j < plain.len() {
                let s = &plain[j][o..];
                let k = s.len().min(cap - n);
                stage[n..n + k].copy_from_slice(&s[..k]);
                n += k;
                if k == s.len() {
                    j += 1;
                    o = 0;
                } else {
                    o += k;
                }
            }
            &stage[..n]
        };
        let len = chunk.len();
        match w.encrypt(chunk, space) {
            Ok(n) => out.commit(n),
            Err(EncryptError::InsufficientSize(_)) => break,
            Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
        }
        used += len;
        // Advance (i, off) by len.
        let mut left = len;
        while left > 0 {
            let k = (plain[i].len() - off).min(left);
            left -= k;
            off += k;
            if off == plain[i].len() && left > 0 {
                i += 1;
                off = 0;
            }
        }
    }
    Ok(used)
}

/// A buffer lent from the pool while it holds bytes: `buf[start..end]` is filled.
#[derive(Default)]
struct Lent {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Lent {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn is_full(&self) -> bool {
        self.buf.as_ref().is_some_and(|b| self.start == 0 && self.end == b.len())
    }

    fn filled(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.end],
            None => &[],
        }
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(b) => &mut b[self.start..self.end],
            None => &mut [],
        }
    }

    /// The free tail, after moving the filled bytes to the front.
    fn space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        self.reserve(0, pool)
    }

    /// The free tail, at least `need` bytes (the buffer grows beyond the pool's size
    /// if it must: a rare handshake flight).
    fn reserve(&mut self, need: usize, pool: &mut BufPool) -> &mut [u8] {
        let buf = self.buf.get_or_insert_with(|| pool.take().into_storage());
        if self.start > 0 && buf.len() - self.end < need.max(MAX_FRAGMENT) {
            buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if buf.len() - self.end < need {
            let mut bigger = vec![0u8; self.end + need].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&buf[..self.end]);
            *buf = bigger;
        }
        &mut buf[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end += n;
    }

    fn discard(&mut self, n: usize, pool: &mut BufPool) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
            self.give_back_if_empty(pool);
        }
    }

    fn give_back_if_empty(&mut self, pool: &mut BufPool) {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
            self.release(pool);
        }
    }

    fn release(&mut self, pool: &mut BufPool) {
        if let Some(b) = self.buf.take() {
            // A buffer grown for a long flight is freed rather than pooled.
            if b.len() == pool.ring_size() {
                pool.give(Ring::from_storage(b));
            }
        }
    }
}
