//! The matchmaker: one entity queueing players until a room of `room_size` fills, then seating
//! them and starting the room. Departed players leave the queue.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, SessionId,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    player::{Player, PlayerMsg},
    room::{Room, RoomMsg},
    server::ServerStats,
};

/// The matchmaker's messages.
pub enum MatchmakerMsg {
    /// A session asks for a room.
    Join(SessionId),
    /// A waiting session is gone for good.
    Leave(SessionId),
}

impl EntityMessage for MatchmakerMsg {
    fn event_type(&self) -> &'static str {
        match self {
            MatchmakerMsg::Join(_) => "join",
            MatchmakerMsg::Leave(_) => "leave",
        }
    }
}

/// Players waiting for a room.
#[derive(Archive, Serialize, Deserialize, Default, Debug)]
pub struct Waiting {
    sessions: Vec<u64>,
}

impl garrison_protocol::Snapshot for Waiting {
    const SCHEMA: &'static str = "battle.matchmaker";
    const VERSION: u16 = 1;
}

/// The matchmaker kind.
pub struct Matchmaker {
    /// Players per room.
    pub room_size: usize,
    /// The players it seats.
    pub players: Entities<Player>,
    /// The rooms it starts.
    pub rooms: Entities<Room>,
    /// The last room id handed out.
    pub next_room: Arc<AtomicU64>,
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
            MatchmakerMsg::Join(session) if !waiting.sessions.contains(&session.0) => {
                waiting.sessions.push(session.0);
            }
            MatchmakerMsg::Join(_) => {}
            MatchmakerMsg::Leave(session) => waiting.sessions.retain(|&queued| queued != session.0),
        }
        context.checkpoint();
        self.stats
            .waiting
            .store(waiting.sessions.len() as u64, Ordering::Relaxed);
        if waiting.sessions.len() < self.room_size {
            return Ok(());
        }
        let players = std::mem::take(&mut waiting.sessions);
        self.stats.waiting.store(0, Ordering::Relaxed);
        let room = self.next_room.fetch_add(1, Ordering::Relaxed) + 1;
        for (slot, player) in players.iter().enumerate() {
            // The player keeps its seat (checkpointed); the room binds the session to it before
            // it tells the client the match started, so no input can come before the binding.
            let placed = PlayerMsg::Placed {
                room,
                slot: slot as u8,
            };
            self.players.send(player, placed).map_err(|refused| {
                format!("player {player} refused its seat: {}", refused.reason)
            })?;
        }
        let start = RoomMsg::Start {
            players,
            seed: room.wrapping_mul(0x9e37_79b9),
        };
        self.rooms
            .send(&room, start)
            .map_err(|refused| format!("room {room} refused its start: {}", refused.reason))?;
        Ok(())
    }
}
