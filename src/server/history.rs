//! Room history: each room's recent messages in memory, numbered by offset, under an
//! epoch that changes whenever the room's history is lost.
//!
//! On a single node the store is the source of truth: [`Store::append`] numbers each
//! message. With a bridge that numbers messages itself (Redis streams), the store is
//! that node's cache of the shared history: [`Store::insert`] takes messages with the
//! offsets they were given, [`Store::fill`] merges what one history read brought, and
//! a read the cache cannot answer asks for such a read once per room.
//!
//! Offsets start at 1 in every epoch; offset 0 means "nothing yet". Epochs are below
//! 2^53 so that JavaScript clients read them exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Where a message stands in its room's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Seq {
    /// Grows by one per message of the room, from 1.
    pub offset: u64,
    /// Names the room's history; a new epoch means the old messages are gone.
    pub epoch: u64,
}

/// Limits of the history (from `Config`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Messages kept per room (at least 1).
    pub messages: usize,
    /// Payload bytes kept per room (the newest message is kept whatever its size).
    pub bytes: usize,
    /// A room with no message for this long loses its history (None: never).
    pub ttl: Option<Duration>,
}

/// One kept message: its offset and the plain frame every bare subscriber got.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub offset: u64,
    pub frame: Arc<[u8]>,
}

/// Why a client's position cannot be served from history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The epoch differs (the history was lost since), or the offset is not one this
    /// epoch has reached.
    Epoch,
    /// The history no longer reaches back to the position.
    Gap,
    /// The client fell behind while being served and the history moved past it.
    Slow,
    /// The shared history could not be read (Redis unreachable).
    Unavailable,
}

impl Lost {
    /// The word in the `l` message of `wsloop.v1`.
    pub fn label(self) -> &'static str {
        match self {
            Lost::Epoch => "epoch",
            Lost::Gap => "gap",
            Lost::Slow => "slow",
            Lost::Unavailable => "unavailable",
        }
    }
}

/// The answer to [`Store::read`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Entries from the position were appended to the output (maybe none); `at_end`:
    /// they reach the newest message, whose offset is `last`.
    Batch { at_end: bool, last: u64, epoch: u64 },
    /// The position cannot be served: live from after `last`, in `epoch`.
    Lost { why: Lost, last: u64, epoch: u64 },
    /// The shared history is being read: ask again when it is in.
    Pending,
}

/// One room's kept messages.
#[derive(Debug)]
struct RoomLog {
    epoch: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Offset of the newest message known (0: none in this epoch).
    last: u64,
    /// Holds everything the history still has from its first entry on (always on a
    /// single node; in a cache, after a fill and while nothing was skipped since).
    complete: bool,
    /// A history read for this room is under way.
    filling: bool,
    /// Clock (ns) of the last message, for the TTL.
    touched_ns: u64,
}

impl RoomLog {
    fn new(epoch: u64, now_ns: u64, complete: bool) -> RoomLog {
        RoomLog { epoch, entries: VecDeque::new(), bytes: 0, last: 0, complete, filling: false, touched_ns: now_ns }
    }

    fn first(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |e| e.offset)
    }

    fn push(&mut self, e: Entry, limits: &Limits) {
        self.last = e.offset;
        self.bytes += e.frame.len();
        self.entries.push_back(e);
        while self.entries.len() > limits.messages.max(1) || (self.bytes > limits.bytes && self.entries.len() > 1) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.frame.len();
            }
        }
    }

    fn clear(&mut self, epoch: u64, last: u64, complete: bool) {
        self.epoch = epoch;
        self.entries.clear();
        self.bytes = 0;
        self.last = last;
        self.complete = complete;
    }
}

/// Every room's history on this node.
#[derive(Debug)]
pub(crate) struct Store {
    limits: Limits,
    rooms: HashMap<Box<str>, RoomLog>,
    /// Numbers messages itself (single node), or caches what a bridge numbered.
    local: bool,
    rng: u64,
    last_sweep_ns: u64,
}

impl Store {
    pub fn new(limits: Limits, local: bool) -> Store {
        Store { limits, rooms: HashMap::new(), local, rng: seed(), last_sweep_ns: 0 }
    }

    /// Numbers messages itself (no bridge, or one that does not), or caches.
    pub fn set_local(&mut self, local: bool) {
        self.local = local;
    }

    /// Whether this store numbers messages itself.
    pub fn is_local(&self) -> bool {
        self.local
    }

    fn new_epoch(&mut self) -> u64 {
        // xorshift64 over a random seed: epochs need to differ, not to be secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng & ((1 << 53) - 1)).max(1)
    }

    fn expired(&self, log: &RoomLog, now_ns: u64) -> bool {
        self.limits.ttl.is_some_and(|t| now_ns.saturating_sub(log.touched_ns) > t.as_nanos() as u64)
    }

    /// The room's log, made (or remade, past its TTL) on a single node.
    fn local_log(&mut self, room: &str, now_ns: u64) -> &mut RoomLog {
        let stale = self.rooms.get(room).is_none_or(|l| self.expired(l, now_ns));
        if stale {
            let epoch = self.new_epoch();
            self.rooms.insert(room.into(), RoomLog::new(epoch, now_ns, true));
        }
        self.rooms.get_mut(room).expect("inserted above")
    }

    /// Single node: numbers `frame` as the room's next message and keeps it.
    pub fn append(&mut self, room: &str, frame: Arc<[u8]>, now_ns: u64) -> Seq {
        self.sweep(now_ns);
        let limits = self.limits;
        let log = self.local_log(room, now_ns);
        let seq = Seq { offset: log.last + 1, epoch: log.epoch };
        log.touched_ns = now_ns;
        log.push(Entry { offset: seq.offset, frame }, &limits);
        seq
    }

    /// Cache: keeps a message the bridge numbered. False for one already known (a
    /// duplicate, not to be delivered again).
    pub fn insert(&mut self, room: &str, seq: Seq, frame: Arc<[u8]>, now_ns: u64) -> bool {
        self.sweep(now_ns);
        let limits = self.limits;
        let log = self.rooms.entry(room.into()).or_insert_with(|| RoomLog::new(seq.epoch, now_ns, seq.offset == 1));
        log.touched_ns = now_ns;
        if log.epoch != seq.epoch {
            // The history was lost and began again: what the cache holds is gone too.
            log.clear(seq.epoch, seq.offset - 1, seq.offset == 1);
        } else if seq.offset <= log.last {
            return false;
        } else if seq.offset != log.last + 1 {
            // Messages were skipped (a reconnect): keep from here, and read the rest.
            log.clear(seq.epoch, seq.offset - 1, false);
        }
        log.push(Entry { offset: seq.offset, frame }, &limits);
        true
    }

    /// The position a client that starts now continues from: the room's newest offset
    /// and its epoch (`None` in a cache that knows nothing of the room yet).
    pub fn head(&mut self, room: &str, now_ns: u64) -> Option<Seq> {
        if self.local {
            let log = self.local_log(room, now_ns);
            return Some(Seq { offset: log.last, epoch: log.epoch });
        }
        self.rooms.get(room).map(|l| Seq { offset: l.last, epoch: l.epoch })
    }

    /// Appends to `out` the entries of `room` from offset `at.offset` on, in `at.epoch`, up to
    /// `max_bytes` of frames (at least one entry). A cache that cannot answer calls
    /// `fill` (once per room until the fill is in) and answers `Pending`; `fill`
    /// returns false when the read cannot be asked for (then: `unavailable`).
    pub fn read(
        &mut self,
        room: &str,
        at: Seq,
        max_bytes: usize,
        out: &mut Vec<Entry>,
        now_ns: u64,
        fill: &mut dyn FnMut(&str) -> bool,
    ) -> Read {
        let (from, epoch) = (at.offset, at.epoch);
        let local = self.local;
        if local {
            self.local_log(room, now_ns);
        }
        let expired = self.rooms.get(room).is_some_and(|l| self.expired(l, now_ns));
        if expired && !local {
            self.rooms.remove(room);
        }
        let log = match self.rooms.get_mut(room) {
            Some(l) => l,
            None => {
                if !fill(room) {
                    return Read::Lost { why: Lost::Unavailable, last: 0, epoch: 0 };
                }
                let mut l = RoomLog::new(0, now_ns, false);
                l.filling = true;
                self.rooms.insert(room.into(), l);
                return Read::Pending;
            }
        };
        if log.filling {
            return Read::Pending;
        }
        let (last, cur) = (log.last, log.epoch);
        if !log.complete && (log.epoch != epoch || from < log.first()) {
            if !fill(room) {
                return Read::Lost { why: Lost::Unavailable, last, epoch: cur };
            }
            log.filling = true;
            return Read::Pending;
        }
        if cur != epoch || from == 0 || from > last + 1 {
            return Read::Lost { why: Lost::Epoch, last, epoch: cur };
        }
        if from < log.first() {
            return Read::Lost { why: Lost::Gap, last, epoch: cur };
        }
        let skip = (from - log.first()) as usize;
        let mut bytes = 0;
        let mut end = from;
        for e in log.entries.iter().skip(skip) {
            if bytes > 0 && bytes + e.frame.len() > max_bytes {
                break;
            }
            bytes += e.frame.len();
            out.push(e.clone());
            end = e.offset + 1;
        }
        Read::Batch { at_end: end == last + 1, last, epoch: cur }
    }

    /// Cache: merges one history read of `room` (its epoch, and its entries, oldest
    /// first; `None`: the read failed). Entries the cache got live meanwhile are kept.
    pub fn fill(&mut self, room: &str, read: Option<(u64, Vec<Entry>)>, now_ns: u64) {
        let limits = self.limits;
        let log = self.rooms.entry(room.into()).or_insert_with(|| RoomLog::new(0, now_ns, false));
        log.filling = false;
        let Some((epoch, entries)) = read else {
            return;
        };
        if entries.is_empty() {
            // Nothing is kept: what the cache has is all there is.
            if log.epoch == 0 || log.epoch == epoch {
                log.complete = true;
            }
            return;
        }
        let live: Vec<Entry> = if log.epoch == epoch { log.entries.drain(..).collect() } else { Vec::new() };
        log.clear(epoch, 0, true);
        for e in entries.into_iter().chain(live) {
            if e.offset == log.last + 1 || log.entries.is_empty() {
                log.push(e, &limits);
            }
        }
        log.touched_ns = now_ns;
    }

    /// Cache: drops what is kept of `room` (this node no longer follows it). A single
    /// node keeps its history: it is the only one.
    pub fn forget(&mut self, room: &str) {
        if !self.local && self.rooms.get(room).is_some_and(|l| !l.filling) {
            self.rooms.remove(room);
        }
    }

    /// A fill that failed makes `Pending` readers give up: the answer they get.
    pub fn unavailable(&self, room: &str) -> Read {
        let (last, epoch) = self.rooms.get(room).map_or((0, 0), |l| (l.last, l.epoch));
        Read::Lost { why: Lost::Unavailable, last, epoch }
    }

    /// Drops rooms past their TTL, at most once a second.
    fn sweep(&mut self, now_ns: u64) {
        let Some(ttl) = self.limits.ttl else { return };
        if now_ns.saturating_sub(self.last_sweep_ns) < 1_000_000_000 {
            return;
        }
        self.last_sweep_ns = now_ns;
        let ttl = ttl.as_nanos() as u64;
        self.rooms.retain(|_, l| l.filling || now_ns.saturating_sub(l.touched_ns) <= ttl);
    }

    /// Rooms and frame bytes kept, for `/metrics`.
    pub fn usage(&self) -> (usize, usize) {
        (self.rooms.len(), self.rooms.values().map(|l| l.bytes).sum())
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize) -> Limits {
        Limits { messages, bytes, ttl: None }
    }

    fn frame(n: u64) -> Arc<[u8]> {
        format!("msg{n}").into_bytes().into()
    }

    fn offsets(out: &[Entry]) -> Vec<u64> {
        out.iter().map(|e| e.offset).collect()
    }

    fn no_fill(_: &str) -> bool {
        panic!("a single node never reads a shared history");
    }

    #[test]
    fn offsets_grow_by_one_per_room() {
        let mut s = Store::new(limits(10, 1 << 20), true);
        let a1 = s.append("a", frame(1), 0);
        let a2 = s.append("a", frame(2), 0);
        let b1 = s.append("b", frame(1), 0);
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, 0);
        assert!(a1.epoch < 1 << 53);
    }

    #[test]
    fn keeps_at_most_n_messages_and_reports_the_gap() {
        let mut s = Store::new(limits(5, 1 << 20), true);
        let mut epoch = 0;
        for i in 1..=12 {
            epoch = s.append("r", frame(i), 0).epoch;
        }
        let mut out = Vec::new();
        assert_eq!(
            s.read("r", Seq { offset: 8, epoch }, usize::MAX, &mut out, 0, &mut no_fill),
            Read::Batch { at_end: true, last: 12, epoch }
        );
        assert_eq!(offsets(&out), [8, 9, 10, 11, 12]);
        out.clear();
        assert_eq!(
            s.read("r", Seq { offset: 7, epoch }, usize::MAX, &mut out, 0, &mut no_fill),
            Read::Lost { why: Lost::Gap, last: 12, epoch }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn keeps_at_most_the_byte_budget_but_always_the_newest() {
        let mut s = Store::new(limits(100, 10), true);
        for i in 1..=5 {
            s.append("r", frame(i), 0); // 4 bytes each
        }
        let mut out = Vec::new();
        let epoch = s.head("r", 0).unwrap().epoch;
        assert!(matches!(
            s.read("r", Seq { offset: 4, epoch }, usize::MAX, &mut out, 0, &mut no_fill),
            Read::Batch { .. }
        ));
        assert_eq!(offsets(&out), [4, 5]);
        let big: Arc<[u8]> = vec![0u8; 100].into();
        s.append("r", big, 0);
        out.clear();
        assert!(matches!(
            s.read("r", Seq { offset: 6, epoch }, usize::MAX, &mut out, 0, &mut no_fill),
            Read::Batch { .. }
        ));
        assert_eq!(offsets(&out), [6]);
    }

    #[test]
    fn reads_are_bounded_by_bytes() {
        let mut s = Store::new(limits(100, 1 << 20), true);
        for i in 1..=10 {
            s.append("r", frame(i), 0);
        }
        let epoch = s.head("r", 0).unwrap().epoch;
        let mut out = Vec::new();
        assert_eq!(
            s.read("r", Seq { offset: 1, epoch }, 9, &mut out, 0, &mut no_fill),
            Read::Batch { at_end: false, last: 10, epoch }
        );
        assert_eq!(offsets(&out), [1, 2]);
        out.clear();
        // At least one entry, whatever the budget.
        assert!(matches!(
            s.read("r", Seq { offset: 3, epoch }, 1, &mut out, 0, &mut no_fill),
            Read::Batch { at_end: false, .. }
        ));
        assert_eq!(offsets(&out), [3]);
    }

    #[test]
    fn a_wrong_epoch_or_an_offset_never_reached_is_lost() {
        let mut s = Store::new(limits(10, 1 << 20), true);
        let seq = s.append("r", frame(1), 0);
        let mut out = Vec::new();
        let lost = Read::Lost { why: Lost::Epoch, last: 1, epoch: seq.epoch };
        assert_eq!(s.read("r", Seq { offset: 1, epoch: seq.epoch + 1 }, usize::MAX, &mut out, 0, &mut no_fill), lost);
        assert_eq!(s.read("r", Seq { offset: 3, epoch: seq.epoch }, usize::MAX, &mut out, 0, &mut no_fill), lost);
        // Up to date: nothing to send, at the end.
        assert_eq!(
            s.read("r", Seq { offset: 2, epoch: seq.epoch }, usize::MAX, &mut out, 0, &mut no_fill),
            Read::Batch { at_end: true, last: 1, epoch: seq.epoch }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn an_idle_room_loses_its_history_after_the_ttl() {
        let mut s = Store::new(Limits { messages: 10, bytes: 1 << 20, ttl: Some(Duration::from_secs(5)) }, true);
        let old = s.append("r", frame(1), 0);
        let fresh = s.append("r", frame(2), 4_000_000_000);
        assert_eq!(fresh.epoch, old.epoch);
        let later = s.append("r", frame(3), 10_000_000_000);
        assert_ne!(later.epoch, old.epoch);
        assert_eq!(later.offset, 1);
    }

    #[test]
    fn a_cache_reads_the_shared_history_once_per_room() {
        let mut s = Store::new(limits(10, 1 << 20), false);
        let mut fills = Vec::new();
        let mut out = Vec::new();
        for _ in 0..100 {
            let r = s.read("r", Seq { offset: 5, epoch: 77 }, usize::MAX, &mut out, 0, &mut |room| {
                fills.push(room.to_string());
                true
            });
            assert_eq!(r, Read::Pending);
        }
        assert_eq!(fills, ["r"]);
        // A live message arrives before the read does; the read overlaps it.
        assert!(s.insert("r", Seq { offset: 9, epoch: 77 }, frame(9), 0));
        let entries = (3..=8).map(|o| Entry { offset: o, frame: frame(o) }).collect();
        s.fill("r", Some((77, entries)), 0);
        let r = s.read("r", Seq { offset: 5, epoch: 77 }, usize::MAX, &mut out, 0, &mut |_| -> bool {
            panic!("filled already")
        });
        assert_eq!(r, Read::Batch { at_end: true, last: 9, epoch: 77 });
        assert_eq!(offsets(&out), [5, 6, 7, 8, 9]);
        assert!(!s.insert("r", Seq { offset: 9, epoch: 77 }, frame(9), 0), "a duplicate");
    }

    #[test]
    fn a_cache_that_skipped_messages_reads_again() {
        let mut s = Store::new(limits(10, 1 << 20), false);
        s.fill("r", Some((5, (1..=3).map(|o| Entry { offset: o, frame: frame(o) }).collect())), 0);
        assert!(s.insert("r", Seq { offset: 6, epoch: 5 }, frame(6), 0));
        let mut fills = 0;
        let mut out = Vec::new();
        assert_eq!(
            s.read("r", Seq { offset: 4, epoch: 5 }, usize::MAX, &mut out, 0, &mut |_| {
                fills += 1;
                true
            }),
            Read::Pending
        );
        assert_eq!(fills, 1);
        // A new epoch from live traffic replaces everything.
        assert!(s.insert("r", Seq { offset: 1, epoch: 9 }, frame(1), 0));
        s.fill("r", Some((9, vec![Entry { offset: 1, frame: frame(1) }])), 0);
        let r = s.read("r", Seq { offset: 2, epoch: 5 }, usize::MAX, &mut out, 0, &mut |_| -> bool { panic!() });
        assert_eq!(r, Read::Lost { why: Lost::Epoch, last: 1, epoch: 9 });
    }
}
