//! Clients with offsets (`wsloop.v1`) on one worker: live messages through each room's
//! [`Cursor`], and replay from history, one bounded batch at a time while the
//! connection's queue is below half its backpressure limit. Nothing here waits: a read
//! of a shared history (Redis) is asked of the bridge, and the connection goes on
//! when `Cmd::HistoryRead` arrives.

use super::conn::{Conn, Meta};
use super::connection::Ctx;
use super::handler::Handler;
use super::history::{Entry, Lost, Read, Seq};
use super::protocol_v1;
use super::recovery::{Cursor, LiveStep, ReadStep};
use super::worker::Worker;
use crate::proto::frame::OpCode;

/// Frame bytes of history one connection is handed per read.
const READ_BYTES: usize = 64 << 10;
/// Frame bytes of history a worker hands out per loop turn, over all connections.
const TURN_BYTES: usize = 8 << 20;

impl Ctx {
    /// Subscribes with a cursor: live from the room's newest message, or replaying
    /// after `since`.
    pub fn subscribe_numbered(&mut self, meta: &mut Meta, key: u32, topic: &str, since: Option<Seq>) {
        self.subscribe(meta, key, topic);
        let Some(history) = &self.shared.history else { return };
        // Read after subscribing: from here on this worker gets every new message.
        let head = history.lock().unwrap_or_else(|e| e.into_inner()).head(topic, super::clock::monotonic_ns());
        if let Some(c) = meta.topics.as_mut().and_then(|t| t.cursor(topic)) {
            *c = Cursor::start(head, since);
        }
        if since.is_some() {
            self.list_replay(meta, key);
        }
    }

    fn list_replay(&mut self, meta: &mut Meta, key: u32) {
        if let Some(t) = meta.topics.as_mut() {
            if !t.replay_listed {
                t.replay_listed = true;
                self.replaying.push(key);
            }
        }
    }

    /// Queues a text message of the protocol (`r`, `l`).
    fn notice(&mut self, conn: &mut crate::session::Core, meta: &mut Meta, key: u32, text: &str) {
        let sent = conn.send(OpCode::Text, text.as_bytes(), &self.scfg, &mut self.wpool, self.now_tick);
        let _ = self.sent(conn, meta, key, sent, true);
    }
}

/// Where a connection's replay stands after a pump.
enum Pump {
    /// No room is replaying any more.
    Done,
    /// Some room still is (waiting for the socket, the budget or a history read).
    Listed,
}

impl<H: Handler> Worker<H> {
    /// A numbered message for `topic`: each subscriber's cursor decides.
    #[inline(never)]
    pub(super) fn deliver_numbered(&mut self, topic: &str, frame: &[u8], seq: Seq) {
        let Some(keys) = self.ctx.topics.take(topic) else {
            return;
        };
        let mut v1: Option<Vec<u8>> = None;
        #[cfg(feature = "deflate")]
        let mut compressed: Option<(u8, Vec<u8>)> = None;
        for &key in &keys {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let Some(cursor) = conn.meta.topics.as_mut().and_then(|t| t.cursor(topic)) else { continue };
            let bare = *cursor == Cursor::Bare;
            let step = cursor.on_live(seq);
            let ctx = &mut self.ctx;
            let core = conn.session.core();
            match step {
                LiveStep::Skip => {}
                LiveStep::Behind => ctx.list_replay(&mut conn.meta, key),
                LiveStep::Deliver if bare => {
                    // As `Worker::deliver`: compressed once for all; a dedicated context
                    // is dropped, the message having been made without it.
                    #[cfg(feature = "deflate")]
                    if let Some(a) = core.deflate() {
                        if let Some(z) = ctx.compressed_frame(frame, a.server_max_window_bits, &mut compressed) {
                            if a.server_context_takeover {
                                super::connection::forget_context(&mut ctx.dedicated, &ctx.metrics, key);
                            }
                            ctx.deliver(core, &mut conn.meta, key, z);
                            continue;
                        }
                    }
                    ctx.deliver(core, &mut conn.meta, key, frame);
                }
                LiveStep::Deliver | LiveStep::NewEpoch => {
                    if step == LiveStep::NewEpoch {
                        let before = Seq { offset: seq.offset - 1, epoch: seq.epoch };
                        ctx.notice(core, &mut conn.meta, key, &protocol_v1::lost(topic, before, Lost::Epoch));
                    }
                    let f = v1.get_or_insert_with(|| protocol_v1::data_frame(topic, seq, frame));
                    if !ctx.deliver(core, &mut conn.meta, key, f) {
                        // Over the backpressure limit: served from history once it drains.
                        if let Some(c) = conn.meta.topics.as_mut().and_then(|t| t.cursor(topic)) {
                            c.dropped(seq);
                        }
                        ctx.list_replay(&mut conn.meta, key);
                    }
                }
            }
        }
        self.ctx.topics.restore(topic, keys);
    }

    /// Hands each listed connection its next batch of history (once per loop turn).
    #[inline(never)]
    pub(super) fn pump_replays(&mut self) {
        let list = std::mem::take(&mut self.ctx.replaying);
        let mut budget = TURN_BYTES;
        let mut out = Vec::new();
        for &key in &list {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if !conn.meta.topics.as_ref().is_some_and(|t| t.replay_listed) {
                continue;
            }
            match pump_conn(&mut self.ctx, conn, key, &mut budget, &mut out) {
                Pump::Done => {
                    if let Some(t) = conn.meta.topics.as_mut() {
                        t.replay_listed = false;
                    }
                }
                Pump::Listed => self.ctx.replaying.push(key),
            }
        }
    }

    /// A read of `topic`'s shared history is in: its waiting connections go on (or,
    /// when it failed, are told and go live).
    #[inline(never)]
    pub(super) fn history_read(&mut self, topic: &str, ok: bool) {
        let failed = match (&self.ctx.shared.history, ok) {
            (Some(h), false) => Some(h.lock().unwrap_or_else(|e| e.into_inner()).unavailable(topic)),
            _ => None,
        };
        for i in 0..self.ctx.replaying.len() {
            let key = self.ctx.replaying[i];
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let Some(c) = conn.meta.topics.as_mut().and_then(|t| t.cursor(topic)) else { continue };
            if !matches!(c, Cursor::Replaying { waiting: true, .. }) {
                continue;
            }
            c.filled();
            if let Some(read) = &failed {
                if let ReadStep::Lost(seq, why) = c.on_read(read, 0) {
                    let text = protocol_v1::lost(topic, seq, why);
                    self.ctx.notice(conn.session.core(), &mut conn.meta, key, &text);
                }
            }
        }
    }
}

/// Serves each replaying room of one connection while its queue has room.
fn pump_conn<S: Default>(
    ctx: &mut Ctx,
    conn: &mut Conn<S>,
    key: u32,
    budget: &mut usize,
    out: &mut Vec<Entry>,
) -> Pump {
    let Some(history) = ctx.shared.history.as_ref().map(|_| ctx.shared.clone()) else {
        return Pump::Done;
    };
    if !conn.session.core().is_open() {
        return Pump::Done;
    }
    let cap = ctx.cfg.max_backpressure;
    let rooms = conn.meta.topics.as_ref().map_or(0, |t| t.names.len());
    let mut listed = false;
    for i in 0..rooms {
        loop {
            let Some(t) = conn.meta.topics.as_mut() else { return Pump::Done };
            let (Some(topic), Some(&cursor)) = (t.names.get(i).cloned(), t.cursors.get(i)) else { break };
            let Cursor::Replaying { next, epoch, waiting, .. } = cursor else { break };
            let core = conn.session.core();
            let room = (cap / 2).saturating_sub(core.buffered());
            if waiting || room == 0 || *budget == 0 {
                listed = true;
                break;
            }
            out.clear();
            let read = {
                let store = history.history.as_ref().expect("checked above");
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                let bridge = history.bridge.get();
                let mut fill = |room: &str| bridge.is_some_and(|b| b.read_history(room));
                let max = READ_BYTES.min(room).min(*budget);
                store.read(&topic, Seq { offset: next, epoch }, max, out, super::clock::monotonic_ns(), &mut fill)
            };
            let read_epoch = match read {
                Read::Batch { epoch, .. } => epoch,
                _ => epoch,
            };
            let mut sent = 0;
            for e in out.iter() {
                let f = protocol_v1::data_frame(&topic, Seq { offset: e.offset, epoch: read_epoch }, &e.frame);
                *budget = budget.saturating_sub(f.len());
                if !ctx.deliver(core, &mut conn.meta, key, &f) {
                    break;
                }
                sent += 1;
            }
            let Some(c) = conn.meta.topics.as_mut().and_then(|t| t.cursors.get_mut(i)) else { break };
            if sent < out.len() {
                // The queue filled after all: go on from the first one not queued.
                *c = Cursor::Replaying { next: next + sent as u64, epoch: read_epoch, why: Lost::Slow, waiting: false };
                listed = true;
                break;
            }
            let step = c.on_read(&read, sent);
            let text = match step {
                ReadStep::More => continue,
                ReadStep::Wait => {
                    listed = true;
                    break;
                }
                ReadStep::Recovered(seq) => protocol_v1::recovered(&topic, seq),
                ReadStep::Lost(seq, why) => protocol_v1::lost(&topic, seq, why),
            };
            ctx.notice(conn.session.core(), &mut conn.meta, key, &text);
            break;
        }
    }
    if listed {
        Pump::Listed
    } else {
        Pump::Done
    }
}
