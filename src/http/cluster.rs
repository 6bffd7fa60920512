//! `GET /cluster` (behind `ADMIN_TOKEN`): the instances, their heartbeats, every partition of
//! each key space with its owner and epoch, and the hand-offs in progress, as PostgreSQL has them (so any instance
//! gives the same answer), plus what this instance holds by its own account.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use actors::cluster::{InstanceId, KeySpace, PartitionCount, plan};
use adapters::postgres::partition_leases::{InstanceRecord, LeaseRecord};

use super::error::ErrorBody;
use super::{ApiError, AppState};

#[derive(Serialize, ToSchema)]
pub struct ClusterOverview {
    /// The instance that answered.
    instance: String,
    partition_count: usize,
    /// Partitions this instance holds by its own account (its lease keeper's view), by key
    /// space (`orders` when it runs the order role, `skus` when it runs the inventory role).
    owned_here: BTreeMap<String, usize>,
    instances: Vec<ClusterInstance>,
    /// Each key space's partitions: order ids are shared among the instances that run the
    /// order role, SKUs among those that run the inventory role.
    key_spaces: Vec<KeySpaceOverview>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterInstance {
    instance_id: String,
    http_address: String,
    /// The key spaces whose partitions it shares.
    key_spaces: Vec<String>,
    started_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    /// Leaving: its partitions go to the others.
    draining: bool,
    /// Heartbeat within the lease time.
    live: bool,
    /// Partitions it holds a live lease of, by key space.
    partitions: BTreeMap<String, usize>,
}

#[derive(Serialize, ToSchema)]
pub struct KeySpaceOverview {
    key_space: String,
    partitions: Vec<ClusterPartition>,
    /// Partitions whose holder is not the one the plan over the live instances names: moving
    /// now, or waiting for a dead owner's lease to run out.
    handoffs: Vec<Handoff>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterPartition {
    partition: i32,
    #[schema(required = true)]
    owner: Option<String>,
    /// Raised on every acquisition; a write made under an older one is refused.
    epoch: i64,
    lease_until: DateTime<Utc>,
    #[schema(required = true)]
    acquired_at: Option<DateTime<Utc>>,
    /// Held and not run out.
    live: bool,
    /// Who should hold it, by the plan over the live instances that serve its key space.
    #[schema(required = true)]
    planned_owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Handoff {
    partition: i32,
    /// The holder, if its lease is live.
    #[schema(required = true)]
    from: Option<String>,
    #[schema(required = true)]
    to: Option<String>,
}

#[utoipa::path(
    get,
    path = "/cluster",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    responses(
        (status = 200, description = "The cluster's instances, and each key space's partitions and hand-offs.", body = ClusterOverview),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
pub async fn cluster_overview(
    State(state): State<AppState>,
) -> Result<Json<ClusterOverview>, ApiError> {
    let cluster = &state.cluster;
    let instances = cluster.leases.instances().await?;
    let leases = cluster.leases.leases().await?;
    let key_spaces = KeySpace::ALL
        .into_iter()
        .map(|space| key_space(cluster.count, space, &instances, &leases))
        .collect();
    let held = |instance: &str, space: KeySpace| {
        leases
            .iter()
            .filter(|l| l.key_space == space.as_str() && l.live)
            .filter(|l| l.owner.as_deref() == Some(instance))
            .count()
    };
    let instances = instances
        .iter()
        .map(|i| ClusterInstance {
            partitions: KeySpace::ALL
                .into_iter()
                .filter(|s| i.key_spaces.iter().any(|k| k == s.as_str()))
                .map(|s| (s.as_str().to_owned(), held(&i.instance_id, s)))
                .collect(),
            instance_id: i.instance_id.clone(),
            http_address: i.http_address.clone(),
            key_spaces: i.key_spaces.clone(),
            started_at: i.started_at,
            heartbeat_at: i.heartbeat_at,
            draining: i.draining,
            live: i.live,
        })
        .collect();
    let owned_here = [&cluster.orders, &cluster.skus]
        .into_iter()
        .flatten()
        .map(|o| (o.space().as_str().to_owned(), o.owned().len()))
        .collect();
    Ok(Json(ClusterOverview {
        instance: cluster.leases.instance().to_string(),
        partition_count: cluster.count.get(),
        owned_here,
        instances,
        key_spaces,
    }))
}

/// One key space's partitions, their planned owners among the live instances that serve it,
/// and the hand-offs.
fn key_space(
    count: PartitionCount,
    space: KeySpace,
    instances: &[InstanceRecord],
    leases: &[LeaseRecord],
) -> KeySpaceOverview {
    let live: Vec<InstanceId> = instances
        .iter()
        .filter(|i| i.live && !i.draining && i.key_spaces.iter().any(|k| k == space.as_str()))
        .filter_map(|i| InstanceId::parse(&i.instance_id).ok())
        .collect();
    let planned = plan(count, &live);
    let planned_owner = |partition: i32| {
        count
            .partition(i64::from(partition))
            .and_then(|p| planned[p.index()].as_ref())
            .map(|i| i.as_str().to_owned())
    };
    let leases = leases.iter().filter(|l| l.key_space == space.as_str());
    let live_holder = |l: &LeaseRecord| l.owner.clone().filter(|_| l.live);
    let handoffs = leases
        .clone()
        .filter(|l| live_holder(l) != planned_owner(l.partition))
        .map(|l| Handoff {
            partition: l.partition,
            from: live_holder(l),
            to: planned_owner(l.partition),
        })
        .collect();
    let partitions = leases
        .map(|l| ClusterPartition {
            planned_owner: planned_owner(l.partition),
            partition: l.partition,
            owner: l.owner.clone(),
            epoch: l.epoch,
            lease_until: l.lease_until,
            acquired_at: l.acquired_at,
            live: l.live,
        })
        .collect();
    KeySpaceOverview {
        key_space: space.as_str().to_owned(),
        partitions,
        handoffs,
    }
}
