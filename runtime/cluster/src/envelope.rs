//! What one node sends another: an entity message as rkyv bytes with its address, its shard's
//! fencing token and the sender's trace context, and the refusal that comes back when the
//! receiver will not take it.
//!
//! Both are validated once, on receipt, before anything reads them: a frame from another node is
//! as untrusted as one from a client. [`Envelope::check`] bounds the size, checks the archive
//! with rkyv's validator, bounds every field and recomputes the shard from the kind and key, so
//! a sender cannot aim a message at a shard its key does not belong to.

use garrison_protocol::TraceContext;
use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};
use thiserror::Error;

use crate::shard::{ShardId, shard_of};

/// The largest envelope a node accepts (the entity message plus its address): 256 KiB, far above
/// any game message and far below what would let a peer exhaust a node's memory.
pub const MAX_ENVELOPE: usize = 256 * 1024;
/// The longest kind name an envelope may carry.
pub const MAX_KIND: usize = 64;
/// The longest entity key an envelope may carry, in bytes.
pub const MAX_KEY: usize = 256;
/// The longest node id an envelope may carry.
pub const MAX_NODE_ID: usize = 128;
/// The envelope format this build writes and reads (2: `hops` and `direct`).
pub const ENVELOPE_VERSION: u8 = 2;
/// How many times a node forwards an envelope that reached it by a table it has moved on from
/// (to the shard's owner in its own, newer table): once, so no envelope ever circles.
pub const MAX_HOPS: u8 = 1;

/// An entity message on its way to the node that owns its shard.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub version: u8,
    /// The sender's number for this message, echoed in a [`Refusal`].
    pub id: u64,
    /// The sending node.
    pub from: String,
    /// The entity kind.
    pub kind: String,
    /// The entity key, as the kind encodes it for [`shard_of`].
    pub key: Vec<u8>,
    /// The key's shard, as the sender computed it.
    pub shard: u16,
    /// The fencing token of the assignment the sender routed by.
    pub token: u64,
    /// The sender's trace context: trace id (16 bytes), span id (8), flags (1); empty when the
    /// message is not traced.
    pub trace: Vec<u8>,
    /// The entity message, encoded by its kind.
    pub payload: Vec<u8>,
    /// Times a node forwarded it on since its sender routed it (at most [`MAX_HOPS`]).
    pub hops: u8,
    /// Addressed to the receiving node itself rather than by shard: an entity that lives with
    /// its player's session (wherever the player connected), not where a shard is placed.
    pub direct: bool,
}

/// Why an envelope was refused before it reached an entity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Larger than [`MAX_ENVELOPE`].
    #[error("envelope of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not an archived envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// An envelope of a format this build does not read.
    #[error("envelope version {0} is not supported (this node reads {ENVELOPE_VERSION})")]
    Version(u8),
    /// A field out of its bounds.
    #[error("envelope field `{0}` is out of bounds")]
    Field(&'static str),
    /// The shard does not match the key.
    #[error("envelope names shard {claimed} but its key belongs to shard {actual}")]
    WrongShard {
        /// The shard the envelope named.
        claimed: u16,
        /// The key's shard.
        actual: u16,
    },
}

impl Envelope {
    /// Encodes the envelope; refuses one over [`MAX_ENVELOPE`] or with a field out of bounds, so
    /// a node never sends what its peer would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        check_fields(
            self.version,
            &self.from,
            &self.kind,
            self.key.len(),
            self.trace.len(),
        )?;
        if self.hops > MAX_HOPS {
            return Err(EnvelopeError::Field("hops"));
        }
        let bytes = rkyv::to_bytes::<RkyvError>(self)
            .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
        if bytes.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE,
            });
        }
        Ok(bytes.into_vec())
    }

    /// Validates received bytes and returns the archived envelope, read in place. `shards` is
    /// the fleet's shard count, to recompute the key's shard.
    pub fn check(bytes: &[u8], shards: u16) -> Result<&ArchivedEnvelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE,
            });
        }
        let archived = rkyv::access::<ArchivedEnvelope, RkyvError>(bytes)
            .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
        check_fields(
            archived.version,
            archived.from.as_str(),
            archived.kind.as_str(),
            archived.key.len(),
            archived.trace.len(),
        )?;
        if !archived.trace.is_empty() {
            trace_of(&archived.trace).ok_or(EnvelopeError::Field("trace"))?;
        }
        if archived.hops > MAX_HOPS {
            return Err(EnvelopeError::Field("hops"));
        }
        let actual = shard_of(archived.kind.as_str(), &archived.key, shards);
        let claimed = archived.shard.to_native();
        if actual != ShardId(claimed) {
            return Err(EnvelopeError::WrongShard {
                claimed,
                actual: actual.0,
            });
        }
        Ok(archived)
    }
}

impl ArchivedEnvelope {
    /// The sender's trace context, if the message is traced.
    pub fn trace_context(&self) -> Option<TraceContext> {
        trace_of(&self.trace)
    }
}

/// A trace context as an envelope carries it.
pub fn trace_bytes(trace: Option<&TraceContext>) -> Vec<u8> {
    match trace {
        None => Vec::new(),
        Some(trace) => {
            let mut bytes = Vec::with_capacity(25);
            bytes.extend_from_slice(&trace.trace_id);
            bytes.extend_from_slice(&trace.span_id);
            bytes.push(trace.flags);
            bytes
        }
    }
}

fn trace_of(bytes: &[u8]) -> Option<TraceContext> {
    if bytes.len() != 25 {
        return None;
    }
    let mut trace_id = [0; 16];
    let mut span_id = [0; 8];
    trace_id.copy_from_slice(&bytes[..16]);
    span_id.copy_from_slice(&bytes[16..24]);
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceContext {
        trace_id,
        span_id,
        flags: bytes[24],
    })
}

fn check_fields(
    version: u8,
    from: &str,
    kind: &str,
    key: usize,
    trace: usize,
) -> Result<(), EnvelopeError> {
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    if from.is_empty() || from.len() > MAX_NODE_ID {
        return Err(EnvelopeError::Field("from"));
    }
    if kind.is_empty() || kind.len() > MAX_KIND {
        return Err(EnvelopeError::Field("kind"));
    }
    if key > MAX_KEY {
        return Err(EnvelopeError::Field("key"));
    }
    if trace != 0 && trace != 25 {
        return Err(EnvelopeError::Field("trace"));
    }
    Ok(())
}

impl ArchivedEnvelope {
    /// The envelope again, owned, forwarded once more by `by`, which routes it with `token`.
    pub fn forwarded(&self, token: u64) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: self.id.to_native(),
            from: self.from.as_str().to_owned(),
            kind: self.kind.as_str().to_owned(),
            key: self.key.to_vec(),
            shard: self.shard.to_native(),
            token,
            trace: self.trace.to_vec(),
            payload: self.payload.to_vec(),
            hops: self.hops + 1,
            direct: false,
        }
    }
}

/// A node's word to a peer about the shards they share, validated on receipt like an
/// envelope.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Shards handed over to the receiver.
    HandedOff(HandedOff),
}

/// `from` handed these shards over (table `version` moved them to the receiver): its entities
/// on them left with their state written through, and what was queued for them was sent on
/// before this. The receiver may run them now.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HandedOff {
    /// The node that owned them.
    pub from: String,
    /// The table version that moved them.
    pub version: u64,
    /// The shards.
    pub shards: Vec<u16>,
}

/// The largest control message a node accepts (a hand-off of every shard of a 4,096-shard
/// fleet fits).
pub const MAX_CONTROL: usize = 16 * 1024;

impl Control {
    /// Encodes the message.
    ///
    /// # Errors
    /// [`EnvelopeError::TooLarge`] past [`MAX_CONTROL`].
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let bytes = rkyv::to_bytes::<RkyvError>(self)
            .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
        if bytes.len() > MAX_CONTROL {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_CONTROL,
            });
        }
        Ok(bytes.into_vec())
    }

    /// Validates and decodes received bytes: the archive, the sender's id, and every shard
    /// below `shards`.
    ///
    /// # Errors
    /// [`EnvelopeError`] for anything else.
    pub fn decode(bytes: &[u8], shards: u16) -> Result<Control, EnvelopeError> {
        if bytes.len() > MAX_CONTROL {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_CONTROL,
            });
        }
        let control = rkyv::from_bytes::<Control, RkyvError>(bytes)
            .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
        match &control {
            Control::HandedOff(HandedOff {
                from, shards: list, ..
            }) => {
                if from.is_empty() || from.len() > MAX_NODE_ID {
                    return Err(EnvelopeError::Field("from"));
                }
                if list.len() > usize::from(shards) || list.iter().any(|&shard| shard >= shards) {
                    return Err(EnvelopeError::Field("shards"));
                }
            }
        }
        Ok(control)
    }
}

/// Why a node refused an envelope; the code a [`Refusal`] carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefusalReason {
    /// The envelope failed validation ([`EnvelopeError`]).
    Malformed = 1,
    /// The receiver does not own the shard; the sender's table is stale or wrong.
    NotOwner = 2,
    /// The sender routed by a newer table than the receiver has: the receiver may have lost
    /// the shard and must not take messages for it until its table catches up.
    Behind = 3,
    /// No kind of that name is served on the receiver.
    UnknownKind = 4,
    /// The kind's inbox refused the message (undecodable payload, a full mailbox, a stopped
    /// entity).
    Rejected = 5,
}

impl RefusalReason {
    /// The reason's stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Malformed => "malformed",
            RefusalReason::NotOwner => "not_owner",
            RefusalReason::Behind => "behind",
            RefusalReason::UnknownKind => "unknown_kind",
            RefusalReason::Rejected => "rejected",
        }
    }
}

/// A refused envelope, sent back to its sender so the message is dead-lettered there with the
/// reason instead of vanishing.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The envelope's [`Envelope::id`].
    pub id: u64,
    /// The node that refused it.
    pub by: String,
    /// The envelope's kind.
    pub kind: String,
    /// The envelope's shard.
    pub shard: u16,
    /// Why.
    pub reason: RefusalReason,
    /// The reason in words (the validation error, the owner the receiver knows).
    pub detail: String,
}

/// The largest refusal a node accepts.
pub const MAX_REFUSAL: usize = 4 * 1024;

impl Refusal {
    /// Encodes the refusal, its detail cut to fit [`MAX_REFUSAL`].
    pub fn encode(&self) -> Vec<u8> {
        let mut refusal = self.clone();
        if refusal.detail.len() > 1024 {
            let mut end = 1024;
            while !refusal.detail.is_char_boundary(end) {
                end -= 1;
            }
            refusal.detail.truncate(end);
        }
        refusal.by.truncate(MAX_NODE_ID);
        refusal.kind.truncate(MAX_KIND);
        match rkyv::to_bytes::<RkyvError>(&refusal) {
            Ok(bytes) => bytes.into_vec(),
            // Serializing plain strings and integers into a growable buffer has no failure
            // mode; an empty refusal is refused by `decode` if one ever appears.
            Err(_) => Vec::new(),
        }
    }

    /// Validates and decodes a received refusal.
    pub fn decode(bytes: &[u8]) -> Result<Refusal, EnvelopeError> {
        if bytes.len() > MAX_REFUSAL {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_REFUSAL,
            });
        }
        rkyv::from_bytes::<Refusal, RkyvError>(bytes)
            .map_err(|error| EnvelopeError::Malformed(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::DEFAULT_SHARDS;

    fn envelope(key: &[u8]) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: 7,
            from: "node-a".into(),
            kind: "room".into(),
            key: key.to_vec(),
            shard: shard_of("room", key, DEFAULT_SHARDS).0,
            token: 3,
            trace: trace_bytes(Some(&TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 1,
            })),
            payload: b"input".to_vec(),
            hops: 0,
            direct: false,
        }
    }

    #[test]
    fn an_envelope_round_trips_and_is_read_in_place() {
        let sent = envelope(&9u64.to_le_bytes());
        let bytes = sent.encode().unwrap();
        let read = Envelope::check(&bytes, DEFAULT_SHARDS).unwrap();
        assert_eq!(read.from.as_str(), "node-a");
        assert_eq!(read.payload.as_slice(), b"input");
        assert_eq!(read.token.to_native(), 3);
        assert_eq!(read.trace_context().unwrap().span_id, [2; 8]);
    }

    #[test]
    fn a_shard_that_does_not_match_the_key_is_refused() {
        let mut sent = envelope(&9u64.to_le_bytes());
        sent.shard = (sent.shard + 1) % DEFAULT_SHARDS;
        let bytes = sent.encode().unwrap();
        assert!(matches!(
            Envelope::check(&bytes, DEFAULT_SHARDS),
            Err(EnvelopeError::WrongShard { .. })
        ));
    }

    #[test]
    fn hostile_bytes_get_a_typed_error_never_a_panic() {
        let good = envelope(&9u64.to_le_bytes()).encode().unwrap();
        assert!(matches!(
            Envelope::check(&[], DEFAULT_SHARDS),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::check(&vec![0u8; MAX_ENVELOPE + 1], DEFAULT_SHARDS),
            Err(EnvelopeError::TooLarge { .. })
        ));
        // Every truncation and every single-byte corruption of a valid envelope: each one is
        // either refused with an error or still a valid envelope for its (checked) shard.
        for len in 0..good.len() {
            let _ = Envelope::check(&good[..len], DEFAULT_SHARDS);
        }
        for at in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                if let Ok(read) = Envelope::check(&bad, DEFAULT_SHARDS) {
                    assert_eq!(
                        shard_of(read.kind.as_str(), &read.key, DEFAULT_SHARDS).0,
                        read.shard.to_native()
                    );
                }
            }
        }
    }

    #[test]
    fn fields_out_of_bounds_are_refused_on_both_ends() {
        let mut long_key = envelope(&[7; MAX_KEY + 1]);
        long_key.shard = shard_of("room", &long_key.key, DEFAULT_SHARDS).0;
        assert_eq!(long_key.encode(), Err(EnvelopeError::Field("key")));
        let mut old = envelope(b"k");
        old.version = 0;
        assert_eq!(old.encode(), Err(EnvelopeError::Version(0)));
        let mut big = envelope(b"k");
        big.payload = vec![0; MAX_ENVELOPE];
        assert!(matches!(big.encode(), Err(EnvelopeError::TooLarge { .. })));
        // A version the encoder would refuse, written by hand, is refused by the receiver.
        let mut forged = envelope(b"k");
        forged.version = 9;
        let bytes = rkyv::to_bytes::<RkyvError>(&forged).unwrap();
        assert!(matches!(
            Envelope::check(&bytes, DEFAULT_SHARDS),
            Err(EnvelopeError::Version(9))
        ));
    }

    #[test]
    fn a_forwarded_envelope_counts_its_hop_and_a_second_one_is_refused() {
        let sent = envelope(&9u64.to_le_bytes()).encode().unwrap();
        let read = Envelope::check(&sent, DEFAULT_SHARDS).unwrap();
        let once = read.forwarded(8).encode().unwrap();
        let read = Envelope::check(&once, DEFAULT_SHARDS).unwrap();
        assert_eq!((read.hops, read.token.to_native()), (1, 8));
        assert_eq!(
            read.forwarded(9).encode(),
            Err(EnvelopeError::Field("hops"))
        );
        let mut forged = envelope(b"k");
        forged.hops = 2;
        let bytes = rkyv::to_bytes::<RkyvError>(&forged).unwrap();
        assert_eq!(
            Envelope::check(&bytes, DEFAULT_SHARDS).err(),
            Some(EnvelopeError::Field("hops"))
        );
    }

    #[test]
    fn a_hand_off_round_trips_and_shards_out_of_range_are_refused() {
        let control = Control::HandedOff(HandedOff {
            from: "node-a".into(),
            version: 7,
            shards: vec![0, 5, 1023],
        });
        let bytes = control.encode().unwrap();
        assert_eq!(Control::decode(&bytes, DEFAULT_SHARDS).unwrap(), control);
        assert_eq!(
            Control::decode(&bytes, 1000).err(),
            Some(EnvelopeError::Field("shards"))
        );
        let nobody = Control::HandedOff(HandedOff {
            from: String::new(),
            version: 7,
            shards: vec![],
        });
        assert_eq!(
            Control::decode(&nobody.encode().unwrap(), DEFAULT_SHARDS).err(),
            Some(EnvelopeError::Field("from"))
        );
        assert!(Control::decode(b"garbage", DEFAULT_SHARDS).is_err());
        for len in 0..bytes.len() {
            let _ = Control::decode(&bytes[..len], DEFAULT_SHARDS);
        }
    }

    #[test]
    fn a_refusal_round_trips_and_garbage_is_an_error() {
        let refusal = Refusal {
            id: 4,
            by: "node-b".into(),
            kind: "room".into(),
            shard: 12,
            reason: RefusalReason::NotOwner,
            detail: "x".repeat(5000),
        };
        let decoded = Refusal::decode(&refusal.encode()).unwrap();
        assert_eq!(decoded.reason, RefusalReason::NotOwner);
        assert_eq!(decoded.detail.len(), 1024);
        assert!(Refusal::decode(b"not a refusal").is_err());
    }
}
