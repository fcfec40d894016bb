//! The matchmaker: one entity queueing players until a room of `room_size` fills, then seating
//! them and starting the room. Departed players leave the queue. In a fleet it is one sharded
//! entity; each waiting player is kept with the node its session is on, and the room it starts
//! seats them there.

use std::sync::{Arc, atomic::Ordering};

use garrison_runtime::{Activation, Entity, EntityContext, EntityMessage, HandlerError, SessionId};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    reach::{Home, Reaching},
    room::RoomMsg,
    server::ServerStats,
};

/// The matchmaker's messages.
pub enum MatchmakerMsg {
    /// A session asks for a room.
    Join {
        /// The player's session.
        session: SessionId,
        /// The node its session is on (empty on one node).
        node: String,
    },
    /// A waiting session is gone for good.
    Leave(SessionId),
}

impl EntityMessage for MatchmakerMsg {
    fn event_type(&self) -> &'static str {
        match self {
            MatchmakerMsg::Join { .. } => "join",
            MatchmakerMsg::Leave(_) => "leave",
        }
    }
}

/// Players waiting for a room, with the node each one's session is on, and the last room id
/// handed out (kept with the queue, so a matchmaker restarted, or moved to another node of a
/// fleet, never hands out a room id twice).
#[derive(Archive, Serialize, Deserialize, Default, Debug)]
pub struct Waiting {
    sessions: Vec<u64>,
    nodes: Vec<String>,
    last_room: u64,
}

impl garrison_protocol::Snapshot for Waiting {
    const SCHEMA: &'static str = "battle.matchmaker";
    const VERSION: u16 = 2;
}

/// The matchmaker kind.
pub struct Matchmaker {
    /// Players per room.
    pub room_size: usize,
    /// How it seats players and starts rooms.
    pub reach: Reaching,
    /// Where it counts the queue.
    pub stats: Arc<ServerStats>,
}

impl Entity for Matchmaker {
    const KIND: &'static str = "matchmaker";
    type Key = u8;
    type State = Waiting;
    type Message = MatchmakerMsg;

    async fn activate(
        &self,
        _: &u8,
        recovered: Activation<Waiting>,
    ) -> Result<Waiting, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: MatchmakerMsg,
        waiting: &mut Waiting,
    ) -> Result<(), HandlerError> {
        match message {
            MatchmakerMsg::Join { session, node } => {
                match waiting
                    .sessions
                    .iter()
                    .position(|&queued| queued == session.0)
                {
                    // Already waiting: it may have come back on another node.
                    Some(at) => waiting.nodes[at] = node,
                    None => {
                        waiting.sessions.push(session.0);
                        waiting.nodes.push(node);
                    }
                }
            }
            MatchmakerMsg::Leave(session) => {
                if let Some(at) = waiting
                    .sessions
                    .iter()
                    .position(|&queued| queued == session.0)
                {
                    waiting.sessions.remove(at);
                    waiting.nodes.remove(at);
                }
            }
        }
        context.checkpoint();
        self.stats
            .waiting
            .store(waiting.sessions.len() as u64, Ordering::Relaxed);
        if waiting.sessions.len() < self.room_size {
            return Ok(());
        }
        // A room id whose node is known: in a fleet, a node that just died still owns its
        // shards until its lease expires, and a room started there would start nowhere.
        let Some(room) = (1..=64)
            .map(|next| waiting.last_room + next)
            .find(|room| self.reach.home(*room) != Home::Unknown)
        else {
            // Every id tried waits for the fleet to place it: the players wait for the next
            // join to try again.
            return Ok(());
        };
        waiting.last_room = room;
        let players = std::mem::take(&mut waiting.sessions);
        let nodes = std::mem::take(&mut waiting.nodes);
        self.stats.waiting.store(0, Ordering::Relaxed);
        if !self.reach.rooms_seat_players() {
            for (slot, player) in players.iter().enumerate() {
                // The player keeps its seat (checkpointed); the room binds the session to it
                // before it tells the client the match started, so no input can come before
                // the binding.
                self.reach
                    .place("", *player, room, slot as u8)
                    .map_err(|refused| format!("player {player} refused its seat: {refused}"))?;
            }
        }
        let start = RoomMsg::Start {
            players: players.clone(),
            nodes: nodes.clone(),
            seed: room.wrapping_mul(0x9e37_79b9),
        };
        if let Err(refused) = self.reach.room(room, start) {
            // Not started: the players wait for the next try, none is lost to a crash.
            tracing::warn!(room, %refused, "a room refused its start: its players wait again");
            waiting.sessions = players;
            waiting.nodes = nodes;
            self.stats
                .waiting
                .store(waiting.sessions.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}
