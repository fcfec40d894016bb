//! The in-memory store: the conformance reference, and state that must not outlive the process.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use bytes::Bytes;

use super::{
    LogRead, Outcome, SetAside, StateStore, StoreError, StoreFuture, Stored, Write, decode_record,
    encode_entry, encode_record, fence, read_entries,
};

type Id = (String, String);

#[derive(Default)]
struct Tables {
    records: HashMap<Id, Bytes>,
    logs: HashMap<Id, BTreeMap<u64, Bytes>>,
    generations: HashMap<Id, u64>,
    aside: Vec<(String, SetAside)>,
}

/// A [`StateStore`] in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Stores `raw` as entity `kind`/`key`'s record bytes, as they are (tooling and tests: a
    /// damaged record).
    pub fn put_raw_record(&self, kind: &str, key: &str, raw: Bytes) {
        self.lock()
            .records
            .insert((kind.to_owned(), key.to_owned()), raw);
    }

    /// Stores `raw` as log entry `seq` of entity `kind`/`key`, as it is.
    pub fn put_raw_entry(&self, kind: &str, key: &str, seq: u64, raw: Bytes) {
        self.lock()
            .logs
            .entry((kind.to_owned(), key.to_owned()))
            .or_default()
            .insert(seq, raw);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn id(kind: &str, key: &str) -> Id {
    (kind.to_owned(), key.to_owned())
}

impl StateStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        let tables = self.lock();
        let id = id(kind, key);
        let result = match tables.records.get(&id) {
            None => Ok(None),
            Some(raw) => decode_record(raw)
                .map(|(log_from, snapshot)| {
                    Some(Stored {
                        generation: tables.generations.get(&id).copied().unwrap_or(0),
                        log_from,
                        snapshot,
                    })
                })
                .map_err(|reason| StoreError::Corrupt {
                    store: "memory",
                    kind: kind.to_owned(),
                    key: key.to_owned(),
                    reason,
                }),
        };
        Box::pin(std::future::ready(result))
    }

    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>> {
        let mut tables = self.lock();
        let outcomes = batch
            .iter()
            .map(|write| {
                let (kind, key) = write.target();
                let id = id(kind, key);
                let stored = tables.generations.get(&id).copied().unwrap_or(0);
                let outcome = fence(stored, write.generation());
                if outcome != Outcome::Written {
                    return outcome;
                }
                tables.generations.insert(id.clone(), write.generation());
                match write {
                    Write::Put {
                        log_from, snapshot, ..
                    } => {
                        tables
                            .records
                            .insert(id.clone(), encode_record(*log_from, snapshot));
                        tables.logs.remove(&id);
                    }
                    Write::Append { entries, .. } => {
                        let log = tables.logs.entry(id).or_default();
                        for entry in entries {
                            log.insert(entry.seq, encode_entry(entry));
                        }
                    }
                    Write::Delete { .. } => {
                        tables.records.remove(&id);
                        tables.logs.remove(&id);
                    }
                }
                outcome
            })
            .collect();
        Box::pin(std::future::ready(Ok(outcomes)))
    }

    fn list<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<String>> {
        let keys = self
            .lock()
            .records
            .keys()
            .filter(|(of, _)| of == kind)
            .map(|(_, key)| key.clone())
            .collect();
        Box::pin(std::future::ready(Ok(keys)))
    }

    fn read_log<'a>(&'a self, kind: &'a str, key: &'a str, from: u64) -> StoreFuture<'a, LogRead> {
        let tables = self.lock();
        let read = match tables.logs.get(&id(kind, key)) {
            None => LogRead::default(),
            Some(log) => read_entries(from, log.range(from..).map(|(_, raw)| raw.clone())),
        };
        Box::pin(std::future::ready(Ok(read)))
    }

    fn set_aside<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, ()> {
        let mut tables = self.lock();
        let id = id(kind, key);
        let mut raw: Vec<Bytes> = tables.records.remove(&id).into_iter().collect();
        raw.extend(
            tables
                .logs
                .remove(&id)
                .into_iter()
                .flat_map(|log| log.into_values()),
        );
        if tables.aside.len() >= crate::QUARANTINE_CAPACITY {
            // Bounded like the kind's quarantine: the oldest goes first.
            tables.aside.remove(0);
        }
        tables.aside.push((
            kind.to_owned(),
            SetAside {
                key: key.to_owned(),
                reason: reason.to_owned(),
                raw,
            },
        ));
        Box::pin(std::future::ready(Ok(())))
    }

    fn set_aside_records<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<SetAside>> {
        let records = self
            .lock()
            .aside
            .iter()
            .filter(|(of, _)| of == kind)
            .map(|(_, aside)| aside.clone())
            .collect();
        Box::pin(std::future::ready(Ok(records)))
    }
}
