//! Bots: real clients over TCP, on `garrison-client`. Each joins a match, sends one input per frame (or every
//! `input_every` frames) stamped `frame + input_delay`, simulates every broadcast frame locally
//! with a [`Mirror`] and checks the checksums, and measures input -> broadcast latency. A bot
//! told to drop its connection goes away for a while, reconnects with the same ticket, sends
//! [`Resume`] and catches up from the room's [`Catchup`](crate::proto::Catchup) or
//! [`Resync`](crate::proto::Resync) before playing on.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use garrison_client::{Client, ClientConfig, ClientError, Event, Reconnect, Traffic};
use garrison_protocol::{control::RefusalCode, ticket};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::{
    lockstep::{Mirror, MirrorError},
    packed::{self, PackedError},
    proto::{FrameUpdate, Join, PlayerInput, Resume, ServerMessage, Updates},
    sim::{Change, input},
};

/// Most live frame arrivals one bot records (18 minutes at 60 Hz); later frames are not
/// compared for deviation.
pub const MAX_ARRIVALS: usize = 1 << 16;

/// A live broadcast of `frame` of `room` reached a bot at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The room.
    pub room: u64,
    /// The frame.
    pub frame: u32,
    /// When the bot received it.
    pub at: Instant,
}

/// What one bot measured.
#[derive(Debug, Default, Clone)]
pub struct BotReport {
    /// Input -> broadcast latencies of this bot's inputs that ran on time, not counting the
    /// input delay (see [`crate::report::Summary::p50_ms`]).
    pub latencies: Vec<Duration>,
    /// Frames simulated.
    pub frames: u32,
    /// The next frame its mirror will simulate, at the end (how far it trails its room at the
    /// end compares these).
    pub next_frame: u32,
    /// When each frame broadcast live reached it (at most [`MAX_ARRIVALS`]; catch-up frames
    /// after a reconnect are not live): frame deviation compares these across a room.
    pub arrivals: Vec<Arrival>,
    /// Its room's tick period (from `MatchStart`).
    pub tick: Duration,
    /// The room it played in (0: never matched).
    pub room: u64,
    /// Checksums verified.
    pub verified: u32,
    /// Frames the server refused as overloaded (code 105: joins shed, or anything while a
    /// breaker is open).
    pub shed: u32,
    /// Checksums that disagreed.
    pub desyncs: u32,
    /// Frames whose broadcast delta differed from the local step's.
    pub delta_mismatches: u32,
    /// Bytes received in frames.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// The bot's inputs the room ran late (replaced by the previous one).
    pub replaced: u32,
    /// The bot's on-time inputs that ran as sent at their stamped frame.
    pub executed: u32,
    /// On-time inputs that ran differently from what was sent (must stay 0).
    pub mismatched: u32,
    /// Times the bot dropped its connection and came back.
    pub reconnects: u32,
    /// Times the server went away (a restart: `Close 31`, or the connection lost without one)
    /// and the bot came back to it (with [`BotOptions::server_restarts`]).
    pub server_restarts: u32,
    /// Frames the room ran again after a restart: it came back behind what the bot had already
    /// simulated (the frames inside the store's write-behind lag), and a `Resync` set the bot
    /// back to the room's frame.
    pub rewound: u32,
    /// Frames caught up from the room's log after reconnecting.
    pub caught_up: u32,
    /// Times it was resynchronized from a snapshot instead (too far behind).
    pub resyncs: u32,
    /// `verified` when it last came back: a larger `verified` proves a checksum after resuming.
    pub verified_at_reconnect: u32,
    /// Inputs sent.
    pub inputs_sent: u32,
    /// Of those, the ones sent with a sampled trace context.
    pub inputs_traced: u32,
    /// Times a server redirected it to another node of its fleet (its room's), and it
    /// reconnected there.
    pub redirects: u32,
    /// Times it came back on another node of the fleet after its server went away (killed,
    /// drained, or silent past [`BotOptions::silence`]).
    pub failovers: u32,
    /// Resumes the server refused while its room was moving (it asked again).
    pub resume_retries: u32,
    /// Matches that ended while it played (it then joined again).
    pub matches_ended: u32,
    /// Match results whose kills and checksum equal the bot's own mirror of the last frame.
    pub results_verified: u32,
    /// Match results that differ from its mirror (must stay 0).
    pub result_mismatches: u32,
}

/// How a bot plays.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// Sends an input on every `input_every`-th frame (1: every frame, 60 per second at 60 Hz).
    pub input_every: u32,
    /// When notified (once matched), the bot drops its connection, stays away this long, then
    /// reconnects and resumes.
    pub drop: Option<(Arc<Notify>, Duration)>,
    /// Each input is sent inside a `battle.bot.input` span whose W3C trace context rides in
    /// the frame, so the server's spans join the bot's trace (when telemetry is installed).
    pub trace: bool,
    /// Leaves after this many matches have ended for it, before its deadline if it gets there
    /// first (none: plays on until the deadline).
    pub matches: Option<u32>,
    /// When the server goes away (a graceful restart's `Close 31`, or a killed process), keep
    /// reconnecting with the same ticket for this long, then resume the match (none: a lost
    /// server is an error).
    pub server_restarts: Option<Duration>,
    /// What the bot asks for with each frame: the compact inputs (it simulates and checks the
    /// checksums) or the inputs with the delta (it also checks every frame's delta).
    pub updates: Updates,
    /// How many times a second, on average, the bot changes its buttons (as a player presses
    /// and releases them); it sends its buttons every `input_every` frames whether they changed
    /// or not. 60 or more: new random buttons with every input.
    pub button_changes: u32,
    /// Every gateway of the server's fleet (empty: just the one it was given). When its server
    /// goes away, the bot comes back on the next one in turn (with
    /// [`BotOptions::server_restarts`]).
    pub fleet: Arc<[SocketAddr]>,
    /// While matched, a server that sends nothing for this long counts as gone (a paused or
    /// partitioned node): the bot leaves it for another.
    pub silence: Option<Duration>,
}

impl Default for BotOptions {
    fn default() -> Self {
        BotOptions {
            input_every: 1,
            drop: None,
            trace: false,
            matches: None,
            server_restarts: None,
            updates: Updates::Inputs,
            button_changes: DEFAULT_BUTTON_CHANGES,
            fleet: Arc::from(Vec::new()),
            silence: None,
        }
    }
}

/// The close code of a session moved to another node (`CloseCode::Moved`), after a `Redirect`.
const MOVED: u16 = 34;

/// Button changes per second by default: a player pressing or releasing about six times a
/// second.
pub const DEFAULT_BUTTON_CHANGES: u32 = 6;

/// Most live frames a resuming bot holds while it waits for its catch-up.
const MAX_PENDING: usize = 4_096;
/// The most frames a bot reserves its records for at a match's start (ten minutes at 60 Hz:
/// 1.2 MB of address space, touched only as frames arrive); a longer run grows them as it goes.
const MAX_RESERVED_FRAMES: usize = 36_000;

/// Makes room in `report` for the arrival and the latency of every frame `remaining` holds at
/// its tick (up to [`MAX_RESERVED_FRAMES`]), so that no record grows mid-run: every bot of a run
/// starts at about the same time and would grow its own at the same frame, and the load
/// generator's one core would stall on the copies (a burst of frame deviation at frame 512).
fn reserve_records(report: &mut BotReport, remaining: Duration, input_every: u32) {
    let tick = report.tick.max(Duration::from_micros(1));
    let frames = usize::try_from(remaining.as_nanos() / tick.as_nanos())
        .unwrap_or(usize::MAX)
        .min(MAX_RESERVED_FRAMES)
        + 1;
    let arrivals = &mut report.arrivals;
    arrivals.reserve(frames.min(MAX_ARRIVALS.saturating_sub(arrivals.len())));
    let every = input_every.max(1) as usize;
    report.latencies.reserve(frames / every + 1);
}

/// A match in progress, as this bot sees it.
struct Playing {
    mirror: Mirror,
    slot: u8,
    delay: u32,
    tick: Duration,
}

/// Why a bot stopped playing before its deadline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BotError {
    /// The connection could not be made, or broke.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A frame could not be encoded, decoded or validated.
    #[error("protocol: {0}")]
    Protocol(#[from] garrison_protocol::Error),
    /// The server closed the connection with a `Close`.
    #[error("closed by the server (code {code}): {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// What the server said.
        reason: String,
    },
    /// The server ended the connection without a `Close`.
    #[error("the server ended the connection: {0}")]
    Ended(String),
    /// The client failed (the handshake, a write).
    #[error("client: {0}")]
    Client(#[from] ClientError),
    /// A broadcast could not be applied to the bot's mirror.
    #[error("the room's broadcast did not follow: {0:?}")]
    Mirror(MirrorError),
    /// A compact frame's record did not decode.
    #[error("the room sent a malformed FrameInputs for frame {frame}: {error}")]
    Packed {
        /// The frame.
        frame: u32,
        /// What was wrong.
        error: PackedError,
    },
    /// Live frames piled up while the bot waited for its catch-up, which never came.
    #[error("no catch-up came while resuming")]
    NoCatchup,
    /// The bot's own task failed (a bug in the bot).
    #[error("the bot crashed: {0}")]
    Crashed(String),
}

/// A live frame held while the bot waits for its catch-up.
enum Pending {
    /// A full update, decoded.
    Full {
        inputs: Vec<u8>,
        replaced: u64,
        delta: Vec<Change>,
        checksum: Option<u64>,
    },
    /// A compact record, decoded once the frame before it has run (it is XORed against it).
    Packed(Vec<u8>),
}

struct Bot {
    address: SocketAddr,
    key: Vec<u8>,
    player: u64,
    options: BotOptions,
    report: BotReport,
    /// Bytes moved by the clients this bot dropped (the live one counts its own).
    dropped_traffic: Traffic,
    playing: Option<Playing>,
    /// Inputs sent and not yet executed: stamped frame -> (sent at, buttons).
    sent: BTreeMap<u32, (Instant, u8)>,
    /// Live frames received ahead of the catch-up, while resuming.
    pending: BTreeMap<u32, Pending>,
    resuming: bool,
    /// Where the server redirected it (its room's node), until it reconnects there.
    redirect: Option<SocketAddr>,
    /// It reconnected on its room's node before its match started there: the `MatchStart` it
    /// gets is followed by a catch-up.
    arriving: bool,
    /// Its resume was refused (its room is moving): asked again after this pause.
    resume_again: Option<Duration>,
    /// A join was refused (busy); it is sent again after a pause.
    rejoin: bool,
    /// How long the server asked it to wait before joining again.
    retry_after: Option<Duration>,
    /// Its match ended: it joins the next one at once.
    join_again: bool,
    joins: u32,
    noise: u64,
    /// The buttons it holds now.
    buttons: u8,
    /// Scratch for decoding a compact frame's inputs.
    unpacked: Vec<u8>,
    /// When it stops playing.
    deadline: Instant,
}

type Connection = Client<ServerMessage>;

impl Bot {
    /// Connects with its ticket; then joins, or resumes the match it was in.
    async fn connect(&mut self) -> Result<Connection, BotError> {
        let ticket = ticket::mint(&self.key, self.player, ticket::unix_now() + 3600);
        let mut config =
            ClientConfig::new(self.address, ticket).layout(crate::proto::layout_hash());
        // The bot drops and resumes on its own schedule (the scenario); a connection lost
        // otherwise is a failure to report, not to paper over.
        config.reconnect = Reconnect {
            attempts: 0,
            ..Reconnect::default()
        };
        let connection = Client::connect(config).await?;
        match &self.playing {
            Some(playing) => {
                self.resuming = true;
                let frame = playing.mirror.world().frame;
                let updates = self.options.updates;
                connection.send(&Resume { frame, updates }).await?;
            }
            None => {
                self.send_join(&connection).await?;
            }
        }
        Ok(connection)
    }

    /// The gateway after the current one in its fleet's list (the current one when it has no
    /// list, or is not on it).
    fn next_server(&self) -> SocketAddr {
        let fleet = &self.options.fleet;
        match fleet.iter().position(|address| *address == self.address) {
            Some(at) => fleet[(at + 1) % fleet.len()],
            None => fleet.first().copied().unwrap_or(self.address),
        }
    }

    /// The join it sends.
    fn join(&self) -> Join {
        Join {
            mode: 0,
            updates: self.options.updates,
        }
    }

    /// Sends its join, inside a `battle.bot.join` span whose trace context rides in the frame
    /// when it traces (the matchmaking it causes, on whichever nodes, joins that trace).
    async fn send_join(&self, connection: &Connection) -> Result<(), BotError> {
        if !self.options.trace {
            connection.send(&self.join()).await?;
            return Ok(());
        }
        let span = tracing::info_span!(
            "battle.bot.join",
            game.session.id = self.player,
            game.event.type = "join",
        );
        let trace = garrison_runtime::telemetry::trace_context(&span);
        connection
            .send_traced(&self.join(), trace)
            .instrument(span)
            .await?;
        Ok(())
    }

    /// The bytes moved so far, over all its connections, into the report.
    fn count_traffic(&mut self, connection: &Connection) {
        let live = connection.traffic();
        self.report.bytes_in = self.dropped_traffic.bytes_in + live.bytes_in;
        self.report.bytes_out = self.dropped_traffic.bytes_out + live.bytes_out;
    }

    /// Runs one frame on the mirror and checks this bot's input for it. `live`: it arrived
    /// as the room broadcast it (latency is only measured then), not from a catch-up.
    fn apply(
        &mut self,
        frame: u32,
        inputs: &[u8],
        replaced: u64,
        delta: Option<&[Change]>,
        checksum: Option<u64>,
        live: bool,
    ) -> Result<(), BotError> {
        let Some(playing) = &mut self.playing else {
            return Ok(());
        };
        playing
            .mirror
            .apply_checked(frame, inputs, delta, checksum)
            .map_err(BotError::Mirror)?;
        if live && self.report.arrivals.len() < MAX_ARRIVALS {
            self.report.arrivals.push(Arrival {
                room: self.report.room,
                frame,
                at: Instant::now(),
            });
        }
        self.report.frames += 1;
        self.report.next_frame = frame + 1;
        self.report.verified = playing.mirror.verified;
        self.report.desyncs = playing.mirror.desyncs;
        self.report.delta_mismatches = playing.mirror.delta_mismatches;
        while let Some(entry) = self.sent.first_entry() {
            if *entry.key() > frame {
                break;
            }
            let (stamp, (sent, buttons)) = entry.remove_entry();
            if stamp < frame {
                // Its frame was skipped by a resync: it never ran here.
                continue;
            }
            // Slots past 63 share the mask's last bit, as the room sets it.
            if replaced & (1u64 << playing.slot.min(63)) != 0 {
                self.report.replaced += 1;
                continue;
            }
            if live {
                // The input delay is a schedule, not latency: what is left is waiting for the
                // tick plus both transport legs and the server's work.
                let scheduled = playing.tick * playing.delay;
                self.report
                    .latencies
                    .push(sent.elapsed().saturating_sub(scheduled));
            }
            // Exactly once, at its frame, as sent.
            if inputs.get(usize::from(playing.slot)) == Some(&buttons) {
                self.report.executed += 1;
            } else {
                self.report.mismatched += 1;
            }
        }
        Ok(())
    }

    /// Applies the held live frames that are now next in line.
    fn drain(&mut self) -> Result<(), BotError> {
        while let Some(playing) = &self.playing {
            let next = playing.mirror.world().frame;
            let Some(held) = self.pending.remove(&next) else {
                break;
            };
            match held {
                Pending::Full {
                    inputs,
                    replaced,
                    delta,
                    checksum,
                } => self.apply(next, &inputs, replaced, Some(&delta), checksum, true)?,
                Pending::Packed(record) => self.apply_packed(next, &record)?,
            }
        }
        Ok(())
    }

    /// Decodes a compact frame against the mirror's last frame and runs it.
    fn apply_packed(&mut self, frame: u32, record: &[u8]) -> Result<(), BotError> {
        let Some(playing) = &self.playing else {
            return Ok(());
        };
        let mut inputs = std::mem::take(&mut self.unpacked);
        let unpacked = packed::unpack(record, playing.mirror.last_inputs(), &mut inputs)
            .map_err(|error| BotError::Packed { frame, error });
        let applied = unpacked.and_then(|unpacked| {
            self.apply(
                frame,
                &inputs,
                unpacked.replaced,
                None,
                unpacked.checksum,
                true,
            )
        });
        self.unpacked = inputs;
        applied
    }

    /// Handles one event from the client. `Ok(false)`: nothing to answer.
    fn receive(&mut self, event: Event<ServerMessage>) -> Result<bool, BotError> {
        let message = match event {
            Event::Message(message) => message,
            // The matchmaker was too busy for the join: ask again.
            Event::Refused {
                code, retry_after, ..
            } if self.playing.is_none() => {
                self.report.shed += u32::from(code == RefusalCode::Overloaded.code());
                self.rejoin = true;
                self.retry_after = retry_after;
                return Ok(false);
            }
            // Its resume refused while its room moves between nodes: asked again shortly.
            Event::Refused {
                code, retry_after, ..
            } if self.resuming => {
                self.report.shed += u32::from(code == RefusalCode::Overloaded.code());
                self.report.resume_retries += 1;
                self.resume_again = Some(retry_after.unwrap_or(Duration::from_millis(100)));
                return Ok(false);
            }
            Event::Refused { code, .. } => {
                self.report.shed += u32::from(code == RefusalCode::Overloaded.code());
                return Ok(false);
            }
            // Where to go; the close (code 34) follows.
            Event::Redirected { address, .. } => {
                self.redirect = address.parse().ok();
                return Ok(false);
            }
            Event::Closed {
                code: Some(code),
                reason,
            } => return Err(BotError::Closed { code, reason }),
            Event::Closed { code: None, reason } => return Err(BotError::Ended(reason)),
            // Never resumed by the client itself (`attempts: 0`): it closes instead.
            Event::Disconnected { .. } | Event::Reconnected { .. } => return Ok(false),
        };
        match message {
            ServerMessage::MatchStart(start) => {
                self.report.room = start.room.to_native();
                self.report.tick = Duration::from_micros(u64::from(start.tick_micros.to_native()));
                let mut mirror = Mirror::new(start.seed.to_native(), usize::from(start.players));
                // The report counts every match's checks, not only this one's.
                mirror.verified = self.report.verified;
                mirror.desyncs = self.report.desyncs;
                mirror.delta_mismatches = self.report.delta_mismatches;
                // The world the match announces is the one the seed makes.
                let world = mirror.world();
                let announced = start.rng.to_native() == world.rng
                    && start.units.len() == world.units.len()
                    && start.units.iter().zip(&world.units).all(|(sent, unit)| {
                        sent.x.to_native() == unit.x
                            && sent.y.to_native() == unit.y
                            && sent.hp.to_native() == unit.hp
                            && sent.cooldown.to_native() == unit.cooldown
                            && sent.respawn_in.to_native() == unit.respawn_in
                            && sent.kills.to_native() == unit.kills
                    });
                if !announced {
                    mirror.delta_mismatches += 1;
                }
                reserve_records(
                    &mut self.report,
                    self.deadline.saturating_duration_since(Instant::now()),
                    self.options.input_every,
                );
                self.playing = Some(Playing {
                    mirror,
                    slot: start.slot,
                    delay: start.input_delay.to_native(),
                    tick: Duration::from_micros(u64::from(start.tick_micros.to_native())),
                });
                // A match it arrived at late (on its room's node): the frames played so far
                // come as a catch-up; live ones wait for it.
                self.resuming = std::mem::take(&mut self.arriving);
            }
            ServerMessage::FrameUpdate(update) => {
                let Some(playing) = &self.playing else {
                    return Ok(false);
                };
                let frame = update.frame.to_native();
                let next = playing.mirror.world().frame;
                let inputs: Vec<u8> = update.inputs.iter().copied().collect();
                let checksum = update.checksum.as_ref().map(|sum| sum.to_native());
                let replaced = update.replaced.to_native();
                let delta = rkyv::deserialize::<Vec<Change>, rkyv::rancor::Error>(&update.delta)
                    .map_err(|reason| garrison_protocol::Error::InvalidArchive {
                        kind: <FrameUpdate as garrison_protocol::Message>::KIND,
                        message: "FrameUpdate",
                        reason,
                    })?;
                if frame < next {
                    // Already simulated from a catch-up.
                    return Ok(false);
                }
                if frame > next && self.resuming {
                    if self.pending.len() >= MAX_PENDING {
                        return Err(BotError::NoCatchup);
                    }
                    let held = Pending::Full {
                        inputs,
                        replaced,
                        delta,
                        checksum,
                    };
                    self.pending.insert(frame, held);
                    return Ok(false);
                }
                self.apply(frame, &inputs, replaced, Some(&delta), checksum, true)?;
                self.drain()?;
            }
            ServerMessage::FrameInputs(update) => {
                let Some(playing) = &self.playing else {
                    return Ok(false);
                };
                // The room stamps the frame number as the push's sequence number.
                let frame = update.frame().header().seq;
                let next = playing.mirror.world().frame;
                if frame < next {
                    // Already simulated from a catch-up.
                    return Ok(false);
                }
                if frame > next && self.resuming {
                    if self.pending.len() >= MAX_PENDING {
                        return Err(BotError::NoCatchup);
                    }
                    self.pending
                        .insert(frame, Pending::Packed(update.packed.to_vec()));
                    return Ok(false);
                }
                self.apply_packed(frame, &update.packed)?;
                self.drain()?;
            }
            ServerMessage::Catchup(catchup) => {
                for record in catchup.frames.iter() {
                    let frame = record.frame.to_native();
                    if self
                        .playing
                        .as_ref()
                        .is_some_and(|playing| playing.mirror.world().frame == frame)
                    {
                        let inputs: Vec<u8> = record.inputs.iter().copied().collect();
                        let replaced = record.replaced.to_native();
                        self.apply(frame, &inputs, replaced, None, None, false)?;
                        self.report.caught_up += 1;
                    }
                }
                self.resuming = false;
                self.drain()?;
            }
            ServerMessage::MatchEnd(end) => {
                let Some(playing) = self.playing.take() else {
                    return Ok(false);
                };
                let world = playing.mirror.world();
                // A bot that was away when the match ended hears the result without its last
                // frames: only a mirror that reached the end can check it.
                if world.frame == end.frame.to_native() {
                    let kills = world.units.iter().map(|unit| unit.kills);
                    if kills.eq(end.kills.iter().map(|kills| kills.to_native()))
                        && world.checksum() == end.checksum.to_native()
                    {
                        self.report.results_verified += 1;
                    } else {
                        self.report.result_mismatches += 1;
                    }
                }
                self.report.matches_ended += 1;
                self.report.room = 0;
                self.report.next_frame = 0;
                self.sent.clear();
                self.pending.clear();
                self.resuming = false;
                self.join_again = true;
                return Ok(false);
            }
            ServerMessage::Resync(resync) => {
                let Some(playing) = &mut self.playing else {
                    return Ok(false);
                };
                let snapshot = bytes::Bytes::copy_from_slice(&resync.snapshot);
                let mut mirror = Mirror::from_snapshot(snapshot)?
                    .with_inputs(resync.inputs.to_vec())
                    .map_err(BotError::Mirror)?;
                mirror.verified = playing.mirror.verified;
                mirror.desyncs = playing.mirror.desyncs;
                mirror.delta_mismatches = playing.mirror.delta_mismatches;
                playing.mirror = mirror;
                let frame = resync.frame.to_native();
                // A room restarted from its store can be behind what this bot simulated.
                self.report.rewound += self.report.next_frame.saturating_sub(frame);
                // The frames it runs again are new frames: what it saw of them before does not
                // count against their new broadcast (frame deviation).
                let room = self.report.room;
                self.report
                    .arrivals
                    .retain(|arrival| arrival.room != room || arrival.frame < frame);
                self.report.next_frame = frame;
                self.pending.retain(|pending, _| *pending >= frame);
                self.report.resyncs += 1;
                self.resuming = false;
                self.drain()?;
            }
        }
        Ok(true)
    }

    /// The next number of the bot's xorshift generator.
    fn next_noise(&mut self) -> u64 {
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        self.noise
    }

    /// Sends the input for the next frame due one, unless it was sent already.
    async fn send_input(&mut self, connection: &Connection) -> Result<(), BotError> {
        let Some(playing) = &self.playing else {
            return Ok(());
        };
        if self.resuming {
            return Ok(());
        }
        let stamp = playing.mirror.world().frame + playing.delay;
        let every = self.options.input_every.max(1);
        let last = self.sent.last_key_value().map(|(stamp, _)| *stamp);
        if stamp % every != 0 || last.is_some_and(|last| last >= stamp) {
            return Ok(());
        }
        // A change on about `button_changes` of every 60 frames' worth of inputs.
        let threshold = u64::from(self.options.button_changes) * u64::from(every);
        if self.next_noise() % 60 < threshold {
            self.buttons = (self.next_noise() as u8) & input::ALL;
        }
        let buttons = self.buttons;
        let span = if self.options.trace {
            tracing::info_span!(
                "battle.bot.input",
                game.session.id = self.player,
                game.event.type = "input",
                frame.stamp = stamp,
            )
        } else {
            tracing::Span::none()
        };
        let trace = if self.options.trace {
            garrison_runtime::telemetry::trace_context(&span)
        } else {
            None
        };
        let input = PlayerInput {
            frame: stamp,
            buttons,
        };
        let at = Instant::now();
        // Counted once the client took it: one it refused (its connection ended under it)
        // never left, and the room plays that frame without it (`inputs replaced`).
        connection
            .send_traced(&input, trace)
            .instrument(span)
            .await?;
        self.sent.insert(stamp, (at, buttons));
        self.report.inputs_sent += 1;
        if trace.is_some_and(|trace| trace.flags & 1 == 1) {
            self.report.inputs_traced += 1;
        }
        Ok(())
    }
}

impl BotError {
    /// Whether the server went away (rather than refusing the bot or breaking the protocol):
    /// what a bot that survives server restarts comes back from.
    fn server_gone(&self) -> bool {
        match self {
            BotError::Closed { code, .. } => *code == SERVER_SHUTDOWN,
            BotError::Ended(_) | BotError::Io(_) => true,
            BotError::Client(error) => match error {
                ClientError::Rejected { code, .. } => *code == SERVER_SHUTDOWN,
                ClientError::Connect { .. }
                | ClientError::Closed
                | ClientError::Io(_)
                | ClientError::HandshakeTimeout(_)
                | ClientError::Protocol(garrison_protocol::Error::Io(_)) => true,
                _ => false,
            },
            BotError::Protocol(garrison_protocol::Error::Io(_)) => true,
            _ => false,
        }
    }
}

/// The close code of a server shutting down (`CloseCode::ServerShutdown`: reconnect shortly).
const SERVER_SHUTDOWN: u16 = 31;

/// Reconnects to a server that went away, for at most `window` (and not past `deadline`),
/// backing off from 20 ms to 500 ms between attempts.
async fn come_back(
    bot: &mut Bot,
    connection: &Connection,
    window: Duration,
    deadline: Instant,
) -> Result<Connection, BotError> {
    bot.count_traffic(connection);
    bot.dropped_traffic = Traffic {
        bytes_in: bot.report.bytes_in,
        bytes_out: bot.report.bytes_out,
    };
    let until = (Instant::now() + window).min(deadline);
    let mut pause = Duration::from_millis(20);
    let first = bot.address;
    // A fleet's next node first: the one that went away may be gone for good.
    bot.address = bot.next_server();
    loop {
        match bot.connect().await {
            Ok(connection) => {
                bot.report.server_restarts += 1;
                bot.report.failovers += u32::from(bot.address != first);
                bot.report.verified_at_reconnect = bot.report.verified;
                return Ok(connection);
            }
            Err(error) if error.server_gone() && Instant::now() + pause < until => {
                bot.address = bot.next_server();
                // A reconnect policy's back-off, not a test's wait.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reconnects where the server redirected the bot (its room's node).
async fn follow_redirect(
    bot: &mut Bot,
    connection: &Connection,
    to: SocketAddr,
) -> Result<Connection, BotError> {
    bot.count_traffic(connection);
    bot.dropped_traffic = Traffic {
        bytes_in: bot.report.bytes_in,
        bytes_out: bot.report.bytes_out,
    };
    bot.address = to;
    bot.report.redirects += 1;
    bot.arriving = bot.playing.is_none();
    bot.connect().await
}

/// Handles one event: answers it, and joins again when due. `Ok(true)`: the bot is done.
async fn on_event(
    bot: &mut Bot,
    connection: &Connection,
    event: Event<ServerMessage>,
) -> Result<bool, BotError> {
    if bot.receive(event)? {
        bot.send_input(connection).await?;
    }
    if bot
        .options
        .matches
        .is_some_and(|matches| bot.report.matches_ended >= matches)
    {
        bot.count_traffic(connection);
        return Ok(true);
    }
    if std::mem::take(&mut bot.join_again) {
        bot.send_join(connection).await?;
    }
    if let Some(pause) = bot.resume_again.take()
        && let Some(playing) = &bot.playing
    {
        let resume = Resume {
            frame: playing.mirror.world().frame,
            updates: bot.options.updates,
        };
        // A back-off the server asked for, not a wait for an event.
        tokio::time::sleep(pause).await;
        connection.send(&resume).await?;
    }
    if std::mem::take(&mut bot.rejoin) {
        bot.joins += 1;
        // Back off a little more each time, as a client of a busy lobby should, and at least
        // as long as the server asked.
        let backoff = Duration::from_millis(10 * u64::from(bot.joins.min(20)));
        tokio::time::sleep(backoff.max(bot.retry_after.take().unwrap_or_default())).await;
        bot.send_join(connection).await?;
    }
    Ok(false)
}

/// Waits for a drop order, or forever without one.
async fn dropped(order: Option<&Arc<Notify>>) {
    match order {
        Some(order) => order.notified().await,
        None => std::future::pending().await,
    }
}

/// Spawns one bot per player id, all playing until `deadline` with `options`.
pub fn spawn(
    address: SocketAddr,
    key: &[u8],
    players: std::ops::RangeInclusive<u64>,
    deadline: Instant,
    options: &BotOptions,
) -> Vec<tokio::task::JoinHandle<Result<BotReport, BotError>>> {
    players
        .map(|player| {
            tokio::spawn(play(
                address,
                key.to_vec(),
                player,
                deadline,
                options.clone(),
            ))
        })
        .collect()
}

/// Plays as `player` against the server at `address` until `deadline` (or until its
/// [`BotOptions::matches`] have ended).
///
/// # Errors
/// When the connection or the handshake fails, or the server closes the connection.
pub async fn play(
    address: SocketAddr,
    key: Vec<u8>,
    player: u64,
    deadline: Instant,
    options: BotOptions,
) -> Result<BotReport, BotError> {
    let order = options.drop.clone();
    let mut bot = Bot {
        address,
        key,
        player,
        options,
        report: BotReport::default(),
        dropped_traffic: Traffic::default(),
        playing: None,
        sent: BTreeMap::new(),
        pending: BTreeMap::new(),
        resuming: false,
        redirect: None,
        arriving: false,
        resume_again: None,
        rejoin: false,
        retry_after: None,
        join_again: false,
        joins: 0,
        noise: player.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1,
        buttons: 0,
        unpacked: Vec::new(),
        deadline,
    };
    let mut connection = bot.connect().await?;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let matched = bot.playing.is_some();
        // While matched, a silent server counts as gone (see `BotOptions::silence`).
        let silence = bot.options.silence.filter(|_| matched);
        let wait = silence.map_or(remaining, |silence| silence.min(remaining));
        tokio::select! {
            next = tokio::time::timeout(wait, connection.next()) => {
                let outcome = match next {
                    Err(_) if wait < remaining => Err(BotError::Ended(format!(
                        "the server sent nothing for {wait:?}"
                    ))),
                    Err(_) => {
                        bot.count_traffic(&connection);
                        return Ok(bot.report);
                    }
                    Ok(Some(event)) => on_event(&mut bot, &connection, event).await,
                    Ok(None) => Err(BotError::Ended("the client ended".to_owned())),
                };
                let outcome = match outcome {
                    // An answer found the connection ended: why it ended (a redirect and its
                    // close) is still among its events, read now without answering them.
                    Err(BotError::Client(ClientError::Closed)) => loop {
                        match connection.next().await {
                            Some(event) => {
                                if let Err(error) = bot.receive(event) {
                                    break Err(error);
                                }
                            }
                            None => break Err(BotError::Client(ClientError::Closed)),
                        }
                    },
                    outcome => outcome,
                };
                match (outcome, bot.options.server_restarts) {
                    (Ok(true), _) => return Ok(bot.report),
                    (Ok(false), _) => {}
                    (Err(BotError::Closed { code: MOVED, .. }), window) if bot.redirect.is_some() => {
                        let to = bot.redirect.take().expect("checked");
                        connection = match (follow_redirect(&mut bot, &connection, to).await, window) {
                            (Ok(connection), _) => connection,
                            // Sent to a node that went away meanwhile: any other will do.
                            (Err(error), Some(window)) if error.server_gone() => {
                                come_back(&mut bot, &connection, window, deadline).await?
                            }
                            (Err(error), _) => return Err(error),
                        };
                    }
                    (Err(error), Some(window)) if error.server_gone() => {
                        connection = come_back(&mut bot, &connection, window, deadline).await?;
                    }
                    (Err(error), _) => return Err(error),
                }
            }
            () = dropped(order.as_ref().map(|(order, _)| order)), if matched => {
                bot.count_traffic(&connection);
                bot.dropped_traffic = Traffic {
                    bytes_in: bot.report.bytes_in,
                    bytes_out: bot.report.bytes_out,
                };
                drop(connection);
                let away = order.as_ref().map_or(Duration::ZERO, |(_, away)| *away);
                // Being away is the scenario itself, not a wait for an event.
                tokio::time::sleep(away.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                if Instant::now() >= deadline {
                    return Ok(bot.report);
                }
                bot.report.reconnects += 1;
                bot.report.verified_at_reconnect = bot.report.verified;
                connection = bot.connect().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_start_reserves_every_record_the_rest_of_the_run_fills() {
        let tick = Duration::from_micros(16_667);
        let mut report = BotReport {
            tick,
            ..BotReport::default()
        };
        // Ten seconds left at 60 Hz, an input every second frame.
        reserve_records(&mut report, Duration::from_secs(10), 2);
        let (arrivals, latencies) = (report.arrivals.as_ptr(), report.latencies.as_ptr());
        for frame in 0..600 {
            report.arrivals.push(Arrival {
                room: 1,
                frame,
                at: Instant::now(),
            });
            if frame % 2 == 0 {
                report.latencies.push(tick);
            }
        }
        assert_eq!(
            (report.arrivals.as_ptr(), report.latencies.as_ptr()),
            (arrivals, latencies),
            "no record moved while the run filled it"
        );
        // A run past the bound reserves the bound, and never past the arrivals' cap.
        let mut long = BotReport {
            tick,
            ..BotReport::default()
        };
        reserve_records(&mut long, Duration::from_secs(86_400), 1);
        assert!(long.arrivals.capacity() >= MAX_RESERVED_FRAMES);
        assert!(long.arrivals.capacity() < MAX_ARRIVALS);
        let mut full = BotReport {
            tick,
            arrivals: Vec::with_capacity(MAX_ARRIVALS),
            ..BotReport::default()
        };
        full.arrivals
            .extend((0..MAX_ARRIVALS as u32).map(|frame| Arrival {
                room: 1,
                frame,
                at: Instant::now(),
            }));
        reserve_records(&mut full, Duration::from_secs(10), 1);
        assert_eq!(full.arrivals.capacity(), MAX_ARRIVALS, "the cap is kept");
    }
}
