//! Two nodes in two processes on loopback, on ractor_cluster: messages forwarded to the owner
//! of their shard in order, a message routed by a stale table relayed once to the owner, every
//! kind of bad input from a peer refused, counted and dead-lettered at its sender, intruders
//! without the cookie refused, and a killed peer noticed.
//!
//! Node `b` is this test binary run again with `GARRISON_NODE_ROLE=b` (its entry is the test
//! `peer_process`, a no-op otherwise); it prints `@@ ` lines on stdout and takes commands on
//! stdin. Every peer is killed by its pid when the test ends.
#![cfg(feature = "nodes")]

mod peer;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garrison_cluster::envelope::{ENVELOPE_VERSION, Envelope, MAX_ENVELOPE, RefusalReason};
use garrison_cluster::node::{
    DeadLetter, InboxRefusal, Node, Route, RouterMsg, SendError, peer_router,
};
use garrison_cluster::shard::shard_of;
use peer::{COOKIE, Peer, ROLE, SHARDS, config, key_owned, stats_of, table, within};

const PEER: &str = "GARRISON_NODE_PEER";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_forward_refuse_bad_input_and_notice_a_killed_peer() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let table = table();
    let mut b = Peer::spawn("b", &[]);
    let b_addr: SocketAddr = b
        .expect("listening ", Duration::from_secs(30))
        .parse()
        .expect("b's address");

    let (replies_tx, mut replies) = tokio::sync::mpsc::channel::<Vec<u8>>(2048);
    let a = Node::start(
        config("a", COOKIE),
        table.clone(),
        move |kind: &str, _key: &[u8], payload: &[u8], _trace| {
            if kind != "reply" {
                return Err(InboxRefusal::UnknownKind(kind.to_owned()));
            }
            replies_tx
                .try_send(payload.to_vec())
                .map_err(|_| InboxRefusal::Rejected("the test's reply queue is full".into()))
        },
    )
    .await
    .expect("node a starts");
    let dead = Arc::new(Mutex::new(Vec::<DeadLetter>::new()));
    let sink = dead.clone();
    a.on_dead_letter(move |letter| sink.lock().unwrap().push(letter));
    within(
        "connecting a to b",
        Duration::from_secs(20),
        a.connect(b_addr, "b", Duration::from_secs(15)),
    )
    .await
    .expect("a reaches b");

    // Forwarded in order: b answers every echo with a `reply` to a key a owns.
    let echo = key_owned(&table, "echo", "b");
    let echo_round = |from: u32, to: u32| {
        for i in from..to {
            let route = a
                .send("echo", &echo, &i.to_le_bytes(), None)
                .expect("forwarded");
            assert!(
                matches!(&route, Route::Forwarded { node, .. } if node == "b"),
                "{route:?}"
            );
        }
    };
    echo_round(0, 1000);
    for i in 0..1000u32 {
        let reply = within("an echo", Duration::from_secs(10), replies.recv())
            .await
            .expect("replies open");
        assert_eq!(reply, i.to_le_bytes(), "echo {i} out of order");
    }

    // A key a owns never leaves a.
    let mine = key_owned(&table, "reply", "a");
    assert_eq!(a.send("reply", &mine, b"here", None), Ok(Route::Local));
    assert_eq!(
        within("the local reply", Duration::from_secs(5), replies.recv()).await,
        Some(b"here".to_vec())
    );
    assert_eq!(
        a.send("nope", &key_owned(&table, "nope", "a"), b"", None),
        Err(SendError::Refused(InboxRefusal::UnknownKind("nope".into())))
    );

    // Bad envelopes cast straight to b's router, each refused back to a with its reason.
    let router = peer_router("b").expect("b's router");
    let envelope =
        |id: u64, kind: &str, key: &[u8], shard: Option<u16>, token: Option<u64>, hops: u8| {
            let real = shard_of(kind, key, SHARDS);
            Envelope {
                version: ENVELOPE_VERSION,
                id,
                from: "a".into(),
                kind: kind.into(),
                key: key.to_vec(),
                shard: shard.unwrap_or(real.0),
                token: token.unwrap_or_else(|| table.owner(real).map_or(0, |(_, token)| token)),
                trace: Vec::new(),
                payload: b"x".to_vec(),
                hops,
                direct: false,
            }
            .encode()
            .expect("encodes")
        };
    let echo_shard = shard_of("echo", &echo, SHARDS);
    let echo_token = table.owner(echo_shard).expect("owned").1;
    let casts = [
        // Relayed once already, for a shard b does not own: refused, never relayed again.
        envelope(9001, "echo", &key_owned(&table, "echo", "a"), None, None, 1),
        // Routed by a newer table than b has: kept until b's table catches up, which it never
        // does here, then refused as behind.
        envelope(9002, "echo", &echo, None, Some(echo_token + 1), 0),
        envelope(9003, "nope", &key_owned(&table, "nope", "b"), None, None, 0),
        envelope(
            9004,
            "echo",
            &echo,
            Some((echo_shard.0 + 1) % SHARDS),
            None,
            0,
        ),
        // Sent to b for a shard a owns (as by a sender whose table is behind): b relays it to
        // a, once, instead of refusing it.
        envelope(
            9005,
            "reply",
            &key_owned(&table, "reply", "a"),
            None,
            None,
            0,
        ),
        vec![0xff; 100],
        vec![0; MAX_ENVELOPE + 1],
    ];
    for bytes in casts {
        router.cast(RouterMsg::Deliver(bytes)).expect("cast to b");
    }
    router
        .cast(RouterMsg::Refused(vec![1, 2, 3]))
        .expect("cast to b");
    router
        .cast(RouterMsg::Control(vec![9, 9, 9]))
        .expect("cast to b");
    assert_eq!(
        within("the relayed reply", Duration::from_secs(10), replies.recv()).await,
        Some(b"x".to_vec())
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while dead.lock().unwrap().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "dead letters: {:?}",
            dead.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reasons: HashMap<u64, RefusalReason> = dead
        .lock()
        .unwrap()
        .iter()
        .map(|letter| (letter.id, letter.refusal.reason))
        .collect();
    assert_eq!(
        reasons,
        HashMap::from([
            (9001, RefusalReason::NotOwner),
            (9002, RefusalReason::Behind),
            (9003, RefusalReason::UnknownKind),
            (9004, RefusalReason::Malformed),
        ])
    );
    assert!(
        dead.lock()
            .unwrap()
            .iter()
            .all(|letter| letter.refusal.by == "b")
    );

    // A node without the cookie is refused; so are bytes that are not ractor_cluster's at all.
    let intruder = Peer::spawn("intruder", &[(PEER, b_addr.to_string())]);
    assert_eq!(
        intruder.expect("outcome ", Duration::from_secs(30)),
        "refused"
    );
    drop(intruder);
    let mut raw = TcpStream::connect(b_addr).expect("raw connection to b");
    raw.write_all(&[0xff; 64]).expect("write garbage");
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let closed = match raw.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "b kept a connection that sent garbage");

    // b counted all of it and took nothing else.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        b.command("stats");
        let stats = stats_of(&b.expect("stats ", Duration::from_secs(10)));
        if stats["unauthenticated"] >= 2
            && stats["malformed"] >= 3
            && stats["bad_refusals"] >= 1
            && stats["bad_controls"] >= 1
        {
            break stats;
        }
        assert!(Instant::now() < deadline, "b's counters: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats["received"], 1000, "{stats:?}");
    assert_eq!(stats["malformed"], 3, "{stats:?}");
    assert_eq!(stats["not_owner"], 1, "{stats:?}");
    assert_eq!(stats["behind"], 1, "{stats:?}");
    assert_eq!(stats["unknown_kind"], 1, "{stats:?}");
    assert_eq!(stats["bad_refusals"], 1, "{stats:?}");
    assert_eq!(stats["bad_controls"], 1, "{stats:?}");
    assert_eq!(stats["relayed"], 1, "{stats:?}");
    assert_eq!(stats["parked"], 1, "{stats:?}");

    // b is unaffected.
    echo_round(1000, 1010);
    for i in 1000..1010u32 {
        let reply = within(
            "an echo after the attacks",
            Duration::from_secs(10),
            replies.recv(),
        )
        .await
        .expect("replies open");
        assert_eq!(reply, i.to_le_bytes());
    }
    // The router counts a delivery after the inbox took it: wait for the last count.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stats().received < 1011 {
        assert!(Instant::now() < deadline, "a's counters: {:?}", a.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mine = a.stats();
    assert_eq!(mine.forwarded, 1010);
    assert_eq!(mine.local, 1);
    assert_eq!(
        mine.received, 1011,
        "the replies from b, and the one b relayed"
    );
    assert_eq!(mine.dead_letters, 4);
    assert_eq!(mine.bad_refusals, 0);

    // b killed: a stops routing to it.
    b.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match a.send("echo", &echo, b"gone?", None) {
            Err(SendError::Unreachable(node)) => {
                assert_eq!(node, "b");
                break;
            }
            Ok(Route::Forwarded { .. }) => {}
            other => panic!("after b's kill: {other:?}"),
        }
        assert!(Instant::now() < deadline, "a still routes to a killed b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!a.reaches("b"));
    within("stopping a", Duration::from_secs(10), a.stop()).await;
}

/// The other processes of the test above: node `b`, or an intruder with the wrong cookie.
#[test]
fn peer_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "b" => node_b().await,
            "intruder" => intruder().await,
            other => panic!("unknown role {other}"),
        }
    });
}

async fn node_b() {
    let table = table();
    let (echo_tx, mut echoes) = tokio::sync::mpsc::channel::<Vec<u8>>(2048);
    let node = Arc::new(
        Node::start(
            config("b", COOKIE),
            table.clone(),
            move |kind: &str, _key: &[u8], payload: &[u8], _trace| {
                if kind != "echo" {
                    return Err(InboxRefusal::UnknownKind(kind.to_owned()));
                }
                echo_tx
                    .try_send(payload.to_vec())
                    .map_err(|_| InboxRefusal::Rejected("the echo queue is full".into()))
            },
        )
        .await
        .expect("node b starts"),
    );
    println!("@@ listening {}", node.addr());
    let replier = node.clone();
    let reply_to = key_owned(&table, "reply", "a");
    tokio::spawn(async move {
        while let Some(payload) = echoes.recv().await {
            if let Err(error) = replier.send("reply", &reply_to, &payload, None) {
                println!("@@ reply failed {error}");
            }
        }
    });
    // Commands on stdin, answered on stdout; stdin closed (the test gone) ends the process.
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        if command == "stats" {
            let stats = node.stats();
            println!(
                "@@ stats received={} malformed={} not_owner={} behind={} unknown_kind={} \
                 rejected={} bad_refusals={} unauthenticated={} refusals_unsent={} \
                 bad_controls={} relayed={} parked={}",
                stats.received,
                stats.refused(RefusalReason::Malformed),
                stats.refused(RefusalReason::NotOwner),
                stats.refused(RefusalReason::Behind),
                stats.refused(RefusalReason::UnknownKind),
                stats.refused(RefusalReason::Rejected),
                stats.bad_refusals,
                stats.unauthenticated,
                stats.refusals_unsent,
                stats.bad_controls,
                stats.relayed,
                stats.parked,
            );
        }
    }
}

async fn intruder() {
    let peer: SocketAddr = std::env::var(PEER)
        .expect("the peer's address")
        .parse()
        .expect("an address");
    let node = Node::start(config("intruder", "not-the-cookie"), table(), {
        |kind: &str, _: &[u8], _: &[u8], _| Err(InboxRefusal::UnknownKind(kind.to_owned()))
    })
    .await
    .expect("the intruder starts");
    let outcome = match node.connect(peer, "b", Duration::from_secs(2)).await {
        Ok(()) => "connected",
        Err(_) => "refused",
    };
    println!("@@ outcome {outcome}");
}
