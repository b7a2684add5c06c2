//! The wss:// path of the worker: ciphertext from the socket into the connection's
//! TLS layer (`tls::layer`), its plaintext into the same pooled rings and session
//! calls as ws://, and the session's output back through it. Chosen per worker
//! (`Ctx::tls_on`: the main listener is all wss:// or all ws://), so the plain path
//! carries no TLS checks beyond the one branch that picks this file.

use super::conn::Conn;
use super::connection::Ctx;
use super::handler::Handler;
use super::sock::Sock;
use super::worker::Worker;
use crate::buf::BufPool;
use crate::session::{Flushed, ReadTarget, MAX_TRANSMIT_SLICES};
use crate::tls::layer::Absorbed;
use crate::tls::{TlsConn, TlsFailure};
use std::io::{self, IoSlice, Read, Write};

impl<H: Handler> Worker<H> {
    /// `read()` for a TLS connection: read until the socket would block, each read's
    /// records processed and their plaintext handed to the session at once. Never
    /// inlined: kept out of `read()`, whose plain path it would otherwise crowd (13
    /// instructions per echoed ws:// message, measured with callgrind).
    #[inline(never)]
    pub(super) fn read_tls(&mut self, key: u32, _to_end: bool) {
        loop {
            if !self.absorb_tls(key) {
                return;
            }
            let Worker { conns, ctx, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return;
            };
            let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) else {
                return;
            };
            conn.meta.maybe_readable = false;
            let handshaking = t.is_handshaking();
            let failed = |ctx: &mut Ctx, r: TlsFailure| {
                if handshaking {
                    ctx.metrics.tls_failures[r.index()].inc();
                }
            };
            match Sock(&conn.meta.stream).read(t.input_space(&mut ctx.tls_pool)) {
                Ok(0) => {
                    t.settle(&mut ctx.tls_pool);
                    failed(ctx, TlsFailure::Eof);
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    t.commit_input(n);
                    ctx.metrics.bytes_in.add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.settle(&mut ctx.tls_pool);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("TLS read: {e}");
                    failed(ctx, TlsFailure::Eof);
                    conn.session.handle_reset();
                    self.end(key);
                    return;
                }
            }
        }
    }

    /// Runs the TLS layer over what has been received, handing each record's
    /// plaintext to the session (through the scratch ring or the connection's own, as
    /// `read()` does with socket bytes) until it needs more from the socket: `true`.
    /// `false`: reading stops (paused, closed or failed).
    fn absorb_tls(&mut self, key: u32) -> bool {
        loop {
            let Worker { conns, ctx, handler, scratch, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return false;
            };
            let use_scratch = match conn.session.read_target() {
                ReadTarget::Paused => {
                    conn.meta.maybe_readable = true;
                    return false;
                }
                ReadTarget::Scratch => true,
                ReadTarget::Own => false,
            };
            let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) else {
                return false;
            };
            let ring = if use_scratch { &mut *scratch } else { conn.session.input_ring(&mut ctx.rpool) };
            if ring.free() == 0 {
                log::error!("read buffer full without progress; dropping connection");
                conn.session.handle_reset();
                self.end(key);
                return false;
            }
            let res = t.absorb(ring, &mut ctx.tls_pool);
            if res.is_err() {
                // rustls queued its alert: written now, the connection is dropped below.
                let _ = send_sealed(&conn.meta.stream, t, &mut ctx.tls_pool);
            }
            if !t.output().is_empty() {
                // Handshake records (or an alert) to send.
                ctx.mark_dirty(&mut conn.meta, key);
            }
            match res {
                Ok(Absorbed::NeedInput) => return true,
                Ok(Absorbed::Plaintext) => {
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
                Ok(Absorbed::PeerClosed) => {
                    self.on_eof(key);
                    return false;
                }
                Err(e) => {
                    let reason = TlsFailure::of(&e);
                    log::debug!("TLS from {}: {e} ({})", conn.meta.ip(), reason.label());
                    // Counted after the handshake too: a refused renegotiation (rustls
                    // answers no_renegotiation, the client's fatal alert follows) is a
                    // handshake that failed.
                    ctx.metrics.tls_failures[reason.index()].inc();
                    conn.session.handle_reset();
                    self.end(key);
                    return false;
                }
            }
        }
    }
}

/// `write_out()` for a TLS connection: first the records already sealed, then the
/// session's bytes sealed into as few records as they need (all its slices at once)
/// and written with one system call per buffer, until all is written or the socket
/// would block. Never inlined, for the same reason as `read_tls`.
#[inline(never)]
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
        // Sealed records first: the session's bytes are consumed only once sealed.
        match send_sealed(&meta.stream, t, &mut ctx.tls_pool) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Pending),
            Err(e) => break Err(e),
        }
        if !t.output().is_empty() {
            // Written in part: the socket is full.
            break Ok(Flushed::Pending);
        }
        if let Some(owed) = t.owed.take() {
            break Ok(owed);
        }
        let done = if session.is_open() { Flushed::Empty } else { Flushed::Written };
        if t.is_handshaking() {
            break Ok(done);
        }
        let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        let k = session.poll_transmit(&mut iov);
        if k == 0 {
            break Ok(done);
        }
        let n = match t.seal(&iov[..k], &mut ctx.tls_stage, &mut ctx.tls_pool) {
            Ok(n) => n,
            Err(e) => break Err(io::Error::other(e)),
        };
        if t.has_pending_input() {
            // Sealing processed records the session could not take yet: the read that
            // resumes it (after the drain) picks them up.
            meta.maybe_readable = true;
        }
        if n == 0 {
            if !t.output().is_empty() {
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
/// written by then). Never inlined, as `read_tls`.
#[inline(never)]
pub(super) fn close_notify<S>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32) {
    if let Some(t) = ctx.tls.get_mut(key as usize).and_then(|t| t.as_deref_mut()) {
        t.close_notify(&mut ctx.tls_pool);
        let _ = send_sealed(&conn.meta.stream, t, &mut ctx.tls_pool);
    }
}

/// Writes the sealed records until they are all written or the socket takes no more;
/// returns the bytes written (`WouldBlock` only when nothing was).
fn send_sealed(stream: &mio::net::TcpStream, t: &mut TlsConn, pool: &mut BufPool) -> io::Result<u64> {
    let mut total = 0u64;
    while !t.output().is_empty() {
        match Sock(stream).write(t.output()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n as u64;
                t.wrote(n, pool);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
