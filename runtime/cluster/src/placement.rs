//! The shard -> node table and its rebalancing.
//!
//! A balanced table gives each of `n` nodes `shards / n` shards or one more. [`Table::rebalance`]
//! reaches such a table from the current one with the fewest moves possible: each live node
//! keeps as many of its shards as its quota allows (the nodes holding the most get the quotas
//! with one more), and only the shards of nodes that left, and a node's shards beyond its quota,
//! move, each to the node with the most room left. So a join moves exactly the new node's share
//! and a loss exactly the lost node's shards (the placement simulation in the tests checks
//! both). The result depends only on the current table and the set of nodes: any coordinator
//! computes the same one.
//!
//! Each shard carries a fencing token: the table version at which it last changed owner. A node
//! acts on a shard (activates its entities, writes their state) only with the token the table
//! gave it, and a store refuses a write carrying an older token than the one it has seen, so a
//! node that lost a shard without knowing it cannot overwrite its new owner's state.

use std::collections::BTreeMap;

use crate::shard::ShardId;

/// A node's id in the fleet (its name, stable across restarts of the same node).
pub type NodeId = String;

/// Who holds one shard, and since which table version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The owner (`None` in a table with no node).
    pub node: Option<NodeId>,
    /// The table version at which this shard last changed owner: its fencing token.
    pub token: u64,
    /// Its owner before that change (`None` for a shard placed for the first time): the node
    /// a new owner waits on to hand the shard's entities over, even when it never saw the
    /// table that node held it in.
    pub from: Option<NodeId>,
}

/// The shard -> node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Incremented by every rebalance that changes something.
    pub version: u64,
    /// One assignment per shard, by shard number.
    pub shards: Vec<Assignment>,
}

/// How much a rebalance changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moves {
    /// Shards that went from one node to another.
    pub moved: usize,
    /// Shards that had no owner and got one.
    pub placed: usize,
}

impl Table {
    /// A table of `shards` shards with no owner (version 0).
    pub fn empty(shards: u16) -> Table {
        Table {
            version: 0,
            shards: vec![
                Assignment {
                    node: None,
                    token: 0,
                    from: None,
                };
                usize::from(shards)
            ],
        }
    }

    /// The owner of `shard`, with its token.
    pub fn owner(&self, shard: ShardId) -> Option<(&str, u64)> {
        let assignment = self.shards.get(usize::from(shard.0))?;
        assignment
            .node
            .as_deref()
            .map(|node| (node, assignment.token))
    }

    /// The shards `node` owns, with their tokens.
    pub fn owned_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (ShardId, u64)> + 'a {
        self.shards
            .iter()
            .enumerate()
            .filter(move |(_, assignment)| assignment.node.as_deref() == Some(node))
            .map(|(shard, assignment)| (ShardId(shard as u16), assignment.token))
    }

    /// Shards per node.
    pub fn loads(&self) -> BTreeMap<&str, usize> {
        let mut loads = BTreeMap::new();
        for assignment in &self.shards {
            if let Some(node) = &assignment.node {
                *loads.entry(node.as_str()).or_insert(0) += 1;
            }
        }
        loads
    }

    /// The balanced table for `nodes` (duplicates ignored) reached from this one with the
    /// fewest moves, and what moved. With no node every shard is unowned. The version goes up
    /// by one when anything changed; each shard that changed owner takes the new version as
    /// its token.
    pub fn rebalance(&self, nodes: &[NodeId]) -> (Table, Moves) {
        self.rebalance_at(nodes, self.version + 1)
    }

    /// As [`Table::rebalance`], stamping what changed with `version` (which must exceed every
    /// token in the table: a coordinator takes its store's own counter, so a table rebuilt
    /// after a damaged record still fences every older token).
    pub fn rebalance_at(&self, nodes: &[NodeId], version: u64) -> (Table, Moves) {
        let mut nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let shards = self.shards.len();
        let mut next = self.clone();
        let mut moves = Moves::default();
        if nodes.is_empty() {
            for assignment in &mut next.shards {
                if let Some(was) = assignment.node.take() {
                    assignment.token = version;
                    assignment.from = Some(was);
                    moves.moved += 1;
                }
            }
        } else {
            let quotas = quotas(self, &nodes, shards);
            // Keep what fits each live node's quota, in shard order; the rest is orphaned.
            let mut held: BTreeMap<&str, usize> = nodes.iter().map(|node| (*node, 0)).collect();
            let mut orphans = Vec::new();
            for (shard, assignment) in self.shards.iter().enumerate() {
                let kept = assignment.node.as_deref().and_then(|node| {
                    let count = held.get_mut(node)?;
                    (*count < quotas[node]).then(|| *count += 1)
                });
                if kept.is_none() {
                    orphans.push(shard);
                }
            }
            // Each orphan to the node with the most room left (ties: the lowest id).
            for shard in orphans {
                let Some(node) = nodes
                    .iter()
                    .copied()
                    .max_by_key(|node| (quotas[node] - held[node], std::cmp::Reverse(*node)))
                else {
                    break;
                };
                *held.get_mut(node).expect("a live node") += 1;
                let assignment = &mut next.shards[shard];
                if assignment.node.is_some() {
                    moves.moved += 1;
                } else {
                    moves.placed += 1;
                }
                // An unowned shard keeps the last owner it had, if any.
                if let Some(was) = assignment.node.replace(node.to_owned()) {
                    assignment.from = Some(was);
                }
                assignment.token = version;
            }
        }
        next.version = if moves == Moves::default() {
            self.version
        } else {
            version
        };
        (next, moves)
    }
}

/// Each live node's quota: `shards / n`, and one more for the `shards % n` nodes holding the
/// most now (ties: the lowest id), so they give up the fewest shards.
fn quotas<'a>(table: &Table, nodes: &[&'a str], shards: usize) -> BTreeMap<&'a str, usize> {
    let loads = table.loads();
    let mut by_load: Vec<&str> = nodes.to_vec();
    by_load.sort_by_key(|node| {
        (
            std::cmp::Reverse(loads.get(node).copied().unwrap_or(0)),
            *node,
        )
    });
    let (base, extra) = (shards / nodes.len(), shards % nodes.len());
    by_load
        .into_iter()
        .enumerate()
        .map(|(rank, node)| (node, base + usize::from(rank < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<NodeId> {
        range.map(|i| format!("node-{i:03}")).collect()
    }

    fn max_over_mean(table: &Table, nodes: usize) -> f64 {
        let max = table.loads().values().copied().max().unwrap_or(0);
        max as f64 / (table.shards.len() as f64 / nodes as f64)
    }

    #[test]
    fn a_first_placement_balances_every_shard_and_tokens_follow_moves() {
        let (table, moves) = Table::empty(1024).rebalance(&names(0..3));
        assert_eq!(
            moves,
            Moves {
                moved: 0,
                placed: 1024
            }
        );
        assert_eq!(table.version, 1);
        let loads: Vec<usize> = table.loads().values().copied().collect();
        assert_eq!(loads, vec![342, 341, 341]);
        assert!(
            table
                .shards
                .iter()
                .all(|a| a.token == 1 && a.from.is_none())
        );
        // The same nodes again: nothing moves, the version stays.
        let (same, moves) = table.rebalance(&names(0..3));
        assert_eq!((same.version, moves), (1, Moves::default()));
        assert_eq!(same, table);
        // A fourth node: only its share moves, stamped with version 2.
        let (joined, moves) = table.rebalance(&names(0..4));
        assert_eq!(moves.moved, 256);
        assert_eq!(joined.version, 2);
        for (shard, (before, after)) in table.shards.iter().zip(&joined.shards).enumerate() {
            if before.node == after.node {
                assert_eq!(after.token, before.token, "shard {shard} kept its token");
            } else {
                assert_eq!(after.node.as_deref(), Some("node-003"));
                assert_eq!(after.token, 2, "shard {shard} moved at version 2");
                assert_eq!(after.from, before.node, "shard {shard} names who had it");
            }
        }
        assert_eq!(joined.owned_by("node-003").count(), 256);
        // Everyone gone: every shard unowned.
        let (none, moves) = joined.rebalance(&[]);
        assert_eq!(moves.moved, 1024);
        assert!(none.shards.iter().all(|a| a.node.is_none()));
        assert!(
            none.shards
                .iter()
                .zip(&joined.shards)
                .all(|(a, b)| a.from == b.node)
        );
        // Placed again: an unowned shard keeps naming the last node that had it.
        let (again, _) = none.rebalance(&names(5..6));
        assert!(
            again
                .shards
                .iter()
                .zip(&joined.shards)
                .all(|(a, b)| a.from == b.node)
        );
    }

    #[test]
    fn rebalancing_depends_only_on_the_table_and_the_node_set() {
        let (table, _) = Table::empty(1000).rebalance(&names(0..7));
        let mut shuffled = names(0..9);
        shuffled.reverse();
        shuffled.push("node-004".into());
        assert_eq!(table.rebalance(&names(0..9)), table.rebalance(&shuffled));
    }

    #[test]
    fn a_burst_of_losses_or_joins_moves_only_what_it_must() {
        let nodes = names(0..100);
        let (table, _) = Table::empty(1000).rebalance(&nodes);
        // A quarter of the fleet lost at once (a zone going down).
        let survivors: Vec<NodeId> = nodes.iter().skip(25).cloned().collect();
        let lost: usize = nodes[..25].iter().map(|n| table.owned_by(n).count()).sum();
        let (after_loss, moves) = table.rebalance(&survivors);
        assert_eq!(moves.moved, lost);
        for (before, after) in table.shards.iter().zip(&after_loss.shards) {
            if before.node.as_ref().is_some_and(|n| survivors.contains(n)) {
                assert_eq!(before.node, after.node, "a survivor kept its shards");
            }
        }
        // Fifty nodes join at once: each gets 1000 / 125 = 8, taken from the survivors only.
        let mut grown = survivors.clone();
        grown.extend(names(100..150));
        let (after_join, moves) = after_loss.rebalance(&grown);
        assert_eq!(moves.moved, 50 * 8);
        let loads = after_join.loads();
        assert!(loads.values().all(|load| *load == 8));
        for (before, after) in after_loss.shards.iter().zip(&after_join.shards) {
            let to_newcomer = after.node.as_ref().is_some_and(|n| !survivors.contains(n));
            assert!(before.node == after.node || to_newcomer);
        }
    }

    /// The placement simulation issue 15 asks for: 1,000 shards on 100 nodes, then joins and
    /// losses; each event moves exactly the shards a balanced table needs moved, and the
    /// busiest node holds at most one shard more than the mean rounded up.
    #[test]
    fn placement_simulation_1000_shards_100_nodes_joins_and_losses() {
        let mut nodes = names(0..100);
        let (mut table, first) = Table::empty(1000).rebalance(&nodes);
        assert_eq!(first.placed, 1000);
        let mut next_id = 100;
        println!("event            nodes  moves  optimal  max/mean");
        // Joins, losses, a burst of each, interleaved (deterministic).
        let events: Vec<&str> = [
            "join", "join", "lose", "join", "lose", "lose", "join", "lose", "join", "join",
        ]
        .iter()
        .cycle()
        .take(40)
        .copied()
        .collect();
        let mut total_moves = 0;
        for (step, event) in events.iter().enumerate() {
            let optimal = match *event {
                "join" => {
                    let name = format!("node-{next_id:03}");
                    next_id += 1;
                    nodes.push(name);
                    // The newcomer's share: 1000 / n (the quotas with one more go to the nodes
                    // holding the most).
                    1000 / nodes.len()
                }
                _ => {
                    // Lose a node picked deterministically across the range.
                    let lost = nodes.remove((step * 37) % nodes.len());
                    table.owned_by(&lost).count()
                }
            };
            let (next, moves) = table.rebalance(&nodes);
            let ratio = max_over_mean(&next, nodes.len());
            println!(
                "{step:>2} {event:<12} {:>6} {:>6} {optimal:>8} {ratio:>9.3}",
                nodes.len(),
                moves.moved
            );
            assert_eq!(moves.placed, 0, "every shard had an owner");
            assert_eq!(moves.moved, optimal, "{event}: the fewest moves");
            // No shard moves between two nodes that were there before and after: a join only
            // feeds the newcomer, a loss only spreads the lost node's shards.
            let newcomer = nodes.last().filter(|_| *event == "join");
            for (before, after) in table.shards.iter().zip(&next.shards) {
                let stayed = before
                    .node
                    .as_ref()
                    .is_some_and(|node| nodes.contains(node));
                if stayed && before.node != after.node {
                    assert_eq!(
                        after.node.as_ref(),
                        newcomer,
                        "a shard moved between survivors"
                    );
                }
            }
            let loads = next.loads();
            let (max, min) = (
                *loads.values().max().unwrap(),
                *loads.values().min().unwrap(),
            );
            assert!(max - min <= 1, "balanced: {min}..{max}");
            assert_eq!(loads.len(), nodes.len(), "every node holds shards");
            assert!(
                ratio
                    <= (1000usize.div_ceil(nodes.len()) as f64) / (1000.0 / nodes.len() as f64)
                        + 1e-9
            );
            total_moves += moves.moved;
            table = next;
        }
        println!(
            "{} events, {total_moves} moves ({:.1} per event; 1,000 shards)",
            events.len(),
            total_moves as f64 / events.len() as f64
        );
    }
}
