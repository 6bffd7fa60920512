//! HTTP requests that only the owner of a key's partition can answer well, carried to it over
//! core NATS request-reply: an operator's action on an order or its inspection (the live actor
//! is at the owner), a Stripe webhook (the owner knows in memory whether the event changes
//! anything, where any other instance must ask PostgreSQL), and a placement retried under a key
//! whose order the owner runs.
//!
//! One subject per partition and key space (`ordersaga.http.orders.<partition>`,
//! `ordersaga.http.skus.<partition>`), listened to by the owner only while it owns the
//! partition (the same `PartitionMailbox` as the mail). The request travels as the raw body with
//! the method, the path and the few headers that matter as NATS headers, so nothing is
//! re-encoded; the answer comes back the same way. A request nobody answers in time (a hand-off,
//! a dead owner) comes back as `Unanswered`, and the caller answers it itself.

use std::time::Duration;

use async_nats::{Client, HeaderMap, Request};
use bytes::Bytes;

use actors::cluster::{KeySpace, PartitionId};

/// The subject of the HTTP requests forwarded to a partition's owner in `space`.
pub fn request_subject(space: KeySpace, partition: PartitionId) -> String {
    format!("ordersaga.http.{}.{partition}", space.as_str())
}

/// The HTTP headers that travel with a forwarded request: what the handlers read.
pub const FORWARDED_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "stripe-signature",
    "x-client-key",
    "x-correlation-id",
];
/// The HTTP headers that travel back with the owner's answer.
pub const ANSWER_HEADERS: [&str; 5] = [
    "content-type",
    "retry-after",
    "idempotent-replayed",
    "location",
    "x-correlation-id",
];

const METHOD: &str = "Ordersaga-Method";
const URI: &str = "Ordersaga-Uri";
const STATUS: &str = "Ordersaga-Status";

/// An HTTP request or answer as it crosses between instances.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// `(name, value)` of the headers that travel (lower-case names).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A request for the owner.
#[derive(Debug, Clone)]
pub struct OwnerRequest {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content: Forwarded,
}

/// The owner's answer.
#[derive(Debug, Clone)]
pub struct OwnerAnswer {
    pub status: u16,
    pub content: Forwarded,
}

/// Why no owner answered.
#[derive(Debug, thiserror::Error)]
#[error("the partition's owner did not answer: {0}")]
pub struct Unanswered(String);

/// Asks partitions' owners; cheap to clone.
#[derive(Clone)]
pub struct OwnerRequests {
    client: Client,
    timeout: Duration,
}

impl OwnerRequests {
    /// `timeout`: how long to wait for an owner before answering the request here instead.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Sends `request` to the owner of `partition` in `space` and waits for its answer.
    pub async fn ask(
        &self,
        space: KeySpace,
        partition: PartitionId,
        request: OwnerRequest,
    ) -> Result<OwnerAnswer, Unanswered> {
        let mut headers = to_nats(&request.content.headers);
        headers.insert(METHOD, request.method.as_str());
        headers.insert(URI, request.uri.as_str());
        let message = Request::new()
            .headers(headers)
            .payload(request.content.body)
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(request_subject(space, partition), message)
            .await
            .map_err(|e| Unanswered(e.to_string()))?;
        let headers = reply.headers.unwrap_or_default();
        let status = headers
            .get(STATUS)
            .and_then(|s| s.as_str().parse::<u16>().ok())
            .ok_or_else(|| Unanswered("an answer without a status".into()))?;
        Ok(OwnerAnswer {
            status,
            content: Forwarded {
                headers: from_nats(&headers, &ANSWER_HEADERS),
                body: reply.payload,
            },
        })
    }
}

/// Reads a forwarded request; `None` when it is not one.
pub fn read_request(message: &async_nats::Message) -> Option<OwnerRequest> {
    let headers = message.headers.as_ref()?;
    Some(OwnerRequest {
        method: headers.get(METHOD)?.as_str().to_owned(),
        uri: headers.get(URI)?.as_str().to_owned(),
        content: Forwarded {
            headers: from_nats(headers, &FORWARDED_HEADERS),
            body: message.payload.clone(),
        },
    })
}

/// Sends the owner's `answer` to the instance that asked.
pub async fn reply(
    client: &Client,
    message: &async_nats::Message,
    answer: OwnerAnswer,
) -> Result<(), String> {
    let Some(reply) = message.reply.clone() else {
        return Ok(()); // Nobody waits for it.
    };
    let mut headers = to_nats(&answer.content.headers);
    headers.insert(STATUS, answer.status.to_string().as_str());
    client
        .publish_with_headers(reply, headers, answer.content.body)
        .await
        .map_err(|e| e.to_string())
}

fn to_nats(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(name.as_str(), value.as_str());
    }
    map
}

fn from_nats(headers: &HeaderMap, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?;
            Some(((*name).to_owned(), value.as_str().to_owned()))
        })
        .collect()
}
