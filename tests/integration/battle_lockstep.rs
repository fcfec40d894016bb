//! The battle server with bots over loopback: rooms play in lockstep with zero desyncs and every
//! on-time input run exactly once, as sent, at its frame; a room crash restarts it from its
//! checkpoint with every frame's state equal to the uncrashed simulation of the same inputs; a
//! bot that drops its connection comes back, catches up and verifies its next checksum; a rogue
//! client is thrown out without disturbing its room. In every room, even players ask for full
//! updates (inputs and deltas) and odd ones for the compact inputs, so both forms are checked
//! against each other's simulation.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use garrison_battle::{
    bots::{BotError, BotOptions, BotReport, play},
    proto::{Join, PlayerInput, ServerMessage, Updates},
    report::Summary,
    run::local_server,
    server::{BattleServer, ServerConfig},
};
use garrison_protocol::{
    DecodeConfig, FrameCodec, FrameMeta, Protocol,
    control::{Control, Hello},
};
use garrison_runtime::gateway::{CloseCode, ticket};
use garrison_tests::probe::eventually;
use tokio::{net::TcpStream, sync::Notify};
use tokio_util::codec::Framed;

const KEY: &str = "test key";

async fn server(configure: impl FnOnce(&mut ServerConfig)) -> (BattleServer, SocketAddr) {
    let mut config = local_server(8, KEY).unwrap();
    configure(&mut config);
    let server = BattleServer::start(config).await.unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    (server, address)
}

/// What player `player` asks for with each frame: full updates when even, the compact inputs
/// when odd.
fn updates_for(player: u64) -> Updates {
    if player.is_multiple_of(2) {
        Updates::Full
    } else {
        Updates::Inputs
    }
}

fn bot(
    address: SocketAddr,
    player: u64,
    deadline: Instant,
    mut options: BotOptions,
) -> tokio::task::JoinHandle<Result<BotReport, BotError>> {
    options.updates = updates_for(player);
    tokio::spawn(play(
        address,
        KEY.as_bytes().to_vec(),
        player,
        deadline,
        options,
    ))
}

async fn finish(
    bots: Vec<tokio::task::JoinHandle<Result<BotReport, BotError>>>,
) -> Vec<Result<BotReport, BotError>> {
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(bot.await.unwrap());
    }
    reports
}

fn assert_none_failed(reports: &[Result<BotReport, BotError>]) {
    let failures: Vec<&BotError> = reports
        .iter()
        .filter_map(|report| report.as_ref().err())
        .collect();
    assert!(failures.is_empty(), "bots failed: {failures:?}");
}

async fn frames_reach(server: &BattleServer, frames: u64) {
    eventually(&format!("{frames} frames"), Duration::from_secs(10), || {
        let now = server.stats.frames.load(Ordering::Relaxed);
        async move { now >= frames }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_of_eight_play_in_lockstep_without_desync_in_both_update_forms() {
    let (server, address) = server(|_| {}).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let bots = (1..=16)
        .map(|player| bot(address, player, deadline, BotOptions::default()))
        .collect();
    let reports = finish(bots).await;
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    server.stop().await;

    assert_none_failed(&reports);
    assert_eq!(summary.rooms, 2);
    let frames: Vec<u32> = reports
        .iter()
        .map(|report| report.as_ref().unwrap().frames)
        .collect();
    assert!(
        frames.iter().all(|frames| *frames >= 200),
        "a few hundred frames each: {frames:?}"
    );
    assert_eq!(summary.desyncs, 0);
    assert_eq!(summary.delta_mismatches, 0);
    assert!(
        summary.verified >= 16 * 6,
        "checksums were verified: {}",
        summary.verified
    );
    assert_eq!(
        summary.mismatched, 0,
        "an on-time input ran differently from what was sent"
    );
    assert!(
        summary.executed > summary.replaced * 10,
        "most inputs ran on time: {summary:?}"
    );
    // Both forms verified checksums; the compact one for a fraction of the bytes.
    let per_frame = |full: bool| {
        let reports: Vec<&BotReport> = reports
            .iter()
            .zip(1u64..)
            .filter(|(_, player)| (updates_for(*player) == Updates::Full) == full)
            .map(|(report, _)| report.as_ref().unwrap())
            .collect();
        assert!(reports.iter().all(|report| report.verified >= 6));
        let bytes: u64 = reports.iter().map(|report| report.bytes_in).sum();
        let frames: u64 = reports.iter().map(|report| u64::from(report.frames)).sum();
        bytes as f64 / frames as f64
    };
    let (compact, full) = (per_frame(false), per_frame(true));
    assert!(
        compact <= 30.0 && full >= 2.0 * compact,
        "bytes per frame received: compact {compact:.1}, full {full:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_crash_mid_game_restarts_it_from_its_checkpoint_without_desync() {
    let (server, address) = server(|_| {}).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let bots = (1..=8)
        .map(|player| bot(address, player, deadline, BotOptions::default()))
        .collect();
    // Mid-game: once the room has run two seconds of frames, crash it.
    frames_reach(&server, 120).await;
    server.crash_rooms();
    let reports = finish(bots).await;
    let restarts = server.stats.restarts.load(Ordering::Relaxed);
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    server.stop().await;

    assert_eq!(restarts, 1, "the room restarted once, from its checkpoint");
    assert_none_failed(&reports);
    assert_eq!(summary.desyncs, 0, "the recovered room is the same room");
    // Each bot runs the uncrashed simulation of the broadcast inputs and compares every
    // frame's delta with the room's: the state after recovery equals a run without the panic,
    // frame by frame.
    assert_eq!(summary.delta_mismatches, 0);
    assert_eq!(
        summary.mismatched, 0,
        "no accepted input ran differently, before or after the crash"
    );
    let frames: Vec<u32> = reports
        .iter()
        .map(|report| report.as_ref().unwrap().frames)
        .collect();
    assert!(
        frames.iter().all(|frames| *frames >= 200),
        "play went on after the crash: {frames:?}"
    );
    assert!(
        summary.verified >= 8 * 6,
        "checksums after the crash verified too: {}",
        summary.verified
    );
}

/// Eight bots; bot 3 drops its connection for two seconds once the room has played two seconds,
/// then reconnects with the same ticket. Returns bot 3's report and everyone's summary.
async fn reconnect_after_two_seconds(resend_limit: u32) -> (BotReport, Summary, u64) {
    let (server, address) = server(|config| config.resend_limit = resend_limit).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(7);
    let order = Arc::new(Notify::new());
    let bots = (1..=8)
        .map(|player| {
            let options = BotOptions {
                drop: (player == 3).then(|| (order.clone(), Duration::from_secs(2))),
                ..BotOptions::default()
            };
            bot(address, player, deadline, options)
        })
        .collect();
    frames_reach(&server, 120).await;
    order.notify_one();
    let reports = finish(bots).await;
    let resumes = server.stats.resumes.load(Ordering::Relaxed);
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    server.stop().await;
    assert_none_failed(&reports);
    let dropped = reports[2].as_ref().unwrap().clone();
    (dropped, summary, resumes)
}

fn assert_resumed(dropped: &BotReport, summary: &Summary, resumes: u64) {
    assert_eq!(dropped.reconnects, 1);
    assert_eq!(resumes, 1, "the room served one resume");
    assert!(
        dropped.verified > dropped.verified_at_reconnect,
        "a checksum was verified after resuming: {dropped:?}"
    );
    assert_eq!(summary.desyncs, 0);
    assert_eq!(summary.delta_mismatches, 0);
    assert_eq!(summary.mismatched, 0);
    assert!(
        summary.behind_at_end_frames <= 2,
        "the resumed bot caught up with its room: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_away_for_two_seconds_resumes_from_the_log_and_verifies_its_next_checksum() {
    let (dropped, summary, resumes) = reconnect_after_two_seconds(300).await;
    assert_resumed(&dropped, &summary, resumes);
    assert!(
        (100..=160).contains(&dropped.caught_up),
        "about two seconds of frames came from the log: {dropped:?}"
    );
    assert_eq!(dropped.resyncs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_too_far_behind_for_the_log_resumes_from_a_snapshot() {
    // Two seconds is 120 frames, more than the 30 the server resends.
    let (dropped, summary, resumes) = reconnect_after_two_seconds(30).await;
    assert_resumed(&dropped, &summary, resumes);
    assert_eq!(dropped.resyncs, 1);
    assert_eq!(dropped.caught_up, 0);
}

/// A client that joins a room, waits for its match to start, then sends `hostile` and returns
/// the close code the server answered with.
async fn rogue(address: SocketAddr, player: u64, hostile: impl FnOnce(Vec<u8>) -> Vec<u8>) -> u16 {
    let stream = TcpStream::connect(address).await.unwrap();
    let mut connection = Framed::new(
        stream,
        FrameCodec::new(DecodeConfig {
            known_kind: |_| true,
            ..DecodeConfig::default()
        }),
    );
    let mut codec = FrameCodec::default();
    let hello = Hello {
        ticket: ticket::mint(KEY.as_bytes(), player, ticket::unix_now() + 60),
        layout: garrison_battle::proto::layout_hash(),
    };
    connection
        .send(codec.encode_frame(&hello, FrameMeta::default()).unwrap())
        .await
        .unwrap();
    connection
        .send(
            codec
                .encode_frame(
                    &Join {
                        mode: 0,
                        updates: Updates::Inputs,
                    },
                    FrameMeta::default(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    let input = codec
        .encode_frame(
            &PlayerInput {
                frame: 10,
                buttons: 1,
            },
            FrameMeta::default(),
        )
        .unwrap();
    let hostile = hostile(input.wire().to_vec());
    let mut started = false;
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(limit.into(), connection.next())
            .await
            .expect("the server answers in time")
            .expect("the server closes with a Close frame first")
            .unwrap();
        if Control::knows(frame.kind()) {
            if let Control::Close(close) = Control::validate(frame).unwrap() {
                assert!(started, "closed before the match started");
                return close.code.to_native();
            }
            continue;
        }
        if let (false, Ok(ServerMessage::MatchStart(_))) = (started, ServerMessage::validate(frame))
        {
            started = true;
            let stream = connection.get_mut();
            tokio::io::AsyncWriteExt::write_all(stream, &hostile)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_client_in_a_room_is_thrown_out_and_the_room_plays_on() {
    let (server, address) = server(|_| {}).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let bots = (1..=6)
        .map(|player| bot(address, player, deadline, BotOptions::default()))
        .collect();
    // Two rogues fill the room: one sends an input whose archive is cut short (its length
    // field says so, so the frame itself is whole), one declares a 2 GiB frame.
    let truncated = tokio::spawn(rogue(address, 7, |mut input| {
        input.truncate(input.len() - 3);
        let length = (input.len() - 4) as u32;
        input[..4].copy_from_slice(&length.to_le_bytes());
        input
    }));
    let oversized = tokio::spawn(rogue(address, 8, |mut input| {
        input[..4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        input
    }));
    assert_eq!(truncated.await.unwrap(), CloseCode::ProtocolError as u16);
    assert_eq!(oversized.await.unwrap(), CloseCode::FrameTooLarge as u16);
    let reports = finish(bots).await;
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    let restarts = server.stats.restarts.load(Ordering::Relaxed);
    server.stop().await;

    assert_none_failed(&reports);
    assert_eq!(restarts, 0, "the room never noticed");
    assert_eq!(summary.rooms, 1);
    assert_eq!(summary.desyncs, 0);
    assert_eq!(summary.delta_mismatches, 0);
    assert_eq!(summary.mismatched, 0);
    assert!(
        reports
            .iter()
            .all(|report| report.as_ref().unwrap().frames >= 200),
        "the room played on for the others"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_ends_with_its_result_verified_and_its_players_join_the_next() {
    // Matches of 1 s; each bot plays two and joins the next between them. The deadline only
    // bounds a broken run: a busy machine slows the ticks, never the count.
    let (server, address) = server(|config| config.match_frames = 60).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let options = || BotOptions {
        matches: Some(2),
        ..BotOptions::default()
    };
    let bots = (1..=16)
        .map(|player| bot(address, player, deadline, options()))
        .collect();
    let reports = finish(bots).await;
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    // The last matches end too, with nobody left to play the next: every room is released.
    eventually("every room released", Duration::from_secs(10), || {
        let census = server.census();
        async move { census.rooms == 0 && census.tickers == 0 }
    })
    .await;
    let ended = server.stats.matches_ended.load(Ordering::Relaxed);
    server.stop().await;

    assert_none_failed(&reports);
    assert_eq!(ended, 4, "two rooms, two matches each");
    for report in &reports {
        let report = report.as_ref().unwrap();
        assert_eq!(
            report.matches_ended, 2,
            "every bot saw both its matches end: {report:?}"
        );
        assert_eq!(
            report.results_verified, report.matches_ended,
            "every result equals the bot's own mirror of the last frame"
        );
        // Checksums at frames 30 and 60 of each match: the report counts both matches'.
        assert_eq!(
            report.verified, 4,
            "both matches' checksums count: {report:?}"
        );
    }
    assert_eq!(summary.result_mismatches, 0);
    assert_eq!(summary.desyncs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_who_leave_before_their_room_fills_leave_the_queue() {
    let (server, address) = server(|config| {
        config.gateway.reconnect_grace = Duration::from_millis(200);
    })
    .await;
    // Five players wait for a room of eight, then leave.
    let soon = Instant::now() + Duration::from_millis(500);
    let leavers = (1..=5)
        .map(|player| bot(address, player, soon, BotOptions::default()))
        .collect();
    let _ = finish(leavers).await;
    eventually("the queue emptied", Duration::from_secs(10), || {
        let census = server.census();
        async move { census.waiting == 0 && census.players == 0 && census.sessions == 0 }
    })
    .await;
    // Eight new players fill a room with no dead slot: every slot's input runs as sent.
    let deadline = Instant::now() + Duration::from_secs(3);
    let bots = (11..=18)
        .map(|player| bot(address, player, deadline, BotOptions::default()))
        .collect();
    let reports = finish(bots).await;
    server.stop().await;
    assert_none_failed(&reports);
    for report in &reports {
        let report = report.as_ref().unwrap();
        assert!(report.room != 0 && report.executed > 50, "{report:?}");
        assert!(
            report.replaced * 10 < report.executed,
            "its slot was live, not a departed player's: {report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_more_than_64_players_sends_everyone_full_updates() {
    // The compact form's masks cover 64 slots; a room of 66 falls back to full updates for all,
    // whatever they asked for.
    let (server, address) = server(|config| config.room_size = 66).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(3);
    let bots = (1..=66)
        .map(|player| bot(address, player, deadline, BotOptions::default()))
        .collect();
    let reports = finish(bots).await;
    let summary = Summary::new(&reports, None, None, start.elapsed().as_secs_f64());
    server.stop().await;
    assert_none_failed(&reports);
    assert_eq!(summary.rooms, 1);
    assert_eq!((summary.desyncs, summary.delta_mismatches), (0, 0));
    for report in &reports {
        let report = report.as_ref().unwrap();
        assert!(report.frames >= 60 && report.verified >= 2, "{report:?}");
        // 66 inputs and a delta in every frame: far more than a compact record.
        let per_frame = report.bytes_in as f64 / f64::from(report.frames);
        assert!(per_frame > 100.0, "{per_frame:.1} bytes a frame");
    }
}
