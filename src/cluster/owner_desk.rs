//! Where this instance answers the HTTP requests that other instances forward to it as the
//! owner of an order partition (`http::owner_forwarding` sends them). It listens on a
//! partition's subject only while it owns the partition, so a request for a partition in a
//! hand-off finds nobody, and the instance that asked answers it itself.

use std::sync::Arc;

use actors::cluster::{KeySpace, PartitionId};
use adapters::nats as bus;

use super::{ChangeListener, OwnershipChange};
use crate::http::owner_forwarding::answer_forwarded;

/// Opens the request subjects of the order partitions this instance gains and closes those of
/// the partitions it loses; each request is answered by `router`, as if it had arrived here.
pub fn owner_desk(client: async_nats::Client, router: axum::Router) -> ChangeListener {
    let replies = client.clone();
    let desk = bus::PartitionMailbox::listening_to(
        client,
        KeySpace::Orders,
        bus::request_subject,
        Arc::new(move |message: async_nats::Message| {
            let Some(request) = bus::read_request(&message) else {
                return;
            };
            let (router, client) = (router.clone(), replies.clone());
            tokio::spawn(async move {
                let answer = answer_forwarded(router, request).await;
                if let Err(e) = bus::reply(&client, &message, answer).await {
                    tracing::debug!(error = %e, "cannot answer a forwarded request");
                }
            });
        }),
    );
    Arc::new(move |change| {
        let desk = desk.clone();
        Box::pin(async move {
            match change {
                OwnershipChange::Gained(KeySpace::Orders, gained) => {
                    let partitions: Vec<PartitionId> = gained.into_iter().map(|(p, _)| p).collect();
                    desk.open(&partitions).await
                }
                OwnershipChange::Dropped(KeySpace::Orders, lost) => {
                    desk.close(&lost);
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    })
}
