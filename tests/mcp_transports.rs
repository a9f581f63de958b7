//! MCP over the two other transports and Streamable HTTP resumption, spoken by hand over raw
//! sockets on 127.0.0.1:
//!
//! - legacy HTTP+SSE (2024-11-05): `GET /sse` opens a session whose first event, `endpoint`,
//!   names `/messages?sessionId=…`; what is posted there gets `202` and its answer arrives on
//!   the stream; `404` for an unknown session, `400` without one; the session ends with the
//!   stream;
//! - WebSocket at `/mcp` with the `mcp` subprotocol (tungstenite as the client): one JSON-RPC
//!   message per text frame, `400` for an upgrade without the subprotocol, progress in order,
//!   `-32700` for a frame that is not JSON;
//! - Streamable HTTP: a `countdown` whose connection drops goes on, and `Last-Event-ID` resumes
//!   it with exactly the events that were missed;
//! - both: `403` for a foreign `Origin`, `501` with MCP off, and (on a loop of the test's own,
//!   through the library) what turning `mcp-transport` off at runtime ends.
//!
//! (The embedder's tools are tested in `tests/embedding.rs`.) Every wait is a socket read
//! bounded by [`WAIT`] or a polled condition with the same bound.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use common::mcp::{
    countdown, done, notification, post_headers, post_stream, progress, read_messages_to_end, rpc,
    split_event_id, stream_message, try_open_stream, updated, wait_until, StreamMessage, TRICKY,
};
use common::ws::{assert_switched, mcp_handshake, upgrade_headers, upgrade_request};
use common::{request_bytes, Client, Response, Sse, TestServer, WAIT};
use mcp_stream::features::Feature;
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// JSON-RPC helpers

fn initialize_message(id: Value, version: &str) -> Value {
    rpc(
        id,
        "initialize",
        json!({
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "mcp-stream-transport-tests", "version": "0"},
        }),
    )
}

/// Initializes a Streamable HTTP session with `POST /mcp`; asserts `200` and returns its id.
fn initialize_http(addr: SocketAddr) -> String {
    let r = Client::connect(addr).request(
        "POST",
        "/mcp",
        &post_headers(None),
        initialize_message(json!(1), "2025-11-25")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.header("mcp-session-id").expect("session id").to_string()
}

/// The `result` of a JSON-RPC response to `id`; panics on an error or another id.
fn result_of(v: &Value, id: &Value) -> Value {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(&v["id"], id, "{v}");
    v.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("expected a result: {v}"))
}

/// The text of a successful `tools/call` result.
fn tool_text(result: &Value) -> String {
    assert_eq!(result["isError"], false, "{result}");
    let content = result["content"].as_array().expect("content array");
    assert_eq!(content.len(), 1, "{result}");
    assert_eq!(content[0]["type"], "text", "{result}");
    content[0]["text"].as_str().expect("text").to_string()
}

/// The JSON-RPC error code of a response to `id`.
fn error_code(v: &Value, id: &Value) -> i64 {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(&v["id"], id, "{v}");
    assert!(v.get("result").is_none(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

// ---------------------------------------------------------------------------------------------
// Legacy HTTP+SSE

/// An open legacy session: its stream, the endpoint it named and the session id in it.
struct Legacy {
    sse: Sse,
    endpoint: String,
    session: String,
    /// The event ids seen so far, in order.
    ids: Vec<String>,
}

impl Legacy {
    /// `GET /sse`: asserts the `200` stream and its first event, `endpoint`.
    fn open(addr: SocketAddr) -> Legacy {
        let mut client = Client::connect(addr);
        client.send(&request_bytes(
            "GET",
            "/sse",
            &[("Accept", "text/event-stream")],
            b"",
        ));
        let mut sse = try_open_stream(client).unwrap_or_else(|r| panic!("GET /sse: {r:?}"));
        // A `retry:` block may come first: it is no event. The first event is `endpoint`.
        let mut first = sse.next_block();
        if first.retry.is_some() && first.event.is_none() && first.data.is_none() {
            assert!(first.id.is_none(), "{:?}", first.raw);
            first = sse.next_block();
        }
        assert_eq!(
            first.event.as_deref(),
            Some("endpoint"),
            "the first event must be endpoint: {:?}",
            first.raw
        );
        let endpoint = first.data.clone().expect("endpoint data");
        let session = endpoint
            .strip_prefix("/messages?sessionId=")
            .unwrap_or_else(|| panic!("endpoint {endpoint:?}"))
            .to_string();
        assert!(
            session.len() == 32
                && session
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "session id {session:?} is not 32 lower-case hex digits"
        );
        Legacy {
            sse,
            endpoint,
            session,
            ids: Vec::new(),
        }
    }

    /// POSTs `message` to the endpoint on a new connection.
    fn post(&self, addr: SocketAddr, message: &Value) -> Response {
        post_messages(addr, &self.endpoint, message.to_string().as_bytes())
    }

    /// POSTs `message` and asserts `202`.
    fn send(&self, addr: SocketAddr, message: &Value) {
        let r = self.post(addr, message);
        assert_eq!(r.status, 202, "POST {}: {r:?}", self.endpoint);
    }

    /// The next message on the stream (heartbeats skipped); checks that event ids go on in
    /// order in one stream.
    fn next(&mut self) -> Value {
        let m = stream_message(&self.sse.next_event());
        let (stream, n) = split_event_id(&m.id);
        if let Some(last) = self.ids.last() {
            let (last_stream, last_n) = split_event_id(last);
            assert_eq!(
                (stream, n),
                (last_stream, last_n + 1),
                "event ids number the stream's events: {:?} then {}",
                self.ids,
                m.id
            );
        } else {
            assert_eq!(n, 1, "the first message is event 1: {}", m.id);
        }
        self.ids.push(m.id);
        m.message
    }

    /// Sends a request and returns its answer, which must be the next message on the stream.
    fn request(&mut self, addr: SocketAddr, id: Value, method: &str, params: Value) -> Value {
        self.send(addr, &rpc(id.clone(), method, params));
        let v = self.next();
        assert_eq!(v["id"], id, "the next message answers {method}: {v}");
        v
    }

    /// `initialize` (2024-11-05) and `notifications/initialized`.
    fn initialize(&mut self, addr: SocketAddr) {
        self.send(addr, &initialize_message(json!(0), "2024-11-05"));
        let r = result_of(&self.next(), &json!(0));
        assert_eq!(r["protocolVersion"], "2024-11-05", "{r}");
        self.send(addr, &notification("notifications/initialized"));
    }
}

/// `POST target` with a JSON body on a new connection.
fn post_messages(addr: SocketAddr, target: &str, body: &[u8]) -> Response {
    Client::connect(addr).request(
        "POST",
        target,
        &[("Content-Type", "application/json")],
        body,
    )
}

#[test]
fn legacy_sse_opens_with_the_endpoint_event_naming_messages_and_the_session() {
    let server = TestServer::start();
    let a = Legacy::open(server.addr);
    assert_eq!(a.sse.head.header("cache-control"), Some("no-cache"));
    let b = Legacy::open(server.addr);
    assert_ne!(a.session, b.session, "each stream is its own session");
}

#[test]
fn legacy_sse_posts_get_202_and_their_answers_arrive_on_the_stream() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);

    // initialize: 202 Accepted, the answer is the stream's first message.
    let r = s.post(addr, &initialize_message(json!(1), "2024-11-05"));
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.header("mcp-session-id").is_none(), "{r:?}");
    let init = result_of(&s.next(), &json!(1));
    assert_eq!(init["protocolVersion"], "2024-11-05", "{init}");
    assert_eq!(init["serverInfo"]["name"], "mcp-stream", "{init}");
    assert_eq!(
        init["capabilities"]["resources"]["subscribe"], true,
        "{init}"
    );
    assert!(init["capabilities"]["tools"].is_object(), "{init}");

    // A notification gets 202 and nothing on the stream: the ping's answer comes next.
    s.send(addr, &notification("notifications/initialized"));
    let pong = s.request(addr, json!("p"), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!("p")), json!({}));

    let tools = s.request(addr, json!(2), "tools/list", Value::Null);
    let tools = result_of(&tools, &json!(2));
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["echo", "countdown", "publish", "history", "topics"]);

    for (k, text) in [TRICKY, "", "\\", "\""].iter().enumerate() {
        let id = json!(10 + k);
        let v = s.request(
            addr,
            id.clone(),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        );
        assert_eq!(tool_text(&result_of(&v, &id)).as_bytes(), text.as_bytes());
    }

    let v = s.request(
        addr,
        json!(20),
        "tools/call",
        json!({"name": "no-such-tool", "arguments": {}}),
    );
    assert_eq!(error_code(&v, &json!(20)), -32602);
    let v = s.request(addr, json!(21), "no/such/method", Value::Null);
    assert_eq!(error_code(&v, &json!(21)), -32601);

    // A response from the client (to a request the server never made) is taken quietly.
    s.send(addr, &json!({"jsonrpc": "2.0", "id": 99, "result": {}}));
    let pong = s.request(addr, json!(22), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(22)), json!({}));
}

#[test]
fn legacy_sse_bodies_that_are_not_json_rpc_are_400_and_the_session_goes_on() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    for body in [
        &b"{not json"[..],
        b"[]",
        b"{\"jsonrpc\":\"1.0\",\"method\":\"ping\"}",
    ] {
        let r = post_messages(addr, &s.endpoint, body);
        r.assert_error(400);
    }
    let pong = s.request(addr, json!(1), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(1)), json!({}));
}

#[test]
fn legacy_sse_an_unknown_session_is_404_and_a_missing_one_is_400() {
    let server = TestServer::start();
    let addr = server.addr;
    let ping = rpc(json!(1), "ping", Value::Null).to_string();
    let unknown = format!("/messages?sessionId={}", "0".repeat(32));
    assert_eq!(
        post_messages(addr, &unknown, ping.as_bytes()).assert_error(404),
        "unknown session"
    );
    post_messages(addr, "/messages", ping.as_bytes()).assert_error(400);
    post_messages(addr, "/messages?session=abc", ping.as_bytes()).assert_error(400);
    // A Streamable HTTP session is not a legacy one: it has no stream to answer on.
    let http_session = initialize_http(addr);
    let target = format!("/messages?sessionId={http_session}");
    post_messages(addr, &target, ping.as_bytes()).assert_error(404);
    // A live legacy session next to them still works.
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    let pong = s.request(addr, json!(2), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(2)), json!({}));
}

#[test]
fn legacy_sse_the_session_ends_with_its_stream() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    let pong = s.request(addr, json!(1), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(1)), json!({}));
    let endpoint = s.endpoint.clone();
    let other = Legacy::open(addr);
    drop(s);
    // Once the server has seen the stream end, the endpoint is gone.
    let ping = rpc(json!(2), "ping", Value::Null).to_string();
    wait_until("the session ends with its stream", || {
        let r = post_messages(addr, &endpoint, ping.as_bytes());
        match r.status {
            202 => false,
            404 => true,
            _ => panic!("unexpected answer: {r:?}"),
        }
    });
    // The other session is untouched.
    let r = other.post(addr, &initialize_message(json!(1), "2024-11-05"));
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn legacy_sse_countdowns_stream_progress_in_order_and_run_side_by_side() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    let n = 5;
    // Three at once, each with its own token; the POSTs are answered 202 at once.
    for k in 0..3u64 {
        s.send(
            addr,
            &countdown(json!(format!("c{k}")), n, 20, Some(json!(k))),
        );
    }
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); 3];
    let mut finished = [false; 3];
    while finished.iter().any(|f| !f) {
        let m = s.next();
        if m["method"] == "notifications/progress" {
            let k = m["params"]["progressToken"].as_u64().expect("token") as usize;
            assert!(!finished[k], "progress after the answer: {m}");
            seen[k].push(m);
        } else {
            let id = m["id"].as_str().expect("an answer to a countdown");
            let k: usize = id[1..].parse().unwrap();
            assert_eq!(m, done(&json!(id)));
            finished[k] = true;
        }
    }
    for (k, got) in seen.iter().enumerate() {
        let want: Vec<Value> = (1..=n).map(|i| progress(&json!(k), i, n)).collect();
        assert_eq!(got, &want, "countdown {k}");
    }
    // Without a token: only the answer.
    let v = s.request(
        addr,
        json!(9),
        "tools/call",
        json!({"name": "countdown", "arguments": {"n": 2, "interval_ms": 5}}),
    );
    assert_eq!(v, done(&json!(9)));
}

#[test]
fn legacy_sse_a_subscription_hears_of_an_http_publish_on_its_stream() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    for (id, topic) in [(1, "news"), (2, "barrier")] {
        let v = s.request(
            addr,
            json!(id),
            "resources/subscribe",
            json!({"uri": format!("stream://topics/{topic}")}),
        );
        assert_eq!(result_of(&v, &json!(id)), json!({}));
    }
    server.publish(&json!({"topic": "news", "data": TRICKY}));
    assert_eq!(s.next(), updated("news"));
    // A topic it did not subscribe to is not heard of: the barrier comes next.
    server.publish(&json!({"topic": "sport", "data": 1}));
    server.publish(&json!({"topic": "barrier", "data": 1}));
    assert_eq!(s.next(), updated("barrier"));
    let v = s.request(
        addr,
        json!(3),
        "resources/unsubscribe",
        json!({"uri": "stream://topics/news"}),
    );
    assert_eq!(result_of(&v, &json!(3)), json!({}));
    server.publish(&json!({"topic": "news", "data": 2}));
    server.publish(&json!({"topic": "barrier", "data": 2}));
    assert_eq!(s.next(), updated("barrier"));
}

// ---------------------------------------------------------------------------------------------
// WebSocket at /mcp

/// A tungstenite client at `ws://addr/mcp` offering the `mcp` subprotocol.
struct McpWs {
    socket: WebSocket<TcpStream>,
}

impl McpWs {
    fn connect(addr: SocketAddr) -> McpWs {
        let (ws, response) = McpWs::connect_offering(addr, "mcp");
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(selected.as_deref(), Some("mcp"), "{response:?}");
        ws
    }

    /// Connects offering `protocols` (a `Sec-WebSocket-Protocol` value); the handshake must
    /// succeed. tungstenite itself fails one whose answer selects no offered subprotocol.
    fn connect_offering(
        addr: SocketAddr,
        protocols: &str,
    ) -> (McpWs, tungstenite::handshake::client::Response) {
        let (socket, response) = mcp_handshake(addr, protocols)
            .unwrap_or_else(|e| panic!("WebSocket handshake at /mcp: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        (McpWs { socket }, response)
    }

    fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    }

    fn send(&mut self, value: &Value) {
        self.send_text(&value.to_string());
    }

    /// The next message: one text frame holding one JSON-RPC message. Pings are answered by
    /// tungstenite and skipped.
    fn next(&mut self) -> Value {
        loop {
            match self.socket.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {t}"));
                    assert!(v.is_object(), "one JSON-RPC message per frame: {v}");
                    assert_eq!(v["jsonrpc"], "2.0", "{v}");
                    return v;
                }
                Ok(other) => panic!("expected a text message, got {other:?}"),
                Err(e) => panic!("reading a WebSocket message: {e}"),
            }
        }
    }

    fn request(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(&rpc(id.clone(), method, params));
        let v = self.next();
        assert_eq!(v["id"], id, "the next message answers {method}: {v}");
        v
    }

    fn initialize(&mut self) -> Value {
        self.send(&initialize_message(json!(0), "2025-11-25"));
        let r = result_of(&self.next(), &json!(0));
        self.send(&notification("notifications/initialized"));
        r
    }
}

/// Sends an upgrade to `/mcp` with `extra` headers and reads the (non-101) answer.
fn refused_upgrade(addr: SocketAddr, extra: &[(&str, &str)]) -> Response {
    let mut headers = upgrade_headers();
    headers.extend_from_slice(extra);
    let mut client = Client::connect(addr);
    client.send(&upgrade_request("/mcp", &headers));
    client.read_response()
}

#[test]
fn websocket_101_selects_the_mcp_subprotocol_and_sends_nothing_first() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    // No welcome or anything else before the client speaks: the first message is the answer.
    let r = ws.initialize();
    assert_eq!(r["protocolVersion"], "2025-11-25", "{r}");
    // Offered among others, `mcp` is the one selected.
    let (_ws, response) = McpWs::connect_offering(server.addr, "chat, mcp");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mcp")
    );
}

#[test]
fn websocket_an_upgrade_at_mcp_without_the_mcp_subprotocol_is_400() {
    let server = TestServer::start();
    for extra in [&[][..], &[("Sec-WebSocket-Protocol", "chat")][..]] {
        let r = refused_upgrade(server.addr, extra);
        let reason = r.assert_error(400);
        assert!(reason.contains("mcp"), "{reason:?}");
        assert!(r.header("upgrade").is_none(), "{r:?}");
    }
    // The same upgrade with the subprotocol is switched.
    let mut client = Client::connect(server.addr);
    let mut headers = upgrade_headers();
    headers.push(("Sec-WebSocket-Protocol", "mcp"));
    client.send(&upgrade_request("/mcp", &headers));
    let head = client.read_head();
    assert_switched(&head);
    assert_eq!(head.header("sec-websocket-protocol"), Some("mcp"));
}

#[test]
fn websocket_initialize_and_tools_call_go_one_message_per_frame() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    ws.send(&initialize_message(json!("init"), "2025-06-18"));
    let init = result_of(&ws.next(), &json!("init"));
    assert_eq!(init["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["serverInfo"]["name"], "mcp-stream", "{init}");
    assert_eq!(
        init["capabilities"]["resources"]["subscribe"], true,
        "{init}"
    );
    // The notification is not answered: the ping's answer is the next frame.
    ws.send(&notification("notifications/initialized"));
    let pong = ws.request(json!(1), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(1)), json!({}));

    let tools = ws.request(json!(2), "tools/list", Value::Null);
    let names: Vec<String> = result_of(&tools, &json!(2))["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["echo", "countdown", "publish", "history", "topics"]);

    for (k, text) in [TRICKY, "", "\\", "\""].iter().enumerate() {
        let id = json!(10 + k);
        let v = ws.request(
            id.clone(),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        );
        assert_eq!(tool_text(&result_of(&v, &id)).as_bytes(), text.as_bytes());
    }
    let v = ws.request(
        json!(20),
        "tools/call",
        json!({"name": "no-such-tool", "arguments": {}}),
    );
    assert_eq!(error_code(&v, &json!(20)), -32602);
    let v = ws.request(json!(21), "no/such/method", Value::Null);
    assert_eq!(error_code(&v, &json!(21)), -32601);
    // The publish tool reaches the hub.
    let v = ws.request(
        json!(22),
        "tools/call",
        json!({"name": "publish", "arguments": {"topic": "news", "data": TRICKY}}),
    );
    let id: Value = serde_json::from_str(&tool_text(&result_of(&v, &json!(22)))).unwrap();
    assert!(id["id"].is_string(), "{id}");
    let v = ws.request(
        json!(23),
        "tools/call",
        json!({"name": "topics", "arguments": {}}),
    );
    assert_eq!(tool_text(&result_of(&v, &json!(23))), r#"["news"]"#);
}

#[test]
fn websocket_countdowns_stream_progress_in_order_on_the_socket() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let n = 5;
    ws.send(&countdown(json!("one"), n, 20, Some(json!("t"))));
    for k in 1..=n {
        assert_eq!(ws.next(), progress(&json!("t"), k, n), "progress {k}");
    }
    assert_eq!(ws.next(), done(&json!("one")));

    // Three side by side, each in order, each answer after its own last progress.
    for k in 0..3u64 {
        ws.send(&countdown(json!(100 + k), n, 20, Some(json!(k))));
    }
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); 3];
    let mut finished = [false; 3];
    while finished.iter().any(|f| !f) {
        let m = ws.next();
        if m["method"] == "notifications/progress" {
            let k = m["params"]["progressToken"].as_u64().expect("token") as usize;
            assert!(!finished[k], "progress after the answer: {m}");
            seen[k].push(m);
        } else {
            let k = (m["id"].as_u64().expect("an answer to a countdown") - 100) as usize;
            assert_eq!(m, done(&json!(100 + k as u64)));
            finished[k] = true;
        }
    }
    for (k, got) in seen.iter().enumerate() {
        let want: Vec<Value> = (1..=n).map(|i| progress(&json!(k), i, n)).collect();
        assert_eq!(got, &want, "countdown {k}");
    }
}

#[test]
fn websocket_a_frame_that_is_not_json_gets_a_parse_error_and_the_session_goes_on() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    ws.send_text("{not json");
    let v = ws.next();
    assert_eq!(v["id"], Value::Null, "{v}");
    assert_eq!(v["error"]["code"], -32700, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    // JSON that is no JSON-RPC message: invalid request, with the id when it has one.
    ws.send_text(r#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#);
    let v = ws.next();
    assert_eq!(error_code(&v, &json!(5)), -32600);
    ws.send_text("[1, 2]");
    let v = ws.next();
    assert_eq!(error_code(&v, &Value::Null), -32600);
    let pong = ws.request(json!(1), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(1)), json!({}));
}

#[test]
fn websocket_a_binary_frame_gets_a_json_rpc_error_or_a_close() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    ws.socket
        .send(Message::binary(
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec(),
        ))
        .expect("send a binary frame");
    match ws.socket.read() {
        Ok(Message::Text(t)) => {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            assert_eq!(v["jsonrpc"], "2.0", "not a JSON-RPC message: {v}");
            assert_eq!(v["id"], Value::Null, "{v}");
            let code = v["error"]["code"].as_i64();
            assert!(matches!(code, Some(-32700) | Some(-32600)), "{v}");
        }
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1003),
        other => panic!("expected a JSON-RPC error or a close 1003, got {other:?}"),
    }
}

#[test]
fn websocket_a_subscription_hears_of_an_http_publish_on_the_socket() {
    let server = TestServer::start();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    for (id, topic) in [(1, "news"), (2, "barrier")] {
        let v = ws.request(
            json!(id),
            "resources/subscribe",
            json!({"uri": format!("stream://topics/{topic}")}),
        );
        assert_eq!(result_of(&v, &json!(id)), json!({}));
    }
    server.publish(&json!({"topic": "news", "data": TRICKY}));
    assert_eq!(ws.next(), updated("news"));
    server.publish(&json!({"topic": "sport", "data": 1}));
    server.publish(&json!({"topic": "barrier", "data": 1}));
    assert_eq!(ws.next(), updated("barrier"));
}

#[test]
fn websocket_the_session_ends_with_the_connection() {
    // With room for one connection and one session, a new session can only begin once the
    // WebSocket's session has ended.
    let server = TestServer::with_config(json!({"max_connections": 1}));
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    ws.socket.close(None).expect("send a close frame");
    // The server answers the close frame, then ends the connection.
    loop {
        match ws.socket.read() {
            Ok(Message::Close(frame)) => {
                if let Some(frame) = frame {
                    assert_eq!(u16::from(frame.code), 1000, "{frame:?}");
                }
            }
            Ok(other) => panic!("after close: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    let body = initialize_message(json!(1), "2025-11-25").to_string();
    wait_until("a session can begin again", || {
        let r = Client::connect(server.addr).request(
            "POST",
            "/mcp",
            &post_headers(None),
            body.as_bytes(),
        );
        match r.status {
            200 => true,
            503 => false,
            _ => panic!("unexpected answer: {r:?}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Streamable HTTP: resuming a countdown whose connection dropped

/// `GET /mcp` in `session` with `Last-Event-ID: last`.
fn try_resume(addr: SocketAddr, session: &str, last: &str) -> Result<Sse, Response> {
    let mut client = Client::connect(addr);
    client.send(&request_bytes(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", session),
            ("Last-Event-ID", last),
        ],
        b"",
    ));
    try_open_stream(client)
}

/// Resumes after `last`, waiting while the server has not yet seen the old connection go
/// (`409`) or, with `until_finished`, while the stream has not sent `last`'s successor yet
/// (`404`: a position past the end).
fn resume(addr: SocketAddr, session: &str, last: &str, until_finished: bool) -> Sse {
    let mut stream = None;
    wait_until("the stream can be resumed", || {
        match try_resume(addr, session, last) {
            Ok(sse) => {
                stream = Some(sse);
                true
            }
            Err(r) if r.status == 409 => false,
            Err(r) if r.status == 404 && until_finished => false,
            Err(r) => panic!("resume refused: {r:?}"),
        }
    });
    stream.expect("resumed")
}

/// Reads a resumed stream to its end: the `retry:` block, then events, then the end.
fn read_rest(sse: &mut Sse) -> Vec<StreamMessage> {
    let opening = sse.next_block();
    assert!(
        opening.retry.is_some() && opening.data.is_none() && opening.id.is_none(),
        "{:?}",
        opening.raw
    );
    read_messages_to_end(sse)
}

/// Starts a countdown (n=6, 50 ms apart) and drops its connection after its first event;
/// returns the session, the stream number and the first message.
fn countdown_dropped_after_first_event(addr: SocketAddr) -> (String, u64, StreamMessage) {
    let session = initialize_http(addr);
    let mut sse = post_stream(
        addr,
        &session,
        &countdown(json!("r"), 6, 50, Some(json!("t"))),
    );
    let opening = sse.next_block();
    assert!(
        opening.retry.is_some() && opening.data.is_none(),
        "{:?}",
        opening.raw
    );
    let first = stream_message(&sse.next_block());
    assert_eq!(first.message, progress(&json!("t"), 1, 6));
    let (stream, n) = split_event_id(&first.id);
    assert_eq!(n, 1, "{first:?}");
    drop(sse);
    (session, stream, first)
}

/// Asserts that `rest` is exactly events 2..=7 of stream `stream`: progress 2..6, the answer.
fn assert_rest_of_countdown(rest: &[StreamMessage], stream: u64) {
    let ids: Vec<(u64, u64)> = rest.iter().map(|m| split_event_id(&m.id)).collect();
    let want_ids: Vec<(u64, u64)> = (2..=7).map(|k| (stream, k)).collect();
    assert_eq!(ids, want_ids, "{rest:#?}");
    for (m, k) in rest[..5].iter().zip(2..) {
        assert_eq!(m.message, progress(&json!("t"), k, 6));
    }
    assert_eq!(rest[5].message, done(&json!("r")));
}

#[test]
fn a_dropped_countdown_goes_on_and_last_event_id_gives_exactly_the_rest_then_ends() {
    let server = TestServer::start();
    let (session, stream, first) = countdown_dropped_after_first_event(server.addr);
    let mut resumed = resume(server.addr, &session, &first.id, false);
    assert_eq!(
        resumed.head.header("mcp-session-id"),
        Some(session.as_str())
    );
    let rest = read_rest(&mut resumed);
    assert_rest_of_countdown(&rest, stream);
}

#[test]
fn a_dropped_countdown_runs_to_its_end_with_no_connection_and_is_replayed_whole() {
    let server = TestServer::start();
    let (session, stream, first) = countdown_dropped_after_first_event(server.addr);
    // Its last event, the answer, is `<stream>-7`: resuming after it is refused (404, past the
    // end) until the countdown has sent it, with nobody connected; then it is an empty stream
    // that ends at once.
    let mut after_last = resume(server.addr, &session, &format!("{stream}-7"), true);
    assert!(read_rest(&mut after_last).is_empty());
    // Everything it sent while detached is kept: exactly the events after the first.
    let mut resumed = resume(server.addr, &session, &first.id, false);
    let rest = read_rest(&mut resumed);
    assert_rest_of_countdown(&rest, stream);
    // The session is still usable.
    let r = Client::connect(server.addr).request(
        "POST",
        "/mcp",
        &post_headers(Some(&session)),
        rpc(json!(5), "ping", Value::Null).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"jsonrpc": "2.0", "id": 5, "result": {}}));
}

// ---------------------------------------------------------------------------------------------
// Origin, the feature switch

#[test]
fn legacy_sse_and_the_mcp_websocket_refuse_a_foreign_origin_with_403() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut live = Legacy::open(addr);
    live.initialize(addr);
    for origin in [
        "http://evil.example",
        "http://localhost.evil.example",
        "null",
    ] {
        let mut client = Client::connect(addr);
        let r = client.request(
            "GET",
            "/sse",
            &[("Accept", "text/event-stream"), ("Origin", origin)],
            b"",
        );
        r.assert_error(403);
        let r = Client::connect(addr).request(
            "POST",
            &live.endpoint,
            &[("Content-Type", "application/json"), ("Origin", origin)],
            rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
        );
        r.assert_error(403);
        let r = refused_upgrade(
            addr,
            &[("Sec-WebSocket-Protocol", "mcp"), ("Origin", origin)],
        );
        r.assert_error(403);
    }
    // Nothing was taken as a message of the live session: its next message answers this ping.
    let pong = live.request(addr, json!(2), "ping", Value::Null);
    assert_eq!(result_of(&pong, &json!(2)), json!({}));
    // A loopback origin (a page served by a local dev server) is fine everywhere.
    let origin = "http://localhost:5173";
    let mut client = Client::connect(addr);
    client.send(&request_bytes(
        "GET",
        "/sse",
        &[("Accept", "text/event-stream"), ("Origin", origin)],
        b"",
    ));
    try_open_stream(client).unwrap_or_else(|r| panic!("GET /sse from {origin}: {r:?}"));
    let r = Client::connect(addr).request(
        "POST",
        &live.endpoint,
        &[("Content-Type", "application/json"), ("Origin", origin)],
        rpc(json!(3), "ping", Value::Null).to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(result_of(&live.next(), &json!(3)), json!({}));
    let mut client = Client::connect(addr);
    let mut headers = upgrade_headers();
    headers.extend_from_slice(&[("Sec-WebSocket-Protocol", "mcp"), ("Origin", origin)]);
    client.send(&upgrade_request("/mcp", &headers));
    assert_switched(&client.read_head());
}

#[test]
fn legacy_sse_and_the_mcp_websocket_are_501_when_mcp_is_off() {
    for config in [
        json!({"mcp": {"enabled": false}}),
        json!({"features": {"mcp-transport": false}}),
    ] {
        let server = TestServer::with_config(config.clone());
        let addr = server.addr;
        let r =
            Client::connect(addr).request("GET", "/sse", &[("Accept", "text/event-stream")], b"");
        assert_eq!(r.assert_error(501), "MCP transport not enabled", "{config}");
        let target = format!("/messages?sessionId={}", "0".repeat(32));
        let r = post_messages(
            addr,
            &target,
            rpc(json!(1), "ping", Value::Null).to_string().as_bytes(),
        );
        assert_eq!(r.assert_error(501), "MCP transport not enabled", "{config}");
        let r = refused_upgrade(addr, &[("Sec-WebSocket-Protocol", "mcp")]);
        assert_eq!(r.assert_error(501), "MCP transport not enabled", "{config}");
        // The plain WebSocket endpoint is not affected.
        common::ws::Ws::connect(addr);
    }
}

/// The library's server on a loop of this test's own, on a thread, so that the test can switch
/// a feature at runtime (the loop's waker, token 0, tells it of a command); stopped and joined
/// on drop.
struct Embedded {
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    waker: Arc<mio::Waker>,
    done: mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

enum Command {
    Switch(Feature, bool),
    Stop,
}

impl Embedded {
    fn start() -> Embedded {
        const WAKER: mio::Token = mio::Token(0);
        let config = mcp_stream::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..mcp_stream::config::Config::default()
        };
        let mut server = mcp_stream::Server::bind(config).expect("bind");
        let addr = server.local_addr();
        let mut poll = mio::Poll::new().expect("poll");
        server
            .register(
                poll.registry(),
                mcp_stream::TokenRange {
                    start: 1,
                    len: usize::MAX - 1,
                },
            )
            .expect("register");
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).expect("waker"));
        let (commands, inbox) = mpsc::channel();
        let (ack, done) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut events = mio::Events::with_capacity(256);
            loop {
                let timeout = server.poll_timeout(Instant::now());
                poll.poll(&mut events, timeout).expect("poll");
                let now = Instant::now();
                for event in &events {
                    if event.token() != WAKER {
                        server.handle_event(event, now);
                    }
                }
                while let Ok(command) = inbox.try_recv() {
                    match command {
                        Command::Switch(feature, on) => {
                            server.set_feature(now, feature, on);
                            let _ = ack.send(());
                        }
                        Command::Stop => return,
                    }
                }
                server.on_timeout(Instant::now());
            }
        });
        Embedded {
            addr,
            commands,
            waker,
            done,
            thread: Some(thread),
        }
    }

    /// Switches `feature` and waits until the loop has done it.
    fn set_feature(&self, feature: Feature, on: bool) {
        self.commands
            .send(Command::Switch(feature, on))
            .expect("the loop runs");
        self.waker.wake().expect("wake the loop");
        self.done
            .recv_timeout(WAIT)
            .expect("the loop switched the feature");
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn turning_mcp_off_at_runtime_ends_legacy_streams() {
    let server = Embedded::start();
    let addr = server.addr;
    let mut s = Legacy::open(addr);
    s.initialize(addr);
    server.set_feature(Feature::McpTransport, false);
    s.sse.expect_end();
    let r = s.post(addr, &rpc(json!(1), "ping", Value::Null));
    assert_eq!(r.assert_error(501), "MCP transport not enabled");
}

#[test]
fn turning_mcp_off_at_runtime_ends_mcp_websockets() {
    let server = Embedded::start();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    server.set_feature(Feature::McpTransport, false);
    // A ping sent now must not be answered: the server closes the socket instead.
    let _ = ws.socket.send(Message::text(
        rpc(json!(1), "ping", Value::Null).to_string(),
    ));
    loop {
        match ws.socket.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Close(_)) => {}
            Ok(other) => panic!("still served after mcp-transport was turned off: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed)
            | Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break
            }
            Err(e) => panic!("waiting for the socket to end: {e}"),
        }
    }
}
