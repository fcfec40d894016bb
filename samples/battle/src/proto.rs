//! The battle protocol: what bots (clients) and the server say to each other.

use garrison_protocol::messages;
use rkyv::{Archive, Deserialize, Serialize};

use crate::sim::Change;

/// Asks the matchmaker for a room.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// Unused; reserved for a game mode.
    pub mode: u8,
}

/// A player's buttons for one frame (stamped `frame`, usually the current frame plus the input
/// delay).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerInput {
    /// The frame the input is for.
    pub frame: u32,
    /// The buttons (see `sim::input`).
    pub buttons: u8,
}

messages! {
    /// What a client sends.
    pub enum ClientMessage {
        0x0100 => Join(Join),
        0x0101 => Input(PlayerInput),
    }
}

/// A match is starting: the client's slot and everything it needs to simulate locally.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchStart {
    /// The room.
    pub room: u64,
    /// This player's unit slot.
    pub slot: u8,
    /// Players in the room.
    pub players: u8,
    /// The world's seed.
    pub seed: u64,
    /// The frame the room starts at.
    pub frame: u32,
    /// Frames to stamp inputs ahead.
    pub input_delay: u32,
}

/// One executed frame: its inputs, what changed, and sometimes a checksum.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
}

messages! {
    /// What the server sends.
    pub enum ServerMessage {
        0x0180 => MatchStart(MatchStart),
        0x0181 => FrameUpdate(FrameUpdate),
    }
}
