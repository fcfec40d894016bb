//! The battle protocol: what bots (clients) and the server say to each other.

use std::sync::OnceLock;

use garrison_protocol::{Schema, messages, schema::Document};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    lockstep::FrameRecord,
    sim::{Change, Unit},
};

/// What a client wants with each frame.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Updates {
    /// The frame's inputs only, compact ([`FrameInputs`]): for a client that simulates (and
    /// verifies the checksums it carries). About a sixth of [`Updates::Full`]'s bytes.
    #[default]
    Inputs,
    /// The inputs and the fields that changed ([`FrameUpdate`]): for a client that draws the
    /// world without simulating it (a spectator, a browser), or checks every frame's delta.
    Full,
}

/// Asks the matchmaker for a room.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// Unused; reserved for a game mode.
    pub mode: u8,
    /// What this connection wants with each frame.
    pub updates: Updates,
}

/// A player's buttons for one frame (stamped `frame`, usually the current frame plus the input
/// delay).
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerInput {
    /// The frame the input is for.
    pub frame: u32,
    /// The buttons (see `sim::input`).
    pub buttons: u8,
}

/// Sent by a client that reconnected (same ticket) to a match in progress: the first frame it
/// has not simulated. The room answers with a [`Catchup`] from its input log, or a [`Resync`]
/// snapshot when the client is too far behind.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The next frame the client needs.
    pub frame: u32,
    /// What this connection wants with each frame (a new connection chooses again).
    pub updates: Updates,
}

/// Asks to watch a room without a seat (a spectator). The room answers (a reply to this frame)
/// with a [`MatchStart`] whose `slot` is [`SPECTATOR`], holding the world at the room's next
/// frame, then sends it every frame as a [`FrameUpdate`] (a spectator mirrors the world from
/// the deltas) and the [`MatchEnd`]. Refused (a `Refused` control frame) when the connection's
/// player is seated in a match (code 103), when the room is not playing or no room is (103),
/// or when the room has as many spectators as it takes (101, busy). A spectator watches one
/// room at a time; one that reconnects sends `Watch` again; one the matchmaker seats stops
/// watching. Its `Input`s are refused (code 100: it is bound to no room).
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// The room to watch; 0: the most recently started room playing that takes one more
    /// spectator (room ids start at 1).
    pub room: u64,
}

/// The `slot` of a [`MatchStart`] sent to a spectator: no unit is its own (a room holds at most
/// 255 players, slots 0 to 254).
pub const SPECTATOR: u8 = u8::MAX;

messages! {
    /// What a client sends.
    pub enum ClientMessage {
        0x0100 => Join(Join),
        0x0101 => Input(PlayerInput),
        0x0102 => Resume(Resume),
        0x0103 => Watch(Watch),
    }
}

/// A match is starting: the client's slot, everything it needs to simulate locally, and the
/// world at `frame` for a client that mirrors it from [`FrameUpdate`] deltas instead. Also the
/// answer to a [`Watch`]: then `slot` is [`SPECTATOR`] and `frame` the room's next frame.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct MatchStart {
    /// The room.
    pub room: u64,
    /// This player's unit slot ([`SPECTATOR`] for a spectator).
    pub slot: u8,
    /// Players in the room.
    pub players: u8,
    /// The world's seed (0 for a spectator: the world it starts from is `units` and `rng`).
    pub seed: u64,
    /// The frame the room starts at (a spectator's first [`FrameUpdate`] is this frame).
    pub frame: u32,
    /// Frames to stamp inputs ahead.
    pub input_delay: u32,
    /// The frame period in microseconds (16,667 at 60 Hz).
    pub tick_micros: u32,
    /// The units at `frame`, one per slot (at frame 0, `World::new(seed, players)`'s).
    pub units: Vec<Unit>,
    /// The world's generator state at `frame` (part of every checksum).
    pub rng: u64,
}

/// One executed frame: its inputs, what changed, and sometimes a checksum (what a client that
/// asked for [`Updates::Full`] gets).
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct FrameUpdate {
    /// The frame.
    pub frame: u32,
    /// The input of each slot.
    pub inputs: Vec<u8>,
    /// Slots whose input was missing or late (bit per slot).
    pub replaced: u64,
    /// The fields that changed.
    pub delta: Vec<Change>,
    /// The state's checksum after the frame, every 30 frames.
    pub checksum: Option<u64>,
    /// With the checksum: the world's generator state after the frame, so a client that mirrors
    /// the units from deltas (without simulating) can compute the checksum too
    /// (`World::checksum`: FNV-1a over frame + 1, this, and every unit's fields).
    pub rng: Option<u64>,
}

/// One executed frame, compact (what a client that asked for [`Updates::Inputs`] gets): the frame
/// is the frame header's `seq`; `packed` holds the inputs XORed against the previous frame's,
/// only the slots that changed, the replaced mask when a slot was replaced, and the checksum
/// when the frame carries one (the layout is in [`crate::packed`]). 24 bytes on the wire for a
/// frame where at most two players changed buttons and none was late: 1.4 KB/s at 60 Hz.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct FrameInputs {
    /// The record ([`crate::packed::unpack`] reads it).
    pub packed: Vec<u8>,
}

/// The frames a resuming client missed, from the room's input log, oldest first: enough to
/// simulate them locally (no deltas, no checksums; the next live checksum verifies the result).
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Catchup {
    /// The missed frames with the inputs they ran.
    pub frames: Vec<FrameRecord>,
}

/// The room's whole world at `frame`, for a resuming client too far behind for a [`Catchup`].
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    /// The frame the snapshot is at (the next one to execute).
    pub frame: u32,
    /// The world, a versioned snapshot (`garrison_protocol::snapshot`).
    pub snapshot: Vec<u8>,
    /// The inputs of the frame before `frame`, one per slot: what the next [`FrameInputs`] is
    /// XORed against.
    pub inputs: Vec<u8>,
}

/// The match is over: its result, after the last frame. The room is released; a client that
/// wants to play again sends [`Join`].
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct MatchEnd {
    /// The room.
    pub room: u64,
    /// Frames played (the next frame would have been this one).
    pub frame: u32,
    /// Kills per slot.
    pub kills: Vec<u32>,
    /// The slot with the most kills, if one has strictly more than every other.
    pub winner: Option<u8>,
    /// The world's checksum after the last frame, for a client to verify its own.
    pub checksum: u64,
}

messages! {
    /// What the server sends.
    pub enum ServerMessage {
        0x0180 => MatchStart(MatchStart),
        0x0181 => FrameUpdate(FrameUpdate),
        0x0182 => Catchup(Catchup),
        0x0183 => Resync(Resync),
        0x0184 => MatchEnd(MatchEnd),
        0x0185 => FrameInputs(FrameInputs),
    }
}

/// The battle protocol's wire schema, the client's protocol first: what `garrison-battle schema`
/// prints and `samples/battle/schema.json` holds (a test keeps the two equal).
pub fn schema() -> Document {
    Document::new("battle")
        .protocol::<ClientMessage>()
        .protocol::<ServerMessage>()
}

/// The layout hash of [`schema`]: what a client sends in its `Hello` and the server's gateway
/// checks.
pub fn layout_hash() -> u64 {
    static HASH: OnceLock<u64> = OnceLock::new();
    *HASH.get_or_init(|| schema().layout_hash())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checked_in_schema_is_the_rust_types_layout() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        let current = super::schema().to_json();
        assert!(
            checked_in == current,
            "{path} is not the layout of the Rust types: a message changed. Regenerate it with \
             `cargo run -p garrison-battle -- schema > samples/battle/schema.json` (and give a \
             changed message a new kind: released clients decode the old layout)"
        );
    }
}
