//! WebSocket helpers of the loopback tests: a raw client that writes frames byte by byte as the
//! test says (masked or not, fragmented, malformed) and parses what the server sends, and a
//! tungstenite client for the tests that want a real, strict client (it checks every server
//! frame and answers pings by itself).
//!
//! Reads time out after [`WAIT`]: a test that waits for a frame that never comes fails instead
//! of hanging.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response as Handshake;
use tungstenite::protocol::WebSocket;
use tungstenite::{HandshakeError, Message};

use super::{find, request_bytes, Client, Response, WAIT};

/// The key every raw handshake sends (the example of RFC 6455, section 1.3).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` that answers [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The headers of a valid upgrade request.
pub fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ]
}

/// The bytes of `GET path` with `headers`.
pub fn upgrade_request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    request_bytes("GET", path, headers, b"")
}

/// A client frame: masked (with a fixed, non-trivial key) unless `masked` is false.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
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

/// A complete masked text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(true, OP_TEXT, payload.as_bytes(), true)
}

/// A close frame's payload: the code and the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame from the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1-3 bits, as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.payload[..self.payload.len().min(200)];
        write!(
            f,
            "Frame(op {:#x}, fin {}, {} bytes: {:?})",
            self.opcode,
            self.fin,
            self.payload.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

impl Frame {
    /// The payload of a text frame as JSON; panics on any other frame.
    pub fn json(&self) -> Value {
        assert_eq!(self.opcode, OP_TEXT, "expected a text frame, got {self:?}");
        assert!(self.fin, "unexpected fragmented message {self:?}");
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {self:?}"))
    }

    /// The code and reason of a close frame; panics on any other frame.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(
            self.opcode, OP_CLOSE,
            "expected a close frame, got {self:?}"
        );
        assert!(self.payload.len() >= 2, "close frame without a code");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("utf-8 close reason");
        (code, reason)
    }
}

/// Parses one server frame at the start of `buf`: the frame and its length on the wire, or
/// `None` when `buf` holds only part of it. Panics on a masked server frame.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0x7;
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "the server sent a masked frame");
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (u64::from(n), 2),
    };
    let end = at + usize::try_from(len).expect("frame length fits usize");
    if buf.len() < end {
        return None;
    }
    Some((
        Frame {
            fin,
            rsv,
            opcode,
            payload: buf[at..end].to_vec(),
        },
        end,
    ))
}

/// A WebSocket connection driven by hand over a [`Client`].
pub struct RawWs {
    pub client: Client,
    /// The connection id from the welcome.
    pub id: String,
}

impl RawWs {
    /// Connects to `/stream/ws`, completes the upgrade and reads the welcome.
    pub fn connect(addr: SocketAddr) -> RawWs {
        RawWs::over(Client::connect(addr))
    }

    /// Upgrades an already connected client (for example one with a small receive buffer).
    pub fn over(mut client: Client) -> RawWs {
        client.send(&upgrade_request("/stream/ws", &upgrade_headers()));
        let head = client.read_head();
        assert_switched(&head);
        let mut ws = RawWs {
            client,
            id: String::new(),
        };
        ws.id = assert_welcome(&ws.next_json());
        ws
    }

    /// Wraps a client whose upgrade the test has done itself.
    pub fn upgraded(client: Client) -> RawWs {
        RawWs {
            client,
            id: String::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.client.send(bytes);
    }

    /// Sends `value` as a masked text frame.
    pub fn send_json(&mut self, value: &Value) {
        self.send_raw(&text(&value.to_string()));
    }

    /// The next frame, or `None` at end of stream or on a reset. With `lenient`, an end in the
    /// middle of a frame is an end too (the partial frame stays in the client's buffer);
    /// otherwise it panics.
    fn read_frame(&mut self, lenient: bool) -> Option<Frame> {
        loop {
            if let Some((frame, n)) = parse_frame(&self.client.buf) {
                self.client.buf.drain(..n);
                return Some(frame);
            }
            match self.client.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "reading a WebSocket frame: {e}; have {} bytes",
                    self.client.buf.len()
                ),
            }
        }
        assert!(
            lenient || self.client.buf.is_empty(),
            "the stream ended in the middle of a frame: {:?}",
            String::from_utf8_lossy(&self.client.buf[..self.client.buf.len().min(100)])
        );
        None
    }

    /// The next frame, or `None` at end of stream (a reset counts as the end). Panics if the
    /// stream ends in the middle of a frame.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        self.read_frame(false)
    }

    /// Like [`RawWs::try_next_frame`], but an end in the middle of a frame is an end too.
    pub fn try_next_frame_lenient(&mut self) -> Option<Frame> {
        self.read_frame(true)
    }

    /// The next frame; panics at end of stream.
    pub fn next_frame(&mut self) -> Frame {
        self.try_next_frame()
            .expect("the connection ended while a frame was expected")
    }

    /// The next data frame as JSON: server pings are skipped (not answered).
    pub fn next_json(&mut self) -> Value {
        loop {
            let frame = self.next_frame();
            if frame.opcode != OP_PING {
                return frame.json();
            }
        }
    }

    /// Expects a close frame next (pings skipped): returns its code and reason.
    pub fn next_close(&mut self) -> (u16, String) {
        loop {
            let frame = self.next_frame();
            if frame.opcode != OP_PING {
                return frame.close();
            }
        }
    }

    /// Expects the end of the stream with no frame before it.
    pub fn expect_eof(&mut self) {
        if let Some(frame) = self.try_next_frame() {
            panic!("expected the end of the stream, got {frame:?}");
        }
    }

    /// Sends `{"type":"ping"}` and expects `{"type":"pong"}` as the next message: everything
    /// the server queued for this connection before it read the ping has been read when this
    /// returns, so nothing else was queued if the pong comes first.
    pub fn barrier(&mut self) {
        self.send_json(&serde_json::json!({"type": "ping"}));
        let v = self.next_json();
        assert_eq!(v, serde_json::json!({"type": "pong"}), "before the pong");
    }
}

/// Asserts a `101` that accepts [`KEY`].
pub fn assert_switched(head: &Response) {
    assert_eq!(head.status, 101, "{head:?}");
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head:?}"
    );
    assert!(
        head.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{head:?}"
    );
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some(ACCEPT),
        "{head:?}"
    );
}

/// Asserts a welcome message and returns the connection id it carries.
pub fn assert_welcome(v: &Value) -> String {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("welcome is not an object: {v}"));
    assert_eq!(obj.len(), 3, "welcome has other keys: {v}");
    assert_eq!(v["type"], "welcome", "{v}");
    assert_eq!(v["data"], "Connected to MCP server", "{v}");
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome id is not a string: {v}"));
    assert!(!id.is_empty(), "{v}");
    id.to_string()
}

/// A tungstenite client connection with the id its welcome gave.
pub struct Ws {
    pub socket: WebSocket<TcpStream>,
    pub id: String,
}

impl Ws {
    /// Connects to `ws://addr{path}` with tungstenite and reads the welcome.
    pub fn connect_path(addr: SocketAddr, path: &str) -> Ws {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Ws::over(stream, path)
    }

    /// Connects to `ws://addr/stream/ws` and reads the welcome.
    pub fn connect(addr: SocketAddr) -> Ws {
        Ws::connect_path(addr, "/stream/ws")
    }

    /// Runs the client handshake over `stream`, then reads the welcome.
    pub fn over(stream: TcpStream, path: &str) -> Ws {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{}{path}", stream.peer_addr().unwrap());
        let (socket, response) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        let mut ws = Ws {
            socket,
            id: String::new(),
        };
        ws.id = assert_welcome(&ws.next_json());
        ws
    }

    pub fn send_json(&mut self, value: &Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .unwrap_or_else(|e| panic!("sending {value}: {e}"));
    }

    /// The next message. Pings are answered by tungstenite (the pong leaves with the next read
    /// or write) and skipped.
    pub fn next_message(&mut self) -> Message {
        loop {
            match self.socket.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(m) => return m,
                Err(e) => panic!("reading a WebSocket message: {e}"),
            }
        }
    }

    /// The next message, which must be a text message of JSON.
    pub fn next_json(&mut self) -> Value {
        match self.next_message() {
            Message::Text(t) => serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("message is not JSON ({e}): {t}")),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Sends `{"type":"ping"}` and expects `{"type":"pong"}` as the next message (see
    /// [`RawWs::barrier`]).
    pub fn barrier(&mut self) {
        self.send_json(&serde_json::json!({"type": "ping"}));
        let v = self.next_json();
        assert_eq!(v, serde_json::json!({"type": "pong"}), "before the pong");
    }

    /// Joins `room` and expects the `joined` reply.
    pub fn join(&mut self, room: &str) {
        self.send_json(&serde_json::json!({"type": "join", "room": room}));
        let v = self.next_json();
        assert_eq!(v, serde_json::json!({"type": "joined", "room": room}));
    }
}

/// Whether `haystack` holds `needle` (for raw byte checks).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// Writes `bytes` to `stream` one byte per write (each its own segment: `TCP_NODELAY`).
pub fn write_bytewise(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_nodelay(true).unwrap();
    for b in bytes {
        stream.write_all(&[*b]).expect("write one byte");
    }
}

/// A tungstenite client's handshake at `ws://addr/mcp` offering `protocols` (a
/// `Sec-WebSocket-Protocol` value): the socket and the `101`, or why it failed.
pub fn mcp_handshake(
    addr: SocketAddr,
    protocols: &str,
) -> Result<(WebSocket<TcpStream>, Handshake), tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let _ = stream.set_nodelay(true);
    let mut request = format!("ws://{addr}/mcp")
        .into_client_request()
        .expect("a request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    match tungstenite::client::client(request, stream) {
        Ok(done) => Ok(done),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}
