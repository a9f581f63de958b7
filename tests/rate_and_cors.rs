//! Rate limits (`stream-rate-limiting`) and CORS (`cors_enabled`, `cors_origins`) end to end,
//! on the real binary at 127.0.0.1.
//!
//! - requests beyond `max_requests_per_minute` from one address get 429 with a `Retry-After`
//!   that says when a token is back; another address has its own bucket; `/health` is never
//!   limited;
//! - WebSocket publishes beyond the rate get an error message, and persisting closes with 1008;
//! - CORS headers on responses and stream heads for allowed origins, none for others, and
//!   preflights answered 204 (403 for an origin that is not allowed).

mod common;

use std::net::{SocketAddr, TcpStream};

use common::ws::RawWs;
use common::{Client, Sse, TestServer};
use serde_json::json;

/// A client connected from `source` (another loopback address: another bucket).
fn client_from(source: &str, server: SocketAddr) -> Client {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&server.into()).unwrap();
    Client::from_stream(TcpStream::from(socket))
}

fn publish(client: &mut Client) -> common::Response {
    client.request(
        "POST",
        "/stream/publish",
        &[("Content-Type", "application/json")],
        br#"{"topic":"t","data":1}"#,
    )
}

fn limited(per_minute: u64) -> TestServer {
    TestServer::with_config(json!({"streaming": {"security": {
        "rate_limiting": true, "max_requests_per_minute": per_minute,
    }}}))
}

#[test]
fn requests_beyond_the_rate_get_429_with_retry_after_per_address() {
    let server = limited(5);
    let mut client = server.client();
    for _ in 0..5 {
        assert_eq!(publish(&mut client).status, 202);
    }
    let refused = publish(&mut client);
    assert_eq!(refused.assert_error(429), "rate limited");
    // Five a minute: the next token is 12 s away.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((11..=12).contains(&retry), "Retry-After {retry}");
    // A stream is a request too; /health is never limited.
    let r = Client::connect(server.addr).request("GET", "/stream/sse?topic=t", &[], b"");
    assert_eq!(r.status, 429);
    for _ in 0..10 {
        assert_eq!(server.get("/health").status, 200);
    }
    // Another address has a bucket of its own.
    let mut other = client_from("127.0.0.2", server.addr);
    assert_eq!(publish(&mut other).status, 202);
}

#[test]
fn with_the_feature_off_nothing_is_limited() {
    let server = TestServer::with_config(json!({"streaming": {"security": {
        "max_requests_per_minute": 1,
    }}}));
    let mut client = server.client();
    for _ in 0..20 {
        assert_eq!(publish(&mut client).status, 202);
    }
    // STREAM_RATE_LIMITING turns it on.
    let on = TestServer::start_with(
        Some(json!({"streaming": {"security": {"max_requests_per_minute": 1}}})),
        &[("STREAM_RATE_LIMITING", "true")],
    );
    let mut client = on.client();
    assert_eq!(publish(&mut client).status, 202);
    assert_eq!(publish(&mut client).status, 429);
}

#[test]
fn websocket_publishes_beyond_the_rate_get_errors_then_a_1008_close() {
    let server = limited(3);
    let mut ws = RawWs::connect(server.addr);
    let message = json!({"type": "publish", "topic": "t", "data": 1});
    for _ in 0..3 {
        ws.send_json(&message);
        assert_eq!(ws.next_json()["type"], "published");
    }
    for _ in 0..9 {
        ws.send_json(&message);
        let error = ws.next_json();
        assert_eq!(
            error["error"], "rate limited: at most 3 messages a minute",
            "{error}"
        );
    }
    // A ping is no publish: it is answered and does not count.
    ws.send_json(&json!({"type": "ping"}));
    assert_eq!(ws.next_json()["type"], "pong");
    ws.send_json(&message);
    assert_eq!(ws.next_close(), (1008, "rate limited".to_string()));
}

#[test]
fn cors_headers_go_on_responses_and_stream_heads_for_allowed_origins() {
    let any = TestServer::start();
    let origin = [("Origin", "https://app.example")];
    let r = Client::connect(any.addr).request("GET", "/health", &origin, b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());
    // Without an Origin, no CORS headers.
    assert!(any
        .get("/health")
        .header("access-control-allow-origin")
        .is_none());

    // (A loopback listener lets a foreign origin reach MCP only when `allowed_origins` says so.)
    let listed = TestServer::with_config(json!({"streaming": {"security": {
        "cors_origins": ["https://app.example"], "allowed_origins": ["https://app.example"],
    }}}));
    let r = Client::connect(listed.addr).request("GET", "/health", &origin, b"");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let other = [("Origin", "https://evil.example")];
    let r = Client::connect(listed.addr).request("GET", "/health", &other, b"");
    assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
    // Stream heads carry them too: SSE, and an MCP answer with its session id exposed.
    let sse = Sse::open(listed.addr, "topic=t", &origin);
    assert_eq!(
        sse.head.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let mut headers = common::mcp::post_headers(None);
    headers.push(("Origin", "https://app.example"));
    let r = Client::connect(listed.addr).request("POST", "/mcp", &headers, body.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("access-control-expose-headers")
        .is_some_and(|h| h.contains("Mcp-Session-Id")));
}

#[test]
fn preflights_are_answered_for_allowed_origins_only() {
    let server = TestServer::with_config(json!({"streaming": {"security": {
        "cors_origins": ["https://app.example"],
    }}}));
    let preflight = |origin: &str| {
        Client::connect(server.addr).request(
            "OPTIONS",
            "/stream/publish",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "content-type, authorization",
                ),
            ],
            b"",
        )
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type, authorization")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(
        preflight("https://evil.example").assert_error(403),
        "origin not allowed"
    );
    // With CORS off, OPTIONS is just a method the path does not take.
    let off = TestServer::with_config(json!({"streaming": {"security": {"cors_enabled": false}}}));
    let r = Client::connect(off.addr).request(
        "OPTIONS",
        "/stream/publish",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 405);
    assert!(r.header("access-control-allow-origin").is_none());
}
