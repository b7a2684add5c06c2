//! The timer wheel's costs: schedule + cancel and reschedule with many live timers, and
//! what one tick of `advance` costs depending on how many timers sit in other slots.
//!
//! `cargo bench --bench timer` (add `-- --measurement-time 2` for a quick run).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::{Duration, Instant};
// The wheel is crate-private; the benchmark compiles its own copy of the module.
#[allow(dead_code)]
#[path = "../src/server/timer.rs"]
mod timer;
use timer::{TimerId, TimerWheel};

/// The server's wheel size (`Ctx::new`).
const SLOTS: u64 = 1024;

/// A far-off turn: nothing scheduled there comes due during a benchmark.
const FAR: u64 = 1_000_000 * SLOTS;

/// A cheap deterministic spread of slots (Knuth's multiplicative hash).
fn spread(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) >> 7
}

/// `n` live timers, far in the future, over every slot (like connections' timers).
fn wheel_with(n: u64) -> (TimerWheel<u64>, Vec<TimerId>) {
    let mut w = TimerWheel::new(SLOTS as usize);
    let ids = (0..n).map(|i| w.schedule(FAR + spread(i) % SLOTS, i)).collect();
    (w, ids)
}

fn schedule_cancel(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule+cancel");
    for live in [0u64, 100_000] {
        let (mut w, _) = wheel_with(live);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(format!("{live} live")), |b| {
            b.iter(|| {
                i += 1;
                // A deadline within the next turn, in a different slot each time.
                let id = w.schedule(black_box(1 + spread(i) % SLOTS), i);
                black_box(w.cancel(id))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("reschedule");
    let (mut w, ids) = wheel_with(100_000);
    let mut i = 0u64;
    g.bench_function("100000 live", |b| {
        b.iter(|| {
            i += 1;
            let id = ids[(spread(i) % ids.len() as u64) as usize];
            black_box(w.reschedule(id, FAR + spread(i + 7) % SLOTS))
        })
    });
    g.finish();
}

/// One tick of `advance` over an empty slot while `n` timers wait in other slots: the
/// cost must not grow with `n`. The timers sit in the upper half of the wheel; each
/// batch times single-tick advances over the empty lower half, then moves through the
/// upper half untimed.
fn advance_empty_slot(c: &mut Criterion) {
    let mut g = c.benchmark_group("advance empty tick");
    for n in [0u64, 10_000, 100_000] {
        let mut w = TimerWheel::new(SLOTS as usize);
        for i in 0..n {
            w.schedule(FAR + SLOTS / 2 + i % (SLOTS / 2), i);
        }
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::from_parameter(format!("{n} elsewhere")), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let k = (iters - done).min(SLOTS / 2);
                    let start = Instant::now();
                    for _ in 0..k {
                        let now = w.current_tick();
                        w.advance(black_box(now), usize::MAX, &mut out);
                    }
                    timed += start.elapsed();
                    done += k;
                    // Untimed: on through the occupied half to the next turn.
                    let end = w.current_tick() | (SLOTS - 1);
                    w.advance(end, usize::MAX, &mut out);
                    assert!(out.is_empty());
                }
                timed
            })
        });
    }
    g.finish();

    // The other side of a single-level hashed wheel: a tick whose slot holds timers of
    // later turns walks them. With 100,000 timers over 1,024 slots that is ~98 entries.
    let mut g = c.benchmark_group("advance occupied tick");
    let (mut w, _) = wheel_with(100_000);
    let mut out = Vec::new();
    g.bench_function("100000 over all slots, none due", |b| {
        b.iter(|| {
            let now = w.current_tick();
            w.advance(black_box(now), usize::MAX, &mut out);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = schedule_cancel, advance_empty_slot
}
criterion_main!(benches);
