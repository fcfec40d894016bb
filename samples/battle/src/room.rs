//! A battle room: [`Lockstep`] at 60 Hz on absolute deadlines, each frame's update encoded once
//! for all its players and its spectators; catch-up for a reconnecting player; the match's end;
//! release when its players are gone.
//!
//! Durable form: a snapshot every [`SNAPSHOT_EVERY`] frames (and at the start and when a player
//! leaves), and between snapshots the entity's log: one entry per accepted input and one per
//! executed frame ([`RoomLog`]), so the durable cost of a frame is that frame's inputs, not the
//! world. A crash, or a restart of the process on the same store, replays the log through the
//! same engine calls: the room is back at the frame it stopped on, as if it had never stopped.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use dashmap::DashMap;
use garrison_protocol::{FrameMeta, Snapshot, control::RefusalCode};
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, SessionId, Sessions,
    Timer,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    lockstep::{Broadcast, InputOutcome, Lockstep, LockstepConfig, Resumption},
    packed,
    player::{Player, PlayerMsg, Seat},
    proto::{Catchup, FrameInputs, FrameUpdate, MatchEnd, MatchStart, Resync, SPECTATOR},
    reach::Reaching,
    server::ServerStats,
    spectators::Spectators,
};

/// A room's messages.
pub enum RoomMsg {
    /// Start the match with these players (slot order).
    Start {
        /// Player ids, by slot.
        players: Vec<u64>,
        /// The node each player's session is on, by slot (a fleet's; empty on one node).
        nodes: Vec<String>,
        /// The world's seed.
        seed: u64,
    },
    /// The player in this slot came to the room's node with no match in hand (a fleet
    /// redirected it here after it was seated): it is sent the match from its start, then the
    /// frames played since.
    Arrived {
        /// The player's slot.
        slot: u8,
    },
    /// A player's input.
    Input {
        /// The player's slot.
        slot: u8,
        /// The frame it is stamped for.
        frame: u32,
        /// The buttons.
        buttons: u8,
    },
    /// A reconnected player needs the frames from `from` on.
    Resume {
        /// The player's slot.
        slot: u8,
        /// The first frame it has not simulated.
        from: u32,
    },
    /// Session `session` watches the room (forwarded with its frame's origin, so the room
    /// answers it).
    Watch {
        /// The spectator.
        session: SessionId,
    },
    /// The player in this slot is gone for good.
    Left {
        /// The player's slot.
        slot: u8,
    },
    /// Time to run the next frame.
    Tick,
    /// Crash this room now (fault injection for demos and tests).
    Crash,
}

impl EntityMessage for RoomMsg {
    fn event_type(&self) -> &'static str {
        match self {
            RoomMsg::Start { .. } => "start",
            RoomMsg::Arrived { .. } => "arrived",
            RoomMsg::Input { .. } => "input",
            RoomMsg::Resume { .. } => "resume",
            RoomMsg::Watch { .. } => "watch",
            RoomMsg::Left { .. } => "left",
            RoomMsg::Tick => "tick",
            RoomMsg::Crash => "crash",
        }
    }
}

/// Frames between two snapshots of a room by default (one second at 60 Hz); in between, its
/// log.
pub const SNAPSHOT_EVERY: u32 = 60;

/// One entry of a room's log: what changed its engine, replayed in order after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomLog {
    /// An accepted input.
    Input {
        /// The player's slot.
        slot: u8,
        /// The frame it is stamped for.
        frame: u32,
        /// The buttons.
        buttons: u8,
    },
    /// The next frame was executed.
    Frame,
}

impl RoomLog {
    /// The entry's bytes: `0, slot, frame (u32 LE), buttons` or `1`.
    pub fn encode(self) -> bytes::Bytes {
        match self {
            RoomLog::Input {
                slot,
                frame,
                buttons,
            } => {
                let frame = frame.to_le_bytes();
                let bytes = [0, slot, frame[0], frame[1], frame[2], frame[3], buttons];
                bytes::Bytes::copy_from_slice(&bytes)
            }
            RoomLog::Frame => bytes::Bytes::from_static(&[1]),
        }
    }

    /// Reads an entry back.
    ///
    /// # Errors
    /// An entry of another shape (damaged, or from another version).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes {
            [0, slot, f0, f1, f2, f3, buttons] => Ok(RoomLog::Input {
                slot: *slot,
                frame: u32::from_le_bytes([*f0, *f1, *f2, *f3]),
                buttons: *buttons,
            }),
            [1] => Ok(RoomLog::Frame),
            other => Err(format!("not a room log entry ({} bytes)", other.len())),
        }
    }
}

/// A room's state: its players, its lockstep engine (`None` before the start and after the
/// end), and which players left for good.
#[derive(Archive, Serialize, Deserialize, Debug, Default)]
pub struct RoomState {
    players: Vec<u64>,
    /// The world's seed (a player arriving late is sent the match from its start).
    seed: u64,
    engine: Option<Lockstep>,
    /// A bit per slot whose player left.
    departed: u64,
    /// Whether this incarnation broadcast a frame yet. Not kept: the first compact frame after
    /// an activation is a key frame (every input as is), so no client depends on the previous
    /// incarnation's last frame.
    #[rkyv(with = rkyv::with::Skip)]
    keyed: bool,
}

impl Snapshot for RoomState {
    const SCHEMA: &'static str = "battle.room";
    // 2: `seed`.
    const VERSION: u16 = 2;
}

/// How rooms play.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// The frame period (1/60 s).
    pub tick: Duration,
    /// Frames clients stamp their inputs ahead.
    pub input_delay: u32,
    /// Most missed frames a reconnecting client is sent from the input log.
    pub resend_limit: u32,
    /// Frames a match lasts.
    pub match_frames: u32,
    /// Frames between two snapshots (the log in between).
    pub snapshot_every: u32,
}

/// The room kind.
pub struct Room {
    /// How rooms play.
    pub settings: RoomSettings,
    /// The open sessions, which frames are pushed to.
    pub sessions: Arc<Sessions>,
    /// The players, told when their match ends.
    pub players: Entities<Player>,
    /// The rooms playing now (started, not yet released), for fault injection.
    pub playing: Arc<DashMap<u64, ()>>,
    /// Rooms recovered from the store that have not executed a frame yet.
    pub first_frame: Arc<DashMap<u64, ()>>,
    /// The players whose connection asked for [`Updates::Full`](crate::proto::Updates) (the
    /// rest get the compact [`FrameInputs`]).
    pub full_updates: Arc<DashMap<u64, ()>>,
    /// Who watches each room (they get every [`FrameUpdate`]).
    pub spectators: Arc<Spectators>,
    /// The room kind itself: a starting room binds its players' sessions to it.
    pub rooms: Entities<Room>,
    /// How it seats its players in a fleet (their sessions may be on other nodes).
    pub reach: Reaching,
    /// Counters.
    pub stats: Arc<ServerStats>,
}

/// The slots of a room of `players` as bits.
fn every_slot(players: usize) -> u64 {
    u64::MAX >> (64 - players.clamp(1, 64))
}

fn slot_bit(slot: usize) -> u64 {
    u32::try_from(slot)
        .ok()
        .and_then(|slot| 1u64.checked_shl(slot))
        .unwrap_or(0)
}

impl Room {
    /// The frame clock: 60 Hz on an absolute schedule (a late frame is caught up, none is
    /// skipped), kept across a crash, gone with the room.
    fn clock(settings: &RoomSettings) -> Timer<RoomMsg> {
        Timer::every(settings.tick, || RoomMsg::Tick)
            .catching_up()
            .surviving_restart()
    }

    /// Releases room `room` for good: the entity ends once its mailbox is empty, and its clock
    /// with it (ticks already queued find no engine and do nothing). Its spectators are told
    /// how the match ended and watch nothing any more.
    fn release(&self, room: u64, state: &mut RoomState, context: &mut EntityContext<'_, Self>) {
        let spectators = self.spectators.release(room);
        if let Some(engine) = &state.engine
            && !spectators.is_empty()
        {
            self.sessions
                .broadcast(spectators, 0, &Room::result(room, engine));
        }
        state.engine = None;
        state.players.clear();
        self.playing.remove(&room);
        context.checkpoint();
        context.stop();
    }

    /// Sends a frame's broadcast to the room's players, each in the form its connection asked
    /// for: the compact inputs ([`FrameInputs`]) or the inputs with the delta ([`FrameUpdate`]),
    /// each encoded once for all who take it; the spectators get the [`FrameUpdate`].
    /// `previous` are the inputs of the frame before.
    fn broadcast(&self, room: u64, state: &mut RoomState, previous: &[u8], broadcast: Broadcast) {
        let frame = broadcast.record.frame;
        // More slots than the compact form's masks cover: everyone gets full updates.
        let huge = state.players.len() > packed::MAX_PLAYERS;
        let mut full = 0u64;
        if !huge && !self.full_updates.is_empty() {
            for (slot, player) in state.players.iter().enumerate() {
                if self.full_updates.contains_key(player) {
                    full |= slot_bit(slot);
                }
            }
        }
        let wants_full = move |slot: usize| huge || full & slot_bit(slot) != 0;
        let compact = if huge {
            0
        } else {
            state.players.len() - full.count_ones() as usize
        };
        if compact > 0 {
            let mut record = Vec::with_capacity(16);
            packed::pack(
                previous,
                &broadcast.record.inputs,
                broadcast.record.replaced,
                broadcast.checksum,
                !state.keyed,
                &mut record,
            );
            let to = Room::slots_where(state, move |slot| !wants_full(slot));
            self.sessions
                .broadcast(to, frame, &FrameInputs { packed: record });
        }
        state.keyed = true;
        let spectators = if self.spectators.is_empty() {
            Vec::new()
        } else {
            self.spectators.of(room)
        };
        if compact < state.players.len() || !spectators.is_empty() {
            let update = FrameUpdate {
                frame,
                inputs: broadcast.record.inputs,
                replaced: broadcast.record.replaced,
                delta: broadcast.delta,
                checksum: broadcast.checksum,
                rng: broadcast.rng,
            };
            let to = Room::slots_where(state, wants_full).chain(spectators);
            self.sessions.broadcast(to, frame, &update);
        }
    }

    /// The sessions of the players whose slot passes `keep`.
    fn slots_where<'a>(
        state: &'a RoomState,
        keep: impl Fn(usize) -> bool + 'a,
    ) -> impl Iterator<Item = SessionId> + 'a {
        state
            .players
            .iter()
            .enumerate()
            .filter(move |(slot, _)| keep(*slot))
            .map(|(_, player)| SessionId(*player))
    }

    /// The players still in the match.
    fn present(state: &RoomState) -> impl Iterator<Item = (usize, u64)> + '_ {
        state
            .players
            .iter()
            .copied()
            .enumerate()
            .filter(|(slot, _)| state.departed & slot_bit(*slot) == 0)
    }

    /// The match's result as it stands.
    fn result(room: u64, engine: &Lockstep) -> MatchEnd {
        let world = engine.world();
        let kills: Vec<u32> = world.units.iter().map(|unit| unit.kills).collect();
        let best = kills.iter().copied().max().unwrap_or(0);
        let winner = match kills.iter().filter(|&&score| score == best).count() {
            1 => kills
                .iter()
                .position(|&score| score == best)
                .map(|slot| slot as u8),
            _ => None,
        };
        MatchEnd {
            room,
            frame: world.frame,
            kills,
            winner,
            checksum: world.checksum(),
        }
    }

    /// Announces the result to every player still in the match (and its spectators), tells
    /// their player entities, and releases the room.
    fn finish(&self, room: u64, state: &mut RoomState, context: &mut EntityContext<'_, Self>) {
        let Some(engine) = &state.engine else {
            return;
        };
        let result = Room::result(room, engine);
        let present: Vec<u64> = Room::present(state).map(|(_, player)| player).collect();
        // The player entities hear it first: a client that reads the result joins again at
        // once, and its Join must find its player unseated (it queues behind MatchEnded).
        for player in &present {
            // A player entity too busy to hear it keeps a seat in a released room; its client
            // still has the result and joins again.
            let _ = self
                .players
                .send(player, PlayerMsg::MatchEnded(result.clone()));
        }
        self.sessions
            .broadcast(present.iter().copied().map(SessionId), 0, &result);
        self.stats.matches_ended.fetch_add(1, Ordering::Relaxed);
        self.release(room, state, context);
    }

    /// A seated player arrived with no match in hand: its session is bound to its seat, and it
    /// is sent the match's start (frame 0, the seed's world) and the frames played since, as a
    /// catch-up (or a snapshot when too far behind), before the next live frame.
    fn arrived(&self, room: u64, slot: u8, state: &RoomState) -> Result<(), HandlerError> {
        let (Some(engine), Some(player)) = (&state.engine, state.players.get(usize::from(slot)))
        else {
            return Ok(());
        };
        let session = SessionId(*player);
        if let Some(open) = self.sessions.get(session) {
            open.bind_with(&self.rooms, room, Seat { room, slot });
        }
        let config = engine.config();
        let world = crate::sim::World::new(state.seed, config.players);
        let start = MatchStart {
            room,
            slot,
            players: state.players.len() as u8,
            seed: state.seed,
            frame: 0,
            input_delay: config.input_delay,
            tick_micros: u32::try_from(self.settings.tick.as_micros()).unwrap_or(u32::MAX),
            units: world.units.clone(),
            rng: world.rng,
        };
        let _ = self.sessions.send_message(session, &start);
        let frame = catch_up(engine, 0, self.settings.resend_limit)?;
        self.stats.resumes.fetch_add(1, Ordering::Relaxed);
        let _ = self.sessions.push(session, frame);
        Ok(())
    }

    /// Answers a `Watch`: the session that sent it becomes a spectator and gets the world at the
    /// next frame, or is refused (the room is full of spectators, or not playing).
    fn watch(
        &self,
        room: u64,
        session: SessionId,
        state: &RoomState,
        context: &mut EntityContext<'_, Self>,
    ) {
        let Some(engine) = &state.engine else {
            let _ = context.refuse(
                RefusalCode::Rejected,
                format!("room {room} is not playing; watch another room"),
            );
            return;
        };
        if let Err(full) = self.spectators.add(room, session) {
            let _ = context.refuse(RefusalCode::Busy, full.to_string());
            return;
        }
        let world = engine.world();
        let start = MatchStart {
            room,
            slot: SPECTATOR,
            players: state.players.len() as u8,
            seed: 0,
            frame: world.frame,
            input_delay: engine.config().input_delay,
            tick_micros: u32::try_from(self.settings.tick.as_micros()).unwrap_or(u32::MAX),
            units: world.units.clone(),
            rng: world.rng,
        };
        // The answer to the Watch frame, queued before the next frame's broadcast (this very
        // handler is the room's turn); a connection gone meanwhile watches nothing.
        if context.reply(&start).is_err() {
            self.spectators.leave(session);
        }
    }
}

impl Entity for Room {
    const KIND: &'static str = "room";
    type Key = u64;
    type State = RoomState;
    type Message = RoomMsg;

    async fn activate(
        &self,
        room: &u64,
        recovered: Activation<RoomState>,
    ) -> Result<RoomState, HandlerError> {
        if matches!(&recovered, Activation::Recovered(state) if state.engine.is_some()) {
            self.stats.recovered.fetch_add(1, Ordering::Relaxed);
            self.first_frame.insert(*room, ());
        }
        // After a crash, or a restart of the process, the engine is back at the frame it
        // stopped on (its snapshot, then its log replayed through `replay`).
        if matches!(
            &recovered,
            Activation::Restarted(Some(state)) | Activation::Recovered(state)
                if state.engine.is_some()
        ) {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(recovered.unwrap_or_default())
    }

    fn replay(&self, _: &u64, state: &mut RoomState, entry: &[u8]) -> Result<(), HandlerError> {
        let engine = state
            .engine
            .as_mut()
            .ok_or("a room log entry for a room that is not playing")?;
        match RoomLog::decode(entry)? {
            RoomLog::Input {
                slot,
                frame,
                buttons,
            } => {
                engine.submit(usize::from(slot), frame, buttons);
            }
            RoomLog::Frame => {
                engine.advance()?;
            }
        }
        Ok(())
    }

    fn started(
        &self,
        context: &mut EntityContext<'_, Self>,
        state: &mut RoomState,
    ) -> Result<(), HandlerError> {
        // A released room whose end the store had not taken yet (a process killed meanwhile)
        // has nothing to play: it ends again.
        if state.engine.is_none() && !state.players.is_empty() {
            context.stop();
        }
        // A playing room back from the store (a restarted process) has no clock yet; one back
        // from a crash kept its own.
        if state.engine.is_some() && context.timers() == 0 {
            context.timer(Room::clock(&self.settings))?;
            self.playing.insert(*context.key(), ());
        }
        Ok(())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), HandlerError> {
        let room = *context.key();
        if state.players.is_empty() && !matches!(message, RoomMsg::Start { .. }) {
            // A message for a room that ended (a late input) activated it again: there is nothing
            // to play, so it ends at once.
            if matches!(message, RoomMsg::Watch { .. }) {
                let _ = context.refuse(
                    RefusalCode::Rejected,
                    format!("room {room} is not playing; watch another room"),
                );
            }
            context.stop();
            return Ok(());
        }
        match message {
            RoomMsg::Start {
                players,
                nodes,
                seed,
            } => {
                if state.engine.is_some() {
                    return Ok(());
                }
                let config = LockstepConfig {
                    players: players.len(),
                    input_delay: self.settings.input_delay,
                    ..LockstepConfig::default()
                };
                let engine = Lockstep::new(seed, config)?;
                let world = engine.world();
                let (units, rng) = (world.units.clone(), world.rng);
                state.engine = Some(engine);
                for (slot, player) in players.iter().enumerate() {
                    // Bound before the client hears the match start, so its first inputs,
                    // which take the gateway's fast path here, find the seat (the player
                    // entity binds the same seat when it handles its Placed, which may come
                    // later).
                    if let Some(session) = self.sessions.get(SessionId(*player)) {
                        let seat = Seat {
                            room,
                            slot: slot as u8,
                        };
                        session.bind_with(&self.rooms, room, seat);
                    }
                    let start = MatchStart {
                        room,
                        slot: slot as u8,
                        players: players.len() as u8,
                        seed,
                        frame: 0,
                        input_delay: config.input_delay,
                        tick_micros: u32::try_from(self.settings.tick.as_micros())
                            .unwrap_or(u32::MAX),
                        units: units.clone(),
                        rng,
                    };
                    let _ = self.sessions.send_message(SessionId(*player), &start);
                }
                // In a fleet, each player is told its seat on the node its session is on (and
                // goes to this room's node from there).
                if self.reach.rooms_seat_players() {
                    for (slot, (player, node)) in players.iter().zip(&nodes).enumerate() {
                        if let Err(refused) = self.reach.place(node, *player, room, slot as u8) {
                            tracing::warn!(room, player, %node, %refused, "a player was not told its seat");
                        }
                    }
                }
                state.players = players;
                state.seed = seed;
                self.stats.rooms.fetch_add(1, Ordering::Relaxed);
                context.checkpoint();
                context.timer(Room::clock(&self.settings))?;
                self.playing.insert(room, ());
            }
            RoomMsg::Arrived { slot } => self.arrived(room, slot, state)?,
            RoomMsg::Input {
                slot,
                frame,
                buttons,
            } => {
                self.stats.inputs.fetch_add(1, Ordering::Relaxed);
                if let Some(engine) = &mut state.engine
                    && engine.submit(usize::from(slot), frame, buttons) == InputOutcome::Accepted
                {
                    // An accepted input survives a crash: it is in the log.
                    context.log(
                        RoomLog::Input {
                            slot,
                            frame,
                            buttons,
                        }
                        .encode(),
                    );
                }
            }
            RoomMsg::Resume { slot, from } => {
                let (Some(engine), Some(player)) =
                    (&state.engine, state.players.get(usize::from(slot)))
                else {
                    return Ok(());
                };
                let frame = catch_up(engine, from, self.settings.resend_limit)?;
                self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                // The live frames already pushed since the reconnect follow it; the client puts
                // them in order.
                let _ = self.sessions.push(SessionId(*player), frame);
            }
            RoomMsg::Watch { session } => self.watch(room, session, state, context),
            RoomMsg::Left { slot } => {
                state.departed |= slot_bit(usize::from(slot));
                context.checkpoint();
                let everyone = every_slot(state.players.len());
                if state.departed & everyone == everyone {
                    // Nobody is left to play or to tell.
                    self.stats.rooms_abandoned.fetch_add(1, Ordering::Relaxed);
                    self.release(room, state, context);
                }
            }
            RoomMsg::Crash => panic!("injected crash of room {room}"),
            RoomMsg::Tick => {
                let Some(engine) = &mut state.engine else {
                    return Ok(());
                };
                // What the frame's compact form is XORed against: the inputs of the one before.
                let mut previous = [0u8; packed::MAX_PLAYERS];
                let players = engine.last_inputs().len().min(packed::MAX_PLAYERS);
                previous[..players].copy_from_slice(&engine.last_inputs()[..players]);
                let broadcast = engine.advance()?;
                let frame = broadcast.record.frame;
                if self.first_frame.remove(&room).is_some() {
                    self.stats.recovered_ticking.fetch_add(1, Ordering::Relaxed);
                }
                self.broadcast(room, state, &previous[..players], broadcast);
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                if (frame + 1).is_multiple_of(self.settings.snapshot_every) {
                    context.checkpoint();
                    // A spectator whose session closed while it was being added is still
                    // listed: once a snapshot period it goes.
                    if !self.spectators.is_empty() {
                        self.spectators
                            .retain_open(room, |session| self.sessions.contains(session));
                    }
                } else {
                    context.log(RoomLog::Frame.encode());
                }
                if frame + 1 >= self.settings.match_frames {
                    self.finish(room, state, context);
                }
            }
        }
        Ok(())
    }
}

/// The frame that catches up a client resuming at `from`: the missed frames from the log
/// (at most `limit`), or the world's snapshot when it is further behind or when the frames would
/// not fit in one frame (a big room's log).
fn catch_up(
    engine: &Lockstep,
    from: u32,
    limit: u32,
) -> Result<garrison_protocol::Frame, garrison_protocol::Error> {
    let encode = |resumption| match resumption {
        Resumption::Frames(frames) => {
            garrison_protocol::encode_frame(&Catchup { frames }, FrameMeta::default())
        }
        Resumption::Snapshot {
            frame,
            snapshot,
            inputs,
        } => garrison_protocol::encode_frame(
            &Resync {
                frame,
                snapshot: snapshot.to_vec(),
                inputs,
            },
            FrameMeta::default(),
        ),
    };
    match encode(engine.resume(from, limit)?) {
        // Encoding refuses what a client's decoder would (and the room would have failed on it,
        // restarting for nothing); a limit of 0 leaves only the snapshot for a client behind.
        Err(garrison_protocol::Error::Oversize { .. }) => encode(engine.resume(from, 0)?),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ServerMessage;
    use garrison_protocol::Protocol;

    /// Runs a room of `players` for `frames` frames.
    fn room(players: usize, frames: u32) -> Lockstep {
        let config = LockstepConfig {
            players,
            ..LockstepConfig::default()
        };
        let mut engine = Lockstep::new(7, config).unwrap();
        for _ in 0..frames {
            engine.advance().unwrap();
        }
        engine
    }

    #[test]
    fn a_catch_up_too_big_for_a_client_becomes_a_snapshot() {
        // Eight players, 250 frames behind: the log fits.
        let small = catch_up(&room(8, 290), 40, 300).unwrap();
        assert!(matches!(
            ServerMessage::validate(small),
            Ok(ServerMessage::Catchup(_))
        ));
        // 250 players, 250 frames behind: ~70 KB of inputs would not fit in 64 KiB.
        let big = room(250, 290);
        let frame = catch_up(&big, 40, 300).unwrap();
        assert!(frame.wire().len() <= garrison_protocol::DEFAULT_MAX_FRAME_LEN);
        let Ok(ServerMessage::Resync(resync)) = ServerMessage::validate(frame) else {
            panic!("expected a snapshot");
        };
        assert_eq!(resync.frame.to_native(), 290);
    }

    #[test]
    fn log_entries_round_trip_and_refuse_other_shapes() {
        for entry in [
            RoomLog::Frame,
            RoomLog::Input {
                slot: 7,
                frame: 0x0102_0304,
                buttons: 0b1010,
            },
        ] {
            assert_eq!(RoomLog::decode(&entry.encode()), Ok(entry));
        }
        assert!(RoomLog::decode(&[]).is_err());
        assert!(RoomLog::decode(&[0, 1, 2]).is_err());
        assert!(RoomLog::decode(&[2]).is_err());
    }

    #[test]
    fn slot_bits_cover_rooms_of_up_to_64_players() {
        assert_eq!(every_slot(8), 0xff);
        assert_eq!(every_slot(64), u64::MAX);
        assert_eq!(slot_bit(63), 1 << 63);
        assert_eq!(slot_bit(64), 0, "no slot 64: no overflow either");
    }
}
