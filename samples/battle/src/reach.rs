//! How the actor modules reach each other: on one node through the kinds' registries
//! ([`Local`]), in a fleet through the nodes' routing (`fleet::Routes`, feature `fleet`), where a
//! room may run on another node than its players' sessions.
//!
//! Only what crosses nodes goes through here: a player joining and leaving the matchmaker, the
//! matchmaker starting a room, a room seating its players, and a player's session reaching its
//! room. Pushes to a session stay on the session's node (a room's players are redirected to the
//! room's node, see `player`).

use std::sync::Arc;

use garrison_runtime::{Entities, SessionId};

use crate::{
    matchmaker::{Matchmaker, MatchmakerMsg},
    player::{Player, PlayerMsg},
    room::{Room, RoomMsg},
};

/// Where a room runs, as a player's session on this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// On this node.
    Here,
    /// On another node: its id and its gateway's address.
    There {
        /// The node's id.
        node: String,
        /// Its gateway, where the player reconnects.
        address: String,
    },
    /// Nowhere known right now (its node is gone and the fleet has not placed it again).
    Unknown,
}

/// How the modules reach the other kinds (see the module documentation).
pub trait Reach: Send + Sync + 'static {
    /// This node's id in its fleet (empty alone).
    fn node(&self) -> &str;

    /// Sends room `room` a message, wherever it runs.
    ///
    /// # Errors
    /// Why it was not accepted.
    fn room(&self, room: u64, message: RoomMsg) -> Result<(), String>;

    /// As [`Reach::room`], on behalf of `session` (on one node its span carries the session).
    ///
    /// # Errors
    /// Why it was not accepted.
    fn room_for(&self, session: SessionId, room: u64, message: RoomMsg) -> Result<(), String> {
        let _ = session;
        self.room(room, message)
    }

    /// Sends the matchmaker a message.
    ///
    /// # Errors
    /// Why it was not accepted.
    fn matchmaker(&self, message: MatchmakerMsg) -> Result<(), String>;

    /// Seats `player`, whose session is on node `node`, in `room` at `slot`.
    ///
    /// # Errors
    /// Why it was not accepted.
    fn place(&self, node: &str, player: u64, room: u64, slot: u8) -> Result<(), String>;

    /// Where room `room` runs.
    fn home(&self, room: u64) -> Home;

    /// Whether the room's players are seated by the room once it started (a fleet: the room
    /// tells each player's node), rather than by the matchmaker before it starts the room.
    fn rooms_seat_players(&self) -> bool {
        false
    }
}

/// One node: every kind is in this process.
#[derive(Clone)]
pub struct Local {
    /// The rooms.
    pub rooms: Entities<Room>,
    /// The matchmaker.
    pub matchmakers: Entities<Matchmaker>,
    /// The players.
    pub players: Entities<Player>,
}

impl Reach for Local {
    fn node(&self) -> &str {
        ""
    }

    fn room(&self, room: u64, message: RoomMsg) -> Result<(), String> {
        self.rooms
            .send(&room, message)
            .map_err(|refused| refused.reason.to_string())
    }

    fn room_for(&self, session: SessionId, room: u64, message: RoomMsg) -> Result<(), String> {
        self.rooms
            .send_for(session, &room, message)
            .map_err(|refused| refused.reason.to_string())
    }

    fn matchmaker(&self, message: MatchmakerMsg) -> Result<(), String> {
        self.matchmakers
            .send(&0, message)
            .map_err(|refused| refused.reason.to_string())
    }

    fn place(&self, _: &str, player: u64, room: u64, slot: u8) -> Result<(), String> {
        self.players
            .send(&player, PlayerMsg::Placed { room, slot })
            .map_err(|refused| refused.reason.to_string())
    }

    fn home(&self, _: u64) -> Home {
        Home::Here
    }
}

/// A shared handle to how the modules reach each other.
pub type Reaching = Arc<dyn Reach>;
