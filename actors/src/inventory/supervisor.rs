//! The shards' supervisor: spawns the N shard actors linked to itself and replaces one that
//! crashes, at the same index, so its SKUs are served again at once.
//!
//! A shard holds nothing that a crash could lose: its parked requests die with it, their callers
//! get an error and the broker redelivers the messages (every ledger operation is idempotent), and
//! all stock lives in the ledger. So a restart is just a fresh actor in the slot the router reads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::error;

use super::shard::{InventoryShard, ShardMessage};
use crate::ports::{ReservationLedger, SharedClock};

/// The current actor of each shard, read by the router on every call.
pub type ShardSlots = Arc<RwLock<Vec<ActorRef<ShardMessage>>>>;

pub struct ShardSupervisor;

pub struct ShardSupervisorArgs {
    pub count: usize,
    pub ledger: Arc<dyn ReservationLedger>,
    pub clock: SharedClock,
    pub slots: ShardSlots,
}

pub struct ShardSupervisorState {
    args: ShardSupervisorArgs,
    /// Which slot each live shard actor fills.
    index_of: HashMap<ActorId, usize>,
}

impl ShardSupervisorState {
    async fn spawn_shard(
        &mut self,
        myself: &ActorRef<()>,
        index: usize,
    ) -> Result<(), ActorProcessingErr> {
        let (shard, _join) = Actor::spawn_linked(
            None,
            InventoryShard,
            (index, self.args.ledger.clone(), self.args.clock.clone()),
            myself.get_cell(),
        )
        .await?;
        self.index_of.insert(shard.get_id(), index);
        let mut slots = self
            .args
            .slots
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match slots.get_mut(index) {
            Some(slot) => *slot = shard,
            None => slots.push(shard),
        }
        Ok(())
    }
}

impl Actor for ShardSupervisor {
    type Msg = ();
    type State = ShardSupervisorState;
    type Arguments = ShardSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShardSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = ShardSupervisorState {
            args,
            index_of: HashMap::new(),
        };
        for index in 0..state.args.count.max(1) {
            state.spawn_shard(&myself, index).await?;
        }
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Unlike ractor's default, a shard's death must never take the supervisor down.
        if let SupervisionEvent::ActorFailed(cell, err) = event
            && let Some(index) = state.index_of.remove(&cell.get_id())
        {
            metrics::counter!(
                crate::metrics::ACTOR_RESTARTS,
                "actor" => crate::metrics::INVENTORY_SHARD
            )
            .increment(1);
            error!(shard = index, error = %err, "inventory shard crashed; replacing it (its callers get an error and their messages are redelivered)");
            state.spawn_shard(&myself, index).await?;
        }
        Ok(())
    }
}
