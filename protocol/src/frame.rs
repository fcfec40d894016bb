//! The frame: header layout, header parsing, and the owned, not-yet-validated `Frame`.
//!
//! The byte-by-byte layout is documented in `docs/protocol.md`; the constants here are its source
//! of truth.

use bytes::{Bytes, BytesMut};

use crate::{Error, MessageKind};

/// The protocol version this build speaks and writes.
pub const PROTOCOL_VERSION: u8 = 3;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the fixed header, length prefix included: length, version, flags, kind, sequence.
pub const FIXED_HEADER_LEN: usize = 12;
/// Bytes of the optional binary W3C trace context: trace id, span id, trace flags.
pub const TRACE_CONTEXT_LEN: usize = 25;
/// Flag bit: a trace context follows the fixed header.
pub const FLAG_TRACE_CONTEXT: u8 = 0b0000_0001;
/// Flag bit: the frame answers the request whose `seq` it carries (a server's reply, or a
/// `Refused` of that request). A frame without it is a push, whatever its `seq`.
pub const FLAG_REPLY: u8 = 0b0000_0010;
/// Flag bits this version defines; a frame with any other bit set is refused.
pub const KNOWN_FLAGS: u8 = FLAG_TRACE_CONTEXT | FLAG_REPLY;
/// Default maximum frame size, length prefix included.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// A W3C trace context in binary form, carried by a frame so a client's trace continues on the
/// server (<https://www.w3.org/TR/trace-context/>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The 16-byte trace id; never all zeroes.
    pub trace_id: [u8; 16],
    /// The 8-byte id of the sender's span; never all zeroes.
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Returns whether the sender sampled this trace.
    #[inline]
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    fn read(bytes: &[u8; TRACE_CONTEXT_LEN]) -> Result<Self, Error> {
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        span_id.copy_from_slice(&bytes[16..24]);
        if trace_id == [0; 16] {
            return Err(Error::InvalidTraceContext("trace id"));
        }
        if span_id == [0; 8] {
            return Err(Error::InvalidTraceContext("span id"));
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags: bytes[24],
        })
    }
}

/// Everything a frame says about its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message kind id; selects the payload's type.
    pub kind: MessageKind,
    /// The sender's sequence number, echoed in replies and used for ordering checks.
    pub seq: u32,
    /// The sender's trace context, when it sent one.
    pub trace: Option<TraceContext>,
    /// Whether the frame answers the request with this `seq` ([`FLAG_REPLY`]).
    pub reply: bool,
}

impl FrameHeader {
    /// Bytes this header occupies on the wire, length prefix included.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + if self.trace.is_some() {
                TRACE_CONTEXT_LEN
            } else {
                0
            }
    }

    /// Appends this header with a zero length prefix; returns the prefix's offset in `dst` so the
    /// caller can patch it once the payload is written.
    #[inline]
    pub(crate) fn write_with_placeholder(&self, dst: &mut BytesMut) -> usize {
        // Assembled on the stack and appended once: one capacity check instead of one per field.
        let mut header = [0u8; FIXED_HEADER_LEN + TRACE_CONTEXT_LEN];
        header[4] = PROTOCOL_VERSION;
        header[6..8].copy_from_slice(&self.kind.0.to_le_bytes());
        header[8..12].copy_from_slice(&self.seq.to_le_bytes());
        if self.reply {
            header[5] = FLAG_REPLY;
        }
        if let Some(trace) = &self.trace {
            header[5] |= FLAG_TRACE_CONTEXT;
            header[12..28].copy_from_slice(&trace.trace_id);
            header[28..36].copy_from_slice(&trace.span_id);
            header[36] = trace.flags;
        }
        let prefix_at = dst.len();
        // Two constant lengths rather than one computed: each copy compiles to a few moves
        // instead of a call to `memmove` (a quarter of a small message's encoding).
        if self.trace.is_some() {
            dst.extend_from_slice(&header);
        } else {
            dst.extend_from_slice(&header[..FIXED_HEADER_LEN]);
        }
        prefix_at
    }
}

/// Limits applied while decoding untrusted bytes.
#[derive(Clone, Copy, Debug)]
pub struct DecodeConfig {
    /// Largest frame accepted, length prefix included. Checked on the length prefix, before any
    /// buffer grows for the frame.
    pub max_frame_len: usize,
    /// Which kind ids are accepted; checked on the header, before the payload is awaited.
    pub known_kind: fn(MessageKind) -> bool,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            known_kind: |_| true,
        }
    }
}

impl DecodeConfig {
    /// Sets the maximum frame size.
    pub fn with_max_frame_len(mut self, max_frame_len: usize) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }
}

/// How far a scan of a buffer's front got.
#[derive(Debug)]
pub(crate) enum Scan {
    /// The buffer holds a valid prefix of a frame; `need` bytes are needed for the next step
    /// (`in_header` tells whether that step is still the header).
    NeedMore { need: usize, in_header: bool },
    /// The buffer starts with a whole frame of `total` bytes whose payload starts at
    /// `payload_offset`.
    Complete {
        header: FrameHeader,
        total: usize,
        payload_offset: usize,
    },
}

/// Checks the front of `buf` as far as it goes. Every check runs as soon as its bytes are
/// present, so a hostile length, version, flag or kind is refused before the rest arrives.
#[inline]
pub(crate) fn scan(buf: &[u8], config: &DecodeConfig) -> Result<Scan, Error> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(Scan::NeedMore {
            need: FIXED_HEADER_LEN,
            in_header: true,
        });
    };
    let length = u32::from_le_bytes(*prefix);
    let minimum = (FIXED_HEADER_LEN - LENGTH_PREFIX_LEN) as u32;
    if length < minimum {
        return Err(Error::FrameTooShort { length, minimum });
    }
    let total = u64::from(length) + LENGTH_PREFIX_LEN as u64;
    if total > config.max_frame_len as u64 {
        return Err(Error::Oversize {
            length: total,
            max: config.max_frame_len,
        });
    }
    // `total` fits in usize: it is at most `max_frame_len`.
    let total = total as usize;
    let Some(fixed) = buf.first_chunk::<FIXED_HEADER_LEN>() else {
        return Ok(Scan::NeedMore {
            need: FIXED_HEADER_LEN,
            in_header: true,
        });
    };
    let version = fixed[4];
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let flags = fixed[5];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::ReservedFlags { flags });
    }
    let kind = MessageKind(u16::from_le_bytes([fixed[6], fixed[7]]));
    if !(config.known_kind)(kind) {
        return Err(Error::UnknownKind { kind });
    }
    let seq = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    let has_trace = flags & FLAG_TRACE_CONTEXT != 0;
    let header_len = FIXED_HEADER_LEN + if has_trace { TRACE_CONTEXT_LEN } else { 0 };
    if total < header_len {
        return Err(Error::FrameTooShort {
            length,
            minimum: (header_len - LENGTH_PREFIX_LEN) as u32,
        });
    }
    let trace = if has_trace {
        let Some(context) = buf[FIXED_HEADER_LEN..].first_chunk::<TRACE_CONTEXT_LEN>() else {
            return Ok(Scan::NeedMore {
                need: header_len,
                in_header: true,
            });
        };
        Some(TraceContext::read(context)?)
    } else {
        None
    };
    if buf.len() < total {
        return Ok(Scan::NeedMore {
            need: total,
            in_header: false,
        });
    }
    Ok(Scan::Complete {
        header: FrameHeader {
            kind,
            seq,
            trace,
            reply: flags & FLAG_REPLY != 0,
        },
        total,
        payload_offset: header_len,
    })
}

/// One whole frame whose header passed every check and whose payload is not yet validated.
///
/// A `Frame` owns its wire bytes through [`Bytes`], so it is cheap to clone and can cross threads;
/// turning it into a typed message is [`Frame::validate`] (or a protocol's `validate`), which
/// checks the archive once and keeps these same bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    header: FrameHeader,
    wire: Bytes,
    /// At most `FIXED_HEADER_LEN + TRACE_CONTEXT_LEN` (37): a `u8` keeps a frame at 72 bytes,
    /// small enough to hand back by value in a refusal.
    payload_offset: u8,
}

impl Frame {
    #[inline]
    pub(crate) fn from_parts(header: FrameHeader, wire: Bytes, payload_offset: usize) -> Self {
        debug_assert!(payload_offset <= FIXED_HEADER_LEN + TRACE_CONTEXT_LEN);
        Frame {
            header,
            wire,
            payload_offset: payload_offset as u8,
        }
    }

    /// Decodes a buffer that must hold exactly one frame, as a WebSocket binary message does.
    ///
    /// # Errors
    /// Every header check of the streaming decoder, plus [`Error::TruncatedHeader`] or
    /// [`Error::TruncatedFrame`] when the buffer ends early and [`Error::TrailingBytes`] when it
    /// holds more than one frame.
    pub fn decode_exact(wire: Bytes, config: &DecodeConfig) -> Result<Frame, Error> {
        match scan(&wire, config)? {
            Scan::NeedMore {
                need,
                in_header: true,
            } => Err(Error::TruncatedHeader {
                have: wire.len(),
                need,
            }),
            Scan::NeedMore {
                need,
                in_header: false,
            } => Err(Error::TruncatedFrame {
                have: wire.len(),
                need,
            }),
            Scan::Complete { total, .. } if total < wire.len() => Err(Error::TrailingBytes {
                extra: wire.len() - total,
            }),
            Scan::Complete {
                header,
                payload_offset,
                ..
            } => Ok(Frame::from_parts(header, wire, payload_offset)),
        }
    }

    /// The frame's header.
    #[inline]
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The frame's message kind id.
    #[inline]
    pub fn kind(&self) -> MessageKind {
        self.header.kind
    }

    /// The payload: the rkyv archive, not yet validated.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.wire[usize::from(self.payload_offset)..]
    }

    /// The whole frame as it was on the wire, length prefix included. Forwarding a frame writes
    /// these bytes; nothing is re-encoded.
    #[inline]
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }
}
