//! The Stripe client's retry policy against a scripted HTTP server, and the fake's own API
//! contract (auth, idempotency replay and mismatch, cancel, refund).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use actors::domain::{CorrelationId, Currency, Money, OrderId, PaymentMethod};
use actors::ports::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};
use adapters::stripe::client::StripeError;
use adapters::stripe::{StripeClient, StripeConfig};

/// One scripted answer: status, optional Stripe-Should-Retry, body.
type Answer = (u16, Option<&'static str>, Value);

struct Script {
    answers: Mutex<Vec<Answer>>,
    keys: Mutex<Vec<String>>,
}

async fn scripted(answers: Vec<Answer>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        answers: Mutex::new(answers),
        keys: Mutex::new(Vec::new()),
    });
    let state = script.clone();
    let app = Router::new().route(
        "/v1/payment_intents",
        post(move |headers: HeaderMap| {
            let state = state.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                state
                    .keys
                    .lock()
                    .map(|mut k| k.push(key))
                    .unwrap_or_default();
                let next = state
                    .answers
                    .lock()
                    .ok()
                    .and_then(|mut a| (!a.is_empty()).then(|| a.remove(0)));
                let (status, retry, body) = next.unwrap_or((500, None, json!({})));
                let mut response = (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    axum::Json(body),
                )
                    .into_response();
                if let Some(retry) = retry {
                    response.headers_mut().insert(
                        "stripe-should-retry",
                        axum::http::HeaderValue::from_static(retry),
                    );
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), script)
}

fn client(base: &str) -> StripeClient {
    ordersaga::install_crypto_provider();
    let mut config = StripeConfig::new(base, "sk_test_x");
    config.initial_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(20);
    StripeClient::new(config).unwrap()
}

fn charge() -> ChargeRequest {
    let eur = Currency::parse("EUR").unwrap();
    ChargeRequest {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        amount: Money::new(1000, eur).unwrap(),
        payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
        attempt: 1,
        idempotency_key: "ordersaga-test-payment-1".into(),
    }
}

fn intent() -> Value {
    json!({"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 1000, "currency": "eur"})
}

fn api_error(kind: &str) -> Value {
    json!({"error": {"type": kind, "message": "scripted"}})
}

#[tokio::test]
async fn conflicts_and_server_errors_are_retried_with_the_same_idempotency_key() {
    let (base, script) = scripted(vec![
        (409, None, api_error("api_error")),
        (503, None, api_error("api_error")),
        (200, None, intent()),
    ])
    .await;
    let outcome = client(&base).charge(&charge()).await;
    assert_eq!(
        outcome,
        Ok(ChargeOutcome::Succeeded {
            reference: "pi_1".into()
        }),
        "a succeeded intent is final: no need to wait for the webhook"
    );
    let keys = script.keys.lock().map(|k| k.clone()).unwrap_or_default();
    assert_eq!(keys, vec!["ordersaga-test-payment-1"; 3]);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let (base, script) = scripted(vec![
        (400, None, api_error("invalid_request_error")),
        (200, None, intent()),
    ])
    .await;
    let outcome = client(&base).charge(&charge()).await;
    assert!(
        matches!(outcome, Err(GatewayError::Permanent(_))),
        "{outcome:?}"
    );
    assert_eq!(script.keys.lock().map(|k| k.len()).unwrap_or(0), 1);
}

#[tokio::test]
async fn stripe_should_retry_overrides_the_status_either_way() {
    let (base, script) = scripted(vec![
        (429, Some("true"), api_error("rate_limit_error")),
        (200, None, intent()),
    ])
    .await;
    assert!(client(&base).charge(&charge()).await.is_ok());
    assert_eq!(
        script.keys.lock().map(|k| k.len()).unwrap_or(0),
        2,
        "429 retried because Stripe said so"
    );

    let (base, script) = scripted(vec![
        (500, Some("false"), api_error("api_error")),
        (200, None, intent()),
    ])
    .await;
    assert!(matches!(
        client(&base).charge(&charge()).await,
        Err(GatewayError::Permanent(_))
    ));
    assert_eq!(
        script.keys.lock().map(|k| k.len()).unwrap_or(0),
        1,
        "500 not retried because Stripe said not to"
    );
}

#[tokio::test]
async fn attempts_are_bounded_and_exhaustion_is_transient() {
    let (base, script) = scripted(vec![(500, None, api_error("api_error")); 10]).await;
    let outcome = client(&base).charge(&charge()).await;
    assert!(
        matches!(outcome, Err(GatewayError::Transient(_))),
        "{outcome:?}"
    );
    assert_eq!(script.keys.lock().map(|k| k.len()).unwrap_or(0), 4);
}

#[tokio::test]
async fn an_unreachable_api_is_a_transient_failure() {
    let port = crate::helpers::free_port();
    let outcome = client(&format!("http://127.0.0.1:{port}"))
        .create_payment_intent(&charge())
        .await;
    assert!(
        matches!(outcome, Err(StripeError::Transport(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_card_error_becomes_a_decline_with_stripes_code_and_message() {
    let body = json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
        "message": "Your card was declined.", "payment_intent": {"id": "pi_9"}}});
    let (base, _) = scripted(vec![(402, None, body)]).await;
    let outcome = client(&base).charge(&charge()).await;
    assert_eq!(
        outcome,
        Ok(ChargeOutcome::Declined {
            reference: Some("pi_9".into()),
            code: "card_declined".into(),
            message: "Your card was declined.".into()
        })
    );
}

#[tokio::test]
async fn the_fake_replays_idempotent_requests_and_refuses_a_reused_key_with_other_parameters() {
    ordersaga::install_crypto_provider();
    let fake = stripe_fake::StripeFake::start(
        "127.0.0.1:0".parse().unwrap(),
        stripe_fake::FakeConfig::default(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let create = |key: &'static str, amount: &'static str, auth: &'static str| {
        http.post(format!("{}/v1/payment_intents", fake.base_url()))
            .header("Authorization", auth)
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "amount={amount}&currency=eur&payment_method=pm_card_visa&confirm=true"
            ))
            .send()
    };
    let unauthorised = create("k0", "100", "Bearer nope").await.unwrap();
    assert_eq!(unauthorised.status(), 401);

    let first: Value = create("k1", "100", "Bearer sk_test_1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    let again = create("k1", "100", "Bearer sk_test_1").await.unwrap();
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.unwrap_or_default();
    assert_eq!(first["id"], again["id"]);
    let other = create("k1", "200", "Bearer sk_test_1").await.unwrap();
    assert_eq!(other.status(), 400);
    let other: Value = other.json().await.unwrap_or_default();
    assert_eq!(other["error"]["type"], "idempotency_error");
    let ledger = fake.state.ledger();
    assert_eq!(
        ledger["charges"].as_array().map(Vec::len),
        Some(1),
        "charged once for one key"
    );

    // A succeeded intent cannot be canceled; it can be refunded once.
    let client = client(&fake.base_url());
    let pi = first["id"].as_str().unwrap_or_default();
    let cancel = client.cancel_payment_intent(pi, "cancel-1").await;
    assert!(
        matches!(cancel, Err(StripeError::Api { status: 400, .. })),
        "{cancel:?}"
    );
    let refund = client.create_refund(pi, "refund-1").await.unwrap();
    assert!(refund.id.starts_with("re_fake_"));
    let replay = client.create_refund(pi, "refund-1").await.unwrap();
    assert_eq!(replay.id, refund.id, "a retried refund replays");
    let twice = client.create_refund(pi, "refund-2").await;
    assert!(
        matches!(twice, Err(StripeError::Api { code: Some(ref c), .. }) if c == "charge_already_refunded"),
        "{twice:?}"
    );
}

#[tokio::test]
async fn a_rejected_api_key_makes_the_ping_fail_while_a_valid_one_passes() {
    ordersaga::install_crypto_provider();
    let fake = stripe_fake::StripeFake::start(
        "127.0.0.1:0".parse().unwrap(),
        stripe_fake::FakeConfig::default(),
    )
    .await
    .unwrap();
    assert!(client(&fake.base_url()).ping().await.is_ok());
    let wrong = StripeClient::new(StripeConfig::new(fake.base_url(), "rk_wrong")).unwrap();
    let refused = wrong.ping().await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("rejected the API key")),
        "{refused:?}"
    );
    assert!(
        !format!("{refused:?}").contains("rk_wrong"),
        "the key never appears in the error"
    );
}
