//! The battle server: player sessions, a matchmaker and rooms as Garrison entities behind the
//! gateway, declared in one `supervisor!` tree.
//!
//! Players connect with a ticket; each client's requests reach its own [`Player`] entity, which
//! asks the [`Matchmaker`] for a match, keeps the seat it is given, and forwards resumes to its
//! [`Room`]. Inputs, 60 a second per player, take the fast path: the gateway sends them straight
//! to the room the session is bound to, with the slot the player entity published. The matchmaker fills rooms of `room_size` and starts them. A room runs
//! [`Lockstep`] at 60 Hz on absolute deadlines, checkpoints after every frame and every accepted
//! input, and pushes each frame's update, encoded once, to every player. A late ticker counts
//! its overrun and catches up a few frames per wake-up, never skipping one.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use garrison_protocol::{FrameMeta, Snapshot};
use garrison_runtime::{
    Activation, Checkpoint, Entities, Entity, EntityContext, EntityMessage, HandlerError,
    KindConfig, SessionId, Sessions,
    gateway::{Gateway, GatewayBuilder, GatewayConfig},
};
use garrison_supervisor::{SupervisorRef, supervisor};
use rkyv::{Archive, Deserialize, Serialize};

use crate::{
    lockstep::{InputOutcome, Lockstep, LockstepConfig, Resumption},
    proto::{Catchup, ClientMessage, FrameUpdate, MatchEnd, MatchStart, Resync},
};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Players per room.
    pub room_size: usize,
    /// The frame period (1/60 s).
    pub tick: Duration,
    /// Frames clients stamp their inputs ahead.
    pub input_delay: u32,
    /// Most missed frames a reconnecting client is sent from the input log; one further behind
    /// (or behind the log's start) gets a snapshot of the world instead.
    pub resend_limit: u32,
    /// Frames a match lasts; then its result is announced and the room released.
    pub match_frames: u32,
    /// The `game.world.zone` of the node's spans (gateway, matchmaker, rooms).
    pub zone: Arc<str>,
    /// The gateway's settings (listen address, ticket key, limits).
    pub gateway: GatewayConfig,
}

/// Counters the demo reports.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Frames executed across all rooms.
    pub frames: AtomicU64,
    /// Rooms started.
    pub rooms: AtomicU64,
    /// Frames a room's ticker ran late, in catch-up (each counted once).
    pub overruns: AtomicU64,
    /// Rooms restarted from their checkpoint after a crash.
    pub restarts: AtomicU64,
    /// Reconnected players caught up (from the log or a snapshot).
    pub resumes: AtomicU64,
    /// Player inputs rooms handled (accepted or not).
    pub inputs: AtomicU64,
    /// Matches played to their end (result announced).
    pub matches_ended: AtomicU64,
    /// Rooms released because every player left.
    pub rooms_abandoned: AtomicU64,
    /// Players waiting in the matchmaker's queue.
    pub waiting: AtomicU64,
}

/// What a server holds right now: what a leak would make grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Room entities in the registry.
    pub rooms: usize,
    /// Room tickers running.
    pub tickers: usize,
    /// Player entities in the registry.
    pub players: usize,
    /// Seats in the gateway's routing cache.
    pub seats: usize,
    /// Open sessions (connected, or within their reconnect grace window).
    pub sessions: usize,
    /// Players in the matchmaker's queue.
    pub waiting: u64,
}

struct Services {
    sessions: Arc<Sessions>,
    players: OnceLock<Entities<Player>>,
    matchmakers: OnceLock<Entities<Matchmaker>>,
    /// The gateway's routing cache of seats: inputs go straight to the room (the hot path, 60 a
    /// second per player) instead of through the player's entity. Written by `Player` entities,
    /// whose checkpointed state is the truth.
    seats: DashMap<SessionId, Seat>,
    rooms: OnceLock<Entities<Room>>,
    next_room: AtomicU64,
    running: AtomicBool,
    /// The running rooms' tickers, by room: a room stops its own when it ends; the server stops
    /// the rest before the tree, so none ticks a stopped room.
    tickers: DashMap<u64, tokio::task::JoinHandle<()>>,
    stats: Arc<ServerStats>,
    config: ServerConfig,
}

impl Services {
    /// The seat of a placed player, for the input fast path.
    fn seat(&self, session: SessionId) -> Result<Seat, garrison_runtime::Refusal> {
        self.seats
            .get(&session)
            .map(|seat| *seat)
            .ok_or(garrison_runtime::Refusal::Session(
                garrison_runtime::Error::NotBound {
                    session: session.0,
                    kind: Room::KIND,
                    key: "none".into(),
                },
            ))
    }
}

/// A player session's messages: what its client asked for, and its seat once placed.
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
            PlayerMsg::MatchEnded(_) => "match_ended",
            PlayerMsg::Leave => "leave",
        }
    }
}

/// Where a player sits.
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

impl Snapshot for PlayerState {
    const SCHEMA: &'static str = "battle.player";
    const VERSION: u16 = 1;
}

/// A player's session: the entity its client's requests reach (keyed by the player id the
/// ticket names). It asks the matchmaker for a match, keeps its seat (checkpointed), publishes
/// it for the gateway's input fast path with a binding to the room, and forwards resumes: a
/// client can only ever speak for its own slot.
pub struct Player {
    services: Arc<Services>,
}

impl Player {
    /// Publishes `player`'s seat for the gateway's input fast path and lets its session address
    /// its room (the seat itself lives in this entity's checkpointed state).
    fn seated(&self, player: u64, seat: Seat) -> Result<(), HandlerError> {
        self.services.seats.insert(SessionId(player), seat);
        // A player whose session already closed has nothing to bind.
        match self
            .services
            .sessions
            .bind::<Room>(SessionId(player), &seat.room)
        {
            Ok(()) | Err(garrison_runtime::Error::NoSession { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Forgets `player`'s seat: the routing cache, and its session's binding to the room.
    fn unseated(&self, player: u64, seat: Seat) {
        self.services.seats.remove(&SessionId(player));
        self.services
            .sessions
            .unbind::<Room>(SessionId(player), &seat.room);
    }

    /// Tells the client its request was refused as busy, so it asks again.
    fn busy(&self, player: u64, reason: &str) {
        let refused = garrison_protocol::control::Refused {
            seq: 0,
            code: garrison_runtime::gateway::refusal::BUSY,
            reason: reason.to_owned(),
        };
        if let Ok(frame) = garrison_protocol::encode_frame(&refused, FrameMeta::default()) {
            let _ = self.services.sessions.push(SessionId(player), frame);
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
            // Restarted: the routing cache and binding follow the checkpointed seat.
            self.seated(*player, seat)?;
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
        let rooms = self.services.rooms.get().ok_or("rooms not started")?;
        match (message, state.seat) {
            (PlayerMsg::Join, None) => {
                let matchmakers = self
                    .services
                    .matchmakers
                    .get()
                    .ok_or("matchmaker not started")?;
                if matchmakers
                    .send(&0, MatchmakerMsg::Join(SessionId(player)))
                    .is_err()
                {
                    self.busy(player, "the matchmaker is busy; join again");
                }
            }
            // Already seated: the match goes on (a reconnecting client resumes instead).
            (PlayerMsg::Join, Some(_)) => {}
            (PlayerMsg::Placed { room, slot }, _) => {
                if !self.services.sessions.contains(SessionId(player)) {
                    // Placed after its session closed for good: give the seat back at once.
                    let _ = rooms.send(&room, RoomMsg::Left { slot });
                    context.stop();
                    return Ok(());
                }
                let seat = Seat { room, slot };
                state.seat = Some(seat);
                state.last_result = None;
                context.checkpoint();
                self.seated(player, seat)?;
            }
            (PlayerMsg::MatchEnded(result), Some(seat)) if seat.room == result.room => {
                self.unseated(player, seat);
                state.seat = None;
                state.last_result = Some(result);
                context.checkpoint();
            }
            // A result for a match it no longer plays in.
            (PlayerMsg::MatchEnded(_), _) => {}
            (PlayerMsg::Leave, seat) => {
                match seat {
                    Some(seat) => {
                        self.unseated(player, seat);
                        let _ = rooms.send(&seat.room, RoomMsg::Left { slot: seat.slot });
                    }
                    None => {
                        let matchmakers = self
                            .services
                            .matchmakers
                            .get()
                            .ok_or("matchmaker not started")?;
                        let _ = matchmakers.send(&0, MatchmakerMsg::Leave(SessionId(player)));
                    }
                }
                // Nothing of the player stays behind.
                context.stop();
            }
            (PlayerMsg::Resume { from }, Some(seat)) => {
                if rooms
                    .send_for(
                        SessionId(player),
                        &seat.room,
                        RoomMsg::Resume {
                            slot: seat.slot,
                            from,
                        },
                    )
                    .is_err()
                {
                    self.busy(player, "the room is busy; resume again");
                }
            }
            // Back after its match ended: tell it how it ended, so it joins again.
            (PlayerMsg::Resume { .. }, None) => {
                if let Some(result) = &state.last_result {
                    let frame = garrison_protocol::encode_frame(result, FrameMeta::default())?;
                    let _ = self.services.sessions.push(SessionId(player), frame);
                }
            }
        }
        Ok(())
    }
}

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

impl Snapshot for Waiting {
    const SCHEMA: &'static str = "battle.matchmaker";
    const VERSION: u16 = 1;
}

/// Places players into rooms.
pub struct Matchmaker {
    services: Arc<Services>,
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
        self.services
            .stats
            .waiting
            .store(waiting.sessions.len() as u64, Ordering::Relaxed);
        if waiting.sessions.len() < self.services.config.room_size {
            return Ok(());
        }
        let players = std::mem::take(&mut waiting.sessions);
        self.services.stats.waiting.store(0, Ordering::Relaxed);
        let room = self.services.next_room.fetch_add(1, Ordering::Relaxed) + 1;
        let sessions = self.services.players.get().ok_or("players not started")?;
        for (slot, player) in players.iter().enumerate() {
            // Seated before the room starts: the seat is in the player's mailbox ahead of any
            // input its client can send after the match start.
            let placed = PlayerMsg::Placed {
                room,
                slot: slot as u8,
            };
            sessions.send(player, placed).map_err(|refused| {
                format!("player {player} refused its seat: {:?}", refused.reason)
            })?;
        }
        let rooms = self.services.rooms.get().ok_or("rooms not started")?;
        rooms
            .send(
                &room,
                RoomMsg::Start {
                    players,
                    seed: room.wrapping_mul(0x9e37_79b9),
                },
            )
            .map_err(|refused| format!("room {room} refused its start: {:?}", refused.reason))?;
        Ok(())
    }
}

/// A room's messages.
pub enum RoomMsg {
    /// Start the match with these players (slot order).
    Start {
        /// Player ids, by slot.
        players: Vec<u64>,
        /// The world's seed.
        seed: u64,
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
            RoomMsg::Input { .. } => "input",
            RoomMsg::Resume { .. } => "resume",
            RoomMsg::Left { .. } => "left",
            RoomMsg::Tick => "tick",
            RoomMsg::Crash => "crash",
        }
    }
}

/// A room's state: its players, its lockstep engine (checkpointed after every frame and every
/// accepted input; `None` before the start and after the end), and which players left for good.
#[derive(Archive, Serialize, Deserialize, Debug, Default)]
pub struct RoomState {
    players: Vec<u64>,
    engine: Option<Lockstep>,
    /// A bit per slot whose player left.
    departed: u64,
}

impl Snapshot for RoomState {
    const SCHEMA: &'static str = "battle.room";
    const VERSION: u16 = 1;
}

/// A battle room.
pub struct Room {
    services: Arc<Services>,
}

/// Most frames a late ticker runs per wake-up. A bigger deficit is caught up over the next
/// wake-ups, a few frames at a time, so one late room never runs a long burst that stalls the
/// others; no frame is ever skipped.
const MAX_CATCH_UP: u32 = 3;

impl Room {
    /// Ticks room `room` at the frame rate against absolute deadlines. The ticker addresses the
    /// room by key, so it serves every incarnation: a room restarted after a crash keeps it.
    fn start_ticker(&self, room: u64) {
        let services = self.services.clone();
        let period = services.config.tick;
        let ticker = tokio::spawn(async move {
            let mut deadline = tokio::time::Instant::now() + period;
            while services.running.load(Ordering::Acquire) {
                tokio::time::sleep_until(deadline).await;
                let Some(rooms) = services.rooms.get() else {
                    return;
                };
                // Frames due now: this one, plus any the ticker fell behind by.
                let late = tokio::time::Instant::now().saturating_duration_since(deadline);
                let due = 1 + (late.as_nanos() / period.as_nanos().max(1)) as u32;
                let run = due.min(MAX_CATCH_UP);
                // Each frame run late is counted once, when it is caught up.
                services
                    .stats
                    .overruns
                    .fetch_add(u64::from(run - 1), Ordering::Relaxed);
                for _ in 0..run {
                    // A full mailbox means the room is behind: the next wake catches up.
                    let _ = rooms.send(&room, RoomMsg::Tick);
                }
                // Only the frames run are consumed: the rest of a deficit stays due.
                deadline += period * run;
            }
        });
        self.services.tickers.insert(room, ticker);
    }

    /// Releases room `room` for good: its ticker stops and the entity ends once its mailbox is
    /// empty (ticks already queued find no engine and do nothing).
    fn release(&self, room: u64, state: &mut RoomState, context: &mut EntityContext<'_, Self>) {
        state.engine = None;
        if let Some((_, ticker)) = self.services.tickers.remove(&room) {
            ticker.abort();
        }
        context.checkpoint();
        context.stop();
    }

    /// Announces the result to every player still in the match, tells their player entities,
    /// and releases the room.
    fn finish(
        &self,
        room: u64,
        state: &mut RoomState,
        context: &mut EntityContext<'_, Self>,
    ) -> Result<(), HandlerError> {
        let Some(engine) = &state.engine else {
            return Ok(());
        };
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
        let result = MatchEnd {
            room,
            frame: world.frame,
            kills,
            winner,
            checksum: world.checksum(),
        };
        let frame = garrison_protocol::encode_frame(&result, FrameMeta::default())?;
        let players = self.services.players.get().ok_or("players not started")?;
        for (slot, player) in state.players.iter().enumerate() {
            if state.departed & 1u64.checked_shl(slot as u32).unwrap_or(0) != 0 {
                continue;
            }
            let _ = self
                .services
                .sessions
                .push(SessionId(*player), frame.clone());
            // A player entity too busy to hear it keeps a seat in a released room; its client
            // still has the result and joins again.
            let _ = players.send(player, PlayerMsg::MatchEnded(result.clone()));
        }
        self.services
            .stats
            .matches_ended
            .fetch_add(1, Ordering::Relaxed);
        self.release(room, state, context);
        Ok(())
    }
}

impl Entity for Room {
    const KIND: &'static str = "room";
    type Key = u64;
    type State = RoomState;
    type Message = RoomMsg;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<RoomState>,
    ) -> Result<RoomState, HandlerError> {
        // After a crash the engine is back at its last checkpoint (every accepted input and every
        // frame is checkpointed), and the room's ticker, which addresses the key and not the
        // incarnation, simply goes on ticking it.
        if matches!(&recovered, Activation::Restarted(Some(state)) if state.engine.is_some()) {
            self.services.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), HandlerError> {
        let room = *context.key();
        if state.players.is_empty() && !matches!(message, RoomMsg::Start { .. }) {
            // A message for a room that ended (a tick its ticker sent as it stopped, a late
            // input) activated it again: there is nothing to play, so it ends at once.
            context.stop();
            return Ok(());
        }
        match message {
            RoomMsg::Start { players, seed } => {
                if state.engine.is_some() {
                    return Ok(());
                }
                let config = LockstepConfig {
                    players: players.len(),
                    input_delay: self.services.config.input_delay,
                    ..LockstepConfig::default()
                };
                state.engine = Some(Lockstep::new(seed, config)?);
                for (slot, player) in players.iter().enumerate() {
                    let start = MatchStart {
                        room,
                        slot: slot as u8,
                        players: players.len() as u8,
                        seed,
                        frame: 0,
                        input_delay: config.input_delay,
                        tick_micros: u32::try_from(self.services.config.tick.as_micros())
                            .unwrap_or(u32::MAX),
                    };
                    let frame = garrison_protocol::encode_frame(&start, FrameMeta::default())?;
                    let _ = self.services.sessions.push(SessionId(*player), frame);
                }
                state.players = players;
                self.services.stats.rooms.fetch_add(1, Ordering::Relaxed);
                context.checkpoint();
                self.start_ticker(room);
            }
            RoomMsg::Input {
                slot,
                frame,
                buttons,
            } => {
                self.services.stats.inputs.fetch_add(1, Ordering::Relaxed);
                if let Some(engine) = &mut state.engine {
                    if engine.submit(usize::from(slot), frame, buttons) == InputOutcome::Accepted {
                        // An accepted input survives a crash: it is in the next checkpoint.
                        context.checkpoint();
                    }
                }
            }
            RoomMsg::Resume { slot, from } => {
                let (Some(engine), Some(player)) =
                    (&state.engine, state.players.get(usize::from(slot)))
                else {
                    return Ok(());
                };
                let session = SessionId(*player);
                let frame = catch_up(engine, from, self.services.config.resend_limit)?;
                self.services.stats.resumes.fetch_add(1, Ordering::Relaxed);
                // The live frames already pushed since the reconnect follow it; the client puts
                // them in order.
                let _ = self.services.sessions.push(session, frame);
            }
            RoomMsg::Left { slot } => {
                state.departed |= 1u64.checked_shl(u32::from(slot)).unwrap_or(0);
                context.checkpoint();
                let everyone = u64::MAX >> (64 - state.players.len().clamp(1, 64));
                if !state.players.is_empty() && state.departed & everyone == everyone {
                    // Nobody is left to play or to tell.
                    self.services
                        .stats
                        .rooms_abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    self.release(room, state, context);
                }
            }
            RoomMsg::Crash => panic!("injected crash of room {room}"),
            RoomMsg::Tick => {
                let Some(engine) = &mut state.engine else {
                    return Ok(());
                };
                let broadcast = engine.advance()?;
                let update = FrameUpdate {
                    frame: broadcast.record.frame,
                    inputs: broadcast.record.inputs,
                    replaced: broadcast.record.replaced,
                    delta: broadcast.delta,
                    checksum: broadcast.checksum,
                };
                // Encoded once; every player gets the same bytes.
                let frame = garrison_protocol::encode_frame(
                    &update,
                    FrameMeta {
                        seq: update.frame,
                        trace: None,
                    },
                )?;
                for player in &state.players {
                    let _ = self
                        .services
                        .sessions
                        .push(SessionId(*player), frame.clone());
                }
                self.services.stats.frames.fetch_add(1, Ordering::Relaxed);
                context.checkpoint();
                if update.frame + 1 >= self.services.config.match_frames {
                    self.finish(room, state, context)?;
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
        Resumption::Snapshot { frame, snapshot } => garrison_protocol::encode_frame(
            &Resync {
                frame,
                snapshot: snapshot.to_vec(),
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

/// A running battle server.
pub struct BattleServer {
    /// The gateway players connect to.
    pub gateway: Gateway<ClientMessage>,
    /// The supervision tree.
    pub tree: SupervisorRef,
    /// Counters.
    pub stats: Arc<ServerStats>,
    services: Arc<Services>,
}

impl BattleServer {
    /// Starts the tree and the gateway. Call from the tokio runtime entities should run on.
    ///
    /// # Errors
    /// When the tree or the gateway cannot start.
    pub async fn start(
        config: ServerConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let stats = Arc::new(ServerStats::default());
        let services = Arc::new(Services {
            sessions: Arc::new(Sessions::new()),
            players: OnceLock::new(),
            matchmakers: OnceLock::new(),
            seats: DashMap::new(),
            rooms: OnceLock::new(),
            next_room: AtomicU64::new(0),
            running: AtomicBool::new(true),
            tickers: DashMap::new(),
            stats: stats.clone(),
            config: config.clone(),
        });
        let matchmakers = Entities::new(
            Matchmaker {
                services: services.clone(),
            },
            KindConfig {
                // A burst of joins (thousands of bots connecting at once) queues here; past the
                // bound a join is refused as busy and the client retries.
                mailbox_capacity: 16_384,
                zone: Some(config.zone.clone()),
                ..KindConfig::default()
            },
        )?;
        let room_config = KindConfig {
            mailbox_capacity: 1024,
            checkpoint: Checkpoint::OnDemand,
            zone: Some(config.zone.clone()),
            ..KindConfig::default()
        };
        let rooms = Entities::new(
            Room {
                services: services.clone(),
            },
            room_config,
        )?;
        let players = Entities::new(
            Player {
                services: services.clone(),
            },
            KindConfig {
                checkpoint: Checkpoint::OnDemand,
                zone: Some(config.zone.clone()),
                ..KindConfig::default()
            },
        )?;
        let _ = services.rooms.set(rooms.clone());
        let _ = services.matchmakers.set(matchmakers.clone());
        let _ = services.players.set(players.clone());
        // The whole node: players' sessions, the matchmaker, the rooms. Each kind is a dynamic
        // supervisor of its entities; stopping goes rooms, matchmaker, players.
        let tree = supervisor! {
            "battle-node": one_for_one, intensity 10 per 10s {
                entities "players" => players.start();
                entities "matchmaker" => matchmakers.start();
                entities "rooms" => rooms.start();
            }
        }?
        .start()
        .await?;

        let sessions = services.sessions.clone();
        let routing = services.clone();
        let binding = services.clone();
        let leaving = players.clone();
        let gateway = GatewayBuilder::<ClientMessage>::new(config.gateway, sessions)
            // A player gone for good leaves its queue or its room.
            .on_session_closed(move |info| {
                let _ = leaving.send(&info.player, PlayerMsg::Leave);
            })
            // A client speaks to its own player session and nothing else.
            .on_session(move |info, _| {
                binding
                    .sessions
                    .bind::<Player>(info.session, &info.player)
                    .map_err(|error| error.to_string())
            })
            .route(move |info, message| {
                let message = match message {
                    ClientMessage::Input(input) => {
                        // The hot path: straight to the room the session is bound to.
                        let seat = routing.seat(info.session)?;
                        let input = RoomMsg::Input {
                            slot: seat.slot,
                            frame: input.frame.to_native(),
                            buttons: input.buttons,
                        };
                        return rooms
                            .send_as(&routing.sessions, info.session, &seat.room, input)
                            .map_err(|refused| refused.reason);
                    }
                    ClientMessage::Join(_) => PlayerMsg::Join,
                    ClientMessage::Resume(resume) => PlayerMsg::Resume {
                        from: resume.frame.to_native(),
                    },
                };
                players
                    .send_as(&routing.sessions, info.session, &info.player, message)
                    .map_err(|refused| refused.reason)
            })
            .start()?;
        Ok(BattleServer {
            gateway,
            tree,
            stats,
            services,
        })
    }

    /// Crashes every started room once (fault injection): each restarts from its checkpoint.
    pub fn crash_rooms(&self) {
        // The crash, the room's panic and its restart form one trace.
        let span = tracing::info_span!("battle.chaos.crash_rooms");
        let _entered = span.enter();
        if let Some(rooms) = self.services.rooms.get() {
            // Only the rooms playing now: a message to an ended room would activate it again.
            let playing: Vec<u64> = self
                .services
                .tickers
                .iter()
                .map(|room| *room.key())
                .collect();
            for room in playing {
                let _ = rooms.send(&room, RoomMsg::Crash);
            }
        }
    }

    /// What the server holds right now.
    pub fn census(&self) -> Census {
        Census {
            rooms: self.services.rooms.get().map_or(0, Entities::len),
            tickers: self.services.tickers.len(),
            players: self.services.players.get().map_or(0, Entities::len),
            seats: self.services.seats.len(),
            sessions: self.services.sessions.len(),
            waiting: self.services.stats.waiting.load(Ordering::Relaxed),
        }
    }

    /// Stops ticking, then the gateway and the tree.
    pub async fn stop(self) {
        self.services.running.store(false, Ordering::Release);
        let rooms: Vec<u64> = self
            .services
            .tickers
            .iter()
            .map(|room| *room.key())
            .collect();
        let tickers: Vec<_> = rooms
            .into_iter()
            .filter_map(|room| self.services.tickers.remove(&room))
            .map(|(_, ticker)| ticker)
            .collect();
        for ticker in &tickers {
            ticker.abort();
        }
        for ticker in tickers {
            let _ = ticker.await;
        }
        self.gateway.shutdown().await;
        let _ = self.tree.stop().await;
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
}
