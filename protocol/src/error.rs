//! The protocol crate's one error type: every reason a frame or a snapshot is refused.

use crate::MessageKind;

/// Why the protocol refused some bytes.
///
/// Every variant names what was wrong, so a gateway can log it and pick a close reason without
/// re-inspecting the input. Reporting "need more bytes" is not an error of the streaming
/// decoder (it returns `Ok(None)`); the `Truncated*` variants are only produced where the caller
/// asserted the buffer holds a whole frame or snapshot ([`Frame::decode_exact`](crate::Frame::decode_exact)).
/// Only [`Error::InvalidArchive`], [`Error::Encode`] and [`Error::Io`] carry heap data; the
/// variants a decoder can hit per byte of input never allocate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than the fixed frame header were supplied.
    #[error("truncated header: have {have} bytes, the header needs {need}")]
    TruncatedHeader {
        /// Bytes available.
        have: usize,
        /// Bytes the header needs (including the trace context when its flag is set).
        need: usize,
    },
    /// The header was complete but the frame's declared length runs past the buffer.
    #[error("truncated frame: have {have} bytes, the length prefix declares {need}")]
    TruncatedFrame {
        /// Bytes available.
        have: usize,
        /// Total frame size the length prefix declares.
        need: usize,
    },
    /// The length prefix is smaller than the header it must cover.
    #[error("frame length {length} is shorter than its {minimum}-byte header")]
    FrameTooShort {
        /// The length prefix's value (bytes after the prefix).
        length: u32,
        /// The smallest legal value for this frame's flags.
        minimum: u32,
    },
    /// The frame is longer than the configured maximum; refused before any allocation.
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// Total frame size the length prefix declares, prefix included.
        length: u64,
        /// The configured maximum frame size.
        max: usize,
    },
    /// The frame's protocol version is not one this build speaks.
    #[error("unsupported protocol version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The version byte the frame carried.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// A flag bit reserved for future versions was set.
    #[error("reserved flag bits set: {flags:#04x}")]
    ReservedFlags {
        /// The whole flags byte.
        flags: u8,
    },
    /// The trace context's trace id or span id was all zeroes, which W3C Trace Context forbids.
    #[error("invalid trace context: {0} is all zeroes")]
    InvalidTraceContext(&'static str),
    /// The message kind id is not declared by the protocol in use.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The kind id the frame carried.
        kind: MessageKind,
    },
    /// A frame of one kind was validated as another.
    #[error("frame of kind {found} cannot be read as {expected_name} (kind {expected})")]
    KindMismatch {
        /// The kind the caller asked for.
        expected: MessageKind,
        /// The name of the message the caller asked for.
        expected_name: &'static str,
        /// The kind the frame carried.
        found: MessageKind,
    },
    /// The payload is not a valid archive of the message its kind declares.
    #[error("invalid archive for {message} (kind {kind}): {reason}")]
    InvalidArchive {
        /// The frame's kind id.
        kind: MessageKind,
        /// The message name declared for that kind, or the snapshot schema.
        message: &'static str,
        /// bytecheck's account of what was wrong.
        reason: rkyv::rancor::Error,
    },
    /// Bytes were left after the one frame (or snapshot) the buffer should hold.
    #[error("{extra} trailing bytes after the frame")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A message could not be serialized.
    #[error("cannot encode {message}: {reason}")]
    Encode {
        /// The message or snapshot schema name.
        message: &'static str,
        /// rkyv's account of the failure.
        reason: rkyv::rancor::Error,
    },
    /// A snapshot did not start with the snapshot magic bytes.
    #[error("not a garrison snapshot: bad magic bytes")]
    SnapshotMagic,
    /// A snapshot was written by a snapshot format this build does not read.
    #[error("unsupported snapshot format {found} (this build reads format {supported})")]
    SnapshotFormat {
        /// The format byte the snapshot carried.
        found: u8,
        /// The format this build reads.
        supported: u8,
    },
    /// A snapshot holds a different state type than the one asked for.
    #[error("snapshot holds another schema than {expected}")]
    SnapshotSchema {
        /// The schema name the caller expected.
        expected: &'static str,
    },
    /// A snapshot holds the right state type at another schema version.
    #[error("snapshot of {schema} is version {found}, expected version {expected}")]
    SnapshotVersion {
        /// The schema name.
        schema: &'static str,
        /// The version the snapshot carried.
        found: u16,
        /// The version the caller expected.
        expected: u16,
    },
    /// An I/O error from the transport under a codec.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Returns true for errors that mean the input ended early rather than being malformed.
    pub fn is_truncation(&self) -> bool {
        matches!(
            self,
            Error::TruncatedHeader { .. } | Error::TruncatedFrame { .. }
        )
    }
}
