//! The HTTP surface: the subset of Stripe's API the client uses, plus `/_fake/*` for tests.
//!
//! Helpers return `Result<_, Response>` so handlers can `?`-style early-return Stripe errors; the
//! error is a response about to be sent, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::methods::{self, Scheduled};
use crate::state::{Charge, CreateRecord, FakeState, RefundRecord, Stored};
use crate::webhooks;

type Shared = Arc<FakeState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(create_intent).get(list_intents))
        .route("/v1/payment_intents/{id}", get(get_intent))
        .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
        .route("/v1/refunds", post(create_refund))
        .route("/_fake/ledger", get(ledger))
        .route("/_fake/config", post(set_config))
        .with_state(state)
}

fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"type": kind, "code": code, "message": message, "param": param}});
    (status, axum::Json(body)).into_response()
}

fn json_response(status: u16, body: &Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, axum::Json(body.clone())).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

fn authorised(headers: &HeaderMap) -> Result<(), Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key.starts_with("sk_"));
    if ok {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided.",
            None,
        ))
    }
}

fn form(body: &str) -> Result<Vec<(String, String)>, Response> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Invalid form body.",
            None,
        )
    })
}

fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn fingerprint(path: &str, form: &[(String, String)]) -> String {
    let mut sorted = form.to_vec();
    sorted.sort();
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(&sorted).unwrap_or_default()
    )
}

/// Replays a stored answer, or refuses a key reused with other parameters.
fn replay(state: &FakeState, key: Option<&str>, fingerprint: &str) -> Option<Response> {
    let key = key?;
    let stored = state.with(|inner| inner.idempotency.get(key).cloned())?;
    if stored.fingerprint == fingerprint {
        Some(json_response(stored.status, &stored.body, true))
    } else {
        Some(error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            None,
            &format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
            None,
        ))
    }
}

fn store(state: &FakeState, key: Option<&str>, fingerprint: String, status: u16, body: &Value) {
    if let Some(key) = key {
        state.with(|inner| {
            inner.put_idempotent(
                key.to_owned(),
                Stored {
                    fingerprint,
                    status,
                    body: body.clone(),
                },
            );
        });
    }
}

async fn create_intent(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = authorised(&headers) {
        return r;
    }
    let delay = state.config().api_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Post { form, key, print } = match read_post(&state, &headers, &body, "/v1/payment_intents")
    {
        Ok(post) => post,
        Err(Early::Refused(refused)) => return refused,
        Err(Early::Replayed(replayed)) => {
            record_create(&state, &key_of(&headers), replayed.status().as_u16(), true);
            return replayed;
        }
    };
    let create = match CreateParams::parse(&form) {
        Ok(create) => create,
        Err(refused) => return refused,
    };
    if let Some(failed) = scripted_first_failure(&state, &key, &create.behaviour) {
        return failed;
    }
    let (id, status, body) = make_intent(&state, &create, &key);
    store(&state, key.as_deref(), print, status, &body);
    record_create(&state, &key, status, false);
    if create.confirmed {
        schedule_webhooks(&state, &id, &create.behaviour, key.as_deref());
    }
    json_response(status, &body, false)
}

/// A create call's parameters, checked as Stripe checks them.
struct CreateParams {
    amount: i64,
    currency: String,
    method: String,
    behaviour: methods::Behaviour,
    metadata: serde_json::Map<String, Value>,
    confirmed: bool,
}

impl CreateParams {
    /// The parameters, or Stripe's 400 naming the first bad one.
    fn parse(form: &[(String, String)]) -> Result<Self, Response> {
        let amount = param(form, "amount")
            .and_then(|a| a.parse::<i64>().ok())
            .filter(|a| *a >= 1);
        let Some(amount) = amount else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                "Invalid positive integer",
                Some("amount"),
            ));
        };
        let Some(currency) = param(form, "currency")
            .filter(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_lowercase()))
        else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid_string"),
                "Invalid currency",
                Some("currency"),
            ));
        };
        let method = param(form, "payment_method").unwrap_or_default().to_owned();
        let Some(behaviour) = methods::behaviour(&method) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such PaymentMethod: '{method}'"),
                Some("payment_method"),
            ));
        };
        let metadata = form
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(),
                    Value::String(v.clone()),
                ))
            })
            .collect();
        Ok(Self {
            amount,
            currency: currency.to_owned(),
            method,
            behaviour,
            metadata,
            confirmed: param(form, "confirm") == Some("true"),
        })
    }
}

/// `pm_fake_fail_first_create`: the first create under a key fails as if before the API
/// started executing, so nothing is stored for the key and a retry runs afresh.
fn scripted_first_failure(
    state: &FakeState,
    key: &Option<String>,
    behaviour: &methods::Behaviour,
) -> Option<Response> {
    let key_now = key.as_ref().filter(|_| behaviour.fail_first_create)?;
    let first = state.with(|inner| inner.failed_first.insert(key_now.clone()));
    if !first {
        return None;
    }
    record_create(state, key, 500, false);
    Some(error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        None,
        "An unknown error occurred (scripted by pm_fake_fail_first_create).",
        None,
    ))
}

/// Creates the intent (and, when it succeeds at once, its charge in the ledger); its id, and
/// the status and body of the answer (402 with the card error for a declined confirmation).
fn make_intent(
    state: &FakeState,
    create: &CreateParams,
    key: &Option<String>,
) -> (String, u16, Value) {
    let id = format!("pi_fake_{}", uuid::Uuid::new_v4().simple());
    let behaviour = &create.behaviour;
    let mut intent = json!({
        "id": id, "object": "payment_intent", "amount": create.amount, "currency": create.currency,
        "status": if create.confirmed { behaviour.status } else { "requires_confirmation" },
        "payment_method": create.method, "metadata": create.metadata, "created": chrono::Utc::now().timestamp_micros(),
        "last_payment_error": null, "livemode": false,
    });
    let decline = behaviour.decline.filter(|_| create.confirmed);
    if let Some((code, decline_code, message)) = decline {
        intent["last_payment_error"] = json!({"type": "card_error", "code": code, "decline_code": decline_code, "message": message});
    }
    let succeeded_now = create.confirmed && behaviour.status == "succeeded";
    state.with(|inner| {
        inner.put_intent(id.clone(), intent.clone());
        if succeeded_now {
            inner.charges.push(Charge {
                payment_intent: id.clone(),
                amount: create.amount,
                currency: create.currency.clone(),
                idempotency_key: key.clone(),
            });
        }
    });
    let (status, body) = match decline {
        Some((code, decline_code, message)) => (
            402,
            json!({"error": {"type": "card_error", "code": code, "decline_code": decline_code, "message": message, "payment_intent": intent}}),
        ),
        None => (200, intent),
    };
    (id, status, body)
}

/// Notes a create call in the ledger (tests read how many were made and replayed).
fn record_create(state: &FakeState, key: &Option<String>, status: u16, replayed: bool) {
    state.with(|inner| {
        inner.creates.push(CreateRecord {
            idempotency_key: key.clone(),
            status,
            replayed,
        })
    });
}

/// Sends the behaviour's webhooks, each at its time, applying its status change to the intent
/// first (a late success charges then). A canceled intent gets no late success.
fn schedule_webhooks(state: &Shared, id: &str, behaviour: &methods::Behaviour, key: Option<&str>) {
    let unit = state.config().processing_delay;
    let copies = if behaviour.deliver_twice { 2 } else { 1 };
    for (kind, step) in behaviour.webhooks.clone() {
        let state = state.clone();
        let id = id.to_owned();
        let key = key.map(str::to_owned);
        tokio::spawn(async move {
            tokio::time::sleep(methods::delay(step, unit)).await;
            let snapshot = state.with(|inner| {
                let intent = inner.intents.get_mut(&id)?;
                if intent["status"] == "canceled" {
                    return None;
                }
                match kind {
                    Scheduled::Succeeded if intent["status"] != "succeeded" => {
                        intent["status"] = json!("succeeded");
                        let charge = Charge {
                            payment_intent: id.clone(),
                            amount: intent["amount"].as_i64().unwrap_or(0),
                            currency: intent["currency"].as_str().unwrap_or_default().to_owned(),
                            idempotency_key: key.clone(),
                        };
                        inner.charges.push(charge);
                        inner.intents.get(&id).cloned()
                    }
                    Scheduled::Failed if intent["status"] != "succeeded" => {
                        intent["status"] = json!("requires_payment_method");
                        if intent["last_payment_error"].is_null() {
                            intent["last_payment_error"] = json!({"type": "card_error", "code": "card_declined", "decline_code": "generic_decline", "message": "Your card was declined."});
                        }
                        Some(intent.clone())
                    }
                    // Processing (possibly stale, after success: that is the point of the script).
                    _ => {
                        let mut stale = intent.clone();
                        if kind == Scheduled::Processing {
                            stale["status"] = json!("processing");
                        }
                        Some(stale)
                    }
                }
            });
            let Some(object) = snapshot else { return };
            let kind = match kind {
                Scheduled::Succeeded => "payment_intent.succeeded",
                Scheduled::Processing => "payment_intent.processing",
                Scheduled::Failed => "payment_intent.payment_failed",
            };
            webhooks::deliver(
                &state,
                webhooks::event(kind, &object, key.as_deref()),
                copies,
            );
        });
    }
}

async fn list_intents(State(_): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorised(&headers) {
        return r;
    }
    axum::Json(json!({"object": "list", "data": [], "has_more": false})).into_response()
}

async fn get_intent(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorised(&headers) {
        return r;
    }
    match state.with(|inner| inner.intents.get(&id).cloned()) {
        Some(intent) => axum::Json(intent).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such payment_intent: '{id}'"),
            Some("intent"),
        ),
    }
}

async fn cancel_intent(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorised(&headers) {
        return r;
    }
    let key = key_of(&headers);
    let print = fingerprint(&format!("/v1/payment_intents/{id}/cancel"), &[]);
    if let Some(replayed) = replay(&state, key.as_deref(), &print) {
        return replayed;
    }
    let result = state.with(|inner| {
        let intent = inner.intents.get_mut(&id).ok_or(None)?;
        let status = intent["status"].as_str().unwrap_or_default().to_owned();
        if status == "succeeded" || status == "canceled" {
            return Err(Some(status));
        }
        intent["status"] = json!("canceled");
        Ok(intent.clone())
    });
    match result {
        Ok(intent) => {
            store(&state, key.as_deref(), print, 200, &intent);
            webhooks::deliver(
                &state,
                webhooks::event("payment_intent.canceled", &intent, key.as_deref()),
                1,
            );
            axum::Json(intent).into_response()
        }
        Err(None) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such payment_intent: '{id}'"),
            Some("intent"),
        ),
        Err(Some(status)) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("payment_intent_unexpected_state"),
            &format!("You cannot cancel this PaymentIntent because it has a status of {status}."),
            None,
        ),
    }
}

/// A creating POST as the fake reads it: its form, its `Idempotency-Key` and the fingerprint
/// a retry with that key must match.
struct Post {
    form: Vec<(String, String)>,
    key: Option<String>,
    print: String,
}

/// Why a creating POST is answered before it is handled.
enum Early {
    /// Its form does not parse (400).
    Refused(Response),
    /// An earlier request with the same key was answered: that answer again (or a 400 if the
    /// parameters differ), as Stripe does.
    Replayed(Response),
}

fn read_post(
    state: &FakeState,
    headers: &HeaderMap,
    body: &str,
    path: &str,
) -> Result<Post, Early> {
    let form = form(body).map_err(Early::Refused)?;
    let key = key_of(headers);
    let print = fingerprint(path, &form);
    match replay(state, key.as_deref(), &print) {
        Some(replayed) => Err(Early::Replayed(replayed)),
        None => Ok(Post { form, key, print }),
    }
}

/// The request's `Idempotency-Key`, as Stripe reads it: a retry with the same key (and the
/// same parameters) gets the first answer again.
fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn create_refund(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = authorised(&headers) {
        return r;
    }
    let Post { form, key, print } = match read_post(&state, &headers, &body, "/v1/refunds") {
        Ok(post) => post,
        Err(Early::Refused(answer) | Early::Replayed(answer)) => return answer,
    };
    let Some(intent_id) = param(&form, "payment_intent").map(str::to_owned) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: payment_intent.",
            Some("payment_intent"),
        );
    };
    let result = state.with(|inner| {
        let intent = inner.intents.get(&intent_id).cloned().ok_or("missing")?;
        if intent["status"] != "succeeded" {
            return Err("not_succeeded");
        }
        if inner.refunds.iter().any(|r| r.payment_intent == intent_id) {
            return Err("already");
        }
        let refund = RefundRecord {
            id: format!("re_fake_{}", uuid::Uuid::new_v4().simple()),
            payment_intent: intent_id.clone(),
            amount: intent["amount"].as_i64().unwrap_or(0),
        };
        inner.refunds.push(refund.clone());
        Ok(refund)
    });
    match result {
        Ok(refund) => {
            let body = json!({"id": refund.id, "object": "refund", "amount": refund.amount, "payment_intent": refund.payment_intent, "status": "succeeded"});
            store(&state, key.as_deref(), print, 200, &body);
            axum::Json(body).into_response()
        }
        Err("missing") => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such payment_intent: '{intent_id}'"),
            Some("payment_intent"),
        ),
        Err("already") => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_already_refunded"),
            "This charge has already been refunded.",
            None,
        ),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("payment_intent_unexpected_state"),
            "This PaymentIntent has no successful charge to refund.",
            None,
        ),
    }
}

async fn ledger(State(state): State<Shared>) -> Response {
    axum::Json(state.ledger()).into_response()
}

async fn set_config(State(state): State<Shared>, body: String) -> Response {
    let Ok(value) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Invalid JSON body.",
            None,
        );
    };
    state.set_webhook_url(value["webhook_url"].as_str().map(str::to_owned));
    StatusCode::NO_CONTENT.into_response()
}
