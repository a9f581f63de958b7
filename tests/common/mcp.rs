//! MCP helpers shared by `mcp.rs` (Streamable HTTP) and `mcp_transports.rs` (legacy HTTP+SSE,
//! WebSocket, resumption): JSON-RPC messages, opening and reading MCP SSE streams, event ids.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{request_bytes, Block, Client, Response, Sse, WAIT};

/// The `Accept` of a POST that takes either a JSON or an SSE answer.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// Quotes, backslashes, every JSON escape, control characters, U+2028/U+2029 and non-ASCII of
/// every UTF-8 length.
pub const TRICKY: &str =
    "she said \"hi\" \\ back\\\\slash \\\" \u{0} \u{1} \u{1f} tab\t nl\n cr\r \
                      / \u{7f} \u{2028}\u{2029} héllo — 日本語 🎉 \u{10ffff}";

/// A JSON-RPC request; `params` is left out when null.
pub fn rpc(id: Value, method: &str, params: Value) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if !params.is_null() {
        m["params"] = params;
    }
    m
}

/// A JSON-RPC notification without params.
pub fn notification(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": method})
}

/// A `tools/call` of `countdown`, with a progress token if `token` is given.
pub fn countdown(id: Value, n: u64, interval_ms: u64, token: Option<Value>) -> Value {
    let mut params =
        json!({"name": "countdown", "arguments": {"n": n, "interval_ms": interval_ms}});
    if let Some(t) = token {
        params["_meta"] = json!({"progressToken": t});
    }
    rpc(id, "tools/call", params)
}

/// Progress notification `k` of `n` for `token`.
pub fn progress(token: &Value, k: u64, n: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/progress",
           "params": {"progressToken": token, "progress": k, "total": n}})
}

/// The answer of a finished countdown to request `id`.
pub fn done(id: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "result": {"content": [{"type": "text", "text": "done"}], "isError": false}})
}

/// `notifications/resources/updated` for `topic`.
pub fn updated(topic: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
           "params": {"uri": format!("stream://topics/{topic}")}})
}

/// The usual headers of a POST: both media types accepted, a JSON body, the session if any.
pub fn post_headers(session: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("Accept", ACCEPT_BOTH),
        ("Content-Type", "application/json"),
    ];
    if let Some(s) = session {
        h.push(("Mcp-Session-Id", s));
    }
    h
}

/// Sends `bytes` on `client`; expects `200 text/event-stream` and returns the stream.
pub fn open_stream(mut client: Client, bytes: &[u8]) -> Sse {
    client.send(bytes);
    try_open_stream(client).unwrap_or_else(|r| panic!("expected an SSE stream: {r:?}"))
}

/// Reads a response head: `Ok` with the stream for a `200`, `Err` with the whole response
/// otherwise.
pub fn try_open_stream(client: Client) -> Result<Sse, Response> {
    let sse = Sse::read_open(client)?;
    let head = &sse.head;
    assert_eq!(
        head.header("content-type"),
        Some("text/event-stream"),
        "{head:?}"
    );
    assert!(head.header("content-length").is_none(), "{head:?}");
    Ok(sse)
}

/// POSTs `message` in `session` and expects it answered as an SSE stream.
pub fn post_stream(addr: SocketAddr, session: &str, message: &Value) -> Sse {
    let bytes = request_bytes(
        "POST",
        "/mcp",
        &post_headers(Some(session)),
        message.to_string().as_bytes(),
    );
    open_stream(Client::connect(addr), &bytes)
}

/// One JSON-RPC message of an MCP SSE stream: its event id and the message.
#[derive(Debug)]
pub struct StreamMessage {
    pub id: String,
    pub message: Value,
}

/// An MCP event: unnamed (a `message` event), with an id and one JSON-RPC message as data.
pub fn stream_message(b: &Block) -> StreamMessage {
    assert!(
        b.event.is_none(),
        "MCP events are unnamed (message): {:?}",
        b.raw
    );
    assert_eq!(b.event_name(), "message");
    StreamMessage {
        id: b
            .id
            .clone()
            .unwrap_or_else(|| panic!("event without id: {:?}", b.raw)),
        message: b.json(),
    }
}

/// Splits an MCP event id `<stream>-<n>`.
pub fn split_event_id(id: &str) -> (u64, u64) {
    let (s, n) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("event id {id:?} has no '-'"));
    (
        s.parse().unwrap_or_else(|_| panic!("event id {id:?}")),
        n.parse().unwrap_or_else(|_| panic!("event id {id:?}")),
    )
}

/// Polls `condition` until it holds; fails after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        thread::sleep(Duration::from_millis(20)); // polling a condition, with a bound
    }
}

/// Reads the events of an MCP stream, after its opening, to the end of the stream.
pub fn read_messages_to_end(sse: &mut Sse) -> Vec<StreamMessage> {
    let mut out = Vec::new();
    while let Some(b) = sse.try_next_block() {
        out.push(stream_message(&b));
    }
    out
}
