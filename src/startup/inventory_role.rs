//! The inventory role: the shard actors, the reservation sweeper, and (when the order role runs
//! elsewhere) the consumers of the saga's inventory commands.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use actors::cluster::Ownership;
use actors::inventory::InventoryShards;
use actors::ports::{ExpiredReservation, ReservationLedger};
use actors::saga::SagaEvent;
use adapters::nats as bus;
use adapters::postgres as pg;

use super::StartupError;
use super::wiring::{Wiring, answering};
use crate::configuration::Role;

pub(crate) async fn start(
    wiring: &mut Wiring<'_>,
    ownership: Ownership,
) -> Result<InventoryShards, StartupError> {
    let settings = wiring.settings;
    let ledger: Arc<dyn ReservationLedger> = Arc::new(pg::PgReservationLedger::new(
        wiring.pool.clone(),
        wiring.signal.clone(),
    ));
    let shards = InventoryShards::spawn(
        settings.inventory_shard_count(),
        ledger.clone(),
        wiring.clock.clone(),
        settings.reservation_ttl(),
    )
    .await
    .map_err(|e| StartupError::Actors(e.to_string()))?;
    wiring.postman.serve_inventory(shards.clone());

    let (sweeper, token, postman) = (
        shards.clone(),
        wiring.shutdown.clone(),
        wiring.postman.clone(),
    );
    let interval = Duration::from_millis(settings.reservation_sweep_interval_ms);
    wiring.spawn("reservation sweeper", async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            let tell_saga = |order_id| {
                postman.answer_order(order_id, SagaEvent::StockReleased);
            };
            // A reservation whose SKU no longer parses is swept by every instance: releasing
            // it is idempotent, and leaving it would hold its units for ever.
            let owns = |expired: &ExpiredReservation| {
                expired
                    .routing_sku
                    .as_ref()
                    .is_none_or(|sku| ownership.owns_sku(sku))
            };
            match sweeper.sweep(ledger.as_ref(), 500, owns, tell_saga).await {
                Ok(0) => {}
                Ok(n) => info!(orders = n, "expired reservations settled"),
                Err(e) => warn!(error = %e, "reservation sweep failed; will retry"),
            }
        }
    });

    if !settings.runs(Role::Order) {
        for spec in [bus::INVENTORY_ORDERS, bus::INVENTORY_COMMANDS] {
            let shards = shards.clone();
            let handler = answering(&wiring.postman, move |envelope, _| {
                let shards = shards.clone();
                async move { shards.answer(&envelope).await }
            });
            wiring
                .consume(spec, settings.retry_policy_inventory, handler)
                .await?;
        }
    }
    Ok(shards)
}
