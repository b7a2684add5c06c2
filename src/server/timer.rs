//! A hashed timing wheel: O(1) schedule, cancel and reschedule; one per worker, driven
//! by the poll timeout (no timer thread).
//!
//! Entries live in a slab and are linked intrusively into their slot's list, so
//! scheduling allocates nothing once the slab has grown to its working size. A timer
//! further away than one turn of the wheel stays in its slot and is skipped (checked
//! against its deadline) on the turns before it is due; deadlines are rounded up, so
//! nothing fires early.

use slab::Slab;

/// Identifies a scheduled timer (for cancel and reschedule). Holds the entry's index
/// plus one, so `Option<TimerId>` is four bytes (one per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(std::num::NonZeroU32);

impl TimerId {
    fn new(index: u32) -> Self {
        TimerId(std::num::NonZeroU32::MIN.saturating_add(index))
    }

    fn index(self) -> u32 {
        self.0.get() - 1
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Entry<T> {
    deadline: u64,
    prev: u32,
    next: u32,
    value: T,
}

/// The wheel. `T` is what a timer carries back when it fires.
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Box<[u32]>,
    mask: u64,
    entries: Slab<Entry<T>>,
    /// Every tick before this one has been processed.
    current: u64,
    /// The slots of the ticks in `current..empty_until` are empty: where the next
    /// search for the earliest timer resumes, so a busy loop does not rescan the same
    /// empty slots on every turn. Only `link` can fill a slot, and it pulls this back.
    empty_until: u64,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel with `slots` slots (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(2).next_power_of_two();
        TimerWheel {
            slots: vec![NIL; n].into_boxed_slice(),
            mask: n as u64 - 1,
            entries: Slab::new(),
            current: 0,
            empty_until: 0,
        }
    }

    /// Timers scheduled.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next tick to process.
    pub fn current_tick(&self) -> u64 {
        self.current
    }

    /// Schedules `value` to fire at `tick` (a tick already past fires on the next advance).
    pub fn schedule(&mut self, tick: u64, value: T) -> TimerId {
        let deadline = tick.max(self.current);
        let key = self.entries.insert(Entry { deadline, prev: NIL, next: NIL, value });
        self.link(key as u32);
        TimerId::new(key as u32)
    }

    /// Cancels a timer; false if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        if !self.entries.contains(id.index() as usize) {
            return false;
        }
        self.unlink(id.index());
        self.entries.remove(id.index() as usize);
        true
    }

    /// Moves a pending timer to `tick`; false if it is no longer pending.
    pub fn reschedule(&mut self, id: TimerId, tick: u64) -> bool {
        if !self.entries.contains(id.index() as usize) {
            return false;
        }
        self.unlink(id.index());
        self.entries[id.index() as usize].deadline = tick.max(self.current);
        self.link(id.index());
        true
    }

    /// Deadline of a pending timer.
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.entries.get(id.index() as usize).map(|e| e.deadline)
    }

    /// Processes every tick up to and including `now`, moving due timers into `out`
    /// (at most `limit`; the rest stay due and come out on the next call).
    pub fn advance(&mut self, now: u64, limit: usize, out: &mut Vec<(TimerId, T)>) {
        while self.current <= now {
            let slot = (self.current & self.mask) as usize;
            let mut cur = self.slots[slot];
            while cur != NIL {
                let e = &self.entries[cur as usize];
                let next = e.next;
                if e.deadline <= self.current {
                    if out.len() >= limit {
                        return;
                    }
                    let value = e.value;
                    self.unlink(cur);
                    self.entries.remove(cur as usize);
                    out.push((TimerId::new(cur), value));
                }
                cur = next;
            }
            self.current += 1;
        }
    }

    /// Ticks from `now` until the earliest slot that holds a timer, scanning at most one
    /// turn of the wheel; `None` when the wheel is empty. Zero when a slot at or before
    /// `now` is still to be processed (`advance` stopped at its limit).
    pub fn ticks_until_next(&mut self, now: u64) -> Option<u64> {
        if self.entries.is_empty() {
            return None;
        }
        // From `current`, not `now`: ticks before `now` that `advance` has not finished
        // may still hold due timers.
        let end = self.current + self.mask + 1;
        for t in self.empty_until.max(self.current)..end {
            if self.slots[(t & self.mask) as usize] != NIL {
                self.empty_until = t;
                return Some(t.saturating_sub(now));
            }
        }
        self.empty_until = end;
        Some(end.saturating_sub(now))
    }

    fn link(&mut self, key: u32) {
        let deadline = self.entries[key as usize].deadline;
        // The one tick of the coming turn that visits this slot (deadline >= current).
        let visit = self.current + ((deadline - self.current) & self.mask);
        self.empty_until = self.empty_until.min(visit);
        let slot = (deadline & self.mask) as usize;
        let head = self.slots[slot];
        {
            let e = &mut self.entries[key as usize];
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = key;
        }
        self.slots[slot] = key;
    }

    fn unlink(&mut self, key: u32) {
        let (prev, next, deadline) = {
            let e = &self.entries[key as usize];
            (e.prev, e.next, e.deadline)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.slots[(deadline & self.mask) as usize] = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(w: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(now, usize::MAX, &mut out);
        let mut v: Vec<u32> = out.into_iter().map(|(_, v)| v).collect();
        v.sort();
        v
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = TimerWheel::new(8);
        w.schedule(3, 1);
        assert_eq!(fire(&mut w, 2), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn wraps_around_the_wheel_several_times() {
        let mut w = TimerWheel::new(8);
        w.schedule(5, 1);
        w.schedule(13, 2); // same slot, one turn later
        w.schedule(29, 3); // three turns later
        assert_eq!(fire(&mut w, 5), vec![1]);
        assert_eq!(fire(&mut w, 12), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 13), vec![2]);
        assert_eq!(fire(&mut w, 28), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 100), vec![3]);
    }

    #[test]
    fn cancel_after_fire_is_a_no_op() {
        let mut w = TimerWheel::new(8);
        let id = w.schedule(1, 7);
        assert_eq!(fire(&mut w, 1), vec![7]);
        assert!(!w.cancel(id));
        assert!(!w.reschedule(id, 5));
        // The freed slot is reused; the stale id must not cancel the new timer by
        // accident when the caller tracks fired ids (the worker clears its copy on fire).
        let id2 = w.schedule(4, 8);
        assert!(w.cancel(id2));
        assert_eq!(fire(&mut w, 10), Vec::<u32>::new());
    }

    #[test]
    fn reschedule_moves_earlier_and_later() {
        let mut w = TimerWheel::new(16);
        let a = w.schedule(10, 1);
        let b = w.schedule(10, 2);
        assert!(w.reschedule(a, 3));
        assert!(w.reschedule(b, 40));
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert_eq!(fire(&mut w, 39), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 40), vec![2]);
    }

    #[test]
    fn many_timers_in_one_slot_and_cancel_in_the_middle() {
        let mut w = TimerWheel::new(4);
        let ids: Vec<TimerId> = (0..1000).map(|i| w.schedule(2 + 4 * (i % 3) as u64, i)).collect();
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 1 {
                assert!(w.cancel(*id));
            }
        }
        let fired = fire(&mut w, 2);
        assert_eq!(fired.len(), (0..1000).filter(|i| i % 2 == 0 && i % 3 == 0).count());
        let fired = fire(&mut w, 20);
        assert_eq!(fired.len(), (0..1000).filter(|i| i % 2 == 0 && i % 3 != 0).count());
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance_and_limit_is_respected() {
        let mut w = TimerWheel::new(8);
        fire(&mut w, 10);
        for i in 0..5 {
            w.schedule(3, i);
        }
        let mut out = Vec::new();
        w.advance(11, 2, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        w.advance(11, 10, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn ticks_until_next() {
        let mut w = TimerWheel::new(8);
        assert_eq!(w.ticks_until_next(0), None);
        w.schedule(5, 1);
        assert_eq!(w.ticks_until_next(0), Some(5));
        w.schedule(100, 2);
        // A slot holding a later turn's timer wakes the loop early, never late.
        assert_eq!(w.ticks_until_next(0), Some(4));
    }

    /// Regression: when `advance` stopped at its limit on a tick before `now` (the loop
    /// woke late), the due timers left in that tick's slot were only found a whole turn
    /// of the wheel later, so the poll timeout slept past them.
    #[test]
    fn ticks_until_next_is_zero_while_due_timers_are_left_behind_the_limit() {
        let mut w = TimerWheel::new(8);
        for i in 0..10 {
            w.schedule(5, i);
        }
        let mut out = Vec::new();
        w.advance(7, 3, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(w.ticks_until_next(7), Some(0));
        out.clear();
        w.advance(7, usize::MAX, &mut out);
        assert_eq!(out.len(), 7);
        assert_eq!(w.ticks_until_next(7), None);
    }

    /// The remembered empty stretch must never hide a timer: checked against a full
    /// rescan through schedules, reschedules, cancels and advances in a fixed
    /// pseudo-random order.
    #[test]
    fn ticks_until_next_matches_a_full_scan() {
        fn full_scan(w: &TimerWheel<u32>, now: u64) -> Option<u64> {
            if w.is_empty() {
                return None;
            }
            let end = w.current + w.mask + 1;
            let t = (w.current..end).find(|t| w.slots[(t & w.mask) as usize] != NIL).unwrap_or(end);
            Some(t.saturating_sub(now))
        }
        let mut w = TimerWheel::new(16);
        let mut ids = Vec::new();
        let mut now = 0u64;
        let mut x = 12345u64;
        let mut out = Vec::new();
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 6 {
                0 | 1 => ids.push(w.schedule(now + x % 40, step)),
                2 if !ids.is_empty() => {
                    let id = ids.swap_remove((x as usize / 7) % ids.len());
                    w.cancel(id);
                }
                3 if !ids.is_empty() => {
                    let id = ids[(x as usize / 7) % ids.len()];
                    w.reschedule(id, now + x % 50);
                }
                4 => {
                    now += x % 5;
                    out.clear();
                    w.advance(now, 3, &mut out);
                }
                _ => {}
            }
            let want = full_scan(&w, now);
            assert_eq!(w.ticks_until_next(now), want, "step {step}");
        }
    }
}
