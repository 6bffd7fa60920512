//! Payment gateways behind the `PaymentGateway` port.

mod simulated;

pub use simulated::SimulatedGateway;
