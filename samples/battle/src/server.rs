//! The battle server: players' sessions, a matchmaker and rooms as Garrison entities behind the
//! gateway, declared in one `supervisor!` tree.
//!
//! Each kind is declared first and served after, so each module holds the handles of the kinds
//! it talks to: a [`Player`] joins through the [`Matchmaker`] and binds its session to its
//! [`Room`] with its seat, which the gateway's router reads to send each input straight to the
//! room (60 a second per player). The matchmaker fills rooms of `room_size` and starts them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use garrison_runtime::{
    Checkpoint, Durability, Entities, KindConfig, Sessions,
    gateway::{Gateway, GatewayBuilder, GatewayConfig},
    store::Store,
};
use garrison_supervisor::{SupervisorRef, supervisor};

use crate::{
    matchmaker::Matchmaker,
    player::{Player, PlayerMsg, Seat},
    proto::{ArchivedUpdates, ClientMessage},
    reach::{Local, Reaching},
    room::{Room, RoomMsg, RoomSettings},
    spectators::Spectators,
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
    /// Where players' seats and rooms' matches are kept beyond the process (write-behind, a
    /// 100 ms bound on the lag): a restarted server on the same store resumes every match at
    /// the frame it stopped on. `None`: memory only (the demo).
    pub store: Option<Store>,
    /// Frames between two snapshots of a room; the log of inputs and frames in between.
    pub snapshot_every: u32,
    /// What protects running matches when the server is overloaded.
    pub protection: Protection,
    /// Spectators a room takes (a `Watch` beyond is refused as busy); 0: none.
    pub spectators_per_room: usize,
}

/// The most players a room holds: `MatchStart.players` is a byte, and slots run 0 to 254 (255
/// is [`SPECTATOR`](crate::proto::SPECTATOR)). Rooms beyond 64 send everyone full updates (the
/// compact form's masks have a bit per slot) and mark no replaced input beyond slot 63.
pub const MAX_ROOM_SIZE: usize = 255;

/// Overload protection for the battle server.
#[derive(Debug, Clone, Default)]
pub enum Protection {
    /// None: every join is taken, however late the rooms run.
    #[default]
    None,
    /// Garrison's adaptive limit on players in play, following the rooms' mailbox wait and
    /// late ticks: joins are shed first (refused with a retry-after), inputs never.
    Adaptive(garrison_runtime::overload::OverloadConfig),
    /// The source's fixed QPS + P99 breaker: while open it refuses every frame, inputs
    /// included.
    Breaker(garrison_runtime::overload::BreakerConfig),
}

/// What a fleet's node prepared before its modules are served (feature `fleet`).
#[cfg(feature = "fleet")]
type Prepared = crate::fleet::Prepared;
#[cfg(not(feature = "fleet"))]
type Prepared = std::convert::Infallible;

/// A fleet to join (feature `fleet`: [`crate::fleet::FleetSettings`]); without the feature
/// there is none.
#[cfg(feature = "fleet")]
pub type Joining = crate::fleet::FleetSettings;
/// A fleet to join (feature `fleet`); without the feature there is none.
#[cfg(not(feature = "fleet"))]
pub type Joining = std::convert::Infallible;

/// The node's place in its fleet, when it has one.
#[cfg(feature = "fleet")]
type Membership = crate::fleet::Running;
#[cfg(not(feature = "fleet"))]
type Membership = std::convert::Infallible;

/// The protection a running server applies.
#[derive(Debug, Clone)]
enum Guard {
    None,
    Adaptive(garrison_runtime::overload::AdaptiveLimit),
    Breaker {
        breaker: garrison_runtime::overload::FixedBreaker,
        frames: Arc<AtomicU64>,
    },
}

impl Guard {
    /// Admits a frame: `sheddable` names what it asks for when it may be shed (a join, a
    /// watch), `None` for a running match's inputs and resumes.
    fn admit(&self, sheddable: Option<&'static str>) -> Result<(), garrison_runtime::Refusal> {
        use garrison_runtime::overload::Priority;
        match (self, sheddable) {
            (Guard::None, _) => Ok(()),
            (Guard::Adaptive(limit), Some(what)) => limit.admit(Priority::Sheddable, what),
            // A running match's inputs and resumes: critical, never shed (not counted either:
            // an atomic per input is not worth it).
            (Guard::Adaptive(_), None) => Ok(()),
            (Guard::Breaker { breaker, frames }, what) => {
                frames.fetch_add(1, Ordering::Relaxed);
                breaker.admit(what.unwrap_or("frames"))
            }
        }
    }
}

/// Counters the demo reports.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Frames executed across all rooms.
    pub frames: AtomicU64,
    /// Rooms started.
    pub rooms: AtomicU64,
    /// Rooms restarted from their checkpoint after a crash.
    pub restarts: AtomicU64,
    /// Playing rooms recovered from the store (a restarted server).
    pub recovered: AtomicU64,
    /// Of those, the rooms that have executed a frame since.
    pub recovered_ticking: AtomicU64,
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
    /// Room clocks armed (entity timers; one per playing room).
    pub tickers: usize,
    /// Player entities in the registry.
    pub players: usize,
    /// Open sessions (connected, or within their reconnect grace window).
    pub sessions: usize,
    /// Players in the matchmaker's queue.
    pub waiting: u64,
    /// Sessions watching a room.
    pub spectators: usize,
}

/// Records what player `player`'s connection asked for with each frame.
fn choose(full_updates: &DashMap<u64, ()>, player: u64, updates: &ArchivedUpdates) {
    match updates {
        ArchivedUpdates::Full => {
            full_updates.insert(player, ());
        }
        ArchivedUpdates::Inputs => {
            full_updates.remove(&player);
        }
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
    sessions: Arc<Sessions>,
    players: Entities<Player>,
    rooms: Entities<Room>,
    playing: Arc<DashMap<u64, ()>>,
    spectators: Arc<Spectators>,
    guard: Guard,
    fleet: Option<Membership>,
}

impl BattleServer {
    /// Starts the tree and the gateway. Call from the tokio runtime entities should run on.
    ///
    /// # Errors
    /// When the tree or the gateway cannot start, or rooms would hold more than
    /// [`MAX_ROOM_SIZE`] players (or none).
    pub async fn start(
        config: ServerConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        BattleServer::start_with(config, None).await
    }

    /// Starts the tree and the gateway as one node of a fleet (see [`crate::fleet`]): rooms and
    /// the matchmaker on the shards this node owns, players where their sessions are.
    ///
    /// # Errors
    /// As [`BattleServer::start`]; also when the configuration has no store (a fleet keeps its
    /// state in one store every node reaches), or the fleet cannot be joined.
    #[cfg(feature = "fleet")]
    pub async fn start_in_fleet(
        config: ServerConfig,
        fleet: Joining,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        BattleServer::start_with(config, Some(fleet)).await
    }

    async fn start_with(
        config: ServerConfig,
        joining: Option<Joining>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if !(1..=MAX_ROOM_SIZE).contains(&config.room_size) {
            return Err(format!(
                "rooms of {} players: a room holds 1 to {MAX_ROOM_SIZE}",
                config.room_size
            )
            .into());
        }
        let spectators = Arc::new(Spectators::new(config.spectators_per_room));
        let stats = Arc::new(ServerStats::default());
        let sessions = Arc::new(Sessions::new());
        let playing = Arc::new(DashMap::new());
        // The players whose connection asked for full updates: set by their Join or Resume,
        // gone with their session (so at most one entry per open session).
        let full_updates: Arc<DashMap<u64, ()>> = Arc::new(DashMap::new());
        let zone = Some(config.zone.clone());
        let durability = match &config.store {
            Some(store) => Durability::write_behind(store.clone()),
            None => Durability::Memory,
        };
        // In a fleet another node may pick a player or the matchmaker up at any moment: their
        // state is in the store before their next message (a join a minute, a seat a match).
        let handed_over = match (&config.store, &joining) {
            (Some(store), Some(_)) => Durability::write_through(store.clone()),
            (None, Some(_)) => {
                return Err(
                    "a fleet keeps its state in a store every node reaches: give one".into(),
                );
            }
            (_, None) => durability.clone(),
        };
        let players = Entities::<Player>::declare(KindConfig {
            checkpoint: Checkpoint::OnDemand,
            zone: zone.clone(),
            durability: handed_over.clone(),
            ..KindConfig::default()
        })?;
        let matchmakers = Entities::<Matchmaker>::declare(KindConfig {
            // A burst of joins (thousands of bots connecting at once) queues here; past the
            // bound a join is refused as busy and the client retries.
            mailbox_capacity: 16_384,
            zone: zone.clone(),
            // Its queue and its last room id survive a restart on a store (a room id is never
            // handed out twice while rooms of an earlier run still play).
            durability: handed_over,
            ..KindConfig::default()
        })?;
        let rooms = Entities::<Room>::declare(KindConfig {
            mailbox_capacity: 1024,
            // A snapshot every second of frames, the log in between (see `room`).
            checkpoint: Checkpoint::OnDemand,
            zone,
            durability,
            ..KindConfig::default()
        })?;
        let (reach, prepared): (Reaching, Option<Prepared>) = match joining {
            None => (
                Arc::new(Local {
                    rooms: rooms.clone(),
                    matchmakers: matchmakers.clone(),
                    players: players.clone(),
                }),
                None,
            ),
            #[cfg(feature = "fleet")]
            Some(settings) => {
                let prepared =
                    crate::fleet::prepare(settings, &players, &matchmakers, &rooms).await?;
                (prepared.reach(), Some(prepared))
            }
            #[cfg(not(feature = "fleet"))]
            Some(never) => match never {},
        };
        let seated = Arc::new(DashMap::new());
        players.serve(Player {
            sessions: sessions.clone(),
            reach: reach.clone(),
            seated: seated.clone(),
            players: players.clone(),
            rooms: rooms.clone(),
            playing: playing.clone(),
            spectators: spectators.clone(),
        })?;
        matchmakers.serve(Matchmaker {
            room_size: config.room_size,
            reach: reach.clone(),
            stats: stats.clone(),
        })?;
        rooms.serve(Room {
            settings: RoomSettings {
                tick: config.tick,
                input_delay: config.input_delay,
                resend_limit: config.resend_limit,
                match_frames: config.match_frames,
                snapshot_every: config.snapshot_every.max(1),
            },
            sessions: sessions.clone(),
            players: players.clone(),
            playing: playing.clone(),
            first_frame: Arc::default(),
            full_updates: full_updates.clone(),
            spectators: spectators.clone(),
            rooms: rooms.clone(),
            reach: reach.clone(),
            stats: stats.clone(),
        })?;
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

        let guard = match &config.protection {
            Protection::None => Guard::None,
            Protection::Adaptive(overload) => {
                let (playing, stats, room_size) =
                    (playing.clone(), stats.clone(), config.room_size);
                let limit = garrison_runtime::overload::AdaptiveLimit::new(
                    "joins",
                    overload.clone(),
                    move || {
                        playing.len() * room_size + stats.waiting.load(Ordering::Relaxed) as usize
                    },
                );
                limit.watch(&rooms);
                limit.start();
                Guard::Adaptive(limit)
            }
            Protection::Breaker(breaker) => {
                let frames = Arc::new(AtomicU64::new(0));
                let counted = frames.clone();
                let breaker =
                    garrison_runtime::overload::FixedBreaker::new(breaker.clone(), move || {
                        counted.load(Ordering::Relaxed)
                    });
                breaker.watch(&rooms);
                breaker.start();
                Guard::Breaker { breaker, frames }
            }
        };
        let routing = guard.clone();
        let following = reach.clone();
        let own = players.clone();
        let leaving = players.clone();
        let choosing = full_updates.clone();
        let watchers = spectators.clone();
        let builder = GatewayBuilder::<ClientMessage>::new(
            config.gateway,
            sessions.clone(),
            move |session, message| {
                // Joining and watching are shed under overload; a match's inputs never.
                routing.admit(match message {
                    ClientMessage::Join(_) => Some("joins"),
                    ClientMessage::Watch(_) => Some("spectators"),
                    ClientMessage::Input(_) | ClientMessage::Resume(_) => None,
                })?;
                match message {
                    // The hot path: straight to the room the session is bound to, stamped with
                    // the seat its binding carries.
                    ClientMessage::Input(input) => {
                        let mut seat_of = None;
                        let sent = session.send_with::<Room, Seat>(|_, seat| {
                            seat_of = Some(*seat);
                            RoomMsg::Input {
                                slot: seat.slot,
                                frame: input.frame.to_native(),
                                buttons: input.buttons,
                            }
                        });
                        match (sent, seat_of) {
                            (Ok(()), _) => Ok(()),
                            // Its room left this node (a fleet moved it): the input follows it,
                            // as its player is about to.
                            (Err(refused), Some(seat))
                                if matches!(
                                    refused.reason,
                                    garrison_runtime::Refusal::NotOwned { .. }
                                ) =>
                            {
                                let input = RoomMsg::Input {
                                    slot: seat.slot,
                                    frame: input.frame.to_native(),
                                    buttons: input.buttons,
                                };
                                following.room(seat.room, input).map_err(|_| refused.reason)
                            }
                            (Err(refused), _) => Err(refused.reason),
                        }
                    }
                    ClientMessage::Join(join) => {
                        choose(&choosing, session.player(), &join.updates);
                        session
                            .send::<Player>(PlayerMsg::Join)
                            .map_err(|refused| refused.reason)
                    }
                    ClientMessage::Watch(watch) => session
                        .send::<Player>(PlayerMsg::Watch {
                            room: watch.room.to_native(),
                        })
                        .map_err(|refused| refused.reason),
                    ClientMessage::Resume(resume) => {
                        choose(&choosing, session.player(), &resume.updates);
                        session
                            .send::<Player>(PlayerMsg::Resume {
                                from: resume.frame.to_native(),
                            })
                            .map_err(|refused| refused.reason)
                    }
                }
            },
        )
        // A client speaks to its own player session (and, once seated, its room) and nothing
        // else.
        .on_session(move |start| {
            start.session.bind(&own, start.session.player());
            Ok(())
        })
        // A player gone for good leaves its queue or its room.
        .on_session_closed(move |session| {
            full_updates.remove(&session.player());
            watchers.leave(session.id());
            let _ = leaving.send(&session.player(), PlayerMsg::Leave);
        })
        // The router sends to players and rooms (and players to the matchmaker): a kind left out
        // of the tree above fails here, naming the line to add, not at the first player.
        .requires(&players)
        .requires(&matchmakers)
        .requires(&rooms);
        // The rooms run on the gateway's event loops, beside their players' connections: on
        // one core every input, tick and broadcast of a match stays on one thread (no hand-over
        // to the tree's worker per input: 700 -> 1,100 clients per core, see README).
        let builder = builder.hosts(&rooms);
        let gateway = builder.start()?;
        let fleet = match prepared {
            // A fleet runs the stored rooms of the shards each node gains.
            #[cfg(feature = "fleet")]
            Some(prepared) => {
                let address = gateway.tcp_addr().ok_or("a fleet's node listens on TCP")?;
                Some(crate::fleet::join(prepared, address, seated, players.clone()).await?)
            }
            #[cfg(not(feature = "fleet"))]
            Some(never) => match never {},
            None => {
                let _ = seated;
                // The matches a previous run of the server left in the store play on from the
                // frame they stopped on, whether or not their players come back.
                let recovered = rooms.recover_stored().await?;
                if recovered > 0 {
                    tracing::info!(rooms = recovered, "matches recovered from the store");
                }
                None
            }
        };
        Ok(BattleServer {
            gateway,
            tree,
            stats,
            sessions,
            players,
            rooms,
            playing,
            spectators,
            guard,
            fleet,
        })
    }

    /// The node's place in its fleet (`serve --cluster`), when it has one.
    #[cfg(feature = "fleet")]
    pub fn fleet(&self) -> Option<&crate::fleet::Running> {
        self.fleet.as_ref()
    }

    /// Crashes every playing room once (fault injection): each restarts from its checkpoint.
    pub fn crash_rooms(&self) {
        // The crash, the room's panic and its restart form one trace.
        let span = tracing::info_span!("battle.chaos.crash_rooms");
        let _entered = span.enter();
        // Only the rooms playing now: a message to an ended room would activate it again.
        let playing: Vec<u64> = self.playing.iter().map(|room| *room.key()).collect();
        for room in playing {
            let _ = self.rooms.send(&room, RoomMsg::Crash);
        }
    }

    /// What the server holds right now.
    pub fn census(&self) -> Census {
        Census {
            rooms: self.rooms.len(),
            tickers: self.rooms.timers_armed() as usize,
            players: self.players.len(),
            sessions: self.sessions.len(),
            waiting: self.stats.waiting.load(Ordering::Relaxed),
            spectators: self.spectators.len(),
        }
    }

    /// Stops gracefully: the gateway stops accepting and tells every client `Close 31`
    /// (reconnect shortly), the tree stops (the rooms' clocks end with them), and every
    /// checkpoint and log entry still waiting is written to the store (at most 10 s). Returns
    /// whether everything reached the store.
    pub async fn stop(self) -> bool {
        // A node of a fleet hands its rooms over first: their players are redirected to the
        // rooms' new nodes, and nothing of them is lost.
        #[cfg(feature = "fleet")]
        if let Some(fleet) = &self.fleet {
            match fleet.drain(Duration::from_secs(10)).await {
                Some(took) => {
                    let report = fleet.report();
                    println!(
                        "drained node={} took_ms={} handoff_us={} handed_off={} forwarded={} \
                         inputs={}",
                        fleet.id(),
                        took.as_millis(),
                        report.kinds.last_handoff.as_micros(),
                        report.kinds.handed_off,
                        report.kinds.forwarded,
                        self.stats.inputs.load(Ordering::Relaxed),
                    );
                }
                None => tracing::warn!("the drain did not finish within 10 s"),
            }
        }
        self.gateway.shutdown().await;
        // No input arrives any more: the rooms handle (and log) the ones already queued before
        // the tree stops (whatever is still queued then is dead-lettered), at most 2 s.
        self.rooms.drain(Duration::from_secs(2)).await;
        let _ = self.tree.stop().await;
        let timeout = Duration::from_secs(10);
        let (rooms, players) = tokio::join!(self.rooms.flush(timeout), self.players.flush(timeout));
        let flushed = rooms && players;
        if !flushed {
            tracing::error!("the store did not take every checkpoint within 10 s before the stop");
        }
        #[cfg(feature = "fleet")]
        if let Some(fleet) = self.fleet {
            fleet.leave().await;
        }
        #[cfg(not(feature = "fleet"))]
        if let Some(never) = self.fleet {
            match never {}
        }
        flushed
    }

    /// A metrics registry reading this server: its gateway, its player and room kinds, and the
    /// battle's own counters (`garrison_battle_*`).
    pub fn metrics(&self) -> garrison_runtime::metrics::Metrics {
        let mut metrics = garrison_runtime::metrics::Metrics::new();
        metrics
            .gateway(&self.gateway)
            .kind(&self.players)
            .kind(&self.rooms)
            .register_collector(BattleCollector(self.stats.clone()));
        if let Guard::Adaptive(limit) = &self.guard {
            metrics.limit(limit);
        }
        metrics
    }

    /// What the adaptive limit has done (`None` under another protection).
    pub fn overload_stats(&self) -> Option<garrison_runtime::overload::OverloadStats> {
        match &self.guard {
            Guard::Adaptive(limit) => Some(limit.stats()),
            Guard::None | Guard::Breaker { .. } => None,
        }
    }

    /// Requests the overload protection refused so far (0 without protection).
    pub fn shed(&self) -> u64 {
        match &self.guard {
            Guard::None => 0,
            Guard::Adaptive(limit) => limit.stats().shed.iter().sum(),
            Guard::Breaker { breaker, .. } => breaker.shed(),
        }
    }

    /// The adaptive limit now, when the server has one.
    pub fn overload_limit(&self) -> Option<usize> {
        match &self.guard {
            Guard::Adaptive(limit) => Some(limit.limit()),
            _ => None,
        }
    }

    /// What each kind's entities crashed of so far, most frequent first.
    pub fn crash_causes(&self) -> Vec<(&'static str, garrison_runtime::CrashCause)> {
        let players = self
            .players
            .crash_causes()
            .into_iter()
            .map(|c| ("player", c));
        let rooms = self.rooms.crash_causes().into_iter().map(|c| ("room", c));
        let mut causes: Vec<_> = players.chain(rooms).collect();
        causes.sort_by_key(|(_, cause)| std::cmp::Reverse(cause.count));
        causes
    }

    /// What the rooms' durability has done (when the server has a store).
    pub fn room_durability(&self) -> Option<garrison_runtime::DurabilityStats> {
        self.rooms.durability()
    }
}

/// The battle's own counters, read at each scrape.
#[derive(Debug)]
struct BattleCollector(Arc<ServerStats>);

impl garrison_runtime::metrics::Collector for BattleCollector {
    fn encode(
        &self,
        mut encoder: garrison_runtime::metrics::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use garrison_runtime::metrics::{MetricType, NoLabelSet};
        let stats = &self.0;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "battle_frames",
                "Lockstep frames executed across all rooms",
                load(&stats.frames),
            ),
            ("battle_rooms_started", "Rooms started", load(&stats.rooms)),
            (
                "battle_room_restarts",
                "Rooms restarted from their checkpoint after a crash",
                load(&stats.restarts),
            ),
            (
                "battle_inputs",
                "Player inputs rooms handled",
                load(&stats.inputs),
            ),
            (
                "battle_resumes",
                "Reconnected players caught up",
                load(&stats.resumes),
            ),
            (
                "battle_matches_ended",
                "Matches played to their end",
                load(&stats.matches_ended),
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        encoder
            .encode_descriptor(
                "battle_players_waiting",
                "Players waiting in the matchmaker's queue",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&load(&stats.waiting))
    }
}
