//! Garrison's fleet layer (issue 15, in progress): what a node of a fleet needs to know which
//! entities are its own.
//!
//! - [`shard`]: an entity key belongs to one of a fixed number of virtual shards (1,024 by
//!   default), by a hash that never changes between versions.
//! - [`placement`]: the shard -> node table, rebalanced on a join or a loss with the fewest
//!   moves a balanced table allows, each moved shard stamped with the table's version as its
//!   fencing token.
//!
//! - `etcd` (feature `etcd`): membership with leases, the coordinator chosen by etcd's
//!   election, and the table as an etcd key only the coordinator writes.
//!
//! - [`envelope`]: what one node sends another (an entity message with its shard's fencing
//!   token and trace context) and the refusal that comes back, validated on receipt.
//!
//! - `node` (feature `nodes`): a node on ractor_cluster, with the router that validates what
//!   its peers send, refuses what this node does not own, and dead-letters at the sender what
//!   a peer refused.
//!
//! - `fleet` (feature `nodes`): runtime entity kinds served to the fleet, fenced by their
//!   shards' tokens and under the node's lease; when the table moves a shard, its entities are
//!   handed off to the new owner (state written through, queued messages sent on, the new owner
//!   waiting for the hand-off) or, when the old owner is gone, released there and run from the
//!   store here; a handle that sends a kind's message to the node that owns its key's shard
//!   (or, for kinds that live with their player's session, to a named node); the activation
//!   log.
//!
//! - `member` (features `etcd` and `nodes`): a node at work in its fleet: connected to its
//!   peers, acting on the fleet's table, its lease renewed, owning nothing once the lease is
//!   gone.

pub mod envelope;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "nodes")]
pub mod fleet;
#[cfg(all(feature = "etcd", feature = "nodes"))]
pub mod member;
#[cfg(feature = "nodes")]
pub mod node;
pub mod placement;
pub mod shard;

pub use placement::{Assignment, NodeId, Table};
pub use shard::{DEFAULT_SHARDS, ShardId, shard_of};
