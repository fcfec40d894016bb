//! The gateway under a low open-file limit: past what the limit allows, players are told the
//! server is full (`Close 32`) instead of waiting unanswered in the listen backlog, and a server
//! whose descriptors are all used still answers. The server is a child process with its limit
//! lowered to 200; the clients are this process.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Protocol,
    control::{Control, Hello},
};
use garrison_runtime::{
    Sessions,
    gateway::{GatewayBuilder, GatewayConfig, ticket},
};
use garrison_tests::wire::TestMessage;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::Outcome;

/// The variable naming a child's role.
pub const CHILD_VAR: &str = "GARRISON_PROCESS_CHILD";
const KEY: &[u8] = b"fd-limit-key";
/// The child's open-file limit (soft and hard).
const LIMIT: u64 = 200;
const DEADLINE: Duration = Duration::from_secs(10);

/// A child gateway: it prints `ready <address> <max_connections>` and serves until its stdin
/// closes.
pub fn child(role: &str) {
    rlimit::setrlimit(rlimit::Resource::NOFILE, LIMIT, LIMIT).expect("lower the open-file limit");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut config = GatewayConfig::new(KEY);
        config.tcp = Some("127.0.0.1:0".parse().unwrap());
        config.event_loops = 1;
        let gateway =
            GatewayBuilder::<TestMessage>::new(config, Arc::new(Sessions::new()), |_, _| Ok(()))
                .start()
                .expect("the gateway starts");
        let mut hoard = Vec::new();
        if role == "exhausted" {
            // Something else in the process takes every descriptor left.
            while let Ok(file) = std::fs::File::open("/dev/null") {
                hoard.push(file);
            }
        }
        println!(
            "ready {} {}",
            gateway.tcp_addr().expect("a TCP listener"),
            gateway.max_connections()
        );
        // Serve until the parent closes our stdin (or kills us).
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        drop(hoard);
        gateway.shutdown().await;
    });
}

/// A running child gateway, killed by its pid when dropped.
struct Server {
    child: Child,
    address: SocketAddr,
    max_connections: usize,
}

impl Server {
    fn start(role: &str) -> Result<Server, String> {
        let mut child = Command::new(std::env::current_exe().map_err(|error| error.to_string())?)
            .env(CHILD_VAR, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| format!("spawn the server: {error}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|error| error.to_string())?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            let _ = child.kill();
            return Err(format!("the server did not start: {line:?}"));
        }
        let address = words
            .next()
            .and_then(|address| address.parse().ok())
            .ok_or("no address")?;
        let max_connections = words
            .next()
            .and_then(|max| max.parse().ok())
            .ok_or("no limit")?;
        Ok(Server {
            child,
            address,
            max_connections,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin asks it to stop; the kill (by pid) makes sure.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accept_all() -> DecodeConfig {
    DecodeConfig {
        known_kind: |_| true,
        ..DecodeConfig::default()
    }
}

/// What a client heard first: a `Welcome`, or a `Close` with its code and reason.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Welcome,
    Close(u16, String),
}

async fn first_answer(client: &mut Framed<TcpStream, FrameCodec>) -> Result<Answer, String> {
    let frame: Frame = tokio::time::timeout(DEADLINE, client.next())
        .await
        .map_err(|_| "no answer: the connection waits unserved".to_owned())?
        .ok_or("the stream ended without an answer")?
        .map_err(|error| format!("the connection failed: {error}"))?;
    match Control::validate(frame).map_err(|error| error.to_string())? {
        Control::Welcome(_) => Ok(Answer::Welcome),
        Control::Close(close) => Ok(Answer::Close(
            close.code.to_native(),
            close.reason.to_string(),
        )),
        other => Err(format!("unexpected {other:?}")),
    }
}

async fn connect(
    address: SocketAddr,
    player: Option<u64>,
) -> Result<Framed<TcpStream, FrameCodec>, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let mut client = Framed::new(stream, FrameCodec::new(accept_all()));
    if let Some(player) = player {
        let hello = Hello {
            ticket: ticket::mint(KEY, player, ticket::unix_now() + 60),
            layout: 0,
        };
        let frame = garrison_protocol::encode_frame(&hello, FrameMeta::default())
            .map_err(|error| error.to_string())?;
        client
            .send(frame)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(client)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // The clients need more descriptors than the server has: raise ours.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
}

pub fn connections_past_the_open_file_limit_are_told_the_server_is_full() -> Outcome {
    let server = Server::start("cap")?;
    // 200 descriptors, a quarter kept in reserve: 150 connections.
    if server.max_connections != 150 {
        return Err(format!(
            "the gateway serves {} connections under a limit of {LIMIT}, expected 150",
            server.max_connections
        ));
    }
    runtime()?.block_on(async {
        let mut welcomed = Vec::new();
        let mut refused = 0;
        for player in 1..=server.max_connections as u64 + 20 {
            let mut client = connect(server.address, Some(player)).await?;
            match first_answer(&mut client).await? {
                Answer::Welcome => welcomed.push(client),
                Answer::Close(32, reason) if reason.contains("limit of 150 connections") => {
                    refused += 1;
                }
                other => return Err(format!("player {player}: {other:?}")),
            }
        }
        if (welcomed.len(), refused) != (150, 20) {
            return Err(format!(
                "{} welcomed and {refused} refused, expected 150 and 20",
                welcomed.len()
            ));
        }
        // Players leave; the next one gets in (once the server has seen them go).
        welcomed.truncate(140);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut client = connect(server.address, Some(1_000)).await?;
            match first_answer(&mut client).await? {
                Answer::Welcome => return Ok(()),
                Answer::Close(32, _) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return Err(format!("after ten left: {other:?}")),
            }
        }
    })
}

pub fn a_server_out_of_descriptors_still_answers_server_full() -> Outcome {
    let server = Server::start("exhausted")?;
    runtime()?.block_on(async {
        for round in 0..5 {
            // A client that says nothing: the server must answer all the same.
            let mut client = connect(server.address, None).await?;
            match first_answer(&mut client).await? {
                Answer::Close(32, reason) if reason.contains("out of connection descriptors") => {}
                other => return Err(format!("round {round}: {other:?}")),
            }
            match tokio::time::timeout(DEADLINE, client.next()).await {
                Ok(None) => {}
                other => return Err(format!("round {round}: expected the end, got {other:?}")),
            }
        }
        Ok(())
    })
}
