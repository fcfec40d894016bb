//! The Redis store, for a fleet of nodes sharing state: the `redis` crate's connection manager
//! (one multiplexed connection, reconnected in the background).
//!
//! A batch is one `MULTI`/`EXEC` transaction of two commands: an `MSET` that stages the batch's
//! snapshots under keys of this batch alone, then one Lua script with only the small arguments
//! (kinds, keys, generations, log entries), which checks every write's generation and moves each
//! staged snapshot into place with `RENAME` (no copy), or drops it when the write is fenced. So
//! the snapshot bytes never pass through Lua, a batch costs about what a plain pipeline of the
//! same writes does, and a connection lost before `EXEC` applies nothing (no staged key is left
//! behind).
//!
//! Layout, under a namespace (`garrison` unless configured), `{id}` being `len(kind):kind:key`:
//! `{ns}:record:{id}` holds a record; `{ns}:index:{kind}` is the set of keys with a record;
//! `{ns}:generations:{kind}` a hash of generations by key; `{ns}:log:{id}` a sorted set of
//! framed entries scored by sequence number; `{ns}:aside:{kind}` a list. One Redis (or a
//! primary with replicas), not Redis Cluster: a batch touches keys of many slots.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use redis::{AsyncCommands, Script, aio::ConnectionManager};

use super::{
    LogRead, Outcome, SetAside, StateStore, StoreError, StoreFuture, Stored, Write, decode_aside,
    decode_record, encode_aside, encode_entry, encode_record, read_entries,
};

/// Applies a batch whose snapshots are staged: ARGV = namespace, count, then per write its
/// type, kind, key, generation and its fields (a put: its staged key; an append: n, then n
/// sequence numbers and entries). Returns per write -1 (written) or the stored generation that
/// fenced it.
///
/// Few commands per batch: the generations are read with one `HMGET` per kind, each put is one
/// `RENAME` (and the logs of consecutive puts one `DEL`, their keys one `SADD`), an append's
/// entries one `ZADD`, and the changed generations one `HSET` per kind.
const BATCH: &str = r"
local ns = ARGV[1]
local count = tonumber(ARGV[2])
local ops, i = {}, 3
for op = 1, count do
  local o = { kind_type = ARGV[i], kind = ARGV[i + 1], key = ARGV[i + 2], generation = ARGV[i + 3] }
  i = i + 4
  if o.kind_type == 'put' then
    o.staged = ARGV[i]
    i = i + 1
  elseif o.kind_type == 'append' then
    o.entries = tonumber(ARGV[i])
    o.first = i + 1
    i = i + 1 + 2 * o.entries
  end
  ops[op] = o
end
local function id(kind, key)
  return string.len(kind) .. ':' .. kind .. ':' .. key
end
-- Every generation the batch checks, one HMGET per kind.
local keys_of, generations = {}, {}
for _, o in ipairs(ops) do
  local keys = keys_of[o.kind]
  if not keys then
    keys = {}
    keys_of[o.kind] = keys
  end
  keys[#keys + 1] = o.key
end
for kind, keys in pairs(keys_of) do
  local stored = redis.call('HMGET', ns .. ':generations:' .. kind, unpack(keys))
  for j, key in ipairs(keys) do
    generations[kind .. '\0' .. key] = tonumber(stored[j] or '0') or 0
  end
end
local changed = {}
local put_kind, put_keys, put_logs = nil, {}, {}
local function flush_puts()
  if put_kind then
    redis.call('SADD', ns .. ':index:' .. put_kind, unpack(put_keys))
    redis.call('DEL', unpack(put_logs))
  end
  put_kind, put_keys, put_logs = nil, {}, {}
end
local out = {}
for op, o in ipairs(ops) do
  local entity = o.kind .. '\0' .. o.key
  local stored = generations[entity]
  local generation = tonumber(o.generation)
  if stored > generation then
    out[op] = stored
    if o.staged then
      redis.call('DEL', o.staged)
    end
  else
    out[op] = -1
    if stored ~= generation then
      generations[entity] = generation
      local kind_changes = changed[o.kind]
      if not kind_changes then
        kind_changes = {}
        changed[o.kind] = kind_changes
      end
      kind_changes[o.key] = o.generation
    end
    local log = ns .. ':log:' .. id(o.kind, o.key)
    if o.kind_type == 'put' then
      if put_kind ~= o.kind then
        flush_puts()
        put_kind = o.kind
      end
      local record = ns .. ':record:' .. id(o.kind, o.key)
      redis.call('RENAME', o.staged, record)
      -- Staged keys expire (a batch that failed halfway leaves none for long); records do not.
      redis.call('PERSIST', record)
      put_keys[#put_keys + 1] = o.key
      put_logs[#put_logs + 1] = log
    else
      flush_puts()
      if o.kind_type == 'append' and o.entries > 0 then
        -- In slices: Lua unpacks at most a few thousand values at once.
        for start = 0, o.entries - 1, 1000 do
          local low, high, zadd = nil, nil, {}
          for j = start, math.min(start + 999, o.entries - 1) do
            local seq = ARGV[o.first + 2 * j]
            local number = tonumber(seq)
            if not low or number < low then low = number end
            if not high or number > high then high = number end
            zadd[#zadd + 1] = seq
            zadd[#zadd + 1] = ARGV[o.first + 2 * j + 1]
          end
          -- An entry appended again replaces the one stored under its number.
          redis.call('ZREMRANGEBYSCORE', log, low, high)
          redis.call('ZADD', log, unpack(zadd))
        end
      elseif o.kind_type == 'delete' then
        redis.call('DEL', ns .. ':record:' .. id(o.kind, o.key), log)
        redis.call('SREM', ns .. ':index:' .. o.kind, o.key)
      end
    end
  end
end
flush_puts()
for kind, kind_changes in pairs(changed) do
  local args = {}
  for key, generation in pairs(kind_changes) do
    args[#args + 1] = key
    args[#args + 1] = generation
  end
  redis.call('HSET', ns .. ':generations:' .. kind, unpack(args))
end
return out
";

/// How long a staged snapshot lives if its batch's script never moves it into place.
const STAGED_TTL_MS: i64 = 60_000;

/// A [`StateStore`] on a Redis server.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    batch: Script,
    /// Names this store's staged snapshots apart from other nodes' (pid and start time).
    instance: Arc<str>,
    batches: Arc<AtomicU64>,
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`), keeping every key under `namespace`. A
    /// request waits at most five seconds for its answer (a batch is at most 256 writes and
    /// 4 MiB); the connection is re-established in the background when it drops.
    ///
    /// Generations are compared as Lua numbers (doubles): keep them below 2^53 (etcd revisions
    /// and lease ids are).
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
        let batch = Script::new(BATCH);
        let mut loading = connection.clone();
        batch
            .prepare_invoke()
            .load_async(&mut loading)
            .await
            .map_err(unavailable)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Ok(RedisStore {
            connection,
            namespace: namespace.to_owned(),
            batch,
            instance: format!("{}-{nanos}", std::process::id()).into(),
            batches: Arc::default(),
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

impl StateStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
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
        })
    }

    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let number = self.batches.fetch_add(1, Ordering::Relaxed);
            let mut staged: Vec<(String, Bytes)> = Vec::new();
            let mut script = redis::cmd("EVALSHA");
            script
                .arg(self.batch.get_hash())
                .arg(0)
                .arg(&self.namespace)
                .arg(batch.len());
            for write in batch {
                let (kind, key) = write.target();
                let name = match write {
                    Write::Put { .. } => "put",
                    Write::Append { .. } => "append",
                    Write::Delete { .. } => "delete",
                };
                script.arg(name).arg(kind).arg(key).arg(write.generation());
                match write {
                    Write::Put {
                        log_from, snapshot, ..
                    } => {
                        let name = format!(
                            "{}:staging:{}:{number}:{}",
                            self.namespace,
                            self.instance,
                            staged.len()
                        );
                        script.arg(&name);
                        staged.push((name, encode_record(*log_from, snapshot)));
                    }
                    Write::Append { entries, .. } => {
                        script.arg(entries.len());
                        for entry in entries {
                            script.arg(entry.seq).arg(&encode_entry(entry)[..]);
                        }
                    }
                    Write::Delete { .. } => {}
                }
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !staged.is_empty() {
                let pairs: Vec<(&str, &[u8])> = staged
                    .iter()
                    .map(|(name, record)| (name.as_str(), &record[..]))
                    .collect();
                pipe.mset(&pairs).ignore();
                for (name, _) in &staged {
                    pipe.pexpire(name, STAGED_TTL_MS).ignore();
                }
            }
            pipe.add_command(script);
            let mut connection = self.connection.clone();
            let answered: Result<(Vec<i64>,), _> = pipe.query_async(&mut connection).await;
            let (results,) = match answered {
                // Redis restarted and forgot the script: load it again, and retry once.
                Err(error) if error.to_string().contains("NOSCRIPT") => {
                    self.batch
                        .prepare_invoke()
                        .load_async(&mut connection)
                        .await
                        .map_err(unavailable)?;
                    pipe.query_async(&mut connection)
                        .await
                        .map_err(unavailable)?
                }
                other => other.map_err(unavailable)?,
            };
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
                .smembers(self.index(kind))
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
