//! Timer dispatch: the connections' session deadlines and the application's timers,
//! as the worker's wheel expires them.

use super::connection::{Connection, TimerEvent};
use super::handler::Handler;
use super::metrics::TimeoutKind;
use super::worker::Worker;
use crate::session::Timeout;

/// Expired timers handled per loop turn, so one busy source cannot starve the others.
const MAX_TIMERS_PER_TURN: usize = 8192;

impl<H: Handler> Worker<H> {
    pub(super) fn run_timers(&mut self) {
        let now = self.ctx.now_tick as u64;
        let mut expired = std::mem::take(&mut self.expired);
        self.ctx.wheel.advance(now, MAX_TIMERS_PER_TURN, &mut expired);
        for (id, ev) in expired.drain(..) {
            match ev {
                TimerEvent::Conn { key, generation } => {
                    let Some(conn) = self.conns.get_mut(key as usize) else {
                        continue;
                    };
                    if conn.meta.generation != generation || conn.meta.timer != Some(id) {
                        continue;
                    }
                    conn.meta.timer = None;
                    self.timeout(key);
                }
                #[cfg(feature = "deflate")]
                TimerEvent::DeflateSweep => self.sweep_dedicated(),
                TimerEvent::App { key, generation, slot } => {
                    let Worker { conns, ctx, handler, .. } = self;
                    let token = ctx.app_tokens.remove(slot as usize);
                    let Some(conn) = conns.get_mut(key as usize) else {
                        continue;
                    };
                    if conn.meta.generation != generation || !conn.session.is_open() {
                        continue;
                    }
                    if let Some((core, user)) = conn.session.parts() {
                        let mut c = Connection { core, ctx: &mut *ctx, meta: &mut conn.meta, key };
                        handler.on_timer(&mut c, user, token);
                    }
                }
            }
        }
        self.expired = expired;
    }

    /// The connection's deadline came: the session decides what it means.
    fn timeout(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let ctx = &mut self.ctx;
        let fired = conn.session.handle_timeout(&ctx.scfg, &mut ctx.wpool, ctx.now_tick);
        let kind = match fired {
            Some(Timeout::Handshake) => Some(TimeoutKind::Handshake),
            Some(Timeout::Idle) => Some(TimeoutKind::Idle),
            Some(Timeout::Close) => Some(TimeoutKind::Close),
            Some(Timeout::WriteStall) => Some(TimeoutKind::WriteStall),
            Some(Timeout::Pinged) | None => None,
        };
        #[cfg(feature = "tls")]
        if kind == Some(TimeoutKind::Handshake)
            && ctx.tls.get(key as usize).and_then(|t| t.as_ref()).is_some_and(|t| t.is_handshaking())
        {
            ctx.metrics.tls_failures[crate::tls::TlsFailure::Timeout.index()].inc();
        }
        if let Some(kind) = kind {
            ctx.metrics.timeout(kind);
            let ip = conn.meta.ip();
            log::debug!(peer:% = ip, timeout = kind.label(); "connection from {ip}: {} timeout", kind.label());
        }
        if conn.session.buffered() > 0 {
            // Written now, not with the rest of the turn's output: until it is written a
            // ping holds a pooled ring, and the thousands of connections pinged in one
            // tick would each take one, most newly allocated.
            conn.meta.dirty = false;
            self.flush(key);
        }
        self.end(key);
    }
}
