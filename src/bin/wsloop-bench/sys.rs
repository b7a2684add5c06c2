//! What the generator reads from and asks of the OS: CPU time and RSS samples from
//! `/proc`, the clock tick rate, the open-file limit, one socket option. The binary's
//! only `unsafe` (libc calls) is here.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// CPU time and wall time of a process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// utime + stime, in clock ticks.
    pub ticks: u64,
    /// stime alone (time in the kernel), in clock ticks.
    pub sys_ticks: u64,
    pub at: Instant,
}

impl CpuSample {
    /// Samples `/proc/<pid>/stat` (`pid` may be `"self"`).
    pub fn take(pid: &str) -> Option<CpuSample> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (utime, stime) = parse_stat_cpu_ticks(&stat)?;
        Some(CpuSample { ticks: utime + stime, sys_ticks: stime, at: Instant::now() })
    }
}

/// CPU use between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// Percent of one core (can exceed 100 for a multi-threaded process).
    pub pct: f64,
    /// CPU time in microseconds.
    pub cpu_us: f64,
    /// The part of `cpu_us` spent in the kernel (system calls, and on loopback the
    /// peer's TCP receive path, which runs in the sender's system call).
    pub sys_us: f64,
}

impl CpuUse {
    pub fn between(a: CpuSample, b: CpuSample, ticks_per_s: u64) -> CpuUse {
        let cpu_s = b.ticks.saturating_sub(a.ticks) as f64 / ticks_per_s.max(1) as f64;
        let sys_s = b.sys_ticks.saturating_sub(a.sys_ticks) as f64 / ticks_per_s.max(1) as f64;
        let wall_s = b.at.duration_since(a.at).as_secs_f64();
        CpuUse {
            pct: if wall_s > 0.0 { 100.0 * cpu_s / wall_s } else { 0.0 },
            cpu_us: cpu_s * 1e6,
            sys_us: sys_s * 1e6,
        }
    }
}

/// utime and stime (fields 14 and 15) from the text of `/proc/<pid>/stat`. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first one after the command name.
    let mut fields = after_comm.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The `VmRSS` line of `/proc/<pid>/status`, in kB.
pub fn parse_vmrss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let kb = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kb)
}

/// The resident set size of `pid` in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    parse_vmrss_kb(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` CPU times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant; it has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Raises the soft open-file limit to the hard limit; returns the soft limit now in
/// force (0 when it cannot be read).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit, only read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on an IPv4 socket: a later `bind` to an address with
/// port 0 leaves the port to `connect`, which can reuse a port for different
/// destinations and does not scan the bound-port table (slow with thousands bound).
pub fn set_bind_address_no_port(fd: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket for the duration of the call; `on` is a valid c_int
    // and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_with_awkward_command_name() {
        let stat = "4242 (tt (echo) 1) S 1 4242 4242 0 -1 4194560 1530 0 0 0 1234 567 0 0 20 0 \
                    9 0 123456 1234567 890 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 \
                    1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((1234, 567)));
    }

    #[test]
    fn stat_truncated_or_garbled() {
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parens here"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 a b"), None);
    }

    #[test]
    fn vmrss_line() {
        let status = "Name:\tgorilla-echo\nVmPeak:\t  10000 kB\nVmRSS:\t   17712 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vmrss_kb(status), Some(17712));
        assert_eq!(parse_vmrss_kb("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vmrss_kb("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        assert!(CpuSample::take("self").is_some());
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn cpu_use_arithmetic() {
        let t0 = Instant::now();
        let a = CpuSample { ticks: 100, sys_ticks: 60, at: t0 };
        let b = CpuSample { ticks: 150, sys_ticks: 90, at: t0 + Duration::from_secs(1) };
        let u = CpuUse::between(a, b, 100);
        assert!((u.pct - 50.0).abs() < 1e-9);
        assert!((u.cpu_us - 500_000.0).abs() < 1e-6);
        assert!((u.sys_us - 300_000.0).abs() < 1e-6);
    }
}
