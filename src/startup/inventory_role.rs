//! The inventory role: the shard actors, the reservation sweeper, and (when the order role runs
//! elsewhere) the consumers of the saga's inventory commands.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use actors::cluster::{KeySpace, Ownership, PartitionId};
use actors::events::Envelope;
use actors::inventory::InventoryShards;
use actors::ports::{ExpiredReservation, ReservationLedger};
use actors::saga::SagaEvent;
use adapters::nats as bus;
use adapters::postgres as pg;

use super::StartupError;
use super::wiring::{Wiring, answering};
use crate::cluster::{ChangeListener, OwnershipChange};
use crate::configuration::Role;

/// The running inventory role.
pub(crate) struct InventoryRole {
    pub shards: InventoryShards,
    mailbox: bus::PartitionMailbox,
}

impl InventoryRole {
    /// What the inventory role does when its SKU partitions change hands: it listens to the
    /// commands for the partitions it gains and stops listening for those it loses. A shard
    /// keeps nothing of a partition between batches (the ledger is in PostgreSQL), so there is
    /// nothing else to recover or stop.
    pub(crate) fn ownership_listener(&self) -> ChangeListener {
        let mailbox = self.mailbox.clone();
        Arc::new(move |change| {
            let mailbox = mailbox.clone();
            Box::pin(async move {
                match change {
                    OwnershipChange::Gained(KeySpace::Skus, gained) => {
                        let partitions: Vec<PartitionId> =
                            gained.into_iter().map(|(p, _)| p).collect();
                        mailbox.open(&partitions).await
                    }
                    OwnershipChange::Dropped(KeySpace::Skus, lost) => {
                        mailbox.close(&lost);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            })
        })
    }
}

pub(crate) async fn start(
    wiring: &mut Wiring<'_>,
    ownership: Ownership,
) -> Result<InventoryRole, StartupError> {
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
    // Commands for SKUs another instance owns are posted to it; this instance's arrive in its
    // mailbox and are handed to its shards like its own.
    let mail = bus::NatsClusterMail::new(wiring.nats.clone(), ownership.count());
    wiring
        .postman
        .reach_sku_owners(ownership.clone(), Arc::new(mail));
    let postman = wiring.postman.clone();
    let mailbox = bus::PartitionMailbox::new(
        wiring.nats.clone(),
        KeySpace::Skus,
        Arc::new(move |letter: &[u8]| {
            if let Ok(command) = Envelope::from_json(letter) {
                postman.dispatch([&command], false);
            }
        }),
    );

    start_sweeper(wiring, &shards, ledger, ownership);

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
    Ok(InventoryRole { shards, mailbox })
}

/// Settles, every sweep interval, the reservations of this instance's SKUs that expired or
/// whose order finished without settling them, and tells each order's saga its stock is back.
fn start_sweeper(
    wiring: &mut Wiring<'_>,
    shards: &InventoryShards,
    ledger: Arc<dyn ReservationLedger>,
    ownership: Ownership,
) {
    let (sweeper, token, postman) = (
        shards.clone(),
        wiring.shutdown.clone(),
        wiring.postman.clone(),
    );
    let interval = Duration::from_millis(wiring.settings.reservation_sweep_interval_ms);
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
}
