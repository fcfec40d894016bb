//! The embedded store: one redb database file in a data directory. redb is a pure-Rust ACID
//! key-value store (copy-on-write B-trees, crash-safe commits); a batch is one write
//! transaction, committed durably, run on tokio's blocking pool so no entity's task waits on
//! the disk.

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    LogRead, Outcome, SetAside, StateStore, StoreError, StoreFuture, Stored, Write, decode_aside,
    decode_record, encode_aside, encode_entry, encode_record, fence, read_entries, split_entries,
};

/// (kind, key) -> framed record.
const RECORDS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("records");
/// (kind, key, first seq) -> the framed log entries of one append, back to back: one row per
/// append, not per entry (a room appends a frame's worth of entries at a time), so the B-tree
/// takes one insert per entity per write.
const LOGS: TableDefinition<'_, (&str, &str, u64), &[u8]> = TableDefinition::new("logs");
/// (kind, key) -> generation.
const GENERATIONS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("generations");
/// (kind, n) -> key, reason, raw parts (length-prefixed).
const ASIDE: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("set_aside");

/// A [`StateStore`] in a redb database file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) the store in directory `dir` (created if missing), in the file
    /// `garrison.redb`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the directory or the database cannot be opened (another
    /// process holds it, or it is not a redb file).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|error| unavailable(format!("data directory {}: {error}", dir.display())))?;
        let path = dir.join("garrison.redb");
        let db = Database::create(&path)
            .map_err(|error| unavailable(format!("{}: {error}", path.display())))?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(RECORDS).map_err(unavailable)?;
            txn.open_table(LOGS).map_err(unavailable)?;
            txn.open_table(GENERATIONS).map_err(unavailable)?;
            txn.open_table(ASIDE).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Stores `raw` as entity `kind`/`key`'s record bytes, as they are (tooling and tests: a
    /// damaged record).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the transaction fails.
    pub fn put_raw_record(&self, kind: &str, key: &str, raw: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        txn.open_table(RECORDS)
            .map_err(unavailable)?
            .insert((kind, key), raw)
            .map_err(unavailable)?;
        txn.commit().map_err(unavailable)
    }

    /// Stores `raw` as log entry `seq` of entity `kind`/`key`, as it is.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the transaction fails.
    pub fn put_raw_entry(
        &self,
        kind: &str,
        key: &str,
        seq: u64,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        txn.open_table(LOGS)
            .map_err(unavailable)?
            .insert((kind, key, seq), raw)
            .map_err(unavailable)?;
        txn.commit().map_err(unavailable)
    }

    /// Runs `job` on tokio's blocking pool (the disk never blocks an entity's task).
    fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || job(&db))
                .await
                .map_err(|error| unavailable(format!("store task failed: {error}")))?
        })
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: "redb",
        reason: error.to_string(),
    }
}

fn apply(db: &Database, batch: &[Write]) -> Result<Vec<Outcome>, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
        let mut logs = txn.open_table(LOGS).map_err(unavailable)?;
        let mut generations = txn.open_table(GENERATIONS).map_err(unavailable)?;
        for write in batch {
            let (kind, key) = write.target();
            let stored = generations
                .get((kind, key))
                .map_err(unavailable)?
                .map_or(0, |generation| generation.value());
            let outcome = fence(stored, write.generation());
            outcomes.push(outcome);
            if outcome != Outcome::Written {
                continue;
            }
            generations
                .insert((kind, key), write.generation())
                .map_err(unavailable)?;
            match write {
                Write::Put {
                    log_from, snapshot, ..
                } => {
                    records
                        .insert((kind, key), &encode_record(*log_from, snapshot)[..])
                        .map_err(unavailable)?;
                    logs.retain_in((kind, key, 0)..=(kind, key, u64::MAX), |_, _| false)
                        .map_err(unavailable)?;
                }
                Write::Append { entries, .. } => {
                    let Some(first) = entries.first() else {
                        continue;
                    };
                    let mut chunk = Vec::new();
                    for entry in entries {
                        chunk.extend_from_slice(&encode_entry(entry));
                    }
                    logs.insert((kind, key, first.seq), &chunk[..])
                        .map_err(unavailable)?;
                }
                Write::Delete { .. } => {
                    records.remove((kind, key)).map_err(unavailable)?;
                    logs.retain_in((kind, key, 0)..=(kind, key, u64::MAX), |_, _| false)
                        .map_err(unavailable)?;
                }
            }
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(outcomes)
}

impl StateStore for RedbStore {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let records = txn.open_table(RECORDS).map_err(unavailable)?;
            let Some(raw) = records
                .get((kind.as_str(), key.as_str()))
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let raw = Bytes::copy_from_slice(raw.value());
            let generation = txn
                .open_table(GENERATIONS)
                .map_err(unavailable)?
                .get((kind.as_str(), key.as_str()))
                .map_err(unavailable)?
                .map_or(0, |generation| generation.value());
            let (log_from, snapshot) =
                decode_record(&raw).map_err(|reason| StoreError::Corrupt {
                    store: "redb",
                    kind,
                    key,
                    reason,
                })?;
            Ok(Some(Stored {
                generation,
                log_from,
                snapshot,
            }))
        })
    }

    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>> {
        let batch = batch.to_vec();
        self.blocking(move |db| apply(db, &batch))
    }

    fn list<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<String>> {
        let kind = kind.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let records = txn.open_table(RECORDS).map_err(unavailable)?;
            let mut keys = Vec::new();
            for row in records.range((kind.as_str(), "")..).map_err(unavailable)? {
                let (id, _) = row.map_err(unavailable)?;
                let (of, key) = id.value();
                if of != kind {
                    break;
                }
                keys.push(key.to_owned());
            }
            Ok(keys)
        })
    }

    fn read_log<'a>(&'a self, kind: &'a str, key: &'a str, from: u64) -> StoreFuture<'a, LogRead> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let logs = txn.open_table(LOGS).map_err(unavailable)?;
            let mut raw = Vec::new();
            // A row holds entries from its key's seq on: every row of the entity is read (its
            // log was truncated at its snapshot), and entries before `from` are skipped.
            for row in logs
                .range((kind.as_str(), key.as_str(), 0)..=(kind.as_str(), key.as_str(), u64::MAX))
                .map_err(unavailable)?
            {
                let (_, value) = row.map_err(unavailable)?;
                raw.extend(split_entries(Bytes::copy_from_slice(value.value())));
            }
            Ok(read_entries(from, raw))
        })
    }

    fn set_aside<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, ()> {
        let (kind, key, reason) = (kind.to_owned(), key.to_owned(), reason.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let (kind, key) = (kind.as_str(), key.as_str());
                let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
                let mut logs = txn.open_table(LOGS).map_err(unavailable)?;
                let mut aside = txn.open_table(ASIDE).map_err(unavailable)?;
                let mut raw: Vec<Bytes> = records
                    .remove((kind, key))
                    .map_err(unavailable)?
                    .map(|value| Bytes::copy_from_slice(value.value()))
                    .into_iter()
                    .collect();
                for row in logs
                    .extract_from_if((kind, key, 0)..=(kind, key, u64::MAX), |_, _| true)
                    .map_err(unavailable)?
                {
                    let (_, value) = row.map_err(unavailable)?;
                    raw.extend(split_entries(Bytes::copy_from_slice(value.value())));
                }
                let next = aside
                    .range((kind, 0)..=(kind, u64::MAX))
                    .map_err(unavailable)?
                    .next_back()
                    .transpose()
                    .map_err(unavailable)?
                    .map_or(0, |(id, _)| id.value().1 + 1);
                aside
                    .insert((kind, next), &encode_aside(key, &reason, &raw)[..])
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })
    }

    fn set_aside_records<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<SetAside>> {
        let kind = kind.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let aside = txn.open_table(ASIDE).map_err(unavailable)?;
            let mut records = Vec::new();
            for row in aside
                .range((kind.as_str(), 0)..=(kind.as_str(), u64::MAX))
                .map_err(unavailable)?
            {
                let (_, value) = row.map_err(unavailable)?;
                if let Some(record) = decode_aside(value.value()) {
                    records.push(record);
                }
            }
            Ok(records)
        })
    }
}
