//! Virtual shards: an entity key's shard is FNV-1a 64 of its kind and key bytes modulo the
//! shard count. The function is part of the fleet's contract (every node and every version must
//! agree), so it is written here rather than taken from a hasher whose output may change.

/// Shards a fleet has unless configured otherwise: enough that a node's share moves in small
/// steps (a fleet of 100 nodes holds about 10 each), few enough that the table is one small
/// record.
pub const DEFAULT_SHARDS: u16 = 1024;

/// A virtual shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// FNV-1a 64 over `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard of entity `key` of kind `kind` among `shards` (at least 1).
pub fn shard_of(kind: &str, key: &[u8], shards: u16) -> ShardId {
    let hash = fnv1a(0xcbf2_9ce4_8422_2325, kind.as_bytes());
    // A separator, so ("ab", "c") and ("a", "bc") differ.
    let hash = fnv1a(hash, &[0xff]);
    let hash = fnv1a(hash, key);
    ShardId((hash % u64::from(shards.max(1))) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_s_shard_is_fixed_by_the_contract() {
        // Pinned values: a change here moves every entity of a running fleet.
        let key = |key: u64| key.to_le_bytes();
        assert_eq!(shard_of("room", &key(1), DEFAULT_SHARDS), ShardId(158));
        assert_eq!(shard_of("player", &key(1), DEFAULT_SHARDS), ShardId(908));
        assert_eq!(shard_of("room", &key(2), DEFAULT_SHARDS), ShardId(637));
        assert_eq!(
            shard_of("room", &key(1_000_000), DEFAULT_SHARDS),
            ShardId(642)
        );
        let pinned = [
            shard_of("room", &1u64.to_le_bytes(), DEFAULT_SHARDS),
            shard_of("player", &1u64.to_le_bytes(), DEFAULT_SHARDS),
            shard_of("ab", b"c", DEFAULT_SHARDS),
            shard_of("a", b"bc", DEFAULT_SHARDS),
        ];
        assert_ne!(pinned[2], pinned[3], "kind and key are separated");
        assert_ne!(pinned[0], pinned[1], "the kind is part of the shard");
        assert_eq!(shard_of("room", b"x", 1), ShardId(0));
        assert_eq!(
            shard_of("room", b"x", 0),
            ShardId(0),
            "no shard count is one shard"
        );
    }

    #[test]
    fn keys_spread_evenly_over_the_shards() {
        let shards = 1024u16;
        let mut counts = vec![0u32; usize::from(shards)];
        for key in 0..200_000u64 {
            counts[usize::from(shard_of("room", &key.to_le_bytes(), shards).0)] += 1;
        }
        let mean = 200_000.0 / f64::from(shards);
        let max = f64::from(*counts.iter().max().unwrap());
        let min = f64::from(*counts.iter().min().unwrap());
        assert!(
            max / mean < 1.25 && min / mean > 0.75,
            "min {min}, max {max}, mean {mean}"
        );
    }
}
