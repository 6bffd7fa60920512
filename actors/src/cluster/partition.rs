//! The hash from a key to its partition.
//!
//! FNV-1a 32 of the key's text, modulo the cluster's partition count: the same function as NATS's
//! `{{partition(n, …)}}` subject mapping for a one-token key, so the server could route by
//! partition itself one day and agree with every instance. An order id hashes as its hyphenated
//! lower-case UUID text, a SKU as its text. The count is fixed when the database is created: a
//! different count would move every key to another partition.

use std::fmt;

use crate::domain::{OrderId, Sku};

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The kinds of key that are partitioned, each with its own owners: order ids among the
/// instances that run the order role, SKUs among those that run the inventory role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeySpace {
    Orders,
    Skus,
}

impl KeySpace {
    pub const ALL: [KeySpace; 2] = [KeySpace::Orders, KeySpace::Skus];

    /// The name stored in PostgreSQL and shown by `GET /cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpace::Orders => "orders",
            KeySpace::Skus => "skus",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// One partition, `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(u16);

impl PartitionId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn as_i32(self) -> i32 {
        i32::from(self.0)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How many partitions the cluster has: 1 to `PartitionCount::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCount(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the partition count must be between 1 and {max}, not {0}", max = PartitionCount::MAX)]
pub struct BadPartitionCount(pub i64);

impl PartitionCount {
    /// Enough for hundreds of instances; small enough that every instance can hold a flag per
    /// partition and a lease table scan stays trivial.
    pub const MAX: u16 = 4096;

    pub fn new(count: i64) -> Result<Self, BadPartitionCount> {
        match u16::try_from(count) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(BadPartitionCount(count)),
        }
    }

    pub fn get(self) -> usize {
        usize::from(self.0)
    }

    /// The partition a key's text hashes to.
    pub fn of_key(self, key: &str) -> PartitionId {
        // The modulus is below 2^16, so the remainder always fits.
        PartitionId((fnv1a32(key.as_bytes()) % u32::from(self.0)) as u16)
    }

    pub fn of_order(self, order_id: OrderId) -> PartitionId {
        let mut buffer = uuid::Uuid::encode_buffer();
        self.of_key(order_id.as_uuid().hyphenated().encode_lower(&mut buffer))
    }

    pub fn of_sku(self, sku: &Sku) -> PartitionId {
        self.of_key(sku.as_str())
    }

    /// The partition with this index, if the cluster has it.
    pub fn partition(self, index: i64) -> Option<PartitionId> {
        u16::try_from(index)
            .ok()
            .filter(|i| *i < self.0)
            .map(PartitionId)
    }

    pub fn all(self) -> impl Iterator<Item = PartitionId> {
        (0..self.0).map(PartitionId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_the_published_test_vectors() {
        // From the FNV reference (isthe.com/chongo/tech/comp/fnv): "", "a", "foobar".
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn an_order_hashes_as_its_lower_case_uuid_text() {
        let count = PartitionCount::new(64).unwrap();
        let id: OrderId = "0190F3C2-6B4E-7A10-8F00-000000000001".parse().unwrap();
        let text = "0190f3c2-6b4e-7a10-8f00-000000000001";
        assert_eq!(count.of_order(id), count.of_key(text));
        assert_eq!(
            count.of_key(text).index(),
            (fnv1a32(text.as_bytes()) % 64) as usize
        );
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let count = PartitionCount::new(64).unwrap();
        let mut hits = [0u32; 64];
        for _ in 0..64_000 {
            hits[count.of_order(OrderId::new()).index()] += 1;
        }
        // 1,000 expected per partition; a hash that ignored part of the key would leave some empty
        // or crowd a few.
        assert!(hits.iter().all(|h| (700..1300).contains(h)), "{hits:?}");
    }

    #[test]
    fn counts_outside_the_range_are_refused() {
        assert!(PartitionCount::new(0).is_err());
        assert!(PartitionCount::new(4097).is_err());
        assert!(PartitionCount::new(-1).is_err());
        assert_eq!(
            PartitionCount::new(1).unwrap().of_key("anything").index(),
            0
        );
        let count = PartitionCount::new(8).unwrap();
        assert_eq!(count.partition(7).map(PartitionId::index), Some(7));
        assert_eq!(count.partition(8), None);
        assert_eq!(count.all().count(), 8);
    }
}
