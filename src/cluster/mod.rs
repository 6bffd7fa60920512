//! This instance's part in the cluster: the lease keeper that acquires, renews, hands off and
//! releases partitions (`lease_keeper`), and the desk where it answers the HTTP requests other
//! instances forward to it as an order's owner (`owner_desk`). Which keys a partition holds and who should own it are
//! pure functions in `actors::cluster`; the leases are rows in PostgreSQL
//! (`adapters::postgres::PgPartitionLeases`).

mod lease_keeper;
mod owner_desk;

pub use lease_keeper::{ChangeListener, KeeperError, LeaseKeeper, OwnershipChange};
pub use owner_desk::owner_desk;
