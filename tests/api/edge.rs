//! The HTTP edge against hostile and broken clients, over raw TCP to the real server: stalled
//! headers, a stalled body and an idle keep-alive connection are closed at their deadlines;
//! past the connection and in-flight bounds new work gets a fast 503 with Retry-After, and the
//! process serves again once the load is gone.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, eventually, spawn_app_with};

/// How long a test waits for the server to act on a deadline of a few hundred milliseconds:
/// long enough for a loaded machine, short against the defaults that would otherwise apply.
const GRACE: Duration = Duration::from_secs(8);

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.base.trim_start_matches("http://");
    TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"))
}

/// A new connection on which `bytes` (often half a request) have been sent.
async fn send(app: &TestApp, bytes: &[u8]) -> TcpStream {
    let mut stream = connect(app).await;
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the server closes the connection (EOF or reset), or `within` runs out.
/// Returns what was read and whether the connection was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// Reads one whole response (headers and a `Content-Length` body) from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(GRACE, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no whole response; got {text:?}"))
            .expect("read");
        assert!(n > 0, "closed before a whole response; got {text:?}");
        received.extend_from_slice(&chunk[..n]);
    }
}

fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

fn has_header(response: &str, name: &str) -> bool {
    let head = response
        .split_once("\r\n\r\n")
        .map_or(response, |(head, _)| head);
    head.lines().any(|line| {
        line.split_once(':')
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
    })
}

#[tokio::test]
async fn connections_that_stall_in_their_headers_are_closed_at_the_header_deadline() {
    let app = spawn_app_with(|s| s.http_limits.http_header_timeout_ms = 300).await;
    let mut stalled = Vec::new();
    for i in 0..20 {
        // Half of them never send a byte; half stop before the blank line.
        let half_a_head: &[u8] = if i % 2 == 0 {
            b"GET /health HTTP/1.1\r\nHost: ordersaga\r\n"
        } else {
            b""
        };
        stalled.push(send(&app, half_a_head).await);
    }
    for stream in &mut stalled {
        let (received, closed) = read_until_closed(stream, GRACE).await;
        assert!(closed, "a stalled connection is still open");
        assert!(
            received.is_empty(),
            "no answer to half a request: {received:?}"
        );
    }
    // The process goes on serving.
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    let app = spawn_app_with(|s| s.http_limits.http_body_timeout_ms = 300).await;
    let mut stream = send(
        &app,
        b"POST /orders HTTP/1.1\r\nHost: ordersaga\r\nContent-Type: application/json\r\n\
          Content-Length: 100000\r\n\r\n{\"customer_id\":\"c-1\",",
    )
    .await;
    let (response, closed) = read_until_closed(&mut stream, GRACE).await;
    assert!(closed, "the connection stays open after a stalled body");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert_eq!(json_body(&response)["error"]["code"], "body_timeout");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 0, "nothing was placed from half a body");
}

#[tokio::test]
async fn a_keep_alive_connection_lives_while_used_and_is_closed_once_idle_past_its_deadline() {
    let app = spawn_app_with(|s| {
        s.http_limits.http_idle_timeout_ms = 1_000;
        s.http_limits.http_header_timeout_ms = 60_000;
    })
    .await;
    let mut stream = connect(&app).await;
    // Four requests 400 ms apart: 1.2 s in all on one connection, longer than the idle deadline,
    // which starts again after each answer.
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: ordersaga\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("request {i} on a live connection: {e}"));
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let (received, closed) = read_until_closed(&mut stream, GRACE).await;
    assert!(closed, "an idle keep-alive connection is still open");
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn past_the_connection_bound_a_new_connection_gets_503_and_service_resumes_when_they_close() {
    let app = spawn_app_with(|s| s.http_limits.http_max_connections = 4).await;
    // Connections that send nothing hold their slots (until the header deadline, 10 s here).
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(connect(&app).await);
    }
    // A refused connection may be closed before this write lands: its error is not the test's.
    let mut probe = connect(&app).await;
    let _ = probe
        .write_all(b"GET /health HTTP/1.1\r\nHost: ordersaga\r\n\r\n")
        .await;
    let (refused, closed) = read_until_closed(&mut probe, GRACE).await;
    assert!(closed, "a refused connection is closed");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(has_header(&refused, "retry-after"), "{refused}");
    assert_eq!(json_body(&refused)["error"]["code"], "overloaded");

    drop(hogs);
    let metrics = eventually(GRACE, "the server to take connections again", || async {
        let response = app
            .http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.text().await.ok()
    })
    .await;
    let rejected = metrics
        .lines()
        .find_map(|line| line.strip_prefix("http_connections_rejected_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(rejected >= 1.0, "rejections are counted:\n{metrics}");
}

#[tokio::test]
async fn past_the_in_flight_bound_requests_get_503_while_health_is_still_answered() {
    let app = spawn_app_with(|s| {
        s.http_limits.http_max_requests_in_flight = 1;
        s.http_limits.http_body_timeout_ms = 60_000;
    })
    .await;
    // A placement whose body never ends holds the one slot.
    let holder = send(
        &app,
        b"POST /orders HTTP/1.1\r\nHost: ordersaga\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
    )
    .await;
    let shed = eventually(GRACE, "a request to be shed", || async {
        let response = app
            .http
            .get(format!("{}/inventory/products", app.base))
            .send()
            .await
            .ok()?;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert!(shed.headers().contains_key("retry-after"));
    let body: Value = shed.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "overloaded");
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200, "health is answered whatever the load");

    drop(holder);
    eventually(GRACE, "requests to be served again", || async {
        let response = app
            .http
            .get(format!("{}/inventory/products", app.base))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}
