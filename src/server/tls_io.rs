//! The wss:// path of the worker: ciphertext from the socket into rustls, plaintext out
//! of rustls into the same pooled rings and session calls as ws://, and the session's
//! output back through rustls. Chosen per worker (`Ctx::tls_on`: the main listener is all wss:// or all ws://), so the plain path
//! carries no TLS checks beyond the one branch that picks this file.

use super::conn::Conn;
use super::connection::Ctx;
use super::handler::Handler;
use super::sock::Sock;
use super::worker::Worker;
use crate::session::{Flushed, ReadTarget, MAX_TRANSMIT_SLICES};
use crate::tls::{TlsConn, TlsFailure};
use std::io::{self, IoSlice, Write};

/// What pulling plaintext out of rustls ended with.
enum Plain {
    /// All there was went to the session.
    Drained,
    /// The session stopped reading (backpressure); rustls keeps the rest.
    Paused,
    /// The peer's close_notify: no more data.
    Closed,
    /// The connection is gone or ended.
    Gone,
}

impl<H: Handler> Worker<H> {
    /// `read()` for a TLS connection: read until the socket would block, each read's
    /// records processed and their plaintext handed to the session at once.
    pub(super) fn read_tls(&mut self, key: u32, _to_end: bool) {
        loop {
            // Plaintext rustls still holds (reading was paused) goes first: rustls
            // refuses more ciphertext while its plaintext buffer is full.
            match self.pump_plaintext(key) {
                Plain::Drained => {}
                Plain::Paused | Plain::Gone => return,
                Plain::Closed => {
                    self.on_eof(key);
                    return;
                }
            }
            let Worker { conns, ctx, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return;
            };
            let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) else {
                return;
            };
            let handshaking = t.tls.is_handshaking();
            let failed = |ctx: &mut Ctx, r: TlsFailure| {
                if handshaking {
                    ctx.metrics.tls_failures[r.index()].inc();
                }
            };
            match t.tls.read_tls(&mut Sock(&conn.meta.stream)) {
                Ok(0) => {
                    failed(ctx, TlsFailure::Eof);
                    let _ = self.pump_plaintext(key);
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    ctx.metrics.bytes_in.add(n as u64);
                    if let Err(e) = t.tls.process_new_packets() {
                        // rustls queued the alert: write it, then drop the connection.
                        let _ = t.tls.write_tls(&mut Sock(&conn.meta.stream));
                        let reason = TlsFailure::of(&e);
                        log::debug!("TLS from {}: {e} ({})", conn.meta.ip(), reason.label());
                        // Counted after the handshake too: a refused renegotiation (rustls
                        // answers no_renegotiation, the client's fatal alert follows) is a
                        // handshake that failed.
                        ctx.metrics.tls_failures[reason.index()].inc();
                        conn.session.handle_reset();
                        self.end(key);
                        return;
                    }
                    if t.tls.wants_write() {
                        // Handshake records to send.
                        ctx.mark_dirty(&mut conn.meta, key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("TLS read: {e}");
                    let r = if e.kind() == io::ErrorKind::InvalidData { TlsFailure::Other } else { TlsFailure::Eof };
                    failed(ctx, r);
                    conn.session.handle_reset();
                    self.end(key);
                    return;
                }
            }
        }
    }

    /// Moves the plaintext rustls has decrypted into the session, through the scratch
    /// ring or the connection's own, as `read()` does with socket bytes.
    fn pump_plaintext(&mut self, key: u32) -> Plain {
        loop {
            let Worker { conns, ctx, handler, scratch, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return Plain::Gone;
            };
            let use_scratch = match conn.session.read_target() {
                ReadTarget::Paused => {
                    conn.meta.maybe_readable = true;
                    return Plain::Paused;
                }
                ReadTarget::Scratch => true,
                ReadTarget::Own => false,
            };
            let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) else {
                return Plain::Gone;
            };
            let ring = if use_scratch { &mut *scratch } else { conn.session.input_ring(&mut ctx.rpool) };
            if ring.free() == 0 {
                log::error!("read buffer full without progress; dropping connection");
                conn.session.handle_reset();
                self.end(key);
                return Plain::Gone;
            }
            match ring.read_from(&mut t.tls.reader()) {
                Ok(0) => return Plain::Closed,
                Ok(_) => {
                    conn.session.handle_received(ctx.now_tick);
                    if use_scratch {
                        Self::decode(scratch, conn, ctx, handler, key);
                        if !scratch.is_empty() {
                            let ring = std::mem::replace(scratch, ctx.rpool.take());
                            conn.session.keep_leftover(ring, &mut ctx.rpool);
                        }
                    } else {
                        self.process(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Plain::Drained,
                // The socket's EOF without close_notify: the caller sees it too.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Plain::Drained,
                Err(e) => {
                    log::debug!("TLS: {e}");
                    return Plain::Closed;
                }
            }
        }
    }
}

/// `write_out()` for a TLS connection: first the records rustls holds, then the
/// session's bytes, all its slices in one `write_vectored` (rustls fills each record
/// across the slices), then those records, until all is written or the socket would
/// block.
pub(super) fn write_out_tls<S: Default>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32) -> io::Result<Flushed> {
    let Some(mut t) = ctx.tls.get_mut(key as usize).and_then(Option::take) else {
        return Err(io::ErrorKind::NotConnected.into());
    };
    let res = write_records(conn, ctx, &mut t);
    ctx.tls[key as usize] = Some(t);
    res
}

fn write_records<S: Default>(conn: &mut Conn<S>, ctx: &mut Ctx, t: &mut TlsConn) -> io::Result<Flushed> {
    let Conn { session, meta } = conn;
    let mut total = 0u64;
    let res = loop {
        // Ciphertext first: the session's bytes are consumed only once rustls has room.
        let mut blocked = None;
        while t.tls.wants_write() {
            match t.tls.write_tls(&mut Sock(&meta.stream)) {
                Ok(0) => {
                    blocked = Some(Err(io::ErrorKind::WriteZero.into()));
                    break;
                }
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = Some(Ok(Flushed::Pending));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    blocked = Some(Err(e));
                    break;
                }
            }
        }
        if let Some(r) = blocked {
            break r;
        }
        if let Some(owed) = t.owed.take() {
            break Ok(owed);
        }
        let done = if session.is_open() { Flushed::Empty } else { Flushed::Written };
        if t.tls.is_handshaking() {
            break Ok(done);
        }
        let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        let k = session.poll_transmit(&mut iov);
        if k == 0 {
            break Ok(done);
        }
        let n = match t.tls.writer().write_vectored(&iov[..k]) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            if t.tls.wants_write() {
                // rustls is full; its records go out on the next round.
                continue;
            }
            break Err(io::ErrorKind::WriteZero.into());
        }
        match session.consume(n, &mut ctx.wpool, ctx.now_tick) {
            Flushed::Pending => {}
            // Owed until the records are written.
            done => t.owed = Some(done),
        }
    };
    ctx.metrics.bytes_out.add(total);
    res
}

/// Sends close_notify before the write side shuts (the session's close or refusal is
/// written by then).
pub(super) fn close_notify<S>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32) {
    if let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) {
        t.tls.send_close_notify();
        while t.tls.wants_write() {
            match t.tls.write_tls(&mut Sock(&conn.meta.stream)) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }
}
