//! When broadcast output is written: at the end of the loop turn while the worker is
//! idle, batched across turns only while writing batches keeps it busy.
//!
//! A fixed window (the old policy) makes every broadcast wait for it, even on an idle
//! worker; flushing every turn costs one write per subscriber per message when busy.
//! Here the wait after a flush is what that flush cost, capped by
//! `Config::broadcast_coalesce`: a worker that spends as long writing a batch as the
//! gap before the next publish batches (halving its writes), one that writes quickly
//! flushes each broadcast in the turn it arrives.

/// The broadcast batching policy of one worker, in the worker's clock (ns). No clock
/// is read here: the worker passes `now` and the cost of each flush in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// The most any broadcast waits (`Config::broadcast_coalesce`).
    window_ns: u64,
    /// When the last batch was written, and how long that took.
    last: Option<(u64, u64)>,
    /// The pending batch's deadline.
    due: Option<u64>,
}

impl Batching {
    pub fn new(window_ns: u64) -> Self {
        Batching { window_ns, last: None, due: None }
    }

    /// Broadcast output was queued at `now`; returns when the batch must be written
    /// (`now` itself: at the end of this loop turn).
    pub fn queued(&mut self, now: u64) -> u64 {
        if let Some(due) = self.due {
            return due;
        }
        let due = match self.last {
            // Writing the last batch took `cost`: wait as long after it (at most the
            // window), so at most about half the worker's time goes to broadcast writes
            // and the batches grow with the load.
            Some((at, cost)) => now.max(at.saturating_add(cost.min(self.window_ns))),
            None => now,
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
    use super::Batching;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    #[test]
    fn an_idle_worker_writes_a_broadcast_in_the_turn_it_arrives() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(5 * MS), 5 * MS, "first broadcast ever: this turn");
        b.flushed(5 * MS + 20 * US, 20 * US);
        // The next publish comes 1 ms later; the last flush took 20 us: no wait.
        assert_eq!(b.queued(6 * MS), 6 * MS);
        b.flushed(6 * MS + 20 * US, 20 * US);
        // After a quiet spell, the same.
        assert_eq!(b.queued(500 * MS), 500 * MS);
    }

    #[test]
    fn a_busy_worker_batches_what_arrives_while_it_would_be_writing() {
        let mut b = Batching::new(2 * MS);
        assert_eq!(b.queued(0), 0);
        // Writing to 1000 subscribers took 1.5 ms.
        b.flushed(1500 * US, 1500 * US);
        // A publish 0.1 ms later waits until 1.5 ms after the flush.
        assert_eq!(b.queued(1600 * US), 3 * MS);
        // Everything queued before then joins the same batch.
        assert_eq!(b.queued(2 * MS), 3 * MS);
        assert_eq!(b.queued(2900 * US), 3 * MS);
        assert_eq!(b.due(), Some(3 * MS));
    }

    #[test]
    fn no_broadcast_waits_longer_than_the_window() {
        for cost in [0, 10 * US, MS, 2 * MS, 50 * MS, u64::MAX / 4] {
            for gap in [0, US, MS, 3 * MS] {
                let mut b = Batching::new(2 * MS);
                let at = 10 * MS;
                b.flushed(at, cost);
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
        assert_eq!(b.queued(MS + 1), MS + 1);
    }
}
