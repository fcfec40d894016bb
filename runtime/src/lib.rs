//! Garrison's entity runtime: game logic written as actor modules.
//!
//! Implement [`Entity`] for a kind of game entity (a player, a room); [`Entities`] is its
//! registry and address book. Sending to a key activates its entity if needed (exactly once,
//! however many senders race); the entity runs as a supervised ractor actor, restarts from its
//! last checkpoint after a crash with the messages queued behind the crashing one, passivates to
//! a compact rkyv snapshot when idle, and handles each message in a span carrying the game
//! attributes. A [`Session`] is a connected player's place in the server: bound to the entities
//! it may address, the way its messages reach them and theirs reach the player; the
//! [`gateway`] (feature `gateway`, on by default) serves sessions over TCP and WebSocket.
//!
//! A game imports [`prelude`] and nothing else (plus `rkyv = "0.8"` for the derives). Examples:
//! `cargo run -p garrison-runtime --example hello_entity` (one kind), `two_kinds` (kinds that
//! hold each other's handle), `gateway_echo` (a gateway and a client).
//!
//! ```
//! use garrison_runtime::prelude::*;
//!
//! /// A player with an inventory.
//! struct Player;
//! #[derive(Archive, Serialize, Deserialize, Default)]
//! struct Inventory { items: Vec<(u32, u16)> }
//! impl Snapshot for Inventory { const SCHEMA: &'static str = "player.inventory"; const VERSION: u16 = 1; }
//! enum PlayerMsg { Pick(u32), Count(tokio::sync::oneshot::Sender<usize>) }
//! impl EntityMessage for PlayerMsg {
//!     fn event_type(&self) -> &'static str { match self { PlayerMsg::Pick(_) => "pick", PlayerMsg::Count(_) => "count" } }
//! }
//!
//! impl Entity for Player {
//!     const KIND: &'static str = "player";
//!     type Key = u64;
//!     type State = Inventory;
//!     type Message = PlayerMsg;
//!     // `activate` is left to its default: the recovered inventory, or an empty one.
//!     async fn handle(&self, cx: &mut EntityContext<'_, Self>, msg: PlayerMsg, inv: &mut Inventory) -> Result<(), HandlerError> {
//!         match msg {
//!             PlayerMsg::Pick(item) => { inv.items.push((item, 1)); cx.checkpoint(); }
//!             PlayerMsg::Count(reply) => { let _ = reply.send(inv.items.len()); }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let players = Entities::new(Player, KindConfig::default())?;
//! let tree = supervisor! { "game": one_for_one { entities "players" => players.start(); } }?.start().await?;
//!
//! let alice = players.get(7);
//! alice.send(PlayerMsg::Pick(42)).map_err(|refused| format!("{:?}", refused.reason))?;
//! let (reply, count) = tokio::sync::oneshot::channel();
//! alice.send(PlayerMsg::Count(reply)).map_err(|refused| format!("{:?}", refused.reason))?;
//! assert_eq!(count.await?, 1);
//! tree.stop().await?;
//! # Ok(())
//! # }
//! ```

mod bounded;
mod call;
pub mod clock;
pub mod concurrency;
mod dead_letter;
mod durable;
mod entity;
mod envelope;
mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
mod group;
mod host;
#[cfg(feature = "metrics")]
pub mod metrics;
mod origin;
pub mod overload;
mod ownership;
mod placement;
pub mod prelude;
mod quarantine;
mod refusal;
mod registry;
mod session;
mod stats;
pub mod store;
pub mod telemetry;
mod timer;

pub use call::{CallError, Reply};
pub use dead_letter::{DEAD_LETTER_CAPACITY, DeadLetter, DeadLetters};
pub use durable::DurabilityStats;
pub use entity::{
    Activation, Checkpoint, Durability, Entity, EntityContext, EntityMessage, KindConfig, State,
};
pub use error::Error;
pub use garrison_supervisor::HandlerError;
pub use group::Group;
pub use origin::{Outbound, SessionId};
pub use ownership::{Departure, DepartureKind, HandOffReport, Lease};
pub use placement::Placement;
pub use quarantine::{QUARANTINE_CAPACITY, Quarantined};
pub use refusal::{Refusal, Refused};
pub use registry::{Entities, EntityRef};
pub use session::{Session, SessionEvent, Sessions};
pub use stats::{CrashCause, HistogramSnapshot, LATENCY_BUCKETS, MAX_CAUSES, refusals_sent};
pub use timer::{Timer, TimerError, TimerId};

/// The wire protocol crate, whole (frames, codecs, control messages, snapshots).
pub use garrison_protocol as protocol;
/// rkyv, as Garrison's wire format pins it.
pub use garrison_protocol::rkyv;
/// The supervision crate, whole.
pub use garrison_supervisor as supervision;
