//! Shared helpers of the loopback integration tests: the real `mcp-stream` binary run as a child
//! (killed when its guard drops), a raw HTTP/1.1 client over `std::net::TcpStream`, and a
//! Server-Sent Events reader. Everything talks to 127.0.0.1 on a port the kernel picks.
//!
//! Every wait is a socket read timeout or a polled condition bounded by [`WAIT`]; the bound only
//! matters when a test fails.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
pub mod gateway;
pub mod load;
pub mod mcp;
pub mod ws;

/// The bound of every wait. It is only reached when something is wrong.
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-stream");

/// Every environment variable the server reads: cleared for each child so that the developer's
/// environment cannot change a test.
pub const CONFIG_ENV: &[&str] = mcp_stream::config::ENV_VARS;

// ---------------------------------------------------------------------------------------------
// Temporary files

/// A file in the temp directory with a unique name, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mcp-stream-it-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }

    /// A config file holding `config` as JSON.
    pub fn config(config: &Value) -> TempFile {
        TempFile::new("config.json", &config.to_string())
    }

    pub fn arg(&self) -> String {
        self.path.to_str().expect("utf-8 temp path").to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// The server process

/// A running `mcp-stream serve --listen 127.0.0.1:0`; killed (and reaped) on drop.
pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    _config: Option<TempFile>,
}

impl TestServer {
    /// With every default.
    pub fn start() -> TestServer {
        TestServer::start_with(None, &[])
    }

    /// With `config` as its `--config` file.
    pub fn with_config(config: Value) -> TestServer {
        TestServer::start_with(Some(config), &[])
    }

    /// With an optional config file and environment variables.
    pub fn start_with(config: Option<Value>, env: &[(&str, &str)]) -> TestServer {
        let config = config.map(|c| TempFile::config(&c));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"]);
        if let Some(file) = &config {
            cmd.args(["--config", &file.arg()]);
        }
        for var in CONFIG_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // The server logs synchronously: a pipe nobody reads would block it.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn mcp-stream");
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the one line on a thread, so that a server that never prints fails the test
        // instead of hanging it.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("reading the server's stdout: {e}");
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server printed no line within {WAIT:?}");
            }
        };
        let addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let status = child.try_wait();
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {line:?} (process status {status:?})");
        };
        TestServer {
            child,
            addr,
            _config: config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`, no libc needed).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit, at most `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        wait_exit(&mut self.child, bound)
    }

    /// A new keep-alive client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// `GET path` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().request("GET", path, &[], b"")
    }

    /// `POST /stream/publish` with `body` (JSON) on a new connection.
    pub fn publish_raw(&self, body: &str) -> Response {
        self.client().request(
            "POST",
            "/stream/publish",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Publishes `body` (one event or an array), asserts `202`, returns the ids.
    pub fn publish(&self, body: &Value) -> Vec<String> {
        publish_on(&mut self.client(), body)
    }

    /// Opens `GET /stream/sse?{query}` and asserts `200`.
    pub fn sse(&self, query: &str) -> Sse {
        Sse::open(self.addr, query, &[])
    }

    /// `GET /metrics`: every sample, keyed by its name with its labels as written
    /// (`mcp_stream_connections{transport="sse"}`). A sample that does not parse fails the
    /// test (the interop suite checks the format with a real Prometheus parser).
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        let mut samples = HashMap::new();
        for line in r.text().lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
            samples.insert(key.to_string(), value);
        }
        Metrics(samples)
    }
}

/// The samples of one `GET /metrics`.
#[derive(Debug)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// The sample `key` (name and labels as written); fails the test when it is missing.
    pub fn get(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:?}", self.0.keys()))
    }

    /// `mcp_stream_dropped_total{reason="REASON"}`.
    pub fn dropped(&self, reason: &str) -> f64 {
        self.get(&format!("mcp_stream_dropped_total{{reason=\"{reason}\"}}"))
    }

    /// `mcp_stream_errors_total{kind="KIND"}`.
    pub fn errors(&self, kind: &str) -> f64 {
        self.get(&format!("mcp_stream_errors_total{{kind=\"{kind}\"}}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes on an open keep-alive connection, asserts `202`, returns the ids.
pub fn publish_on(client: &mut Client, body: &Value) -> Vec<String> {
    let r = client.request(
        "POST",
        "/stream/publish",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "publish {body}: {r:?}");
    let v = r.json();
    v["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {v}"))
        .iter()
        .map(|id| id.as_str().expect("string id").to_string())
        .collect()
}

/// The most a TCP send buffer may autotune to (`tcp_wmem`'s maximum; 4 MiB if unreadable): the
/// most a server socket can hold for a peer that does not read, whatever the machine.
pub fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20)
}

/// Parses an event id `EPOCH-SEQ` (EPOCH eight hex digits, SEQ decimal).
pub fn parse_id(id: &str) -> (u32, u64) {
    let (epoch, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("id {id:?} has no '-'"));
    assert_eq!(epoch.len(), 8, "epoch of {id:?} is not 8 hex digits");
    assert!(
        epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "epoch of {id:?} is not hex"
    );
    assert!(
        !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()),
        "seq of {id:?} is not decimal"
    );
    (
        u32::from_str_radix(epoch, 16).unwrap(),
        seq.parse().unwrap(),
    )
}

/// The sequence number of an event id.
pub fn seq_of(id: &str) -> u64 {
    parse_id(id).1
}

// ---------------------------------------------------------------------------------------------
// Running the binary to completion (CLI tests)

/// What a finished run of the binary left.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env` to completion, at most [`WAIT`] (then it is killed and
/// the test fails).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in CONFIG_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn mcp-stream");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mcp-stream {args:?} did not exit within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(10)); // polling a condition, with a bound
    };
    RunOutput {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// A parsed response.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} {:?}",
            self.status,
            self.reason,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts a JSON error response: `status`, `Content-Type: application/json`, and a body
    /// that is exactly one `error` string. Returns the reason.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"));
        assert_eq!(obj.len(), 1, "error body has other keys: {v}");
        obj["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error is not a string: {v}"))
            .to_string()
    }
}

/// One client connection with its read buffer. Reads time out after [`WAIT`].
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let _ = stream.set_nodelay(true);
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Sends a request with `Host` and, for a body, `Content-Length`, then reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, path, headers, body));
        self.read_response()
    }

    /// Reads more bytes into the buffer: `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn fill_or_panic(&mut self, what: &str) {
        match self.fill() {
            Ok(0) => panic!(
                "end of stream while reading {what}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(_) => {}
            Err(e) => panic!(
                "reading {what}: {e}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads a response head; the body (if any) is left in the buffer.
    pub fn read_head(&mut self) -> Response {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill_or_panic("a response head");
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("utf-8 head");
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap();
        assert_eq!(version, "HTTP/1.1", "status line {status_line:?}");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let reason = parts.next().unwrap_or("").to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line {l:?}"));
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads exactly `n` body bytes.
    pub fn read_exact_body(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill_or_panic("a response body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response: the head, then `Content-Length` bytes of body (none without one).
    pub fn read_response(&mut self) -> Response {
        let mut r = self.read_head();
        assert!(
            r.header("transfer-encoding").is_none(),
            "unexpected chunked response {r:?}"
        );
        let len: usize = r
            .header("content-length")
            .map(|v| v.parse().expect("numeric Content-Length"))
            .unwrap_or(0);
        r.body = self.read_exact_body(len);
        r
    }

    /// Reads until the server ends the stream; returns what came before. A reset after the
    /// data counts as the end too. Panics if nothing ends within [`WAIT`].
    pub fn read_to_end(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "waiting for end of stream: {e}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Asserts that the server ends the stream with nothing more to say.
    pub fn expect_eof(&mut self) {
        let rest = self.read_to_end();
        assert!(
            rest.is_empty(),
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Reads at most `max` bytes into the buffer (for a client that reads slowly); 0 at the end
    /// of the stream or on a reset.
    pub fn read_some(&mut self, max: usize) -> usize {
        let mut chunk = vec![0u8; max];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return 0,
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Ends our side of the connection (the server sees end of stream).
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }
}

/// The bytes of a request: `Host` always, `Content-Length` when there is a body and no
/// `Transfer-Encoding` or `Content-Length` was given.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() && !framed {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

/// One SSE block (the lines up to a blank line), parsed as the SSE spec says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Block {
    pub id: Option<String>,
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// Comment lines, without the leading `:` and one space.
    pub comments: Vec<String>,
    /// The block as sent, with its terminating blank line.
    pub raw: String,
}

impl Block {
    fn parse(raw: String) -> Block {
        let mut b = Block::default();
        for line in raw.trim_end_matches('\n').split('\n') {
            if let Some(c) = line.strip_prefix(':') {
                b.comments
                    .push(c.strip_prefix(' ').unwrap_or(c).to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => b.id = Some(value.to_string()),
                "event" => b.event = Some(value.to_string()),
                "data" => {
                    b.data = Some(match b.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value.to_string(),
                    })
                }
                "retry" => b.retry = Some(value.parse().expect("numeric retry")),
                other => panic!("unknown SSE field {other:?} in {raw:?}"),
            }
        }
        b.raw = raw;
        b
    }

    /// A comment-only block (a heartbeat).
    pub fn is_comment(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none() && self.retry.is_none()
    }

    /// The event name as a browser sees it: `message` when there is no `event:` line.
    pub fn event_name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// `data` parsed as JSON.
    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("block has no data: {:?}", self.raw));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }
}

/// An open `GET /stream/sse` stream.
pub struct Sse {
    pub client: Client,
    /// The response head.
    pub head: Response,
}

impl Sse {
    /// Opens the stream and asserts `200`.
    pub fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Sse {
        match Sse::try_open(Client::connect(addr), query, headers) {
            Ok(sse) => sse,
            Err(r) => panic!("GET /stream/sse?{query}: {r:?}"),
        }
    }

    /// Sends the request on `client`; `Err` with the full response when it is not a `200`.
    pub fn try_open(
        mut client: Client,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sse, Response> {
        let target = format!("/stream/sse?{query}");
        client.send(&request_bytes("GET", &target, headers, b""));
        Sse::read_open(client)
    }

    /// Reads the response head of a request already sent on `client`: `Ok` with the stream for
    /// a `200`, `Err` with the full response otherwise.
    pub fn read_open(mut client: Client) -> Result<Sse, Response> {
        let mut head = client.read_head();
        if head.status != 200 {
            let len: usize = head
                .header("content-length")
                .map(|v| v.parse().unwrap())
                .unwrap_or(0);
            head.body = client.read_exact_body(len);
            return Err(head);
        }
        Ok(Sse { client, head })
    }

    /// The next block, or `None` at end of stream (a reset counts as the end).
    pub fn try_next_block(&mut self) -> Option<Block> {
        loop {
            if let Some(i) = find(&self.client.buf, b"\n\n") {
                let raw: Vec<u8> = self.client.buf.drain(..i + 2).collect();
                return Some(Block::parse(String::from_utf8(raw).expect("utf-8 SSE")));
            }
            match self.client.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "reading SSE: {e}; have {:?}",
                    String::from_utf8_lossy(&self.client.buf)
                ),
            }
        }
        assert!(
            self.client.buf.is_empty(),
            "stream ended mid-block: {:?}",
            String::from_utf8_lossy(&self.client.buf)
        );
        None
    }

    /// Like [`Sse::try_next_block`], but an end of stream in the middle of a block is an end
    /// too; the partial block stays in [`Client::buffered`].
    pub fn try_next_block_lenient(&mut self) -> Option<Block> {
        loop {
            if let Some(i) = find(&self.client.buf, b"\n\n") {
                let raw: Vec<u8> = self.client.buf.drain(..i + 2).collect();
                return Some(Block::parse(String::from_utf8(raw).expect("utf-8 SSE")));
            }
            match self.client.fill() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading SSE: {e}"),
            }
        }
    }

    /// The next block; panics at end of stream.
    pub fn next_block(&mut self) -> Block {
        self.try_next_block()
            .expect("SSE stream ended while a block was expected")
    }

    /// The next block that is not a heartbeat comment.
    pub fn next_event(&mut self) -> Block {
        loop {
            let b = self.next_block();
            if !b.is_comment() {
                return b;
            }
        }
    }

    /// Reads the opening block (`retry:` and `event: connected`) and returns it.
    pub fn read_opening(&mut self) -> Block {
        let b = self.next_block();
        assert_eq!(b.event.as_deref(), Some("connected"), "opening {:?}", b.raw);
        b
    }

    /// Skips heartbeats until the end of the stream; panics on anything else.
    pub fn expect_end(&mut self) {
        while let Some(b) = self.try_next_block() {
            assert!(b.is_comment(), "expected end of stream, got {:?}", b.raw);
        }
    }
}

/// Waits for the server process `child` to exit, at most `bound`.
pub fn wait_exit(child: &mut Child, bound: Duration) -> ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {bound:?}"
        );
        thread::sleep(Duration::from_millis(5)); // polling a condition, with a bound
    }
}
