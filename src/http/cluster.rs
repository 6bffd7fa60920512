//! `GET /cluster` (behind `ADMIN_TOKEN`): the instances, their heartbeats, every partition with
//! its owner and epoch, and the hand-offs in progress, as PostgreSQL has them (so any instance
//! gives the same answer), plus what this instance holds by its own account.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use actors::cluster::{InstanceId, plan};

use super::error::ErrorBody;
use super::{ApiError, AppState};

#[derive(Serialize, ToSchema)]
pub struct ClusterOverview {
    /// The instance that answered.
    instance: String,
    partition_count: usize,
    /// Partitions this instance holds by its own account (its lease keeper's view).
    owned_here: usize,
    instances: Vec<ClusterInstance>,
    partitions: Vec<ClusterPartition>,
    /// Partitions whose holder is not the one the plan over the live instances names: moving
    /// now, or waiting for a dead owner's lease to run out.
    handoffs: Vec<Handoff>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterInstance {
    instance_id: String,
    http_address: String,
    started_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    /// Leaving: its partitions go to the others.
    draining: bool,
    /// Heartbeat within the lease time.
    live: bool,
    /// Partitions it holds a live lease of.
    partitions: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterPartition {
    partition: i32,
    #[schema(required = true)]
    owner: Option<String>,
    /// Raised on every acquisition; every write for the partition is checked against it.
    epoch: i64,
    lease_until: DateTime<Utc>,
    #[schema(required = true)]
    acquired_at: Option<DateTime<Utc>>,
    /// Held and not run out.
    live: bool,
    /// Who should hold it, by the plan over the live instances.
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
        (status = 200, description = "The cluster's instances, partitions and hand-offs.", body = ClusterOverview),
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
    let live: Vec<InstanceId> = instances
        .iter()
        .filter(|i| i.live && !i.draining)
        .filter_map(|i| InstanceId::parse(&i.instance_id).ok())
        .collect();
    let count = cluster.ownership.count();
    let planned = plan(count, &live);
    let planned_owner = |partition: i32| {
        count
            .partition(i64::from(partition))
            .and_then(|p| planned[p.index()].as_ref())
            .map(|i| i.as_str().to_owned())
    };
    let live_holder =
        |l: &adapters::postgres::partition_leases::LeaseRecord| l.owner.clone().filter(|_| l.live);
    let handoffs = leases
        .iter()
        .filter(|l| live_holder(l) != planned_owner(l.partition))
        .map(|l| Handoff {
            partition: l.partition,
            from: live_holder(l),
            to: planned_owner(l.partition),
        })
        .collect();
    let instances = instances
        .into_iter()
        .map(|i| ClusterInstance {
            partitions: leases
                .iter()
                .filter(|l| l.live && l.owner.as_deref() == Some(i.instance_id.as_str()))
                .count(),
            instance_id: i.instance_id,
            http_address: i.http_address,
            started_at: i.started_at,
            heartbeat_at: i.heartbeat_at,
            draining: i.draining,
            live: i.live,
        })
        .collect();
    let partitions = leases
        .into_iter()
        .map(|l| ClusterPartition {
            planned_owner: planned_owner(l.partition),
            partition: l.partition,
            owner: l.owner,
            epoch: l.epoch,
            lease_until: l.lease_until,
            acquired_at: l.acquired_at,
            live: l.live,
        })
        .collect();
    Ok(Json(ClusterOverview {
        instance: cluster.leases.instance().to_string(),
        partition_count: count.get(),
        owned_here: cluster.ownership.owned().len(),
        instances,
        partitions,
        handoffs,
    }))
}
