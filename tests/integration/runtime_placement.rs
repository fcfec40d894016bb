//! Where entities run (`KindConfig::placement`): a session's entity placed on its connection's
//! event loop runs on that connection's thread, stays there across a crash with its state, and
//! keeps the loop running after the gateway shuts down until its tree stops it; an entity on
//! the tree never runs on a loop, unless a gateway hosts its kind: then its activations take
//! the gateway's loops in turn while the gateway runs.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use garrison_protocol::{FrameCodec, FrameMeta, Protocol, Snapshot, control::Control};
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, HandlerError, KindConfig, Placement, Sessions,
    gateway::{Gateway, GatewayBuilder, GatewayConfig},
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder, SupervisorRef};
use garrison_tests::{
    probe::eventually,
    wire::{Input, TestMessage},
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::gateway_hostile::{KEY, encode, hello};

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Archive, Serialize, Deserialize, Default)]
struct Handled(u32);

impl Snapshot for Handled {
    const SCHEMA: &'static str = "test.placed";
    const VERSION: u16 = 1;
}

/// The calling thread, as `/proc` names it (`PID/task/TID`): it exists while the thread runs.
fn this_thread() -> PathBuf {
    PathBuf::from("/proc").join(std::fs::read_link("/proc/thread-self").unwrap())
}

/// One handled input: the thread it ran on, the count after it, and the incarnation.
#[derive(Clone, Debug)]
struct Ran {
    entity: u64,
    thread: PathBuf,
    handled: u32,
    incarnation: u64,
}

/// Counts its inputs and answers each with the count; an input with x = 13 crashes it.
struct Pilot {
    ran: Arc<Mutex<Vec<Ran>>>,
}

impl Entity for Pilot {
    const KIND: &'static str = "placed-pilot";
    type Key = u64;
    type State = Handled;
    type Message = TestMessage;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<Handled>,
    ) -> Result<Handled, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: TestMessage,
        handled: &mut Handled,
    ) -> Result<(), HandlerError> {
        let TestMessage::Input(input) = &message else {
            return Ok(());
        };
        assert_ne!(input.x.to_native(), 13, "told to crash");
        handled.0 += 1;
        self.ran.lock().unwrap().push(Ran {
            entity: *context.key(),
            thread: this_thread(),
            handled: handled.0,
            incarnation: context.incarnation(),
        });
        if context.is_request() {
            context.reply(&Input {
                entity: *context.key(),
                x: input.x.to_native(),
                y: 0,
                seq: input.seq.to_native(),
                tick: handled.0,
            })?;
        }
        Ok(())
    }
}

struct World {
    gateway: Gateway<TestMessage>,
    tree: SupervisorRef,
    pilots: Entities<Pilot>,
    /// Every input the pilots handled, in order.
    ran: Arc<Mutex<Vec<Ran>>>,
    /// The thread each routed frame was routed on.
    routed: Arc<Mutex<Vec<PathBuf>>>,
}

async fn world(placement: Placement) -> World {
    world_hosting(placement, false).await
}

/// A world whose gateway hosts the pilots' kind when `hosted`.
async fn world_hosting(placement: Placement, hosted: bool) -> World {
    let sessions = Arc::new(Sessions::new());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let pilots = Entities::declare(KindConfig {
        placement,
        ..KindConfig::default()
    })
    .unwrap();
    pilots.serve(Pilot { ran: ran.clone() }).unwrap();
    let tree = SupervisorBuilder::new("placement")
        .child(ChildSpec::new("pilots", pilots.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut config = GatewayConfig::new(KEY);
    config.tcp = Some("127.0.0.1:0".parse().unwrap());
    config.event_loops = 2;
    let routed = Arc::new(Mutex::new(Vec::new()));
    let routing = routed.clone();
    let bound = pilots.clone();
    let builder = GatewayBuilder::<TestMessage>::new(config, sessions, move |session, message| {
        routing.lock().unwrap().push(this_thread());
        session
            .send::<Pilot>(message)
            .map_err(|refused| refused.reason)
    })
    .on_session(move |start| {
        start.session.bind(&bound, start.session.player());
        Ok(())
    });
    let builder = if hosted {
        builder.hosts(&pilots)
    } else {
        builder
    };
    let gateway = builder.start().unwrap();
    World {
        gateway,
        tree,
        pilots,
        ran,
        routed,
    }
}

type Client = Framed<TcpStream, FrameCodec>;

async fn client(world: &World, player: u64) -> Client {
    let stream = TcpStream::connect(world.gateway.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut client = Framed::new(stream, FrameCodec::default());
    client
        .get_mut()
        .writable()
        .await
        .expect("the connection is writable");
    tokio::io::AsyncWriteExt::write_all(client.get_mut(), &hello(player))
        .await
        .unwrap();
    let welcome = tokio::time::timeout(LIMIT, client.next())
        .await
        .expect("a Welcome in time")
        .expect("a Welcome")
        .unwrap();
    assert!(matches!(
        Control::validate(welcome),
        Ok(Control::Welcome(_))
    ));
    client
}

/// Sends input `seq` (x = `x`) and returns the count its answer carries, or `None` when the
/// answer is a refusal.
async fn ask(client: &mut Client, player: u64, seq: u32, x: i32) -> Option<u32> {
    let frame = encode(
        &Input {
            entity: player,
            x,
            y: 0,
            seq,
            tick: 0,
        },
        seq,
    );
    tokio::io::AsyncWriteExt::write_all(client.get_mut(), &frame)
        .await
        .unwrap();
    loop {
        let answer = tokio::time::timeout(LIMIT, client.next())
            .await
            .expect("an answer in time")
            .expect("an answer")
            .unwrap();
        if answer.header().seq != seq {
            continue;
        }
        if let Ok(TestMessage::Input(echo)) = TestMessage::validate(answer.clone()) {
            return Some(echo.tick.to_native());
        }
        if let Ok(Control::Refused(_)) = Control::validate(answer) {
            return None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_loop_entity_runs_on_its_connections_thread_and_a_tree_entity_never_does() {
    for placement in [Placement::SessionLoop, Placement::Tree] {
        let world = world(placement).await;
        let mut clients = Vec::new();
        for player in 1..=4u64 {
            clients.push((player, client(&world, player).await));
        }
        for (player, client) in &mut clients {
            for seq in 1..=3 {
                assert_eq!(ask(client, *player, seq, 1).await, Some(seq));
            }
        }
        let ran = world.ran.lock().unwrap().clone();
        let routed = world.routed.lock().unwrap().clone();
        assert_eq!(ran.len(), 12, "{placement:?}: every input handled once");
        assert_eq!(routed.len(), 12);
        // Each player's inputs were routed on its connection's loop, in order.
        for (index, ran) in ran.iter().enumerate() {
            let on_loop = routed.contains(&ran.thread);
            match placement {
                Placement::SessionLoop => assert!(
                    on_loop,
                    "input {index} ran on {:?}, not on a connection's loop ({routed:?})",
                    ran.thread
                ),
                _ => assert!(
                    !on_loop,
                    "input {index} of a tree entity ran on a connection's loop {:?}",
                    ran.thread
                ),
            }
        }
        drop(clients);
        world.gateway.shutdown().await;
        world.tree.stop().await.unwrap();
    }
}

/// Input `seq` (x = `x`) for `entity`, as sent from outside any connection.
fn input(entity: u64, seq: u32, x: i32) -> TestMessage {
    let frame = garrison_protocol::encode_frame(
        &Input {
            entity,
            x,
            y: 0,
            seq,
            tick: 0,
        },
        FrameMeta::seq(seq),
    )
    .unwrap();
    TestMessage::validate(frame).unwrap()
}

/// Waits until the pilots have handled `count` inputs and returns them.
async fn handled(ran: &Arc<Mutex<Vec<Ran>>>, count: usize) -> Vec<Ran> {
    let ran = ran.clone();
    eventually(&format!("{count} inputs handled"), LIMIT, || {
        let ran = ran.clone();
        async move { ran.lock().unwrap().len() >= count }
    })
    .await;
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), count, "no input handled twice: {ran:?}");
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_kind_runs_on_the_gateways_loops_in_turn_and_on_the_tree_once_it_stops() {
    let world = world_hosting(Placement::Tree, true).await;
    // Two connections, one per loop: the threads their inputs are routed on are the loops.
    let mut clients = Vec::new();
    for player in 1..=2u64 {
        let mut client = client(&world, player).await;
        assert_eq!(ask(&mut client, player, 1, 1).await, Some(1));
        clients.push(client);
    }
    let loops: Vec<PathBuf> = world.routed.lock().unwrap().clone();
    assert_ne!(loops[0], loops[1], "one connection per loop");
    // Activated from outside any loop (this test's task): each on a loop, the two in turn.
    for entity in 100..104u64 {
        world.pilots.send(&entity, input(entity, 1, 1)).unwrap();
    }
    let ran = handled(&world.ran, 6).await;
    for each in &ran {
        assert!(loops.contains(&each.thread), "ran off the loops: {each:?}");
    }
    let placed: std::collections::HashSet<_> = ran[2..].iter().map(|each| &each.thread).collect();
    assert_eq!(placed.len(), 2, "activations take both loops: {ran:?}");
    // A crash restarts the entity on its loop, with its state.
    let home = ran
        .iter()
        .find(|each| each.entity == 100)
        .unwrap()
        .thread
        .clone();
    world.pilots.send(&100, input(100, 2, 13)).unwrap();
    world.pilots.send(&100, input(100, 3, 1)).unwrap();
    let ran = handled(&world.ran, 7).await;
    let restarted = &ran[6];
    assert_eq!(
        (restarted.entity, restarted.handled, restarted.incarnation),
        (100, 2, 2)
    );
    assert_eq!(restarted.thread, home, "the restart stayed on its loop");
    // Once the gateway stops, a new activation runs on the tree; a running entity keeps its
    // loop until the tree stops it.
    drop(clients);
    tokio::time::timeout(LIMIT, world.gateway.shutdown())
        .await
        .expect("the shutdown does not wait for the tree");
    world.pilots.send(&200, input(200, 1, 1)).unwrap();
    world.pilots.send(&100, input(100, 4, 1)).unwrap();
    let ran = handled(&world.ran, 9).await;
    let late = ran[7..].iter().find(|each| each.entity == 200).unwrap();
    assert!(
        !loops.contains(&late.thread),
        "activated after the shutdown, it runs on the tree: {late:?}"
    );
    let kept = ran[7..].iter().find(|each| each.entity == 100).unwrap();
    assert_eq!((kept.handled, kept.incarnation), (3, 2));
    assert_eq!(kept.thread, home, "entity 100 kept its loop");
    world.tree.stop().await.unwrap();
    for event_loop in loops {
        eventually("the event loop's thread ended", LIMIT, || {
            let event_loop = event_loop.clone();
            async move { !event_loop.exists() }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_entity_restarted_after_a_crash_keeps_its_loop_and_its_state() {
    let world = world(Placement::SessionLoop).await;
    let mut client = client(&world, 7).await;
    assert_eq!(ask(&mut client, 7, 1, 1).await, Some(1));
    assert_eq!(ask(&mut client, 7, 2, 1).await, Some(2));
    // The crash is answered with a refusal; the entity restarts with what it had.
    assert_eq!(ask(&mut client, 7, 3, 13).await, None);
    assert_eq!(ask(&mut client, 7, 4, 1).await, Some(3));
    let ran = world.ran.lock().unwrap().clone();
    assert_eq!(
        ran.iter()
            .map(|ran| (ran.handled, ran.incarnation))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 2)],
        "the restart kept the count and is a new incarnation"
    );
    assert!(
        ran.iter().all(|each| each.thread == ran[0].thread),
        "every incarnation ran on the connection's loop: {ran:?}"
    );
    assert_eq!(ran[0].thread, world.routed.lock().unwrap()[0]);
    drop(client);
    world.gateway.shutdown().await;
    world.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shut_down_before_its_tree_keeps_placed_entities_running_until_the_tree_stops() {
    let world = world(Placement::SessionLoop).await;
    let mut client = client(&world, 9).await;
    assert_eq!(ask(&mut client, 9, 1, 1).await, Some(1));
    let event_loop = world.ran.lock().unwrap()[0].thread.clone();
    drop(client);
    // The gateway's shutdown returns while the entity still runs on its loop...
    tokio::time::timeout(LIMIT, world.gateway.shutdown())
        .await
        .expect("the shutdown does not wait for the tree");
    assert!(event_loop.exists(), "the loop runs on for its entity");
    // ...and that entity still handles what it is sent, there, with its state.
    let frame = garrison_protocol::encode_frame(
        &Input {
            entity: 9,
            x: 1,
            y: 0,
            seq: 2,
            tick: 0,
        },
        FrameMeta::seq(2),
    )
    .unwrap();
    world
        .pilots
        .send(&9, TestMessage::validate(frame).unwrap())
        .unwrap();
    let ran = world.ran.clone();
    eventually(
        "the entity handled the message sent after the shutdown",
        LIMIT,
        || {
            let ran = ran.clone();
            async move { ran.lock().unwrap().len() == 2 }
        },
    )
    .await;
    let second = world.ran.lock().unwrap()[1].clone();
    assert_eq!((second.handled, second.incarnation), (2, 1));
    assert_eq!(second.thread, event_loop);
    // Once the tree has stopped it, nothing holds the loops: they end.
    world.tree.stop().await.unwrap();
    eventually("the event loop's thread ended", LIMIT, || {
        let event_loop = event_loop.clone();
        async move { !event_loop.exists() }
    })
    .await;
}
