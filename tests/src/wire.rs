//! Test messages covering every archived shape (structs, enums, strings, vectors, options,
//! nesting), and a checker that runs untrusted bytes through the whole decode path.

// rkyv's derive generates the archived twins of these types without docs.
#![allow(missing_docs)]

use bytes::BytesMut;
use garrison_protocol::{
    DecodeConfig, Error, FrameCodec, FrameMeta, Message, Protocol, Schema, messages,
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio_util::codec::Decoder;

/// The 24-byte input message the benchmarks measure: entity id, position, sequence and tick.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The entity the input steers.
    pub entity: u64,
    /// Target x.
    pub x: i32,
    /// Target y.
    pub y: i32,
    /// Client sequence number.
    pub seq: u32,
    /// Frame the input is stamped for.
    pub tick: u32,
}

/// Two strings.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// Sender name.
    pub from: String,
    /// Message text.
    pub text: String,
}

/// An enum with unit, tuple and struct variants.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No-op.
    Idle,
    /// Move by a delta.
    Move {
        /// x delta.
        dx: i16,
        /// y delta.
        dy: i16,
    },
    /// Attack an entity.
    Attack(u64),
    /// Say something.
    Emote(String),
}

/// One inventory slot.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Item id.
    pub id: u32,
    /// Stack size.
    pub count: u16,
    /// Display name.
    pub name: String,
}

/// Nested vectors, options and booleans.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Owner id.
    pub owner: u64,
    /// Slots.
    pub items: Vec<Item>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Where the bag was dropped, if it was.
    pub dropped_at: Option<(i32, i32)>,
    /// Whether the bag is locked.
    pub locked: bool,
    /// Queued commands.
    pub queue: Vec<Command>,
}

messages! {
    /// Every shape the protocol tests send.
    pub enum TestMessage {
        0x0001 => Input(Input),
        0x0002 => Chat(Chat),
        0x0003 => Command(Command),
        0x0004 => Inventory(Inventory),
    }
}

/// An owned copy of any [`TestMessage`], for comparing what went in with what came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// An [`Input`].
    Input(Input),
    /// A [`Chat`].
    Chat(Chat),
    /// A [`Command`].
    Command(Command),
    /// An [`Inventory`].
    Inventory(Inventory),
}

impl Owned {
    /// Encodes this message as one frame appended to `dst`.
    ///
    /// # Errors
    /// As [`FrameCodec::encode_message`].
    pub fn encode(
        &self,
        codec: &mut FrameCodec,
        meta: FrameMeta,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        match self {
            Owned::Input(m) => codec.encode_message(m, meta, dst),
            Owned::Chat(m) => codec.encode_message(m, meta, dst),
            Owned::Command(m) => codec.encode_message(m, meta, dst),
            Owned::Inventory(m) => codec.encode_message(m, meta, dst),
        }
    }

    /// The kind id this message is sent under.
    pub fn kind(&self) -> garrison_protocol::MessageKind {
        match self {
            Owned::Input(_) => Input::KIND,
            Owned::Chat(_) => Chat::KIND,
            Owned::Command(_) => Command::KIND,
            Owned::Inventory(_) => Inventory::KIND,
        }
    }
}

impl TryFrom<&TestMessage> for Owned {
    type Error = Error;

    /// Reads every field of a validated message (deserializing walks the whole archive).
    fn try_from(message: &TestMessage) -> Result<Self, Error> {
        Ok(match message {
            TestMessage::Input(m) => Owned::Input(m.deserialize()?),
            TestMessage::Chat(m) => Owned::Chat(m.deserialize()?),
            TestMessage::Command(m) => Owned::Command(m.deserialize()?),
            TestMessage::Inventory(m) => Owned::Inventory(m.deserialize()?),
        })
    }
}

/// What [`check_stream`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Messages that validated, in order, read back in full.
    pub messages: Vec<Owned>,
    /// The error that ended the stream, if one did (its `Display` text).
    pub error: Option<String>,
}

/// Feeds `data` to a decoder in the chunks `splits` describes (each split is a chunk length;
/// the remainder goes last), validates every frame, reads each validated message in full, and
/// checks that it re-encodes to a frame that validates to the same message.
///
/// This is the invariant the fuzz target and property tests hold the protocol to: whatever the
/// bytes, nothing panics, and whatever passes validation is safe and complete to read.
///
/// # Panics
/// When a validated message fails to re-encode and read back identically: that is a protocol bug.
pub fn check_stream(data: &[u8], splits: &[usize]) -> StreamOutcome {
    let mut codec = FrameCodec::new(DecodeConfig::for_protocol::<TestMessage>());
    let mut buffer = BytesMut::new();
    let mut outcome = StreamOutcome::default();
    let mut rest = data;
    let mut chunks = splits.iter().copied().chain(std::iter::once(usize::MAX));
    while !rest.is_empty() || outcome.error.is_none() {
        let take = chunks.next().unwrap_or(usize::MAX).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        buffer.extend_from_slice(chunk);
        let at_end = rest.is_empty();
        loop {
            let step = if at_end {
                codec.decode_eof(&mut buffer)
            } else {
                codec.decode(&mut buffer)
            };
            let frame = match step {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    return outcome;
                }
            };
            let message = match TestMessage::validate(frame) {
                Ok(message) => message,
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    return outcome;
                }
            };
            let owned = Owned::try_from(&message).expect("a validated message deserializes");
            let mut again = BytesMut::new();
            owned
                .encode(&mut codec, FrameMeta::default(), &mut again)
                .expect("a read message re-encodes");
            let frame = codec
                .decode(&mut again)
                .expect("re-encoded frame decodes")
                .expect("whole frame");
            let reread = TestMessage::validate(frame).expect("re-encoded frame validates");
            assert_eq!(
                Owned::try_from(&reread).expect("re-read"),
                owned,
                "re-encoding changed the message"
            );
            outcome.messages.push(owned);
        }
        if at_end {
            break;
        }
    }
    outcome
}
