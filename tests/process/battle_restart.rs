//! A battle server killed (SIGKILL at a random frame) or stopped gracefully (SIGTERM), and
//! started again on the same port and store: every room resumes from its snapshot and log,
//! every bot reconnects with its ticket and resumes, with 0 desyncs. A kill loses at most the
//! frames inside the write-behind lag (each bot counts the frames the room ran again, and the
//! test prints them); a graceful restart loses none. Once with redb, once with Redis (CI's,
//! `GARRISON_REDIS_URL`).
//!
//! The server runs as a child process of this binary (`GARRISON_SERVE_CHILD`), through the
//! same `serve` function as `garrison-battle serve`, and is stopped by its pid.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, BotReport, play},
    process::ServerProcess,
    run::{ServeArgs, serve},
};

use crate::Outcome;

/// The variable naming the child's store: `redb:DIR` or `redis:URL:NAMESPACE`.
pub const CHILD_VAR: &str = "GARRISON_SERVE_CHILD";
const LISTEN_VAR: &str = "GARRISON_SERVE_LISTEN";
const KEY: &str = "restart test key";
const BOTS: u64 = 16;

/// The child: `serve` on the given address and store until SIGTERM.
pub fn child(store: &str) {
    let listen: SocketAddr = std::env::var(LISTEN_VAR)
        .ok()
        .and_then(|listen| listen.parse().ok())
        .expect("the listen address");
    let mut args = ServeArgs::new(listen);
    args.key = KEY.to_owned();
    args.match_seconds = 600;
    args.overload = "none".to_owned();
    match store.split_once(':') {
        Some(("redb", dir)) => args.data_dir = PathBuf::from(dir),
        Some(("redis", rest)) => {
            let (url, namespace) = rest.rsplit_once(':').expect("redis:URL:NAMESPACE");
            args.store = Some(url.to_owned());
            args.store_namespace = namespace.to_owned();
        }
        _ => panic!("unknown store {store}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(error) = runtime.block_on(serve(args)) {
        eprintln!("serve failed: {error}");
        std::process::exit(1);
    }
}

/// Starts a `serve` child of this binary on `store` and `listen`.
fn start_server(store: &str, listen: SocketAddr) -> Result<ServerProcess, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    ServerProcess::start(
        Command::new(exe)
            .env(CHILD_VAR, store)
            .env(LISTEN_VAR, listen.to_string())
            .stderr(Stdio::inherit()),
    )
}

/// How the server goes away mid-match.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Kill,
    Graceful,
}

/// Plays 16 bots against a server on `store`, stops it `stop`-wise at a random moment of the
/// match, starts it again, plays on; returns the bots' reports.
fn restart(store: &str, stop: Stop) -> Result<Vec<BotReport>, String> {
    let listen: SocketAddr = {
        let probe =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
        probe.local_addr().map_err(|error| error.to_string())?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let first = start_server(store, listen)?;
    // Two rooms of 8 play for 1.5 to 3 s before the stop (a random frame), 3 s after it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let before = Duration::from_millis(1_500 + u64::from(nanos % 1_500));
    let deadline = Instant::now() + before + Duration::from_secs(4);
    let bots: Vec<_> = (1..=BOTS)
        .map(|player| {
            let options = BotOptions {
                server_restarts: Some(Duration::from_secs(20)),
                ..BotOptions::default()
            };
            runtime.spawn(play(
                listen,
                KEY.as_bytes().to_vec(),
                player,
                deadline,
                options,
            ))
        })
        .collect();
    // The scenario's own timing: the server goes away at a moment the test does not choose.
    std::thread::sleep(before);
    match stop {
        Stop::Kill => first.kill()?,
        Stop::Graceful => first.terminate(Duration::from_secs(20))?,
    }
    let second = start_server(store, listen)?;
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for bot in bots {
            match bot.await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(error)) => return Err(format!("a bot failed: {error}")),
                Err(error) => return Err(format!("a bot crashed: {error}")),
            }
        }
        Ok(reports)
    })?;
    second.terminate(Duration::from_secs(20))?;
    Ok(reports)
}

/// What every restart must keep: every bot resumed and verified checksums after it, nothing
/// desynced. Returns the most frames any room ran again.
fn check(label: &str, reports: &[BotReport]) -> Result<u32, String> {
    let mut rewound = 0;
    for (player, report) in (1..).zip(reports) {
        let fail = |what: &str| Err(format!("{label}: bot {player} {what}: {report:?}"));
        if report.server_restarts != 1 {
            return fail("did not come back exactly once");
        }
        if report.desyncs != 0 || report.delta_mismatches != 0 || report.mismatched != 0 {
            return fail("desynced");
        }
        if report.verified <= report.verified_at_reconnect {
            return fail("verified no checksum after the restart (its room did not resume)");
        }
        rewound = rewound.max(report.rewound);
    }
    println!(
        "  {label}: {} bots resumed, 0 desyncs; frames run again after the restart: {rewound}, \
         their inputs lost \
         (the write-behind lag is 100 ms = 6 frames)",
        reports.len()
    );
    Ok(rewound)
}

fn temp_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    std::env::temp_dir().join(format!("garrison-{label}-{}-{nanos}", std::process::id()))
}

/// Frames a kill may lose: the write-behind lag (100 ms, 6 frames) plus one write's time, with
/// room for a loaded machine.
const KILL_BOUND: u32 = 30;

pub fn a_killed_server_resumes_every_match_from_redb() -> Outcome {
    let dir = temp_dir("restart-kill");
    let result = restart(&format!("redb:{}", dir.display()), Stop::Kill)
        .and_then(|reports| check("kill, redb", &reports));
    let _ = std::fs::remove_dir_all(&dir);
    match result? {
        rewound if rewound <= KILL_BOUND => Ok(()),
        rewound => Err(format!("{rewound} frames lost, more than {KILL_BOUND}")),
    }
}

pub fn a_gracefully_restarted_server_loses_no_accepted_input() -> Outcome {
    let dir = temp_dir("restart-graceful");
    let result = restart(&format!("redb:{}", dir.display()), Stop::Graceful)
        .and_then(|reports| check("graceful, redb", &reports));
    let _ = std::fs::remove_dir_all(&dir);
    match result? {
        0 => Ok(()),
        rewound => Err(format!("a graceful restart ran {rewound} frames again")),
    }
}

pub fn a_killed_server_resumes_every_match_from_redis() -> Outcome {
    let Ok(url) = std::env::var("GARRISON_REDIS_URL") else {
        if std::env::var_os("CI").is_some() {
            return Err(
                "CI runs this test against a real Redis: .ci/run sets GARRISON_REDIS_URL".into(),
            );
        }
        println!("  skipped: set GARRISON_REDIS_URL=redis://127.0.0.1:PORT");
        return Ok(());
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let namespace = format!("garrison-restart-{}-{nanos}", std::process::id());
    let reports = restart(&format!("redis:{url}:{namespace}"), Stop::Kill)?;
    match check("kill, redis", &reports)? {
        rewound if rewound <= KILL_BOUND => Ok(()),
        rewound => Err(format!("{rewound} frames lost, more than {KILL_BOUND}")),
    }
}
