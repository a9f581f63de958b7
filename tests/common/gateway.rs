//! Helpers of the stdio gateway's tests (`tests/gateway.rs`): the server run with `mcp.stdio`
//! and its log captured, the fixture MCP server (`tests/fixtures/gateway_child.py`), the
//! processes under the server as `/proc` shows them, and one client per MCP transport.
//!
//! Every wait is a socket read bounded by [`WAIT`] or a condition polled with a deadline.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::mcp::{post_headers, stream_message, try_open_stream, wait_until};
use super::ws::mcp_handshake;
use super::{request_bytes, Client, Response, Sse, TempFile, BIN, CONFIG_ENV, WAIT};

// ---------------------------------------------------------------------------------------------
// The fixture

/// The fixture MCP server, an absolute path.
pub fn fixture() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gateway_child.py"
    )
    .to_string()
}

/// The Python 3 interpreter itself (not a wrapper such as a pyenv shim), so that the fixture
/// is the server's own child.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .expect("python3 is needed by the gateway tests");
        assert!(out.status.success(), "python3: {out:?}");
        let path = String::from_utf8(out.stdout).expect("utf-8 path");
        let path = path.trim().to_string();
        assert!(!path.is_empty(), "python3 names no executable");
        path
    })
}

/// `mcp.stdio` in the object form: the fixture in `mode`, run by Python directly, with
/// `extra` keys (`grace_ms`, `request_timeout_secs`, `env`, `cwd`) merged in.
pub fn stdio(mode: &str, extra: Value) -> Value {
    let mut v = json!({"command": python(), "args": [fixture(), mode]});
    if let Value::Object(extra) = extra {
        for (k, x) in extra {
            v[k] = x;
        }
    }
    v
}

/// A directory the fixture records what happens to it in (`GATEWAY_RECORD_DIR`): one file
/// per process, named by its pid. Removed on drop.
pub struct Records {
    pub dir: PathBuf,
}

impl Records {
    pub fn new() -> Records {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mcp-stream-gateway-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the record directory");
        Records { dir }
    }

    pub fn path(&self) -> String {
        self.dir.to_str().expect("utf-8 temp path").to_string()
    }

    /// The `env` of an `mcp.stdio` object that makes the fixture record here.
    pub fn env(&self) -> Value {
        json!({"GATEWAY_RECORD_DIR": self.path()})
    }

    /// What process `pid` recorded, line by line.
    pub fn of(&self, pid: u32) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(pid.to_string()))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The pids that recorded anything.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_dir(&self.dir)
            .expect("read the record directory")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }
}

impl Default for Records {
    fn default() -> Self {
        Records::new()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, as /proc shows them

/// One process: its pid, state letter (`R`, `S`, `Z`, ...) and parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

/// `/proc/<pid>/stat`, or `None` when there is no such process (it is gone and reaped).
pub fn proc_info(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        state,
        ppid,
        pgrp,
    })
}

/// Every process whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<Proc> {
    let mut out: Vec<Proc> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_info)
        .filter(|p| p.ppid == ppid)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Waits until process `pid` is gone: exited and reaped (a zombie is still there).
pub fn wait_gone(pid: u32) {
    wait_until(&format!("process {pid} is gone"), || {
        proc_info(pid).is_none()
    });
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) {
    let p = Pid::from_raw(pid as i32).expect("a pid is positive");
    kill_process(p, signal).unwrap_or_else(|e| panic!("kill {pid}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// The server

/// `mcp-stream serve --listen 127.0.0.1:0 --log-level info` with a config file and extra
/// arguments; its log (stderr) is kept. On drop it gets SIGTERM and a few seconds to end its
/// children, then SIGKILL; the processes it left are killed too.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _config: Option<TempFile>,
}

impl Gateway {
    /// With `config` as its `--config` file.
    pub fn start(config: Value) -> Gateway {
        Gateway::start_with(Some(config), &[])
    }

    /// With an optional config file and more arguments.
    pub fn start_with(config: Option<Value>, args: &[&str]) -> Gateway {
        let config = config.map(|c| TempFile::config(&c));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"]);
        if let Some(file) = &config {
            cmd.args(["--config", &file.arg()]);
        }
        cmd.args(args);
        for var in CONFIG_ENV {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mcp-stream");
        // The server logs synchronously: its pipes are read all along, on threads.
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let r = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(Ok(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server printed no address ({other:?}); log: {}",
                    log.lock().unwrap()
                );
            }
        };
        let addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {line:?}");
        };
        Gateway {
            child,
            addr,
            log,
            _config: config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        signal(self.pid(), Signal::TERM);
    }

    /// Waits for the server to exit, at most `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        super::wait_exit(&mut self.child, bound)
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a line of the log holds every one of `parts`; returns that line.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        let mut found = None;
        let deadline = Instant::now() + WAIT;
        while found.is_none() {
            found = self
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string);
            if found.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no log line with {parts:?} within {WAIT:?}; log:\n{}",
                    self.log()
                );
                thread::sleep(Duration::from_millis(10)); // polling a condition, with a bound
            }
        }
        found.unwrap()
    }

    /// The server's child processes now.
    pub fn children(&self) -> Vec<Proc> {
        children_of(self.pid())
    }

    /// Waits until the server has no child process left: every child exited and was reaped.
    pub fn wait_no_children(&self) {
        wait_until("the server has no child process left", || {
            self.children().is_empty()
        });
    }

    /// Asserts that no child of the server is a zombie, polled: an exit is reaped within the
    /// server's reap poll, so a zombie that stays is one the server forgot.
    pub fn wait_no_zombies(&self) {
        wait_until("no zombie child of the server", || {
            self.children().iter().all(|p| p.state != 'Z')
        });
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let left = self.children();
        if let Ok(None) = self.child.try_wait() {
            let _ = kill_process(
                Pid::from_raw(self.pid() as i32).expect("positive"),
                Signal::TERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10)); // polling a condition, with a bound
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A test that failed may leave children behind: they were ours.
        for p in left {
            if let Some(pid) = Pid::from_raw(p.pid as i32) {
                if proc_info(p.pid).is_some_and(|now| now.pgrp == p.pgrp) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC

/// An `initialize` request.
pub fn initialize_message(id: Value, version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": version,
        "capabilities": {"roots": {"listChanged": false}, "sampling": {}},
        "clientInfo": {"name": "mcp-stream-gateway-tests", "version": "0"},
    }})
}

/// A `tools/call` of the fixture's tool `name`, with a progress token if `token` is given.
pub fn call(id: Value, name: &str, arguments: Value, token: Option<Value>) -> Value {
    let mut params = json!({"name": name, "arguments": arguments});
    if let Some(t) = token {
        params["_meta"] = json!({"progressToken": t});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// The fixture's answer to a tools/call: one text.
pub fn text_result(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "result": {"content": [{"type": "text", "text": text}], "isError": false}})
}

/// The fixture's progress notification.
pub fn progress(token: &Value, k: u64, total: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/progress",
           "params": {"progressToken": token, "progress": k, "total": total}})
}

/// A JSON-RPC error response to `id`.
pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The text of a tools/call answer.
pub fn text_of(v: &Value) -> String {
    assert!(v.get("error").is_none(), "expected a result: {v}");
    let content = v["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {v}"));
    assert_eq!(content.len(), 1, "{v}");
    content[0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {v}"))
        .to_string()
}

/// The `pid` tool's answer: pid, ppid, pgid and cwd of the fixture.
pub fn pid_of(v: &Value) -> Value {
    serde_json::from_str(&text_of(v)).unwrap_or_else(|e| panic!("pid answer ({e}): {v}"))
}

// ---------------------------------------------------------------------------------------------
// Streamable HTTP

/// A Streamable HTTP session behind the gateway.
pub struct Http {
    pub addr: SocketAddr,
    pub session: String,
    /// The answer to `initialize`, as the child gave it.
    pub init: Value,
}

impl Http {
    /// `initialize` (answered on an SSE stream that ends with the answer), then
    /// `notifications/initialized`.
    pub fn initialize(addr: SocketAddr) -> Http {
        let (session, messages) =
            Http::try_initialize(addr).unwrap_or_else(|r| panic!("initialize was refused: {r:?}"));
        assert_eq!(messages.len(), 1, "initialize: {messages:?}");
        let init = messages.into_iter().next().unwrap();
        assert_eq!(init["id"], json!(0), "{init}");
        assert!(init.get("result").is_some(), "initialize failed: {init}");
        let http = Http {
            addr,
            session,
            init,
        };
        let r = http.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert_eq!(r.status, 202, "{r:?}");
        http
    }

    /// POSTs `initialize` (id 0): the session id and the messages of the stream, or the
    /// response when it is not a stream.
    pub fn try_initialize(addr: SocketAddr) -> Result<(String, Vec<Value>), Response> {
        let body = initialize_message(json!(0), "2025-11-25").to_string();
        let mut client = Client::connect(addr);
        client.send(&request_bytes(
            "POST",
            "/mcp",
            &post_headers(None),
            body.as_bytes(),
        ));
        let mut sse = try_open_stream(client)?;
        let session = sse
            .head
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("no Mcp-Session-Id: {:?}", sse.head))
            .to_string();
        Ok((session, read_to_end(&mut sse)))
    }

    /// POSTs `message` in the session; the whole response (`202`, `404`, ...).
    pub fn post(&self, message: &Value) -> Response {
        self.post_with(message, &[])
    }

    /// POSTs `message` with more headers; the response head only when it is a stream.
    pub fn post_with(&self, message: &Value, extra: &[(&str, &str)]) -> Response {
        let mut headers = post_headers(Some(&self.session));
        headers.extend_from_slice(extra);
        let mut client = Client::connect(self.addr);
        client.send(&request_bytes(
            "POST",
            "/mcp",
            &headers,
            message.to_string().as_bytes(),
        ));
        match Sse::read_open(client) {
            Ok(sse) => sse.head,
            Err(r) => r,
        }
    }

    /// POSTs a request and returns its SSE stream, open.
    pub fn open(&self, message: &Value) -> Sse {
        let mut client = Client::connect(self.addr);
        client.send(&request_bytes(
            "POST",
            "/mcp",
            &post_headers(Some(&self.session)),
            message.to_string().as_bytes(),
        ));
        let sse = try_open_stream(client)
            .unwrap_or_else(|r| panic!("POST {message}: expected a stream, got {r:?}"));
        assert_eq!(
            sse.head.header("mcp-session-id"),
            Some(self.session.as_str()),
            "{:?}",
            sse.head
        );
        sse
    }

    /// POSTs a request; every message of its stream, to the stream's end.
    pub fn request(&self, message: &Value) -> Vec<Value> {
        read_to_end(&mut self.open(message))
    }

    /// POSTs a request whose stream carries only its answer; returns the answer.
    pub fn answer(&self, message: &Value) -> Value {
        let messages = self.request(message);
        assert_eq!(messages.len(), 1, "{message} was answered by {messages:?}");
        let v = messages.into_iter().next().unwrap();
        assert_eq!(v["id"], message["id"], "{v}");
        v
    }

    /// `GET`: the session's server-to-client stream, open.
    pub fn listen(&self) -> Sse {
        let mut client = Client::connect(self.addr);
        client.send(&request_bytes(
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", &self.session),
            ],
            b"",
        ));
        let mut sse = try_open_stream(client).unwrap_or_else(|r| panic!("GET /mcp: {r:?}"));
        let first = sse.next_block();
        assert!(first.retry.is_some() && first.data.is_none(), "{first:?}");
        sse
    }

    /// `DELETE`.
    pub fn delete(&self) -> Response {
        Client::connect(self.addr).request(
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", &self.session)],
            b"",
        )
    }

    /// The child's pid, asked of it.
    pub fn child_pid(&self, id: Value) -> u32 {
        let v = pid_of(&self.answer(&call(id, "pid", json!({}), None)));
        v["pid"].as_u64().expect("pid") as u32
    }
}

/// The next JSON-RPC message of an MCP SSE stream (its `retry:` block and heartbeats skipped),
/// or `None` at its end.
pub fn next_message(sse: &mut Sse) -> Option<Value> {
    loop {
        let b = sse.try_next_block()?;
        if b.is_comment() || (b.retry.is_some() && b.data.is_none()) {
            continue;
        }
        return Some(stream_message(&b).message);
    }
}

/// The next message; panics at the end of the stream.
pub fn expect_message(sse: &mut Sse) -> Value {
    next_message(sse).expect("the stream ended while a message was expected")
}

/// Every message of an MCP SSE stream, to its end.
pub fn read_to_end(sse: &mut Sse) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next_message(sse) {
        out.push(m);
    }
    out
}

/// Asserts that the stream ends with no message before.
pub fn expect_end(sse: &mut Sse) {
    let rest = read_to_end(sse);
    assert!(
        rest.is_empty(),
        "expected the end of the stream, got {rest:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Legacy HTTP+SSE

/// A legacy session: `GET /sse` and its endpoint.
pub struct Legacy {
    pub addr: SocketAddr,
    pub sse: Sse,
    pub endpoint: String,
}

impl Legacy {
    /// Opens `GET /sse`: `Err` with the response when it is not a stream.
    pub fn try_open(addr: SocketAddr) -> Result<Legacy, Response> {
        let mut client = Client::connect(addr);
        client.send(&request_bytes(
            "GET",
            "/sse",
            &[("Accept", "text/event-stream")],
            b"",
        ));
        let mut sse = try_open_stream(client)?;
        let endpoint = loop {
            let b = sse.next_block();
            if b.event.as_deref() == Some("endpoint") {
                break b.data.expect("endpoint data");
            }
            assert!(
                b.retry.is_some() && b.data.is_none(),
                "before endpoint: {b:?}"
            );
        };
        assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");
        Ok(Legacy {
            addr,
            sse,
            endpoint,
        })
    }

    pub fn open(addr: SocketAddr) -> Legacy {
        Legacy::try_open(addr).unwrap_or_else(|r| panic!("GET /sse: {r:?}"))
    }

    /// POSTs `message` to the endpoint: the response.
    pub fn post(&self, message: &Value) -> Response {
        Client::connect(self.addr).request(
            "POST",
            &self.endpoint,
            &[("Content-Type", "application/json")],
            message.to_string().as_bytes(),
        )
    }

    /// POSTs `message` and asserts `202`.
    pub fn send(&self, message: &Value) {
        let r = self.post(message);
        assert_eq!(r.status, 202, "POST {message}: {r:?}");
    }

    /// The next message on the stream, or `None` at its end.
    pub fn try_next(&mut self) -> Option<Value> {
        next_message(&mut self.sse)
    }

    pub fn next(&mut self) -> Value {
        expect_message(&mut self.sse)
    }

    /// Sends a request; its answer must be the next message.
    pub fn answer(&mut self, message: &Value) -> Value {
        self.send(message);
        let v = self.next();
        assert_eq!(v["id"], message["id"], "{v}");
        v
    }

    /// `initialize` and `notifications/initialized`; the answer.
    pub fn initialize(&mut self) -> Value {
        let v = self.answer(&initialize_message(json!(0), "2024-11-05"));
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// A tungstenite client at `ws://addr/mcp` with the `mcp` subprotocol.
pub struct McpWs {
    pub socket: WebSocket<TcpStream>,
}

impl McpWs {
    pub fn connect(addr: SocketAddr) -> McpWs {
        McpWs::try_connect(addr).unwrap_or_else(|e| panic!("WebSocket at /mcp: {e}"))
    }

    /// The handshake's error when the upgrade is refused.
    pub fn try_connect(addr: SocketAddr) -> Result<McpWs, tungstenite::Error> {
        mcp_handshake(addr, "mcp").map(|(socket, _)| McpWs { socket })
    }

    pub fn send(&mut self, value: &Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .unwrap_or_else(|e| panic!("sending {value}: {e}"));
    }

    /// The next message: a text frame, or the close frame's code and reason as `Err`.
    pub fn next_or_close(&mut self) -> Result<Value, (u16, String)> {
        loop {
            match self.socket.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(Message::Text(t)) => {
                    return Ok(serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {t}")))
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err((code, reason));
                }
                Ok(other) => panic!("expected a text message, got {other:?}"),
                Err(e) => panic!("reading a WebSocket message: {e}"),
            }
        }
    }

    pub fn next(&mut self) -> Value {
        self.next_or_close()
            .unwrap_or_else(|close| panic!("closed {close:?} while a message was expected"))
    }

    /// Expects a close frame next: its code and reason. The connection then ends.
    pub fn expect_close(&mut self) -> (u16, String) {
        match self.next_or_close() {
            Err(close) => {
                // tungstenite answers the close; the server then ends the connection.
                match self.socket.read() {
                    Ok(m) => panic!("a message after the close: {m:?}"),
                    Err(tungstenite::Error::ConnectionClosed)
                    | Err(tungstenite::Error::AlreadyClosed) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => panic!("after the close: {e}"),
                }
                close
            }
            Ok(v) => panic!("expected a close, got {v}"),
        }
    }

    /// Sends a request; its answer must be the next message.
    pub fn answer(&mut self, message: &Value) -> Value {
        self.send(message);
        let v = self.next();
        assert_eq!(v["id"], message["id"], "{v}");
        v
    }

    /// `initialize` and `notifications/initialized`; the answer.
    pub fn initialize(&mut self) -> Value {
        let v = self.answer(&initialize_message(json!(0), "2025-11-25"));
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        v
    }

    /// Closes with a close frame and waits for the server to end the connection.
    pub fn close(mut self) {
        self.socket.close(None).expect("send a close frame");
        loop {
            match self.socket.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return
                }
                Err(e) => panic!("closing: {e}"),
            }
        }
    }
}
