//! The battle server releases what departed players held: 25 rooms abandoned by all their
//! players are released after the reconnect grace window, with their players, sessions (and the
//! seats bound to them) and queue places, and then nothing ticks and the process's CPU is idle.

use std::time::{Duration, Instant};

use garrison_battle::{
    bots::{BotOptions, play},
    run::local_server,
    server::{BattleServer, Census},
};
use garrison_runtime::clock::process_cpu_seconds;

use crate::Outcome;

const KEY: &str = "idle test key";

pub fn abandoned_rooms_are_released_and_the_server_goes_idle() -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let mut config = local_server(8, KEY).map_err(|error| error.to_string())?;
        config.gateway.reconnect_grace = Duration::from_millis(300);
        // Matches far longer than the test: rooms end only because their players left.
        config.match_frames = u32::MAX;
        let server = BattleServer::start(config)
            .await
            .map_err(|error| error.to_string())?;
        let address = server.gateway.tcp_addr().ok_or("no listener")?;
        // 200 players fill 25 rooms, play for two seconds and leave.
        let deadline = Instant::now() + Duration::from_secs(2);
        let bots: Vec<_> = (1..=200)
            .map(|player| {
                tokio::spawn(play(
                    address,
                    KEY.as_bytes().to_vec(),
                    player,
                    deadline,
                    BotOptions::default(),
                ))
            })
            .collect();
        for bot in bots {
            let report = bot
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
            if report.room == 0 || report.frames == 0 {
                return Err(format!("a bot never played: {report:?}"));
            }
        }
        let idle = Census {
            rooms: 0,
            tickers: 0,
            players: 0,
            sessions: 0,
            waiting: 0,
            spectators: 0,
        };
        let released_by = Instant::now() + Duration::from_secs(10);
        while server.census() != idle {
            if Instant::now() > released_by {
                return Err(format!(
                    "still held after the grace window: {:?}",
                    server.census()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let abandoned = server
            .stats
            .rooms_abandoned
            .load(std::sync::atomic::Ordering::Relaxed);
        if abandoned != 25 {
            return Err(format!(
                "{abandoned} rooms released as abandoned, expected 25"
            ));
        }
        // Nothing ticks now: no frame is played, and the process goes idle: within a deadline,
        // some half-second window uses under 5% of a core (an idle server wakes about 20 times a
        // second, for its timers; it took 2-4% of a core in a debug build while a thread kept the
        // coarse clock). 25 rooms ticking cost ~0.35% of a core each (~9% together in a
        // release build, more in a debug one), so they would never pass; what remains of the
        // release (passivations, the last checkpoints) or a busy machine may take a window or
        // two.
        let frames = server
            .stats
            .frames
            .load(std::sync::atomic::Ordering::Relaxed);
        let window = Duration::from_millis(500);
        let idle_by = Instant::now() + Duration::from_secs(10);
        let mut used;
        loop {
            let cpu = process_cpu_seconds().ok_or("no CPU reading")?;
            // The window is the measurement itself, not a wait for an event.
            tokio::time::sleep(window).await;
            used = process_cpu_seconds().ok_or("no CPU reading")? - cpu;
            if used < 0.05 * window.as_secs_f64() || Instant::now() > idle_by {
                break;
            }
        }
        let played = server
            .stats
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
            - frames;
        server.stop().await;
        if played != 0 {
            return Err(format!("{played} frames played with no room left"));
        }
        if used >= 0.05 * window.as_secs_f64() {
            return Err(format!(
                "the server never went idle: its last half second used {used:.3} CPU-s"
            ));
        }
        Ok(())
    })
}
