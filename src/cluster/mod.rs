//! This instance's part in the cluster: the lease keeper that acquires, renews, hands off and
//! releases partitions (`lease_keeper`). Which keys a partition holds and who should own it are
//! pure functions in `actors::cluster`; the leases are rows in PostgreSQL
//! (`adapters::postgres::PgPartitionLeases`).

mod lease_keeper;

pub use lease_keeper::{ChangeListener, KeeperError, LeaseKeeper, OwnershipChange};
