//! HTTP/1.1 on the server side: request heads (httparse, with caps), bodies (`Content-Length` and
//! chunked), query strings, and the responses we send, JSON errors included.
//!
//! Parsing is incremental: an incomplete head or body is not an error, the caller keeps the bytes
//! and tries again when more arrive. Every cap (head bytes, header count, body bytes, chunk-size
//! line) ends as an [`HttpError`] carrying the status the client gets.

use std::fmt::Write as _;

/// A request the server refuses, with the status and reason the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The response status.
    pub status: u16,
    /// The `error` of the JSON body.
    pub reason: &'static str,
}

impl HttpError {
    const fn new(status: u16, reason: &'static str) -> HttpError {
        HttpError { status, reason }
    }
}

/// The head of a request, parsed, with the headers kept as owned pairs.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method, as sent (`GET`, `POST`, …).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (what follows `?`), empty when none.
    pub query: String,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Request {
    /// The first value of header `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether a comma-separated header holds `token` (case-insensitive), e.g. `Connection: close`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection may carry another request after this one.
    pub fn keep_alive(&self) -> bool {
        if self.version == 0 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    pub fn expects_continue(&self) -> bool {
        self.version == 1 && self.header_has_token("expect", "100-continue")
    }

    /// How the body is delimited; an error for a request whose framing cannot be trusted.
    pub fn body_kind(&self) -> Result<BodyKind, HttpError> {
        let transfer: Vec<&[u8]> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .map(|(_, v)| v.as_slice())
            .collect();
        let lengths: Vec<&[u8]> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_slice())
            .collect();
        if !transfer.is_empty() {
            // Both framings at once is how requests are smuggled: refuse.
            if !lengths.is_empty() {
                return Err(HttpError::new(
                    400,
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if transfer.len() == 1 && transfer[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Ok(BodyKind::Chunked);
            }
            return Err(HttpError::new(501, "unsupported Transfer-Encoding"));
        }
        let Some(first) = lengths.first() else {
            return Ok(BodyKind::None);
        };
        if lengths.iter().any(|l| l != first) {
            return Err(HttpError::new(400, "conflicting Content-Length"));
        }
        let text = std::str::from_utf8(first.trim_ascii())
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
        match text.and_then(|t| t.parse::<u64>().ok()) {
            Some(0) => Ok(BodyKind::None),
            Some(n) => Ok(BodyKind::Length(n)),
            None => Err(HttpError::new(400, "invalid Content-Length")),
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, keep the bytes (the caller enforces `max_head_bytes` on what it keeps).
/// `Ok(Some((request, n)))`: the head took the first `n` bytes. More than `max_headers` headers
/// is a 431; a complete head longer than `max_head_bytes` too.
pub fn parse_head(
    buf: &[u8],
    max_headers: usize,
    max_head_bytes: usize,
) -> Result<Option<(Request, usize)>, HttpError> {
    let mut storage = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut storage);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "too many headers"))
        }
        Err(httparse::Error::Version) => {
            return Err(HttpError::new(505, "HTTP version not supported"))
        }
        Err(_) => return Err(HttpError::new(400, "malformed request")),
    };
    if n > max_head_bytes {
        return Err(HttpError::new(431, "request head too large"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(HttpError::new(400, "request target must be a path"));
    }
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((request, n)))
}

/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Reads a body out of buffered bytes, a piece at a time.
#[derive(Debug)]
pub enum BodyDecoder {
    /// A `Content-Length` body.
    Length {
        /// Bytes still to come.
        remaining: u64,
    },
    /// A chunked body, at the given point.
    Chunked(ChunkState),
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; counts the trailer bytes seen.
    Trailers(usize),
}

/// What one [`BodyDecoder::decode`] call did.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used.
    pub consumed: usize,
    /// Whether the body is complete.
    pub done: bool,
}

impl BodyDecoder {
    /// A decoder for a body of the given kind; `None` for no body.
    pub fn new(kind: BodyKind) -> Option<BodyDecoder> {
        match kind {
            BodyKind::None => None,
            BodyKind::Length(n) => Some(BodyDecoder::Length { remaining: n }),
            BodyKind::Chunked => Some(BodyDecoder::Chunked(ChunkState::Size)),
        }
    }

    /// Moves body bytes from `input` into `body`, which may not pass `max_body` bytes (413), and
    /// chunked framing of at most `max_framing` bytes of trailers.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
        max_framing: usize,
    ) -> Result<Decoded, HttpError> {
        const TOO_LARGE: HttpError = HttpError::new(413, "request body too large");
        match self {
            BodyDecoder::Length { remaining } => {
                let take = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                if body.len() + take > max_body {
                    return Err(TOO_LARGE);
                }
                body.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                Ok(Decoded {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(state) => {
                let mut at = 0;
                loop {
                    let rest = &input[at..];
                    match *state {
                        ChunkState::Size => match httparse::parse_chunk_size(rest) {
                            // The same cap whether the line came whole or in pieces (a
                            // partial line is held up to the cap, its CRLF still to come).
                            Ok(httparse::Status::Complete((n, _))) if n > MAX_CHUNK_LINE + 1 => {
                                return Err(HttpError::new(400, "invalid chunk size"));
                            }
                            Ok(httparse::Status::Complete((n, size))) => {
                                at += n;
                                *state = if size == 0 {
                                    ChunkState::Trailers(0)
                                } else {
                                    ChunkState::Data(size)
                                };
                            }
                            Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => {
                                return Ok(Decoded {
                                    consumed: at,
                                    done: false,
                                })
                            }
                            _ => return Err(HttpError::new(400, "invalid chunk size")),
                        },
                        ChunkState::Data(left) => {
                            if rest.is_empty() {
                                return Ok(Decoded {
                                    consumed: at,
                                    done: false,
                                });
                            }
                            let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                            if body.len() + take > max_body {
                                return Err(TOO_LARGE);
                            }
                            body.extend_from_slice(&rest[..take]);
                            at += take;
                            let left = left - take as u64;
                            *state = if left == 0 {
                                ChunkState::DataEnd
                            } else {
                                ChunkState::Data(left)
                            };
                        }
                        ChunkState::DataEnd => {
                            if rest.len() < 2 {
                                return Ok(Decoded {
                                    consumed: at,
                                    done: false,
                                });
                            }
                            if &rest[..2] != b"\r\n" {
                                return Err(HttpError::new(400, "invalid chunk framing"));
                            }
                            at += 2;
                            *state = ChunkState::Size;
                        }
                        ChunkState::Trailers(seen) => {
                            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                                if seen + rest.len() > max_framing {
                                    return Err(HttpError::new(431, "trailers too large"));
                                }
                                return Ok(Decoded {
                                    consumed: at,
                                    done: false,
                                });
                            };
                            at += line_end + 2;
                            if line_end == 0 {
                                return Ok(Decoded {
                                    consumed: at,
                                    done: true,
                                });
                            }
                            let seen = seen + line_end + 2;
                            if seen > max_framing {
                                return Err(HttpError::new(431, "trailers too large"));
                            }
                            *state = ChunkState::Trailers(seen);
                        }
                    }
                }
            }
        }
    }
}

/// The reason phrase of a status we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        101 => "Switching Protocols",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A complete response with a body. `extra_headers` are full lines, each ending in CRLF.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = String::with_capacity(128 + extra_headers.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}{extra_headers}\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The status of a response this module made: the three digits after `HTTP/1.1 `.
pub fn response_status(response: &[u8]) -> Option<u16> {
    let digits = response.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A JSON response.
pub fn json_response(status: u16, body: &str, extra_headers: &str, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        "application/json",
        body.as_bytes(),
        extra_headers,
        keep_alive,
    )
}

/// The body `{"error":"<reason>"}`.
pub fn error_body(reason: &str) -> String {
    let mut body = String::from(r#"{"error":"#);
    super::hub::push_json_string(&mut body, reason);
    body.push('}');
    body
}

/// What a `429` or `503` asks the client to wait, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A JSON error response. A `429` or `503` carries `Retry-After` as well.
pub fn error_response(status: u16, reason: &str, extra_headers: &str, keep_alive: bool) -> Vec<u8> {
    let retry = if matches!(status, 429 | 503) && !extra_headers.contains("Retry-After:") {
        format!("Retry-After: {RETRY_AFTER_SECS}\r\n")
    } else {
        String::new()
    };
    json_response(
        status,
        &error_body(reason),
        &format!("{extra_headers}{retry}"),
        keep_alive,
    )
}

/// `response` with `headers` (lines ending in `\r\n`) added after its status line.
pub fn insert_headers(mut response: Vec<u8>, headers: &str) -> Vec<u8> {
    if let Some(end) = response.windows(2).position(|w| w == b"\r\n") {
        response.splice(end + 2..end + 2, headers.bytes());
    }
    response
}

/// The pairs of a query string, percent-decoded (`+` is a space). Pairs that are not UTF-8
/// after decoding are skipped.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
}

/// Decodes `%XX` escapes and `+`; `None` when the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The byte two hex digits stand for.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Request, usize)>, HttpError> {
        parse_head(text.as_bytes(), 16, 4096)
    }

    #[test]
    fn heads_parse_incrementally() {
        let full = "GET /stream/sse?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-2\r\n\r\nrest";
        for cut in 0..full.len() - 4 {
            assert!(head(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (req, n) = head(full).unwrap().unwrap();
        assert_eq!(&full[n..], "rest");
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/stream/sse");
        assert_eq!(req.query, "topic=a");
        assert_eq!(req.header("last-event-id"), Some("1-2"));
        assert!(req.keep_alive());
    }

    #[test]
    fn bad_heads_get_their_status() {
        assert_eq!(head("GARBAGE\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").unwrap_err().status, 505);
        let many: String = (0..20).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n"))
                .unwrap_err()
                .status,
            431
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(5000));
        assert_eq!(head(&big).unwrap_err().status, 431);
        assert_eq!(
            head("GET http://x/ HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
    }

    #[test]
    fn keep_alive_follows_the_version() {
        let r = |t: &str| head(t).unwrap().unwrap().0;
        assert!(!r("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(r("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(!r("GET / HTTP/1.1\r\nConnection: x, close\r\n\r\n").keep_alive());
    }

    #[test]
    fn body_framing_is_checked() {
        let kind = |t: &str| head(t).unwrap().unwrap().0.body_kind();
        assert_eq!(kind("POST / HTTP/1.1\r\n\r\n"), Ok(BodyKind::None));
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(BodyKind::Length(12))
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(BodyKind::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(kind(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
                .unwrap_err()
                .status,
            501
        );
    }

    fn decode_all(
        kind: BodyKind,
        input: &[u8],
        step: usize,
        max: usize,
    ) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = BodyDecoder::new(kind).unwrap();
        let mut body = Vec::new();
        let mut buffered = Vec::new();
        for piece in input.chunks(step) {
            buffered.extend_from_slice(piece);
            let r = d.decode(&buffered, &mut body, max, 1024)?;
            buffered.drain(..r.consumed);
            if r.done {
                return Ok((body, buffered.len()));
            }
        }
        Err(HttpError::new(0, "incomplete"))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, left) = decode_all(BodyKind::Chunked, wire, step, 100).unwrap();
            assert_eq!(body, b"hello, world");
            // What follows the body is left for the next request.
            assert!(left <= 4);
        }
        assert_eq!(
            decode_all(BodyKind::Chunked, wire, 64, 5)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            decode_all(BodyKind::Chunked, b"zz\r\n", 64, 5)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            decode_all(BodyKind::Chunked, b"1\r\naXX", 64, 5)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (body, left) = decode_all(BodyKind::Length(3), b"abcdef", 2, 10).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(left, 1);
        assert_eq!(
            decode_all(BodyKind::Length(30), &[b'a'; 30], 7, 10)
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn queries_decode() {
        let pairs: Vec<_> =
            query_pairs("topic=a%2Fb&topic=c,d&x=1+2&bad=%zz&e=%C3%A9&n=%FF").collect();
        assert_eq!(
            pairs,
            vec![
                ("topic".into(), "a/b".into()),
                ("topic".into(), "c,d".into()),
                ("x".into(), "1 2".into()),
                ("bad".into(), "%zz".into()),
                ("e".into(), "é".into()),
            ]
        );
    }

    #[test]
    fn responses_are_well_formed() {
        let r = String::from_utf8(error_response(404, "not \"found\"", "", true)).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"error\":\"not \\\"found\\\"\"}"
        );
        let r = String::from_utf8(json_response(200, "{}", "Retry-After: 1\r\n", false)).unwrap();
        assert!(r.contains("Connection: close\r\nRetry-After: 1\r\n\r\n{}"));
    }
}
