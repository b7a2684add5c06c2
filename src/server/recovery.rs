//! The recovery seam, without sockets: where one connection stands in one room, what
//! happens to a live message there, and what a history read moves it to.
//!
//! ```text
//!              since=, s command,          read reached the newest message
//!              a live message dropped      (r sent), or cannot be served (l sent)
//!   Live { next } ---------------------> Replaying { next } -------------------> Live
//!     | message == next: deliver, next+1     | live messages skipped: the history
//!     | message <  next: skip (duplicate)    | holds them, in order
//!     | message >  next: -> Replaying        '-- read pending (shared history): wait
//!     '-- other epoch: l ... epoch, deliver
//! ```
//!
//! No gap and no duplicate at the seam: a read that reaches the newest message is made
//! under the history's lock after the connection's worker was subscribed, so every
//! later message reaches the worker's inbox with a higher offset, and every earlier one
//! still in the inbox is skipped by offset.

use super::history::{Lost, Read, Seq};

/// One connection's position in one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// No offsets: the client did not ask for them (the bare payload, as without history).
    Bare,
    /// Served from history from `next`; `why` is what a position the history cannot
    /// serve is reported as; `waiting`: a shared-history read is under way.
    Replaying { next: u64, epoch: u64, why: Lost, waiting: bool },
    /// Live: `next` is the offset expected (0: any, the room's position not known yet).
    Live { next: u64, epoch: u64 },
}

/// What to do with a live message for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiveStep {
    /// Send it.
    Deliver,
    /// Send `l <room> <offset - 1> <epoch> epoch`, then it: the room's history began again.
    NewEpoch,
    /// Do not send it (a duplicate, or the history will serve it).
    Skip,
    /// The connection fell behind: it is replaying now, from the history.
    Behind,
}

/// What a history read means for a replaying connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadStep {
    /// Send the entries read; more follow.
    More,
    /// Send the entries read, then `r <room> <seq>`; live from here.
    Recovered(Seq),
    /// Send `l <room> <seq> <why>`; live from here.
    Lost(Seq, Lost),
    /// Nothing yet: a shared-history read is under way.
    Wait,
}

impl Cursor {
    /// A connection that starts at `head` (the room's newest message), or that resumes
    /// after `since`.
    pub fn start(head: Option<Seq>, since: Option<Seq>) -> Cursor {
        match since {
            Some(s) => {
                Cursor::Replaying { next: s.offset.saturating_add(1), epoch: s.epoch, why: Lost::Gap, waiting: false }
            }
            None => match head {
                Some(h) => Cursor::Live { next: h.offset + 1, epoch: h.epoch },
                None => Cursor::Live { next: 0, epoch: 0 },
            },
        }
    }

    /// A live message `seq` reached the connection's worker.
    pub fn on_live(&mut self, seq: Seq) -> LiveStep {
        if seq.offset == 0 {
            // Not kept anywhere (a backend's plain publish beside a shared history):
            // passed through, the position unchanged.
            return LiveStep::Deliver;
        }
        match *self {
            Cursor::Bare => LiveStep::Deliver,
            Cursor::Replaying { .. } => LiveStep::Skip,
            Cursor::Live { next, epoch } => {
                if epoch != seq.epoch && next != 0 {
                    *self = Cursor::Live { next: seq.offset + 1, epoch: seq.epoch };
                    return LiveStep::NewEpoch;
                }
                if next == 0 || seq.offset == next {
                    *self = Cursor::Live { next: seq.offset + 1, epoch: seq.epoch };
                    LiveStep::Deliver
                } else if seq.offset < next {
                    LiveStep::Skip
                } else {
                    *self = Cursor::Replaying { next, epoch, why: Lost::Slow, waiting: false };
                    LiveStep::Behind
                }
            }
        }
    }

    /// A message `seq` this cursor let through could not be queued (over the
    /// connection's backpressure limit): serve it, and what follows, from history.
    pub fn dropped(&mut self, seq: Seq) {
        // Offset 0 is kept nowhere: nothing to serve it from.
        if let (Cursor::Live { .. }, 1..) = (&self, seq.offset) {
            *self = Cursor::Replaying { next: seq.offset, epoch: seq.epoch, why: Lost::Slow, waiting: false };
        }
    }

    /// The outcome of a history read from this cursor's `next`, which returned
    /// `entries` messages. Moves the cursor.
    pub fn on_read(&mut self, read: &Read, entries: usize) -> ReadStep {
        let Cursor::Replaying { next, why, .. } = *self else {
            return ReadStep::Wait;
        };
        match *read {
            Read::Pending => {
                if let Cursor::Replaying { waiting, .. } = self {
                    *waiting = true;
                }
                ReadStep::Wait
            }
            Read::Lost { why: w, last, epoch } => {
                *self = Cursor::Live { next: last + 1, epoch };
                // A position the history never covered is the client's gap or epoch; one it
                // covered once and lost while serving is the client being slow.
                let w = if w == Lost::Gap { why } else { w };
                ReadStep::Lost(Seq { offset: last, epoch }, w)
            }
            Read::Batch { at_end, last, epoch } => {
                let next = next + entries as u64;
                if at_end {
                    *self = Cursor::Live { next: last + 1, epoch };
                    ReadStep::Recovered(Seq { offset: last, epoch })
                } else {
                    // The history covered this position: losing it later is being slow.
                    let _ = why;
                    *self = Cursor::Replaying { next, epoch, why: Lost::Slow, waiting: false };
                    ReadStep::More
                }
            }
        }
    }

    /// A shared-history read this cursor waited for is in (or failed).
    pub fn filled(&mut self) {
        if let Cursor::Replaying { waiting, .. } = self {
            *waiting = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Limits, Store};
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Arc;

    /// One room on one node: a publisher, a worker inbox and one recovering client,
    /// interleaved; what the client gets must be every offset after `since` exactly once,
    /// in order.
    struct Sim {
        store: Store,
        inbox: VecDeque<Seq>,
        subscribed: bool,
        cursor: Cursor,
        got: Vec<u64>,
        /// Messages the client's buffer takes per read (its backpressure).
        budget: usize,
        notices: Vec<String>,
    }

    impl Sim {
        fn publish(&mut self) {
            let seq = self.store.append("r", Arc::from(&b"x"[..]), 0);
            if self.subscribed {
                self.inbox.push_back(seq);
            }
        }

        fn deliver_one(&mut self) {
            if let Some(seq) = self.inbox.pop_front() {
                match self.cursor.on_live(seq) {
                    LiveStep::Deliver => self.got.push(seq.offset),
                    LiveStep::NewEpoch => panic!("one epoch here"),
                    LiveStep::Skip | LiveStep::Behind => {}
                }
            }
        }

        fn pump(&mut self) {
            let Cursor::Replaying { next, epoch, .. } = self.cursor else { return };
            let mut out = Vec::new();
            let read = self
                .store
                .read("r", Seq { offset: next, epoch }, self.budget, &mut out, 0, &mut |_| -> bool { panic!() });
            for e in &out {
                self.got.push(e.offset);
            }
            match self.cursor.on_read(&read, out.len()) {
                ReadStep::More | ReadStep::Wait => {}
                ReadStep::Recovered(s) => self.notices.push(format!("r {}", s.offset)),
                ReadStep::Lost(s, why) => self.notices.push(format!("l {} {}", s.offset, why.label())),
            }
        }
    }

    fn sim(keep: usize, budget: usize) -> Sim {
        let limits = Limits { messages: keep, bytes: usize::MAX, ttl: None };
        Sim {
            store: Store::new(limits, true),
            inbox: VecDeque::new(),
            subscribed: false,
            cursor: Cursor::Bare,
            got: Vec::new(),
            budget,
            notices: Vec::new(),
        }
    }

    #[test]
    fn missed_messages_then_live_without_gap_or_duplicate() {
        for pattern in 0..8u64 {
            let mut s = sim(1000, 7);
            for _ in 0..150 {
                s.publish();
            }
            let epoch = s.store.head("r", 0).unwrap().epoch;
            // The client saw up to 50; it subscribes, and publishes race its recovery.
            s.subscribed = true;
            s.cursor = Cursor::start(None, Some(Seq { offset: 50, epoch }));
            for step in 0..400u64 {
                match (step * 7 + pattern) % 3 {
                    0 if step < 200 => s.publish(),
                    1 => s.deliver_one(),
                    _ => s.pump(),
                }
            }
            while !s.inbox.is_empty() {
                s.deliver_one();
            }
            s.pump();
            let last = s.store.head("r", 0).unwrap().offset;
            assert_eq!(s.got, (51..=last).collect::<Vec<_>>(), "pattern {pattern}");
            assert_eq!(s.notices.len(), 1, "{:?}", s.notices);
            assert!(s.notices[0].starts_with("r "));
            assert!(matches!(s.cursor, Cursor::Live { .. }));
        }
    }

    #[test]
    fn a_client_slower_than_the_history_is_told() {
        let mut s = sim(20, 1);
        for _ in 0..30 {
            s.publish();
        }
        let epoch = s.store.head("r", 0).unwrap().epoch;
        s.subscribed = true;
        s.cursor = Cursor::start(None, Some(Seq { offset: 12, epoch }));
        // Two messages published per message the client takes: it falls out of the history.
        for _ in 0..40 {
            s.publish();
            s.publish();
            s.deliver_one();
            s.deliver_one();
            s.pump();
        }
        assert_eq!(s.notices.len(), 1, "{:?}", s.notices);
        assert!(s.notices[0].ends_with(" slow"), "{:?}", s.notices);
        let told: u64 = s.notices[0].split(' ').nth(1).unwrap().parse().unwrap();
        // Contiguous up to where it fell behind, then live from the offset it was told.
        let before: Vec<u64> = s.got.iter().copied().take_while(|&o| o <= told).collect();
        assert_eq!(before, (13..13 + before.len() as u64).collect::<Vec<_>>());
        let after: Vec<u64> = s.got[before.len()..].to_vec();
        assert_eq!(after, (told + 1..told + 1 + after.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_the_history_no_longer_covers_is_told_then_live() {
        let mut s = sim(10, 100);
        for _ in 0..30 {
            s.publish();
        }
        let epoch = s.store.head("r", 0).unwrap().epoch;
        s.subscribed = true;
        s.cursor = Cursor::start(None, Some(Seq { offset: 5, epoch }));
        s.pump();
        assert_eq!(s.notices, ["l 30 gap"]);
        assert!(s.got.is_empty());
        s.publish();
        s.deliver_one();
        assert_eq!(s.got, [31]);
    }

    #[test]
    fn live_cursor_steps() {
        let mut c = Cursor::start(Some(Seq { offset: 4, epoch: 1 }), None);
        assert_eq!(c.on_live(Seq { offset: 4, epoch: 1 }), LiveStep::Skip);
        assert_eq!(c.on_live(Seq { offset: 5, epoch: 1 }), LiveStep::Deliver);
        assert_eq!(c.on_live(Seq { offset: 3, epoch: 2 }), LiveStep::NewEpoch);
        assert_eq!(c, Cursor::Live { next: 4, epoch: 2 });
        assert_eq!(c.on_live(Seq { offset: 6, epoch: 2 }), LiveStep::Behind);
        assert_eq!(c, Cursor::Replaying { next: 4, epoch: 2, why: Lost::Slow, waiting: false });
        // Offset 0: delivered, the position unchanged, in any state.
        let before = c;
        assert_eq!(c.on_live(Seq { offset: 0, epoch: 0 }), LiveStep::Deliver);
        assert_eq!(c, before);
        let mut unknown = Cursor::start(None, None);
        assert_eq!(unknown.on_live(Seq { offset: 77, epoch: 3 }), LiveStep::Deliver);
        assert_eq!(unknown, Cursor::Live { next: 78, epoch: 3 });
        // A client's since= is any u64.
        let far = Cursor::start(None, Some(Seq { offset: u64::MAX, epoch: 1 }));
        assert!(matches!(far, Cursor::Replaying { next: u64::MAX, .. }));
        let mut c = Cursor::Live { next: 9, epoch: 1 };
        c.dropped(Seq { offset: 9, epoch: 1 });
        assert!(matches!(c, Cursor::Replaying { next: 9, .. }));
    }
}
