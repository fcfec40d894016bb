//! The I/O limit beside the battle server: the same clients, inputs and broadcast bytes against
//! `garrison-battle serve` and against a minimal tokio server written here (no game, no actors,
//! no checkpoint: it groups connections into rooms of eight, decodes each input, and every 1/60 s
//! writes each player the frame's compact inputs), each server alone on core 0, the load on
//! core 1. It prints each server's CPU per client-frame, read from `/proc/PID/stat`, and the
//! ratio: what the game, the actors and the runtime cost per client-frame above reading and
//! writing the same bytes.
//!
//! `cargo bench -p garrison-battle --bench io_limit -- [--clients N] [--seconds S] [--rounds R]
//! [--server PATH]` (default 400 clients, 6 s measured after 2 s of warm-up, 3 rounds: the two
//! servers alternate and the median ratio is the figure; `--server` runs another build of
//! `garrison-battle`, to compare two commits in one sitting). Loopback only; each server is a
//! child process, stopped by its pid.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use garrison_battle::{
    packed,
    process::ServerProcess,
    proto::{FrameInputs, Join, MatchStart, PlayerInput, Updates},
    run::DEMO_KEY,
};
use garrison_protocol::{
    DecodeConfig, FrameCodec, FrameMeta, Message,
    control::{Hello, Welcome},
    ticket,
};
use garrison_runtime::clock::cpu_seconds_of;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
};
use tokio_util::codec::{Framed, FramedRead};

/// Set in a child process: it runs the baseline server instead of the bench.
const BASELINE: &str = "GARRISON_IO_BASELINE";
/// Set once the bench runs pinned to core 1.
const PINNED: &str = "GARRISON_IO_PINNED";
const ROOM: usize = 8;
const TICK: Duration = Duration::from_micros(16_667);
const INPUT_DELAY: u32 = 3;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    if std::env::var_os(BASELINE).is_some() {
        return baseline_main();
    }
    let mut clients = 400u64;
    let mut seconds = 6u64;
    let mut rounds = 3u32;
    let mut server = env!("CARGO_BIN_EXE_garrison-battle").to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clients" => clients = args.next().ok_or("--clients N")?.parse()?,
            "--seconds" => seconds = args.next().ok_or("--seconds S")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse::<u32>()?.max(1),
            "--server" => server = args.next().ok_or("--server PATH")?,
            // `cargo bench` passes `--bench`; nothing else is ours.
            _ => {}
        }
    }
    let taskset = Command::new("taskset").arg("-V").output().is_ok();
    if taskset && std::env::var_os(PINNED).is_none() {
        // The load on core 1, each server on core 0.
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe()?)
            .args(std::env::args().skip(1))
            .env(PINNED, "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let on_core_0 = |program: &str| {
        if taskset {
            let mut command = Command::new("taskset");
            command.args(["-c", "0", program]);
            command
        } else {
            Command::new(program)
        }
    };
    let mut ours = on_core_0(&server);
    ours.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--memory-only",
        "--match-seconds",
        "600",
        "--overload",
        "none",
    ]);
    let exe = std::env::current_exe()?;
    let mut baseline = on_core_0(exe.to_str().ok_or("a non-UTF-8 path")?);
    baseline.env(BASELINE, "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let warm_up = Duration::from_secs(2);
    let window = Duration::from_secs(seconds);
    println!(
        "io_limit: {clients} clients in rooms of {ROOM} at 60 Hz, {seconds} s measured after {} s{}",
        warm_up.as_secs(),
        if taskset {
            "; servers on core 0, load on core 1"
        } else {
            " (no taskset: unpinned)"
        }
    );
    println!(
        "round | server         | client-frames/s | per client | CPU cores | CPU us per client-frame"
    );
    // The two servers alternate, `rounds` times: the machine's drift over a run reaches both,
    // and the median of the rounds' ratios is the figure.
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let mut cost = Vec::new();
        for (name, command) in [("garrison", &mut ours), ("tokio baseline", &mut baseline)] {
            let server = ServerProcess::start(command)?;
            let measured = runtime.block_on(load(&server, clients, warm_up, window));
            let pid = server.id();
            server.kill()?;
            let (frames, cpu) = measured?;
            let per_second = frames as f64 / window.as_secs_f64();
            let us = cpu / frames.max(1) as f64 * 1e6;
            println!(
                "{round:>5} | {name:<14} | {per_second:>15.0} | {:>10.1} | {:>9.2} | {us:>23.2}",
                per_second / clients as f64,
                cpu / window.as_secs_f64(),
            );
            if frames == 0 {
                return Err(format!("{name} (pid {pid}) delivered no frame").into());
            }
            cost.push(us);
        }
        ratios.push(cost[0] / cost[1]);
    }
    let listed: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.2}x")).collect();
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    let median = if ratios.len() % 2 == 0 {
        (ratios[middle - 1] + ratios[middle]) / 2.0
    } else {
        ratios[middle]
    };
    println!(
        "ratio garrison / tokio baseline, CPU per client-frame: {median:.2}x, the median of {} rounds ({}) (goal <= 1.5x)",
        ratios.len(),
        listed.join(", "),
    );
    Ok(())
}

/// Runs `clients` clients against `server` and returns the frames they received and the
/// server's CPU seconds over `window`, after `warm_up`.
async fn load(
    server: &ServerProcess,
    clients: u64,
    warm_up: Duration,
    window: Duration,
) -> Result<(u64, f64), Error> {
    let address = server.address();
    let start = Instant::now() + warm_up;
    let end = start + window;
    let frames = Arc::new(AtomicU64::new(0));
    // At most 64 clients between connecting and their first frame: a connect storm beyond a
    // listener's backlog turns into SYN cookies and resets, which neither server is measured on.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (1..=clients)
        .map(|player| {
            let connecting = connecting.clone();
            let frames = frames.clone();
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await?;
                client(address, player, start, end, frames, permit).await
            })
        })
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = cpu_seconds_of(server.id()).ok_or("no CPU figure for the server")?;
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = cpu_seconds_of(server.id()).ok_or("no CPU figure for the server")?;
    for task in tasks {
        task.await??;
    }
    Ok((frames.load(Ordering::Relaxed), cpu_end - cpu_start))
}

/// One player: logs in, joins, and answers every frame with its input for the frame the delay
/// stamps, changing buttons every 10 frames (6 times a second, as the bots do by default).
async fn client(
    address: SocketAddr,
    player: u64,
    start: Instant,
    end: Instant,
    frames: Arc<AtomicU64>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), Error> {
    let mut connecting = Some(connecting);
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut connection = Framed::new(
        stream,
        FrameCodec::new(DecodeConfig {
            known_kind: |_| true,
            ..DecodeConfig::default()
        }),
    );
    let mut codec = FrameCodec::default();
    let ticket = ticket::mint(DEMO_KEY.as_bytes(), player, ticket::unix_now() + 3600);
    connection
        .send(codec.encode_frame(
            &Hello {
                ticket,
                layout: garrison_battle::proto::layout_hash(),
            },
            FrameMeta::default(),
        )?)
        .await?;
    let join = Join {
        mode: 0,
        updates: Updates::Inputs,
    };
    connection
        .send(codec.encode_frame(&join, FrameMeta::default())?)
        .await?;
    loop {
        let frame = match tokio::time::timeout_at(end.into(), connection.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => return Err(format!("player {player}: the server closed").into()),
            Ok(Some(frame)) => frame?,
        };
        // Connected and answered: the next client may connect.
        connecting.take();
        if frame.kind() != FrameInputs::KIND {
            continue;
        }
        let now = Instant::now();
        if now >= start && now < end {
            frames.fetch_add(1, Ordering::Relaxed);
        }
        let next = frame.header().seq + 1;
        let input = PlayerInput {
            frame: next + INPUT_DELAY,
            buttons: ((next / 10) as u8 ^ player as u8) & 0x1f,
        };
        connection
            .send(codec.encode_frame(&input, FrameMeta::default())?)
            .await?;
    }
}

/// The baseline server's process: prints `listening on ADDRESS` and serves until killed.
fn baseline_main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        // Players waiting for a room: their writers and where to tell them their seat.
        let mut waiting: Vec<(OwnedWriteHalf, Seat)> = Vec::with_capacity(ROOM);
        let mut next_room = 0u64;
        let (seated_tx, mut seated_rx) = tokio::sync::mpsc::channel(1024);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    stream.set_nodelay(true)?;
                    tokio::spawn(connection(stream, seated_tx.clone()));
                }
                Some(joined) = seated_rx.recv() => {
                    waiting.push(joined);
                    if waiting.len() == ROOM {
                        next_room += 1;
                        let inputs: Arc<[AtomicU8; ROOM]> = Arc::new(Default::default());
                        let mut writers = Vec::with_capacity(ROOM);
                        for (slot, (writer, seat)) in waiting.drain(..).enumerate() {
                            let _ = seat.send((slot, inputs.clone()));
                            writers.push(writer);
                        }
                        tokio::spawn(room(next_room, writers, inputs));
                    }
                }
            }
        }
    })
}

/// Where a waiting player hears its slot and its room's inputs.
type Seat = tokio::sync::oneshot::Sender<(usize, Arc<[AtomicU8; ROOM]>)>;

/// One connection's reader: the hello (answered with a `Welcome`), the join (which queues its
/// writer for a room), then its inputs, each decoded and stored for its slot.
async fn connection(
    stream: TcpStream,
    seated: tokio::sync::mpsc::Sender<(OwnedWriteHalf, Seat)>,
) -> Result<(), Error> {
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(
        read,
        FrameCodec::new(DecodeConfig {
            known_kind: |_| true,
            ..DecodeConfig::default()
        }),
    );
    let mut writer = Some(write_welcome(&mut write).await.map(|()| write)?);
    let mut seat = None;
    let mut joined = None;
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        if frame.kind() == Join::KIND {
            if let Some(writer) = writer.take() {
                let (seat_tx, seat_rx) = tokio::sync::oneshot::channel();
                seated.send((writer, seat_tx)).await?;
                joined = Some(seat_rx);
            }
        } else if frame.kind() == PlayerInput::KIND {
            if seat.is_none()
                && let Some(seat_rx) = joined.take()
            {
                seat = Some(seat_rx.await?);
            }
            let input = frame.validate::<PlayerInput>()?;
            if let Some((slot, inputs)) = &seat {
                inputs[*slot].store(input.buttons, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

async fn write_welcome(write: &mut OwnedWriteHalf) -> Result<(), Error> {
    let welcome = garrison_protocol::encode_frame(
        &Welcome {
            session: 0,
            resumed: false,
        },
        FrameMeta::default(),
    )?;
    write.write_all(welcome.wire()).await?;
    Ok(())
}

/// A room: the match start, then every tick the frame's inputs, packed as the battle server
/// packs them, encoded once and written to each player.
async fn room(room: u64, mut writers: Vec<OwnedWriteHalf>, inputs: Arc<[AtomicU8; ROOM]>) {
    let world = garrison_battle::sim::World::new(room, ROOM);
    for (slot, writer) in writers.iter_mut().enumerate() {
        let start = MatchStart {
            room,
            slot: slot as u8,
            players: ROOM as u8,
            seed: room,
            frame: 0,
            input_delay: INPUT_DELAY,
            tick_micros: TICK.as_micros() as u32,
            units: world.units.clone(),
            rng: world.rng,
        };
        let Ok(frame) = garrison_protocol::encode_frame(&start, FrameMeta::default()) else {
            return;
        };
        let _ = writer.write_all(frame.wire()).await;
    }
    let mut clock = tokio::time::interval(TICK);
    let mut previous = [0u8; ROOM];
    let mut record = Vec::with_capacity(16);
    for frame in 0u32.. {
        clock.tick().await;
        let now: [u8; ROOM] = std::array::from_fn(|slot| inputs[slot].load(Ordering::Relaxed));
        record.clear();
        // A checksum every 30 frames, as the battle server sends (the bytes, not the game).
        let checksum = (frame + 1).is_multiple_of(30).then_some(u64::from(frame));
        packed::pack(&previous, &now, 0, checksum, false, &mut record);
        previous = now;
        let update = FrameInputs {
            packed: record.clone(),
        };
        let Ok(encoded) = garrison_protocol::encode_frame(&update, FrameMeta::seq(frame)) else {
            return;
        };
        let mut open = 0;
        for writer in &mut writers {
            if writer.write_all(encoded.wire()).await.is_ok() {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
    }
}
