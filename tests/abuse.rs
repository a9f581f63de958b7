//! Abuse: 10,000 malformed requests against the real binary on 127.0.0.1 (port 0), and the same
//! against a server embedded in this process, whose counters can be read.
//!
//! The requests come from a seeded PRNG that mutates valid ones (SSE subscribe, publish with
//! `Content-Length` and chunked bodies, WebSocket upgrades followed by frames, MCP over
//! Streamable HTTP, legacy SSE and WebSocket): truncations, bit flips, huge headers, bad chunk
//! sizes, bad WebSocket frames after an upgrade, invalid JSON-RPC, lying `Content-Length`s,
//! garbage request lines. A connection carries one to four of them back to back, then ends its
//! side and reads until the server closes (most), or drops at once, unread data and all (some).
//!
//! Afterwards the server must be alive, still serve `/health` and a publish on new
//! connections, and hold no connection: for the binary its open file descriptors return to
//! what they were before the abuse, in process its `Counters` return to 0.
//!
//! `benches/abuse.rs` replays the same requests and reports the server's memory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The bound of every wait; reached only when something is wrong.
pub const WAIT: Duration = Duration::from_secs(10);

/// The malformed requests, their connections and how they are sent.
pub mod cases {
    /// The seed of the run: the same 10,000 requests every time.
    pub const SEED: u64 = 0x6d63_702d_6162_7573;
    /// How many malformed requests.
    pub const COUNT: usize = 10_000;

    /// xorshift64*: small, seeded, good enough to pick mutations.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A number in `0..n` (`n` > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        /// True with probability `percent` in 100.
        pub fn chance(&mut self, percent: u64) -> bool {
            self.next_u64() % 100 < percent
        }

        pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// One connection: the malformed requests it carries (each as the bytes of one write),
    /// and whether it drops at once instead of ending its side and reading to the end.
    pub struct Connection {
        pub writes: Vec<Vec<u8>>,
        pub abrupt: bool,
    }

    /// The connections that carry the [`COUNT`] requests of [`SEED`].
    pub fn connections() -> Vec<Connection> {
        let mut rng = Rng::new(SEED);
        let mut out = Vec::new();
        let mut made = 0;
        while made < COUNT {
            let n = (1 + rng.below(4)).min(COUNT - made);
            let writes = (0..n).map(|_| malformed(&mut rng)).collect();
            made += n;
            out.push(Connection {
                writes,
                abrupt: rng.chance(10),
            });
        }
        out
    }

    const TOPICS: &[&str] = &["abuse", "news", "a.b:c/d-e_f"];

    fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn json_post(path: &str, body: &str) -> Vec<u8> {
        request(
            "POST",
            path,
            &[
                ("Content-Type", "application/json".into()),
                ("Accept", "application/json, text/event-stream".into()),
                ("Content-Length", body.len().to_string()),
            ],
            body.as_bytes(),
        )
    }

    fn chunked_post(path: &str, body: &str, size: usize) -> Vec<u8> {
        let mut wire = request(
            "POST",
            path,
            &[
                ("Content-Type", "application/json".into()),
                ("Transfer-Encoding", "chunked".into()),
            ],
            b"",
        );
        for piece in body.as_bytes().chunks(size.max(1)) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    fn upgrade(path: &str, protocol: Option<&str>) -> Vec<u8> {
        let mut headers = vec![
            ("Upgrade", "websocket".to_string()),
            ("Connection", "Upgrade".to_string()),
            ("Sec-WebSocket-Version", "13".to_string()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        ];
        if let Some(p) = protocol {
            headers.push(("Sec-WebSocket-Protocol", p.to_string()));
        }
        request("GET", path, &headers, b"")
    }

    /// A client frame, masked with `key` unless it is `None`.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn text(payload: &str, rng: &mut Rng) -> Vec<u8> {
        let key = (rng.next_u64() as u32).to_be_bytes();
        frame(true, 1, payload.as_bytes(), Some(key))
    }

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"abuse","version":"1"}}}"#;

    /// The kinds of valid request that get mutated.
    fn valid(rng: &mut Rng) -> (Vec<u8>, Kind) {
        let topic = *rng.pick(TOPICS);
        match rng.below(11) {
            0 => (request("GET", "/health", &[], b""), Kind::Plain),
            1 => (
                request(
                    "GET",
                    &format!("/stream/sse?topic={topic}&event=update"),
                    &[("Last-Event-ID", "00000000-1".into())],
                    b"",
                ),
                Kind::Plain,
            ),
            2 => (
                json_post(
                    "/stream/publish",
                    &format!(r#"{{"topic":"{topic}","event":"update","data":{{"n":1}}}}"#),
                ),
                Kind::Json,
            ),
            3 => (
                chunked_post(
                    "/stream/publish",
                    &format!(r#"[{{"topic":"{topic}","data":"chunked"}},{{"topic":"{topic}"}}]"#),
                    1 + rng.below(20),
                ),
                Kind::Chunked,
            ),
            4 => {
                let mut wire = upgrade("/stream/ws", None);
                for msg in [
                    format!(r#"{{"type":"join","room":"{topic}"}}"#),
                    format!(r#"{{"type":"publish","topic":"{topic}","event":"e","data":[1,2]}}"#),
                    r#"{"type":"broadcast","data":"hi","exclude_self":true}"#.to_string(),
                    r#"{"type":"ping"}"#.to_string(),
                ] {
                    wire.extend(text(&msg, rng));
                }
                (wire, Kind::WebSocket)
            }
            5 => (json_post("/mcp", INITIALIZE), Kind::Json),
            6 => {
                let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
                let mut wire = json_post("/mcp", body);
                // A session that does not exist.
                let at = wire.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
                wire.splice(
                    at..at,
                    b"Mcp-Session-Id: 0123456789abcdef\r\n".iter().copied(),
                );
                (wire, Kind::Json)
            }
            7 => (
                json_post(
                    "/mcp",
                    r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
                ),
                Kind::Json,
            ),
            8 => (request("GET", "/sse", &[], b""), Kind::Plain),
            9 => {
                let mut wire = upgrade("/mcp", Some("mcp"));
                wire.extend(text(INITIALIZE, rng));
                wire.extend(text(
                    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"countdown","arguments":{"n":2,"interval_ms":1}}}"#,
                    rng,
                ));
                (wire, Kind::WebSocket)
            }
            _ => (
                json_post(
                    "/messages?sessionId=nope",
                    r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
                ),
                Kind::Json,
            ),
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Plain,
        Json,
        Chunked,
        WebSocket,
    }

    /// One malformed request: a valid one, mutated once or twice.
    pub fn malformed(rng: &mut Rng) -> Vec<u8> {
        let (mut wire, kind) = valid(rng);
        for _ in 0..1 + rng.below(2) {
            wire = mutate(wire, kind, rng);
        }
        wire
    }

    fn mutate(mut wire: Vec<u8>, kind: Kind, rng: &mut Rng) -> Vec<u8> {
        let head_end = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(wire.len(), |i| i + 4);
        match rng.below(10) {
            // Truncation.
            0 => {
                let at = rng.below(wire.len().max(1));
                wire.truncate(at);
                wire
            }
            // Bit flips.
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(wire.len().max(1));
                    if let Some(b) = wire.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                wire
            }
            // A huge header, or very many.
            2 => {
                let line_end = wire
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map_or(0, |i| i + 2);
                let extra = if rng.chance(50) {
                    let len = [8_000, 17_000, 70_000, 300_000][rng.below(4)];
                    format!("X-Huge: {}\r\n", "a".repeat(len))
                } else {
                    (0..[70, 300, 2000][rng.below(3)])
                        .map(|i| format!("X-{i}: v\r\n"))
                        .collect()
                };
                wire.splice(line_end..line_end, extra.into_bytes());
                wire
            }
            // Bad chunk sizes, or a body whose framing lies.
            3 => {
                wire.truncate(head_end);
                let bad: &[&[u8]] = &[
                    b"zz\r\nab\r\n0\r\n\r\n",
                    b"-1\r\n",
                    b"ffffffffffffffffffff\r\n",
                    b"5\r\nhello world\r\n0\r\n\r\n",
                    b"5\r\nhelloXY0\r\n\r\n",
                    b"0x10\r\n",
                    b"\r\n\r\n",
                    b"3;\x00\x01\r\nabc\r\n0\r\n",
                ];
                let mut head = wire;
                if kind != Kind::Chunked {
                    // Give it chunked framing, alongside what it had.
                    let at = head.len().saturating_sub(2);
                    head.splice(at..at, b"Transfer-Encoding: chunked\r\n".iter().copied());
                }
                head.extend_from_slice(bad[rng.below(bad.len())]);
                if rng.chance(30) {
                    head.extend_from_slice(format!("1;{}\r\n", "e".repeat(5000)).as_bytes());
                }
                head
            }
            // Bad WebSocket frames after an upgrade.
            4 => {
                let key = [9, 8, 7, 6];
                let bad: Vec<Vec<u8>> = vec![
                    frame(true, 1, b"unmasked", None),
                    {
                        let mut f = frame(true, 1, b"rsv", Some(key));
                        f[0] |= 0x70;
                        f
                    },
                    frame(true, 3, b"reserved opcode", Some(key)),
                    frame(true, 11, b"reserved control", Some(key)),
                    frame(false, 9, b"fragmented ping", Some(key)),
                    frame(true, 9, &[b'p'; 126], Some(key)),
                    frame(true, 0, b"continuation first", Some(key)),
                    frame(true, 1, &[0xff, 0xfe, 0xfd], Some(key)),
                    frame(true, 8, &[0x03], Some(key)),
                    frame(true, 8, &999u16.to_be_bytes(), Some(key)),
                    frame(true, 1, &vec![b'x'; 70_000], Some(key)),
                    // A 64-bit length with the top bit set, and nothing after.
                    vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
                    frame(true, 2, b"binary", Some(key)),
                    frame(true, 1, b"{\"type\":\"nope\"}", Some(key)),
                    frame(
                        true,
                        1,
                        b"{\"type\":\"join\",\"room\":\"bad topic!\"}",
                        Some(key),
                    ),
                ];
                let mut out = if kind == Kind::WebSocket {
                    wire
                } else {
                    upgrade("/stream/ws", None)
                };
                for _ in 0..1 + rng.below(3) {
                    out.extend_from_slice(&bad[rng.below(bad.len())]);
                }
                out
            }
            // Invalid JSON-RPC (or JSON) with a correct Content-Length.
            5 => {
                let bodies: &[&str] = &[
                    "{",
                    "[]",
                    "null",
                    r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                    r#"{"jsonrpc":"2.0","id":{},"method":1}"#,
                    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":3}"#,
                    r#"{"jsonrpc":"2.0","id":1e999,"method":"ping"}"#,
                    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"countdown","arguments":{"n":-1}}}"#,
                    r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
                    r#"{"topic":"","data":1}"#,
                    r#"[{"topic":"ok","data":1},{"topic":"bad topic"}]"#,
                ];
                let body = match rng.below(4) {
                    0 => "[".repeat(5000),
                    1 => format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":\"\u{0}\",\"method\":\"{}\"}}",
                        "m".repeat(3000)
                    ),
                    _ => rng.pick(bodies).to_string(),
                };
                let path = *rng.pick(&["/mcp", "/stream/publish", "/messages?sessionId=x"]);
                if kind == Kind::WebSocket {
                    let mut out = wire;
                    out.extend(text(&body, rng));
                    out
                } else {
                    json_post(path, &body)
                }
            }
            // Framing that lies: Content-Length wrong, negative, doubled, or with chunked.
            6 => {
                let lie = *rng.pick(&[
                    "Content-Length: 99999\r\n",
                    "Content-Length: 1\r\n",
                    "Content-Length: -5\r\n",
                    "Content-Length: 3\r\nContent-Length: 4\r\n",
                    "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                    "Transfer-Encoding: gzip, chunked\r\n",
                    "Content-Length: 18446744073709551616\r\n",
                ]);
                let at = head_end.saturating_sub(2).min(wire.len());
                wire.splice(at..at, lie.bytes());
                wire
            }
            // Garbage request lines.
            7 => {
                let line_end = wire.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
                let line = match rng.below(6) {
                    0 => format!("{} / HTTP/1.1", "M".repeat(1000)),
                    1 => "GET http://example/ HTTP/1.1".to_string(),
                    2 => "GET / HTTP/2.0".to_string(),
                    3 => "GET /\0 HTTP/1.1".to_string(),
                    4 => format!("GET /{} HTTP/1.1", "p".repeat(20_000)),
                    _ => "\u{1}\u{2}\u{3}".to_string(),
                };
                wire.splice(..line_end, line.into_bytes());
                wire
            }
            // Random bytes inserted, a range duplicated, or line ends cut to LF.
            8 => match rng.below(3) {
                0 => {
                    let at = rng.below(wire.len() + 1);
                    let junk: Vec<u8> = (0..1 + rng.below(64))
                        .map(|_| rng.next_u64() as u8)
                        .collect();
                    wire.splice(at..at, junk);
                    wire
                }
                1 => {
                    let a = rng.below(wire.len().max(1));
                    let b = (a + rng.below(200)).min(wire.len());
                    let copy = wire[a..b].to_vec();
                    wire.splice(b..b, copy);
                    wire
                }
                _ => {
                    let mut out = Vec::with_capacity(wire.len());
                    for (i, &b) in wire.iter().enumerate() {
                        if !(b == b'\r' && wire.get(i + 1) == Some(&b'\n') && rng.chance(50)) {
                            out.push(b);
                        }
                    }
                    out
                }
            },
            // A head that never ends: the server must not wait for it once we end our side.
            _ => {
                wire.truncate(head_end.saturating_sub(2));
                wire
            }
        }
    }
}

/// Runs one connection: how many bytes the server answered with, or the error of a read that
/// timed out (the server kept a connection whose peer had ended its side).
pub fn run_connection(addr: SocketAddr, conn: &cases::Connection) -> io::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    for bytes in &conn.writes {
        // The server may close on the first bad byte: a failed write is part of the game.
        if stream.write_all(bytes).is_err() {
            break;
        }
    }
    if conn.abrupt {
        return Ok(0);
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut got = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
            // A read timeout: the server kept a connection whose peer had ended.
            Err(e) => return Err(e),
        }
    }
}

/// Sends every connection of [`cases::connections`] to `addr` from `threads` client threads.
/// Returns how many connections got an answer; panics if the server kept one open after the
/// client ended its side.
pub fn replay(addr: SocketAddr, threads: usize) -> usize {
    let all = std::sync::Arc::new(cases::connections());
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (all, next, answered) = (all.clone(), next.clone(), answered.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(conn) = all.get(i) else { return };
                match run_connection(addr, conn) {
                    Ok(n) => {
                        if n > 0 {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => panic!(
                        "connection {i}: {e} (it sent {:?})",
                        conn.writes
                            .iter()
                            .map(|w| String::from_utf8_lossy(&w[..w.len().min(200)]).into_owned())
                            .collect::<Vec<_>>()
                    ),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client thread failed");
    }
    answered.load(Ordering::Relaxed)
}

/// A `GET /health` on a new connection: the status line and the body.
pub fn health(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect for /health");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("the /health answer");
    out
}

/// A publish on a new connection: the status line.
pub fn publish(addr: SocketAddr) -> String {
    let body = r#"{"topic":"after","data":{"still":"alive"}}"#;
    let mut stream = TcpStream::connect(addr).expect("connect to publish");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST /stream/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("the publish answer");
    out.lines().next().unwrap_or("").to_string()
}

/// The real binary with its default config, killed when this drops.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
}

/// Every environment variable the server reads: cleared so that the caller's cannot change the
/// run.
const CONFIG_ENV: &[&str] = mcp_stream::config::ENV_VARS;

impl Binary {
    /// With every default.
    pub fn start() -> Binary {
        Binary::start_with(None)
    }

    /// With `config` (JSON text) as its config file, when given.
    pub fn start_with(config: Option<&str>) -> Binary {
        let file = config.map(|text| {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("mcp-stream-abuse-{}-{n}.json", std::process::id()));
            std::fs::write(&path, text).expect("write the config file");
            path
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-stream"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--log-level", "error"]);
        if let Some(path) = &file {
            command.arg("--config").arg(path);
        }
        for var in CONFIG_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mcp-stream");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        if let Some(path) = &file {
            let _ = std::fs::remove_file(path);
        }
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Binary { child, addr },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server printed {line:?} instead of its address");
            }
        }
    }

    /// Whether the process is alive (not exited, not a zombie).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// The process's open file descriptors: its listener, poll, signal pipe, … and one per
    /// connection.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits (bounded) until the process has at most `fds` descriptors open; returns the count.
    pub fn wait_fds_at_most(&self, fds: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.open_fds();
            if now <= fds || Instant::now() >= deadline {
                return now;
            }
            thread::sleep(Duration::from_millis(20)); // polling a condition, with a bound
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// `cfg(test)`: benches/abuse.rs includes this file for its requests, not for its tests.
#[cfg(test)]
mod tests {
    use super::*;

    use mcp_stream::config::Config;
    use mcp_stream::proto::engine::Counters;
    use mcp_stream::{Server, TokenRange};
    use mio::{Events, Poll};

    #[test]
    fn the_requests_are_the_same_every_run_and_malformed_in_every_way() {
        let a = cases::connections();
        let b = cases::connections();
        assert_eq!(
            a.iter().map(|c| c.writes.len()).sum::<usize>(),
            cases::COUNT
        );
        assert!(a.len() > 2_000, "{} connections", a.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.writes == y.writes && x.abrupt == y.abrupt));
        let all: Vec<&[u8]> = a
            .iter()
            .flat_map(|c| c.writes.iter().map(|w| &w[..]))
            .collect();
        let has = |needle: &[u8]| {
            all.iter()
                .filter(|w| w.windows(needle.len()).any(|x| x == needle))
                .count()
        };
        for marker in [
            &b"X-Huge: "[..],
            b"zz\r\n",
            b"Upgrade: websocket",
            b"\"jsonrpc\":\"1.0\"",
            b"Content-Length: -5",
        ] {
            assert!(
                has(marker) > 20,
                "too few requests with {:?}",
                String::from_utf8_lossy(marker)
            );
        }
    }

    #[test]
    fn the_binary_survives_10000_malformed_requests() {
        let mut server = Binary::start();
        let baseline = server.open_fds();
        assert!(health(server.addr).starts_with("HTTP/1.1 200 "));
        let started = Instant::now();
        let answered = replay(server.addr, 8);
        eprintln!(
            "{} malformed requests in {} connections, {answered} answered, in {:?}",
            cases::COUNT,
            cases::connections().len(),
            started.elapsed()
        );
        assert!(server.alive(), "the server died");
        assert!(
            answered > 1_000,
            "only {answered} connections got an answer"
        );
        let fds = server.wait_fds_at_most(baseline);
        assert!(
            fds <= baseline,
            "{fds} descriptors open, {baseline} before the abuse"
        );
        let health = health(server.addr);
        assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
        assert!(health.contains(r#""status":"ok""#), "{health}");
        assert_eq!(publish(server.addr), "HTTP/1.1 202 Accepted");
        assert!(server.alive(), "the server died");
    }

    /// A server embedded in this process, on a thread of its own, whose counters the test
    /// can ask for.
    struct Embedded {
        addr: SocketAddr,
        ask: mpsc::Sender<mpsc::Sender<Counters>>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Embedded {
        fn start() -> Embedded {
            let (ask, questions) = mpsc::channel::<mpsc::Sender<Counters>>();
            let (tx, rx) = mpsc::channel();
            let thread = thread::spawn(move || {
                let config = Config {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    ..Config::default()
                };
                let mut poll = Poll::new().unwrap();
                let mut server = Server::bind(config).unwrap();
                server
                    .register(
                        poll.registry(),
                        TokenRange {
                            start: 0,
                            len: 1 << 20,
                        },
                    )
                    .unwrap();
                tx.send(server.local_addr()).unwrap();
                let mut events = Events::with_capacity(256);
                // The loop ends when the test drops its sender.
                loop {
                    loop {
                        match questions.try_recv() {
                            Ok(reply) => {
                                let _ = reply.send(server.counters().clone());
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                    let tick = Duration::from_millis(10);
                    let timeout = server
                        .poll_timeout(Instant::now())
                        .map_or(tick, |t| t.min(tick));
                    poll.poll(&mut events, Some(timeout)).unwrap();
                    let now = Instant::now();
                    for event in &events {
                        if server.owns(event.token()) {
                            server.handle_event(event, now);
                        }
                    }
                    server.on_timeout(Instant::now());
                }
            });
            let addr = rx.recv_timeout(WAIT).expect("the embedded server starts");
            Embedded {
                addr,
                ask,
                thread: Some(thread),
            }
        }

        fn counters(&self) -> Counters {
            let (tx, rx) = mpsc::channel();
            self.ask.send(tx).expect("the server loop runs");
            rx.recv_timeout(WAIT).expect("the server loop answers")
        }

        /// Waits (bounded) until no connection is open; returns the last counters.
        fn wait_idle(&self) -> Counters {
            let deadline = Instant::now() + WAIT;
            loop {
                let c = self.counters();
                if c.connections == 0 || Instant::now() >= deadline {
                    return c;
                }
                thread::sleep(Duration::from_millis(20)); // polling a condition, with a bound
            }
        }
    }

    impl Drop for Embedded {
        fn drop(&mut self) {
            let (ask, _) = mpsc::channel();
            drop(std::mem::replace(&mut self.ask, ask));
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn an_embedded_server_counts_no_connection_after_10000_malformed_requests() {
        let server = Embedded::start();
        let answered = replay(server.addr, 8);
        assert!(
            answered > 1_000,
            "only {answered} connections got an answer"
        );
        let c = server.wait_idle();
        assert_eq!(
            (c.connections, c.sse_streams, c.websockets, c.mcp_streams),
            (0, 0, 0, 0),
            "{c:?}"
        );
        assert!(c.requests > 1_000, "{c:?}");
        assert!(health(server.addr).starts_with("HTTP/1.1 200 "));
        assert_eq!(publish(server.addr), "HTTP/1.1 202 Accepted");
    }
}
