//! A bounded, in-memory log: the newest entries up to a capacity, the oldest dropped first and
//! counted. Dead letters and quarantined snapshots are kept in one.

use std::{collections::VecDeque, sync::Mutex};

#[derive(Debug)]
pub(crate) struct BoundedLog<T> {
    capacity: usize,
    /// The entries, oldest first, and how many were dropped to stay within `capacity`.
    entries: Mutex<(VecDeque<T>, u64)>,
}

impl<T: Clone> BoundedLog<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedLog {
            capacity: capacity.max(1),
            entries: Mutex::new((VecDeque::new(), 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<T>, u64)> {
        // Only this module's short critical sections run under the lock.
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn push(&self, entry: T) {
        let mut entries = self.lock();
        if entries.0.len() == self.capacity {
            entries.0.pop_front();
            entries.1 += 1;
        }
        entries.0.push_back(entry);
    }

    pub(crate) fn snapshot(&self) -> Vec<T> {
        self.lock().0.iter().cloned().collect()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.lock().1
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedLog;

    #[test]
    fn keeps_the_newest_entries_and_counts_the_dropped() {
        let log = BoundedLog::new(3);
        for entry in 1..=5 {
            log.push(entry);
        }
        assert_eq!(log.snapshot(), [3, 4, 5]);
        assert_eq!((log.len(), log.dropped()), (3, 2));
    }
}
