//! Steady-state echo allocates nothing: once buffers are pooled and lists have grown,
//! a message in and its echo out cost no heap allocation on the server.
//!
//! The allocator counts for the whole process, so this file holds one test, and the
//! client side of the measured loop is allocation-free too: frames built beforehand,
//! fixed read buffers, blocking `write_all`/`read_exact` on a std `TcpStream`.

mod common;
mod raw_peer;

use common::TestServer;
use raw_peer::OP_BINARY;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use wsloop::server::Config;

use common::counting::{Counting, ALLOCS};

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: usize = 1_000;
const MEASURED: usize = 10_000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `frame` (a masked binary message of `payload`) and reads its echo into `buf`;
/// allocates nothing unless it fails.
fn round_trip(s: &mut TcpStream, frame: &[u8], payload: &[u8], buf: &mut [u8]) {
    s.write_all(frame).expect("write");
    let (fin, op, n) = raw_peer::read_frame(s, buf).expect("read echo");
    assert!(fin && op == OP_BINARY && n == payload.len());
    assert!(buf[..n] == *payload, "echo differs");
}

/// Allocations made by `rounds` round trips.
fn allocations(s: &mut TcpStream, frame: &[u8], payload: &[u8], rounds: usize) -> u64 {
    let mut buf = [0u8; 8192];
    let before = ALLOCS.load(Relaxed);
    for _ in 0..rounds {
        round_trip(s, frame, payload, &mut buf);
    }
    ALLOCS.load(Relaxed) - before
}

#[test]
fn steady_state_echo_allocates_nothing_per_message() {
    let server = TestServer::echo(Config { workers: 1, ..Config::default() });
    let mut s = raw_peer::connect(server.addr, IO_TIMEOUT);
    let small: Vec<u8> = (0..32u8).collect();
    let large: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let small_frame = raw_peer::frame(true, OP_BINARY, &small);
    let large_frame = raw_peer::frame(true, OP_BINARY, &large);

    // The counter sees allocations at all (so a zero below means something).
    let before = ALLOCS.load(Relaxed);
    drop(std::hint::black_box(vec![0u8; 64]));
    assert!(ALLOCS.load(Relaxed) > before, "the counting allocator is not in use");

    let started = Instant::now();
    allocations(&mut s, &small_frame, &small, WARMUP);
    allocations(&mut s, &large_frame, &large, WARMUP);
    let in_small = allocations(&mut s, &small_frame, &small, MEASURED);
    let in_large = allocations(&mut s, &large_frame, &large, MEASURED);
    // Alternating sizes: buffers taken for one size are fit for the other.
    let mut in_mixed = 0;
    for _ in 0..MEASURED / 2 {
        in_mixed += allocations(&mut s, &small_frame, &small, 1);
        in_mixed += allocations(&mut s, &large_frame, &large, 1);
    }
    let elapsed = started.elapsed();
    assert_eq!(in_small, 0, "allocations in {MEASURED} round trips of 32 B");
    assert_eq!(in_large, 0, "allocations in {MEASURED} round trips of 4 KiB");
    assert_eq!(in_mixed, 0, "allocations in {MEASURED} alternating round trips");
    assert!(elapsed < Duration::from_secs(120), "round trips took {elapsed:?}");
    let h = server.handle();
    let echoed: u64 = h.metrics().iter().map(|m| m.messages_out.get()).sum();
    assert_eq!(echoed, (2 * WARMUP + 3 * MEASURED) as u64);
}
