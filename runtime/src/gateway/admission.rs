//! Admission: how many connections the gateway serves at once, and what happens past that.
//!
//! A connection holds an [`Admission`] for as long as it lives; the guard gives its place back
//! when dropped, on every path. The limit is the configured `max_connections`, capped by what the
//! process's open-file limit allows (raised toward its hard limit at start) minus a reserve for
//! everything else the process opens, so the gateway refuses players with `ServerFull` instead of
//! running out of descriptors and leaving them in the listen backlog. If descriptors run out
//! anyway (something else in the process used them), a spare descriptor kept for the purpose is
//! freed to accept the waiting connection and tell it the server is full.

use std::{
    fs::File,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// A connection's place under the connection limit.
#[derive(Debug)]
pub(crate) struct Admission {
    active: Arc<AtomicUsize>,
}

impl Admission {
    /// Takes a place if fewer than `max` are taken.
    pub(crate) fn try_admit(active: &Arc<AtomicUsize>, max: usize) -> Option<Admission> {
        // AcqRel: the count is the limit itself; every admit and release is one atomic step.
        let admitted = active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max).then_some(taken + 1)
            })
            .is_ok();
        admitted.then(|| Admission {
            active: active.clone(),
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the open-file limit leaves for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// The soft limit after raising it.
    pub(crate) limit: u64,
    /// Descriptors kept for everything but connections.
    pub(crate) reserve: u64,
}

impl FdBudget {
    /// Raises the soft open-file limit as far as the hard limit allows and returns the budget,
    /// reserving `reserve` descriptors (at most a quarter of the limit) for everything else.
    pub(crate) fn raise(reserve: usize) -> io::Result<FdBudget> {
        let limit = rlimit::increase_nofile_limit(u64::MAX)?;
        Ok(FdBudget::new(limit, reserve))
    }

    pub(crate) fn new(limit: u64, reserve: usize) -> FdBudget {
        FdBudget {
            limit,
            reserve: (reserve as u64).min(limit / 4),
        }
    }

    /// The connection limit: `configured`, or what the descriptors allow if that is less.
    pub(crate) fn cap(&self, configured: usize) -> usize {
        let allowed = self.limit.saturating_sub(self.reserve);
        configured.min(usize::try_from(allowed).unwrap_or(usize::MAX))
    }
}

/// A descriptor held back for the moment the process runs out: freed to accept one waiting
/// connection and refuse it, then taken again.
#[derive(Debug)]
pub(crate) struct Spare(Option<File>);

impl Spare {
    pub(crate) fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Frees the descriptor (when there is one to free).
    pub(crate) fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor again, if one is free now.
    pub(crate) fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// Whether an accept error means the process or the system is out of descriptors.
pub(crate) fn out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE (per process) and ENFILE (system-wide).
    matches!(error.raw_os_error(), Some(24 | 23))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_stop_at_the_limit_and_come_back_when_dropped() {
        let active = Arc::new(AtomicUsize::new(0));
        let first = Admission::try_admit(&active, 2).expect("first");
        let second = Admission::try_admit(&active, 2).expect("second");
        assert!(Admission::try_admit(&active, 2).is_none(), "at the limit");
        drop(first);
        let third = Admission::try_admit(&active, 2).expect("a place came back");
        assert_eq!(active.load(Ordering::Acquire), 2);
        drop((second, third));
        assert_eq!(active.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_descriptor_budget_caps_connections_below_the_limit() {
        // A common default soft limit: 1,024, of which 256 are reserved.
        assert_eq!(FdBudget::new(1_024, 256).cap(10_000), 768);
        // The reserve is at most a quarter of a small limit.
        assert_eq!(FdBudget::new(200, 256).cap(10_000), 150);
        // A generous limit leaves the configured maximum as it is.
        assert_eq!(FdBudget::new(1_048_576, 256).cap(10_000), 10_000);
    }
}
