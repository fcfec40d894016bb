//! Bots: real clients over TCP. Each joins a match, sends one input per frame (or every
//! `input_every` frames) stamped `frame + input_delay`, simulates every broadcast frame locally
//! with a [`Mirror`] and checks the checksums, and measures input -> broadcast latency. A bot
//! told to drop its connection goes away for a while, reconnects with the same ticket, sends
//! [`Resume`] and catches up from the room's [`Catchup`](crate::proto::Catchup) or
//! [`Resync`](crate::proto::Resync) before playing on.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Protocol,
    control::{Control, Hello},
};
use garrison_runtime::gateway::ticket;
use tokio::{net::TcpStream, sync::Notify};
use tokio_util::codec::Framed;
use tracing::Instrument;

use crate::{
    lockstep::Mirror,
    proto::{Join, PlayerInput, Resume, ServerMessage},
    sim::{Change, input},
};

/// What one bot measured.
#[derive(Debug, Default, Clone)]
pub struct BotReport {
    /// Input -> broadcast latencies of this bot's inputs that ran on time, not counting the
    /// input delay (see [`Summary::p50_ms`]).
    pub latencies: Vec<Duration>,
    /// Frames simulated.
    pub frames: u32,
    /// The next frame its mirror will simulate, at the end (frame deviation compares these).
    pub next_frame: u32,
    /// The room it played in (0: never matched).
    pub room: u64,
    /// Checksums verified.
    pub verified: u32,
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
}

impl Default for BotOptions {
    fn default() -> Self {
        BotOptions {
            input_every: 1,
            drop: None,
            trace: false,
        }
    }
}

fn accept_all() -> DecodeConfig {
    DecodeConfig {
        known_kind: |_| true,
        ..DecodeConfig::default()
    }
}

/// Most live frames a resuming bot holds while it waits for its catch-up.
const MAX_PENDING: usize = 4_096;

/// A match in progress, as this bot sees it.
struct Playing {
    mirror: Mirror,
    slot: u8,
    delay: u32,
    tick: Duration,
}

/// A held frame: inputs, replaced bits, delta, checksum.
type Pending = (Vec<u8>, u64, Vec<Change>, Option<u64>);

struct Bot {
    address: SocketAddr,
    key: Vec<u8>,
    player: u64,
    options: BotOptions,
    codec: FrameCodec,
    report: BotReport,
    playing: Option<Playing>,
    /// Inputs sent and not yet executed: stamped frame -> (sent at, buttons).
    sent: BTreeMap<u32, (Instant, u8)>,
    /// Live frames received ahead of the catch-up, while resuming.
    pending: BTreeMap<u32, Pending>,
    resuming: bool,
    /// A join was refused (busy); it is sent again after a pause.
    rejoin: bool,
    /// Its match ended: it joins the next one at once.
    join_again: bool,
    joins: u32,
    noise: u64,
}

type Connection = Framed<TcpStream, FrameCodec>;

impl Bot {
    /// Sends one frame, counting its bytes.
    async fn send(&mut self, connection: &mut Connection, frame: Frame) -> Result<(), String> {
        self.report.bytes_out += frame.wire().len() as u64;
        connection
            .send(frame)
            .await
            .map_err(|error| error.to_string())
    }

    /// Connects and says hello; then joins, or resumes the match it was in.
    async fn connect(&mut self) -> Result<Connection, String> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|error| error.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut connection = Framed::new(stream, FrameCodec::new(accept_all()));
        let ticket = ticket::mint(&self.key, self.player, ticket::unix_now() + 3600);
        let hello = self.encode(&Hello { ticket })?;
        self.send(&mut connection, hello).await?;
        let next = match &self.playing {
            Some(playing) => {
                self.resuming = true;
                self.encode(&Resume {
                    frame: playing.mirror.world().frame,
                })?
            }
            None => self.encode(&Join { mode: 0 })?,
        };
        self.send(&mut connection, next).await?;
        Ok(connection)
    }

    fn encode<M: garrison_protocol::Message>(&mut self, message: &M) -> Result<Frame, String> {
        self.codec
            .encode_frame(message, FrameMeta::default())
            .map_err(|error| error.to_string())
    }

    /// Runs one frame on the mirror and checks this bot's input for it. `live`: it arrived
    /// as the room broadcast it (latency is only measured then).
    fn apply(
        &mut self,
        frame: u32,
        inputs: &[u8],
        replaced: u64,
        delta: Option<&[Change]>,
        checksum: Option<u64>,
    ) -> Result<(), String> {
        let Some(playing) = &mut self.playing else {
            return Ok(());
        };
        playing
            .mirror
            .apply_checked(frame, inputs, delta, checksum)
            .map_err(|error| format!("{error:?}"))?;
        // Live broadcasts carry a delta; catch-up frames do not.
        let live = delta.is_some();
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
            if replaced & (1 << playing.slot) != 0 {
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
    fn drain(&mut self) -> Result<(), String> {
        while let Some(playing) = &self.playing {
            let next = playing.mirror.world().frame;
            let Some((inputs, replaced, delta, checksum)) = self.pending.remove(&next) else {
                break;
            };
            self.apply(next, &inputs, replaced, Some(&delta), checksum)?;
        }
        Ok(())
    }

    /// Handles one frame from the server. `Ok(false)`: nothing to answer.
    fn receive(&mut self, frame: Frame) -> Result<bool, String> {
        self.report.bytes_in += frame.wire().len() as u64;
        if Control::knows(frame.kind()) {
            match Control::validate(frame) {
                Ok(Control::Close(close)) => {
                    return Err(format!("closed by the server: {}", close.reason));
                }
                // The matchmaker was too busy for the join: ask again.
                Ok(Control::Refused(_)) if self.playing.is_none() => self.rejoin = true,
                _ => {}
            }
            return Ok(false);
        }
        match ServerMessage::validate(frame).map_err(|error| error.to_string())? {
            ServerMessage::MatchStart(start) => {
                self.report.room = start.room.to_native();
                self.playing = Some(Playing {
                    mirror: Mirror::new(start.seed.to_native(), usize::from(start.players)),
                    slot: start.slot,
                    delay: start.input_delay.to_native(),
                    tick: Duration::from_micros(u64::from(start.tick_micros.to_native())),
                });
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
                    .map_err(|error| error.to_string())?;
                if frame < next {
                    // Already simulated from a catch-up.
                    return Ok(false);
                }
                if frame > next && self.resuming {
                    if self.pending.len() >= MAX_PENDING {
                        return Err("no catch-up came while resuming".into());
                    }
                    self.pending
                        .insert(frame, (inputs, replaced, delta, checksum));
                    return Ok(false);
                }
                self.apply(frame, &inputs, replaced, Some(&delta), checksum)?;
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
                        self.apply(frame, &inputs, record.replaced.to_native(), None, None)?;
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
                let mut mirror =
                    Mirror::from_snapshot(snapshot).map_err(|error| error.to_string())?;
                mirror.verified = playing.mirror.verified;
                mirror.desyncs = playing.mirror.desyncs;
                mirror.delta_mismatches = playing.mirror.delta_mismatches;
                playing.mirror = mirror;
                let frame = resync.frame.to_native();
                self.report.next_frame = frame;
                self.pending.retain(|pending, _| *pending >= frame);
                self.report.resyncs += 1;
                self.resuming = false;
                self.drain()?;
            }
        }
        Ok(true)
    }

    /// Sends the input for the next frame due one, unless it was sent already.
    async fn send_input(&mut self, connection: &mut Connection) -> Result<(), String> {
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
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        let buttons = (self.noise as u8) & input::ALL;
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
        let input = self
            .codec
            .encode_frame(
                &PlayerInput {
                    frame: stamp,
                    buttons,
                },
                FrameMeta { seq: stamp, trace },
            )
            .map_err(|error| error.to_string())?;
        self.sent.insert(stamp, (Instant::now(), buttons));
        self.report.inputs_sent += 1;
        if trace.is_some_and(|trace| trace.flags & 1 == 1) {
            self.report.inputs_traced += 1;
        }
        self.send(connection, input).instrument(span).await
    }
}

/// Waits for a drop order, or forever without one.
async fn dropped(order: Option<&Arc<Notify>>) {
    match order {
        Some(order) => order.notified().await,
        None => std::future::pending().await,
    }
}

/// Plays as `player` against the server at `address` until `deadline`.
///
/// # Errors
/// When the connection or the handshake fails, or the server closes the connection.
pub async fn play(
    address: SocketAddr,
    key: Vec<u8>,
    player: u64,
    deadline: Instant,
    options: BotOptions,
) -> Result<BotReport, String> {
    let order = options.drop.clone();
    let mut bot = Bot {
        address,
        key,
        player,
        options,
        codec: FrameCodec::default(),
        report: BotReport::default(),
        playing: None,
        sent: BTreeMap::new(),
        pending: BTreeMap::new(),
        resuming: false,
        rejoin: false,
        join_again: false,
        joins: 0,
        noise: player.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1,
    };
    let mut connection = bot.connect().await?;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let matched = bot.playing.is_some();
        tokio::select! {
            next = tokio::time::timeout(remaining, connection.next()) => {
                let frame = match next {
                    Err(_) => return Ok(bot.report),
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(error))) => return Err(error.to_string()),
                    Ok(None) => return Err("the server closed the connection".into()),
                };
                if bot.receive(frame)? {
                    bot.send_input(&mut connection).await?;
                }
                if std::mem::take(&mut bot.join_again) {
                    let join = bot.encode(&Join { mode: 0 })?;
                    bot.send(&mut connection, join).await?;
                }
                if std::mem::take(&mut bot.rejoin) {
                    bot.joins += 1;
                    // Back off a little more each time, as a client of a busy lobby should.
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(bot.joins.min(20)))).await;
                    let join = bot.encode(&Join { mode: 0 })?;
                    bot.send(&mut connection, join).await?;
                }
            }
            () = dropped(order.as_ref().map(|(order, _)| order)), if matched => {
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

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Bots that played.
    pub clients: usize,
    /// Rooms they played in.
    pub rooms: usize,
    /// Frames executed (by the server when it runs in-process, else the bots' rooms).
    pub frames: u64,
    /// Input -> broadcast latency percentiles, milliseconds: from sending an input to receiving
    /// the broadcast of the frame it was stamped for, minus the deliberate input delay. What is
    /// left is the wait for the next tick (up to one frame) plus both transport legs and the
    /// server's work; an idle network and server give about one frame.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Received kilobytes per second per client in a room.
    pub kbps_in: f64,
    /// Sent kilobytes per second per client in a room.
    pub kbps_out: f64,
    /// Most frames a client trailed its room at the end.
    pub deviation_frames: u32,
    /// Checksums that disagreed.
    pub desyncs: u32,
    /// Frames whose broadcast delta differed from the bots' local step.
    pub delta_mismatches: u32,
    /// Checksums that agreed.
    pub verified: u32,
    /// Bots that failed (connection or protocol errors).
    pub failed: usize,
    /// Bots never placed in a room (the last, partly filled one).
    pub unmatched: usize,
    /// Inputs that ran on time, as sent.
    pub executed: u32,
    /// Inputs the room ran with the previous input instead (late or lost).
    pub replaced: u32,
    /// On-time inputs that ran differently from what was sent.
    pub mismatched: u32,
    /// Bot reconnections (each resumed from the log or a snapshot).
    pub reconnects: u32,
    /// Of those, the ones resynchronized from a snapshot.
    pub resyncs: u32,
    /// Matches that ended while the bots played.
    pub matches_ended: u32,
    /// Match results the bots verified against their own mirrors.
    pub results_verified: u32,
    /// Match results that differed from the bots' mirrors.
    pub result_mismatches: u32,
    /// Room restarts after crashes (known only with an in-process server).
    pub restarts: Option<u64>,
    /// CPU seconds this process used during the run (server and bots when in-process; Linux).
    pub cpu_seconds: Option<f64>,
}

impl Summary {
    /// Summarizes bot reports from a run of `seconds`. `frames` and `restarts` come from an
    /// in-process server; without one, frames are counted from the bots' rooms.
    pub fn new(
        reports: &[Result<BotReport, String>],
        frames: Option<u64>,
        restarts: Option<u64>,
        seconds: f64,
    ) -> Summary {
        let ok: Vec<&BotReport> = reports
            .iter()
            .filter_map(|report| report.as_ref().ok())
            .collect();
        let matched: Vec<&BotReport> = ok
            .iter()
            .copied()
            .filter(|report| report.room != 0)
            .collect();
        let mut latencies: Vec<Duration> = matched
            .iter()
            .flat_map(|report| report.latencies.iter().copied())
            .collect();
        latencies.sort();
        let at = |fraction: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * fraction) as usize)
                .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
        };
        let mut rooms: HashMap<u64, u32> = HashMap::new();
        for report in &matched {
            let most = rooms.entry(report.room).or_default();
            *most = (*most).max(report.next_frame);
        }
        let deviation = matched
            .iter()
            .map(|report| rooms[&report.room] - report.next_frame)
            .max()
            .unwrap_or(0);
        // Per client means per client in a room: an unmatched bot receives nothing.
        let clients = matched.len().max(1) as f64;
        let sum = |field: fn(&BotReport) -> u32| matched.iter().map(|report| field(report)).sum();
        Summary {
            clients: ok.len(),
            rooms: rooms.len(),
            frames: frames.unwrap_or_else(|| rooms.values().map(|next| u64::from(*next)).sum()),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            kbps_in: matched.iter().map(|report| report.bytes_in).sum::<u64>() as f64
                / 1024.0
                / seconds
                / clients,
            kbps_out: matched.iter().map(|report| report.bytes_out).sum::<u64>() as f64
                / 1024.0
                / seconds
                / clients,
            deviation_frames: deviation,
            desyncs: sum(|report| report.desyncs),
            delta_mismatches: sum(|report| report.delta_mismatches),
            verified: sum(|report| report.verified),
            failed: reports.len() - ok.len(),
            unmatched: ok.len() - matched.len(),
            executed: sum(|report| report.executed),
            replaced: sum(|report| report.replaced),
            mismatched: sum(|report| report.mismatched),
            reconnects: sum(|report| report.reconnects),
            resyncs: sum(|report| report.resyncs),
            // Every bot, matched now or not: a bot between matches has results too.
            matches_ended: ok.iter().map(|report| report.matches_ended).sum(),
            results_verified: ok.iter().map(|report| report.results_verified).sum(),
            result_mismatches: ok.iter().map(|report| report.result_mismatches).sum(),
            restarts,
            cpu_seconds: None,
        }
    }

    /// What went wrong in the run, if anything: no frame played, a desync, a frame delta or an
    /// input that differed from the bots' own, or a bot that failed. Empty for a good run.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.frames == 0 {
            problems.push("no frame was played".to_owned());
        }
        for (count, what) in [
            (self.desyncs, "desyncs"),
            (
                self.delta_mismatches,
                "frame deltas differing from the bots' step",
            ),
            (
                self.mismatched,
                "inputs executed differently from what was sent",
            ),
            (
                self.result_mismatches,
                "match results differing from the bots' mirrors",
            ),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        if self.failed > 0 {
            problems.push(format!("{} bots failed", self.failed));
        }
        problems
    }

    /// The table.
    pub fn table(&self) -> String {
        let restarts = self
            .restarts
            .map_or_else(|| "unknown (remote server)".to_string(), |n| n.to_string());
        format!(
            "clients {}  rooms {}  frames {}  (unmatched {}, failed {})\n\
             input->broadcast latency beyond the input delay  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms\n\
             per client  in {:.2} KB/s  out {:.2} KB/s\n\
             inputs executed as sent {}  replaced (late) {}  mismatched {}\n\
             frame deviation {}  desyncs {}  (checksums verified {}, frame deltas differing {})\n\
             reconnects {} (resynced from a snapshot {})  room restarts {}  process CPU {}\n\
             matches ended {} (results verified {}, differing {})",
            self.clients,
            self.rooms,
            self.frames,
            self.unmatched,
            self.failed,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.kbps_in,
            self.kbps_out,
            self.executed,
            self.replaced,
            self.mismatched,
            self.deviation_frames,
            self.desyncs,
            self.verified,
            self.delta_mismatches,
            self.reconnects,
            self.resyncs,
            restarts,
            self.cpu_seconds
                .map_or_else(|| "unknown".to_string(), |cpu| format!("{cpu:.1} s")),
            self.matches_ended,
            self.results_verified,
            self.result_mismatches,
        )
    }

    /// The same as one JSON object.
    pub fn json(&self) -> String {
        serde_json::json!({
            "clients": self.clients,
            "rooms": self.rooms,
            "frames": self.frames,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "kbps_in": self.kbps_in,
            "kbps_out": self.kbps_out,
            "deviation_frames": self.deviation_frames,
            "desyncs": self.desyncs,
            "delta_mismatches": self.delta_mismatches,
            "verified": self.verified,
            "failed": self.failed,
            "unmatched": self.unmatched,
            "executed": self.executed,
            "replaced": self.replaced,
            "mismatched": self.mismatched,
            "reconnects": self.reconnects,
            "resyncs": self.resyncs,
            "restarts": self.restarts,
            "cpu_seconds": self.cpu_seconds,
            "matches_ended": self.matches_ended,
            "results_verified": self.results_verified,
            "result_mismatches": self.result_mismatches,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(room: u64, next_frame: u32, latency_ms: u64) -> BotReport {
        BotReport {
            latencies: vec![Duration::from_millis(latency_ms)],
            frames: next_frame,
            next_frame,
            room,
            verified: 2,
            bytes_in: 10_240,
            bytes_out: 1_024,
            executed: 1,
            reconnects: 1,
            ..BotReport::default()
        }
    }

    #[test]
    fn the_summary_counts_rooms_deviation_and_per_client_bandwidth_and_prints_every_key() {
        let reports = vec![
            Ok(report(1, 100, 10)),
            Ok(report(1, 97, 20)),
            Ok(report(2, 100, 30)),
            // Never placed in a room: not a client of any room's bandwidth or deviation.
            Ok(BotReport::default()),
            Err("connection refused".to_owned()),
        ];
        let summary = Summary::new(&reports, Some(300), Some(2), 1.0);
        assert_eq!(
            (
                summary.clients,
                summary.rooms,
                summary.unmatched,
                summary.failed
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(
            summary.deviation_frames, 3,
            "the second bot trails room 1 by 3"
        );
        assert_eq!(summary.kbps_in, 10.0, "10 KiB per matched bot per second");
        assert_eq!(summary.kbps_out, 1.0);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!((summary.reconnects, summary.verified), (3, 6));
        let json: serde_json::Value = serde_json::from_str(&summary.json()).unwrap();
        for key in [
            "clients",
            "rooms",
            "frames",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "kbps_in",
            "kbps_out",
            "deviation_frames",
            "desyncs",
            "reconnects",
            "restarts",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["restarts"], 2);
        assert_eq!(json["frames"], 300);
        assert_eq!(summary.problems(), ["1 bots failed"]);
        let good = Summary::new(&reports[..3], Some(300), None, 1.0);
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let idle = Summary::new(&[], Some(0), None, 1.0);
        assert_eq!(idle.problems(), ["no frame was played"]);
        // Without an in-process server, frames come from the rooms and restarts are unknown.
        let remote = Summary::new(&reports, None, None, 1.0);
        assert_eq!(remote.frames, 200);
        assert!(
            serde_json::from_str::<serde_json::Value>(&remote.json()).unwrap()["restarts"]
                .is_null()
        );
    }
}
