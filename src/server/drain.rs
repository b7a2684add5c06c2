//! Shutdown: the graceful drain (close 1001 to every client, stop accepting) and the
//! immediate stop.

use super::handler::Handler;
use super::worker::Worker;
use crate::session::CloseCause;

impl<H: Handler> Worker<H> {
    pub(super) fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.ctx.clock_ns().saturating_add(self.ctx.cfg.drain_timeout.as_nanos() as u64));
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let ctx = &mut self.ctx;
            if conn.session.is_handshaking() {
                conn.session.handle_abort(CloseCause::ShuttingDown);
            } else {
                let c = CloseCause::ShuttingDown;
                conn.session.core().close(c, c.code(), c.reason(), &mut ctx.wpool, ctx.now_tick);
                ctx.mark_dirty(&mut conn.meta, key);
            }
            self.end(key);
        }
        self.flush_dirty();
    }

    pub(super) fn close_all(&mut self) {
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                conn.session.handle_abort(CloseCause::Stopped);
                self.end(key);
            }
        }
    }
}
