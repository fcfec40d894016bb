//! Bots: real clients over TCP. Each joins a match, sends one input per frame stamped
//! `frame + input_delay`, simulates every broadcast frame locally with a [`Mirror`] and checks
//! the checksums, and measures input -> broadcast latency.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Protocol,
    control::{Control, Hello},
};
use garrison_runtime::gateway::ticket;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::{
    lockstep::Mirror,
    proto::{Join, PlayerInput, ServerMessage},
    sim::input,
};

/// What one bot measured.
#[derive(Debug, Default, Clone)]
pub struct BotReport {
    /// Input -> broadcast latencies of this bot's inputs that ran on time.
    pub latencies: Vec<Duration>,
    /// Frames simulated.
    pub frames: u32,
    /// The room it played in.
    pub room: u64,
    /// Checksums verified.
    pub verified: u32,
    /// Checksums that disagreed.
    pub desyncs: u32,
    /// Bytes received and sent in frames.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// The bot's inputs the room ran late (replaced by the previous one).
    pub replaced: u32,
    /// The bot's on-time inputs that ran as sent at their stamped frame.
    pub executed: u32,
    /// On-time inputs that ran differently from what was sent (must stay 0).
    pub mismatched: u32,
}

fn accept_all() -> DecodeConfig {
    DecodeConfig {
        known_kind: |_| true,
        ..DecodeConfig::default()
    }
}

/// Sends one frame, counting its bytes.
async fn send(
    connection: &mut Framed<TcpStream, FrameCodec>,
    frame: Frame,
    report: &mut BotReport,
) -> Result<(), String> {
    report.bytes_out += frame.wire().len() as u64;
    connection
        .send(frame)
        .await
        .map_err(|error| error.to_string())
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
) -> Result<BotReport, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| error.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut connection = Framed::new(stream, FrameCodec::new(accept_all()));
    let mut codec = FrameCodec::default();
    let mut report = BotReport::default();
    let hello = codec
        .encode_frame(
            &Hello {
                ticket: ticket::mint(&key, player, ticket::unix_now() + 3600),
            },
            FrameMeta::default(),
        )
        .map_err(|error| error.to_string())?;
    send(&mut connection, hello, &mut report).await?;
    let join = codec
        .encode_frame(&Join { mode: 0 }, FrameMeta::default())
        .map_err(|error| error.to_string())?;
    send(&mut connection, join, &mut report).await?;

    let mut mirror: Option<(Mirror, u8, u32)> = None;
    let mut sent_at: HashMap<u32, (Instant, u8)> = HashMap::new();
    let mut noise = player.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(remaining, connection.next()).await else {
            return Ok(report);
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("the server closed the connection".into()),
        };
        report.bytes_in += frame.wire().len() as u64;
        if Control::knows(frame.kind()) {
            if let Ok(Control::Close(close)) = Control::validate(frame) {
                return Err(format!("closed by the server: {}", close.reason));
            }
            continue;
        }
        let message = ServerMessage::validate(frame).map_err(|error| error.to_string())?;
        let next_frame = match message {
            ServerMessage::MatchStart(start) => {
                report.room = start.room.to_native();
                let players = usize::from(start.players);
                mirror = Some((
                    Mirror::new(start.seed.to_native(), players),
                    start.slot,
                    start.input_delay.to_native(),
                ));
                start.frame.to_native()
            }
            ServerMessage::FrameUpdate(update) => {
                let Some((mirror, slot, _)) = &mut mirror else {
                    continue;
                };
                let frame = update.frame.to_native();
                let inputs: Vec<u8> = update.inputs.iter().copied().collect();
                let checksum = update
                    .checksum
                    .as_ref()
                    .map(|checksum| checksum.to_native());
                mirror
                    .apply(frame, &inputs, checksum)
                    .map_err(|error| format!("{error:?}"))?;
                report.frames += 1;
                if let Some((sent, buttons)) = sent_at.remove(&frame) {
                    if update.replaced.to_native() & (1 << *slot) == 0 {
                        report.latencies.push(sent.elapsed());
                        // Exactly once, at its frame, as sent.
                        if inputs.get(usize::from(*slot)) == Some(&buttons) {
                            report.executed += 1;
                        } else {
                            report.mismatched += 1;
                        }
                    } else {
                        report.replaced += 1;
                    }
                }
                report.verified = mirror.verified;
                report.desyncs = mirror.desyncs;
                frame + 1
            }
        };
        // One input per frame, stamped ahead by the input delay.
        if let Some((_, _, delay)) = &mirror {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let buttons = (noise as u8) & (input::ALL);
            let stamp = next_frame + delay;
            let input = codec.encode_frame(
                &PlayerInput {
                    frame: stamp,
                    buttons,
                },
                FrameMeta {
                    seq: stamp,
                    trace: None,
                },
            );
            let input = input.map_err(|error| error.to_string())?;
            sent_at.insert(stamp, (Instant::now(), buttons));
            send(&mut connection, input, &mut report).await?;
        }
    }
}

/// The demo's summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Bots that played.
    pub clients: usize,
    /// Rooms they played in.
    pub rooms: usize,
    /// Frames the server executed.
    pub frames: u64,
    /// Input -> broadcast latency percentiles, milliseconds. An input is sent on receiving frame
    /// F and stamped F + 1 + input delay, so this includes the deliberate input delay.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Received kilobytes per second per client.
    pub kbps_in: f64,
    /// Sent kilobytes per second per client.
    pub kbps_out: f64,
    /// Most frames a client trailed its room at the end.
    pub deviation_frames: u32,
    /// Checksums that disagreed.
    pub desyncs: u32,
    /// Checksums that agreed.
    pub verified: u32,
    /// Bots that failed (connection or protocol errors).
    pub failed: usize,
    /// Inputs that ran on time, as sent.
    pub executed: u32,
    /// Inputs the room ran with the previous input instead (late or lost).
    pub replaced: u32,
    /// On-time inputs that ran differently from what was sent.
    pub mismatched: u32,
}

impl Summary {
    /// Summarizes bot reports from a run of `seconds` in which the server ran `frames`.
    pub fn new(reports: &[Result<BotReport, String>], frames: u64, seconds: f64) -> Summary {
        let ok: Vec<&BotReport> = reports
            .iter()
            .filter_map(|report| report.as_ref().ok())
            .collect();
        let mut latencies: Vec<Duration> = ok
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
        for report in &ok {
            let most = rooms.entry(report.room).or_default();
            *most = (*most).max(report.frames);
        }
        let deviation = ok
            .iter()
            .map(|report| rooms[&report.room] - report.frames)
            .max()
            .unwrap_or(0);
        let clients = ok.len().max(1) as f64;
        Summary {
            clients: ok.len(),
            rooms: rooms.len(),
            frames,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            kbps_in: ok.iter().map(|report| report.bytes_in).sum::<u64>() as f64
                / 1024.0
                / seconds
                / clients,
            kbps_out: ok.iter().map(|report| report.bytes_out).sum::<u64>() as f64
                / 1024.0
                / seconds
                / clients,
            deviation_frames: deviation,
            desyncs: ok.iter().map(|report| report.desyncs).sum(),
            verified: ok.iter().map(|report| report.verified).sum(),
            failed: reports.len() - ok.len(),
            executed: ok.iter().map(|report| report.executed).sum(),
            replaced: ok.iter().map(|report| report.replaced).sum(),
            mismatched: ok.iter().map(|report| report.mismatched).sum(),
        }
    }

    /// The table.
    pub fn table(&self) -> String {
        format!(
            "clients {}  rooms {}  frames {}\n\
             input->broadcast latency (incl. input delay)  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms\n\
             per client  in {:.1} KB/s  out {:.1} KB/s\n\
             inputs executed as sent {}  replaced (late) {}  mismatched {}\n\
             frame deviation {}  desyncs {}  (checksums verified {})  failed bots {}",
            self.clients,
            self.rooms,
            self.frames,
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
            self.failed
        )
    }

    /// The same as one JSON object (no dependency needed for flat numbers).
    pub fn json(&self) -> String {
        format!(
            "{{\"clients\":{},\"rooms\":{},\"frames\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"kbps_in\":{:.2},\"kbps_out\":{:.2},\"deviation_frames\":{},\"desyncs\":{},\"verified\":{},\"failed\":{},\"reconnects\":0,\"restarts\":0}}",
            self.clients,
            self.rooms,
            self.frames,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.kbps_in,
            self.kbps_out,
            self.deviation_frames,
            self.desyncs,
            self.verified,
            self.failed
        )
    }
}
