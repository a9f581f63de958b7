//! Sans-IO codecs of the load generator: the bytes it sends (requests, publishes, the baseline's
//! framed events) and incremental parsers for what it reads (an HTTP response head, chunked
//! bodies, SSE blocks, pipelined publish answers, the stamp inside a delivered event). No
//! sockets and no clock here.

use std::sync::LazyLock;

use mcp_stream::proto::http::{BodyDecoder, ChunkState, HttpError};
use mcp_stream::proto::ws::Memory;

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
static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":"));
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
static DROPPED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"dropped\":"));
static COUNT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"count\":"));

/// The number right after the first `key` in `hay`, and where that number ends.
fn number_after(hay: &[u8], key: &Finder<'_>) -> Option<(u64, usize)> {
    let at = key.find(hay)? + key.needle().len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&hay[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((n, at + digits))
}

/// The bench's stamp: `seq` then `t`, looked for inside the event's `"data":` (the whole
/// message when there is no such key), so that a server envelope's own `seq` or `t` around
/// the data is not taken for ours.
fn stamp(msg: &[u8]) -> Option<(u64, u64)> {
    let data = DATA
        .find(msg)
        .map_or(msg, |at| &msg[at + DATA.needle().len()..]);
    let (seq, end) = number_after(data, &SEQ)?;
    let (t, _) = number_after(&data[end..], &SENT)?;
    Some((seq, t))
}

/// Classifies a WebSocket text message or an SSE block (the whole block: its `event:` line and
/// its `data:` lines).
pub fn classify(msg: &[u8]) -> Item {
    if let Some((seq, t)) = stamp(msg) {
        return Item::Stamp(seq, t);
    }
    if let Some((n, _)) = number_after(msg, &DROPPED) {
        return Item::Dropped(n); // SSE: event: dropped, data: {"dropped":N}
    }
    let kind = |k: &[u8]| memmem::find(msg, k).is_some();
    if kind(b"\"type\":\"dropped\"") {
        return Item::Dropped(number_after(msg, &COUNT).map_or(0, |(n, _)| n));
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
                    let n = value.trim().parse();
                    head.content_length =
                        Some(n.map_err(|_| format!("bad Content-Length {:?}", value.trim()))?);
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

/// The largest body of an answer to a publish (an error message, say).
pub const MAX_ANSWER_BODY: usize = 64 * 1024;
/// Bytes of chunk framing (a size line, trailers) held at most.
const MAX_FRAMING: usize = 4096;

/// A chunked body's decoder and the framing bytes it has not taken yet.
#[derive(Debug)]
struct Dechunk {
    decoder: BodyDecoder,
    held: Vec<u8>,
    done: bool,
}

impl Dechunk {
    /// Decodes `input`, appending the body bytes to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let error = |e: HttpError| format!("bad chunked body: {}", e.reason);
        let decoded = if self.held.is_empty() {
            let d = self
                .decoder
                .decode(input, out, usize::MAX, MAX_FRAMING)
                .map_err(error)?;
            self.held.extend_from_slice(&input[d.consumed..]);
            d
        } else {
            self.held.extend_from_slice(input);
            let d = self
                .decoder
                .decode(&self.held, out, usize::MAX, MAX_FRAMING)
                .map_err(error)?;
            self.held.drain(..d.consumed);
            d
        };
        self.done = decoded.done;
        Ok(())
    }
}

/// An SSE body cut into blocks: an event ends with a blank line, and lines end with CRLF, LF
/// or CR (the SSE specification allows all three).
#[derive(Debug, Default)]
pub struct SseBody {
    chunked: Option<Dechunk>,
    buf: Vec<u8>,
    /// Where the unfinished block starts in `buf`.
    start: usize,
    /// Where the current line starts in `buf`.
    line: usize,
    /// The last line ended with CR: an LF right after it belongs to that line ending.
    after_cr: bool,
}

impl SseBody {
    /// A body, chunked or not.
    pub fn new(chunked: bool) -> SseBody {
        SseBody {
            chunked: chunked.then(|| Dechunk {
                decoder: BodyDecoder::Chunked(ChunkState::Size),
                held: Vec::new(),
                done: false,
            }),
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
            Some(d) => d.feed(input, &mut self.buf)?,
            None => self.buf.extend_from_slice(input),
        }
        loop {
            if self.after_cr {
                let Some(&next) = self.buf.get(self.line) else {
                    break;
                };
                self.after_cr = false;
                if next == b'\n' {
                    if self.start == self.line {
                        self.start += 1; // the LF of a CRLF that ended the last block
                    }
                    self.line += 1;
                }
            }
            let Some(k) = memchr::memchr2(b'\n', b'\r', &self.buf[self.line..]) else {
                break;
            };
            let at = self.line + k;
            self.after_cr = self.buf[at] == b'\r';
            self.line = at + 1;
            if k == 0 {
                // A blank line: the block ends (a CR alone ends it now, not at the next byte).
                block(&self.buf[self.start..self.line]);
                self.start = self.line;
            }
        }
        if self.buf.len() - self.start > max_block {
            return Err(format!("an SSE block over {max_block} bytes"));
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.line = 0;
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.line -= self.start;
            self.start = 0;
        }
        Ok(())
    }
}

/// Pipelined HTTP answers to the publisher, counted by status. What it holds is bounded: one
/// unfinished answer, its head at most [`MAX_HEAD`] and its body at most [`MAX_ANSWER_BODY`].
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
    /// Feeds bytes read from the publisher's connection. `Err` on a bad head, a chunked answer
    /// or a body over [`MAX_ANSWER_BODY`].
    pub fn feed(&mut self, input: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(input);
        let mut at = 0;
        while let Some(head) = parse_head(&self.buf[at..])? {
            if head.chunked {
                return Err("a chunked answer to a publish (expected Content-Length)".into());
            }
            let body = head.content_length.unwrap_or(0);
            if body > MAX_ANSWER_BODY {
                return Err(format!(
                    "an answer to a publish with a {body}-byte body (at most {MAX_ANSWER_BODY})"
                ));
            }
            let end = at + head.len + body;
            if self.buf.len() < end {
                break;
            }
            if (200..300).contains(&head.status) {
                self.ok += 1;
            } else {
                self.failed += 1;
                if self.first_failure.is_none() {
                    let text = &self.buf[at + head.len..end];
                    self.first_failure = Some(format!(
                        "{} {}",
                        head.status,
                        String::from_utf8_lossy(&text[..text.len().min(200)])
                    ));
                }
            }
            self.closing |= head.close;
            at = end;
        }
        self.buf.drain(..at);
        Ok(())
    }
}

/// Hands `data` to a WebSocket's in-memory stream, first dropping what tungstenite has taken.
pub fn give(memory: &mut Memory, data: &[u8]) {
    if memory.read_at == memory.input.len() {
        memory.input.clear();
        memory.read_at = 0;
    } else if memory.read_at > 64 * 1024 {
        memory.input.drain(..memory.read_at);
        memory.read_at = 0;
    }
    memory.input.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_stream::proto::hub::{Event, EventId};
    use mcp_stream::proto::sse::event_block;

    /// Our server's envelope of `data` on `topic`.
    fn envelope(topic: &str, data: &str) -> String {
        let id = EventId { epoch: 1, seq: 3 };
        let now = std::time::Instant::now();
        Event::new(id, topic.into(), EVENT, data, None, now).envelope()
    }

    #[test]
    fn data_is_padded_to_the_payload_size_and_stamps_parse_back() {
        for payload in [64, 200, 4096] {
            let d = message_data(u64::MAX, u64::MAX, payload);
            assert_eq!(d.len(), payload);
            serde_json::from_str::<serde_json::Value>(&d).unwrap();
        }
        let d = message_data(42, 123_456_789, 200);
        let env = envelope("bench", &d);
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
                &envelope("t", &message_data(i, i, 64)),
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

    #[test]
    fn a_huge_content_length_in_a_publish_answer_is_an_error_not_a_panic() {
        let mut a = Answers::default();
        let e = a
            .feed(b"HTTP/1.1 500 X\r\nContent-Length: 18446744073709551615\r\n\r\nabc")
            .unwrap_err();
        assert!(e.contains("18446744073709551615-byte body"), "{e}");
        let mut a = Answers::default();
        let big = format!(
            "HTTP/1.1 500 X\r\nContent-Length: {}\r\n\r\n",
            MAX_ANSWER_BODY + 1
        );
        assert!(a.feed(big.as_bytes()).is_err());
        let mut a = Answers::default();
        assert!(a
            .feed(b"HTTP/1.1 202 OK\r\nContent-Length: x\r\n\r\n")
            .is_err());
    }

    #[test]
    fn sse_blocks_end_with_crlf_cr_or_lf_lines() {
        let data = |i| envelope("t", &message_data(i, i + 10, 64));
        for eol in ["\n", "\r\n", "\r"] {
            let mut body = Vec::new();
            for i in 0..4 {
                body.extend(format!("event: bench{eol}data: {}{eol}{eol}", data(i)).as_bytes());
            }
            body.extend(format!(": ping{eol}{eol}").as_bytes());
            for step in [1, 2, 5, 1000] {
                let mut sse = SseBody::new(false);
                let mut items = Vec::new();
                for piece in body.chunks(step) {
                    sse.feed(piece, 4096, |b| items.push(classify(b))).unwrap();
                }
                let want: Vec<Item> = (0..4)
                    .map(|i| Item::Stamp(i, i + 10))
                    .chain([Item::Other])
                    .collect();
                assert_eq!(items, want, "{eol:?}, step {step}");
            }
        }
    }

    #[test]
    fn a_server_envelope_with_its_own_seq_and_t_does_not_corrupt_the_stamp() {
        let d = message_data(5, 777, 100);
        let before = format!("{{\"seq\":99,\"t\":1,\"data\":{d}}}");
        assert_eq!(classify(before.as_bytes()), Item::Stamp(5, 777));
        let after = format!("{{\"data\":{d},\"seq\":99,\"t\":1}}");
        assert_eq!(classify(after.as_bytes()), Item::Stamp(5, 777));
        // A server that relays the data alone.
        assert_eq!(classify(d.as_bytes()), Item::Stamp(5, 777));
    }
}
