//! Quarantined snapshots: state an entity could not be activated from (a corrupted or foreign
//! snapshot, or one its `activate` panicked on), set aside for inspection instead of deleted.

use bytes::Bytes;

use crate::bounded::BoundedLog;

/// How many quarantined snapshots a kind keeps; older ones are dropped first (and counted).
pub const QUARANTINE_CAPACITY: usize = 256;

/// A snapshot an entity could not be activated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The entity kind.
    pub kind: &'static str,
    /// The entity key, as text.
    pub key: String,
    /// Why the activation failed.
    pub reason: String,
    /// The snapshot bytes, exactly as they were.
    pub snapshot: Bytes,
}

/// A kind's bounded log of quarantined snapshots.
#[derive(Debug)]
pub(crate) struct Quarantine {
    snapshots: BoundedLog<Quarantined>,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            snapshots: BoundedLog::new(QUARANTINE_CAPACITY),
        }
    }
}

impl Quarantine {
    pub(crate) fn keep(&self, snapshot: Quarantined) {
        self.snapshots.push(snapshot);
    }

    pub(crate) fn snapshot(&self) -> Vec<Quarantined> {
        self.snapshots.snapshot()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.snapshots.dropped()
    }
}
