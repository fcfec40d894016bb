//! A player's session entity: the one its client's requests reach (keyed by the player id the
//! ticket names). It joins through the matchmaker, keeps its seat (checkpointed), binds its
//! session to its room with the seat so the gateway sends inputs straight there, forwards
//! resumes, passes a spectator's `Watch` to the room it names (or picks one), and leaves its
//! queue or its room when its session closes for good.

use std::sync::Arc;

use dashmap::DashMap;
use garrison_protocol::control::RefusalCode;
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, SessionId, Sessions,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    matchmaker::{Matchmaker, MatchmakerMsg},
    proto::MatchEnd,
    room::{Room, RoomMsg},
    spectators::Spectators,
};

/// A player session's messages: what its client asked for, and what the server decided.
pub enum PlayerMsg {
    /// The client asks for a match.
    Join,
    /// The matchmaker seated this player.
    Placed {
        /// The room.
        room: u64,
        /// The player's slot in it.
        slot: u8,
    },
    /// The client reconnected and needs the frames from `from` on.
    Resume {
        /// The first frame it has not simulated.
        from: u32,
    },
    /// The client asks to watch room `room` without a seat (0: any room playing).
    Watch {
        /// The room, or 0.
        room: u64,
    },
    /// The player's match is over, with this result.
    MatchEnded(MatchEnd),
    /// The player's session closed for good (it did not come back within the grace window).
    Leave,
}

impl EntityMessage for PlayerMsg {
    fn event_type(&self) -> &'static str {
        match self {
            PlayerMsg::Join => "join",
            PlayerMsg::Placed { .. } => "placed",
            PlayerMsg::Resume { .. } => "resume",
            PlayerMsg::Watch { .. } => "watch",
            PlayerMsg::MatchEnded(_) => "match_ended",
            PlayerMsg::Leave => "leave",
        }
    }
}

/// Where a player sits: the value its session's binding to the room carries, which the gateway's
/// router reads to stamp each input with the player's slot.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The room.
    pub room: u64,
    /// The slot.
    pub slot: u8,
}

/// A player session's state: its seat, once the matchmaker placed it (checkpointed, so a
/// restarted session still knows its room), and the result of its last match, for a client that
/// was away when it ended.
#[derive(Archive, Serialize, Deserialize, Default, Debug)]
pub struct PlayerState {
    seat: Option<Seat>,
    last_result: Option<MatchEnd>,
}

impl garrison_protocol::Snapshot for PlayerState {
    const SCHEMA: &'static str = "battle.player";
    const VERSION: u16 = 1;
}

/// The player kind: a client can only ever speak for its own slot.
pub struct Player {
    /// The open sessions.
    pub sessions: Arc<Sessions>,
    /// The matchmaker it joins through.
    pub matchmakers: Entities<Matchmaker>,
    /// The rooms it plays in (or watches).
    pub rooms: Entities<Room>,
    /// The rooms playing now, which a spectator may watch.
    pub playing: Arc<DashMap<u64, ()>>,
    /// Who watches which room.
    pub spectators: Arc<Spectators>,
}

impl Player {
    /// Binds `player`'s session to its room, with its seat (a player whose session already
    /// closed has nothing to bind).
    fn seated(&self, player: u64, seat: Seat) {
        if let Some(session) = self.sessions.get(SessionId(player)) {
            session.bind_with(&self.rooms, seat.room, seat);
        }
    }

    /// Withdraws `player`'s binding to its room.
    fn unseated(&self, player: u64) {
        if let Some(session) = self.sessions.get(SessionId(player)) {
            session.unbind::<Room>();
        }
    }

    /// The most recently started room playing that takes one more spectator.
    fn any_room(&self) -> Option<u64> {
        self.playing
            .iter()
            .map(|room| *room.key())
            .filter(|room| self.spectators.has_room_for(*room))
            .max()
    }

    /// Tells the client its request was refused as busy, so it asks again.
    fn busy(&self, player: u64, reason: &str) {
        if let Some(session) = self.sessions.get(SessionId(player)) {
            let _ = session.refuse(0, RefusalCode::Busy, reason);
        }
    }
}

impl Entity for Player {
    const KIND: &'static str = "player";
    type Key = u64;
    type State = PlayerState;
    type Message = PlayerMsg;

    async fn activate(
        &self,
        player: &u64,
        recovered: Activation<PlayerState>,
    ) -> Result<PlayerState, HandlerError> {
        let state = recovered.unwrap_or_default();
        if let Some(seat) = state.seat {
            // Restarted: the session's binding follows the checkpointed seat.
            self.seated(*player, seat);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: PlayerMsg,
        state: &mut PlayerState,
    ) -> Result<(), HandlerError> {
        let player = *context.key();
        match (message, state.seat) {
            (PlayerMsg::Join, None) => {
                let join = MatchmakerMsg::Join(SessionId(player));
                if self.matchmakers.send(&0, join).is_err() {
                    self.busy(player, "the matchmaker is busy; join again");
                }
            }
            // Already seated: the match goes on (a reconnecting client resumes instead).
            (PlayerMsg::Join, Some(_)) => {}
            (PlayerMsg::Placed { room, slot }, _) => {
                if !self.sessions.contains(SessionId(player)) {
                    // Placed after its session closed for good: give the seat back at once.
                    let _ = self.rooms.send(&room, RoomMsg::Left { slot });
                    context.stop();
                    return Ok(());
                }
                // A seated player watches no other room.
                self.spectators.leave(SessionId(player));
                let seat = Seat { room, slot };
                state.seat = Some(seat);
                state.last_result = None;
                context.checkpoint();
                self.seated(player, seat);
            }
            (PlayerMsg::MatchEnded(result), Some(seat)) if seat.room == result.room => {
                self.unseated(player);
                state.seat = None;
                state.last_result = Some(result);
                context.checkpoint();
            }
            // A result for a match it no longer plays in.
            (PlayerMsg::MatchEnded(_), _) => {}
            (PlayerMsg::Leave, seat) => {
                match seat {
                    Some(seat) => {
                        let _ = self
                            .rooms
                            .send(&seat.room, RoomMsg::Left { slot: seat.slot });
                    }
                    None => {
                        let leave = MatchmakerMsg::Leave(SessionId(player));
                        let _ = self.matchmakers.send(&0, leave);
                    }
                }
                // Nothing of the player stays behind.
                context.stop();
            }
            (PlayerMsg::Resume { from }, Some(seat)) => {
                let resume = RoomMsg::Resume {
                    slot: seat.slot,
                    from,
                };
                if self
                    .rooms
                    .send_for(SessionId(player), &seat.room, resume)
                    .is_err()
                {
                    self.busy(player, "the room is busy; resume again");
                }
            }
            (PlayerMsg::Watch { .. }, Some(seat)) => {
                let _ = context.refuse(
                    RefusalCode::Rejected,
                    format!(
                        "seated in room {}: a player watches rooms between its matches",
                        seat.room
                    ),
                );
            }
            (PlayerMsg::Watch { room }, None) => {
                let room = match room {
                    0 => self.any_room(),
                    room if self.playing.contains_key(&room) => Some(room),
                    _ => None,
                };
                let Some(room) = room else {
                    let _ = context.refuse(
                        RefusalCode::Rejected,
                        "no such room is playing, or none takes one more spectator; watch again \
                         later",
                    );
                    return Ok(());
                };
                if context
                    .forward(
                        &self.rooms,
                        &room,
                        RoomMsg::Watch {
                            session: SessionId(player),
                        },
                    )
                    .is_err()
                {
                    let _ = context.refuse(RefusalCode::Busy, "the room is busy; watch again");
                }
            }
            // Back after its match ended: tell it how it ended, so it joins again.
            (PlayerMsg::Resume { .. }, None) => {
                if let Some(result) = &state.last_result {
                    let _ = self.sessions.send_message(SessionId(player), result);
                }
            }
        }
        Ok(())
    }
}
