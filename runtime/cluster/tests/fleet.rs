//! Runtime entities on two nodes in two processes: a `tally` kind whose keys live on both nodes
//! and a `ledger` kind on node `a`. Node `a` adds to tallies by key without knowing where they
//! live; each tally, wherever it runs, tells the ledger its new total through the fleet, so the
//! messages cross the nodes both ways, entity to entity. The ledger checks every tally's totals
//! arrive complete and in order. What the owner cannot take (a key that does not parse, a
//! payload that is not the kind's message) comes back to `a` as a dead letter with the reason.
//!
//! Node `b` is this test binary run again with `GARRISON_NODE_ROLE=fleet-b`.
#![cfg(feature = "nodes")]

mod peer;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garrison_cluster::Table;
use garrison_cluster::envelope::RefusalReason;
use garrison_cluster::fleet::{Kinds, Sharded};
use garrison_cluster::node::{DeadLetter, Node, Route};
use garrison_cluster::shard::shard_of;
use garrison_protocol::{Schema, Validated, messages, snapshot::Snapshot};
use garrison_runtime::prelude::{SupervisorRef, supervisor};
use garrison_runtime::{
    Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig, Reply,
};
use peer::{COOKIE, Peer, ROLE, SHARDS, config, table, within};
use rkyv::{Archive, Deserialize, Serialize};

/// Add `amount` to a tally.
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Add {
    /// How much.
    pub amount: u32,
}

/// A tally's new total, for the ledger.
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Noted {
    /// The tally's key.
    pub tally: u32,
    /// Its total after the add.
    pub total: u64,
}

messages! {
    /// What the fleet's kinds carry between nodes.
    pub enum FleetMessage {
        0x0f01 => Add(Add),
        0x0f02 => Noted(Noted),
    }
}

/// The ledger's key: the first key whose shard node `a` owns.
fn ledger_key(table: &Table) -> u32 {
    (0..)
        .find(|key: &u32| owner(table, "ledger", &key.to_string()) == "a")
        .expect("a owns some shards")
}

#[derive(Archive, Serialize, Deserialize, Default)]
struct Total {
    total: u64,
}

impl Snapshot for Total {
    const SCHEMA: &'static str = "fleet-test.total";
    const VERSION: u16 = 1;
}

/// Per tally: the last total noted, how many notes, and how many came out of order.
#[derive(Archive, Serialize, Deserialize, Default)]
struct Book {
    tallies: Vec<(u32, u64, u64)>,
    disorder: u64,
}

impl Snapshot for Book {
    const SCHEMA: &'static str = "fleet-test.book";
    const VERSION: u16 = 1;
}

struct TallyMsg(Validated<Add>);

impl EntityMessage for TallyMsg {
    fn event_type(&self) -> &'static str {
        "add"
    }
}

/// The ledger read back: per tally (last total, notes), and the notes out of order.
type Read = (BTreeMap<u32, (u64, u64)>, u64);

enum LedgerMsg {
    Noted(Validated<Noted>),
    Read(Reply<Read>),
}

impl EntityMessage for LedgerMsg {
    fn event_type(&self) -> &'static str {
        match self {
            LedgerMsg::Noted(_) => "noted",
            LedgerMsg::Read(_) => "read",
        }
    }
}

struct Tally {
    ledger: Sharded<Ledger, Noted>,
    ledger_key: u32,
}

impl Entity for Tally {
    const KIND: &'static str = "tally";
    type Key = u32;
    type State = Total;
    type Message = TallyMsg;

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        TallyMsg(add): TallyMsg,
        state: &mut Total,
    ) -> Result<(), HandlerError> {
        state.total += u64::from(add.amount.to_native());
        let noted = Noted {
            tally: *context.key(),
            total: state.total,
        };
        self.ledger
            .send(&self.ledger_key, &noted, None)
            .map(|_| ())
            .map_err(|error| error.to_string().into())
    }
}

struct Ledger;

impl Entity for Ledger {
    const KIND: &'static str = "ledger";
    type Key = u32;
    type State = Book;
    type Message = LedgerMsg;

    async fn handle(
        &self,
        _context: &mut EntityContext<'_, Self>,
        message: LedgerMsg,
        book: &mut Book,
    ) -> Result<(), HandlerError> {
        match message {
            LedgerMsg::Noted(noted) => {
                let (tally, total) = (noted.tally.to_native(), noted.total.to_native());
                match book.tallies.iter_mut().find(|entry| entry.0 == tally) {
                    Some(entry) => {
                        if total != entry.1 + 1 {
                            book.disorder += 1;
                        }
                        entry.1 = total;
                        entry.2 += 1;
                    }
                    None => {
                        if total != 1 {
                            book.disorder += 1;
                        }
                        book.tallies.push((tally, total, 1));
                    }
                }
            }
            LedgerMsg::Read(reply) => {
                let tallies = book
                    .tallies
                    .iter()
                    .map(|&(tally, total, notes)| (tally, (total, notes)))
                    .collect();
                reply.send((tallies, book.disorder));
            }
        }
        Ok(())
    }
}

/// A node of the test fleet: both kinds declared, served to the fleet, and supervised.
struct FleetNode {
    node: Arc<Node>,
    tallies: Sharded<Tally, Add>,
    ledgers: Entities<Ledger>,
    tree: SupervisorRef,
}

async fn fleet_node(id: &str, table: Table) -> FleetNode {
    let kinds = Kinds::new();
    let tallies = Entities::<Tally>::declare(KindConfig::default()).expect("tally kind");
    let ledgers = Entities::<Ledger>::declare(KindConfig {
        mailbox_capacity: 4096,
        ..KindConfig::default()
    })
    .expect("ledger kind");
    kinds.serve(tallies.clone(), TallyMsg);
    kinds.serve(ledgers.clone(), LedgerMsg::Noted);
    let ledger_key = ledger_key(&table);
    let node = Arc::new(
        Node::start(config(id, COOKIE), table, kinds.clone())
            .await
            .expect("the node starts"),
    );
    tallies
        .serve(Tally {
            ledger: Sharded::new(node.clone()),
            ledger_key,
        })
        .expect("serve tallies");
    ledgers.serve(Ledger).expect("serve ledgers");
    let tree = supervisor! {
        "fleet-test": one_for_one {
            entities "tallies" => tallies.start();
            entities "ledgers" => ledgers.start();
        }
    }
    .expect("the tree")
    .start()
    .await
    .expect("the tree starts");
    FleetNode {
        tallies: Sharded::new(node.clone()),
        node,
        ledgers,
        tree,
    }
}

fn owner(table: &Table, kind: &str, key: &str) -> String {
    table
        .owner(shard_of(kind, key.as_bytes(), SHARDS))
        .expect("every shard has an owner")
        .0
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_address_each_other_by_key_across_two_nodes() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let table = table();
    let ledger = ledger_key(&table);
    let on_b: Vec<u32> = (0..)
        .filter(|key: &u32| owner(&table, "tally", &key.to_string()) == "b")
        .take(8)
        .collect();
    let on_a: Vec<u32> = (0..)
        .filter(|key: &u32| owner(&table, "tally", &key.to_string()) == "a")
        .take(2)
        .collect();

    let mut b = Peer::spawn("fleet-b", &[]);
    let b_addr: SocketAddr = b
        .expect("listening ", Duration::from_secs(30))
        .parse()
        .expect("b's address");
    let a = fleet_node("a", table.clone()).await;
    let dead = Arc::new(Mutex::new(Vec::<DeadLetter>::new()));
    let sink = dead.clone();
    a.node
        .on_dead_letter(move |letter| sink.lock().unwrap().push(letter));
    within(
        "connecting a to b",
        Duration::from_secs(20),
        a.node.connect(b_addr, "b", Duration::from_secs(15)),
    )
    .await
    .expect("a reaches b");

    // 100 adds of 1 to each of 10 tallies, interleaved: 8 tallies on b, 2 here.
    const ROUNDS: u64 = 100;
    for _ in 0..ROUNDS {
        for key in on_b.iter().chain(&on_a) {
            let route = a.tallies.send(key, &Add { amount: 1 }, None).expect("sent");
            let expected = if on_a.contains(key) { "a" } else { "b" };
            match route {
                Route::Local => assert_eq!(expected, "a", "tally {key} went local"),
                Route::Forwarded { node, .. } => assert_eq!(node, expected, "tally {key}"),
            }
        }
    }

    // Every tally's 100 totals reach the ledger, in order, however far they travelled.
    let read = || async {
        a.ledgers
            .call(&ledger, LedgerMsg::Read, Duration::from_secs(5))
            .await
            .expect("the ledger answers")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (book, disorder) = loop {
        let (book, disorder) = read().await;
        let notes: u64 = book.values().map(|&(_, notes)| notes).sum();
        if notes >= ROUNDS * 10 || tokio::time::Instant::now() > deadline {
            break (book, disorder);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(disorder, 0, "totals arrived out of order: {book:?}");
    assert_eq!(book.len(), 10, "{book:?}");
    for key in on_b.iter().chain(&on_a) {
        assert_eq!(
            book.get(key),
            Some(&(ROUNDS, ROUNDS)),
            "tally {key}: {book:?}"
        );
    }
    assert!(
        dead.lock().unwrap().is_empty(),
        "{:?}",
        dead.lock().unwrap()
    );
    let stats = a.node.stats();
    assert_eq!(stats.forwarded, ROUNDS * 8, "{stats:?}");
    // Local: a's own two tallies' adds, and the notes of those two tallies to the ledger.
    assert_eq!(stats.local, ROUNDS * 2 * 2, "{stats:?}");
    assert_eq!(stats.received, ROUNDS * 8, "{stats:?}");

    // What b cannot take comes back as a dead letter with the reason; nothing else changes.
    let tally_b = on_b[0];
    let bad_key = (0..)
        .map(|n| format!("not-a-number-{n}"))
        .find(|key| owner(&table, "tally", key) == "b")
        .expect("some text key lands on b");
    let noted_frame = garrison_protocol::encode_frame(
        &Noted { tally: 1, total: 1 },
        garrison_protocol::FrameMeta::seq(0),
    )
    .expect("encodes");
    let add_frame =
        garrison_protocol::encode_frame(&Add { amount: 1 }, garrison_protocol::FrameMeta::seq(0))
            .expect("encodes");
    let sent = [
        a.node
            .send("tally", bad_key.as_bytes(), add_frame.wire(), None)
            .expect("forwarded"),
        a.node
            .send("tally", tally_b.to_string().as_bytes(), b"garbage", None)
            .expect("forwarded"),
        a.node
            .send(
                "tally",
                tally_b.to_string().as_bytes(),
                noted_frame.wire(),
                None,
            )
            .expect("forwarded"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead.lock().unwrap().len() < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let letters = dead.lock().unwrap().clone();
    assert_eq!(letters.len(), sent.len(), "{letters:?}");
    for (letter, expected) in
        letters
            .iter()
            .zip(["is not a tally key", "not a valid Add", "not a valid Add"])
    {
        assert_eq!(letter.refusal.reason, RefusalReason::Rejected, "{letter:?}");
        assert!(
            letter.refusal.detail.contains(expected),
            "{letter:?} should say `{expected}`"
        );
    }
    // The tally b refused garbage for still counts: one more add reaches the ledger as 101.
    a.tallies
        .send(&tally_b, &Add { amount: 1 }, None)
        .expect("sent");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (book, disorder) = read().await;
        if book.get(&tally_b) == Some(&(ROUNDS + 1, ROUNDS + 1)) {
            assert_eq!(disorder, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 101st add did not arrive: {book:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.command("stop");
    b.expect("stopped", Duration::from_secs(10));
    a.tree.stop().await.expect("the tree stops");
}

#[test]
fn peer_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "fleet-b", "unknown role");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let b = fleet_node("b", table()).await;
        println!("@@ listening {}", b.node.addr());
        let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if commands_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        // A command `stop`, or stdin closed (the test gone), ends the process.
        while let Some(command) = commands.recv().await {
            if command == "stop" {
                break;
            }
        }
        let _ = b.tree.stop().await;
        println!("@@ stopped");
    });
}
