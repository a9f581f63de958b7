//! The operational figures end to end (CONTRACT "Operations"): `GET /metrics` and `GET /stats`
//! move as traffic flows over every transport, count errors by kind, need no credential and are
//! not rate limited; the performance monitor turns `/health` degraded with its reasons while a
//! threshold is passed, and back to ok after a clean period.
//!
//! The exposition's format is checked with a real Prometheus parser in the interop suite
//! (`interop/test_operations.py`); drops by reason are checked in `backpressure.rs`.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::load::{client_with_small_rcvbuf, SLOW_RCVBUF};
use common::mcp::{post_headers, rpc};
use common::ws::{mcp_handshake, Ws};
use common::{publish_on, Client, Sse, TestServer, WAIT};
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
    let m = server.metrics();
    let kind = |k: &str| m.get(&format!("mcp_stream_errors_total{{kind=\"{k}\"}}"));
    assert_eq!(kind("not_found"), 1.0);
    assert_eq!(kind("bad_request"), 1.0);
    assert_eq!(kind("websocket"), 1.0);
    assert_eq!(kind("jsonrpc"), 1.0);
    assert_eq!(kind("unauthorized"), 0.0);
    assert_eq!(m.get("mcp_stream_mcp_sessions"), 1.0);
    assert_eq!(m.get("mcp_stream_mcp_tool_calls_total"), 1.0);
    let stats = server.get("/stats").json();
    assert_eq!(stats["errors"]["total"], 4);
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
fn figures_need_no_credential_and_are_not_rate_limited() {
    let server = TestServer::with_config(json!({"streaming": {"security": {
        "authentication": true, "tokens": ["secret"],
        "rate_limiting": true, "max_requests_per_minute": 2,
    }}}));
    for _ in 0..5 {
        for path in ["/metrics", "/stats", "/health"] {
            assert_eq!(server.get(path).status, 200, "{path}");
        }
    }
    // The limit still holds elsewhere, and the metrics count what it refused.
    let statuses: Vec<u16> = (0..3).map(|_| server.get("/nope").status).collect();
    assert_eq!(statuses, [404, 404, 429]);
    let m = server.metrics();
    assert_eq!(
        m.get(r#"mcp_stream_dropped_total{reason="rate_limit"}"#),
        1.0
    );
    assert_eq!(
        m.get(r#"mcp_stream_errors_total{kind="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        m.get(r#"mcp_stream_feature_enabled{feature="stream-rate-limiting"}"#),
        1.0
    );
}

/// A server whose monitor checks every second.
fn monitored(p99_latency_ms: u64) -> TestServer {
    TestServer::with_config(json!({"streaming": {
        "monitoring": {"interval_secs": 1, "p99_latency_ms": p99_latency_ms, "error_rate_percent": 5},
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

#[test]
fn a_high_error_rate_makes_the_server_degraded_until_a_clean_period() {
    let server = monitored(1000);
    assert_eq!(server.get("/health").json(), json!({"status": "ok"}));
    let mut client = server.client();
    for _ in 0..40 {
        assert_eq!(client.request("GET", "/nope", &[], b"").status, 404);
    }
    let health = health_until(&server, "degraded", |h| h["status"] == "degraded");
    let reasons = health["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{health}");
    assert!(
        reasons[0].as_str().unwrap().starts_with("error rate "),
        "{health}"
    );
    assert_eq!(server.metrics().get("mcp_stream_degraded"), 1.0);
    assert_eq!(server.get("/stats").json()["health"], health);
    // A period with too few operations to judge (only these polls) clears it.
    health_until(&server, "ok again", |h| *h == json!({"status": "ok"}));
    assert_eq!(server.metrics().get("mcp_stream_degraded"), 0.0);
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
    let pad = "x".repeat(30_000);
    let mut published = 0;
    while server.get("/stats").json()["queues"]["bytes"] == 0 {
        publish_on(
            &mut publisher,
            &json!({"topic": "slow", "data": {"pad": pad}}),
        );
        published += 1;
        assert!(published < 1000, "the server's queue never filled");
    }
    // A few more wait in the queue (well within its 256 KiB): more than 1% of the period's
    // copies are slow, so its p99 is.
    for _ in 0..5 {
        publish_on(
            &mut publisher,
            &json!({"topic": "slow", "data": {"pad": pad}}),
        );
        published += 1;
    }
    thread::sleep(Duration::from_millis(200));
    for _ in 0..published {
        slow.next_event();
    }
    let health = health_until(&server, "degraded", |h| h["status"] == "degraded");
    let reason = health["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("p99 delivery latency "), "{health}");
    assert!(reason.ends_with(" is over 20 ms"), "{health}");
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
