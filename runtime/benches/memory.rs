//! Memory per entity, measured as RSS growth: active Garrison entities beside raw ractor actors
//! holding the same state, passivated entities, and a million passivated entities registered.
//!
//! Run with: `cargo bench -p garrison-runtime --bench memory`
//! (`-- --quick` for 100,000 instead of 1,000,000 passivated entities).

use std::time::Duration;

use garrison_protocol::Snapshot;
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig,
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default, Clone)]
struct Player {
    level: u32,
    gold: u64,
    position: (i32, i32),
}

impl Snapshot for Player {
    const SCHEMA: &'static str = "bench.player";
    const VERSION: u16 = 1;
}

enum Msg {
    Ping(oneshot::Sender<()>),
}

// The raw-ractor baseline's message: explicit under ractor's `cluster` feature.
#[cfg(feature = "cluster")]
impl ractor::Message for Msg {}

impl EntityMessage for Msg {
    fn event_type(&self) -> &'static str {
        "ping"
    }
}

struct Players;

impl Entity for Players {
    const KIND: &'static str = "player";
    type Key = u64;
    type State = Player;
    type Message = Msg;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<Player>,
    ) -> Result<Player, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        Msg::Ping(reply): Msg,
        _: &mut Player,
    ) -> Result<(), HandlerError> {
        let _ = reply.send(());
        Ok(())
    }
}

struct RawPlayer;

impl Actor for RawPlayer {
    type Msg = Msg;
    type State = Player;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<Player, ActorProcessingErr> {
        Ok(Player::default())
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        Msg::Ping(reply): Msg,
        _: &mut Player,
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(());
        Ok(())
    }
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return; // `cargo test --benches` smoke-runs benches; this one is a measurement only.
    }
    const ACTIVE: u64 = 10_000;
    let passivated_count: u64 = if quick { 100_000 } else { 1_000_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Raw ractor actors first, as the baseline.
        let before = garrison_tests::bench::rss_bytes();
        let mut actors = Vec::new();
        for _ in 0..ACTIVE {
            let (actor, _) = Actor::spawn(None, RawPlayer, ()).await.unwrap();
            let (reply, answer) = oneshot::channel();
            actor.send_message(Msg::Ping(reply)).unwrap();
            answer.await.unwrap();
            actors.push(actor);
        }
        let raw_per = (garrison_tests::bench::rss_bytes() - before) as f64 / ACTIVE as f64;
        for actor in actors {
            actor.stop(None);
        }

        let config = KindConfig { passivate_after: Some(Duration::from_secs(3600)), ..KindConfig::default() };
        let players = Entities::new(Players, config).unwrap();
        let tree = SupervisorBuilder::new("memory")
            .child(ChildSpec::new("players", players.start()))
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let before = garrison_tests::bench::rss_bytes();
        for key in 0..ACTIVE {
            let (reply, answer) = oneshot::channel();
            assert!(players.send(&key, Msg::Ping(reply)).is_ok());
            answer.await.unwrap();
        }
        let active_per = (garrison_tests::bench::rss_bytes() - before) as f64 / ACTIVE as f64;

        let snapshot = garrison_protocol::snapshot::write(&Player { level: 10, gold: 1_000, position: (3, 4) }).unwrap();
        let before = garrison_tests::bench::rss_bytes();
        for key in ACTIVE..ACTIVE + passivated_count {
            players.register_passivated(key, bytes::Bytes::copy_from_slice(&snapshot));
        }
        let passivated_total = garrison_tests::bench::rss_bytes() - before;
        let passivated_per = passivated_total as f64 / passivated_count as f64;
        println!("memory (RSS growth; one run, same process)");
        println!("  active entity (default 256-message mailbox): {active_per:>8.0} B   raw ractor actor: {raw_per:>8.0} B   ratio {:.2}x", active_per / raw_per);
        println!(
            "  passivated entity: {passivated_per:>6.0} B, of which snapshot {} B ({} registered)",
            snapshot.len(),
            passivated_count
        );
        println!(
            "  {passivated_count} passivated entities: {:.1} MiB; whole process RSS {:.1} MiB",
            passivated_total as f64 / (1 << 20) as f64,
            garrison_tests::bench::rss_bytes() as f64 / (1 << 20) as f64
        );
        tree.stop().await.unwrap();
    });
}
