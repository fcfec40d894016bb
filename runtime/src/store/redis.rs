//! The Redis store, for a fleet of nodes sharing state: the `redis` crate's connection manager
//! (one multiplexed connection, reconnected in the background), a batch applied atomically by
//! one Lua script (one round trip, fenced per write), reads pipelined.
//!
//! Layout, under a namespace (`garrison` unless configured): `{ns}:records:{kind}` and
//! `{ns}:generations:{kind}` are hashes by key; `{ns}:log:{len(kind)}:{kind}:{key}` is a sorted
//! set of framed entries scored by sequence number; `{ns}:aside:{kind}` a list. One Redis (or a
//! primary with replicas), not Redis Cluster: a batch touches keys of many slots.

use std::time::Duration;

use bytes::Bytes;
use redis::{AsyncCommands, Script, aio::ConnectionManager};

use super::{
    LogRead, Outcome, SetAside, StateStore, StoreError, StoreFuture, Stored, Write, decode_aside,
    decode_record, encode_aside, encode_entry, encode_record, read_entries,
};

/// Applies a batch: ARGV = namespace, count, then per write its type, kind, key, generation and
/// its fields. Returns per write -1 (written) or the stored generation that fenced it.
const BATCH: &str = r"
local ns = ARGV[1]
local count = tonumber(ARGV[2])
local i = 3
local out = {}
for op = 1, count do
  local kind, key, generation = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local kind_type = ARGV[i]
  i = i + 4
  local generations = ns .. ':generations:' .. kind
  local records = ns .. ':records:' .. kind
  local log = ns .. ':log:' .. string.len(kind) .. ':' .. kind .. ':' .. key
  local stored = tonumber(redis.call('HGET', generations, key) or '0')
  local fenced = stored > tonumber(generation)
  if kind_type == 'put' then
    local record = ARGV[i + 1]
    i = i + 2
    if not fenced then
      redis.call('HSET', records, key, record)
      redis.call('DEL', log)
    end
  elseif kind_type == 'append' then
    local entries = tonumber(ARGV[i])
    i = i + 1
    for j = 0, entries - 1 do
      if not fenced then
        local seq = ARGV[i + 2 * j]
        redis.call('ZREMRANGEBYSCORE', log, seq, seq)
        redis.call('ZADD', log, seq, ARGV[i + 2 * j + 1])
      end
    end
    i = i + 2 * entries
  elseif kind_type == 'delete' then
    if not fenced then
      redis.call('HDEL', records, key)
      redis.call('DEL', log)
    end
  end
  if fenced then
    out[op] = stored
  else
    redis.call('HSET', generations, key, generation)
    out[op] = -1
  end
end
return out
";

/// A [`StateStore`] on a Redis server.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    batch: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`), keeping every key under `namespace`. A
    /// request waits at most a second for its answer; the connection is re-established in the
    /// background when it drops.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(RedisStore {
            connection,
            namespace: namespace.to_owned(),
            batch: Script::new(BATCH),
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
        connection
            .hset::<_, _, _, ()>(self.records(kind), key, raw)
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

    fn records(&self, kind: &str) -> String {
        format!("{}:records:{kind}", self.namespace)
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

impl StateStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (raw, generation): (Option<Vec<u8>>, Option<u64>) = redis::pipe()
                .hget(self.records(kind), key)
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
        })
    }

    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = self.batch.prepare_invoke();
            invocation.arg(&self.namespace).arg(batch.len());
            for write in batch {
                let (kind, key) = write.target();
                let name = match write {
                    Write::Put { .. } => "put",
                    Write::Append { .. } => "append",
                    Write::Delete { .. } => "delete",
                };
                invocation
                    .arg(name)
                    .arg(kind)
                    .arg(key)
                    .arg(write.generation());
                match write {
                    Write::Put {
                        log_from, snapshot, ..
                    } => {
                        invocation
                            .arg(*log_from)
                            .arg(&encode_record(*log_from, snapshot)[..]);
                    }
                    Write::Append { entries, .. } => {
                        invocation.arg(entries.len());
                        for entry in entries {
                            invocation.arg(entry.seq).arg(&encode_entry(entry)[..]);
                        }
                    }
                    Write::Delete { .. } => {}
                }
            }
            let mut connection = self.connection.clone();
            let results: Vec<i64> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if results.len() != batch.len() {
                return Err(unavailable(format!(
                    "the batch script answered {} outcomes for {} writes",
                    results.len(),
                    batch.len()
                )));
            }
            Ok(results
                .into_iter()
                .map(|result| match u64::try_from(result) {
                    Ok(stored) => Outcome::Fenced { stored },
                    Err(_) => Outcome::Written,
                })
                .collect())
        })
    }

    fn list<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            connection
                .hkeys(self.records(kind))
                .await
                .map_err(unavailable)
        })
    }

    fn read_log<'a>(&'a self, kind: &'a str, key: &'a str, from: u64) -> StoreFuture<'a, LogRead> {
        Box::pin(async move {
            Ok(read_entries(
                from,
                self.read_log_raw(kind, key, from).await?,
            ))
        })
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
                .hget(self.records(kind), key)
                .await
                .map_err(unavailable)?;
            let mut raw: Vec<Bytes> = record.map(Bytes::from).into_iter().collect();
            raw.extend(self.read_log_raw(kind, key, 0).await?);
            redis::pipe()
                .atomic()
                .rpush(self.aside(kind), encode_aside(key, reason, &raw))
                .hdel(self.records(kind), key)
                .del(self.log(kind, key))
                .query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn set_aside_records<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<SetAside>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let raw: Vec<Vec<u8>> = connection
                .lrange(self.aside(kind), 0, -1)
                .await
                .map_err(unavailable)?;
            Ok(raw.iter().filter_map(|raw| decode_aside(raw)).collect())
        })
    }
}
