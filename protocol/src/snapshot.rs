//! Snapshots: rkyv archives of entity state behind a small versioned header, read with a check.
//!
//! The wire and recovery share one format, so a state that can be sent can be checkpointed.
//!
//! Layout (little-endian): magic `b"GSNP"` (4), format (1), reserved zero (1), schema version (2),
//! schema fingerprint (8, FNV-1a of [`Snapshot::SCHEMA`]), payload length (4), payload (the rkyv
//! archive).

use std::{fmt, marker::PhantomData, ops::Deref};

use bytes::{BufMut, Bytes, BytesMut};
use rkyv::{
    Archive, Deserialize, Portable, Serialize, api::high::HighValidator, bytecheck::CheckBytes,
    de::Pool, rancor::Strategy, ser::allocator::Arena,
};

use crate::{
    Error, MessageKind,
    archive::{RkyvError, WireSerializer},
};

/// The magic bytes every snapshot starts with.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"GSNP";
/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;
/// Bytes of the snapshot header.
pub const SNAPSHOT_HEADER_LEN: usize = 20;

/// A state type that can be checkpointed.
pub trait Snapshot:
    Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, RkyvError>>>
    + for<'a> Serialize<WireSerializer<'a>>
    + 'static
{
    /// A stable name for the state's schema; a snapshot of another schema is refused.
    const SCHEMA: &'static str;
    /// The schema's version; bump it when the archived layout changes.
    const VERSION: u16;
}

/// Declares a state type's [`Snapshot`] schema and version in one line:
/// `snapshot!(Inventory, "player.inventory", 1);`.
///
/// ```
/// use garrison_protocol::snapshot;
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
/// struct Inventory { items: Vec<u32> }
/// snapshot!(Inventory, "player.inventory", 1);
/// assert_eq!(<Inventory as garrison_protocol::Snapshot>::VERSION, 1);
/// ```
#[macro_export]
macro_rules! snapshot {
    ($state:ty, $schema:literal, $version:literal) => {
        impl $crate::Snapshot for $state {
            const SCHEMA: &'static str = $schema;
            const VERSION: u16 = $version;
        }
    };
}

/// FNV-1a, 64-bit: a stable fingerprint of a schema name (not a security measure; it only tells
/// one state type from another).
const fn fingerprint(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Writes snapshots, reusing its buffer's spare capacity and one scratch arena.
#[derive(Default)]
pub struct SnapshotWriter {
    buffer: BytesMut,
    arena: Option<Arena>,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("capacity", &self.buffer.capacity())
            .finish()
    }
}

impl SnapshotWriter {
    /// A writer with no buffer yet.
    pub fn new() -> Self {
        SnapshotWriter::default()
    }

    /// Writes a snapshot of `state`. The bytes share the writer's buffer (no copy): keep them
    /// briefly, or use [`write_compact`] for snapshots kept long.
    ///
    /// # Errors
    /// [`Error::Encode`] when the state cannot be serialized.
    pub fn write<T: Snapshot>(&mut self, state: &T) -> Result<Bytes, Error> {
        self.fill(state)?;
        Ok(self.buffer.split().freeze())
    }

    /// Writes a snapshot of `state` into bytes of exactly its size, keeping the writer's buffer
    /// for the next one.
    ///
    /// # Errors
    /// As [`SnapshotWriter::write`].
    pub fn write_compact<T: Snapshot>(&mut self, state: &T) -> Result<Bytes, Error> {
        self.fill(state)?;
        let snapshot = Bytes::copy_from_slice(&self.buffer);
        self.buffer.clear();
        Ok(snapshot)
    }

    /// Writes a snapshot of `state` into the writer's buffer and hands `read` the bytes, to
    /// compare or copy without an allocation of their own.
    ///
    /// # Errors
    /// As [`SnapshotWriter::write`].
    pub fn write_with<T: Snapshot, R>(
        &mut self,
        state: &T,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Error> {
        self.fill(state)?;
        let result = read(&self.buffer);
        self.buffer.clear();
        Ok(result)
    }

    fn fill<T: Snapshot>(&mut self, state: &T) -> Result<(), Error> {
        self.buffer.clear();
        self.buffer.put_slice(&SNAPSHOT_MAGIC);
        self.buffer.put_u8(SNAPSHOT_FORMAT);
        self.buffer.put_u8(0);
        self.buffer.put_u16_le(T::VERSION);
        self.buffer.put_u64_le(fingerprint(T::SCHEMA));
        self.buffer.put_u32_le(0);
        crate::archive::write_archive(state, &mut self.buffer, &mut self.arena, T::SCHEMA)?;
        let payload_len = self.buffer.len() - SNAPSHOT_HEADER_LEN;
        let payload_len = u32::try_from(payload_len).map_err(|_| Error::Oversize {
            length: payload_len as u64,
            max: u32::MAX as usize,
        })?;
        self.buffer[16..20].copy_from_slice(&payload_len.to_le_bytes());
        Ok(())
    }
}

thread_local! {
    /// The writer behind [`write_compact`]: one per thread, so its buffer and arena are reused.
    static WRITER: std::cell::RefCell<SnapshotWriter> = std::cell::RefCell::new(SnapshotWriter::new());
}

/// Writes a snapshot of `state` into bytes of exactly its size with a per-thread writer: for
/// snapshots many holders keep (an entity's checkpoint), which then cost their own size and no
/// buffer or arena each.
///
/// # Errors
/// As [`SnapshotWriter::write`].
pub fn write_compact<T: Snapshot>(state: &T) -> Result<Bytes, Error> {
    WRITER.with(|writer| match writer.try_borrow_mut() {
        Ok(mut writer) => writer.write_compact(state),
        // Only reachable if a Serialize impl itself writes a snapshot: use a fresh writer.
        Err(_) => SnapshotWriter::new().write_compact(state),
    })
}

/// Writes a snapshot of `state` with a per-thread writer and hands `read` the bytes: a
/// checkpoint compares them with the last one and copies them only when they differ. `read`
/// must not write a snapshot itself (it would get a fresh writer).
///
/// # Errors
/// As [`SnapshotWriter::write`].
pub fn write_with<T: Snapshot, R>(state: &T, read: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
    WRITER.with(|writer| match writer.try_borrow_mut() {
        Ok(mut writer) => writer.write_with(state, read),
        Err(_) => SnapshotWriter::new().write_with(state, read),
    })
}

/// Writes one snapshot of `state` with a fresh writer; prefer a kept [`SnapshotWriter`] on a hot
/// path.
///
/// # Errors
/// As [`SnapshotWriter::write`].
pub fn write<T: Snapshot>(state: &T) -> Result<Bytes, Error> {
    SnapshotWriter::new().write(state)
}

/// A validated snapshot: dereferences to the archived state, read in place.
pub struct SnapshotRef<T: Snapshot> {
    payload: Bytes,
    state: PhantomData<fn() -> T>,
}

impl<T: Snapshot> SnapshotRef<T> {
    /// Checks a snapshot's header and validates its payload as a `T`.
    ///
    /// # Errors
    /// [`Error::TruncatedHeader`], [`Error::SnapshotMagic`], [`Error::SnapshotFormat`],
    /// [`Error::SnapshotSchema`], [`Error::SnapshotVersion`], [`Error::TruncatedFrame`] or
    /// [`Error::TrailingBytes`] for a bad header or length, and [`Error::InvalidArchive`] for a
    /// payload that is not a valid `T`.
    pub fn validate(bytes: Bytes) -> Result<Self, Error> {
        let Some(header) = bytes.first_chunk::<SNAPSHOT_HEADER_LEN>() else {
            return Err(Error::TruncatedHeader {
                have: bytes.len(),
                need: SNAPSHOT_HEADER_LEN,
            });
        };
        if header[..4] != SNAPSHOT_MAGIC {
            return Err(Error::SnapshotMagic);
        }
        if header[4] != SNAPSHOT_FORMAT || header[5] != 0 {
            return Err(Error::SnapshotFormat {
                found: header[4],
                supported: SNAPSHOT_FORMAT,
            });
        }
        let version = u16::from_le_bytes([header[6], header[7]]);
        let mut print = [0; 8];
        print.copy_from_slice(&header[8..16]);
        if u64::from_le_bytes(print) != fingerprint(T::SCHEMA) {
            return Err(Error::SnapshotSchema {
                expected: T::SCHEMA,
            });
        }
        if version != T::VERSION {
            return Err(Error::SnapshotVersion {
                schema: T::SCHEMA,
                found: version,
                expected: T::VERSION,
            });
        }
        let payload_len =
            u32::from_le_bytes([header[16], header[17], header[18], header[19]]) as usize;
        let need = SNAPSHOT_HEADER_LEN.saturating_add(payload_len);
        if bytes.len() < need {
            return Err(Error::TruncatedFrame {
                have: bytes.len(),
                need,
            });
        }
        if bytes.len() > need {
            return Err(Error::TrailingBytes {
                extra: bytes.len() - need,
            });
        }
        let payload = bytes.slice(SNAPSHOT_HEADER_LEN..);
        rkyv::access::<T::Archived, RkyvError>(&payload).map_err(|reason| {
            Error::InvalidArchive {
                kind: MessageKind(0),
                message: T::SCHEMA,
                reason,
            }
        })?;
        Ok(SnapshotRef {
            payload,
            state: PhantomData,
        })
    }

    /// Deserializes the owned state (what an entity's `activate` usually wants).
    ///
    /// # Errors
    /// Whatever `T`'s `Deserialize` impl reports (none for plain data).
    pub fn deserialize(&self) -> Result<T, Error>
    where
        T::Archived: Deserialize<T, Strategy<Pool, RkyvError>>,
    {
        rkyv::deserialize::<T, RkyvError>(&**self).map_err(|reason| Error::InvalidArchive {
            kind: MessageKind(0),
            message: T::SCHEMA,
            reason,
        })
    }
}

impl<T: Snapshot> Deref for SnapshotRef<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: built only by `validate`, which checked these immutable bytes as a `T::Archived`.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.payload) }
    }
}

/// Validates a snapshot and deserializes the owned state in one step.
///
/// # Errors
/// As [`SnapshotRef::validate`] and [`SnapshotRef::deserialize`].
pub fn read<T: Snapshot>(bytes: Bytes) -> Result<T, Error>
where
    T::Archived: Deserialize<T, Strategy<Pool, RkyvError>>,
{
    SnapshotRef::<T>::validate(bytes)?.deserialize()
}
