//! What the MCP gateway costs: the server's resident memory per gateway session (the children's
//! own memory is theirs, not the server's), and the latency a `tools/call` gains through the
//! gateway over calling the same stdio server directly.
//!
//! ```text
//! cargo bench --bench gateway                  # 500 sessions, 2,000 calls per path
//! cargo bench --bench gateway -- 1000 5000     # sessions, calls
//! ```
//!
//! The latency runs call the `echo` tool of `interop/gateway/py_server.py`, a server on the
//! official Python SDK, from `interop/.pydeps` (which `bash interop/run.sh` installs): directly
//! over its stdio, then through the gateway over WebSocket (one socket) and over Streamable HTTP
//! (a connection per call: an answer stream is close-delimited). Calls are sequential, so each
//! figure is one round trip. The memory run's children are a few lines of shell that answer
//! `initialize`; its sessions are idle, as a client leaves them between calls. Raise `ulimit -n`
//! above four times the session count.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{rss_kib, show, start_server};

/// A child that answers `initialize` (id 1) and nothing else.
const SHELL_CHILD: &str = r#"while read -r line; do case "$line" in *'"initialize"'*) echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"sh","version":"0"}}}';; esac; done"#;

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python SDK server, as the gateway's child or run directly.
fn python_server() -> (String, Vec<String>, String) {
    let script = root().join("interop/gateway/py_server.py");
    let pydeps = root().join("interop/.pydeps");
    assert!(
        pydeps.join("mcp").is_dir(),
        "interop/.pydeps has no mcp package: run `bash interop/run.sh` once"
    );
    (
        "python3".to_string(),
        vec![script.display().to_string()],
        pydeps.display().to_string(),
    )
}

fn call(id: usize) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"text": "x".repeat(100)}}})
    .to_string()
}

/// Whether `text` is the answer to request `id`.
fn answers(text: &str, id: usize) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v["id"] == id && v.get("result").is_some())
}

/// An HTTP POST to the MCP endpoint on a new connection; the whole response.
fn post(addr: SocketAddr, session: Option<&str>, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let session = session.map_or(String::new(), |id| {
        format!("Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: 2025-06-18\r\n")
    });
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: bench\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nConnection: close\r\n{session}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn memory(sessions: usize) {
    let server = start_server(json!({
        "max_connections": sessions + 64,
        "mcp": { "stdio": SHELL_CHILD, "max_sessions": sessions + 1, "session_idle_secs": 3600 }
    }));
    let before = rss_kib(server.child.id());
    for _ in 0..sessions {
        let response = post(server.addr, None, INITIALIZE);
        assert!(
            response.contains(r#""serverInfo":{"name":"sh""#),
            "{response}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(server.child.id());
    println!(
        "{sessions} idle gateway sessions: server RSS {before} KiB -> {after} KiB, {:.0} bytes per session",
        (after.saturating_sub(before) * 1024) as f64 / sessions as f64
    );
}

fn direct(calls: usize) -> Vec<Duration> {
    let (program, args, pydeps) = python_server();
    let mut child = Command::new(program)
        .args(args)
        .env("PYTHONPATH", pydeps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Sends a line; waits for the answer to `id`, if one is due. It owns the child's stdin:
    // dropping it closes that, and the child exits.
    let mut round_trip = move |line: &str, id: Option<usize>| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let Some(id) = id else { return };
        let mut answer = String::new();
        while !answers(&answer, id) {
            answer.clear();
            assert!(stdout.read_line(&mut answer).unwrap() > 0, "child exited");
        }
    };
    round_trip(INITIALIZE, Some(1));
    round_trip(INITIALIZED, None);
    let mut samples = Vec::with_capacity(calls);
    for id in 2..calls + 12 {
        let sent = Instant::now();
        round_trip(&call(id), Some(id));
        if id >= 12 {
            samples.push(sent.elapsed());
        }
    }
    drop(round_trip);
    let _ = child.wait();
    samples
}

fn gateway_config() -> Value {
    let (program, args, pydeps) = python_server();
    json!({"mcp": {"stdio": {"command": program, "args": args, "env": {"PYTHONPATH": pydeps}}}})
}

fn through_websocket(calls: usize) -> Vec<Duration> {
    use tungstenite::{ClientRequestBuilder, Message};
    let server = start_server(gateway_config());
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let uri = format!("ws://{}/mcp", server.addr).parse().unwrap();
    let request = ClientRequestBuilder::new(uri).with_sub_protocol("mcp");
    let (mut ws, _) = tungstenite::client(request, stream).unwrap();
    // Sends a frame; waits for the answer to `id`, if one is due.
    let mut round_trip = |text: String, id: Option<usize>| {
        ws.send(Message::text(text)).unwrap();
        let Some(id) = id else { return };
        loop {
            if let Message::Text(answer) = ws.read().unwrap() {
                if answers(&answer, id) {
                    return;
                }
            }
        }
    };
    round_trip(INITIALIZE.to_string(), Some(1));
    round_trip(INITIALIZED.to_string(), None);
    let mut samples = Vec::with_capacity(calls);
    for id in 2..calls + 12 {
        let sent = Instant::now();
        round_trip(call(id), Some(id));
        if id >= 12 {
            samples.push(sent.elapsed());
        }
    }
    samples
}

fn through_streamable_http(calls: usize) -> Vec<Duration> {
    let server = start_server(gateway_config());
    let response = post(server.addr, None, INITIALIZE);
    let session = response
        .lines()
        .find_map(|l| l.strip_prefix("Mcp-Session-Id: "))
        .expect("a session id")
        .to_string();
    post(server.addr, Some(&session), INITIALIZED);
    let mut samples = Vec::with_capacity(calls);
    for id in 2..calls + 12 {
        let sent = Instant::now();
        let response = post(server.addr, Some(&session), &call(id));
        let data = response
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or("");
        assert!(answers(data, id), "{response}");
        if id >= 12 {
            samples.push(sent.elapsed());
        }
    }
    samples
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sessions = args.first().copied().unwrap_or(500);
    let calls = args.get(1).copied().unwrap_or(2000);
    memory(sessions);
    println!("tools/call echo (100 bytes) to the Python SDK server, {calls} sequential calls:");
    show("directly over stdio", direct(calls));
    show("gateway, WebSocket", through_websocket(calls));
    show("gateway, Streamable HTTP", through_streamable_http(calls));
}
