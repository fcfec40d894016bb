//! A player's session entity: the one its client's requests reach (keyed by the player id the
//! ticket names). It joins through the matchmaker, keeps its seat (checkpointed), binds its
//! session to its room with the seat so the gateway sends inputs straight there, forwards
//! resumes, passes a spectator's `Watch` to the room it names (or picks one), and leaves its
//! queue or its room when its session closes for good.
//!
//! In a fleet it lives where its player's session is (the node the player connected to), and
//! its state is in the fleet's store. A player whose room runs on another node is redirected
//! there once its seat is stored ([`PlayerMsg::Moved`]), and the entity here lets go: the one on
//! the room's node picks the seat up from the store when the client arrives (its `Join` asks
//! the room for the match so far, its `Resume` for the frames it missed).

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use garrison_protocol::control::RefusalCode;
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, SessionId, Sessions,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    matchmaker::MatchmakerMsg,
    proto::MatchEnd,
    reach::{Home, Reaching},
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
    /// The player's room runs on another node (it was placed there, or the fleet moved it):
    /// its session is redirected there, and the entity here lets go.
    Moved,
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
            PlayerMsg::Moved => "moved",
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

/// How soon a player whose room is moving to a node not known yet asks again where it is.
const MOVED_RETRY: Duration = Duration::from_millis(20);

/// The player kind: a client can only ever speak for its own slot.
pub struct Player {
    /// The open sessions.
    pub sessions: Arc<Sessions>,
    /// How it reaches the matchmaker and its room (on this node, or across a fleet).
    pub reach: Reaching,
    /// The players seated in a room here, with their room: a fleet that moves a room moves
    /// them with it.
    pub seated: Arc<DashMap<u64, u64>>,
    /// The player kind itself (a moved player lets go of its entity here).
    pub players: Entities<Player>,
    /// The rooms on this node, which sessions bind to (and spectators watch).
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
        self.seated.insert(player, seat.room);
        if let Some(session) = self.sessions.get(SessionId(player)) {
            session.bind_with(&self.rooms, seat.room, seat);
        }
    }

    /// Withdraws `player`'s binding to its room.
    fn unseated(&self, player: u64) {
        self.seated.remove(&player);
        if let Some(session) = self.sessions.get(SessionId(player)) {
            session.unbind::<Room>();
        }
    }

    /// The player's room runs elsewhere: its session goes there (a redirect), and this node
    /// lets go of the player without writing anything more (its seat is in the store). Its
    /// room is somewhere nobody knows yet: it is told to ask again.
    fn move_to(&self, player: u64, seat: Seat, home: Home) {
        match home {
            Home::Here => self.seated(player, seat),
            Home::There { node, address } => {
                self.seated.remove(&player);
                if let Err(refused) = self.sessions.redirect(SessionId(player), &address, &node) {
                    tracing::debug!(player, %refused, "a moved player's session was not redirected");
                }
                self.players
                    .release(|key| *key == player, &format!("its room runs on {node}"));
            }
            Home::Unknown => self.busy(player, "the room is moving; ask again"),
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
                let join = MatchmakerMsg::Join {
                    session: SessionId(player),
                    node: self.reach.node().to_owned(),
                };
                if self.reach.matchmaker(join).is_err() {
                    self.busy(player, "the matchmaker is busy; join again");
                }
            }
            // Seated and on its room's node with no match in hand (it came here after a
            // redirect): the room sends the match from its start. On one node the match goes
            // on (a reconnecting client resumes instead).
            (PlayerMsg::Join, Some(seat)) if self.reach.rooms_seat_players() => {
                match self.reach.home(seat.room) {
                    Home::Here => {
                        self.seated(player, seat);
                        if self
                            .reach
                            .room(seat.room, RoomMsg::Arrived { slot: seat.slot })
                            .is_err()
                        {
                            self.busy(player, "the room is busy; join again");
                        }
                    }
                    home => self.move_to(player, seat, home),
                }
            }
            (PlayerMsg::Join, Some(_)) => {}
            (PlayerMsg::Placed { room, slot }, _) => {
                if !self.sessions.contains(SessionId(player)) {
                    // Placed after its session closed for good: give the seat back at once.
                    let _ = self.reach.room(room, RoomMsg::Left { slot });
                    context.stop();
                    return Ok(());
                }
                // A seated player watches no other room.
                self.spectators.leave(SessionId(player));
                let seat = Seat { room, slot };
                state.seat = Some(seat);
                state.last_result = None;
                context.checkpoint();
                match self.reach.home(room) {
                    Home::Here => self.seated(player, seat),
                    // Its room runs elsewhere: redirected once the seat is stored, by a message
                    // to itself that queues behind this one's write.
                    _ => {
                        self.seated.insert(player, room);
                        let _ = self.players.send(&player, PlayerMsg::Moved);
                    }
                }
            }
            (PlayerMsg::Moved, Some(seat)) => match self.reach.home(seat.room) {
                // Its room's new node is not known or not reached yet (the members' watch or
                // the peer connection lags the table by milliseconds): ask again shortly, one
                // retry armed at a time, until the room has a home or the player goes.
                Home::Unknown => {
                    if context.timers() == 0 {
                        let _ = context.send_after(MOVED_RETRY, PlayerMsg::Moved);
                    }
                }
                home => self.move_to(player, seat, home),
            },
            (PlayerMsg::Moved, None) => {}
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
                            .reach
                            .room(seat.room, RoomMsg::Left { slot: seat.slot });
                    }
                    None => {
                        let leave = MatchmakerMsg::Leave(SessionId(player));
                        let _ = self.reach.matchmaker(leave);
                    }
                }
                self.seated.remove(&player);
                // Nothing of the player stays behind.
                context.stop();
            }
            (PlayerMsg::Resume { from }, Some(seat)) => match self.reach.home(seat.room) {
                Home::Here => {
                    // A client back on another node of the fleet binds here.
                    self.seated(player, seat);
                    let resume = RoomMsg::Resume {
                        slot: seat.slot,
                        from,
                    };
                    if self
                        .reach
                        .room_for(SessionId(player), seat.room, resume)
                        .is_err()
                    {
                        self.busy(player, "the room is busy; resume again");
                    }
                }
                home => self.move_to(player, seat, home),
            },
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
