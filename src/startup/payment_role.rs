//! The payment role: the payment service behind the provider's client (real Stripe, or the
//! in-process fake), the webhook worker, and the consumers of the saga's payment commands.
//!
//! Charges reach the service from the postman when the order role runs here, else from the
//! `payment-requests` consumer. Refunds and charge cancellations always come through their
//! consumers: they are rare and no order waits on them to complete.

use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use actors::payments::{FailureStreak, PaymentService};
use adapters::nats as bus;
use adapters::postgres as pg;
use adapters::stripe::{StripeClient, StripeConfig, WebhookInbox, WebhookVerifier};
use stripe_fake::{FakeConfig, StripeFake};

use super::StartupError;
use super::wiring::{Wiring, answering};
use crate::configuration::{DEV_WEBHOOK_SECRET, Role, Settings};
use crate::http;

/// The running payment role: what the HTTP layer serves (webhooks, the provider's client), and
/// the in-process Stripe fake when no real key is configured.
pub(crate) struct PaymentRole {
    pub http: http::PaymentHttp,
    pub stripe_fake: Option<StripeFake>,
}

pub(crate) async fn start(
    wiring: &mut Wiring<'_>,
    address: SocketAddr,
) -> Result<PaymentRole, StartupError> {
    let settings = wiring.settings;
    let payments = payments(settings, address).await?;
    let streak = Arc::new(FailureStreak::new(settings.payment_failure_streak_alert));
    let records = pg::PgPaymentRecords::new(
        wiring.pool.clone(),
        wiring.signal.clone(),
        settings.charge_writer_count(),
    );
    let recorded_charges = records.recorded_charges();
    let service = PaymentService::with_streak(
        Arc::new(payments.client.clone()),
        Arc::new(records),
        wiring.clock.clone(),
        streak,
    );
    wiring.postman.serve_payments(service.clone());

    let mut specs = vec![bus::PAYMENT_REFUNDS, bus::PAYMENT_CANCELLATIONS];
    if !settings.runs(Role::Order) {
        specs.push(bus::PAYMENT_REQUESTS);
    }
    for spec in specs {
        let service = service.clone();
        let handler = answering(
            &wiring.postman,
            move |envelope, delivery: bus::DeliveryCount| {
                let service = service.clone();
                async move { service.answer(&envelope, delivery.is_first()).await }
            },
        );
        wiring
            .consume(spec, settings.retry_policy_payment, handler)
            .await?;
    }

    let inbox = WebhookInbox::new(wiring.pool.clone(), recorded_charges);
    let (worker, postman, token) = (
        inbox.clone(),
        wiring.postman.clone(),
        wiring.shutdown.clone(),
    );
    wiring.spawn("webhook worker", async move {
        worker.run(service, postman, token).await;
        Ok(())
    });
    Ok(PaymentRole {
        http: http::PaymentHttp {
            inbox,
            verifier: payments.verifier,
            stripe: payments.client,
        },
        stripe_fake: payments.fake,
    })
}

/// The payment provider this process talks to, and what verifies its webhooks.
struct Payments {
    client: StripeClient,
    verifier: WebhookVerifier,
    fake: Option<StripeFake>,
}

/// Real Stripe when a key is configured; otherwise the fake, started here, whose webhooks come
/// back to this process's `/payments/webhook`.
async fn payments(settings: &Settings, address: SocketAddr) -> Result<Payments, StartupError> {
    let tolerance = Duration::from_secs(settings.stripe_webhook_tolerance_secs);
    let secrets = settings.stripe_webhook_secret.clone();
    if let Some(key) = &settings.stripe_secret_key {
        if secrets.is_empty() {
            return Err(StartupError::Stripe(
                "STRIPE_WEBHOOK_SECRET is required with STRIPE_SECRET_KEY (comma separate several during a rotation)".into(),
            ));
        }
        let client = StripeClient::new(StripeConfig::new(&settings.stripe_api_base, key.clone()))
            .map_err(|e| StartupError::Stripe(e.to_string()))?;
        return Ok(Payments {
            client,
            verifier: WebhookVerifier::new(secrets, tolerance),
            fake: None,
        });
    }
    // The fake signs with it: it is this process's own, not a credential of anyone's.
    let secret = secrets.first().map_or_else(
        || DEV_WEBHOOK_SECRET.to_owned(),
        |s| s.expose_secret().to_owned(),
    );
    let webhook_host = if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let config = FakeConfig {
        webhook_url: Some(format!("http://{webhook_host}/payments/webhook")),
        webhook_secret: secret.clone(),
        processing_delay: Duration::from_millis(settings.stripe_fake_delay_ms),
        api_delay: Duration::from_millis(settings.stripe_fake_api_delay_ms),
        ..FakeConfig::default()
    };
    let fake = StripeFake::start(settings.stripe_fake_addr, config)
        .await
        .map_err(|source| StartupError::Listen {
            addr: settings.stripe_fake_addr,
            source,
        })?;
    info!(address = %fake.address, "no STRIPE_SECRET_KEY: payments go to the in-process Stripe fake");
    let client = StripeClient::new(StripeConfig::new(fake.base_url(), "sk_test_ordersaga_fake"))
        .map_err(|e| StartupError::Stripe(e.to_string()))?;
    Ok(Payments {
        client,
        verifier: WebhookVerifier::new(vec![secret], tolerance),
        fake: Some(fake),
    })
}
