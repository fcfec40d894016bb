//! Durability of one kind: what of each entity is saved (its last snapshot and the log since),
//! and the writer that takes it to the kind's [`StateStore`](crate::store::StateStore).
//!
//! Rules:
//! - An entity's saved state lives in its activation's cell ([`Saved`]): a crash restarts it from
//!   there (snapshot, then the log replayed); the store gets a copy.
//! - A change marks the entity *dirty*. The dirty set holds one entry per entity, pointing at
//!   its cell, so it coalesces by construction: the writer always writes an entity's newest
//!   state, never a queue of old ones. It is bounded (`max_pending`); a change of an entity not
//!   already in a full set is not queued (counted as `dropped`, logged), and the entity is queued
//!   again by its next change.
//! - One writer task per kind writes the dirty set in batches (one store transaction each), at
//!   most `max_lag / 2` after the first change of a round (write-behind), or at once when a
//!   write-through entity waits for it. Writes of one kind are therefore never reordered.
//! - A store error keeps everything dirty: the writer retries with a growing pause (100 ms to
//!   2 s), the kind runs on with durability degraded (counted, logged once per outage), and
//!   the newest state of every entity is written when the store is back.
//! - A write refused by fencing means another owner took the entity: it is counted and logged,
//!   and this owner stops writing it.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::{
    Entity,
    host::EntityCell,
    store::{LogEntry, Outcome, Store, StoreError, Write},
};

/// Most entities in one batch (one store transaction), and most snapshot and log bytes (a
/// batch past either is cut: a batch must fit a store's request timeout).
const BATCH: usize = 256;
const BATCH_BYTES: usize = 4 << 20;

/// How long a write-through entity waits for the store before it goes on with its write left to
/// the write-behind path (counted as `through_timeouts`).
pub(crate) const WRITE_THROUGH_WAIT: Duration = Duration::from_secs(2);

/// What one activation has saved: its last snapshot, the log since, and how much of both the
/// store has.
#[derive(Debug, Clone, Default)]
pub(crate) struct Saved {
    /// The last checkpoint, if it ever checkpointed.
    pub(crate) snapshot: Option<Bytes>,
    /// Entries logged since the snapshot; entry `i` has sequence number `log_from + i`.
    pub(crate) log: Vec<Bytes>,
    pub(crate) log_from: u64,
    /// Counts snapshots taken, so the writer knows whether the one it wrote is still the last.
    pub(crate) snapshots: u64,
    /// Whether the store has the current snapshot, and how many of `log`'s entries.
    pub(crate) snapshot_stored: bool,
    pub(crate) log_stored: usize,
    /// The entity ended: its record is to be deleted (and is, once `deleted`).
    pub(crate) ended: bool,
    pub(crate) deleted: bool,
    /// Changes made, and changes the store has (write-through waits on these).
    pub(crate) changes: u64,
    pub(crate) stored_changes: u64,
    /// A change was not queued (the dirty set was full): the next change, or a flush, queues it.
    pub(crate) unqueued: bool,
}

impl Saved {
    /// A fresh start from a snapshot (a passivation, a register): nothing of it is known to be
    /// stored.
    pub(crate) fn from_snapshot(snapshot: Option<Bytes>) -> Self {
        Saved {
            snapshot,
            ..Saved::default()
        }
    }

    /// What a new activation carries over from an ended one's cell (it was given up on after a
    /// crash loop): the same state, which it writes again whole.
    pub(crate) fn carried(&self) -> Self {
        Saved {
            snapshot: self.snapshot.clone(),
            log: self.log.clone(),
            log_from: self.log_from,
            ..Saved::default()
        }
    }

    /// Replaces the snapshot; the log restarts after it.
    pub(crate) fn checkpoint(&mut self, snapshot: Bytes) {
        self.log_from = self.log_from.saturating_add(self.log.len() as u64);
        self.log.clear();
        self.snapshot = Some(snapshot);
        self.snapshots += 1;
        self.snapshot_stored = false;
        self.log_stored = 0;
        self.changes += 1;
    }

    /// Appends log entries.
    pub(crate) fn append(&mut self, entries: Vec<Bytes>) {
        self.log.extend(entries);
        self.changes += 1;
    }

    /// Marks the entity ended (its record is deleted).
    pub(crate) fn end(&mut self) {
        self.ended = true;
        self.changes += 1;
    }

    /// Snapshot and log bytes the store does not have yet.
    fn unstored_bytes(&self) -> usize {
        let snapshot = match (&self.snapshot, self.snapshot_stored) {
            (Some(snapshot), false) => snapshot.len(),
            _ => 0,
        };
        let from = if self.snapshot_stored {
            self.log_stored
        } else {
            0
        };
        snapshot
            + self
                .log
                .get(from..)
                .map_or(0, |log| log.iter().map(Bytes::len).sum())
    }

    fn clean(&self) -> bool {
        if self.ended {
            return self.deleted;
        }
        self.snapshot.is_none() || (self.snapshot_stored && self.log_stored == self.log.len())
    }
}

/// What a kind's durability has done, for logs, tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurabilityStats {
    /// Batches written (store transactions).
    pub batches: u64,
    /// Writes applied (puts, appends, deletes).
    pub writes: u64,
    /// Snapshot and log bytes written.
    pub bytes: u64,
    /// Batches the store failed (each retried).
    pub errors: u64,
    /// Writes refused by fencing (another owner has the entity).
    pub fenced: u64,
    /// Changes not queued because the dirty set was full.
    pub dropped: u64,
    /// Entities waiting to be written now.
    pub pending: u64,
    /// Write-through waits that timed out (left to the write-behind path).
    pub through_timeouts: u64,
    /// Entities recovered from the store.
    pub recovered: u64,
    /// Damaged records set aside.
    pub set_aside: u64,
    /// Whether the store is failing now.
    pub degraded: bool,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    fenced: AtomicU64,
    dropped: AtomicU64,
    through_timeouts: AtomicU64,
    recovered: AtomicU64,
    set_aside: AtomicU64,
    degraded: AtomicBool,
}

/// One kind's durability: its store, its dirty set and its writer.
pub(crate) struct Durable<E: Entity> {
    pub(crate) store: Store,
    pub(crate) through: bool,
    max_lag: Duration,
    max_pending: usize,
    dirty: DashMap<E::Key, Arc<EntityCell<E>>>,
    /// Wakes the writer (a permit is kept when it is busy); shared with it, so an idle writer
    /// holds no strong handle to the kind's durability (and its store).
    wake: Arc<Notify>,
    /// Someone waits: write without the coalescing pause.
    urgent: AtomicBool,
    /// Told after every batch written.
    written: Notify,
    /// The fencing token every write carries.
    generation: AtomicU64,
    /// The pause after the last failed write (0: the last write worked), doubling to 2 s.
    backoff_ms: AtomicU64,
    counters: Counters,
    writer: OnceLock<()>,
}

/// What the writer built for one entity, to mark what got stored.
struct Built<E: Entity> {
    key: E::Key,
    cell: Arc<EntityCell<E>>,
    snapshots: u64,
    log_len: usize,
    changes: u64,
    delete: bool,
    /// Where this entity's writes sit in the batch.
    writes: std::ops::Range<usize>,
}

impl<E: Entity> Durable<E> {
    pub(crate) fn new(store: Store, through: bool, max_lag: Duration, max_pending: usize) -> Self {
        Durable {
            store,
            through,
            max_lag,
            max_pending,
            dirty: DashMap::new(),
            wake: Arc::new(Notify::new()),
            urgent: AtomicBool::new(false),
            written: Notify::new(),
            generation: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            counters: Counters::default(),
            writer: OnceLock::new(),
        }
    }

    pub(crate) fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> DurabilityStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        DurabilityStats {
            batches: load(&c.batches),
            writes: load(&c.writes),
            bytes: load(&c.bytes),
            errors: load(&c.errors),
            fenced: load(&c.fenced),
            dropped: load(&c.dropped),
            pending: self.dirty.len() as u64,
            through_timeouts: load(&c.through_timeouts),
            recovered: load(&c.recovered),
            set_aside: load(&c.set_aside),
            degraded: c.degraded.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_recovered(&self) {
        self.counters.recovered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_set_aside(&self) {
        self.counters.set_aside.fetch_add(1, Ordering::Relaxed);
    }

    /// The pending state of `key` from another activation than `cell`, if the writer has not
    /// stored it yet: a new activation starts from it, not from the (older) store.
    pub(crate) fn pending_elsewhere(
        &self,
        key: &E::Key,
        cell: &Arc<EntityCell<E>>,
    ) -> Option<Saved> {
        let other = self.dirty.get(key)?;
        if Arc::ptr_eq(&other, cell) {
            return None;
        }
        Some(other.saved().clone())
    }

    /// Queues `cell`'s entity for writing, and starts the writer on `runtime` the first time.
    /// `force`: queued even when the set is full (an activation's last change, its passivation
    /// or its end, for which no next change will come; or a flush). Each entity holds at most
    /// one entry, so forcing never grows the set past the number of entities.
    pub(crate) fn mark_dirty(
        self: &Arc<Self>,
        key: &E::Key,
        cell: &Arc<EntityCell<E>>,
        runtime: Option<&tokio::runtime::Handle>,
        force: bool,
    ) {
        if !force && self.dirty.len() >= self.max_pending && !self.dirty.contains_key(key) {
            cell.saved().unqueued = true;
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::warn!(
                    game.entity.kind = E::KIND,
                    game.entity.key = %key,
                    dropped = dropped + 1,
                    max_pending = self.max_pending,
                    "durability degraded: the write-behind set is full (the store is down or too \
                     slow); this change is kept in memory only until the entity's next change"
                );
            }
            return;
        }
        cell.saved().unqueued = false;
        self.dirty.insert(key.clone(), cell.clone());
        self.ensure_writer(runtime);
        self.wake.notify_one();
    }

    fn ensure_writer(self: &Arc<Self>, runtime: Option<&tokio::runtime::Handle>) {
        self.writer.get_or_init(|| {
            let durable = Arc::downgrade(self);
            let task = async move {
                loop {
                    let Some(strong) = durable.upgrade() else {
                        return;
                    };
                    if strong.dirty.is_empty() {
                        // Idle without holding the kind: dropping it wakes us to end.
                        let wake = strong.wake.clone();
                        drop(strong);
                        wake.notified().await;
                        continue;
                    }
                    strong.round().await;
                }
            };
            match runtime.cloned().or_else(crate::concurrency::current) {
                Some(runtime) => {
                    runtime.spawn(task);
                }
                None => tracing::error!(
                    game.entity.kind = E::KIND,
                    "no tokio runtime to run the state writer on: durability is off for this kind"
                ),
            }
        });
    }

    /// Writes everything dirty now, in batches, retrying while the store fails.
    async fn round(&self) {
        if !self.urgent.swap(false, Ordering::Relaxed) {
            // Coalesce: the changes of the next half lag go in the same write.
            let pause = self.max_lag / 2;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.wait_urgent() => {}
            }
            self.urgent.store(false, Ordering::Relaxed);
        }
        let entries: Vec<(E::Key, Arc<EntityCell<E>>)> = self
            .dirty
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && end - start < BATCH
                && (end == start || bytes < BATCH_BYTES)
            {
                bytes += entries[end].1.saved().unstored_bytes();
                end += 1;
            }
            self.write_chunk(&entries[start..end]).await;
            start = end;
        }
        self.written.notify_waiters();
    }

    async fn wait_urgent(&self) {
        while !self.urgent.load(Ordering::Relaxed) {
            self.wake.notified().await;
        }
    }

    async fn write_chunk(&self, chunk: &[(E::Key, Arc<EntityCell<E>>)]) {
        let kind_generation = self.generation.load(Ordering::Relaxed);
        let mut batch = Vec::with_capacity(chunk.len());
        let mut built = Vec::with_capacity(chunk.len());
        for (key, cell) in chunk {
            let generation = cell.fence.unwrap_or(kind_generation);
            let saved = cell.saved();
            let start = batch.len();
            let (kind, key_text) = (E::KIND.to_owned(), key.to_string());
            if saved.ended {
                if !saved.deleted {
                    batch.push(Write::Delete {
                        kind,
                        key: key_text,
                        generation,
                    });
                }
            } else if let Some(snapshot) = &saved.snapshot {
                let first = if saved.snapshot_stored {
                    saved.log_stored
                } else {
                    batch.push(Write::Put {
                        kind: kind.clone(),
                        key: key_text.clone(),
                        generation,
                        log_from: saved.log_from,
                        snapshot: snapshot.clone(),
                    });
                    0
                };
                if first < saved.log.len() {
                    batch.push(Write::Append {
                        kind,
                        key: key_text,
                        generation,
                        entries: saved.log[first..]
                            .iter()
                            .enumerate()
                            .map(|(at, bytes)| LogEntry {
                                seq: saved.log_from + (first + at) as u64,
                                bytes: bytes.clone(),
                            })
                            .collect(),
                    });
                }
            }
            built.push(Built {
                key: key.clone(),
                cell: cell.clone(),
                snapshots: saved.snapshots,
                log_len: saved.log.len(),
                changes: saved.changes,
                delete: saved.ended,
                writes: start..batch.len(),
            });
        }
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            match self.store.write(&batch).await {
                Ok(outcomes) => {
                    self.backoff_ms.store(0, Ordering::Relaxed);
                    outcomes
                }
                // Everything stays dirty; after the pause the next round builds its batches
                // again from the newest state.
                Err(error) => return self.failed(&error).await,
            }
        };
        if batch.is_empty() {
            // Nothing to write for these (a fresh entity that never checkpointed).
        } else if self.counters.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(
                game.entity.kind = E::KIND,
                store = self.store.name(),
                pending = self.dirty.len(),
                "state store back: durability restored, writing the newest state of every \
                 waiting entity"
            );
        }
        self.counters
            .batches
            .fetch_add(u64::from(!batch.is_empty()), Ordering::Relaxed);
        self.counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let bytes: usize = batch.iter().map(Write::payload_len).sum();
        self.counters
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        for done in built {
            let fenced = outcomes
                .get(done.writes.clone())
                .unwrap_or_default()
                .iter()
                .find_map(|outcome| match outcome {
                    Outcome::Fenced { stored } => Some(*stored),
                    Outcome::Written => None,
                });
            {
                let mut saved = done.cell.saved();
                if let Some(stored) = fenced {
                    self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        game.entity.kind = E::KIND,
                        game.entity.key = %done.key,
                        generation = done.cell.fence.unwrap_or(kind_generation),
                        stored,
                        "state write fenced: another owner holds this entity (generation \
                         {stored} > ours); this node stops writing it"
                    );
                    // Nothing more of this activation is written.
                    saved.ended = true;
                    saved.deleted = true;
                } else if done.delete {
                    saved.deleted = true;
                } else if saved.snapshots == done.snapshots {
                    saved.snapshot_stored = true;
                    saved.log_stored = saved.log_stored.max(done.log_len);
                }
                saved.stored_changes = saved.stored_changes.max(done.changes);
            }
            self.dirty.remove_if(&done.key, |_, cell| {
                Arc::ptr_eq(cell, &done.cell) && cell.saved().clean()
            });
        }
    }

    async fn failed(&self, error: &StoreError) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if !self.counters.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                game.entity.kind = E::KIND,
                store = self.store.name(),
                %error,
                pending = self.dirty.len(),
                "state store failing: durability degraded; entities run on and their newest \
                 state is written when it is back"
            );
        }
        let pause = match self.backoff_ms.load(Ordering::Relaxed) {
            0 => 100,
            last => (last * 2).min(2_000),
        };
        self.backoff_ms.store(pause, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    /// Waits until the store has `cell`'s changes up to `changes` (write-through), at most
    /// [`WRITE_THROUGH_WAIT`].
    pub(crate) async fn wait_stored(&self, cell: &EntityCell<E>, changes: u64) {
        let deadline = Instant::now() + WRITE_THROUGH_WAIT;
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if cell.saved().stored_changes >= changes {
                return;
            }
            self.urgent.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, written).await.is_err() {
                self.counters
                    .through_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    game.entity.kind = E::KIND,
                    store = self.store.name(),
                    "write-through: the store did not confirm within {WRITE_THROUGH_WAIT:?}; \
                     the write is left to the write-behind path"
                );
                return;
            }
        }
    }

    /// Waits until nothing is waiting to be written, at most `timeout`; returns whether it
    /// got there.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.dirty.is_empty() {
                return true;
            }
            self.urgent.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, written).await.is_err() {
                return self.dirty.is_empty();
            }
        }
    }
}

impl<E: Entity> Durable<E> {
    /// Waits until none of `keys` waits to be written, at most `timeout`; returns how many
    /// still do.
    pub(crate) async fn flush_keys(&self, keys: &[E::Key], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let dirty = || {
            keys.iter()
                .filter(|key| self.dirty.contains_key(*key))
                .count()
        };
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if dirty() == 0 {
                return 0;
            }
            self.urgent.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, written).await.is_err() {
                return dirty();
            }
        }
    }
}

impl<E: Entity> Drop for Durable<E> {
    fn drop(&mut self) {
        // The writer, if idle, wakes, finds the kind gone and ends (letting go of the store).
        self.wake.notify_one();
    }
}

/// Lets a cell's saved state be locked the same way everywhere.
impl<E: Entity> EntityCell<E> {
    pub(crate) fn saved(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
