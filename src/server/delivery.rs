//! A worker's inbox (connections handed over, publishes from other threads, shutdown)
//! and the delivery of published frames to its subscribers.

use super::handler::Handler;
use super::shared::Cmd;
use super::worker::Worker;
use std::sync::mpsc::TryRecvError;

/// Inbox messages handled per loop turn.
const MAX_INBOX_PER_TURN: usize = 4096;

impl<H: Handler> Worker<H> {
    // Out of the event loop's code: a wake-up is rare beside the reads it sits among.
    #[inline(never)]
    pub(super) fn drain_inbox(&mut self) {
        for _ in 0..MAX_INBOX_PER_TURN {
            match self.inbox.try_recv() {
                Ok(Cmd::Publish { topic, frame, seq }) => {
                    self.ctx.shared.workers[self.ctx.id].release_publish();
                    match seq {
                        None => self.deliver(&topic, &frame),
                        Some(seq) => self.deliver_numbered(&topic, &frame, seq),
                    }
                }
                Ok(Cmd::HistoryRead { topic, ok }) => self.history_read(&topic, ok),
                Ok(Cmd::Adopt { stream, ip }) => self.adopt(stream, ip),
                Ok(Cmd::Shutdown) => self.begin_drain(),
                Ok(Cmd::Stop) => self.stop = true,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
            }
        }
        // More left: come back next turn without waiting for a new wake-up.
        let _ = self.ctx.shared.workers[self.ctx.id].waker.wake();
    }

    #[inline(always)]
    pub(super) fn deliver_local_pubs(&mut self) {
        if !self.ctx.local_pubs.is_empty() {
            self.deliver_local_pubs_slow();
        }
    }

    fn deliver_local_pubs_slow(&mut self) {
        while !self.ctx.local_pubs.is_empty() {
            let pubs = std::mem::take(&mut self.ctx.local_pubs);
            for (topic, frame) in &pubs {
                self.deliver(topic, frame);
            }
        }
    }

    /// Queues `frame` for every local subscriber of `topic`. Subscribers that
    /// negotiated permessage-deflate get one compressed frame, made once for all of them
    /// on this worker (a prepared message); the others the plain one.
    fn deliver(&mut self, topic: &str, frame: &[u8]) {
        let Some(keys) = self.ctx.topics.take(topic) else {
            return;
        };
        #[cfg(feature = "deflate")]
        let mut compressed: Option<(u8, Vec<u8>)> = None;
        for &key in &keys {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                #[cfg(feature = "deflate")]
                {
                    // Compressed once for all, also for a connection with a dedicated
                    // context: a message made without that context is valid in any
                    // stream (RFC 7692 7.1.1.1), and one compression beats one per
                    // subscriber. But it lands in the client's window, between what
                    // the context has seen, so the context is dropped: the next send
                    // starts a new one.
                    if let Some(a) = conn.session.core().deflate() {
                        let bits = a.server_max_window_bits;
                        if let Some(z) = self.ctx.compressed_frame(frame, bits, &mut compressed) {
                            if a.server_context_takeover {
                                super::connection::forget_context(&mut self.ctx.dedicated, &self.ctx.metrics, key);
                            }
                            self.ctx.deliver(conn.session.core(), &mut conn.meta, key, z);
                            continue;
                        }
                    }
                }
                self.ctx.deliver(conn.session.core(), &mut conn.meta, key, frame);
            }
        }
        self.ctx.topics.restore(topic, keys);
    }
}
