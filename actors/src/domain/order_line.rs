//! Order lines: what the client asked for (`OrderLine`) and what the catalog priced it at
//! (`PricedLine`). The price is frozen into the order when it is placed, so a later catalog change
//! never alters what a customer is charged.

use serde::{Deserialize, Serialize};

use super::{Money, Quantity, Sku};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}
