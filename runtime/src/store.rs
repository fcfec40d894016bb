//! Durable entity state: the [`StateStore`] an entity kind's checkpoints and logs are written to,
//! and its backends: [`MemoryStore`] (tests, and a process that wants nothing on disk),
//! [`RedbStore`] (feature `redb`, on by default: the embedded store in a data directory) and
//! [`RedisStore`] (feature `redis`: shared by a fleet of nodes).
//!
//! What a store holds per entity (a kind and a key):
//! - a **record**: its last snapshot and the sequence number its log continues from;
//! - a **log**: entries appended after that snapshot, numbered from `log_from` up, each replayed
//!   through [`Entity::replay`](crate::Entity::replay) on recovery; putting a new snapshot
//!   clears the log (truncation at a snapshot), and the entries logged after it follow;
//! - a **generation**, the fencing token: every write carries one, and a write whose generation
//!   is lower than the one stored is refused ([`Outcome::Fenced`]), so an owner that lost an
//!   entity to another node cannot overwrite the new owner's state. A delete keeps the
//!   generation.
//!
//! Records and log entries are framed by this module ([`encode_record`], [`encode_entry`]: a
//! magic, the length and a CRC-32), whatever the backend, so a truncated or foreign record is a
//! typed [`StoreError::Corrupt`], never garbage handed to a snapshot reader. Damaged records are
//! [set aside](StateStore::set_aside) for inspection.
//!
//! Every backend passes one conformance suite (`tests/integration/store_conformance.rs`).

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};

mod memory;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryStore;
#[cfg(feature = "redb")]
pub use redb::RedbStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// A shared handle to a state store, as kinds hold it.
pub type Store = Arc<dyn StateStore>;

/// What a store's methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An entity's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The generation (fencing token) of the last write.
    pub generation: u64,
    /// The sequence number of the first log entry after this snapshot.
    pub log_from: u64,
    /// The snapshot, as the entity's `State` wrote it.
    pub snapshot: Bytes,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number.
    pub seq: u64,
    /// What the entity logged.
    pub bytes: Bytes,
}

/// An entity's log read from a sequence number on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The entries, in sequence, without a gap.
    pub entries: Vec<LogEntry>,
    /// Where reading stopped early: the sequence number of the first entry that was damaged or
    /// missing, and why. The entries before it are good.
    pub damaged: Option<(u64, String)>,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Stores the entity's snapshot and clears its log (truncation at a snapshot): entries
    /// appended after it, numbered from `log_from`, continue it (in the same batch when the
    /// writer has them already).
    Put {
        /// The entity kind.
        kind: String,
        /// The entity key.
        key: String,
        /// The writer's generation.
        generation: u64,
        /// The sequence number the log continues from.
        log_from: u64,
        /// The snapshot.
        snapshot: Bytes,
    },
    /// Appends log entries (appending an entry again with the same sequence number replaces it,
    /// so a retried batch is harmless).
    Append {
        /// The entity kind.
        kind: String,
        /// The entity key.
        key: String,
        /// The writer's generation.
        generation: u64,
        /// The entries.
        entries: Vec<LogEntry>,
    },
    /// Removes the entity's record and log (it ended); its generation stays.
    Delete {
        /// The entity kind.
        kind: String,
        /// The entity key.
        key: String,
        /// The writer's generation.
        generation: u64,
    },
}

impl Write {
    /// The entity kind and key written.
    pub fn target(&self) -> (&str, &str) {
        match self {
            Write::Put { kind, key, .. }
            | Write::Append { kind, key, .. }
            | Write::Delete { kind, key, .. } => (kind, key),
        }
    }

    /// The writer's generation.
    pub fn generation(&self) -> u64 {
        match self {
            Write::Put { generation, .. }
            | Write::Append { generation, .. }
            | Write::Delete { generation, .. } => *generation,
        }
    }

    /// The bytes this write carries (snapshot or entries), for accounting.
    pub fn payload_len(&self) -> usize {
        match self {
            Write::Put { snapshot, .. } => snapshot.len(),
            Write::Append { entries, .. } => entries.iter().map(|entry| entry.bytes.len()).sum(),
            Write::Delete { .. } => 0,
        }
    }
}

/// What became of one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It is stored.
    Written,
    /// Refused: the entity's stored generation is higher than the writer's (another owner took
    /// it); nothing of this write was applied.
    Fenced {
        /// The generation stored.
        stored: u64,
    },
}

/// A record set aside for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The entity key.
    pub key: String,
    /// Why it was set aside.
    pub reason: String,
    /// The raw record and log bytes as they were (the record first, then each entry), framed as
    /// stored.
    pub raw: Vec<Bytes>,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or failed the operation (nothing of a failed batch is
    /// applied).
    #[error("state store {store}: {reason}")]
    Unavailable {
        /// The backend.
        store: &'static str,
        /// What failed.
        reason: String,
    },
    /// A stored record is not one this runtime wrote, or is damaged.
    #[error("state store {store}: record {kind}/{key} is damaged: {reason}")]
    Corrupt {
        /// The backend.
        store: &'static str,
        /// The entity kind.
        kind: String,
        /// The entity key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where entity state lives beyond the process: get, fenced batched writes, list, and a log per
/// entity. Implementations are cheap to share (`Arc<dyn StateStore>`) and safe to call from many
/// tasks; every method is one round trip (one transaction) to the backend.
pub trait StateStore: Send + Sync + 'static {
    /// The backend's name, for logs and errors (`memory`, `redb`, `redis`).
    fn name(&self) -> &'static str;

    /// Entity `kind`/`key`'s record, if it has one.
    fn get<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, Option<Stored>>;

    /// Applies a batch of writes in one transaction: every write is applied or fenced, or, on an
    /// error, none is. The outcomes are in the batch's order.
    fn write<'a>(&'a self, batch: &'a [Write]) -> StoreFuture<'a, Vec<Outcome>>;

    /// The keys of `kind` that have a record, in no particular order.
    fn list<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Entity `kind`/`key`'s log entries from sequence number `from` on, stopping at the first
    /// damaged or missing one.
    fn read_log<'a>(&'a self, kind: &'a str, key: &'a str, from: u64) -> StoreFuture<'a, LogRead>;

    /// Moves entity `kind`/`key`'s record and log, as they are, aside for inspection (see
    /// [`StateStore::set_aside_records`]); the entity has no record afterwards.
    fn set_aside<'a>(&'a self, kind: &'a str, key: &'a str, reason: &'a str)
    -> StoreFuture<'a, ()>;

    /// The records of `kind` set aside, oldest first.
    fn set_aside_records<'a>(&'a self, kind: &'a str) -> StoreFuture<'a, Vec<SetAside>>;
}

impl fmt::Debug for dyn StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateStore({})", self.name())
    }
}

const RECORD_MAGIC: &[u8; 4] = b"GRS1";
const ENTRY_MAGIC: &[u8; 4] = b"GRL1";
/// Magic, log_from (u64), length (u32), CRC-32 (u32).
const RECORD_HEADER: usize = 4 + 8 + 4 + 4;
/// Magic, seq (u64), length (u32), CRC-32 (u32).
const ENTRY_HEADER: usize = 4 + 8 + 4 + 4;

/// A record as backends store it: `GRS1`, `log_from`, the snapshot's length and CRC-32, the
/// snapshot (integers little-endian).
pub fn encode_record(log_from: u64, snapshot: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(RECORD_HEADER + snapshot.len());
    out.put_slice(RECORD_MAGIC);
    out.put_u64_le(log_from);
    out.put_u32_le(snapshot.len() as u32);
    out.put_u32_le(crc32fast::hash(snapshot));
    out.put_slice(snapshot);
    out.freeze()
}

/// Reads a record back: `(log_from, snapshot)`, or why it is not a record.
///
/// # Errors
/// A text naming what is wrong (magic, length, checksum).
pub fn decode_record(bytes: &Bytes) -> Result<(u64, Bytes), String> {
    let (log_from, payload) = decode_framed(bytes, RECORD_MAGIC, RECORD_HEADER, "record")?;
    Ok((log_from, payload))
}

/// A log entry as backends store it: `GRL1`, `seq`, the length and CRC-32, the bytes.
pub fn encode_entry(entry: &LogEntry) -> Bytes {
    let mut out = BytesMut::with_capacity(ENTRY_HEADER + entry.bytes.len());
    out.put_slice(ENTRY_MAGIC);
    out.put_u64_le(entry.seq);
    out.put_u32_le(entry.bytes.len() as u32);
    out.put_u32_le(crc32fast::hash(&entry.bytes));
    out.put_slice(&entry.bytes);
    out.freeze()
}

/// Reads a log entry back, or why it is not one.
///
/// # Errors
/// A text naming what is wrong (magic, length, checksum).
pub fn decode_entry(bytes: &Bytes) -> Result<LogEntry, String> {
    let (seq, payload) = decode_framed(bytes, ENTRY_MAGIC, ENTRY_HEADER, "log entry")?;
    Ok(LogEntry {
        seq,
        bytes: payload,
    })
}

fn decode_framed(
    bytes: &Bytes,
    magic: &[u8; 4],
    header: usize,
    what: &str,
) -> Result<(u64, Bytes), String> {
    if bytes.len() < header {
        return Err(format!(
            "{what} of {} bytes is shorter than its {header}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..4] != magic {
        return Err(format!(
            "{what} does not start with {:?} (another program's data, or another format)",
            String::from_utf8_lossy(magic)
        ));
    }
    let word = u64::from_le_bytes(bytes[4..12].try_into().unwrap_or([0; 8]));
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or([0; 4])) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or([0; 4]));
    if bytes.len() - header != len {
        return Err(format!(
            "{what} says {len} bytes follow its header but {} do (truncated or padded)",
            bytes.len() - header
        ));
    }
    let payload = bytes.slice(header..);
    if crc32fast::hash(&payload) != crc {
        return Err(format!("{what} fails its CRC-32 (damaged)"));
    }
    Ok((word, payload))
}

/// Splits entries stored back to back into each entry's bytes; what does not frame as an entry
/// is returned whole as the last piece (it fails to decode, and the reader stops there).
#[cfg_attr(not(feature = "redb"), allow(dead_code))]
pub(crate) fn split_entries(mut bytes: Bytes) -> Vec<Bytes> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let len = bytes
            .get(12..16)
            .and_then(|len| len.try_into().ok())
            .map(|len: [u8; 4]| u32::from_le_bytes(len) as usize);
        match len {
            Some(len) if &bytes[..4] == ENTRY_MAGIC && bytes.len() >= ENTRY_HEADER + len => {
                entries.push(bytes.split_to(ENTRY_HEADER + len));
            }
            _ => {
                entries.push(bytes);
                break;
            }
        }
    }
    entries
}

/// Decodes a stored log in order from `from`: stops at the first entry that does not decode or
/// does not continue the sequence. Backends share it.
pub(crate) fn read_entries(from: u64, raw: impl IntoIterator<Item = Bytes>) -> LogRead {
    let mut read = LogRead::default();
    let mut next = from;
    for bytes in raw {
        match decode_entry(&bytes) {
            Ok(entry) if entry.seq == next => {
                read.entries.push(entry);
                let Some(after) = next.checked_add(1) else {
                    // A hostile sequence number at the very end of the range: nothing follows.
                    break;
                };
                next = after;
            }
            Ok(entry) if entry.seq < next => {}
            Ok(entry) => {
                read.damaged = Some((
                    next,
                    format!("entry {next} is missing (the next stored is {})", entry.seq),
                ));
                break;
            }
            Err(reason) => {
                read.damaged = Some((next, reason));
                break;
            }
        }
    }
    read
}

/// An aside entry's value: key, reason, then each raw part, each length-prefixed (u32 LE).
#[cfg_attr(not(any(feature = "redb", feature = "redis")), allow(dead_code))]
pub(crate) fn encode_aside(key: &str, reason: &str, raw: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [key.as_bytes(), reason.as_bytes()]
        .into_iter()
        .chain(raw.iter().map(|part| &part[..]))
    {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg_attr(not(any(feature = "redb", feature = "redis")), allow(dead_code))]
pub(crate) fn decode_aside(mut bytes: &[u8]) -> Option<SetAside> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        parts.push(Bytes::copy_from_slice(bytes.get(4..4 + len)?));
        bytes = &bytes[4 + len..];
    }
    let mut parts = parts.into_iter();
    let key = String::from_utf8_lossy(&parts.next()?).into_owned();
    let reason = String::from_utf8_lossy(&parts.next()?).into_owned();
    Some(SetAside {
        key,
        reason,
        raw: parts.collect(),
    })
}

/// What a fenced write checks: the writer's generation against the stored one.
pub(crate) fn fence(stored: u64, writer: u64) -> Outcome {
    if stored > writer {
        Outcome::Fenced { stored }
    } else {
        Outcome::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_entries_round_trip_and_refuse_damage() {
        let record = encode_record(7, b"state");
        assert_eq!(
            decode_record(&record),
            Ok((7, Bytes::from_static(b"state")))
        );
        let truncated = record.slice(..record.len() - 1);
        assert!(decode_record(&truncated).unwrap_err().contains("truncated"));
        let mut flipped = record.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(
            decode_record(&Bytes::from(flipped))
                .unwrap_err()
                .contains("CRC")
        );
        assert!(
            decode_record(&Bytes::from_static(b"GRL1 not a record at all"))
                .unwrap_err()
                .contains("does not start")
        );
        assert!(
            decode_record(&Bytes::new())
                .unwrap_err()
                .contains("shorter")
        );
        let entry = LogEntry {
            seq: 3,
            bytes: Bytes::from_static(b"in"),
        };
        assert_eq!(decode_entry(&encode_entry(&entry)), Ok(entry));
    }

    #[test]
    fn entries_stored_back_to_back_split_apart() {
        let entry = |seq: u64| {
            encode_entry(&LogEntry {
                seq,
                bytes: Bytes::from(vec![seq as u8; seq as usize]),
            })
        };
        let mut chunk = BytesMut::new();
        for seq in 0..4 {
            chunk.put_slice(&entry(seq));
        }
        chunk.put_slice(b"GRL1 torn");
        let parts = split_entries(chunk.freeze());
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[3], entry(3));
        let read = read_entries(0, parts);
        assert_eq!(read.entries.len(), 4);
        assert_eq!(read.damaged.map(|(seq, _)| seq), Some(4));
    }

    #[test]
    fn a_log_read_stops_at_a_gap_or_a_damaged_entry() {
        let entry = |seq: u64| {
            encode_entry(&LogEntry {
                seq,
                bytes: Bytes::from(vec![seq as u8]),
            })
        };
        let read = read_entries(1, [entry(1), entry(2), entry(4)]);
        assert_eq!(read.entries.len(), 2);
        assert_eq!(read.damaged.as_ref().map(|(seq, _)| *seq), Some(3));
        let read = read_entries(1, [entry(1), Bytes::from_static(b"junk")]);
        assert_eq!(read.entries.len(), 1);
        assert_eq!(read.damaged.as_ref().map(|(seq, _)| *seq), Some(2));
        let read = read_entries(1, [entry(1), entry(2)]);
        assert_eq!((read.entries.len(), read.damaged), (2, None));
    }
}
