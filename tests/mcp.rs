//! MCP over Streamable HTTP at `/mcp`, spoken by hand over raw sockets: the statuses of the
//! endpoint, sessions (initialize, negotiation, DELETE, idle reaping), the JSON-RPC layer (ids
//! echoed exactly, errors), the built-in tools and topic resources, answers streamed as SSE
//! (progress tokens, `countdown`), the session's `GET` stream with its resource updates, Origin
//! validation and the feature switch.
//!
//! Every wait is a socket read bounded by [`WAIT`] or a polled condition with the same bound.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;

use common::mcp::{
    countdown, done, notification, post_headers, post_stream, progress, read_messages_to_end, rpc,
    split_event_id, stream_message, try_open_stream, updated, wait_until, StreamMessage,
    ACCEPT_BOTH, TRICKY,
};
use common::ws::RawWs;
use common::{request_bytes, Client, Response, Sse, TestServer, WAIT};
use serde_json::{json, Value};

const VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

// ---------------------------------------------------------------------------------------------
// Helpers

fn initialize_message(id: Value, version: Option<&str>) -> Value {
    let mut params = json!({
        "capabilities": {},
        "clientInfo": {"name": "mcp-stream-tests", "version": "0"},
    });
    if let Some(v) = version {
        params["protocolVersion"] = json!(v);
    }
    rpc(id, "initialize", params)
}

/// `POST /mcp` of `body` with `headers` on a new connection.
fn post_raw(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> Response {
    Client::connect(addr).request("POST", "/mcp", headers, body)
}

/// `POST /mcp` of `message` with the usual headers on a new connection.
fn post(addr: SocketAddr, session: Option<&str>, message: &Value) -> Response {
    post_raw(addr, &post_headers(session), message.to_string().as_bytes())
}

/// Asserts a JSON answer to a JSON-RPC request and returns it.
fn assert_json_answer(r: &Response, id: &Value) -> Value {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let v = r.json();
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(&v["id"], id, "{v}");
    assert!(
        v.get("result").is_some() != v.get("error").is_some(),
        "exactly one of result and error: {v}"
    );
    v
}

/// Initializes a session; returns its id.
fn initialize(addr: SocketAddr) -> String {
    let r = post(
        addr,
        None,
        &initialize_message(json!(1), Some("2025-11-25")),
    );
    assert_json_answer(&r, &json!(1));
    let session = r
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id: {r:?}"))
        .to_string();
    let r = post(
        addr,
        Some(&session),
        &notification("notifications/initialized"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    session
}

/// Sends a request in `session`, expects a JSON answer, returns the whole JSON-RPC response.
fn call(addr: SocketAddr, session: &str, id: Value, method: &str, params: Value) -> Value {
    let r = post(addr, Some(session), &rpc(id.clone(), method, params));
    assert_json_answer(&r, &id)
}

/// The `result` of a request that must succeed.
fn result(addr: SocketAddr, session: &str, method: &str, params: Value) -> Value {
    let v = call(addr, session, json!(7), method, params);
    v.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{method} failed: {v}"))
}

/// The JSON-RPC error code of a request that must fail.
fn error_code(addr: SocketAddr, session: &str, method: &str, params: Value) -> i64 {
    let v = call(addr, session, json!(8), method, params);
    let e = v
        .get("error")
        .unwrap_or_else(|| panic!("{method} succeeded: {v}"));
    assert!(e["message"].is_string(), "{v}");
    e["code"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

/// The text of a successful `tools/call`.
fn tool_text(addr: SocketAddr, session: &str, name: &str, arguments: Value) -> String {
    let r = result(
        addr,
        session,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let content = r["content"].as_array().expect("content array");
    assert_eq!(content.len(), 1, "{r}");
    assert_eq!(content[0]["type"], "text", "{r}");
    content[0]["text"].as_str().expect("text").to_string()
}

/// `GET /mcp` in `session` with `extra` headers.
fn try_get_stream(
    addr: SocketAddr,
    session: &str,
    extra: &[(&str, &str)],
) -> Result<Sse, Response> {
    let mut headers = vec![("Accept", "text/event-stream"), ("Mcp-Session-Id", session)];
    headers.extend_from_slice(extra);
    let mut client = Client::connect(addr);
    client.send(&request_bytes("GET", "/mcp", &headers, b""));
    try_open_stream(client)
}

/// Opens the session's GET stream and reads its opening `retry:` block.
fn get_stream(addr: SocketAddr, session: &str) -> Sse {
    let mut sse = try_get_stream(addr, session, &[]).unwrap_or_else(|r| panic!("GET /mcp: {r:?}"));
    assert_eq!(sse.head.header("mcp-session-id"), Some(session));
    let opening = sse.next_block();
    assert!(
        opening.retry.is_some() && opening.data.is_none(),
        "{:?}",
        opening.raw
    );
    sse
}

/// Reads a streamed answer to its end: the `retry:` block first, then events (no heartbeats
/// expected on an answer), then the end of the stream.
fn read_answer(sse: &mut Sse) -> Vec<StreamMessage> {
    let opening = sse.next_block();
    assert_eq!(opening.retry, Some(3000), "{:?}", opening.raw);
    assert!(
        opening.data.is_none() && opening.id.is_none(),
        "{:?}",
        opening.raw
    );
    read_messages_to_end(sse)
}

/// The next non-heartbeat message of a GET stream.
fn next_message(sse: &mut Sse) -> StreamMessage {
    stream_message(&sse.next_event())
}

/// Asserts that `m` is `notifications/resources/updated` for `topic`.
fn assert_updated(m: &StreamMessage, topic: &str) {
    assert_eq!(m.message, updated(topic), "{m:?}");
}

/// Whether the server still knows `session`, asked without using it: a request with an
/// unsupported `MCP-Protocol-Version` is refused with `400` while the session exists and `404`
/// once it is gone, and a refused request does not count as activity. (A successful request
/// would reset the idle time this asks about.)
fn session_exists(addr: SocketAddr, session: &str) -> bool {
    let mut headers = post_headers(Some(session));
    headers.push(("MCP-Protocol-Version", "1999-01-01"));
    let r = post_raw(
        addr,
        &headers,
        rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
    );
    match r.status {
        400 => true,
        404 => false,
        _ => panic!("unexpected answer to the probe: {r:?}"),
    }
}

/// Checks a whole countdown answer: progress 1..=n (when a token was given) with total n, then
/// the result; event ids `<s>-1`, `<s>-2`, ... of one stream. Returns the stream number.
fn assert_countdown(messages: &[StreamMessage], id: &Value, n: u64, token: Option<&Value>) -> u64 {
    let progress_count = if token.is_some() { n as usize } else { 0 };
    assert_eq!(messages.len(), progress_count + 1, "{messages:#?}");
    let stream = split_event_id(&messages[0].id).0;
    for (k, m) in messages.iter().enumerate() {
        assert_eq!(
            split_event_id(&m.id),
            (stream, k as u64 + 1),
            "event ids number the stream's events: {messages:#?}"
        );
    }
    if let Some(token) = token {
        for (k, m) in messages[..progress_count].iter().enumerate() {
            assert_eq!(
                m.message,
                progress(token, k as u64 + 1, n),
                "progress {}",
                k + 1
            );
        }
    }
    assert_eq!(messages[progress_count].message, done(id),);
    stream
}

// ---------------------------------------------------------------------------------------------
// initialize and the session id

#[test]
fn initialize_opens_a_session_with_a_32_hex_id_and_advertises_the_capabilities() {
    let server = TestServer::start();
    let r = post(
        server.addr,
        None,
        &initialize_message(json!(0), Some("2025-11-25")),
    );
    let v = assert_json_answer(&r, &json!(0));
    let session = r
        .header("mcp-session-id")
        .expect("Mcp-Session-Id")
        .to_string();
    assert_eq!(session.len(), 32, "{session:?}");
    assert!(
        session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{session:?}"
    );
    let result = &v["result"];
    assert_eq!(result["protocolVersion"], "2025-11-25");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    assert_eq!(
        result["capabilities"]["resources"]["subscribe"], true,
        "{result}"
    );
    assert!(result["capabilities"]["logging"].is_object(), "{result}");
    assert_eq!(result["serverInfo"]["name"], "mcp-stream");
    assert!(result["serverInfo"]["version"].is_string(), "{result}");

    // Every initialize opens a session of its own.
    let r2 = post(
        server.addr,
        None,
        &initialize_message(json!(1), Some("2025-11-25")),
    );
    assert_json_answer(&r2, &json!(1));
    let other = r2.header("mcp-session-id").expect("Mcp-Session-Id");
    assert_ne!(other, session);
    // Both work.
    for s in [session.as_str(), other] {
        assert_eq!(result_of_ping(server.addr, s), json!({}));
    }
}

fn result_of_ping(addr: SocketAddr, session: &str) -> Value {
    result(addr, session, "ping", Value::Null)
}

#[test]
fn the_protocol_version_is_negotiated_among_the_served_revisions() {
    let server = TestServer::start();
    for v in VERSIONS {
        let r = post(server.addr, None, &initialize_message(json!(1), Some(v)));
        let answer = assert_json_answer(&r, &json!(1));
        assert_eq!(answer["result"]["protocolVersion"], v);
    }
    // Unknown or missing: the newest.
    for asked in [Some("1999-01-01"), Some("2099-12-31"), None] {
        let r = post(server.addr, None, &initialize_message(json!(1), asked));
        let answer = assert_json_answer(&r, &json!(1));
        assert_eq!(
            answer["result"]["protocolVersion"], "2025-11-25",
            "{asked:?}"
        );
        assert!(r.header("mcp-session-id").is_some(), "{r:?}");
    }
}

#[test]
fn the_mcp_protocol_version_header_must_name_the_negotiated_revision() {
    let server = TestServer::start();
    // initialize() negotiates 2025-11-25.
    let session = initialize(server.addr);
    let mut headers = post_headers(Some(&session));
    headers.push(("MCP-Protocol-Version", "2025-11-25"));
    let r = post_raw(
        server.addr,
        &headers,
        rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
    );
    assert_json_answer(&r, &json!(1));
    let others = VERSIONS.iter().filter(|v| **v != "2025-11-25");
    for bad in others
        .copied()
        .chain(["1999-01-01", "2026-07-28", "latest", ""])
    {
        let mut headers = post_headers(Some(&session));
        headers.push(("MCP-Protocol-Version", bad));
        let r = post_raw(
            server.addr,
            &headers,
            rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
        );
        r.assert_error(400);
        // The GET stream checks it too.
        let r = try_get_stream(server.addr, &session, &[("MCP-Protocol-Version", bad)])
            .err()
            .expect("refused");
        r.assert_error(400);
    }
    // The session is still fine.
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
}

// ---------------------------------------------------------------------------------------------
// Statuses of POST

#[test]
fn a_post_whose_accept_lacks_either_media_type_is_refused_with_406() {
    let server = TestServer::start();
    let body = initialize_message(json!(1), None).to_string();
    for accept in [
        None,
        Some("application/json"),
        Some("text/event-stream"),
        Some("text/html"),
        Some("application/*"),
        Some("text/*"),
        Some("application/jsonx, text/event-streams"),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        let r = post_raw(server.addr, &headers, body.as_bytes());
        r.assert_error(406);
        assert!(r.header("mcp-session-id").is_none(), "{accept:?}: {r:?}");
    }
    for accept in [
        ACCEPT_BOTH,
        "text/event-stream, application/json",
        "application/json;q=0.9,text/event-stream;q=0.8",
        "*/*",
        "application/*, text/*",
        "Application/JSON, Text/Event-Stream",
    ] {
        let headers = [("Content-Type", "application/json"), ("Accept", accept)];
        let r = post_raw(server.addr, &headers, body.as_bytes());
        assert_json_answer(&r, &json!(1));
    }
}

#[test]
fn messages_without_a_session_are_refused_with_400_except_initialize_and_discover() {
    let server = TestServer::start();
    for message in [
        rpc(json!(1), "ping", Value::Null),
        rpc(json!(1), "tools/list", json!({})),
        notification("notifications/initialized"),
        json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
    ] {
        let r = post(server.addr, None, &message);
        assert_eq!(r.assert_error(400), "missing Mcp-Session-Id", "{message}");
    }
    // server/discover (revision 2026-07-28) gets a JSON-RPC error at once, without a session.
    for id in [json!(0), json!("probe \"1\"")] {
        let r = post(
            server.addr,
            None,
            &rpc(id.clone(), "server/discover", json!({"_meta": {}})),
        );
        let v = assert_json_answer(&r, &id);
        assert_eq!(v["error"]["code"], -32601, "{v}");
        assert!(r.header("mcp-session-id").is_none(), "{r:?}");
    }
}

#[test]
fn an_unknown_session_is_a_404_for_post_get_and_delete() {
    let server = TestServer::start();
    let unknown = "0123456789abcdef0123456789abcdef";
    let r = post(
        server.addr,
        Some(unknown),
        &rpc(json!(1), "ping", Value::Null),
    );
    assert_eq!(r.assert_error(404), "unknown session");
    let r = post(
        server.addr,
        Some(unknown),
        &notification("notifications/initialized"),
    );
    r.assert_error(404);
    let r = try_get_stream(server.addr, unknown, &[])
        .err()
        .expect("refused");
    r.assert_error(404);
    let r = server
        .client()
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", unknown)], b"");
    r.assert_error(404);
}

#[test]
fn notifications_and_responses_are_accepted_with_202_and_no_body() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    for message in [
        notification("notifications/initialized"),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 3, "reason": "test"}}),
        json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 5, "result": {}}),
        json!({"jsonrpc": "2.0", "id": "s", "error": {"code": -1, "message": "no"}}),
    ] {
        let r = post(server.addr, Some(&session), &message);
        assert_eq!(r.status, 202, "{message}: {r:?}");
        assert_eq!(r.header("content-length"), Some("0"), "{r:?}");
        assert!(r.body.is_empty(), "{r:?}");
    }
}

#[test]
fn batches_invalid_json_and_non_json_rpc_bodies_are_400() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    for body in [
        json!([
            rpc(json!(1), "ping", Value::Null),
            rpc(json!(2), "ping", Value::Null)
        ])
        .to_string(),
        json!([rpc(json!(1), "initialize", json!({}))]).to_string(),
        "[]".to_string(),
        "{".to_string(),
        "not json".to_string(),
        String::new(),
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_string(),
        r#"{"id":1,"method":"ping"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#.to_string(),
        r#"{"jsonrpc":"2.0"}"#.to_string(),
        "42".to_string(),
    ] {
        let r = post_raw(server.addr, &post_headers(Some(&session)), body.as_bytes());
        let reason = r.assert_error(400);
        assert!(!reason.is_empty(), "{body}");
    }
    // Nothing of that hurt the session.
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = TestServer::start();
    for method in ["PUT", "PATCH", "OPTIONS"] {
        let r = server
            .client()
            .request(method, "/mcp", &[("Accept", ACCEPT_BOTH)], b"{}");
        r.assert_error(405);
        assert_eq!(
            r.header("allow"),
            Some("GET, POST, DELETE"),
            "{method}: {r:?}"
        );
    }
}

#[test]
fn head_is_405_without_a_body_and_the_connection_stays_in_step() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&request_bytes("HEAD", "/mcp", &[], b""));
    let head = client.read_head();
    assert_eq!(head.status, 405, "{head:?}");
    assert_eq!(head.header("allow"), Some("GET, POST, DELETE"));
    // No body follows a HEAD answer: the next response on the connection starts right away.
    let r = client.request("GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn the_endpoint_follows_mcp_path() {
    let server = TestServer::with_config(json!({"mcp": {"path": "/rpc"}}));
    let r = server.client().request(
        "POST",
        "/rpc",
        &post_headers(None),
        initialize_message(json!(1), None).to_string().as_bytes(),
    );
    assert_json_answer(&r, &json!(1));
    let r = post(server.addr, None, &initialize_message(json!(1), None));
    r.assert_error(404);
}

#[test]
fn many_requests_share_one_keep_alive_connection_and_a_query_is_ignored() {
    let server = TestServer::start();
    let mut client = server.client();
    let r = client.request(
        "POST",
        "/mcp?client=tests",
        &post_headers(None),
        initialize_message(json!(1), None).to_string().as_bytes(),
    );
    assert_json_answer(&r, &json!(1));
    let session = r.header("mcp-session-id").unwrap().to_string();
    // Pipelined: three requests in one write, answered in order.
    let mut bytes = Vec::new();
    for id in 10..13 {
        bytes.extend(request_bytes(
            "POST",
            "/mcp",
            &post_headers(Some(&session)),
            rpc(json!(id), "ping", Value::Null).to_string().as_bytes(),
        ));
    }
    client.send(&bytes);
    for id in 10..13 {
        let r = client.read_response();
        assert_json_answer(&r, &json!(id));
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC ids and the requests

#[test]
fn request_ids_are_echoed_exactly() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let ids = [
        json!(0),
        json!(-1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(""),
        json!("0"),
        json!("1"),
        json!("an id with \"quotes\", \\backslashes\\ and 日本語 🎉"),
    ];
    for id in ids {
        let body = rpc(id.clone(), "ping", Value::Null).to_string();
        let r = post_raw(server.addr, &post_headers(Some(&session)), body.as_bytes());
        let v = assert_json_answer(&r, &id);
        assert_eq!(v["result"], json!({}));
        // Not merely equal after parsing: the very same JSON text (0 stays 0, "0" stays a string).
        let text = r.text();
        let id_text = format!("\"id\":{id}");
        assert!(text.contains(&id_text), "{text} lacks {id_text}");
    }
    // Ids of the initialize too.
    for id in [json!(0), json!("init-ä")] {
        let r = post(server.addr, None, &initialize_message(id.clone(), None));
        assert_json_answer(&r, &id);
        assert!(r.text().contains(&format!("\"id\":{id}")), "{r:?}");
    }
}

#[test]
fn ping_logging_and_unknown_methods() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
    assert_eq!(result(server.addr, &session, "ping", json!({})), json!({}));
    assert_eq!(
        result(
            server.addr,
            &session,
            "logging/setLevel",
            json!({"level": "debug"})
        ),
        json!({})
    );
    for method in ["no/such/method", "prompts/list", "server/discover", ""] {
        assert_eq!(
            error_code(server.addr, &session, method, json!({})),
            -32601,
            "{method:?}"
        );
    }
}

#[test]
fn tools_list_names_the_built_in_tools_with_schemas() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let r = result(server.addr, &session, "tools/list", json!({}));
    let tools = r["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "countdown", "publish", "history", "topics"]);
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].is_string(), "{t}");
    }
    assert_eq!(tools[0]["inputSchema"]["required"], json!(["text"]));
    assert_eq!(tools[1]["inputSchema"]["required"], json!(["n"]));
}

#[test]
fn echo_returns_quotes_backslashes_controls_and_non_ascii_byte_exact() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    for text in [TRICKY, "", " ", "\\", "\"", "\u{0}", "🎉🎉🎉"] {
        let got = tool_text(server.addr, &session, "echo", json!({"text": text}));
        assert_eq!(got.as_bytes(), text.as_bytes(), "{text:?}");
    }
    // A long one.
    let long: String = TRICKY.repeat(500);
    assert_eq!(
        tool_text(server.addr, &session, "echo", json!({"text": long})),
        long
    );
}

#[test]
fn tool_errors_unknown_tools_and_bad_arguments() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    // Unknown tool: a protocol error.
    assert_eq!(
        error_code(
            server.addr,
            &session,
            "tools/call",
            json!({"name": "nope", "arguments": {}})
        ),
        -32602
    );
    assert_eq!(
        error_code(server.addr, &session, "tools/call", json!({})),
        -32602
    );
    // A known tool with bad arguments: a tool result with isError.
    let r = result(
        server.addr,
        &session,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": 5}}),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{r}"
    );
    let r = result(
        server.addr,
        &session,
        "tools/call",
        json!({"name": "publish", "arguments": {"topic": "bad topic!", "data": 1}}),
    );
    assert_eq!(r["isError"], true, "{r}");
    // countdown needs a whole n up to 10000: refused at once, as JSON.
    for args in [
        json!({}),
        json!({"n": -1}),
        json!({"n": 1.5}),
        json!({"n": 10_001}),
    ] {
        assert_eq!(
            error_code(
                server.addr,
                &session,
                "tools/call",
                json!({"name": "countdown", "arguments": args})
            ),
            -32602,
            "{args}"
        );
    }
}

#[test]
fn publish_history_and_topics_tools_work_on_the_hub() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut sse = server.sse("topic=mcp/news");
    sse.read_opening();
    let data = json!({"text": TRICKY, "n": [1, 2.5, null, true]});
    let text = tool_text(
        server.addr,
        &session,
        "publish",
        json!({"topic": "mcp/news", "event": "update", "data": data}),
    );
    let published: Value = serde_json::from_str(&text).expect("publish answers JSON");
    let id = published["id"].as_str().expect("id").to_string();
    common::parse_id(&id);
    // An SSE subscriber of the topic gets what the tool published.
    let e = sse.next_event();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(e.event.as_deref(), Some("update"));
    assert_eq!(e.json()["data"], data);
    let ids = server.publish(&json!({"topic": "mcp/news", "data": 2}));

    let text = tool_text(
        server.addr,
        &session,
        "history",
        json!({"topic": "mcp/news"}),
    );
    let history: Value = serde_json::from_str(&text).expect("history answers JSON");
    assert_eq!(
        history,
        json!([
            {"type": "event", "topic": "mcp/news", "event": "update", "id": id, "data": data},
            {"type": "event", "topic": "mcp/news", "event": "message", "id": ids[0], "data": 2},
        ])
    );
    let text = tool_text(
        server.addr,
        &session,
        "history",
        json!({"topic": "mcp/news", "since": id}),
    );
    let after: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(after.as_array().map(Vec::len), Some(1), "{after}");
    assert_eq!(after[0]["id"], ids[0]);

    server.publish(&json!({"topic": "alpha", "data": 0}));
    let text = tool_text(server.addr, &session, "topics", json!({}));
    let topics: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(topics, json!(["alpha", "mcp/news"]));
}

#[test]
fn topics_are_resources_that_can_be_listed_and_read() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    assert_eq!(
        result(server.addr, &session, "resources/list", json!({})),
        json!({"resources": []})
    );
    let ids = server.publish(&json!([
        {"topic": "alpha", "event": "e", "data": TRICKY},
        {"topic": "beta.x", "data": {"k": 1}},
    ]));
    let r = result(server.addr, &session, "resources/list", json!({}));
    let mut uris: Vec<&str> = r["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    uris.sort_unstable();
    assert_eq!(uris, ["stream://topics/alpha", "stream://topics/beta.x"]);

    let r = result(server.addr, &session, "resources/templates/list", json!({}));
    assert_eq!(
        r["resourceTemplates"][0]["uriTemplate"], "stream://topics/{topic}",
        "{r}"
    );

    let r = result(
        server.addr,
        &session,
        "resources/read",
        json!({"uri": "stream://topics/alpha"}),
    );
    let contents = r["contents"].as_array().expect("contents");
    assert_eq!(contents.len(), 1, "{r}");
    assert_eq!(contents[0]["uri"], "stream://topics/alpha");
    let events: Value = serde_json::from_str(contents[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        events,
        json!([{"type": "event", "topic": "alpha", "event": "e", "id": ids[0], "data": TRICKY}])
    );
    for bad in [
        "stream://topics/",
        "stream://topics/bad topic",
        "file:///etc/passwd",
        "",
    ] {
        assert_eq!(
            error_code(server.addr, &session, "resources/read", json!({"uri": bad})),
            -32602,
            "{bad:?}"
        );
        assert_eq!(
            error_code(
                server.addr,
                &session,
                "resources/subscribe",
                json!({"uri": bad})
            ),
            -32602,
            "{bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Answers streamed as SSE

#[test]
fn a_request_with_a_progress_token_is_answered_as_an_sse_stream_that_ends() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let token = json!("tok \"1\" ü");
    let message = rpc(
        json!("e-1"),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": TRICKY}, "_meta": {"progressToken": token}}),
    );
    let mut sse = post_stream(server.addr, &session, &message);
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.head.header("mcp-session-id"), Some(session.as_str()));
    let messages = read_answer(&mut sse);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(split_event_id(&messages[0].id).1, 1);
    assert_eq!(
        messages[0].message,
        json!({"jsonrpc": "2.0", "id": "e-1",
               "result": {"content": [{"type": "text", "text": TRICKY}], "isError": false}})
    );
    // A plain request with a numeric token, and an error answer, stream too.
    let mut sse = post_stream(
        server.addr,
        &session,
        &rpc(json!(0), "ping", json!({"_meta": {"progressToken": 0}})),
    );
    let messages = read_answer(&mut sse);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].message,
        json!({"jsonrpc": "2.0", "id": 0, "result": {}})
    );
    let mut sse = post_stream(
        server.addr,
        &session,
        &rpc(json!(3), "nope", json!({"_meta": {"progressToken": "t"}})),
    );
    let messages = read_answer(&mut sse);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message["error"]["code"], -32601);
}

#[test]
fn countdown_streams_progress_1_to_n_then_done_and_ends_the_stream() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut streams = Vec::new();
    for (id, token) in [
        (json!(1), json!("count \"down\" 🎉")),
        (json!("c2"), json!(0)),
        (json!(0), json!(-7)),
    ] {
        let mut sse = post_stream(
            server.addr,
            &session,
            &countdown(id.clone(), 5, 5, Some(token.clone())),
        );
        assert_eq!(sse.head.header("mcp-session-id"), Some(session.as_str()));
        let messages = read_answer(&mut sse);
        streams.push(assert_countdown(&messages, &id, 5, Some(&token)));
    }
    // Each stream of the session has its own number, so event ids are unique in the session.
    let mut unique = streams.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), streams.len(), "{streams:?}");
}

#[test]
fn countdown_without_a_token_streams_only_the_result_and_zero_steps_answer_at_once() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut sse = post_stream(server.addr, &session, &countdown(json!(4), 3, 5, None));
    assert_countdown(&read_answer(&mut sse), &json!(4), 3, None);
    let mut sse = post_stream(
        server.addr,
        &session,
        &countdown(json!(5), 0, 5, Some(json!("z"))),
    );
    assert_countdown(&read_answer(&mut sse), &json!(5), 0, Some(&json!("z")));
}

#[test]
fn three_concurrent_countdowns_on_three_connections_each_get_all_progress_in_order() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let addr = server.addr;
    let n = 20;
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|k| {
            let session = session.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let id = json!(100 + k);
                let token = json!(format!("token-{k}"));
                let bytes = request_bytes(
                    "POST",
                    "/mcp",
                    &post_headers(Some(&session)),
                    countdown(id.clone(), n, 10, Some(token.clone()))
                        .to_string()
                        .as_bytes(),
                );
                let mut client = Client::connect(addr);
                barrier.wait();
                client.send(&bytes);
                let mut sse = try_open_stream(client).unwrap_or_else(|r| panic!("{r:?}"));
                let messages = read_answer(&mut sse);
                assert_countdown(&messages, &id, n, Some(&token))
            })
        })
        .collect();
    let mut streams: Vec<u64> = workers
        .into_iter()
        .map(|w| w.join().expect("a countdown failed"))
        .collect();
    streams.sort_unstable();
    streams.dedup();
    assert_eq!(streams.len(), 3, "stream numbers are distinct: {streams:?}");
    // The session is still usable afterwards.
    assert_eq!(result_of_ping(addr, &session), json!({}));
}

// ---------------------------------------------------------------------------------------------
// The GET stream and resource subscriptions

#[test]
fn get_needs_event_stream_in_accept_and_a_session() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    for accept in [None, Some("application/json"), Some("text/html")] {
        let mut headers = vec![("Mcp-Session-Id", session.as_str())];
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        let r = server.client().request("GET", "/mcp", &headers, b"");
        r.assert_error(406);
    }
    let r = server
        .client()
        .request("GET", "/mcp", &[("Accept", "text/event-stream")], b"");
    assert_eq!(r.assert_error(400), "missing Mcp-Session-Id");
    // A wildcard is fine.
    let mut client = Client::connect(server.addr);
    client.send(&request_bytes(
        "GET",
        "/mcp",
        &[("Accept", "*/*"), ("Mcp-Session-Id", &session)],
        b"",
    ));
    let sse = try_open_stream(client).unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
}

#[test]
fn a_second_get_stream_is_409_until_the_first_one_ends() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let first = get_stream(server.addr, &session);
    let r = try_get_stream(server.addr, &session, &[])
        .err()
        .expect("refused");
    r.assert_error(409);
    // Another session has its own stream.
    let other = initialize(server.addr);
    let _other_stream = get_stream(server.addr, &other);
    // The session is still fine.
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
    // Once the first one is gone (the server learns it when the socket closes), a new GET works.
    drop(first);
    let mut second = None;
    wait_until(
        "a GET after the first stream closed",
        || match try_get_stream(server.addr, &session, &[]) {
            Ok(sse) => {
                second = Some(sse);
                true
            }
            Err(r) => {
                r.assert_error(409);
                false
            }
        },
    );
    assert!(second.is_some());
}

#[test]
fn a_finished_answer_stream_resumes_after_its_last_event_id_with_no_gap_or_duplicate() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut sse = post_stream(
        server.addr,
        &session,
        &countdown(json!(1), 3, 5, Some(json!(1))),
    );
    let messages = read_answer(&mut sse);
    assert_eq!(messages.len(), 4, "three progress steps and the answer");
    // Resuming after the first event gives exactly the three after it, then the stream ends.
    let mut resumed = try_get_stream(server.addr, &session, &[("Last-Event-ID", &messages[0].id)])
        .unwrap_or_else(|r| panic!("resume refused: {r:?}"));
    let replayed = read_answer(&mut resumed);
    let ids: Vec<&str> = replayed.iter().map(|m| m.id.as_str()).collect();
    let want: Vec<&str> = messages[1..].iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, want);
    // Resuming after the last gives nothing more.
    let mut empty = try_get_stream(server.addr, &session, &[("Last-Event-ID", &messages[3].id)])
        .unwrap_or_else(|r| panic!("resume refused: {r:?}"));
    assert!(read_answer(&mut empty).is_empty());
}

#[test]
fn an_unknown_last_event_id_is_refused_with_404_and_the_session_stays_usable() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut sse = post_stream(
        server.addr,
        &session,
        &countdown(json!(1), 2, 5, Some(json!(1))),
    );
    read_answer(&mut sse);
    // Another stream number, a position past the end, garbage.
    for last in ["9-1", "1-99", "nonsense"] {
        let r = try_get_stream(server.addr, &session, &[("Last-Event-ID", last)])
            .err()
            .expect("refused");
        r.assert_error(404);
    }
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
    // The refused GETs did not take the session's stream slot.
    let _stream = get_stream(server.addr, &session);
}

#[test]
fn a_countdown_whose_connection_drops_goes_on_and_is_resumed_without_loss() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut sse = post_stream(
        server.addr,
        &session,
        &countdown(json!("r"), 6, 50, Some(json!("t"))),
    );
    let opening = sse.next_block();
    assert_eq!(opening.retry, Some(3000));
    let first = stream_message(&sse.next_block());
    drop(sse);
    let mut resumed = try_get_stream(server.addr, &session, &[("Last-Event-ID", &first.id)])
        .unwrap_or_else(|r| panic!("resume refused: {r:?}"));
    let rest = read_answer(&mut resumed);
    let mut all = vec![first];
    all.extend(rest);
    assert_countdown(&all, &json!("r"), 6, Some(&json!("t")));
}

#[test]
fn the_get_stream_sends_heartbeats_when_idle() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"heartbeat_secs": 1}}}));
    let session = initialize(server.addr);
    let mut sse = get_stream(server.addr, &session);
    let b = sse.next_block();
    assert!(b.is_comment(), "{:?}", b.raw);
    assert_eq!(b.raw, ": ping\n\n");
}

#[test]
fn a_subscribed_session_hears_of_publishes_from_http_websocket_and_the_publish_tool() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let mut stream = get_stream(server.addr, &session);
    assert_eq!(
        result(
            server.addr,
            &session,
            "resources/subscribe",
            json!({"uri": "stream://topics/news"})
        ),
        json!({})
    );
    // Subscribing twice is harmless: still one notification per publish.
    result(
        server.addr,
        &session,
        "resources/subscribe",
        json!({"uri": "stream://topics/news"}),
    );
    result(
        server.addr,
        &session,
        "resources/subscribe",
        json!({"uri": "stream://topics/barrier.1"}),
    );

    // HTTP publish.
    server.publish(&json!({"topic": "news", "data": TRICKY}));
    let first = next_message(&mut stream);
    assert_updated(&first, "news");
    // An unsubscribed topic is not heard of; the barrier topic shows nothing else came.
    server.publish(&json!({"topic": "sport", "data": 1}));
    server.publish(&json!({"topic": "barrier.1", "data": 1}));
    assert_updated(&next_message(&mut stream), "barrier.1");

    // WebSocket publish.
    let mut ws = RawWs::connect(server.addr);
    ws.send_json(&json!({"type": "publish", "topic": "news", "data": {"from": "ws"}}));
    assert_eq!(ws.next_json()["type"], "published");
    assert_updated(&next_message(&mut stream), "news");

    // The MCP publish tool, from another session.
    let other = initialize(server.addr);
    tool_text(
        server.addr,
        &other,
        "publish",
        json!({"topic": "news", "data": 3}),
    );
    let last = next_message(&mut stream);
    assert_updated(&last, "news");

    // Event ids of the GET stream: one stream number, counting up from 1.
    let (s1, k1) = split_event_id(&first.id);
    let (s2, k2) = split_event_id(&last.id);
    assert_eq!((s1, k1), (s2, 1));
    assert_eq!(k2, 4);

    // Unsubscribed: no more news.
    assert_eq!(
        result(
            server.addr,
            &session,
            "resources/unsubscribe",
            json!({"uri": "stream://topics/news"})
        ),
        json!({})
    );
    result(
        server.addr,
        &session,
        "resources/subscribe",
        json!({"uri": "stream://topics/barrier.2"}),
    );
    server.publish(&json!({"topic": "news", "data": 4}));
    server.publish(&json!({"topic": "barrier.2", "data": 1}));
    assert_updated(&next_message(&mut stream), "barrier.2");
}

#[test]
fn only_the_sessions_that_subscribed_hear_of_a_topic() {
    let server = TestServer::start();
    let a = initialize(server.addr);
    let b = initialize(server.addr);
    let c = initialize(server.addr);
    let mut streams: Vec<Sse> = [&a, &b, &c]
        .iter()
        .map(|s| get_stream(server.addr, s))
        .collect();
    for s in [&a, &b] {
        result(
            server.addr,
            s,
            "resources/subscribe",
            json!({"uri": "stream://topics/t"}),
        );
    }
    result(
        server.addr,
        &c,
        "resources/subscribe",
        json!({"uri": "stream://topics/c-only"}),
    );
    server.publish(&json!({"topic": "t", "data": 1}));
    server.publish(&json!({"topic": "c-only", "data": 1}));
    assert_updated(&next_message(&mut streams[0]), "t");
    assert_updated(&next_message(&mut streams[1]), "t");
    assert_updated(&next_message(&mut streams[2]), "c-only");
}

// ---------------------------------------------------------------------------------------------
// DELETE and reaping

#[test]
fn delete_ends_the_session_and_its_get_stream() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    result(
        server.addr,
        &session,
        "resources/subscribe",
        json!({"uri": "stream://topics/t"}),
    );
    let mut stream = get_stream(server.addr, &session);
    let r = server
        .client()
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &session)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    stream.expect_end();
    let r = post(
        server.addr,
        Some(&session),
        &rpc(json!(1), "ping", Value::Null),
    );
    assert_eq!(r.assert_error(404), "unknown session");
    try_get_stream(server.addr, &session, &[])
        .err()
        .expect("refused")
        .assert_error(404);
    let r = server
        .client()
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &session)], b"");
    r.assert_error(404);
    let r = server.client().request("DELETE", "/mcp", &[], b"");
    assert_eq!(r.assert_error(400), "missing Mcp-Session-Id");
    // Publishing on the topic it watched harms nothing; other sessions carry on.
    server.publish(&json!({"topic": "t", "data": 1}));
    let other = initialize(server.addr);
    assert_eq!(result_of_ping(server.addr, &other), json!({}));
}

#[test]
fn an_idle_session_is_reaped_but_one_with_an_open_get_stream_is_kept() {
    let server = TestServer::with_config(json!({"mcp": {"session_idle_secs": 1}}));
    let kept = initialize(server.addr);
    let stream = get_stream(server.addr, &kept); // its last use
    let idle = initialize(server.addr); // used after `kept`
    assert!(session_exists(server.addr, &idle));
    wait_until("the idle session is reaped", || {
        !session_exists(server.addr, &idle)
    });
    // `kept` was idle longer than `idle` but has its stream open.
    assert!(session_exists(server.addr, &kept));
    assert_eq!(result_of_ping(server.addr, &kept), json!({}));
    let r = post(
        server.addr,
        Some(&idle),
        &rpc(json!(1), "ping", Value::Null),
    );
    assert_eq!(r.assert_error(404), "unknown session");
    // Once its stream is gone it is reaped too.
    drop(stream);
    wait_until("the session whose stream closed is reaped", || {
        !session_exists(server.addr, &kept)
    });
}

#[test]
fn a_session_is_kept_while_a_countdown_streams_and_reaped_after() {
    let server = TestServer::with_config(json!({"mcp": {"session_idle_secs": 1}}));
    let session = initialize(server.addr);
    let mut sse = post_stream(
        server.addr,
        &session,
        &countdown(json!(1), 25, 100, Some(json!(1))),
    );
    let opening = sse.next_block();
    assert!(opening.retry.is_some(), "{:?}", opening.raw);
    // After 20 steps of at least 100 ms the session has had no request for 2 s, twice its
    // idle time, yet the countdown keeps it.
    for _ in 0..20 {
        next_message(&mut sse);
    }
    assert!(
        session_exists(server.addr, &session),
        "reaped during a countdown"
    );
    let mut rest = Vec::new();
    while let Some(b) = sse.try_next_block() {
        rest.push(stream_message(&b));
    }
    assert_eq!(rest.len(), 6, "{rest:#?}");
    assert_eq!(rest[5].message["result"]["content"][0]["text"], "done");
    wait_until("the session is reaped after its countdown", || {
        !session_exists(server.addr, &session)
    });
}

#[test]
fn initialize_beyond_max_connections_sessions_is_503_with_retry_after() {
    let server = TestServer::with_config(json!({"max_connections": 3}));
    // One keep-alive connection for all of them, so that only sessions count.
    let mut client = server.client();
    let body = initialize_message(json!(1), None).to_string();
    for _ in 0..3 {
        let r = client.request("POST", "/mcp", &post_headers(None), body.as_bytes());
        assert_json_answer(&r, &json!(1));
    }
    let r = client.request("POST", "/mcp", &post_headers(None), body.as_bytes());
    r.assert_error(503);
    assert!(r.header("retry-after").is_some(), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Origin and the feature switch

#[test]
fn a_foreign_origin_is_403_and_loopback_origins_are_fine() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    for origin in [
        "http://evil.example",
        "https://evil.example:443",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "null",
    ] {
        let mut headers = post_headers(None);
        headers.push(("Origin", origin));
        let r = post_raw(
            server.addr,
            &headers,
            initialize_message(json!(1), None).to_string().as_bytes(),
        );
        r.assert_error(403);
        assert!(r.header("mcp-session-id").is_none(), "{origin}: {r:?}");
        let mut headers = post_headers(Some(&session));
        headers.push(("Origin", origin));
        let r = post_raw(
            server.addr,
            &headers,
            rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
        );
        r.assert_error(403);
        try_get_stream(server.addr, &session, &[("Origin", origin)])
            .err()
            .expect("refused")
            .assert_error(403);
        let r = server.client().request(
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", &session), ("Origin", origin)],
            b"",
        );
        r.assert_error(403);
    }
    // The session survived those.
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
    for origin in [
        "http://localhost:1234",
        "http://localhost",
        "https://127.0.0.1:8443",
        "http://[::1]:3000",
    ] {
        let mut headers = post_headers(Some(&session));
        headers.push(("Origin", origin));
        let r = post_raw(
            server.addr,
            &headers,
            rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
        );
        assert_json_answer(&r, &json!(1));
    }
}

#[test]
fn allowed_origins_replace_the_loopback_rule() {
    let server = TestServer::with_config(
        json!({"streaming": {"security": {"allowed_origins": ["https://app.example"]}}}),
    );
    let body = initialize_message(json!(1), None).to_string();
    let mut headers = post_headers(None);
    headers.push(("Origin", "https://app.example"));
    assert_json_answer(&post_raw(server.addr, &headers, body.as_bytes()), &json!(1));
    let mut headers = post_headers(None);
    headers.push(("Origin", "http://localhost:1234"));
    post_raw(server.addr, &headers, body.as_bytes()).assert_error(403);
    // No Origin at all (not a browser) is fine.
    assert_json_answer(
        &post(server.addr, None, &initialize_message(json!(1), None)),
        &json!(1),
    );
}

#[test]
fn mcp_disabled_by_config_or_feature_is_501_everywhere() {
    for config in [
        json!({"mcp": {"enabled": false}}),
        json!({"features": {"mcp-transport": false}}),
    ] {
        let server = TestServer::with_config(config.clone());
        let r = post(server.addr, None, &initialize_message(json!(1), None));
        assert_eq!(r.assert_error(501), "MCP transport not enabled", "{config}");
        for method in ["GET", "DELETE", "PUT"] {
            let r = server.client().request(
                method,
                "/mcp",
                &[("Accept", "text/event-stream"), ("Mcp-Session-Id", "x")],
                b"",
            );
            assert_eq!(r.assert_error(501), "MCP transport not enabled", "{method}");
        }
        // The rest of the server is not affected.
        assert_eq!(server.get("/health").status, 200);
        server.publish(&json!({"topic": "t", "data": 1}));
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[test]
fn sigterm_ends_the_get_stream_and_a_running_countdown_and_exits_0() {
    let mut server = TestServer::start();
    let session = initialize(server.addr);
    let mut stream = get_stream(server.addr, &session);
    let mut call = post_stream(
        server.addr,
        &session,
        &countdown(json!(1), 10_000, 20, Some(json!(1))),
    );
    assert!(call.next_block().retry.is_some());
    // The countdown is under way: the server is in its loop, with both streams open.
    assert_eq!(
        next_message(&mut call).message["params"]["progress"],
        json!(1)
    );
    server.sigterm();
    stream.expect_end();
    // What was queued goes out, then the stream ends, without the result.
    while let Some(b) = call.try_next_block() {
        let m = stream_message(&b);
        assert_eq!(m.message["method"], "notifications/progress", "{m:?}");
    }
    drop(stream);
    drop(call);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

// ---------------------------------------------------------------------------------------------
// Cancellation

#[test]
fn notifications_cancelled_ends_the_named_call_of_its_own_session_only() {
    let server = TestServer::start();
    let session = initialize(server.addr);
    let other = initialize(server.addr);
    let mut call = post_stream(
        server.addr,
        &session,
        &countdown(json!(1), 400, 20, Some(json!("t"))),
    );
    assert!(call.next_block().retry.is_some());
    let progress = |m: &StreamMessage| -> u64 {
        assert_eq!(m.message["method"], "notifications/progress", "{m:?}");
        m.message["params"]["progress"].as_u64().expect("progress")
    };
    let mut last = progress(&next_message(&mut call));
    let cancel = |id: Value| {
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": id, "reason": "test"}})
    };
    // Another session cannot cancel it, nor can an id of another type.
    for (s, id) in [
        (&other, json!(1)),
        (&session, json!("1")),
        (&session, json!(2)),
    ] {
        let r = post(server.addr, Some(s), &cancel(id));
        assert_eq!(r.status, 202, "{r:?}");
        let next = progress(&next_message(&mut call));
        assert!(next > last, "{next} after {last}");
        last = next;
    }
    // Its own session can: the stream ends, without the result.
    let r = post(server.addr, Some(&session), &cancel(json!(1)));
    assert_eq!(r.status, 202, "{r:?}");
    while let Some(b) = call.try_next_block() {
        let next = progress(&stream_message(&b));
        assert!(next > last && next < 400, "{next} after {last}");
        last = next;
    }
    // The session carries on.
    assert_eq!(result_of_ping(server.addr, &session), json!({}));
}
