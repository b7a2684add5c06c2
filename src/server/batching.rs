//! When broadcast output is written: at the end of the loop turn while the worker is
//! idle, batched across turns only while the worker is saturated.
//!
//! A fixed window (the old policy) makes every broadcast wait for it, even on an idle
//! worker; flushing every turn costs one write per subscriber per message when busy.
//! Here a broadcast waits only if the worker has not been idle since it wrote the last
//! batch (the next publishes were already waiting when that write ended): then it
//! waits as long after that write as the write took, capped by
//! `Config::broadcast_coalesce`, so batches grow with the load and writing takes at
//! most about half the worker's time. A worker that blocked in its poll since the last
//! batch (a quiet spell, however short the write was) writes the broadcast in the turn
//! it arrives, so moderate load pays no latency for batching.

/// Time blocked in the poll, since the last batch was written, that makes a quiet
/// spell: more than a poll that finds events already waiting takes.
const QUIET_NS: u64 = 20_000;

/// The broadcast batching policy of one worker, in the worker's clock (ns). No clock
/// is read here: the worker passes `now`, its time in the poll and the cost of each
/// flush in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// The most any broadcast waits (`Config::broadcast_coalesce`).
    window_ns: u64,
    /// When the last batch was written, and how long that took.
    last: Option<(u64, u64)>,
    /// Time blocked in the poll with no batch pending, since the last batch.
    idle_ns: u64,
    /// The pending batch's deadline.
    due: Option<u64>,
}

impl Batching {
    pub fn new(window_ns: u64) -> Self {
        Batching { window_ns, last: None, idle_ns: 0, due: None }
    }

    /// The worker spent `ns` blocked in its poll. Waiting for a pending batch's
    /// deadline is the policy's own doing, not idleness.
    pub fn polled(&mut self, ns: u64) {
        if self.due.is_none() {
            self.idle_ns = self.idle_ns.saturating_add(ns);
        }
    }

    /// Broadcast output was queued at `now`; returns when the batch must be written
    /// (`now` itself: at the end of this loop turn).
    pub fn queued(&mut self, now: u64) -> u64 {
        if let Some(due) = self.due {
            return due;
        }
        let due = match self.last {
            // Saturated: this publish was waiting when the last batch's write ended,
            // which took `cost`. Wait as long after it (at most the window).
            Some((at, cost)) if self.idle_ns < QUIET_NS => now.max(at.saturating_add(cost.min(self.window_ns))),
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
        self.idle_ns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Batching;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    #[test]
    fn an_idle_worker_writes_a_broadcast_in_the_turn_it_arrives() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(5 * MS), 5 * MS, "first broadcast ever: this turn");
        b.flushed(5 * MS + 20 * US, 20 * US);
        // The next publish comes 1 ms later, after the worker blocked in its poll.
        b.polled(980 * US);
        assert_eq!(b.queued(6 * MS), 6 * MS);
        b.flushed(6 * MS + 20 * US, 20 * US);
        // After a long quiet spell, the same.
        b.polled(494 * MS);
        assert_eq!(b.queued(500 * MS), 500 * MS);
    }

    #[test]
    fn a_busy_worker_batches_what_arrives_while_it_would_be_writing() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(0), 0);
        // Writing to 1000 subscribers took 1.5 ms, and the next publish was already
        // waiting: the poll found it at once (2 us in the poll).
        b.flushed(1500 * US, 1500 * US);
        b.polled(2 * US);
        // It waits until 1.5 ms after the flush.
        assert_eq!(b.queued(1600 * US), 3 * MS);
        // Everything queued before then joins the same batch; waiting for it in the
        // poll is not a quiet spell.
        b.polled(400 * US);
        assert_eq!(b.queued(2 * MS), 3 * MS);
        b.polled(900 * US);
        assert_eq!(b.queued(2900 * US), 3 * MS);
        assert_eq!(b.due(), Some(3 * MS));
        b.flushed(4500 * US, 1500 * US);
        // Still saturated after that batch: the next one waits too.
        assert_eq!(b.queued(4510 * US), 6 * MS);
    }

    #[test]
    fn a_quiet_spell_after_a_long_write_writes_at_once() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(0), 0);
        // A slow write (900 us to 200 subscribers), then the worker blocked 100 us in
        // its poll before the next publish: moderate load, no batching.
        b.flushed(900 * US, 900 * US);
        b.polled(100 * US);
        assert_eq!(b.queued(MS), MS);
    }

    #[test]
    fn no_broadcast_waits_longer_than_the_window() {
        for cost in [0, 10 * US, MS, 2 * MS, 50 * MS, u64::MAX / 4] {
            for (gap, idle) in [(0, 0), (US, 0), (MS, 0), (MS, MS), (3 * MS, 0), (3 * MS, 30 * US)] {
                let mut b = Batching::new(2 * MS);
                let at = 10 * MS;
                b.flushed(at, cost);
                b.polled(idle);
                let now = at + gap;
                let due = b.queued(now);
                assert!(due >= now, "never in the past");
                assert!(due - now <= 2 * MS, "cost {cost} gap {gap}: waits {}", due - now);
                // Joining a pending batch never waits longer than the batch's first frame.
                assert_eq!(b.queued(now + US), due);
            }
        }
    }

    #[test]
    fn a_zero_window_writes_every_turn() {
        let mut b = Batching::new(0);
        b.flushed(MS, MS);
        b.polled(0);
        assert_eq!(b.queued(MS + 1), MS + 1);
    }
}
