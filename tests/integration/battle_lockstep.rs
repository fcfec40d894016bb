//! The battle server with bots over loopback: two rooms of eight play a few hundred frames with
//! zero desyncs, and every input that arrived in time ran exactly once, as sent, at its frame.

use std::time::{Duration, Instant};

use garrison_battle::{
    bots::{Summary, play},
    server::{BattleServer, ServerConfig},
};
use garrison_runtime::gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_of_eight_play_in_lockstep_without_desync() {
    let key = b"test key".to_vec();
    let mut gateway = GatewayConfig::new(key.clone());
    gateway.tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = BattleServer::start(ServerConfig {
        room_size: 8,
        tick: Duration::from_micros(16_667),
        input_delay: 3,
        gateway,
    })
    .await
    .unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let bots: Vec<_> = (1..=16)
        .map(|player| tokio::spawn(play(address, key.clone(), player, deadline)))
        .collect();
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(bot.await.unwrap());
    }
    let summary = Summary::new(&reports, 0, start.elapsed().as_secs_f64());
    server.stop().await;

    assert_eq!(
        summary.failed,
        0,
        "{:?}",
        reports
            .iter()
            .filter_map(|report| report.as_ref().err())
            .collect::<Vec<_>>()
    );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_crash_mid_game_restarts_it_from_its_checkpoint_without_desync() {
    use std::sync::atomic::Ordering;

    let key = b"test key".to_vec();
    let mut gateway = GatewayConfig::new(key.clone());
    gateway.tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = BattleServer::start(ServerConfig {
        room_size: 8,
        tick: Duration::from_micros(16_667),
        input_delay: 3,
        gateway,
    })
    .await
    .unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let bots: Vec<_> = (1..=8)
        .map(|player| tokio::spawn(play(address, key.clone(), player, deadline)))
        .collect();
    // Mid-game: once the room has run two seconds of frames, crash it.
    garrison_tests::probe::eventually("120 frames", Duration::from_secs(10), || {
        let frames = server.stats.frames.load(Ordering::Relaxed);
        async move { frames >= 120 }
    })
    .await;
    server.crash_rooms();
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(bot.await.unwrap());
    }
    let restarts = server.stats.restarts.load(Ordering::Relaxed);
    let summary = Summary::new(&reports, 0, start.elapsed().as_secs_f64());
    server.stop().await;

    assert_eq!(restarts, 1, "the room restarted once, from its checkpoint");
    assert_eq!(
        summary.failed,
        0,
        "{:?}",
        reports
            .iter()
            .filter_map(|report| report.as_ref().err())
            .collect::<Vec<_>>()
    );
    assert_eq!(summary.desyncs, 0, "the recovered room is the same room");
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
