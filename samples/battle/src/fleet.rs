//! The battle as a fleet of nodes (feature `fleet`): `garrison-battle serve --cluster
//! etcd=URL --store redis://URL` runs one node; the nodes share the shard table on etcd, talk
//! on ractor_cluster and keep their state in Redis.
//!
//! Where each kind lives, and why:
//! - **rooms** are sharded by room id: a room runs on the node that owns its shard, is handed
//!   off when a drain or a newcomer moves the shard, and runs from its snapshot and input log on
//!   another node when its node dies. Its players' sessions are **redirected** to the room's
//!   node ([`Redirect`](garrison_protocol::control::Redirect)): a room pushes 60 frames a
//!   second to each of them, and a push through another node would be one more hop, one more
//!   encode and one more syscall per client per frame, where a redirect costs one reconnect per
//!   match (`cargo bench -p garrison-cluster --bench send` measures a forwarded message against
//!   a local one).
//! - **the matchmaker** is one sharded entity (key 0): players on any node join it by
//!   **forwarding**, a message per join.
//! - **players** live where their player's session is (served by node, not by shard): their
//!   requests never cross nodes, and their seat is in the store, so the node a session moves to
//!   picks it up.
//!
//! A node's own sessions follow their rooms: when a table moves a room away, every player seated
//! in it here is told [`PlayerMsg::Moved`] and redirected to the room's new node.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use dashmap::DashMap;
use garrison_cluster::{
    DEFAULT_SHARDS, Table,
    etcd::{Fleet, FleetConfig, Members, NodeInfo},
    fleet::{Kinds, KindsStats, Serving, Sharded},
    member::{self, Member},
    node::{Node, NodeConfig},
};
use garrison_protocol::{Schema, Validated, messages};
use garrison_runtime::{Entities, SessionId};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    matchmaker::{Matchmaker, MatchmakerMsg},
    player::{Player, PlayerMsg},
    reach::{Home, Reach, Reaching},
    room::{Room, RoomMsg},
};

/// A room's start, between nodes.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct StartRoom {
    /// Player ids, by slot.
    pub players: Vec<u64>,
    /// The node each player's session is on, by slot.
    pub nodes: Vec<String>,
    /// The world's seed.
    pub seed: u64,
}

/// A player's input for its room, between nodes.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomInput {
    /// The player's slot.
    pub slot: u8,
    /// The frame it is stamped for.
    pub frame: u32,
    /// The buttons.
    pub buttons: u8,
}

/// A player's resume, between nodes.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeAt {
    /// The player's slot.
    pub slot: u8,
    /// The first frame it has not simulated.
    pub from: u32,
}

/// A slot of a room, between nodes.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOf {
    /// The slot.
    pub slot: u8,
}

/// What reaches a room from another node.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub enum RoomWire {
    /// [`RoomMsg::Start`].
    Start(StartRoom),
    /// [`RoomMsg::Input`].
    Input(RoomInput),
    /// [`RoomMsg::Resume`].
    Resume(ResumeAt),
    /// [`RoomMsg::Arrived`].
    Arrived(SlotOf),
    /// [`RoomMsg::Left`].
    Left(SlotOf),
}

/// A player joining the matchmaker from a node.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct JoinAt {
    /// The player.
    pub player: u64,
    /// The node its session is on.
    pub node: String,
}

/// A player, between nodes.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerOf {
    /// The player.
    pub player: u64,
}

/// What reaches the matchmaker from another node.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub enum MatchmakerWire {
    /// [`MatchmakerMsg::Join`].
    Join(JoinAt),
    /// [`MatchmakerMsg::Leave`].
    Leave(PlayerOf),
}

/// A player's seat, told by its room to the node its session is on.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seated {
    /// The room.
    pub room: u64,
    /// The slot.
    pub slot: u8,
}

messages! {
    /// What the battle's kinds say to each other between nodes (never sent to a client).
    pub enum FleetMessage {
        0x0190 => Room(RoomWire),
        0x0191 => Matchmaker(MatchmakerWire),
        0x0192 => Seated(Seated),
    }
}

fn room_from(wire: Validated<RoomWire>) -> RoomMsg {
    match &*wire {
        ArchivedRoomWire::Start(start) => RoomMsg::Start {
            players: start
                .players
                .iter()
                .map(|player| player.to_native())
                .collect(),
            nodes: start
                .nodes
                .iter()
                .map(|node| node.as_str().to_owned())
                .collect(),
            seed: start.seed.to_native(),
        },
        ArchivedRoomWire::Input(input) => RoomMsg::Input {
            slot: input.slot,
            frame: input.frame.to_native(),
            buttons: input.buttons,
        },
        ArchivedRoomWire::Resume(resume) => RoomMsg::Resume {
            slot: resume.slot,
            from: resume.from.to_native(),
        },
        ArchivedRoomWire::Arrived(arrived) => RoomMsg::Arrived { slot: arrived.slot },
        ArchivedRoomWire::Left(left) => RoomMsg::Left { slot: left.slot },
    }
}

/// The wire form of a room message that may cross nodes (`None`: its clock, fault injection,
/// a spectator's watch: they belong to the node they happen on).
fn room_wire(message: RoomMsg) -> Option<RoomWire> {
    Some(match message {
        RoomMsg::Start {
            players,
            nodes,
            seed,
        } => RoomWire::Start(StartRoom {
            players,
            nodes,
            seed,
        }),
        RoomMsg::Input {
            slot,
            frame,
            buttons,
        } => RoomWire::Input(RoomInput {
            slot,
            frame,
            buttons,
        }),
        RoomMsg::Resume { slot, from } => RoomWire::Resume(ResumeAt { slot, from }),
        RoomMsg::Arrived { slot } => RoomWire::Arrived(SlotOf { slot }),
        RoomMsg::Left { slot } => RoomWire::Left(SlotOf { slot }),
        RoomMsg::Tick | RoomMsg::Crash | RoomMsg::Watch { .. } => return None,
    })
}

fn matchmaker_from(wire: Validated<MatchmakerWire>) -> MatchmakerMsg {
    match &*wire {
        ArchivedMatchmakerWire::Join(join) => MatchmakerMsg::Join {
            session: SessionId(join.player.to_native()),
            node: join.node.as_str().to_owned(),
        },
        ArchivedMatchmakerWire::Leave(leave) => {
            MatchmakerMsg::Leave(SessionId(leave.player.to_native()))
        }
    }
}

fn matchmaker_wire(message: MatchmakerMsg) -> Option<MatchmakerWire> {
    Some(match message {
        MatchmakerMsg::Join { session, node } => MatchmakerWire::Join(JoinAt {
            player: session.0,
            node,
        }),
        MatchmakerMsg::Leave(session) => MatchmakerWire::Leave(PlayerOf { player: session.0 }),
    })
}

/// How the battle's modules reach each other across the fleet.
pub struct Routes {
    node: Arc<Node>,
    rooms: Sharded<Room, RoomWire>,
    matchmakers: Sharded<Matchmaker, MatchmakerWire>,
    players: Sharded<Player, Seated>,
    members: OnceLock<watch::Receiver<Arc<Members>>>,
}

impl Reach for Routes {
    fn node(&self) -> &str {
        self.node.id()
    }

    fn room(&self, room: u64, message: RoomMsg) -> Result<(), String> {
        let wire = room_wire(message).ok_or("a room's own message cannot leave its node")?;
        self.rooms
            .send(&room, &wire, current_trace())
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn matchmaker(&self, message: MatchmakerMsg) -> Result<(), String> {
        let wire = matchmaker_wire(message).ok_or("not a matchmaker message")?;
        self.matchmakers
            .send(&0, &wire, current_trace())
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn place(&self, node: &str, player: u64, room: u64, slot: u8) -> Result<(), String> {
        self.players
            .send_to(node, &player, &Seated { room, slot }, current_trace())
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn home(&self, room: u64) -> Home {
        match self.node.owner_of("room", room.to_string().as_bytes()) {
            Some((owner, _)) if owner == self.node.id() => Home::Here,
            // A node this one cannot reach is likely gone (its lease not expired yet): nobody
            // should be sent there.
            Some((owner, _)) if !self.node.reaches(&owner) => Home::Unknown,
            Some((owner, _)) => self
                .members
                .get()
                .and_then(|members| {
                    members
                        .borrow()
                        .get(&owner)
                        .map(|info| info.address.clone())
                })
                .filter(|address| !address.is_empty())
                .map_or(Home::Unknown, |address| Home::There {
                    node: owner,
                    address,
                }),
            None => Home::Unknown,
        }
    }

    fn rooms_seat_players(&self) -> bool {
        true
    }
}

/// The trace context of the span the sender is in, so the handling on another node joins it.
fn current_trace() -> Option<garrison_protocol::TraceContext> {
    garrison_runtime::telemetry::trace_context(&tracing::Span::current())
}

/// How to run a node of the fleet.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// etcd's client URLs.
    pub etcd: Vec<String>,
    /// The fleet's name in etcd (several fleets may share one etcd).
    pub namespace: String,
    /// This node's id (stable across restarts of the same node).
    pub node_id: String,
    /// Where peers reach this node on ractor_cluster (port 0: any free one).
    pub peer_listen: SocketAddr,
    /// The gateway address announced to the fleet, which players are redirected to (the
    /// gateway's own listener address by default).
    pub advertise: Option<SocketAddr>,
    /// The secret every node of the fleet shares.
    pub cookie: String,
    /// Where this node writes its activation log (one line per room or matchmaker that
    /// activated or left here), if anywhere.
    pub activation_log: Option<PathBuf>,
    /// The etcd lease's time to live: how long a silent node keeps its shards.
    pub lease_ttl: Duration,
}

/// What [`prepare`] sets up before the modules are served.
pub struct Prepared {
    settings: FleetSettings,
    kinds: Kinds,
    node: Arc<Node>,
    routes: Arc<Routes>,
}

impl Prepared {
    /// How the modules reach each other through this node.
    pub fn reach(&self) -> Reaching {
        self.routes.clone()
    }
}

/// Serves the three kinds to the fleet and starts this node on ractor_cluster.
///
/// # Errors
/// When the node cannot listen for its peers or the activation log cannot be opened.
pub async fn prepare(
    settings: FleetSettings,
    players: &Entities<Player>,
    matchmakers: &Entities<Matchmaker>,
    rooms: &Entities<Room>,
) -> Result<Prepared, Box<dyn std::error::Error + Send + Sync>> {
    let kinds = Kinds::new();
    kinds.serve_here(players.clone(), |seated: Validated<Seated>| {
        PlayerMsg::Placed {
            room: seated.room.to_native(),
            slot: seated.slot,
        }
    });
    kinds.serve_with(
        matchmakers.clone(),
        matchmaker_from,
        Serving {
            portable: Some(Box::new(matchmaker_wire)),
            run_on_arrival: false,
        },
    );
    kinds.serve_with(
        rooms.clone(),
        room_from,
        Serving {
            portable: Some(Box::new(room_wire)),
            // A room's clock runs whether or not its players are back: a room taken over from
            // a dead node plays on at once.
            run_on_arrival: true,
        },
    );
    if let Some(path) = &settings.activation_log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let file = Mutex::new(std::io::LineWriter::new(file));
        kinds.activation_log(move |record| {
            let line = record.to_string();
            let mut file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = writeln!(file, "{line}") {
                tracing::warn!(%error, "the activation log could not be written");
            }
        });
    }
    let node = Arc::new(
        Node::start(
            NodeConfig {
                id: settings.node_id.clone(),
                cookie: settings.cookie.clone(),
                listen: settings.peer_listen.ip(),
                port: settings.peer_listen.port(),
                shards: DEFAULT_SHARDS,
            },
            Table::empty(DEFAULT_SHARDS),
            kinds.clone(),
        )
        .await?,
    );
    let routes = Arc::new(Routes {
        rooms: Sharded::new(node.clone()),
        matchmakers: Sharded::new(node.clone()),
        players: Sharded::new(node.clone()),
        node: node.clone(),
        members: OnceLock::new(),
    });
    Ok(Prepared {
        settings,
        kinds,
        node,
        routes,
    })
}

/// A node at work in its fleet, beside its battle server.
pub struct Running {
    fleet: Fleet,
    node: Arc<Node>,
    kinds: Kinds,
    member: Member,
    follower: tokio::task::JoinHandle<()>,
    seated: Arc<DashMap<u64, u64>>,
    joined: Instant,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("node", &self.node.id())
            .finish_non_exhaustive()
    }
}

/// Joins the fleet once the gateway listens on `gateway`: the node announces where its players
/// and its peers reach it, acts on the fleet's table, and moves its seated players with their
/// rooms.
///
/// # Errors
/// When etcd cannot be reached or another live node has this id.
pub async fn join(
    prepared: Prepared,
    gateway: SocketAddr,
    seated: Arc<DashMap<u64, u64>>,
    players: Entities<Player>,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let Prepared {
        settings,
        kinds,
        node,
        routes,
    } = prepared;
    let info = NodeInfo {
        id: settings.node_id.clone(),
        address: settings.advertise.unwrap_or(gateway).to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        peer: node.addr().to_string(),
        draining: false,
    };
    let fleet = Fleet::join(FleetConfig {
        lease_ttl: settings.lease_ttl,
        // A restarted node waits for its killed predecessor's lease to run out.
        join_wait: settings.lease_ttl * 2,
        ..FleetConfig::new(settings.etcd.clone(), &settings.namespace, info)
    })
    .await?;
    let _ = routes.members.set(fleet.subscribe_members());
    let member = member::run(&fleet, node.clone(), kinds.clone());
    // Every table: the players seated here whose room runs elsewhere now go after it.
    let mut tables = fleet.subscribe();
    let (following, watching, moving) = (routes.clone(), node.clone(), seated.clone());
    let follower = tokio::spawn(async move {
        loop {
            if tables.changed().await.is_err() {
                return;
            }
            let version = tables.borrow_and_update().version;
            // The node acts on a table once the member gave it: wait for that one (a bounded
            // poll; the member applies a table within microseconds of reading it).
            for _ in 0..200 {
                if watching.table().version >= version {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let away: Vec<u64> = moving
                .iter()
                .filter(|seat| following.home(*seat.value()) != Home::Here)
                .map(|seat| *seat.key())
                .collect();
            for player in away {
                let _ = players.send(&player, PlayerMsg::Moved);
            }
        }
    });
    Ok(Running {
        fleet,
        node,
        kinds,
        member,
        follower,
        seated,
        joined: Instant::now(),
    })
}

/// What a node of the fleet did, for the `cluster` demo and the tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeReport {
    /// Shards the node owns now.
    pub shards: usize,
    /// What its kinds did with their shards.
    pub kinds: KindsStats,
    /// Messages forwarded to peers, received from peers, and relayed.
    pub forwarded: u64,
    /// Messages received from peers.
    pub received: u64,
}

impl Running {
    /// This node's id.
    pub fn id(&self) -> &str {
        self.node.id()
    }

    /// What the node did so far.
    pub fn report(&self) -> NodeReport {
        let stats = self.node.stats();
        NodeReport {
            shards: self.node.table().owned_by(self.node.id()).count(),
            kinds: self.kinds.stats(),
            forwarded: stats.forwarded,
            received: stats.received,
        }
    }

    /// How long since the node joined.
    pub fn uptime(&self) -> Duration {
        self.joined.elapsed()
    }

    /// Hands every shard over to the other nodes (a planned stop): marks the node draining,
    /// waits until it owns nothing, its hand-offs are done and its seated players are
    /// redirected (at most `timeout`), and returns how long that took; `None` when it did not
    /// finish in time, or there is no other node to take the shards.
    pub async fn drain(&self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let others = self
            .fleet
            .members()
            .values()
            .any(|info| info.id != self.node.id() && !info.draining);
        if !others {
            tracing::info!("no other node to hand the shards to: nothing to drain");
            return None;
        }
        if let Err(error) = self.fleet.drain().await {
            tracing::error!(%error, "the drain could not be announced");
            return None;
        }
        loop {
            // The node's table moves on only after its kinds started handing the shards off
            // (`Inbox::table_changed` runs first): owning nothing with no hand-off under way
            // means done.
            let owns_nothing = self.node.table().owned_by(self.node.id()).next().is_none();
            // Its seated players are on their way to their rooms' new nodes (redirected: a
            // redirected player leaves `seated`), not left to the gateway's closing. One whose
            // room's new node is not known yet is still waiting for its redirect.
            let redirected = self.seated.is_empty();
            if owns_nothing && self.kinds.stats().handing == 0 && redirected {
                return Some(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return None;
            }
            // Polled: a drain is a rare, bounded wait of its own.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Leaves the fleet (its lease revoked: its key and its election go at once) and stops
    /// the node.
    pub async fn leave(self) {
        self.follower.abort();
        drop(self.member);
        if let Err(error) = self.fleet.leave().await {
            tracing::warn!(%error, "the lease could not be revoked: it expires on its own");
        }
        self.node.stop().await;
    }
}
