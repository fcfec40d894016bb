//! Writing archives: the serializer every message and snapshot is written with, over a writer
//! that appends to a frame or snapshot buffer, with a reused scratch arena. The wire format's
//! features (little-endian, 32-bit pointers, unaligned) are pinned in the workspace manifest.

use std::{alloc::Layout, ptr::NonNull};

use bytes::BytesMut;
use rkyv::{
    api::high::HighSerializer,
    rancor::Source,
    ser::{Allocator, Positional, Writer, allocator::Arena, allocator::ArenaHandle},
};

use crate::Error;

/// The rkyv error type every protocol operation uses.
pub type RkyvError = rkyv::rancor::Error;

/// The serializer messages are written with: rkyv's high-level serializer over a frame's output
/// buffer, with a reused arena for scratch space.
pub type WireSerializer<'a> = HighSerializer<PayloadWriter<'a>, WireScratch<'a>, RkyvError>;

/// The serializer's scratch space: the codec's arena, made and acquired only when a type asks
/// for scratch (serializing a `Vec` of structs does; a plain struct never does). Acquiring it
/// per message was a fifth of a small message's encoding.
pub struct WireScratch<'a> {
    /// The codec's arena, until the handle is taken from it.
    arena: Option<&'a mut Option<Arena>>,
    handle: Option<ArenaHandle<'a>>,
}

impl<'a> WireScratch<'a> {
    fn new(arena: &'a mut Option<Arena>) -> Self {
        WireScratch {
            arena: Some(arena),
            handle: None,
        }
    }
}

/// The scratch arena was neither there nor acquired (cannot happen: one of the two always is).
#[derive(Debug)]
struct ScratchUnavailable;

impl std::fmt::Display for ScratchUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the serializer's scratch arena is unavailable")
    }
}

impl std::error::Error for ScratchUnavailable {}

// SAFETY: every allocation is the arena handle's, which upholds the contract; nothing is
// allocated before the handle exists, so a pop before it has nothing to free.
unsafe impl<E: Source> Allocator<E> for WireScratch<'_> {
    #[inline]
    unsafe fn push_alloc(&mut self, layout: Layout) -> Result<NonNull<[u8]>, E> {
        if self.handle.is_none() {
            // The arena (1 KiB) is made on first use: many codecs and snapshot writers never
            // need scratch.
            let arena = self
                .arena
                .take()
                .ok_or_else(|| E::new(ScratchUnavailable))?;
            self.handle = Some(arena.get_or_insert_with(Arena::new).acquire());
        }
        let handle = self
            .handle
            .as_mut()
            .ok_or_else(|| E::new(ScratchUnavailable))?;
        // SAFETY: the caller's contract for `push_alloc`, passed on.
        unsafe { Allocator::<E>::push_alloc(handle, layout) }
    }

    #[inline]
    unsafe fn pop_alloc(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result<(), E> {
        match self.handle.as_mut() {
            // SAFETY: the caller's contract for `pop_alloc`, passed on.
            Some(handle) => unsafe { Allocator::<E>::pop_alloc(handle, ptr, layout) },
            None => Err(E::new(ScratchUnavailable)),
        }
    }
}

/// An rkyv writer that appends a payload to a frame buffer.
///
/// Positions are relative to the payload's start, so the archive is the same bytes wherever in the
/// buffer it lands (the unaligned format needs no padding to absolute offsets).
pub struct PayloadWriter<'a> {
    buffer: &'a mut BytesMut,
    start: usize,
}

impl Positional for PayloadWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.buffer.len() - self.start
    }
}

impl<E> Writer<E> for PayloadWriter<'_> {
    #[inline]
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
    rkyv::api::high::to_bytes_in_with_alloc::<_, _, RkyvError>(
        value,
        writer,
        WireScratch::new(arena),
    )
    .map(drop)
    .map_err(|reason| Error::Encode {
        message: name,
        reason,
    })
}
