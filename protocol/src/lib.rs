//! Garrison's wire protocol: length-prefixed frames carrying [rkyv] archives, validated once at
//! the edge and read in place afterwards.
//!
//! A game declares its messages with stable kind ids using [`messages!`]. The [`FrameCodec`]
//! cuts a byte stream into [`Frame`]s, checking every header field as soon as its bytes arrive and
//! refusing an oversize frame before allocating for it. A protocol's `validate` then checks the
//! payload once with bytecheck; the resulting [`Validated`] message owns the frame's bytes, can be
//! sent to another thread, and dereferences to the archived message with no copy and no further
//! check. The same archives serve as entity [`snapshot`](mod@snapshot)s.
//!
//! The byte layout is in `docs/protocol.md`, so clients in other languages can be written from it.
//!
//! ```
//! use bytes::BytesMut;
//! use garrison_protocol::{messages, DecodeConfig, FrameCodec, FrameMeta, Protocol, Schema};
//! use tokio_util::codec::Decoder;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Schema, Debug, PartialEq)]
//! pub struct Move { pub entity: u64, pub dx: i32, pub dy: i32 }
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Schema, Debug, PartialEq)]
//! pub struct Chat { pub text: String }
//!
//! messages! {
//!     /// What a client sends.
//!     pub enum ClientMessage {
//!         0x0010 => Move(Move),
//!         0x0011 => Chat(Chat),
//!     }
//! }
//!
//! // The client side encodes into a reused buffer...
//! let mut codec = FrameCodec::new(DecodeConfig::for_protocol::<ClientMessage>());
//! let mut wire = BytesMut::new();
//! codec.encode_message(&Move { entity: 7, dx: -1, dy: 2 }, FrameMeta::seq(1), &mut wire)?;
//! codec.encode_message(&Chat { text: "gg".into() }, FrameMeta::seq(2), &mut wire)?;
//!
//! // ...the server decodes frames, validates each once, and reads it in place.
//! let mut seen = Vec::new();
//! while let Some(frame) = codec.decode(&mut wire)? {
//!     match ClientMessage::validate(frame)? {
//!         ClientMessage::Move(m) => seen.push(format!("move {} by {},{}", m.entity, m.dx, m.dy)),
//!         ClientMessage::Chat(c) => seen.push(format!("chat {}", c.text)),
//!     }
//! }
//! assert_eq!(seen, ["move 7 by -1,2", "chat gg"]);
//! # Ok::<(), garrison_protocol::Error>(())
//! ```

// The wire format is pinned in the workspace manifest: little-endian, 32-bit relative pointers,
// unaligned. Cargo unifies rkyv's features across a build, so a crate that enabled another format
// (`aligned`, `big_endian`, another pointer width) would silently change the bytes on the wire:
// the build fails here instead.
const _: () = {
    assert!(
        core::mem::align_of::<rkyv::Archived<u64>>() == 1,
        "rkyv must be built with the `unaligned` format feature"
    );
    assert!(
        core::mem::size_of::<rkyv::Archived<usize>>() == 4,
        "rkyv must be built with 32-bit relative pointers (`pointer_width_32`)"
    );
    // SAFETY: an archived u16 is two bytes with no invalid values.
    let bytes: [u8; 2] =
        unsafe { core::mem::transmute(rkyv::Archived::<u16>::from_native(0x0102)) };
    assert!(
        bytes[0] == 0x02,
        "rkyv must be built little-endian (no `big_endian` feature)"
    );
};

// The `Schema` derive names this crate `::garrison_protocol`, here as everywhere.
extern crate self as garrison_protocol;

mod archive;
mod codec;
pub mod control;
mod error;
mod frame;
mod kind;
mod message;
pub mod schema;
pub mod snapshot;
mod strict;
#[cfg(feature = "ticket")]
pub mod ticket;

pub use archive::{PayloadWriter, RkyvError, WireScratch, WireSerializer};
pub use codec::{FrameCodec, FrameMeta, Outbound, encode_frame};
pub use error::Error;
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, DecodeConfig, FIXED_HEADER_LEN, FLAG_REPLY, FLAG_TRACE_CONTEXT, Frame,
    FrameHeader, KNOWN_FLAGS, LENGTH_PREFIX_LEN, PROTOCOL_VERSION, TRACE_CONTEXT_LEN, TraceContext,
};
/// Derives [`schema::Schema`]: the archived layout of a message type.
pub use garrison_schema_derive::Schema;
pub use kind::MessageKind;
#[doc(hidden)]
pub use message::__private;
pub use message::{Message, Protocol, Validated};
/// rkyv, with the format features this crate pins (little-endian, 32-bit relative pointers,
/// unaligned): what a game's message types derive.
pub use rkyv;
pub use schema::Schema;
pub use snapshot::{Snapshot, SnapshotRef, SnapshotWriter};
pub use strict::{StrictArchiveValidator, StrictValidator};
