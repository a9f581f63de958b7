//! Sans-IO codecs of the load generator: the bytes it sends (requests, publishes, the baseline's
//! framed events) and incremental parsers for what it reads (an HTTP response head, chunked
//! bodies, SSE blocks, pipelined publish answers, the stamp inside a delivered event). No
//! sockets and no clock here.

use std::io::{self, Read, Write};
use std::sync::LazyLock;

use memchr::memmem::{self, Finder};

/// The event name every benchmark message carries.
pub const EVENT: &str = "bench";
/// The largest response head accepted (a server's 101 or 200).
pub const MAX_HEAD: usize = 16 * 1024;

/// The `data` JSON of message `seq`, sent at `sent_ns` (nanoseconds since the run's epoch),
/// padded to exactly `payload` bytes (`payload` is at least [`super::options::MIN_PAYLOAD`]).
pub fn message_data(seq: u64, sent_ns: u64, payload: usize) -> String {
    let mut s = format!("{{\"seq\":{seq},\"t\":{sent_ns},\"pad\":\"");
    let pad = payload.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The request that opens an SSE subscription.
pub fn sse_request(host: &str, topic: &str) -> Vec<u8> {
    format!(
        "GET /stream/sse?topic={topic} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .into_bytes()
}

/// The WebSocket upgrade request (a fixed key: the answer is checked by status only).
pub fn ws_request(host: &str) -> Vec<u8> {
    format!(
        "GET /stream/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// The `join` message of a WebSocket subscriber.
pub fn join_message(topic: &str) -> String {
    format!("{{\"type\":\"join\",\"room\":\"{topic}\"}}")
}

/// One pipelined `POST /stream/publish` carrying `data`.
pub fn publish_request(host: &str, topic: &str, data: &str, out: &mut Vec<u8>) {
    let body = format!("{{\"topic\":\"{topic}\",\"event\":\"{EVENT}\",\"data\":{data}}}");
    out.extend_from_slice(
        format!(
            "POST /stream/publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// A WebSocket `publish` message carrying `data`.
pub fn publish_message(topic: &str, data: &str) -> String {
    format!("{{\"type\":\"publish\",\"topic\":\"{topic}\",\"event\":\"{EVENT}\",\"data\":{data}}}")
}

/// The envelope a server delivers, as the baseline writes it.
pub fn envelope(topic: &str, id: &str, data: &str) -> String {
    format!(
        "{{\"type\":\"event\",\"topic\":\"{topic}\",\"event\":\"{EVENT}\",\"id\":\"{id}\",\"data\":{data}}}"
    )
}

/// What one delivered SSE block or WebSocket message is to the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A benchmark message: its sequence number and send time (ns since the run's epoch).
    Stamp(u64, u64),
    /// The server says this many events were dropped here (`drop_oldest`).
    Dropped(u64),
    /// A WebSocket `joined` answer.
    Joined,
    /// A WebSocket `published` answer.
    Published,
    /// A WebSocket `error` message.
    Error,
    /// Anything else (welcome, connected, pings, recovery...).
    Other,
}

/// Searchers built once: the stamp is looked for in every delivered copy.
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
static BLANK_LINE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));

fn number_after(hay: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(hay)? + key.needle().len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&hay[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Classifies a WebSocket text message or an SSE block (the whole block: its `event:` line and
/// its `data:` lines).
pub fn classify(msg: &[u8]) -> Item {
    if let Some(seq) = number_after(msg, &SEQ) {
        if let Some(t) = number_after(msg, &SENT) {
            return Item::Stamp(seq, t);
        }
    }
    if let Some(n) = number_after(msg, &Finder::new(b"\"dropped\":")) {
        return Item::Dropped(n); // SSE: event: dropped, data: {"dropped":N}
    }
    let kind = |k: &[u8]| memmem::find(msg, k).is_some();
    if kind(b"\"type\":\"dropped\"") {
        return Item::Dropped(number_after(msg, &Finder::new(b"\"count\":")).unwrap_or(0));
    }
    if kind(b"\"type\":\"joined\"") {
        return Item::Joined;
    }
    if kind(b"\"type\":\"published\"") {
        return Item::Published;
    }
    if kind(b"\"type\":\"error\"") {
        return Item::Error;
    }
    Item::Other
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Connection: close`.
    pub close: bool,
}

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let mut head = Head {
                status: resp.code.unwrap_or(0),
                len,
                chunked: false,
                content_length: None,
                close: false,
            };
            for h in resp.headers.iter() {
                let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    head.chunked = value.contains("chunked");
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    head.content_length = value.trim().parse().ok();
                } else if h.name.eq_ignore_ascii_case("connection") {
                    head.close = value.split(',').any(|t| t.trim() == "close");
                }
            }
            Ok(Some(head))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(format!("response head over {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("bad response head: {e}")),
    }
}

/// Incremental `Transfer-Encoding: chunked` decoding.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq)]
enum ChunkState {
    /// Reading a size line.
    #[default]
    Size,
    /// Inside a chunk: bytes left.
    Data(usize),
    /// The CRLF after a chunk.
    DataEnd,
    /// Trailer lines after the last chunk.
    Trailer,
    /// The body ended.
    Done,
}

impl Dechunk {
    /// Decodes `input`, appending the body bytes to `out`. `Ok(true)` once the body has ended.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(nl) = memchr::memchr(b'\n', input) else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 1024 {
                            return Err("chunk size line over 1024 bytes".into());
                        }
                        return Ok(false);
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    let line = String::from_utf8_lossy(&self.line).trim().to_string();
                    self.line.clear();
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    match input[0] {
                        b'\r' => {}
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err("no CRLF after a chunk".into()),
                    }
                    input = &input[1..];
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// An SSE body cut into blocks (events end with a blank line, `\n\n`).
#[derive(Debug, Default)]
pub struct SseBody {
    chunked: Option<Dechunk>,
    buf: Vec<u8>,
    /// Where the unfinished block starts in `buf`.
    start: usize,
    /// Where to resume looking for the blank line.
    scan: usize,
}

impl SseBody {
    /// A body, chunked or not.
    pub fn new(chunked: bool) -> SseBody {
        SseBody {
            chunked: chunked.then(Dechunk::default),
            ..SseBody::default()
        }
    }

    /// Feeds body bytes; calls `block` with every complete block. `Err` on bad chunking, or a
    /// block over `max_block` bytes.
    pub fn feed(
        &mut self,
        input: &[u8],
        max_block: usize,
        mut block: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        match &mut self.chunked {
            Some(d) => {
                d.feed(input, &mut self.buf)?;
            }
            None => self.buf.extend_from_slice(input),
        }
        while let Some(at) = BLANK_LINE.find(&self.buf[self.scan..]) {
            let end = self.scan + at + 2;
            block(&self.buf[self.start..end]);
            self.start = end;
            self.scan = end;
        }
        self.scan = self.buf.len().saturating_sub(1).max(self.start);
        if self.buf.len() - self.start > max_block {
            return Err(format!("an SSE block over {max_block} bytes"));
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        Ok(())
    }
}

/// Pipelined HTTP answers to the publisher, counted by status.
#[derive(Debug, Default)]
pub struct Answers {
    buf: Vec<u8>,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with another status; the first one's status and body.
    pub failed: u64,
    /// The first failure, as `STATUS BODY`.
    pub first_failure: Option<String>,
    /// The server said `Connection: close`.
    pub closing: bool,
}

impl Answers {
    /// Feeds bytes read from the publisher's connection.
    pub fn feed(&mut self, input: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(input);
        let mut at = 0;
        while let Some(head) = parse_head(&self.buf[at..])? {
            if head.chunked {
                return Err("a chunked answer to a publish (expected Content-Length)".into());
            }
            let body = head.content_length.unwrap_or(0);
            if self.buf.len() - at < head.len + body {
                break;
            }
            if (200..300).contains(&head.status) {
                self.ok += 1;
            } else {
                self.failed += 1;
                if self.first_failure.is_none() {
                    let text = &self.buf[at + head.len..at + head.len + body];
                    self.first_failure = Some(format!(
                        "{} {}",
                        head.status,
                        String::from_utf8_lossy(&text[..text.len().min(200)])
                    ));
                }
            }
            self.closing |= head.close;
            at += head.len + body;
        }
        self.buf.drain(..at);
        Ok(())
    }
}

/// The in-memory stream a client WebSocket runs over: bytes read from the socket go into
/// `input`; frames tungstenite writes land in `output`, which the driver sends.
#[derive(Debug, Default)]
pub struct Mem {
    /// Read from the socket, not yet parsed.
    pub input: Vec<u8>,
    /// How much of `input` tungstenite has taken.
    pub pos: usize,
    /// Written by tungstenite, not yet sent.
    pub output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            self.input.clear();
            self.pos = 0;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_stream::proto::sse::event_block;

    #[test]
    fn data_is_padded_to_the_payload_size_and_stamps_parse_back() {
        for payload in [64, 200, 4096] {
            let d = message_data(u64::MAX, u64::MAX, payload);
            assert_eq!(d.len(), payload);
            serde_json::from_str::<serde_json::Value>(&d).unwrap();
        }
        let d = message_data(42, 123_456_789, 200);
        let env = envelope("bench", "ab-3", &d);
        assert_eq!(classify(env.as_bytes()), Item::Stamp(42, 123_456_789));
        assert_eq!(
            classify(&event_block("ab-3", EVENT, &env)),
            Item::Stamp(42, 123_456_789)
        );
    }

    #[test]
    fn server_messages_are_classified() {
        assert_eq!(
            classify(b"event: dropped\ndata: {\"dropped\":7}\n\n"),
            Item::Dropped(7)
        );
        assert_eq!(
            classify(br#"{"type":"dropped","count":3}"#),
            Item::Dropped(3)
        );
        assert_eq!(classify(br#"{"type":"joined","room":"r"}"#), Item::Joined);
        assert_eq!(
            classify(br#"{"type":"published","topic":"t","id":"1"}"#),
            Item::Published
        );
        assert_eq!(classify(br#"{"type":"error","error":"no"}"#), Item::Error);
        assert_eq!(classify(b": ping\n\n"), Item::Other);
    }

    #[test]
    fn sse_blocks_split_across_reads_chunked_or_not() {
        let mut body = Vec::new();
        for i in 0..5 {
            body.extend(event_block(
                &i.to_string(),
                EVENT,
                &envelope("t", "x", &message_data(i, i, 64)),
            ));
        }
        let mut chunked = Vec::new();
        for piece in body.chunks(37) {
            chunked.extend(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend(piece);
            chunked.extend(b"\r\n");
        }
        chunked.extend(b"0\r\n\r\n");
        for (is_chunked, bytes) in [(false, &body), (true, &chunked)] {
            for step in [1, 7, 1000] {
                let mut sse = SseBody::new(is_chunked);
                let mut seqs = Vec::new();
                for piece in bytes.chunks(step) {
                    sse.feed(piece, 4096, |b| {
                        if let Item::Stamp(s, _) = classify(b) {
                            seqs.push(s)
                        }
                    })
                    .unwrap();
                }
                assert_eq!(
                    seqs,
                    vec![0, 1, 2, 3, 4],
                    "chunked {is_chunked}, step {step}"
                );
            }
        }
        let mut sse = SseBody::new(false);
        assert!(sse.feed(&[b'x'; 100], 64, |_| {}).is_err());
    }

    #[test]
    fn pipelined_answers_are_counted() {
        let mut a = Answers::default();
        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\n{\"ids\":[]}";
        let bad = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlarge";
        let all: Vec<u8> = [&ok[..], &ok[..], &bad[..]].concat();
        for piece in all.chunks(9) {
            a.feed(piece).unwrap();
        }
        assert_eq!((a.ok, a.failed, a.closing), (2, 1, true));
        assert_eq!(a.first_failure.as_deref(), Some("413 large"));
    }

    #[test]
    fn heads_and_frames() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.chunked, h.len), (200, true, 47));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
