//! The Redis store, for a fleet of nodes sharing state: the `redis` crate's connection manager
//! for reads (one multiplexed connection, reconnected in the background), and a connection of
//! the store's own for batches.
//!
//! A batch is an optimistic transaction, two round trips: `WATCH` the generations of the kinds
//! it writes and read them (`HMGET`), decide each write's fencing here, then `MULTI`, the writes
//! grouped into few commands (one `MSET` for every snapshot, one `DEL` for their logs, one
//! `SADD` per kind, a `ZADD` per append, one `HSET` per kind for changed generations), `EXEC`.
//! When another writer changed a watched generation meanwhile (another node took an entity),
//! `EXEC` applies nothing and the batch is decided again. Generations only change when an
//! entity changes owner, so on a steady fleet a batch is never retried. A connection lost
//! before `EXEC` applies nothing.
//!
//! Layout, under a namespace (`garrison` unless configured), `{id}` being `len(kind):kind:key`:
//! `{ns}:record:{id}` holds a record; `{ns}:index:{kind}` is the set of keys with a record;
//! `{ns}:generations:{kind}` a hash of generations by key; `{ns}:log:{id}` a sorted set of
//! framed entries scored by sequence number; `{ns}:aside:{kind}` a list. One Redis (or a
//! primary with replicas), not Redis Cluster: a batch touches keys of many slots.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use redis::{
    AsyncCommands,
    aio::{ConnectionManager, MultiplexedConnection},
};

use super::{
    LogRead, Outcome, SetAside, StateStore, StoreError, StoreFuture, Stored, Write, decode_aside,
    decode_record, encode_aside, encode_entry, encode_record, fence, read_entries,
};

/// How often a batch is decided again when another writer changed a generation it watched.
const ATTEMPTS: usize = 16;

/// A [`StateStore`] on a Redis server.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    client: redis::Client,
    /// The batches' connection: `WATCH` and `MULTI` belong to a connection, so no other
    /// request may share it; one batch at a time (a kind has one writer anyway). `None` until
    /// first used, and again after it failed.
    writer: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`), keeping every key under `namespace`. A
    /// request waits at most five seconds for its answer (a batch is at most 256 writes and
    /// 4 MiB); the connection is re-established in the background when it drops.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(RedisStore {
            connection,
            namespace: namespace.to_owned(),
            client,
            writer: Arc::default(),
        })
    }

    /// Stores `raw` as entity `kind`/`key`'s record bytes, as they are (tooling and tests: a
    /// damaged record).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis fails the command.
    pub async fn put_raw_record(
        &self,
        kind: &str,
        key: &str,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .set(self.record(kind, key), raw)
            .sadd(self.index(kind), key)
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    /// Stores `raw` as log entry `seq` of entity `kind`/`key`, as it is.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis fails the command.
    pub async fn put_raw_entry(
        &self,
        kind: &str,
        key: &str,
        seq: u64,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection
            .zadd::<_, _, _, ()>(self.log(kind, key), raw, seq)
            .await
            .map_err(unavailable)
    }

    /// The batches' connection, connected if it is not.
    async fn writer_connection<'c>(
        &self,
        writer: &'c mut Option<MultiplexedConnection>,
    ) -> Result<&'c mut MultiplexedConnection, StoreError> {
        if writer.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(5)));
            let connection = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(unavailable)?;
            *writer = Some(connection);
        }
        writer
            .as_mut()
            .ok_or_else(|| unavailable("no connection for the batch"))
    }

    /// One batch as an optimistic transaction (see the module's documentation).
    async fn write_watched(
        &self,
        writer: &mut Option<MultiplexedConnection>,
        batch: &[Write],
    ) -> Result<Vec<Outcome>, StoreError> {
        let connection = self.writer_connection(writer).await?;
        let mut kinds: Vec<&str> = batch.iter().map(|write| write.target().0).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for _ in 0..ATTEMPTS {
            // 1. Watch and read the generations.
            let mut read = redis::pipe();
            read.cmd("WATCH")
                .arg(
                    kinds
                        .iter()
                        .map(|kind| self.generations(kind))
                        .collect::<Vec<_>>(),
                )
                .ignore();
            let mut asked: Vec<Vec<&str>> = Vec::with_capacity(kinds.len());
            for kind in &kinds {
                let keys: Vec<&str> = batch
                    .iter()
                    .map(Write::target)
                    .filter(|(of, _)| of == kind)
                    .map(|(_, key)| key)
                    .collect();
                read.cmd("HMGET").arg(self.generations(kind)).arg(&keys);
                asked.push(keys);
            }
            let answers: Vec<Vec<Option<u64>>> =
                read.query_async(connection).await.map_err(unavailable)?;
            let mut stored: HashMap<(&str, &str), u64> = HashMap::new();
            for ((kind, keys), answer) in kinds.iter().zip(&asked).zip(answers) {
                for (key, generation) in keys.iter().zip(answer) {
                    stored.insert((kind, key), generation.unwrap_or(0));
                }
            }
            // 2. Decide each write, in order, as the store would.
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut changed: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
            for write in batch {
                let (kind, key) = write.target();
                let held = stored.get(&(kind, key)).copied().unwrap_or(0);
                let outcome = fence(held, write.generation());
                if outcome == Outcome::Written && held != write.generation() {
                    stored.insert((kind, key), write.generation());
                    changed
                        .entry(kind)
                        .or_default()
                        .push((key, write.generation()));
                }
                outcomes.push(outcome);
            }
            // 3. The writes, grouped, in one transaction.
            let mut apply = redis::pipe();
            apply.atomic();
            self.queue_writes(&mut apply, batch, &outcomes);
            for (kind, generations) in &changed {
                apply.hset_multiple(self.generations(kind), generations);
            }
            // Never empty: an answer, or `Nil` when a watched generation changed.
            apply.cmd("PING");
            let done: redis::Value = apply.query_async(connection).await.map_err(unavailable)?;
            if done != redis::Value::Nil {
                return Ok(outcomes);
            }
        }
        Err(unavailable(format!(
            "the batch was contended {ATTEMPTS} times (other writers keep changing generations)"
        )))
    }

    /// Queues the written (not fenced) writes of `batch` into `pipe`: grouped by what they do
    /// (every snapshot in one `MSET`, their logs cleared by one `DEL`, ...), which keeps a
    /// key's order because a batch that deletes a key does nothing else to it; otherwise in
    /// order, one write at a time.
    fn queue_writes(&self, pipe: &mut redis::Pipeline, batch: &[Write], outcomes: &[Outcome]) {
        let written = batch
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| **outcome == Outcome::Written)
            .map(|(write, _)| write);
        let deleted: HashSet<(&str, &str)> = batch
            .iter()
            .filter(|write| matches!(write, Write::Delete { .. }))
            .map(Write::target)
            .collect();
        let mixed = batch.iter().any(|write| {
            !matches!(write, Write::Delete { .. }) && deleted.contains(&write.target())
        });
        if mixed {
            for write in written {
                self.queue_one(pipe, write);
            }
            return;
        }
        let mut records: Vec<(String, Bytes)> = Vec::new();
        let mut cleared: Vec<String> = Vec::new();
        let mut indexed: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut appends = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let mut unindexed: HashMap<&str, Vec<&str>> = HashMap::new();
        for write in written {
            let (kind, key) = write.target();
            match write {
                Write::Put {
                    log_from, snapshot, ..
                } => {
                    records.push((self.record(kind, key), encode_record(*log_from, snapshot)));
                    cleared.push(self.log(kind, key));
                    indexed.entry(kind).or_default().push(key);
                }
                Write::Append { .. } => appends.push(write),
                Write::Delete { .. } => {
                    removed.push(self.record(kind, key));
                    removed.push(self.log(kind, key));
                    unindexed.entry(kind).or_default().push(key);
                }
            }
        }
        if !records.is_empty() {
            let pairs: Vec<(&str, &[u8])> = records
                .iter()
                .map(|(name, record)| (name.as_str(), &record[..]))
                .collect();
            pipe.mset(&pairs).del(&cleared);
            for (kind, keys) in &indexed {
                pipe.sadd(self.index(kind), keys);
            }
        }
        for write in appends {
            self.queue_one(pipe, write);
        }
        if !removed.is_empty() {
            pipe.del(&removed);
            for (kind, keys) in &unindexed {
                pipe.srem(self.index(kind), keys);
            }
        }
    }

    /// Queues one write.
    fn queue_one(&self, pipe: &mut redis::Pipeline, write: &Write) {
        let (kind, key) = write.target();
        let log = self.log(kind, key);
        match write {
            Write::Put {
                log_from, snapshot, ..
            } => {
                pipe.set(
                    self.record(kind, key),
                    &encode_record(*log_from, snapshot)[..],
                )
                .del(&log)
                .sadd(self.index(kind), key);
            }
            Write::Append { entries, .. } => {
                let (Some(low), Some(high)) = (
                    entries.iter().map(|entry| entry.seq).min(),
                    entries.iter().map(|entry| entry.seq).max(),
                ) else {
                    return;
                };
                // An entry appended again replaces the one stored under its number.
                let members: Vec<(u64, Vec<u8>)> = entries
                    .iter()
                    .map(|entry| (entry.seq, encode_entry(entry).to_vec()))
                    .collect();
                pipe.zrembyscore(&log, low, high)
                    .zadd_multiple(&log, &members);
            }
            Write::Delete { .. } => {
                pipe.del(&[self.record(kind, key), log])
                    .srem(self.index(kind), key);
            }
        }
    }

    fn record(&self, kind: &str, key: &str) -> String {
        format!("{}:record:{}:{kind}:{key}", self.namespace, kind.len())
    }

    fn index(&self, kind: &str) -> String {
        format!("{}:index:{kind}", self.namespace)
    }

    fn generations(&self, kind: &str) -> String {
        format!("{}:generations:{kind}", self.namespace)
    }

    fn log(&self, kind: &str, key: &str) -> String {
        format!("{}:log:{}:{kind}:{key}", self.namespace, kind.len())
    }

    fn aside(&self, kind: &str) -> String {
        format!("{}:aside:{kind}", self.namespace)
    }

    async fn read_log_raw(
        &self,
        kind: &str,
        key: &str,
        from: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut connection = self.connection.clone();
        let raw: Vec<Vec<u8>> = connection
            .zrangebyscore(self.log(kind, key), from, "+inf")
            .await
            .map_err(unavailable)?;
        Ok(raw.into_iter().map(Bytes::from).collect())
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: "redis",
        reason: error.to_string(),
    }
}

/// Runs a read again once when it failed: the connection manager reconnects after a failed
/// request, so the first read after an outage fails even when Redis is back.
async fn retry_once<T, Fut>(read: impl Fn() -> Fut) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    match read().await {
        Err(StoreError::Unavailable { .. }) => read().await,
        done => done,
    }
}

impl StateStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(retry_once(move || async move {
            let mut connection = self.connection.clone();
            let (raw, generation): (Option<Vec<u8>>, Option<u64>) = redis::pipe()
                .get(self.record(kind, key))
                .hget(self.generations(kind), key)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            let Some(raw) = raw else {
                return Ok(None);
            };
            let (log_from, snapshot) =
                decode_record(&Bytes::from(raw)).map_err(|reason| StoreError::Corrupt {
                    store: "redis",
                    kind: kind.to_owned(),
                    key: key.to_owned(),
                    reason,
                })?;
            Ok(Some(Stored {
                generation: generation.unwrap_or(0),
                log_from,
                snapshot,
            }))
        }))
    }

    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let mut writer = self.writer.lock().await;
            let result = self.write_watched(&mut writer, batch).await;
            if result.is_err() {
                // Reconnect for the next batch (and forget any WATCH left on this one).
                *writer = None;
            }
            result
        })
    }

    fn list<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(retry_once(move || async move {
            let mut connection = self.connection.clone();
            connection
                .smembers(self.index(kind))
                .await
                .map_err(unavailable)
        }))
    }

    fn read_log<'a>(&'a self, kind: &'a str, key: &'a str, from: u64) -> StoreFuture<'a, LogRead> {
        Box::pin(retry_once(move || async move {
            Ok(read_entries(
                from,
                self.read_log_raw(kind, key, from).await?,
            ))
        }))
    }

    fn set_aside<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let record: Option<Vec<u8>> = connection
                .get(self.record(kind, key))
                .await
                .map_err(unavailable)?;
            let mut raw: Vec<Bytes> = record.map(Bytes::from).into_iter().collect();
            raw.extend(self.read_log_raw(kind, key, 0).await?);
            redis::pipe()
                .atomic()
                .rpush(self.aside(kind), encode_aside(key, reason, &raw))
                .del(self.record(kind, key))
                .srem(self.index(kind), key)
                .del(self.log(kind, key))
                .query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn set_aside_records<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<SetAside>> {
        Box::pin(retry_once(move || async move {
            let mut connection = self.connection.clone();
            let raw: Vec<Vec<u8>> = connection
                .lrange(self.aside(kind), 0, -1)
                .await
                .map_err(unavailable)?;
            Ok(raw.iter().filter_map(|raw| decode_aside(raw)).collect())
        }))
    }
}
