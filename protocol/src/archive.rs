//! Writing archives: the serializer every message and snapshot is written with, over a writer
//! that appends to a frame or snapshot buffer, with a reused scratch arena. The wire format's
//! features (little-endian, 32-bit pointers, unaligned) are pinned in the workspace manifest.

use bytes::BytesMut;
use rkyv::{
    api::high::HighSerializer,
    ser::{Positional, Writer, allocator::Arena, allocator::ArenaHandle},
};

use crate::Error;

/// The rkyv error type every protocol operation uses.
pub type RkyvError = rkyv::rancor::Error;

/// The serializer messages are written with: rkyv's high-level serializer over a frame's output
/// buffer, with a reused arena for scratch space.
pub type WireSerializer<'a> = HighSerializer<PayloadWriter<'a>, ArenaHandle<'a>, RkyvError>;

/// An rkyv writer that appends a payload to a frame buffer.
///
/// Positions are relative to the payload's start, so the archive is the same bytes wherever in the
/// buffer it lands (the unaligned format needs no padding to absolute offsets).
pub struct PayloadWriter<'a> {
    buffer: &'a mut BytesMut,
    start: usize,
}

impl Positional for PayloadWriter<'_> {
    fn pos(&self) -> usize {
        self.buffer.len() - self.start
    }
}

impl<E> Writer<E> for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the rkyv archive of `value` to `buffer`, using `arena` for scratch space.
pub(crate) fn write_archive<T>(
    value: &T,
    buffer: &mut BytesMut,
    arena: &mut Option<Arena>,
    name: &'static str,
) -> Result<(), Error>
where
    T: for<'a> rkyv::Serialize<WireSerializer<'a>>,
{
    let start = buffer.len();
    let writer = PayloadWriter { buffer, start };
    // The arena (1 KiB) is made on first use: many codecs and snapshot writers never encode.
    let arena = arena.get_or_insert_with(Arena::new);
    rkyv::api::high::to_bytes_in_with_alloc::<_, _, RkyvError>(value, writer, arena.acquire())
        .map(drop)
        .map_err(|reason| Error::Encode {
            message: name,
            reason,
        })
}
