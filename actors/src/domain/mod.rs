//! Domain types that parse, not validate: once a value of one of these types exists it is valid, so
//! inner code never re-checks. Raw input becomes one of these at the edge (HTTP, NATS, database).

mod ids;
mod money;
mod order_line;
mod quantity;
mod sku;

pub use ids::{CorrelationId, CustomerId, OrderId, PaymentMethod};
pub use money::{Currency, Money, MoneyError};
pub use order_line::{OrderLine, PricedLine};
pub use quantity::Quantity;
pub use sku::Sku;

/// Why a raw value was refused. Carries a human sentence; the edge adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
