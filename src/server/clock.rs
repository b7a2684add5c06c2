//! The workers' clock: monotonic nanoseconds as a plain integer.
//!
//! A loop turn reads the clock twice. `Instant::elapsed` costs two calls and a checked
//! timespec subtraction (~110 instructions a turn, as much as the rest of an idle
//! turn's bookkeeping); on Unix this is one `clock_gettime(CLOCK_MONOTONIC)` (the same
//! clock `Instant` reads; glibc answers it from the vDSO, without a system call).

/// Monotonic time in nanoseconds from an arbitrary origin.
#[cfg(unix)]
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec for the call's duration. The call
    // cannot fail for CLOCK_MONOTONIC with a valid pointer (std relies on the same).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

/// Monotonic time in nanoseconds from an arbitrary origin.
#[cfg(not(unix))]
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let d = ORIGIN.get_or_init(Instant::now).elapsed();
    d.as_secs().saturating_mul(1_000_000_000).saturating_add(d.subsec_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn advances_like_instant() {
        // Our reads bracket std's, so our interval holds std's (same clock).
        let a = monotonic_ns();
        let i = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let j = Instant::now();
        let b = monotonic_ns();
        let ours = b - a;
        let std = j.duration_since(i).as_nanos() as u64;
        assert!(std >= 20_000_000, "{std} ns");
        assert!(ours >= std, "ours {ours} ns < std {std} ns");
        // Generous: a preempted test thread must not fail it.
        assert!(ours - std < 200_000_000, "ours {ours} ns, std {std} ns");
    }
}
