//! The counter entity the runtime and trace tests share: it adds, records who sent what in
//! handling order, answers queries, crashes on request, and counts its activations. No tests
//! here: the module is included by more than one test binary.

// Shared by two binaries; each uses a different part of it.
#![allow(dead_code)]

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use garrison_protocol::Snapshot;
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig,
};
use garrison_supervisor::{SupervisorBuilder, SupervisorRef};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: i64,
    /// (sender, sequence) in handling order.
    pub seen: Vec<(u32, u32)>,
}

impl Snapshot for Tally {
    const SCHEMA: &'static str = "test.tally";
    const VERSION: u16 = 1;
}

pub enum Msg {
    Add {
        sender: u32,
        seq: u32,
        amount: i64,
    },
    Poison,
    Gate(oneshot::Receiver<()>),
    Get(oneshot::Sender<(Tally, u64)>),
    Rest,
    /// Ends the entity for good (`EntityContext::stop`).
    End,
    /// Carries a client's trace context, as a frame does.
    Traced(garrison_protocol::TraceContext),
}

impl EntityMessage for Msg {
    fn event_type(&self) -> &'static str {
        match self {
            Msg::Add { .. } => "add",
            Msg::Poison => "poison",
            Msg::Gate(_) => "gate",
            Msg::Get(_) => "get",
            Msg::Rest => "rest",
            Msg::End => "end",
            Msg::Traced(_) => "traced",
        }
    }

    fn trace_context(&self) -> Option<garrison_protocol::TraceContext> {
        match self {
            Msg::Traced(trace) => Some(*trace),
            _ => None,
        }
    }
}

/// A recovered total this counter cannot be activated from: `activate` panics on it, as a game's
/// own code might on a state it does not expect.
pub const CURSED_TOTAL: i64 = 666;

/// A counter entity that counts its activations and records why each ran.
#[derive(Default)]
pub struct Counter {
    pub activations: Arc<AtomicU64>,
    /// `Activation::label` of each activation, in order.
    pub causes: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl Entity for Counter {
    const KIND: &'static str = "counter";
    type Key = u64;
    type State = Tally;
    type Message = Msg;

    async fn activate(&self, _: &u64, recovered: Activation<Tally>) -> Result<Tally, HandlerError> {
        self.activations.fetch_add(1, Ordering::SeqCst);
        self.causes.lock().unwrap().push(recovered.label());
        let tally = recovered.unwrap_or_default();
        assert_ne!(tally.total, CURSED_TOTAL, "a cursed tally");
        Ok(tally)
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Msg,
        tally: &mut Tally,
    ) -> Result<(), HandlerError> {
        match message {
            Msg::Add {
                sender,
                seq,
                amount,
            } => {
                tally.total += amount;
                tally.seen.push((sender, seq));
            }
            Msg::Poison => panic!("poisoned counter {}", context.key()),
            Msg::Gate(gate) => {
                let _ = gate.await;
            }
            Msg::Get(reply) => {
                let _ = reply.send((tally.clone(), context.incarnation()));
            }
            Msg::Rest => context.passivate(),
            Msg::End => context.stop(),
            Msg::Traced(_) => tracing::info!("handled a traced message"),
        }
        Ok(())
    }
}

pub async fn start(config: KindConfig) -> (Entities<Counter>, Arc<AtomicU64>, SupervisorRef) {
    let (counters, activations, _, tree) = start_recording(config).await;
    (counters, activations, tree)
}

/// Activation causes, shared with the counter kind.
pub type Causes = Arc<std::sync::Mutex<Vec<&'static str>>>;

/// As [`start`], also returning the log of activation causes.
pub async fn start_recording(
    config: KindConfig,
) -> (Entities<Counter>, Arc<AtomicU64>, Causes, SupervisorRef) {
    let activations = Arc::new(AtomicU64::new(0));
    let causes = Causes::default();
    let counters = Entities::new(
        Counter {
            activations: activations.clone(),
            causes: causes.clone(),
        },
        config,
    )
    .unwrap();
    let tree = SupervisorBuilder::new("game")
        .child(garrison_supervisor::ChildSpec::new(
            "counters",
            counters.start(),
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    (counters, activations, causes, tree)
}

/// An `Add` from sender 0.
pub fn add(seq: u32, amount: i64) -> Msg {
    Msg::Add {
        sender: 0,
        seq,
        amount,
    }
}

pub async fn get(counters: &Entities<Counter>, key: u64) -> (Tally, u64) {
    let (reply, answer) = oneshot::channel();
    assert!(counters.send(&key, Msg::Get(reply)).is_ok());
    answer.await.expect("the counter answers")
}
