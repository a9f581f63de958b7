//! WebSocket: the inline upgrade, sessions on tungstenite over an in-memory stream, and the
//! encoding of server frames that many connections share.
//!
//! tungstenite never sees a socket. Bytes read by the driver are handed to
//! [`Session::receive`], which runs tungstenite's reader over them; whatever tungstenite writes
//! (pongs, close replies, our own replies) lands in an in-memory buffer that the engine moves into
//! the connection's bounded write queue. Every limit comes from our config: the read buffer is
//! small so that an idle connection costs little, and frames and messages are capped at
//! `max_message_bytes`. Frames published to many connections are not written through tungstenite
//! at all: a server frame is unmasked, so one encoding ([`text_frame`]) serves every client.

use std::io::{self, Read, Write};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error, Message};

use super::http::Request;

/// tungstenite's read buffer per connection: small, because every idle connection keeps it.
const READ_BUFFER_BYTES: usize = 256;

/// Why an upgrade request was refused, with the status and reason the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpgradeError {
    /// The response status.
    pub status: u16,
    /// The `error` of the JSON body.
    pub reason: &'static str,
}

/// Whether `request` asks for a WebSocket upgrade at all (an `Upgrade: websocket` header).
pub fn wants_upgrade(request: &Request) -> bool {
    request.header_has_token("upgrade", "websocket")
}

/// Checks an upgrade request (RFC 6455 section 4.2.1) and returns the `101` response head.
/// With `subprotocol`, the client must offer it in `Sec-WebSocket-Protocol`, and the answer
/// selects it.
pub fn accept(request: &Request, subprotocol: Option<&str>) -> Result<Vec<u8>, UpgradeError> {
    let refuse = |reason| {
        Err(UpgradeError {
            status: 400,
            reason,
        })
    };
    if request.method != "GET" {
        return refuse("WebSocket upgrade needs GET");
    }
    if request.version != 1 {
        return refuse("WebSocket upgrade needs HTTP/1.1");
    }
    if !wants_upgrade(request) {
        return refuse("missing Upgrade: websocket");
    }
    if !request.header_has_token("connection", "upgrade") {
        return refuse("missing Connection: Upgrade");
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        return refuse("unsupported Sec-WebSocket-Version: 13 is required");
    }
    let key = request
        .header("sec-websocket-key")
        .map(str::trim)
        .unwrap_or("");
    if !is_websocket_key(key) {
        return refuse("invalid Sec-WebSocket-Key");
    }
    let selected = match subprotocol {
        Some(p) if request.header_has_token("sec-websocket-protocol", p) => {
            format!("Sec-WebSocket-Protocol: {p}\r\n")
        }
        Some(_) => return refuse("missing Sec-WebSocket-Protocol: mcp"),
        None => String::new(),
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{selected}\r\n"
    )
    .into_bytes())
}

/// Whether `key` is the base64 encoding of 16 bytes: 22 base64 characters and `==`.
fn is_websocket_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The frame of a text message from the server: unmasked, so one encoding serves every client.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x81); // FIN, text
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// The frame telling a slow client how many events it lost.
pub fn dropped(count: u64) -> Vec<u8> {
    text_frame(format!(r#"{{"type":"dropped","count":{count}}}"#).as_bytes())
}

/// The in-memory stream tungstenite reads from and writes to: bytes read from a socket go into
/// `input`, frames tungstenite writes land in `output` for the caller to send. Used by the
/// server's sessions and by the `bench` tool's client WebSockets.
#[derive(Debug, Default)]
pub struct Memory {
    /// Bytes to parse; tungstenite has taken those before `read_at`.
    pub input: Vec<u8>,
    /// How much of `input` tungstenite has taken.
    pub read_at: usize,
    /// Written by tungstenite, not yet sent.
    pub output: Vec<u8>,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.read_at..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read_at += n;
        Ok(n)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a client sent, as the engine cares about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message.
    Text(String),
    /// A complete binary message (the protocol has none: it gets an error reply).
    Binary,
    /// A pong (or any sign of life that is not a message).
    Pong,
    /// The client closed (its close frame was answered) or the close handshake finished.
    Closed,
}

/// Why a session must end, with the close code and reason to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The close code (1002 protocol error, 1007 invalid UTF-8, 1009 too big).
    pub code: u16,
    /// The reason in the close frame.
    pub reason: &'static str,
}

/// One WebSocket connection's protocol state.
#[derive(Debug)]
pub struct Session {
    ws: WebSocket<Memory>,
    /// A failure has ended the session: what comes after is not read (tungstenite's codec
    /// is left mid-frame by some failures, and must not be fed again).
    failed: bool,
}

impl Session {
    /// A server session whose frames and messages may not pass `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Session {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_write_buffer_size(max_message_bytes.saturating_add(1024))
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        Session {
            ws: WebSocket::from_raw_socket(Memory::default(), Role::Server, Some(config)),
            failed: false,
        }
    }

    /// Runs the protocol over `data`: returns what the client sent, or the failure that ends
    /// the session (after the messages before it). Bytes to send come from
    /// [`Session::take_output`].
    pub fn receive(&mut self, data: &[u8]) -> (Vec<Incoming>, Option<Failure>) {
        if self.failed {
            return (Vec::new(), None);
        }
        let memory = self.ws.get_mut();
        memory.input.extend_from_slice(data);
        let mut incoming = Vec::new();
        let failure = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => incoming.push(Incoming::Text(text.as_str().to_owned())),
                Ok(Message::Binary(_)) => incoming.push(Incoming::Binary),
                Ok(Message::Pong(_)) | Ok(Message::Ping(_)) => incoming.push(Incoming::Pong),
                Ok(Message::Close(_)) => {
                    incoming.push(Incoming::Closed);
                    break None;
                }
                Ok(Message::Frame(_)) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(Error::ConnectionClosed) | Err(Error::AlreadyClosed) => {
                    incoming.push(Incoming::Closed);
                    break None;
                }
                Err(Error::Capacity(_)) => {
                    break Some(Failure {
                        code: 1009,
                        reason: "message too big",
                    })
                }
                Err(Error::Utf8(_)) => {
                    break Some(Failure {
                        code: 1007,
                        reason: "invalid UTF-8",
                    })
                }
                Err(_) => {
                    break Some(Failure {
                        code: 1002,
                        reason: "protocol error",
                    })
                }
            }
        };
        self.failed = failure.is_some();
        // Pongs and close replies wait in tungstenite until flushed.
        let _ = self.ws.flush();
        let memory = self.ws.get_mut();
        let read_at = memory.read_at;
        memory.input.drain(..read_at);
        memory.read_at = 0;
        if memory.input.is_empty() {
            memory.input = Vec::new();
        }
        (incoming, failure)
    }

    /// Sends a text message of our own (a reply to this client alone), of any size: its frame
    /// is written straight into the output, after what tungstenite has written (pongs, a close
    /// reply), so tungstenite's write buffer neither refuses a large message (its cap is sized
    /// for what clients send) nor keeps its size for the connection's life.
    pub fn send_text(&mut self, text: String) {
        if self.ws.can_write() {
            let frame = text_frame(text.as_bytes());
            let output = &mut self.ws.get_mut().output;
            if output.is_empty() {
                *output = frame;
            } else {
                output.extend_from_slice(&frame);
            }
        }
    }

    /// Sends a ping.
    pub fn ping(&mut self) {
        if self.ws.can_write() {
            let _ = self.ws.send(Message::Ping(Default::default()));
        }
    }

    /// Starts the close handshake with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.ws.close(Some(frame));
    }

    /// Whether the session can still send messages (no close frame sent or received).
    pub fn is_open(&self) -> bool {
        self.ws.can_write()
    }

    /// The bytes written since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.ws.get_mut().output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    #[test]
    fn a_reply_larger_than_what_clients_may_send_goes_out_whole_after_a_pong() {
        let mut session = Session::new(1024);
        // A masked ping from the client: its pong must go out before the reply.
        let (incoming, failure) = session.receive(&[0x89, 0x80, 1, 2, 3, 4]);
        assert!(matches!(incoming[..], [Incoming::Pong]) && failure.is_none());
        let text = "y".repeat(200_000);
        session.send_text(text.clone());
        let output = session.take_output();
        assert_eq!(&output[..2], &[0x8a, 0x00], "the pong first");
        assert_eq!(&output[2..], &text_frame(text.as_bytes())[..]);
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/stream/ws".into(),
            query: String::new(),
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    const GOOD: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_example_key_is_accepted() {
        let head = String::from_utf8(accept(&request(&GOOD), None).unwrap()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn a_required_subprotocol_is_checked_and_selected() {
        let mut offered = GOOD.to_vec();
        offered.push(("Sec-WebSocket-Protocol", "chat, mcp"));
        let head = String::from_utf8(accept(&request(&offered), Some("mcp")).unwrap()).unwrap();
        assert!(head.contains("Sec-WebSocket-Protocol: mcp\r\n"), "{head}");
        assert_eq!(
            accept(&request(&GOOD), Some("mcp")).unwrap_err().reason,
            "missing Sec-WebSocket-Protocol: mcp"
        );
    }

    #[test]
    fn bad_upgrades_are_refused_with_a_reason() {
        for (drop, reason) in [
            (0, "missing Upgrade: websocket"),
            (1, "missing Connection: Upgrade"),
            (2, "unsupported Sec-WebSocket-Version: 13 is required"),
            (3, "invalid Sec-WebSocket-Key"),
        ] {
            let headers: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, h)| *h)
                .collect();
            assert_eq!(accept(&request(&headers), None).unwrap_err().reason, reason);
        }
        let mut bad_key = GOOD;
        bad_key[3].1 = "short==";
        assert_eq!(accept(&request(&bad_key), None).unwrap_err().status, 400);
    }

    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn messages_arrive_whatever_the_read_sizes() {
        let wire = [client_frame(1, b"hello"), client_frame(1, &[b'x'; 700])].concat();
        for step in [1, 3, 7, 64, wire.len()] {
            let mut s = Session::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                let (incoming, failure) = s.receive(piece);
                assert_eq!(failure, None);
                got.extend(incoming);
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Text("hello".into()),
                    Incoming::Text("x".repeat(700))
                ]
            );
        }
    }

    #[test]
    fn pings_are_answered_and_limits_give_their_close_codes() {
        let mut s = Session::new(16);
        let (incoming, failure) = s.receive(&client_frame(9, b"hi"));
        assert_eq!((incoming, failure), (vec![Incoming::Pong], None));
        let out = s.take_output();
        let (header, _) = FrameHeader::parse(&mut std::io::Cursor::new(&out))
            .unwrap()
            .unwrap();
        assert_eq!(format!("{:?}", header.opcode), "Control(Pong)");

        let (_, failure) = s.receive(&client_frame(1, &[b'a'; 17]));
        assert_eq!(failure.map(|f| f.code), Some(1009));

        let mut s = Session::new(16);
        let (_, failure) = s.receive(&client_frame(1, &[0xff, 0xfe]));
        assert_eq!(failure.map(|f| f.code), Some(1007));

        let mut s = Session::new(16);
        let unmasked = Frame::message(
            b"x".to_vec(),
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        );
        let mut raw = Vec::new();
        unmasked.format(&mut raw).unwrap();
        let (_, failure) = s.receive(&raw);
        assert_eq!(failure.map(|f| f.code), Some(1002));
    }

    #[test]
    fn a_client_close_is_answered() {
        let mut s = Session::new(64);
        let (incoming, _) = s.receive(&client_frame(8, &1000u16.to_be_bytes()));
        assert_eq!(incoming, vec![Incoming::Closed]);
        let out = s.take_output();
        assert_eq!(out[0], 0x88, "a close frame goes back");
        assert!(!s.is_open());
    }

    #[test]
    fn shared_frames_have_the_right_length_encoding() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        let mid = text_frame(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        let big = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&big[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
