//! When broadcast output is written: at the end of the loop turn while the worker has
//! time to spare, batched across turns only while the worker is saturated.
//!
//! A fixed window (the old policy) makes every broadcast wait for it, even on an idle
//! worker; flushing every turn costs one write per subscriber per message when busy.
//! Here the worker reports how long each turn worked and how long it then sat in its
//! poll; over windows of `WINDOW_NS` that gives its busy share. Below `SATURATED_PCT` (it
//! has idle time, so writing every turn costs nothing anyone waits for) each broadcast
//! is written at the end of the turn it arrives in. At or above it, a broadcast waits
//! as long after the last batch's write as that write took, capped by
//! `Config::broadcast_coalesce`: batches grow with the load and writing takes about
//! half the worker's time. Waiting in the poll for a pending batch is the policy's own
//! doing and counts as neither work nor idleness, so a saturated worker stays
//! batching instead of mistaking its waits for spare time.

/// How much history the busy share is measured over.
const WINDOW_NS: u64 = 20_000_000;
/// Busy share (percent) from which the worker counts as saturated. Writing every turn
/// to 200 subscribers at 1000 publishes/s keeps a worker about 80% busy with windows
/// up to 90%; 1000 subscribers saturate it (98-99%).
const SATURATED_PCT: u64 = 95;

/// The broadcast batching policy of one worker, in the worker's clock (ns). No clock
/// is read here: the worker passes `now`, its time working and in the poll, and the
/// cost of each flush in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// The most any broadcast waits (`Config::broadcast_coalesce`).
    window_ns: u64,
    /// When the last batch was written, and how long that took.
    last: Option<(u64, u64)>,
    /// Time worked and time idle in the poll in the current measuring window.
    busy_ns: u64,
    idle_ns: u64,
    /// The last complete window's verdict.
    saturated: bool,
    /// The pending batch's deadline.
    due: Option<u64>,
}

impl Batching {
    pub fn new(window_ns: u64) -> Self {
        Batching { window_ns, last: None, busy_ns: 0, idle_ns: 0, saturated: false, due: None }
    }

    /// The worker spent `ns` blocked in its poll. Waiting for a pending batch's
    /// deadline is not idleness.
    pub fn polled(&mut self, ns: u64) {
        if self.due.is_none() {
            self.idle_ns = self.idle_ns.saturating_add(ns);
            self.close_window();
        }
    }

    /// The worker's last loop turn worked for `ns`.
    pub fn worked(&mut self, ns: u64) {
        self.busy_ns = self.busy_ns.saturating_add(ns);
        self.close_window();
    }

    fn close_window(&mut self) {
        let total = self.busy_ns.saturating_add(self.idle_ns);
        if total >= WINDOW_NS {
            self.saturated = self.busy_ns.saturating_mul(100) >= total.saturating_mul(SATURATED_PCT);
            self.busy_ns = 0;
            self.idle_ns = 0;
        }
    }

    /// Broadcast output was queued at `now`; returns when the batch must be written
    /// (`now` itself: at the end of this loop turn).
    pub fn queued(&mut self, now: u64) -> u64 {
        if let Some(due) = self.due {
            return due;
        }
        let due = match self.last {
            // Saturated: wait as long after the last batch's write as it took (at
            // most the window).
            Some((at, cost)) if self.saturated => now.max(at.saturating_add(cost.min(self.window_ns))),
            _ => now,
        };
        self.due = Some(due);
        due
    }

    /// The pending batch's deadline, if one is pending.
    pub fn due(&self) -> Option<u64> {
        self.due
    }

    /// The batch was written, ending at `now` after `cost` ns of writing.
    pub fn flushed(&mut self, now: u64, cost: u64) {
        self.due = None;
        self.last = Some((now, cost));
    }
}

#[cfg(test)]
mod tests {
    use super::{Batching, WINDOW_NS};

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    /// A window of turns that worked `busy` tenths of the time.
    fn load(b: &mut Batching, busy: u64) {
        b.worked(WINDOW_NS * busy / 10);
        b.polled(WINDOW_NS * (10 - busy) / 10);
    }

    #[test]
    fn an_idle_worker_writes_a_broadcast_in_the_turn_it_arrives() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(5 * MS), 5 * MS, "first broadcast ever: this turn");
        b.flushed(5 * MS + 20 * US, 20 * US);
        load(&mut b, 1);
        assert_eq!(b.queued(16 * MS), 16 * MS);
        b.flushed(16 * MS + 20 * US, 20 * US);
        // After a long quiet spell, the same.
        b.polled(494 * MS);
        assert_eq!(b.queued(500 * MS), 500 * MS);
    }

    #[test]
    fn a_worker_with_time_to_spare_does_not_batch_even_after_a_long_write() {
        // 200 subscribers: writing a broadcast takes 700 us of every 1 ms, and the
        // next publish often arrives while the write is going on. Busy 7 tenths.
        let mut b = Batching::new(2 * MS);
        load(&mut b, 7);
        b.flushed(10 * MS + 700 * US, 700 * US);
        assert_eq!(b.queued(10 * MS + 710 * US), 10 * MS + 710 * US, "written this turn");
    }

    #[test]
    fn a_saturated_worker_batches_what_arrives_while_it_would_be_writing() {
        let mut b = Batching::new(2 * MS);
        load(&mut b, 10);
        // Writing to 1000 subscribers took 1.5 ms.
        b.flushed(11 * MS + 500 * US, 1500 * US);
        // A publish 0.1 ms later waits until 1.5 ms after the flush.
        assert_eq!(b.queued(11 * MS + 600 * US), 13 * MS);
        // Waiting for the batch is not idleness; everything queued before it joins.
        b.polled(400 * US);
        assert_eq!(b.queued(12 * MS), 13 * MS);
        b.worked(50 * US);
        assert_eq!(b.queued(12 * MS + 900 * US), 13 * MS);
        assert_eq!(b.due(), Some(13 * MS));
        b.flushed(14 * MS + 500 * US, 1500 * US);
        // Still saturated after that batch: the next one waits too.
        assert_eq!(b.queued(14 * MS + 510 * US), 16 * MS);
    }

    #[test]
    fn the_verdict_follows_the_load_window_by_window() {
        let mut b = Batching::new(2 * MS);
        load(&mut b, 10);
        b.flushed(10 * MS, MS);
        assert_eq!(b.queued(10 * MS + 10 * US), 11 * MS, "saturated");
        b.flushed(11 * MS, MS);
        load(&mut b, 5);
        assert_eq!(b.queued(21 * MS), 21 * MS, "half busy: every turn again");
    }

    #[test]
    fn no_broadcast_waits_longer_than_the_window() {
        for cost in [0, 10 * US, MS, 2 * MS, 50 * MS, u64::MAX / 4] {
            for busy in [0, 5, 9, 10] {
                for gap in [0, US, MS, 3 * MS] {
                    let mut b = Batching::new(2 * MS);
                    load(&mut b, busy);
                    let at = 10 * MS;
                    b.flushed(at, cost);
                    let now = at + gap;
                    let due = b.queued(now);
                    assert!(due >= now, "never in the past");
                    assert!(due - now <= 2 * MS, "cost {cost} busy {busy} gap {gap}: waits {}", due - now);
                    // Joining a pending batch never waits longer than the batch's first frame.
                    assert_eq!(b.queued(now + US), due);
                }
            }
        }
    }

    #[test]
    fn a_zero_window_writes_every_turn() {
        let mut b = Batching::new(0);
        load(&mut b, 10);
        b.flushed(MS, MS);
        assert_eq!(b.queued(MS + 1), MS + 1);
    }
}
