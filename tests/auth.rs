//! Authentication end to end (`stream-authentication`, CONTRACT "Security"): the real binary on
//! 127.0.0.1 with static tokens and a JWT secret.
//!
//! - no credential or a bad one → 401 with `WWW-Authenticate`, on SSE, publish, the WebSocket
//!   upgrades and every MCP path; `/health` and the demo page stay open;
//! - a credential as a bearer header, as `access_token` in the query, or as the cookie;
//! - HS256 JWTs: a bad signature, an expired token and one not yet valid → 401;
//! - a JWT's `mcp_stream` claim limits topics: 403 on SSE and publish, an error message on a
//!   WebSocket room and a failed MCP tool call;
//! - the feature off (the default) lets everything through.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::mcp::{post_headers, rpc};
use common::ws::{assert_switched, upgrade_headers, upgrade_request, RawWs};
use common::{Client, Sse, TestServer};
use mcp_stream::proto::auth::sign_jwt;
use serde_json::{json, Value};

const TOKEN: &str = "static-token-1";
const SECRET: &str = "jwt-secret";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;

fn server() -> TestServer {
    TestServer::start_with(
        Some(json!({"streaming": {"security": {
            "authentication": true, "tokens": [TOKEN, "static-token-2"], "jwt_secret": SECRET,
        }}})),
        &[],
    )
}

/// An HS256 JWT of `claims` signed with `secret`.
fn jwt(claims: Value, secret: &str) -> String {
    sign_jwt(&claims, secret.as_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The data of the next event that is not `connected`.
fn published(sse: &mut Sse) -> String {
    loop {
        let block = sse.next_event();
        if block.event.as_deref() != Some("connected") {
            return block.data.unwrap_or_default();
        }
    }
}

/// A WebSocket upgraded at `path` with `extra` headers.
fn websocket(server: &TestServer, path: &str, extra: &[(&str, &str)]) -> RawWs {
    let mut headers = upgrade_headers();
    headers.extend_from_slice(extra);
    let mut client = Client::connect(server.addr);
    client.send(&upgrade_request(path, &headers));
    assert_switched(&client.read_head());
    RawWs::upgraded(client)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status and reason of a `GET`.
fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = Client::connect(server.addr).request("GET", path, headers, b"");
    let body: Option<Value> = serde_json::from_str(r.text()).ok();
    let reason = body
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .unwrap_or("");
    (r.status, reason.to_string())
}

fn publish(server: &TestServer, auth: Option<&str>, topic: &str) -> u16 {
    let mut headers = vec![("Content-Type", "application/json")];
    let value;
    if let Some(token) = auth {
        value = bearer(token);
        headers.push(("Authorization", &value));
    }
    let body = json!({"topic": topic, "data": 1}).to_string();
    Client::connect(server.addr)
        .request("POST", "/stream/publish", &headers, body.as_bytes())
        .status
}

#[test]
fn without_a_valid_credential_every_protected_path_is_401_and_open_paths_stay_open() {
    let server = server();
    let wrong = bearer("nope");
    let mut mcp_headers = post_headers(None);
    for (method, path, body) in [
        ("GET", "/stream/sse?topic=t", ""),
        ("POST", "/stream/publish", r#"{"topic":"t","data":1}"#),
        ("POST", "/mcp", INITIALIZE),
        ("GET", "/sse", ""),
        ("POST", "/messages?sessionId=x", "{}"),
        ("GET", "/admin/features", ""),
    ] {
        for auth in [None, Some(wrong.as_str())] {
            let mut headers = mcp_headers.clone();
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let r = Client::connect(server.addr).request(method, path, &headers, body.as_bytes());
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"mcp-stream\"")
            );
            let reason = r.json()["error"].as_str().unwrap().to_string();
            let expected = if auth.is_none() {
                "missing credential"
            } else {
                "invalid credential"
            };
            assert_eq!(reason, expected);
        }
    }
    // WebSocket upgrades, for rooms and for MCP.
    for path in ["/stream/ws", "/", "/mcp"] {
        let mut headers = upgrade_headers();
        if path == "/mcp" {
            headers.push(("Sec-WebSocket-Protocol", "mcp"));
        }
        let r = Client::connect(server.addr).request("GET", path, &headers, b"");
        assert_eq!(r.status, 401, "upgrade at {path}: {r:?}");
    }
    // Open: health and the demo page.
    assert_eq!(get(&server, "/health", &[]).0, 200);
    assert_eq!(get(&server, "/", &[]).0, 200);
    mcp_headers.clear();
}

#[test]
fn a_static_token_works_as_a_header_a_query_parameter_and_a_cookie() {
    let server = server();
    let auth = bearer(TOKEN);
    let mut sse = Sse::open(server.addr, "topic=news", &[("Authorization", &auth)]);
    assert_eq!(publish(&server, Some("static-token-2"), "news"), 202);
    assert!(published(&mut sse).contains("\"topic\":\"news\""));
    let query = format!("topic=news&access_token={TOKEN}");
    let mut by_query = Sse::open(server.addr, &query, &[]);
    let cookie = format!("theme=dark; mcp_stream_token={TOKEN}");
    let mut by_cookie = Sse::open(server.addr, "topic=news", &[("Cookie", &cookie)]);
    assert_eq!(publish(&server, Some(TOKEN), "news"), 202);
    assert!(published(&mut by_query).contains("\"topic\":\"news\""));
    assert!(published(&mut by_cookie).contains("\"topic\":\"news\""));
    // A WebSocket with the token in the query, as a browser would send it.
    let mut ws = websocket(&server, &format!("/stream/ws?access_token={TOKEN}"), &[]);
    assert_eq!(ws.next_json()["type"], "welcome");
    // An MCP session over Streamable HTTP.
    let mut headers = post_headers(None);
    headers.push(("Authorization", &auth));
    let r = Client::connect(server.addr).request("POST", "/mcp", &headers, INITIALIZE.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn jwts_are_checked_for_signature_expiry_and_start() {
    let server = server();
    let now = unix_now();
    let status = |token: &str| {
        get(
            &server,
            "/stream/sse?topic=t",
            &[("Authorization", &bearer(token))],
        )
    };
    let good = jwt(
        json!({"sub": "a", "exp": now + 600, "nbf": now - 60}),
        SECRET,
    );
    let mut sse = Sse::open(server.addr, "topic=t", &[("Authorization", &bearer(&good))]);
    assert_eq!(publish(&server, Some(&good), "t"), 202);
    assert!(published(&mut sse).contains("\"topic\":\"t\""));
    for (token, reason) in [
        (
            jwt(json!({"exp": now + 600}), "another-secret"),
            "invalid token signature",
        ),
        (jwt(json!({"exp": now - 1}), SECRET), "token expired"),
        (
            jwt(json!({"nbf": now + 600}), SECRET),
            "token not yet valid",
        ),
        ("a.b.c".to_string(), "invalid token header"),
    ] {
        assert_eq!(status(&token), (401, reason.to_string()), "{token}");
    }
}

#[test]
fn a_jwt_claim_limits_the_topics_on_every_transport() {
    let server = server();
    let token = jwt(
        json!({"mcp_stream": {"subscribe": ["news", "alerts/*"], "publish": ["news"]}}),
        SECRET,
    );
    let auth = bearer(&token);
    let headers = [("Authorization", auth.as_str())];
    // SSE: every topic must be granted.
    let _ok = Sse::open(server.addr, "topic=news,alerts/eu", &headers);
    let (status, reason) = get(&server, "/stream/sse?topic=news,sports", &headers);
    assert_eq!(
        (status, reason.as_str()),
        (403, "topic not allowed by the credential")
    );
    // Publish.
    assert_eq!(publish(&server, Some(&token), "news"), 202);
    assert_eq!(publish(&server, Some(&token), "alerts/eu"), 403);
    // WebSocket rooms: an error message, the connection stays up.
    let mut ws = websocket(&server, "/stream/ws", &[("Authorization", &auth)]);
    assert_eq!(ws.next_json()["type"], "welcome");
    ws.send_json(&json!({"type": "join", "room": "sports"}));
    let refused = ws.next_json();
    assert_eq!(refused["error"], "topic not allowed by the credential");
    ws.send_json(&json!({"type": "join", "room": "alerts/x"}));
    assert_eq!(ws.next_json()["type"], "joined");
    ws.send_json(&json!({"type": "broadcast", "room": "alerts/x", "data": 1}));
    assert_eq!(
        ws.next_json()["error"],
        "topic not allowed by the credential"
    );
    ws.send_json(&json!({"type": "broadcast", "data": 1}));
    assert_eq!(
        ws.next_json()["error"],
        "topic not allowed by the credential"
    );
    // MCP: the session keeps its grant; a tool call outside it fails.
    let mut h = post_headers(None);
    h.push(("Authorization", &auth));
    let init = Client::connect(server.addr).request("POST", "/mcp", &h, INITIALIZE.as_bytes());
    let session = init.header("mcp-session-id").unwrap().to_string();
    let mut h = post_headers(Some(&session));
    h.push(("Authorization", &auth));
    let call = |name: &str, topic: &str| {
        let body = rpc(
            json!(2),
            "tools/call",
            json!({"name": name, "arguments": {"topic": topic, "data": 1}}),
        );
        Client::connect(server.addr)
            .request("POST", "/mcp", &h, body.to_string().as_bytes())
            .json()
    };
    let denied = call("publish", "alerts/eu");
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    assert_eq!(
        denied["result"]["content"][0]["text"],
        "topic not allowed by the credential"
    );
    assert_eq!(call("publish", "news")["result"]["isError"], false);
    assert_eq!(call("history", "sports")["result"]["isError"], true);
    assert_eq!(call("history", "alerts/eu")["result"]["isError"], false);
}

#[test]
fn with_the_feature_off_no_credential_is_needed() {
    let server = TestServer::start_with(
        Some(json!({"streaming": {"security": {"tokens": [TOKEN]}}})),
        &[],
    );
    let _sse = Sse::open(server.addr, "topic=t", &[]);
    assert_eq!(publish(&server, None, "t"), 202);
    // And STREAM_AUTHENTICATION turns it on.
    let on = TestServer::start_with(
        Some(json!({"streaming": {"security": {"tokens": [TOKEN]}}})),
        &[("STREAM_AUTHENTICATION", "true")],
    );
    assert_eq!(publish(&on, None, "t"), 401);
    assert_eq!(publish(&on, Some(TOKEN), "t"), 202);
}
