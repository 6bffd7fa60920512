//! Stripe: our own small REST client for the PaymentIntents calls ordersaga needs, and the
//! webhook signature verifier. The same client talks to api.stripe.com or to the project's
//! Stripe-compatible fake; only the base URL and key differ.

pub mod client;
pub mod inbox;
pub mod webhook;

pub use client::{StripeClient, StripeConfig};
pub use inbox::{Recorded, WebhookInbox};
pub use stripe_signature as signature;
pub use stripe_signature::{SignatureError, WebhookVerifier, sign, signature_header};
