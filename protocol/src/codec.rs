//! The byte-stream codec: an incremental frame decoder and an encoder that writes messages
//! straight into a reused output buffer.

use bytes::{Buf, BytesMut};
use rkyv::ser::allocator::Arena;

use crate::{
    DecodeConfig, Error, Frame, FrameHeader, Message, TraceContext,
    archive::write_archive,
    frame::{LENGTH_PREFIX_LEN, Scan, scan},
};

/// What the encoder needs besides the message: the header fields the sender chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// The sequence number to stamp.
    pub seq: u32,
    /// The trace context to carry, if any.
    pub trace: Option<TraceContext>,
    /// Whether the frame answers the request whose `seq` it carries (sets
    /// [`FLAG_REPLY`](crate::frame::FLAG_REPLY)).
    pub reply: bool,
}

impl FrameMeta {
    /// A push (no reply) stamped `seq`, without a trace context.
    pub fn seq(seq: u32) -> Self {
        FrameMeta {
            seq,
            trace: None,
            reply: false,
        }
    }

    /// The reply to the request numbered `seq`.
    pub fn reply_to(seq: u32) -> Self {
        FrameMeta {
            seq,
            trace: None,
            reply: true,
        }
    }
}

/// A message with its header fields, ready for [`FrameCodec`]'s encoder.
#[derive(Debug)]
pub struct Outbound<'m, M> {
    /// The message to encode.
    pub message: &'m M,
    /// Its header fields.
    pub meta: FrameMeta,
}

/// The protocol's codec, for `tokio_util` and actix framed streams alike.
///
/// Decoding yields [`Frame`]s whose headers passed every check; payloads are validated later, once,
/// by the protocol. Encoding writes a header and the message's archive straight into the output
/// buffer the framework reuses, reusing one scratch arena, so steady-state encoding does not
/// allocate.
pub struct FrameCodec {
    config: DecodeConfig,
    arena: Option<Arena>,
    /// Where [`FrameCodec::encode_frame`] writes: frames are split off it and share its block,
    /// which is reclaimed once they are all dropped (no allocation per frame, nor for sharing
    /// one between connections).
    frames: BytesMut,
}

/// The block [`FrameCodec::encode_frame`] cuts frames from: a frame kept alive keeps its block
/// alive, so it stays small.
const FRAME_BLOCK: usize = 4096;

/// The longest frame header (with a trace context).
const HEADER_ROOM: usize = crate::frame::FIXED_HEADER_LEN + crate::frame::TRACE_CONTEXT_LEN;

impl FrameCodec {
    /// A codec with the given limits.
    pub fn new(config: DecodeConfig) -> Self {
        FrameCodec {
            config,
            arena: None,
            frames: BytesMut::new(),
        }
    }

    /// The codec's limits.
    pub fn config(&self) -> &DecodeConfig {
        &self.config
    }

    /// Appends one frame holding `message` to `dst`.
    ///
    /// # Errors
    /// [`Error::Encode`] when the message cannot be serialized and [`Error::Oversize`] when the
    /// frame would exceed the configured maximum; `dst` is left as it was in both cases.
    #[inline]
    pub fn encode_message<M: Message>(
        &mut self,
        message: &M,
        meta: FrameMeta,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        let header = FrameHeader {
            kind: M::KIND,
            seq: meta.seq,
            trace: meta.trace,
            reply: meta.reply,
        };
        let prefix_at = header.write_with_placeholder(dst);
        if let Err(error) = write_archive(message, dst, &mut self.arena, M::NAME) {
            dst.truncate(prefix_at);
            return Err(error);
        }
        let total = dst.len() - prefix_at;
        if total > self.config.max_frame_len {
            dst.truncate(prefix_at);
            return Err(Error::Oversize {
                length: total as u64,
                max: self.config.max_frame_len,
            });
        }
        // The check above bounds `total` by `max_frame_len`; frames over 4 GiB cannot be configured.
        let length = u32::try_from(total - LENGTH_PREFIX_LEN).map_err(|_| Error::Oversize {
            length: total as u64,
            max: self.config.max_frame_len,
        })?;
        dst[prefix_at..prefix_at + LENGTH_PREFIX_LEN].copy_from_slice(&length.to_le_bytes());
        Ok(())
    }
}

impl FrameCodec {
    /// Encodes `message` as a standalone [`Frame`]: encode once, then push the same frame (a
    /// cheap clone of its bytes, which allocates nothing) to any number of connections. Frames
    /// are cut from a block the codec keeps; it allocates a new block only while frames cut
    /// from the last one are still alive.
    ///
    /// # Errors
    /// As [`FrameCodec::encode_message`].
    pub fn encode_frame<M: Message>(
        &mut self,
        message: &M,
        meta: FrameMeta,
    ) -> Result<Frame, Error> {
        let mut frames = std::mem::take(&mut self.frames);
        // Room for the header and the archive's fixed part; the block is reclaimed in place
        // when every frame cut from it is gone.
        let wanted = HEADER_ROOM + std::mem::size_of::<<M as rkyv::Archive>::Archived>();
        if frames.capacity() < wanted {
            frames.reserve(wanted.max(FRAME_BLOCK));
        }
        let encoded = self.encode_message(message, meta, &mut frames);
        let wire = frames.split();
        self.frames = frames;
        encoded?;
        let header = FrameHeader {
            kind: M::KIND,
            seq: meta.seq,
            trace: meta.trace,
            reply: meta.reply,
        };
        let payload_offset = header.encoded_len();
        Ok(Frame::from_parts(header, wire.freeze(), payload_offset))
    }
}

thread_local! {
    /// The codec behind [`encode_frame`]: one per thread, so its scratch arena is reused.
    static ENCODER: std::cell::RefCell<FrameCodec> = std::cell::RefCell::new(FrameCodec::default());
}

/// Encodes `message` as a standalone [`Frame`] with the default limits, reusing a per-thread
/// codec: for code that sends frames without keeping a codec of its own (a room's per-frame
/// broadcast, a control reply). Encode once, push the same frame to many connections.
///
/// # Errors
/// As [`FrameCodec::encode_message`].
pub fn encode_frame<M: Message>(message: &M, meta: FrameMeta) -> Result<Frame, Error> {
    ENCODER.with(|codec| match codec.try_borrow_mut() {
        Ok(mut codec) => codec.encode_frame(message, meta),
        // Only reachable if a Serialize impl itself encodes a frame: use a fresh codec.
        Err(_) => FrameCodec::default().encode_frame(message, meta),
    })
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DecodeConfig::default())
    }
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = Error;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        match scan(src, &self.config)? {
            Scan::NeedMore { need, .. } => {
                // `need` is bounded by the checked length prefix (or the fixed header), so a
                // hostile prefix never makes this reserve more than `max_frame_len`.
                src.reserve(need.saturating_sub(src.len()));
                Ok(None)
            }
            Scan::Complete {
                header,
                total,
                payload_offset,
            } => Ok(Some(split_frame(src, header, total, payload_offset))),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        match scan(src, &self.config)? {
            Scan::Complete {
                header,
                total,
                payload_offset,
            } => Ok(Some(split_frame(src, header, total, payload_offset))),
            Scan::NeedMore { .. } if src.is_empty() => Ok(None),
            Scan::NeedMore { need, in_header } => {
                // The stream ended inside a frame: report exactly what was cut off, and consume
                // it so the framed stream terminates.
                let have = src.len();
                src.advance(have);
                Err(if in_header {
                    Error::TruncatedHeader { have, need }
                } else {
                    Error::TruncatedFrame { have, need }
                })
            }
        }
    }
}

/// Splits a whole frame off the front of `src` without copying it.
#[inline]
fn split_frame(
    src: &mut BytesMut,
    header: FrameHeader,
    total: usize,
    payload_offset: usize,
) -> Frame {
    Frame::from_parts(header, src.split_to(total).freeze(), payload_offset)
}

impl<M: Message> tokio_util::codec::Encoder<Outbound<'_, M>> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, item: Outbound<'_, M>, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_message(item.message, item.meta, dst)
    }
}

/// Forwards an already-encoded frame unchanged (a broadcast encodes once and sends the same
/// bytes to every recipient).
impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(frame.wire());
        Ok(())
    }
}
