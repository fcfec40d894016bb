//! What a run of bots measured: the summary of their reports (rooms, latency percentiles,
//! bandwidth, deviation, desyncs, results), its table and JSON, and what went wrong.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::bots::{BotError, BotReport};

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
    /// Frame deviation: most whole ticks between the first and the last of a room's clients
    /// receiving the same live broadcast (0: every client of every room had every frame within
    /// one tick of the others), over the frames broadcast once every client was in its match
    /// (the frames of the joining phase are counted apart, in `joining_deviation_frames`).
    /// Frames caught up after a reconnect are not live and not compared; a run stopping
    /// mid-broadcast does not count either (only frames at least two clients received are
    /// compared).
    pub deviation_frames: u32,
    /// Of the frames compared for deviation (`compared_frames`), how many a room's clients
    /// received a whole tick or more apart: one stall shows as a handful, a saturated server as
    /// a share.
    pub deviated_frames: u64,
    /// The live frames at least two clients of their room received.
    pub compared_frames: u64,
    /// Frame deviation of the frames first received before the last client's first frame: the
    /// joining phase, when both sides are still setting up connections (every client connects at
    /// the run's start), which the steady state above leaves out.
    pub joining_deviation_frames: u32,
    /// Of the joining phase's compared frames, those a tick or more apart.
    pub joining_deviated_frames: u64,
    /// The joining phase's compared frames.
    pub joining_compared_frames: u64,
    /// Most frames a client trailed its room's most advanced client when the run stopped (a
    /// resumed client has caught up when this is at most 1 or 2).
    pub behind_at_end_frames: u32,
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
    /// Redirects the bots followed to their rooms' nodes (a fleet).
    pub redirects: u32,
    /// Times a bot came back on another node after its server went away (a fleet).
    pub failovers: u32,
    /// Times a bot came back after its server went away, on the same node or another.
    pub server_restarts: u32,
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
    /// CPU seconds a separate server process used during the run (a spawned server, or
    /// `--server` with `--server-pid`; Linux).
    pub server_cpu_seconds: Option<f64>,
    /// Snapshot and log bytes the rooms wrote to their store (an in-process server with a store).
    pub store_bytes: Option<u64>,
    /// Frames the server refused as overloaded (code 105), as the bots saw them.
    pub shed: u32,
    /// What the in-process server's adaptive limit did (its final limit, windows over target).
    pub overload: Option<garrison_runtime::overload::OverloadStats>,
}

impl Summary {
    /// Summarizes bot reports from a run of `seconds`. `frames` and `restarts` come from an
    /// in-process server; without one, frames are counted from the bots' rooms.
    pub fn new(
        reports: &[Result<BotReport, BotError>],
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
        let behind_at_end = matched
            .iter()
            .map(|report| rooms[&report.room] - report.next_frame)
            .max()
            .unwrap_or(0);
        // Per client means per client in a room: an unmatched bot receives nothing.
        let clients = matched.len().max(1) as f64;
        let sum = |field: fn(&BotReport) -> u32| matched.iter().map(|report| field(report)).sum();
        let (spread, joining) = deviation(&ok);
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
            deviation_frames: spread.most,
            deviated_frames: spread.deviated,
            compared_frames: spread.compared,
            joining_deviation_frames: joining.most,
            joining_deviated_frames: joining.deviated,
            joining_compared_frames: joining.compared,
            behind_at_end_frames: behind_at_end,
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
            redirects: ok.iter().map(|report| report.redirects).sum(),
            failovers: ok.iter().map(|report| report.failovers).sum(),
            server_restarts: ok.iter().map(|report| report.server_restarts).sum(),
            // Every bot, matched now or not: a bot between matches has results too.
            matches_ended: ok.iter().map(|report| report.matches_ended).sum(),
            results_verified: ok.iter().map(|report| report.results_verified).sum(),
            result_mismatches: ok.iter().map(|report| report.result_mismatches).sum(),
            restarts,
            cpu_seconds: None,
            server_cpu_seconds: None,
            store_bytes: None,
            overload: None,
            shed: ok.iter().map(|report| report.shed).sum(),
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
             frame deviation {} ({} of {} frames a tick or more apart; while joining {}, {} of {}; behind at the end {})  desyncs {}  (checksums verified {}, frame deltas differing {})\n\
             reconnects {} (resynced from a snapshot {})  room restarts {}  process CPU {}{}\n\
             matches ended {} (results verified {}, differing {}){}",
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
            self.deviated_frames,
            self.compared_frames,
            self.joining_deviation_frames,
            self.joining_deviated_frames,
            self.joining_compared_frames,
            self.behind_at_end_frames,
            self.desyncs,
            self.verified,
            self.delta_mismatches,
            self.reconnects,
            self.resyncs,
            restarts,
            self.cpu_seconds
                .map_or_else(|| "unknown".to_string(), |cpu| format!("{cpu:.1} s")),
            self.server_cpu_seconds
                .map_or_else(String::new, |cpu| format!("  server CPU {cpu:.1} s")),
            self.matches_ended,
            self.results_verified,
            self.result_mismatches,
            if self.redirects + self.server_restarts > 0 {
                format!(
                    "\nredirects followed {}  servers gone and come back to {} (on another node {})",
                    self.redirects, self.server_restarts, self.failovers
                )
            } else {
                String::new()
            },
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
            "deviated_frames": self.deviated_frames,
            "compared_frames": self.compared_frames,
            "joining_deviation_frames": self.joining_deviation_frames,
            "joining_deviated_frames": self.joining_deviated_frames,
            "joining_compared_frames": self.joining_compared_frames,
            "behind_at_end_frames": self.behind_at_end_frames,
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
            "redirects": self.redirects,
            "failovers": self.failovers,
            "server_restarts": self.server_restarts,
            "restarts": self.restarts,
            "cpu_seconds": self.cpu_seconds,
            "server_cpu_seconds": self.server_cpu_seconds,
            "matches_ended": self.matches_ended,
            "results_verified": self.results_verified,
            "result_mismatches": self.result_mismatches,
        })
        .to_string()
    }
}

/// How far apart a run's clients received their rooms' frames (see
/// [`Summary::deviation_frames`]).
#[derive(Default)]
struct Spread {
    /// The widest spread of one frame's arrival times, in whole ticks.
    most: u32,
    /// Frames spread over a whole tick or more.
    deviated: u64,
    /// Frames at least two clients received.
    compared: u64,
}

/// Over every frame of every room that at least two clients received live, the spread of their
/// arrival times in whole ticks: of the frames first received once every client had received
/// its first (the steady state), and apart, of those received before (the joining phase).
fn deviation(reports: &[&BotReport]) -> (Spread, Spread) {
    // Every matched client is in play from its first live frame on.
    let settled = reports
        .iter()
        .filter_map(|report| report.arrivals.first())
        .map(|arrival| arrival.at)
        .max();
    // Per room and frame: the first and last arrival, and how many clients received it.
    let mut spans: HashMap<(u64, u32), (Instant, Instant, u32)> = HashMap::new();
    let mut ticks: HashMap<u64, Duration> = HashMap::new();
    for report in reports {
        for arrival in &report.arrivals {
            spans
                .entry((arrival.room, arrival.frame))
                .and_modify(|(first, last, received)| {
                    *first = (*first).min(arrival.at);
                    *last = (*last).max(arrival.at);
                    *received += 1;
                })
                .or_insert((arrival.at, arrival.at, 1));
            ticks.entry(arrival.room).or_insert(report.tick);
        }
    }
    let (mut steady, mut joining) = (Spread::default(), Spread::default());
    for ((room, _), (first, last, received)) in &spans {
        if *received < 2 {
            continue;
        }
        let tick = ticks[room].max(Duration::from_micros(1));
        let apart = u32::try_from(last.duration_since(*first).as_nanos() / tick.as_nanos())
            .unwrap_or(u32::MAX);
        let spread = if settled.is_some_and(|settled| *first < settled) {
            &mut joining
        } else {
            &mut steady
        };
        spread.most = spread.most.max(apart);
        spread.compared += 1;
        spread.deviated += u64::from(apart > 0);
    }
    (steady, joining)
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
            tick: TICK,
            verified: 2,
            bytes_in: 10_240,
            bytes_out: 1_024,
            executed: 1,
            reconnects: 1,
            ..BotReport::default()
        }
    }

    const TICK: Duration = Duration::from_micros(16_667);

    /// Live arrivals of `frames` in `room`, the first at `start` plus `offset`, one tick apart.
    fn arrivals(
        room: u64,
        frames: std::ops::Range<u32>,
        start: Instant,
        offset: Duration,
    ) -> Vec<crate::bots::Arrival> {
        frames
            .map(|frame| crate::bots::Arrival {
                room,
                frame,
                at: start + offset + TICK * frame,
            })
            .collect()
    }

    #[test]
    fn frame_deviation_is_the_widest_arrival_spread_of_a_frame_in_whole_ticks() {
        let start = Instant::now();
        let mut a = report(1, 10, 1);
        a.arrivals = arrivals(1, 0..10, start, Duration::ZERO);
        // Half a tick behind: the same frame, within one tick.
        let mut b = report(1, 9, 1);
        b.arrivals = arrivals(1, 0..9, start, TICK / 2);
        // Another room's frames with the same numbers are not compared with room 1's: its frame
        // n arrives n ticks after room 1's.
        let mut c = report(2, 10, 1);
        c.arrivals = arrivals(2, 0..10, start, Duration::ZERO);
        for arrival in &mut c.arrivals {
            arrival.at += TICK * arrival.frame;
        }
        let reports = vec![Ok(a.clone()), Ok(b), Ok(c)];
        let summary = Summary::new(&reports, None, None, 1.0);
        assert_eq!(
            summary.deviation_frames, 0,
            "within a tick, and frame 9 reached only one client"
        );
        assert_eq!(
            (summary.deviated_frames, summary.compared_frames),
            (0, 8),
            "frames 1-8 reached both clients of room 1 once both were in play, frame 9 one; \
             room 2 has one client"
        );
        assert_eq!(
            (
                summary.joining_deviation_frames,
                summary.joining_compared_frames
            ),
            (0, 1),
            "frame 0 reached a before b had any frame"
        );
        assert_eq!(summary.behind_at_end_frames, 1, "b stopped one frame short");
        // A client receiving each frame 2.5 ticks after the first: two whole ticks apart.
        let mut late = report(1, 10, 1);
        late.arrivals = arrivals(1, 0..10, start, TICK * 5 / 2);
        let summary = Summary::new(&[Ok(a.clone()), Ok(late)], None, None, 1.0);
        assert_eq!(summary.deviation_frames, 2);
        assert_eq!((summary.deviated_frames, summary.compared_frames), (7, 7));
        assert_eq!(
            (
                summary.joining_deviation_frames,
                summary.joining_deviated_frames,
                summary.joining_compared_frames
            ),
            (2, 3, 3),
            "frames 0-2 reached a before the late client had its first"
        );
        // One frame out of ten a whole tick late: the deviation is 1, and it is one frame.
        let mut stalled = report(1, 10, 1);
        stalled.arrivals = arrivals(1, 0..10, start, Duration::ZERO);
        stalled.arrivals[4].at += TICK + TICK / 4;
        let summary = Summary::new(&[Ok(a), Ok(stalled)], None, None, 1.0);
        assert_eq!(
            (
                summary.deviation_frames,
                summary.deviated_frames,
                summary.compared_frames
            ),
            (1, 1, 10)
        );
    }

    #[test]
    fn frames_received_before_every_client_was_in_play_count_apart_as_the_joining_phase() {
        let start = Instant::now();
        let mut a = report(1, 10, 1);
        a.arrivals = arrivals(1, 0..10, start, Duration::ZERO);
        // b reads its first three frames at once, three ticks after a's first (it was still
        // connecting), then keeps up within an eighth of a tick, but for frame 6, a tick and a
        // quarter late.
        let mut b = report(1, 10, 1);
        b.arrivals = arrivals(1, 0..10, start, TICK / 8);
        for (frame, arrival) in b.arrivals[..3].iter_mut().enumerate() {
            arrival.at = start + TICK * 3 + TICK / 16 * frame as u32;
        }
        b.arrivals[6].at += TICK + TICK / 8;
        let summary = Summary::new(&[Ok(a), Ok(b)], None, None, 1.0);
        assert_eq!(
            (
                summary.joining_deviation_frames,
                summary.joining_deviated_frames,
                summary.joining_compared_frames
            ),
            (3, 3, 3),
            "frames 0-2 first arrived before b's first: 3, 2 and 1 ticks apart"
        );
        assert_eq!(
            (
                summary.deviation_frames,
                summary.deviated_frames,
                summary.compared_frames
            ),
            (1, 1, 7),
            "frames 3-9 are the steady state, and frame 6 a tick apart in it"
        );
    }

    #[test]
    fn the_summary_counts_rooms_deviation_and_per_client_bandwidth_and_prints_every_key() {
        let reports = vec![
            Ok(report(1, 100, 10)),
            Ok(report(1, 97, 20)),
            Ok(report(2, 100, 30)),
            // Never placed in a room: not a client of any room's bandwidth or deviation.
            Ok(BotReport::default()),
            Err(BotError::Ended("gone".to_owned())),
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
            summary.behind_at_end_frames, 3,
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
            "deviated_frames",
            "compared_frames",
            "joining_deviation_frames",
            "joining_deviated_frames",
            "joining_compared_frames",
            "behind_at_end_frames",
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
