//! The operational figures end to end (CONTRACT "Operations"): `GET /metrics` and `GET /stats`
//! move as traffic flows over every transport, count errors by kind, need no credential and are
//! not rate limited; the performance monitor turns `/health` degraded with its reasons while a
//! threshold is passed, and back to ok after a clean period.
//!
//! The exposition's format is checked with a real Prometheus parser in the interop suite
//! (`interop/test_operations.py`); drops by reason are checked in `backpressure.rs`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::load::{client_with_small_rcvbuf, SLOW_RCVBUF};
use common::mcp::{post_headers, rpc};
use common::ws::{mcp_handshake, Ws};
use common::{publish_on, Client, Metrics, Sse, TestServer, WAIT};
use serde_json::{json, Value};

const SSE: &str = r#"mcp_stream_connections{transport="sse"}"#;
const WEBSOCKET: &str = r#"mcp_stream_connections{transport="websocket"}"#;
const MCP: &str = r#"mcp_stream_connections{transport="mcp"}"#;
const LATENCY_COUNT: &str = "mcp_stream_delivery_latency_seconds_count";
const LATENCY_INF: &str = r#"mcp_stream_delivery_latency_seconds_bucket{le="+Inf"}"#;

#[test]
fn metrics_move_as_traffic_flows_over_every_transport() {
    let server = TestServer::start();
    let before = server.metrics();
    assert_eq!(before.get(SSE), 0.0);
    assert_eq!(before.get(LATENCY_COUNT), 0.0);
    assert_eq!(before.get("mcp_stream_events_published_total"), 0.0);

    let mut sse = server.sse("topic=ops");
    sse.read_opening();
    let mut ws = Ws::connect(server.addr);
    ws.join("ops");
    let (mcp_ws, _) = mcp_handshake(server.addr, "mcp").expect("MCP WebSocket");
    let during = server.metrics();
    assert_eq!(during.get(SSE), 1.0);
    assert_eq!(during.get(WEBSOCKET), 1.0, "an MCP socket is not pub/sub");
    assert_eq!(during.get(MCP), 1.0);
    drop(mcp_ws);
    metrics_until(&server, "the MCP socket closed", |m| m.get(MCP) == 0.0);

    let ids: Vec<String> = (0..3)
        .flat_map(|i| server.publish(&json!({"topic": "ops", "data": i})))
        .collect();
    for id in &ids {
        assert_eq!(sse.next_event().id.as_deref(), Some(id.as_str()));
        assert_eq!(ws.next_json()["id"], id.as_str());
    }
    let after = server.metrics();
    assert_eq!(after.get("mcp_stream_events_published_total"), 3.0);
    // Every copy was read by its client, so it was written: 3 to SSE, 3 to the WebSocket.
    assert_eq!(after.get(LATENCY_COUNT), 6.0);
    assert_eq!(after.get(LATENCY_INF), 6.0);
    assert!(after.get("mcp_stream_delivery_latency_seconds_sum") > 0.0);
    // Received: the join and the 3 published events. Sent: the welcome, joined, 6 copies.
    assert_eq!(after.get("mcp_stream_messages_received_total"), 4.0);
    assert_eq!(after.get("mcp_stream_messages_sent_total"), 8.0);
    assert!(
        after.get("mcp_stream_received_bytes_total")
            > before.get("mcp_stream_received_bytes_total")
    );
    assert!(after.get("mcp_stream_sent_bytes_total") > before.get("mcp_stream_sent_bytes_total"));
    assert_eq!(after.get("mcp_stream_history_events"), 3.0);
    assert_eq!(after.get("mcp_stream_topics"), 1.0);

    // A resume replays 2 events: sent, but not delivery latency (they waited in history).
    let mut resumed = Sse::open(server.addr, "topic=ops", &[("Last-Event-ID", &ids[0])]);
    resumed.read_opening();
    for id in &ids[1..] {
        assert_eq!(resumed.next_event().id.as_deref(), Some(id.as_str()));
    }
    assert_eq!(resumed.next_event().event.as_deref(), Some("recovery"));
    let replayed = server.metrics();
    assert_eq!(replayed.get("mcp_stream_messages_sent_total"), 10.0);
    assert_eq!(replayed.get(LATENCY_COUNT), 6.0);
}

/// Scrapes `/metrics` until `done` holds; fails after [`WAIT`].
fn metrics_until(server: &TestServer, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = server.metrics();
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never {what}: {metrics:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn errors_are_counted_by_kind() {
    let server = TestServer::start();
    assert_eq!(server.get("/no/such/path").status, 404);
    assert_eq!(server.publish_raw("{not json").status, 400);
    let mut ws = Ws::connect(server.addr);
    ws.send_json(&json!({"type": "warp"}));
    assert_eq!(ws.next_json()["type"], "error");
    // A client's `server/discover` probe gets the error it expects, which is not counted.
    let probe = Client::connect(server.addr).request(
        "POST",
        "/mcp",
        &post_headers(None),
        rpc(json!(0), "server/discover", json!({}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(probe.json()["error"]["code"], -32601);
    // An MCP session whose client calls a tool that does not exist: a JSON-RPC error.
    let session = initialize(&server);
    let answer = Client::connect(server.addr).request(
        "POST",
        "/mcp",
        &post_headers(Some(&session)),
        rpc(
            json!(2),
            "tools/call",
            json!({"name": "warp", "arguments": {}}),
        )
        .to_string()
        .as_bytes(),
    );
    assert!(answer.json().get("error").is_some(), "{:?}", answer);
    // A client that resets its connection: the server's read fails.
    let reset = socket2::Socket::from(std::net::TcpStream::connect(server.addr).unwrap());
    reset.set_linger(Some(Duration::ZERO)).unwrap();
    drop(reset);
    let m = metrics_until(&server, "an io error", |m| m.errors("io") == 1.0);
    let kind = |k: &str| m.errors(k);
    assert_eq!(kind("not_found"), 1.0);
    assert_eq!(kind("bad_request"), 1.0);
    assert_eq!(kind("websocket"), 1.0);
    assert_eq!(kind("jsonrpc"), 1.0);
    assert_eq!(kind("unauthorized"), 0.0);
    assert_eq!(m.get("mcp_stream_mcp_sessions"), 1.0);
    assert_eq!(m.get("mcp_stream_mcp_tool_calls_total"), 1.0);
    let stats = server.get("/stats").json();
    assert_eq!(stats["errors"]["total"], 5);
    assert_eq!(stats["errors"]["by_kind"]["not_found"], 1);
}

#[test]
fn stats_give_the_figures_of_the_metrics_as_json() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=s");
    sse.read_opening();
    let id = server
        .publish(&json!({"topic": "s", "data": "x"}))
        .remove(0);
    assert_eq!(sse.next_event().id.as_deref(), Some(id.as_str()));
    let stats = server.get("/stats");
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let stats = stats.json();
    let metrics = server.metrics();
    assert_eq!(stats["connections"]["sse"], 1);
    assert_eq!(stats["messages"]["published"], 1);
    assert_eq!(
        stats["messages"]["sent"].as_f64(),
        Some(metrics.get("mcp_stream_messages_sent_total"))
    );
    let latency = &stats["delivery_latency"];
    assert_eq!(latency["count"], 1);
    let (p50, max) = (
        latency["p50_ms"].as_f64().unwrap(),
        latency["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 <= max && max < WAIT.as_secs_f64() * 1000.0, "{latency}");
    let buckets = latency["buckets"].as_array().unwrap();
    assert_eq!(buckets.last().unwrap(), &json!({"le": "+Inf", "count": 1}));
    assert_eq!(buckets[0]["le"], 0.0001);
    assert_eq!(stats["health"], json!({"status": "ok"}));
    assert_eq!(stats["history"], json!({"topics": 1, "events": 1}));
}

#[test]
fn figures_need_no_credential_and_only_health_skips_the_rate_limit() {
    // 60 a minute: a burst of 60, then one request a second.
    let server = TestServer::with_config(json!({"streaming": {"security": {
        "authentication": true, "tokens": ["secret"],
        "rate_limiting": true, "max_requests_per_minute": 60,
    }}}));
    for path in ["/metrics", "/stats", "/health"] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    let mut client = server.client();
    let mut answered = 0;
    while client.request("GET", "/stats", &[], b"").status == 200 {
        answered += 1;
        assert!(answered <= 120, "the rate limit never applied to /stats");
    }
    assert_eq!(client.request("GET", "/metrics", &[], b"").status, 429);
    for _ in 0..10 {
        assert_eq!(client.request("GET", "/health", &[], b"").status, 200);
    }
    // A token comes back within a second: the metrics count the two refusals.
    thread::sleep(Duration::from_millis(1200));
    let m = server.metrics();
    assert_eq!(m.dropped("rate_limit"), 2.0);
    assert_eq!(m.errors("rate_limited"), 2.0);
    assert_eq!(
        m.get(r#"mcp_stream_feature_enabled{feature="stream-rate-limiting"}"#),
        1.0
    );
}

/// A server whose monitor checks every second, and which takes one SSE stream at most: a
/// second one gets `503`, the error of a server at capacity, which is the server's fault. Its
/// queues hold 1 MiB, so that a stalled subscriber is kept, not cut off.
fn monitored(p99_latency_ms: u64) -> TestServer {
    TestServer::with_config(json!({"streaming": {
        "monitoring": {"interval_secs": 1, "p99_latency_ms": p99_latency_ms, "error_rate_percent": 5},
        "sse": {"max_connections": 1},
        "backpressure": {"max_queue_bytes": 1_048_576},
    }}))
}

/// Polls `/health` until `done` holds for its body; fails after [`WAIT`].
fn health_until(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = server.get("/health").json();
        if done(&health) {
            return health;
        }
        assert!(Instant::now() < deadline, "/health never {what}: {health}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asks for a second SSE stream of a [`monitored`] server (whose one stream is taken) every few
/// milliseconds until dropped: every period of the monitor sees mostly `503`s.
struct Refusals {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Refusals {
    fn start(server: &TestServer) -> Refusals {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, flag) = (server.addr, stop.clone());
        let thread = thread::spawn(move || {
            let mut client = Client::connect(addr);
            while !flag.load(Ordering::Relaxed) {
                let r = client.request("GET", "/stream/sse?topic=more", &[], b"");
                assert_eq!(r.status, 503);
                thread::sleep(Duration::from_millis(5));
            }
        });
        Refusals {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Refusals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn server_errors_make_the_server_degraded_until_a_clean_period() {
    let server = monitored(1000);
    let mut taken = server.sse("topic=one");
    taken.read_opening();
    // Client errors, however many, are the clients' fault: they never degrade the server.
    let mut client = server.client();
    for _ in 0..100 {
        assert_eq!(client.request("GET", "/nope", &[], b"").status, 404);
    }
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(server.get("/health").json(), json!({"status": "ok"}));

    let refusals = Refusals::start(&server);
    let health = health_until(&server, "degraded", |h| h["status"] == "degraded");
    let reasons = health["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{health}");
    let reason = reasons[0].as_str().unwrap();
    assert!(reason.starts_with("error rate "), "{health}");
    // While the refusals go on, every view agrees.
    assert_eq!(server.metrics().get("mcp_stream_degraded"), 1.0);
    assert_eq!(server.get("/stats").json()["health"]["status"], "degraded");
    drop(refusals);
    health_until(&server, "ok again", |h| *h == json!({"status": "ok"}));
    assert_eq!(server.metrics().get("mcp_stream_degraded"), 0.0);
}

#[test]
fn what_happens_while_monitoring_is_off_is_not_judged_when_it_is_turned_on() {
    let server = monitored(1000);
    let mut taken = server.sse("topic=one");
    taken.read_opening();
    let switch = |on: bool| {
        let body = json!({"enabled": on}).to_string();
        let path = "/admin/features/stream-monitoring";
        let r = server.client().request("PUT", path, &[], body.as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
    };
    switch(false);
    {
        let _refusals = Refusals::start(&server);
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(server.get("/health").json(), json!({"status": "ok"}));
    }
    switch(true);
    // Two periods pass with the monitor on: neither holds the refusals made while it was off.
    let mut client = server.client();
    for _ in 0..25 {
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            client.request("GET", "/health", &[], b"").json(),
            json!({"status": "ok"})
        );
    }
}

#[test]
fn slow_deliveries_make_the_server_degraded_and_turning_monitoring_off_clears_it() {
    let server = monitored(20);
    // A subscriber that stops reading: once the kernel's buffers are full, events wait in the
    // server's queue, and leave only when it reads again, long after their publish.
    let mut slow = Sse::try_open(
        client_with_small_rcvbuf(&server, SLOW_RCVBUF),
        "topic=slow",
        &[],
    )
    .expect("slow stream");
    slow.read_opening();
    let mut publisher = server.client();
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"topic": "slow", "data": {"i": i, "pad": "x".repeat(1000)}}))
        .collect();
    let batch = Value::Array(batch);
    let mut published = 0;
    while server.get("/stats").json()["queues"]["bytes"] == 0 {
        published += publish_on(&mut publisher, &batch).len();
        assert!(published < 100_000, "the server's queue never filled");
    }
    // 150 more wait in the queue (about 170 KB, within its 1 MiB): every period has at
    // least 100 deliveries of which more than 1% are slow, whichever period they fall in.
    let more: Vec<Value> = batch.as_array().unwrap()[..75].to_vec();
    for _ in 0..2 {
        published += publish_on(&mut publisher, &Value::Array(more.clone())).len();
    }
    thread::sleep(Duration::from_millis(200));
    for _ in 0..published {
        slow.next_event();
    }
    let health = health_until(&server, "degraded", |h| h["status"] == "degraded");
    let reason = health["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("p99 delivery latency of at least "),
        "{health}"
    );
    assert!(reason.ends_with(" is over 20.0 ms"), "{health}");
    let max = server.get("/stats").json()["delivery_latency"]["max_ms"]
        .as_f64()
        .unwrap();
    assert!(max >= 200.0, "the slowest copy waited 200 ms: {max}");
    // Turning the monitor off clears what it found at once.
    let off = Client::connect(server.addr).request(
        "PUT",
        "/admin/features/stream-monitoring",
        &[],
        br#"{"enabled":false}"#,
    );
    assert_eq!(off.status, 200);
    assert_eq!(server.get("/health").json(), json!({"status": "ok"}));
}

/// Opens an MCP session over Streamable HTTP; returns its id.
fn initialize(server: &TestServer) -> String {
    let init = rpc(
        json!(1),
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "ops", "version": "1"}}),
    );
    let r = Client::connect(server.addr).request(
        "POST",
        "/mcp",
        &post_headers(None),
        init.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.header("mcp-session-id").expect("session id").to_string()
}
