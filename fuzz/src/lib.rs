//! What the fuzz targets share: a model of the driver that runs an [`Engine`] without sockets
//! (a virtual clock, connections that take their output only when told to), and a small text
//! script that drives it, so that the seed corpora are readable request shapes.
//!
//! # The script
//!
//! One command per line. `C` is a connection: a number taken modulo the open connections (one
//! is opened first when none is). Text arguments take the escapes `\r`, `\n`, `\t`, `\0`, `\\`
//! and `\xHH`, and the placeholders `{sid}` (the last `Mcp-Session-Id` the server sent),
//! `{legacy}` (the last legacy `sessionId`), `{last}` (the last event id published) and
//! `{c*N}` (the character `c` repeated `N` times, at most 100000).
//!
//! | command | what it does |
//! | --- | --- |
//! | `open [N]` | a connection from 127.0.0.N (1 when left out) |
//! | `send C TEXT` | TEXT as one read |
//! | `split C K TEXT` | TEXT in reads of K bytes |
//! | `get C PATH` | a GET, with `Mcp-Session-Id: {sid}` when PATH starts with `/mcp` |
//! | `post C PATH BODY` | a POST with `Content-Length`, JSON, both `Accept` types, the session on `/mcp` |
//! | `chunked C PATH K BODY` | the same POST with a chunked body in chunks of K bytes |
//! | `mcp C JSON` | `post C /mcp JSON` |
//! | `upgrade C PATH [PROTOCOL]` | a WebSocket upgrade |
//! | `ws C TEXT` | a masked text frame |
//! | `wsframe C OPCODE FIN MASKED TEXT` | any frame: numbers, then the payload |
//! | `write C N` | the peer takes at most N bytes of C's output |
//! | `flush` | every peer takes all of its output |
//! | `eof C` | the peer ends its side |
//! | `drop C` | the driver drops the socket (an I/O error) |
//! | `publish TOPIC JSON` | a publish from the host |
//! | `advance MS` | the clock moves on; due deadlines fire |
//! | `feature NAME on/off` | a runtime toggle |
//! | `shutdown` | a graceful shutdown starts |
//! | `policy drop_oldest` | (anywhere) the slow-consumer policy of the run |
//! | anything else | the line's bytes as one read of the newest connection |
//!
//! After the script every connection is closed (by the driver, by the peers' end of stream, or
//! by a shutdown, as the input's length picks) and the engine must hold no connection and
//! count none.

use std::collections::HashSet;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mcp_stream::config::{Config, SlowConsumer};
use mcp_stream::features::Feature;
use mcp_stream::proto::engine::{Action, Drained, Engine};
use mcp_stream::proto::ConnId;

/// The epoch of every event id in a fuzz run.
pub const EPOCH: u32 = 0x5eed;

/// A small configuration whose limits a short input can reach: a few connections, small heads,
/// bodies, queues and messages, short deadlines.
pub fn small_config(policy: SlowConsumer) -> Config {
    let mut c = Config {
        max_connections: 6,
        ..Config::default()
    };
    c.sse.max_connections = 3;
    c.sse.heartbeat_secs = 1;
    c.websocket.message_history = 4;
    c.websocket.max_message_bytes = 512;
    c.websocket.ping_interval_secs = 1;
    c.websocket.pong_timeout_secs = 1;
    c.backpressure.max_queue_bytes = 4096;
    c.backpressure.slow_consumer = policy;
    c.limits.max_head_bytes = 1024;
    c.limits.max_body_bytes = 2048;
    c.limits.max_header_count = 16;
    c.limits.head_timeout_ms = 1000;
    c.limits.body_timeout_ms = 1000;
    c.limits.idle_timeout_secs = 5;
    c.limits.max_connections_per_ip = 4;
    c.limits.drain_timeout_ms = 500;
    c.limits.max_topics = 4;
    c.mcp.session_idle_secs = 2;
    c.mcp.max_sessions = Some(3);
    c.validate().expect("the fuzz config is valid");
    c
}

/// An engine and the driver around it, with a virtual clock.
pub struct Driver {
    /// The engine under test.
    pub engine: Engine,
    /// The virtual clock.
    pub now: Instant,
    /// Connections the engine has not closed, oldest first.
    pub open: Vec<ConnId>,
    /// Connections whose write side the driver has shut.
    shut: HashSet<ConnId>,
    /// The last `Mcp-Session-Id` sent.
    pub session: String,
    /// The last legacy `sessionId` sent.
    pub legacy: String,
    /// The last event id a `publish` command got.
    pub last_id: String,
    /// Print what every peer takes to stderr (to see what a seed does).
    pub trace: bool,
}

impl Driver {
    /// A driver of a new engine serving `config`.
    pub fn new(config: Config) -> Driver {
        let now = Instant::now();
        let mut engine = Engine::new(config, EPOCH);
        engine.set_unix_time(now, Duration::from_secs(1_700_000_000));
        Driver {
            engine,
            now,
            open: Vec::new(),
            shut: HashSet::new(),
            session: "none".into(),
            legacy: "none".into(),
            last_id: format!("{EPOCH:08x}-1"),
            trace: false,
        }
    }

    /// A new connection from 127.0.0.`peer`; `None` when the engine refuses it outright.
    pub fn open(&mut self, peer: u8) -> Option<ConnId> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, peer)), 40000);
        let id = self.engine.accept(self.now, addr)?;
        self.open.push(id);
        self.settle();
        Some(id)
    }

    /// The connection a script number names (opening one when none is open).
    pub fn pick(&mut self, n: usize) -> Option<ConnId> {
        if self.open.is_empty() {
            self.open(1)?;
        }
        Some(self.open[n % self.open.len()])
    }

    /// Bytes read from connection `n`.
    pub fn input(&mut self, n: usize, bytes: &[u8]) {
        if let Some(id) = self.pick(n) {
            self.engine.handle_input(self.now, id, bytes);
            self.settle();
        }
    }

    /// Bytes read from connection `n`, in reads of `step` bytes.
    pub fn input_split(&mut self, n: usize, bytes: &[u8], step: usize) {
        if let Some(id) = self.pick(n) {
            for piece in bytes.chunks(step.max(1)) {
                self.engine.handle_input(self.now, id, piece);
                self.settle();
            }
        }
    }

    /// Runs the engine's actions: closes are taken at once; writes wait for the peer.
    pub fn settle(&mut self) {
        while let Some((id, action)) = self.engine.poll_action() {
            if action == Action::Close {
                self.open.retain(|&o| o != id);
                self.shut.remove(&id);
            }
        }
        self.check();
    }

    /// The peer of connection `n` takes at most `max` bytes of its output.
    pub fn write(&mut self, n: usize, max: usize) {
        if let Some(id) = self.pick(n) {
            self.write_id(id, max);
            self.settle();
        }
    }

    /// Every peer takes all of its output.
    pub fn flush(&mut self) {
        // Draining may queue more (a close after the last bytes): go round until quiet, with a
        // bound so that a bug looping forever shows as a failure instead of a hang.
        for _ in 0..64 {
            let ids: Vec<ConnId> = self.open.clone();
            let mut wrote = false;
            for id in ids {
                wrote |= self.write_id(id, usize::MAX);
            }
            self.settle();
            if !wrote {
                return;
            }
        }
        panic!("output never drained");
    }

    /// Writes up to `max` bytes of `id`'s output; returns whether anything was written or the
    /// connection moved on after draining.
    fn write_id(&mut self, id: ConnId, mut max: usize) -> bool {
        let mut any = false;
        while max > 0 && self.engine.has_output(id) {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = self.engine.output(id, &mut slices);
            assert!(n > 0, "has_output but no slices for {id}");
            let mut taken = 0;
            let mut seen = Vec::new();
            for s in &slices[..n] {
                let take = s.len().min(max - taken);
                seen.extend_from_slice(&s[..take]);
                taken += take;
                if taken == max {
                    break;
                }
            }
            self.engine.consume_output(self.now, id, taken);
            if self.trace {
                eprintln!("<< {id}: {}", String::from_utf8_lossy(&seen).escape_debug());
            }
            self.learn(&seen);
            max -= taken;
            any |= taken > 0;
            if taken == 0 {
                break;
            }
        }
        if !self.engine.has_output(id)
            && self.open.contains(&id)
            && !self.shut.contains(&id)
            && self.engine.on_drained(self.now, id) == Drained::ShutdownWrite
        {
            self.shut.insert(id);
            any = true;
        }
        any
    }

    /// Remembers the session ids the server handed out, and checks every status line: each
    /// status the server sends has its reason phrase.
    fn learn(&mut self, bytes: &[u8]) {
        for (at, _) in bytes
            .windows(9)
            .enumerate()
            .filter(|(_, w)| *w == b"HTTP/1.1 ")
        {
            let line = &bytes[at..bytes.len().min(at + 24)];
            assert!(
                !contains(line, b" Unknown\r\n"),
                "a status without its reason phrase: {:?}",
                String::from_utf8_lossy(line)
            );
        }
        if let Some(v) = value_after(bytes, b"Mcp-Session-Id: ") {
            self.session = v;
        }
        if let Some(v) = value_after(bytes, b"sessionId=") {
            self.legacy = v;
        }
    }

    /// The peer of connection `n` ended its side.
    pub fn eof(&mut self, n: usize) {
        if let Some(id) = self.pick(n) {
            self.engine.handle_read_closed(self.now, id);
            self.settle();
        }
    }

    /// The driver dropped connection `n`'s socket.
    pub fn drop_conn(&mut self, n: usize) {
        if let Some(id) = self.pick(n) {
            self.engine.handle_closed(id);
            self.open.retain(|&o| o != id);
            self.shut.remove(&id);
            self.settle();
        }
    }

    /// The clock moves on by `by`; every due deadline fires.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        // A deadline handled may set another that is due already: bounded rounds.
        for _ in 0..16 {
            match self.engine.poll_timeout() {
                Some(at) if at <= self.now => {
                    self.engine.handle_timeout(self.now);
                    self.settle();
                }
                _ => break,
            }
        }
    }

    /// What must hold after every step: the driver's sockets are the engine's connections.
    pub fn check(&self) {
        let counters = self.engine.counters();
        assert_eq!(
            counters.connections,
            self.engine.connection_count(),
            "the connection counter drifted from the connections held"
        );
        assert_eq!(
            self.open.len(),
            self.engine.connection_count(),
            "the engine forgot a connection without telling the driver, or kept one it closed"
        );
    }

    /// Closes everything, in the way `how` picks, and asserts that nothing is left.
    pub fn finish(&mut self, how: usize) {
        match how % 3 {
            0 => {
                for id in self.open.clone() {
                    self.engine.handle_closed(id);
                }
                self.open.clear();
                self.settle();
            }
            1 => {
                for id in self.open.clone() {
                    self.engine.handle_read_closed(self.now, id);
                    self.settle();
                }
                self.flush();
                // What is left lingers at most LINGER (2 s).
                self.advance(Duration::from_secs(3));
                self.flush();
            }
            _ => {
                self.engine.begin_shutdown(self.now);
                self.settle();
                self.flush();
                self.advance(Duration::from_secs(3));
                self.flush();
            }
        }
        assert_eq!(self.engine.connection_count(), 0, "connections left open");
        let c = self.engine.counters();
        assert_eq!(
            (c.connections, c.sse_streams, c.websockets, c.mcp_streams),
            (0, 0, 0, 0),
            "counters left non-zero: {c:?}"
        );
    }

    /// Runs a script (see the module docs) and then [`Driver::finish`].
    pub fn run_script(input: &[u8]) {
        Driver::run_script_traced(input, false);
    }

    /// [`Driver::run_script`], printing what the peers take when `trace` is set.
    pub fn run_script_traced(input: &[u8], trace: bool) {
        let policy = if contains(input, b"policy drop_oldest") {
            SlowConsumer::DropOldest
        } else {
            SlowConsumer::Disconnect
        };
        let mut d = Driver::new(small_config(policy));
        d.trace = trace;
        // Bound the work of one input: the fuzzer wants many short runs.
        for line in input.split(|&b| b == b'\n').take(256) {
            d.command(line);
        }
        d.finish(input.len());
    }

    /// Runs one script line.
    pub fn command(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.splitn(2, ' ');
        let verb = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        match verb {
            "open" => {
                let peer = rest.trim().parse().unwrap_or(1);
                self.open(peer);
            }
            "send" => {
                let (c, text) = conn_and(rest);
                let bytes = self.expand(text);
                self.input(c, &bytes);
            }
            "split" => {
                let (c, rest) = conn_and(rest);
                let (k, text) = number_and(rest);
                let bytes = self.expand(text);
                self.input_split(c, &bytes, k);
            }
            "get" => {
                let (c, path) = conn_and(rest);
                let path = String::from_utf8_lossy(&self.expand(path)).into_owned();
                let session = self.session_header(&path);
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{session}\r\n"
                );
                self.input(c, req.as_bytes());
            }
            "post" | "mcp" | "chunked" => {
                let (c, rest) = conn_and(rest);
                let (path, rest) = if verb == "mcp" {
                    ("/mcp", rest)
                } else {
                    rest.split_once(' ').unwrap_or((rest, ""))
                };
                let (k, body) = if verb == "chunked" {
                    number_and(rest)
                } else {
                    (0, rest)
                };
                let path = String::from_utf8_lossy(&self.expand(path)).into_owned();
                let body = self.expand(body);
                let bytes = self.post_bytes(&path, &body, k);
                self.input(c, &bytes);
            }
            "upgrade" => {
                let (c, rest) = conn_and(rest);
                let (path, protocol) = rest.split_once(' ').unwrap_or((rest, ""));
                let protocol = if protocol.is_empty() {
                    String::new()
                } else {
                    format!("Sec-WebSocket-Protocol: {protocol}\r\n")
                };
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{protocol}\r\n"
                );
                self.input(c, req.as_bytes());
            }
            "ws" => {
                let (c, text) = conn_and(rest);
                let payload = self.expand(text);
                self.input(c, &client_frame(true, 1, &payload, true));
            }
            "wsframe" => {
                let (c, rest) = conn_and(rest);
                let (opcode, rest) = number_and(rest);
                let (fin, rest) = number_and(rest);
                let (masked, text) = number_and(rest);
                let payload = self.expand(text);
                let frame = client_frame(fin != 0, opcode as u8 & 0x0f, &payload, masked != 0);
                self.input(c, &frame);
            }
            "write" => {
                let (c, rest) = conn_and(rest);
                let (n, _) = number_and(rest);
                self.write(c, n);
            }
            "flush" => self.flush(),
            "eof" => self.eof(conn_and(rest).0),
            "drop" => self.drop_conn(conn_and(rest).0),
            "publish" => {
                let (topic, data) = rest.split_once(' ').unwrap_or((rest, "null"));
                let data =
                    serde_json::from_slice(&self.expand(data)).unwrap_or(serde_json::Value::Null);
                if let Ok(id) = self.engine.publish(self.now, topic, None, &data) {
                    self.last_id = id.to_string();
                }
                self.settle();
            }
            "advance" => {
                let (ms, _) = number_and(rest);
                self.advance(Duration::from_millis(ms.min(3_600_000) as u64));
            }
            "feature" => {
                let (name, on) = rest.split_once(' ').unwrap_or((rest, "off"));
                if let Some(f) = Feature::ALL.iter().find(|f| f.name() == name) {
                    self.engine.set_feature(self.now, *f, on == "on");
                    self.settle();
                }
            }
            "shutdown" => {
                self.engine.begin_shutdown(self.now);
                self.settle();
            }
            "policy" | "" => {}
            _ => {
                let n = self.open.len().saturating_sub(1);
                let bytes = self.expand(&text);
                self.input(n, &bytes);
            }
        }
    }

    fn session_header(&self, path: &str) -> String {
        if path.starts_with("/mcp") {
            format!("Mcp-Session-Id: {}\r\n", self.session)
        } else {
            String::new()
        }
    }

    /// A POST of `body` to `path`; chunked in chunks of `chunk` bytes unless `chunk` is 0.
    pub fn post_bytes(&self, path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
        let session = self.session_header(path);
        let framing = if chunk == 0 {
            format!("Content-Length: {}\r\n", body.len())
        } else {
            "Transfer-Encoding: chunked\r\n".to_string()
        };
        let mut out = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{session}{framing}\r\n"
        )
        .into_bytes();
        if chunk == 0 {
            out.extend_from_slice(body);
        } else {
            out.extend(chunked(body, chunk));
        }
        out
    }

    /// Unescapes `text` and fills in its placeholders.
    pub fn expand(&self, text: &str) -> Vec<u8> {
        let text = text
            .replace("{sid}", &self.session)
            .replace("{legacy}", &self.legacy)
            .replace("{last}", &self.last_id);
        unescape(&text)
    }
}

/// The value after `key` up to the end of its line (or a `&`, `"` or space).
fn value_after(bytes: &[u8], key: &[u8]) -> Option<String> {
    let at = bytes.windows(key.len()).rposition(|w| w == key)? + key.len();
    let rest = &bytes[at..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n' | b'&' | b'"' | b' '))
        .unwrap_or(rest.len());
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    (!v.is_empty() && v.len() <= 64).then(|| v.to_string())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A leading connection number and the rest.
fn conn_and(text: &str) -> (usize, &str) {
    number_and(text)
}

/// A leading decimal number (0 when there is none) and the rest after one space.
fn number_and(text: &str) -> (usize, &str) {
    let (head, rest) = text.split_once(' ').unwrap_or((text, ""));
    (head.parse().unwrap_or(0), rest)
}

/// Decodes the script's escapes and `{c*N}` repetitions.
pub fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => {
                let (b, used) = match bytes[i + 1] {
                    b'r' => (b'\r', 2),
                    b'n' => (b'\n', 2),
                    b't' => (b'\t', 2),
                    b'0' => (0, 2),
                    b'x' => match bytes
                        .get(i + 2..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => (b, 4),
                        None => (b'x', 2),
                    },
                    other => (other, 2),
                };
                out.push(b);
                i += used;
            }
            b'{' => {
                // `{c*N}`: c repeated N times.
                let rest = &text[i..];
                let rep = rest.find('}').and_then(|end| {
                    let inner = &rest[1..end];
                    let (c, n) = inner.split_once('*')?;
                    let n: usize = n.parse().ok()?;
                    (c.len() == 1 && n <= 100_000).then(|| (c.as_bytes()[0], n, end))
                });
                match rep {
                    Some((c, n, end)) => {
                        out.extend(std::iter::repeat_n(c, n));
                        i += end + 1;
                    }
                    None => {
                        out.push(b'{');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A client frame; masked with a fixed non-trivial key when `masked`.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
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
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// `body` in chunked encoding, in chunks of `size` bytes, with the last chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
