//! Supervision trees for game servers, over ractor.
//!
//! ractor gives supervision *events*; this crate gives supervision: OTP's child specs, restart
//! types, shutdown policies and strategies, restart intensity that escalates, Akka-style
//! backoff, ordered start and reverse shutdown, and, beyond all of them, restarts that keep the
//! child's address and its queued messages. A [`ChildRef`] stays valid across restarts; only the
//! message whose handling crashed is lost.
//!
//! Trees are declared with [`supervisor!`] (or the [`SupervisorBuilder`] it expands to). The
//! guarantees are spelled out in `docs/runtime-semantics.md`.
//!
//! ```
//! use garrison_supervisor::{supervisor, HandlerError, Start, Worker, WorkerContext};
//!
//! /// Counts what it is told; answers `Get` with the total.
//! struct Counter;
//! enum CounterMsg { Add(u64), Get(tokio::sync::oneshot::Sender<u64>) }
//!
//! impl Worker for Counter {
//!     type Message = CounterMsg;
//!     type State = u64;
//!     async fn start(&self, _: &WorkerContext<CounterMsg>) -> Result<u64, HandlerError> { Ok(0) }
//!     async fn handle(&self, _: &WorkerContext<CounterMsg>, message: CounterMsg, total: &mut u64) -> Result<(), HandlerError> {
//!         match message {
//!             CounterMsg::Add(n) => *total += n,
//!             CounterMsg::Get(reply) => { let _ = reply.send(*total); }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tree = supervisor! {
//!     "node": one_for_one, intensity 3 per 5s {
//!         worker "score" => Start::worker(|| Counter), permanent;
//!         supervisor "zone": rest_for_one {
//!             worker "east" => Start::worker(|| Counter), transient, shutdown 1s;
//!             worker "west" => Start::worker(|| Counter), transient, backoff 10ms..1s;
//!         }
//!     }
//! }?
//! .start()
//! .await?;
//!
//! let score = tree.child::<CounterMsg>("score").await?;
//! score.send(CounterMsg::Add(2)).map_err(|_| "mailbox full")?;
//! assert_eq!(score.call(CounterMsg::Get).await?, 2);
//! assert_eq!(tree.supervisor("zone").await?.count_children().await?.active, 2);
//! tree.stop().await?;
//! # Ok(())
//! # }
//! ```

mod actor;
mod children;
mod dsl;
mod error;
mod exit;
mod handle;
mod introspection;
mod mailbox;
mod policy;
mod shared;
mod spec;
mod worker;

pub use error::Error;
pub use exit::{Abandon, ExitReason};
pub use handle::SupervisorRef;
pub use introspection::{
    ChildCounts, ChildInfo, ChildStatus, EVENT_CHANNEL_CAPACITY, EventKind, LifecycleEvent,
    NodeSnapshot, TreeSnapshot,
};
pub use mailbox::{ChildRef, DEFAULT_MAILBOX_CAPACITY, MailboxClosed, Overflow, SendError, Sent};
pub use policy::{
    AutoShutdown, Backoff, ChildKind, CrashLoop, DEFAULT_WORKER_SHUTDOWN, GameAttributes,
    Intensity, Restart, Shutdown, Strategy,
};
pub use spec::{ChildSpec, Start, SupervisorBuilder, SupervisorSpec};
pub use worker::{HandlerError, Worker, WorkerContext};

#[doc(hidden)]
pub mod __private {
    pub use crate::dsl::{assert_unique_ids, duration};
}
