//! When broadcast output is written: at the end of the loop turn while the worker has
//! time to spare, batched across turns only while the worker is saturated.
//!
//! A fixed window (the old policy) makes every broadcast wait for it, even on an idle
//! worker; flushing every turn costs one write per subscriber per message when busy.
//! Here the worker reports how long each turn worked and how long it then sat in its
//! poll; over windows of `WINDOW_NS` that gives its busy share. Below `SATURATED_PERMILLE` (it
//! has idle time, so writing every turn costs nothing anyone waits for) each broadcast
//! is written at the end of the turn it arrives in. After `ENTER_WINDOWS` saturated
//! windows in a row, a broadcast waits as long after the last batch's write as that
//! write took, capped by `Config::broadcast_coalesce`: batches grow with the load and
//! writing takes about half the worker's time.
//!
//! While batching, the busy share says nothing: the waits the policy makes fill the
//! worker's spare time, so counting them as idle would end batching at once on a truly
//! saturated worker, and not counting them kept a worker batching for good after one
//! busy spell (200 subscribers: p50 1.0 ms instead of 0.65). So every
//! `PROBE_EVERY_NS` the worker writes every turn for one window, and that window's
//! busy share decides whether it goes back to batching.

/// How much history the busy share is measured over.
const WINDOW_NS: u64 = 20_000_000;
/// Busy share (per mille) from which a window counts as saturated. Writing every turn
/// to 1000 subscribers at 1000 publishes/s keeps a worker's windows at 99.6-99.9% busy;
/// 200 subscribers, at 55-75% on a quiet host, and on a loaded one in stretches of
/// 80-140 ms at 99.6% between windows of 80-94%.
const SATURATED_PERMILLE: u64 = 990;
/// Consecutive saturated windows (300 ms) before batching starts: longer than the
/// saturated stretches of a worker that keeps up, and than a burst of handshakes.
const ENTER_WINDOWS: u8 = 15;
/// How often a batching worker tries one window of writing every turn again. While it
/// batches, its own waits hide how busy writing every turn would keep it, so only
/// trying tells: that window decides whether batching goes on. One window in 100 costs
/// a saturated worker well under 1% more CPU.
const PROBE_EVERY_NS: u64 = 2_000_000_000;

/// Where the policy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Writing at the end of every turn; `streak` windows in a row were saturated.
    EveryTurn { streak: u8 },
    /// Saturated: batching across turns since `since` (worker clock, ns).
    Batching { since: u64 },
    /// Writing every turn for one window, to see whether batching is still needed.
    Probing,
}

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
    mode: Mode,
    /// The latest time the worker passed in (dates a switch to batching).
    seen_ns: u64,
    /// The pending batch's deadline.
    due: Option<u64>,
}

impl Batching {
    pub fn new(window_ns: u64) -> Self {
        Batching {
            window_ns,
            last: None,
            busy_ns: 0,
            idle_ns: 0,
            mode: Mode::EveryTurn { streak: 0 },
            seen_ns: 0,
            due: None,
        }
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
        if total < WINDOW_NS {
            return;
        }
        let saturated = self.busy_ns.saturating_mul(1000) >= total.saturating_mul(SATURATED_PERMILLE);
        self.busy_ns = 0;
        self.idle_ns = 0;
        let batch = Mode::Batching { since: self.seen_ns };
        self.mode = match (self.mode, saturated) {
            (Mode::EveryTurn { streak }, true) if streak + 1 >= ENTER_WINDOWS => batch,
            (Mode::EveryTurn { streak }, true) => Mode::EveryTurn { streak: streak + 1 },
            (Mode::Probing, true) => batch,
            (Mode::EveryTurn { .. } | Mode::Probing, false) => Mode::EveryTurn { streak: 0 },
            // While batching, the waits it makes hide the load: only a probe decides.
            (m @ Mode::Batching { .. }, _) => m,
        };
    }

    /// Broadcast output was queued at `now`; returns when the batch must be written
    /// (`now` itself: at the end of this loop turn).
    pub fn queued(&mut self, now: u64) -> u64 {
        self.seen_ns = now;
        if let Some(due) = self.due {
            return due;
        }
        if let Mode::Batching { since } = self.mode {
            if now.saturating_sub(since) >= PROBE_EVERY_NS {
                // The probe window measures only turns that write every turn.
                self.mode = Mode::Probing;
                self.busy_ns = 0;
                self.idle_ns = 0;
            }
        }
        let due = match (self.mode, self.last) {
            // Saturated: wait as long after the last batch's write as it took (at
            // most the window).
            (Mode::Batching { .. }, Some((at, cost))) => now.max(at.saturating_add(cost.min(self.window_ns))),
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
        self.seen_ns = now;
        self.due = None;
        self.last = Some((now, cost));
    }
}

#[cfg(test)]
mod tests {
    use super::{Batching, Mode, ENTER_WINDOWS, PROBE_EVERY_NS, WINDOW_NS};

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

    /// Enough saturated windows in a row to start batching.
    fn saturate(b: &mut Batching) {
        for _ in 0..ENTER_WINDOWS {
            load(b, 10);
        }
    }

    #[test]
    fn a_saturated_worker_batches_what_arrives_while_it_would_be_writing() {
        let mut b = Batching::new(2 * MS);
        saturate(&mut b);
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
    fn one_busy_window_is_not_saturation() {
        let mut b = Batching::new(2 * MS);
        for _ in 0..ENTER_WINDOWS - 1 {
            load(&mut b, 10);
        }
        load(&mut b, 7);
        load(&mut b, 10);
        b.flushed(100 * MS, MS);
        assert_eq!(b.queued(100 * MS + 10 * US), 100 * MS + 10 * US, "the streak was broken");
    }

    #[test]
    fn batching_goes_on_while_its_waits_fill_the_spare_time() {
        // 1000 subscribers: batched, the worker works 3 ms in every 4 and waits the
        // rest for its batches. Those waits are not idleness, so it stays batching.
        let mut b = Batching::new(2 * MS);
        saturate(&mut b);
        let mut t = 100 * MS;
        for _ in 0..100 {
            b.flushed(t, 1500 * US);
            assert_eq!(b.queued(t + 100 * US), t + 1500 * US);
            b.polled(1400 * US);
            b.worked(1500 * US);
            t += 3 * MS;
        }
    }

    #[test]
    fn a_batching_worker_that_no_longer_needs_it_stops_after_its_probe() {
        // One busy spell started batching; then the load drops to 200 subscribers'
        // (busy 6 tenths when writing every turn). Whatever the busy share says while
        // batching, the next probe finds spare time and batching ends.
        let mut b = Batching::new(2 * MS);
        b.flushed(MS, 500 * US);
        saturate(&mut b);
        let mut t = 2 * MS;
        let mut batched_after_probe = 0;
        while t < 2 * PROBE_EVERY_NS {
            let due = b.queued(t);
            if t > PROBE_EVERY_NS + 2 * WINDOW_NS && due > t {
                batched_after_probe += 1;
            }
            // Waiting (not idleness), writing, then idle until the next publish.
            b.polled(due - t);
            b.flushed(due + 600 * US, 600 * US);
            b.worked(600 * US);
            b.polled(MS - 600 * US - (due - t).min(400 * US));
            t += MS;
        }
        assert_eq!(batched_after_probe, 0, "writes every turn once the probe saw spare time");
        assert_eq!(b.mode, Mode::EveryTurn { streak: 0 });
    }

    #[test]
    fn a_probe_that_finds_the_worker_saturated_goes_back_to_batching() {
        let mut b = Batching::new(2 * MS);
        saturate(&mut b);
        b.flushed(10 * MS, MS);
        assert!(b.queued(10 * MS + 1) > 10 * MS + 1, "batching");
        b.flushed(11 * MS, MS);
        // At the probe, the batch goes out this turn.
        let t = 10 * MS + PROBE_EVERY_NS;
        assert_eq!(b.queued(t), t);
        assert_eq!(b.mode, Mode::Probing);
        b.flushed(t + MS, MS);
        load(&mut b, 10);
        assert!(matches!(b.mode, Mode::Batching { .. }));
        b.flushed(t + 21 * MS, MS);
        assert_eq!(b.queued(t + 21 * MS + 1), t + 22 * MS, "batching again");
    }

    #[test]
    fn no_broadcast_waits_longer_than_the_window() {
        for cost in [0, 10 * US, MS, 2 * MS, 50 * MS, u64::MAX / 4] {
            for busy in [0, 5, 9, 10] {
                for gap in [0, US, MS, 3 * MS] {
                    let mut b = Batching::new(2 * MS);
                    for _ in 0..ENTER_WINDOWS {
                        load(&mut b, busy);
                    }
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
        saturate(&mut b);
        b.flushed(MS, MS);
        assert_eq!(b.queued(MS + 1), MS + 1);
    }
}
