//! Who should own each partition, given the live instances: rendezvous hashing with a bounded
//! load.
//!
//! Every instance computes the same plan from the same list of live instances, with no
//! coordinator: each partition ranks the instances by a hash of (instance, partition) and goes to
//! the best-ranked one that still has room (⌊partitions / instances⌋, and one more for the first
//! few to reach it). Plain rendezvous hashing
//! moves few partitions when an instance comes or goes, but with 64 partitions over 3 instances
//! it often gives one of them a third more than another; the bound keeps the spread within one
//! partition, at the price of a few more moves.

use std::fmt;

use super::partition::{PartitionCount, PartitionId};

/// An instance's name in the cluster: printable ASCII without spaces, 1 to 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an instance id is 1 to 128 printable ASCII characters without spaces")]
pub struct BadInstanceId;

impl InstanceId {
    pub fn parse(raw: &str) -> Result<Self, BadInstanceId> {
        let valid = (1..=128).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        match valid {
            true => Ok(Self(raw.to_owned())),
            false => Err(BadInstanceId),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rendezvous score of `instance` for `partition`: FNV-1a 64 of the instance's name, mixed
/// with the partition by SplitMix64's finaliser (FNV alone mixes its last bytes poorly).
fn score(instance: &InstanceId, partition: PartitionId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance.0.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash ^ (partition.index() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The planned owner of every partition (by index), chosen among `live`; `None` for all of them
/// when no instance is live. The order of `live` does not matter.
pub fn plan(count: PartitionCount, live: &[InstanceId]) -> Vec<Option<InstanceId>> {
    let mut instances: Vec<&InstanceId> = live.iter().collect();
    instances.sort();
    instances.dedup();
    if instances.is_empty() {
        return vec![None; count.get()];
    }
    // Each instance gets `floor` partitions, and `extra` of them one more.
    let (floor, mut extra) = (count.get() / instances.len(), count.get() % instances.len());
    let mut load = vec![0usize; instances.len()];
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(instances.len());
    count
        .all()
        .map(|partition| {
            ranked.clear();
            ranked.extend(
                instances
                    .iter()
                    .enumerate()
                    .map(|(i, instance)| (score(instance, partition), i)),
            );
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            // Until the last partition the loads sum to less than the room there is, so one of
            // the instances always has some.
            let chosen = ranked
                .iter()
                .map(|(_, i)| *i)
                .find(|i| load[*i] < floor || (load[*i] == floor && extra > 0))
                .unwrap_or(ranked[0].1);
            if load[chosen] == floor {
                extra = extra.saturating_sub(1);
            }
            load[chosen] += 1;
            Some(instances[chosen].clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances(names: &[&str]) -> Vec<InstanceId> {
        names
            .iter()
            .map(|n| InstanceId::parse(n).unwrap())
            .collect()
    }

    fn loads(plan: &[Option<InstanceId>], live: &[InstanceId]) -> Vec<usize> {
        live.iter()
            .map(|i| plan.iter().filter(|o| o.as_ref() == Some(i)).count())
            .collect()
    }

    #[test]
    fn partitions_are_spread_within_one_of_each_other() {
        let count = PartitionCount::new(64).unwrap();
        let names = [
            "a:8080", "b:8080", "c:8080", "d:8080", "e:8080", "f:8080", "g:8080",
        ];
        for n in 1..=names.len() {
            let live = instances(&names[..n]);
            let plan = plan(count, &live);
            let loads = loads(&plan, &live);
            assert_eq!(loads.iter().sum::<usize>(), 64);
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(max - min <= 1, "{n} instances: {loads:?}");
        }
    }

    #[test]
    fn every_instance_computes_the_same_plan_whatever_the_order_it_lists_them_in() {
        let count = PartitionCount::new(64).unwrap();
        let forward = instances(&["x-1", "x-2", "x-3"]);
        let backward = instances(&["x-3", "x-1", "x-2", "x-1"]);
        assert_eq!(plan(count, &forward), plan(count, &backward));
    }

    #[test]
    fn a_joining_instance_takes_its_share_and_little_else_moves() {
        let count = PartitionCount::new(64).unwrap();
        let before = plan(count, &instances(&["node-a", "node-b", "node-c"]));
        let after = plan(count, &instances(&["node-a", "node-b", "node-c", "node-d"]));
        let joined = InstanceId::parse("node-d").unwrap();
        let to_new = (0..64)
            .filter(|p| after[*p].as_ref() == Some(&joined))
            .count();
        let between_old = (0..64)
            .filter(|p| after[*p] != before[*p] && after[*p].as_ref() != Some(&joined))
            .count();
        assert_eq!(to_new, 16);
        // Rebuilding the plan from scratch would move about three quarters of the partitions.
        assert!(
            between_old <= 8,
            "{between_old} moved between old instances"
        );
    }

    #[test]
    fn a_leaving_instance_s_partitions_are_shared_by_the_others() {
        let count = PartitionCount::new(64).unwrap();
        let before = plan(count, &instances(&["node-a", "node-b", "node-c"]));
        let after = plan(count, &instances(&["node-a", "node-b"]));
        let gone = InstanceId::parse("node-c").unwrap();
        let kept = (0..64)
            .filter(|p| before[*p].as_ref() != Some(&gone) && after[*p] == before[*p])
            .count();
        let survivors_had = (0..64)
            .filter(|p| before[*p].as_ref() != Some(&gone))
            .count();
        assert!(
            survivors_had - kept <= 8,
            "{} of the survivors' {survivors_had} partitions moved",
            survivors_had - kept
        );
        assert!(after.iter().all(|o| o.as_ref() != Some(&gone)));
    }

    #[test]
    fn no_live_instance_means_no_owner() {
        let count = PartitionCount::new(4).unwrap();
        assert_eq!(plan(count, &[]), vec![None; 4]);
    }

    #[test]
    fn instance_ids_are_printable_and_bounded() {
        assert!(InstanceId::parse("host-1:8080").is_ok());
        assert!(InstanceId::parse("").is_err());
        assert!(InstanceId::parse("has space").is_err());
        assert!(InstanceId::parse(&"x".repeat(129)).is_err());
    }
}
