//! Accepting connections and handing them to workers (`AcceptMode::Handoff`), with a
//! pause when the process runs out of file descriptors.

use super::config::AcceptMode;
use super::conn::{Conn, Meta};
use super::handler::Handler;
use super::shared::Cmd;
use super::worker::Worker;
use crate::session::Session;
use mio::{Interest, Token};
use std::io;
use std::net::IpAddr;

/// Accepts per loop turn, so a connection storm cannot starve the connections already
/// open.
const MAX_ACCEPTS_PER_TURN: usize = 256;

/// errno values for "too many open files" (process, system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

impl<H: Handler> Worker<H> {
    pub(super) fn accept(&mut self) {
        self.accept_more = false;
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.dispatch(stream, addr.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    // Keep serving, retry accepting shortly.
                    if !self.fd_exhaustion_logged {
                        log::warn!(
                            "worker {}: out of file descriptors ({e}) with {} connections; pausing accept for {:?}",
                            self.ctx.id,
                            self.conns.len(),
                            self.ctx.cfg.accept_pause
                        );
                        self.fd_exhaustion_logged = true;
                    }
                    self.accept_paused_until =
                        Some(self.ctx.now_ns.saturating_add(self.ctx.cfg.accept_pause.as_nanos() as u64));
                    return;
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        self.accept_more = true;
    }

    /// Serves an accepted connection here, or with `AcceptMode::Handoff` on the next
    /// worker in turn.
    fn dispatch(&mut self, stream: mio::net::TcpStream, ip: IpAddr) {
        let n = self.ctx.shared.workers.len();
        if self.ctx.cfg.accept_mode == AcceptMode::Handoff && n > 1 {
            let target = self.next_worker % n;
            self.next_worker = (target + 1) % n;
            if target != self.ctx.id {
                self.ctx.shared.workers[target].send(Cmd::Adopt { stream, ip });
                return;
            }
        }
        self.adopt(stream, ip);
    }

    /// Takes on an accepted connection (counted in this worker's `accepted`).
    pub(super) fn adopt(&mut self, mut stream: mio::net::TcpStream, ip: IpAddr) {
        if self.drain_deadline.is_some() {
            // Handed over while this worker began to drain: refused by closing.
            self.ctx.metrics.refused(&super::gate::Refusal::Draining);
            return;
        }
        self.ctx.metrics.accepted.inc();
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= u32::MAX as usize - 4 {
            return;
        }
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            log::warn!("register: {e}");
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let now = self.ctx.now_tick;
        #[cfg(feature = "tls")]
        if let Some(cfg) = &self.ctx.cfg.tls {
            match crate::tls::TlsConn::new(cfg) {
                Ok(t) => {
                    let slots = &mut self.ctx.tls;
                    if slots.len() <= key {
                        slots.resize_with(key + 1, || None);
                    }
                    slots[key] = Some(t);
                }
                Err(e) => {
                    log::warn!("TLS: {e}");
                    let _ = self.poll.registry().deregister(&mut stream);
                    return;
                }
            }
        }
        let conn = entry.insert(Conn { session: Session::new(now), meta: Meta::new(stream, ip, generation) });
        self.fd_exhaustion_logged = false;
        self.ctx.arm_session(conn, key as u32);
    }
}
