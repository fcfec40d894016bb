//! A coarse clock read without a syscall and without a thread: the kernel's coarse monotonic
//! clock (`CLOCK_MONOTONIC_COARSE`, read from the vDSO in a few nanoseconds, advanced once per
//! kernel tick: 1 to 10 ms, 4 ms on common kernels), in milliseconds since the first reading.
//! Elsewhere than Linux it is the precise clock (`Instant`). And the process's CPU clock, for
//! reports and benchmarks.
//!
//! The source's cached clock cut system CPU from 19% to 2.3% by not asking the kernel for the
//! time on every message. Garrison reads it for idle detection, rate limits and checkpoint
//! intervals. It used to be a thread storing the time in an atomic every millisecond: 1,000
//! wake-ups a second, about 4% of a one-core battle server's CPU at 400 clients (and an idle
//! server never idle); the kernel keeps the coarse clock current anyway.

use std::{sync::OnceLock, time::Duration};

/// The coarse reading at the first call, in milliseconds: readings count from it.
fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(|| millis(coarse()))
}

/// Whole milliseconds, in `u64` arithmetic (`Duration::as_millis` divides a `u128`: this is
/// read on every message).
fn millis(time: Duration) -> u64 {
    time.as_secs() * 1_000 + u64::from(time.subsec_millis())
}

/// The coarse monotonic clock, from the same origin as [`precise`].
#[cfg(target_os = "linux")]
fn coarse() -> Duration {
    since_boot(rustix::time::clock_gettime(
        rustix::time::ClockId::MonotonicCoarse,
    ))
}

/// The precise monotonic clock, from the same origin as [`coarse`].
#[cfg(target_os = "linux")]
fn precise() -> Duration {
    since_boot(rustix::time::clock_gettime(
        rustix::time::ClockId::Monotonic,
    ))
}

#[cfg(target_os = "linux")]
fn since_boot(time: rustix::time::Timespec) -> Duration {
    // A monotonic clock is never negative; the conversions cannot fail.
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    )
}

#[cfg(not(target_os = "linux"))]
fn coarse() -> Duration {
    precise()
}

#[cfg(not(target_os = "linux"))]
fn precise() -> Duration {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// How far a reading may lag real time: the kernel's tick on Linux (what `clock_getres` says
/// of the coarse clock), plus the millisecond it is truncated to.
pub fn resolution() -> Duration {
    #[cfg(target_os = "linux")]
    let tick = since_boot(rustix::time::clock_getres(
        rustix::time::ClockId::MonotonicCoarse,
    ));
    #[cfg(not(target_os = "linux"))]
    let tick = Duration::ZERO;
    tick + Duration::from_millis(1)
}

/// Milliseconds since the clock started (the first call), behind real time by at most
/// [`resolution`]. Monotonic.
pub fn now_millis() -> u64 {
    millis(coarse()).saturating_sub(epoch())
}

/// Milliseconds since the Unix epoch at the instant the clock read `millis` ([`now_millis`]),
/// converted with the precise clock, not the coarse one.
pub fn unix_ms_of(millis: u64) -> u64 {
    let at = Duration::from_millis(epoch() + millis);
    let now = precise();
    let unix = std::time::SystemTime::now();
    let then = match now.checked_sub(at) {
        Some(ago) => unix.checked_sub(ago),
        None => unix.checked_add(at - now),
    };
    then.and_then(|then| then.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64)
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_in("/proc/self/stat")
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat` (Linux;
/// `None` once it has exited, or elsewhere): a server's, measured by the bots beside it.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_in(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_in(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state; in
    // clock ticks, which Linux fixes at 100 per second for user space.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_is_read_by_its_pid_as_by_itself() {
        let before = cpu_seconds_of(std::process::id()).unwrap();
        // Burn at least 0.05 CPU-s (five clock ticks), however slow the machine.
        let start = std::time::Instant::now();
        let mut spin = 0u64;
        while process_cpu_seconds().unwrap() < before + 0.05 {
            spin = std::hint::black_box(spin.wrapping_add(1));
            assert!(start.elapsed().as_secs() < 30, "no CPU time was counted");
        }
        let after = cpu_seconds_of(std::process::id()).unwrap();
        assert!(after >= before + 0.05, "{before} -> {after}");
        assert_eq!(cpu_seconds_of(u32::MAX), None, "no such process");
    }

    #[test]
    fn a_coarse_reading_converts_to_the_wall_clock_time_it_was_taken() {
        let unix = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = unix();
        let read = now_millis();
        let after = unix();
        let converted = unix_ms_of(read);
        // The reading lags real time by its resolution plus scheduling delay, never leads it.
        assert!(converted <= after + 1, "{converted} after {after}");
        assert!(
            converted + 1_000 >= before,
            "{converted} long before {before}"
        );
        // An older reading converts to an older time, by the difference (to the millisecond).
        let older = read.saturating_sub(500);
        let apart = unix_ms_of(read) - unix_ms_of(older);
        assert!(apart.abs_diff(read - older) <= 1, "{apart} ms apart");
    }
}
