//! A small Stripe REST client on reqwest: create, retrieve and cancel PaymentIntents, create
//! refunds. Form-encoded bodies, Bearer auth, an Idempotency-Key on every POST, and the official
//! SDKs' retry policy: connection errors, 409 and >= 500 are retried, `Stripe-Should-Retry`
//! overrides that either way, other 4xx are not; exponential backoff with jitter, bounded
//! attempts, a timeout per request. The secret key never appears in Debug output or logs.

use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::{debug, warn};

use actors::ports::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundRequest};

/// The API version this client is written against (pinned, so an account upgrade cannot change
/// response shapes under us).
pub const STRIPE_API_VERSION: &str = "2024-06-20";

#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or the fake's address.
    pub api_base: String,
    /// Redacted in `Debug`, wiped from memory when dropped.
    pub secret_key: SecretString,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub request_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl StripeConfig {
    pub fn new(api_base: impl Into<String>, secret_key: impl Into<SecretString>) -> Self {
        Self {
            api_base: api_base.into(),
            secret_key: secret_key.into(),
            max_attempts: 4,
            request_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A PaymentIntent as far as ordersaga reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub amount: i64,
}

/// Stripe's error object: `{"error":{"type","code","decline_code","message","param"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Box<PaymentIntentRef>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentIntentRef {
    pub id: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// The card was declined (HTTP 402, `type: card_error`).
    #[error("card error {code}: {message}")]
    Card {
        code: String,
        message: String,
        payment_intent: Option<String>,
    },
    /// Any other answer Stripe gave and that retrying did not or cannot fix.
    #[error("stripe answered {status}: {message}")]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        retryable: bool,
    },
    /// No answer at all (connection refused, timeout) after every attempt.
    #[error("stripe unreachable: {0}")]
    Transport(String),
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    config: StripeConfig,
}

impl StripeClient {
    pub fn new(config: StripeConfig) -> Result<Self, StripeError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StripeError::Transport(e.to_string()))?;
        Ok(Self { http, config })
    }

    pub fn api_base(&self) -> &str {
        &self.config.api_base
    }

    /// Creates and confirms a PaymentIntent. Its span carries the order's ids (log lines show
    /// only their innermost span), and nothing of the form or the key.
    #[tracing::instrument(level = "debug", skip_all, fields(order_id = %request.order_id, correlation_id = %request.correlation_id, attempt = request.attempt))]
    pub async fn create_payment_intent(
        &self,
        request: &ChargeRequest,
    ) -> Result<PaymentIntent, StripeError> {
        let form = vec![
            (
                "amount".to_owned(),
                request.amount.amount_cents().to_string(),
            ),
            (
                "currency".to_owned(),
                request.amount.currency().as_str().to_ascii_lowercase(),
            ),
            (
                "payment_method".to_owned(),
                request.payment_method.as_str().to_owned(),
            ),
            ("confirm".to_owned(), "true".to_owned()),
            // Server-side confirmation with no customer present: never a redirect (which would
            // need a return_url and a browser).
            (
                "automatic_payment_methods[enabled]".to_owned(),
                "true".to_owned(),
            ),
            (
                "automatic_payment_methods[allow_redirects]".to_owned(),
                "never".to_owned(),
            ),
            (
                "metadata[order_id]".to_owned(),
                request.order_id.to_string(),
            ),
            ("metadata[attempt]".to_owned(), request.attempt.to_string()),
            (
                "metadata[correlation_id]".to_owned(),
                request.correlation_id.to_string(),
            ),
        ];
        self.post("/v1/payment_intents", &form, &request.idempotency_key)
            .await
    }

    pub async fn retrieve_payment_intent(&self, id: &str) -> Result<PaymentIntent, StripeError> {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/payment_intents/{id}"),
            &[],
            None,
        )
        .await
    }

    pub async fn cancel_payment_intent(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<PaymentIntent, StripeError> {
        self.post(
            &format!("/v1/payment_intents/{id}/cancel"),
            &[],
            idempotency_key,
        )
        .await
    }

    pub async fn create_refund(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
    ) -> Result<Refund, StripeError> {
        let form = vec![("payment_intent".to_owned(), payment_intent.to_owned())];
        self.post("/v1/refunds", &form, idempotency_key).await
    }

    /// Whether the API answers at all (any HTTP answer counts: readiness, not authorisation).
    pub async fn ping(&self) -> Result<(), StripeError> {
        let response = self
            .http
            .get(format!(
                "{}/v1/payment_intents?limit=1",
                self.config.api_base
            ))
            .bearer_auth(self.config.secret_key.expose_secret())
            .send()
            .await
            .map_err(|e| StripeError::Transport(e.to_string()))?;
        // Reachable is not enough: a rejected key would fail every payment, so it is not ready.
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(StripeError::Api {
                status: status.as_u16(),
                code: None,
                message: "Stripe rejected the API key (check STRIPE_SECRET_KEY)".into(),
                retryable: false,
            });
        }
        Ok(())
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        form: &[(String, String)],
        key: &str,
    ) -> Result<T, StripeError> {
        self.send(reqwest::Method::POST, path, form, Some(key))
            .await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<T, StripeError> {
        let url = format!("{}{path}", self.config.api_base.trim_end_matches('/'));
        let attempts = self.config.max_attempts.max(1);
        let mut last = StripeError::Transport("no attempt made".into());
        for attempt in 1..=attempts {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.config.secret_key.expose_secret())
                .header("Stripe-Version", STRIPE_API_VERSION);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if method == reqwest::Method::POST {
                let body = serde_urlencoded::to_string(form)
                    .map_err(|e| StripeError::Transport(e.to_string()))?;
                request = request
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body);
            }
            let retry = match request.send().await {
                Err(e) => {
                    last = StripeError::Transport(e.to_string());
                    true
                }
                Ok(response) => {
                    let status = response.status();
                    let should_retry = response
                        .headers()
                        .get("stripe-should-retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.eq_ignore_ascii_case("true"));
                    let bytes = response.bytes().await.unwrap_or_default();
                    // Inside a consumer's span, so it carries the order and correlation ids.
                    debug!(%url, attempt, status = status.as_u16(), "Stripe call answered");
                    if status.is_success() {
                        return serde_json::from_slice(&bytes).map_err(|e| StripeError::Api {
                            status: status.as_u16(),
                            code: None,
                            message: format!("unreadable response: {e}"),
                            retryable: false,
                        });
                    }
                    let retryable = should_retry
                        .unwrap_or(status == StatusCode::CONFLICT || status.is_server_error());
                    last = api_error(status, &bytes, retryable);
                    retryable
                }
            };
            if !retry || attempt == attempts {
                break;
            }
            let delay = self.backoff(attempt);
            debug!(%url, attempt, delay_ms = delay.as_millis() as u64, error = %last, "retrying Stripe call");
            tokio::time::sleep(delay).await;
        }
        warn!(%url, error = %last, "Stripe call failed");
        Err(last)
    }

    /// Exponential backoff with "equal jitter": half fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .config
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

fn api_error(status: StatusCode, body: &[u8], retryable: bool) -> StripeError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) if error.kind == "card_error" => StripeError::Card {
            code: error.code.unwrap_or_else(|| "card_declined".into()),
            message: error
                .message
                .unwrap_or_else(|| "The card was declined.".into()),
            payment_intent: error.payment_intent.map(|pi| pi.id),
        },
        Ok(ErrorBody { error }) => StripeError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message.unwrap_or_else(|| status.to_string()),
            retryable,
        },
        Err(_) => StripeError::Api {
            status: status.as_u16(),
            code: None,
            message: format!("HTTP {status}"),
            retryable,
        },
    }
}

impl From<StripeError> for GatewayError {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Transport(_)
            | StripeError::Api {
                retryable: true, ..
            } => GatewayError::Transient(e.to_string()),
            other => GatewayError::Permanent(other.to_string()),
        }
    }
}

#[async_trait]
impl PaymentGateway for StripeClient {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        match self.create_payment_intent(request).await {
            Ok(intent) if intent.status == "requires_payment_method" => {
                let error = intent.last_payment_error.unwrap_or(ErrorDetail {
                    kind: "card_error".into(),
                    code: Some("payment_failed".into()),
                    decline_code: None,
                    message: Some("The payment failed.".into()),
                    param: None,
                    payment_intent: None,
                });
                Ok(ChargeOutcome::Declined {
                    reference: Some(intent.id),
                    code: error.code.unwrap_or_else(|| "payment_failed".into()),
                    message: error.message.unwrap_or_default(),
                })
            }
            // `succeeded` is final (Stripe never moves an intent back from it): act on it now
            // rather than a webhook later; the webhook that follows changes nothing.
            Ok(intent) if intent.status == "succeeded" => Ok(ChargeOutcome::Succeeded {
                reference: intent.id,
            }),
            // Accepted: the outcome (succeeded, failed) arrives by webhook.
            Ok(intent) => Ok(ChargeOutcome::Processing {
                reference: intent.id,
            }),
            Err(StripeError::Card {
                code,
                message,
                payment_intent,
            }) => Ok(ChargeOutcome::Declined {
                reference: payment_intent,
                code,
                message,
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, GatewayError> {
        Ok(self
            .create_refund(&request.payment_reference, &request.idempotency_key)
            .await?
            .id)
    }

    async fn cancel(&self, reference: &str, idempotency_key: &str) -> Result<(), GatewayError> {
        self.cancel_payment_intent(reference, idempotency_key)
            .await
            .map(|_| ())
            .map_err(Into::into)
    }
}
