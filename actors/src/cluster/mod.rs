//! Which instance of a cluster owns which keys.
//!
//! Every order id and every SKU hashes to one of a fixed number of partitions; each partition is
//! owned by one live instance at a time, under an epoch that rises on every change of owner. This
//! module holds the pure parts: the hash (`partition`), who should own what (`assignment`), and
//! the process's view of what it owns now (`ownership`), which actors and adapters consult. The
//! leases themselves live in PostgreSQL (the adapters' `PgPartitionLeases`), because the epoch has
//! to be checked inside the same transactions that write a partition's data.

pub mod assignment;
pub mod ownership;
pub mod partition;

pub use assignment::{InstanceId, plan};
pub use ownership::{Epoch, Ownership};
pub use partition::{KeySpace, PartitionCount, PartitionId, fnv1a32};
