//! Hostile and unusual HTTP input: malformed heads, header count and size caps, body caps
//! (`Content-Length` and chunked), slow heads and bodies, `Expect: 100-continue`, pipelining,
//! resets, idle keep-alive connections, and the connection limit.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{request_bytes, Client, TestServer, WAIT};
use serde_json::json;
use socket2::{Domain, Socket, Type};

fn limits(limits: serde_json::Value) -> TestServer {
    TestServer::with_config(json!({"streaming": {"limits": limits}}))
}

/// Reads the one response a failing request gets, checks it is a JSON error that closes the
/// connection, and returns the reason.
fn expect_error_and_close(client: &mut Client, status: u16) -> String {
    let r = client.read_response();
    let reason = r.assert_error(status);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    client.expect_eof();
    reason
}

#[test]
fn malformed_request_line_is_a_400_json_error() {
    let server = TestServer::start();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let mut client = server.client();
        client.send(raw);
        let reason = expect_error_and_close(&mut client, 400);
        assert!(!reason.is_empty(), "{raw:?}");
    }
}

#[test]
fn absolute_form_target_is_a_400() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(b"GET http://127.0.0.1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_error_and_close(&mut client, 400);
}

#[test]
fn bad_content_length_and_smuggling_framing_are_400() {
    let server = TestServer::start();
    for headers in [
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let mut client = server.client();
        client
            .send(format!("POST /stream/publish HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes());
        expect_error_and_close(&mut client, 400);
    }
}

#[test]
fn unsupported_http_version_is_refused_with_json() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(b"GET /health HTTP/2.0\r\n\r\n");
    let r = client.read_response();
    assert!(r.status >= 400, "{r:?}");
    r.assert_error(r.status);
}

#[test]
fn more_headers_than_max_header_count_is_a_431() {
    let server = limits(json!({"max_header_count": 8}));
    // Seven headers plus Host: exactly the limit, served.
    let few: Vec<(String, String)> = (0..7).map(|i| (format!("X-{i}"), "v".into())).collect();
    let few: Vec<(&str, &str)> = few.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        server.client().request("GET", "/health", &few, b"").status,
        200
    );
    // One more: refused.
    let many: Vec<(String, String)> = (0..8).map(|i| (format!("X-{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut client = server.client();
    client.send(&request_bytes("GET", "/health", &many, b""));
    assert_eq!(expect_error_and_close(&mut client, 431), "too many headers");
}

#[test]
fn a_complete_head_over_max_head_bytes_is_a_431() {
    let server = limits(json!({"max_head_bytes": 1024}));
    let big = "v".repeat(1100);
    let mut client = server.client();
    client.send(&request_bytes("GET", "/health", &[("X-Big", &big)], b""));
    let reason = expect_error_and_close(&mut client, 431);
    assert!(reason.contains("too large"), "{reason}");
    // Just under the cap is fine.
    let fits = "v".repeat(900);
    let r = server
        .client()
        .request("GET", "/health", &[("X-Big", &fits)], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn an_unfinished_head_over_max_head_bytes_is_a_431_without_waiting() {
    // The head timeout is long: the 431 must come from the size alone.
    let server = limits(json!({"max_head_bytes": 1024, "head_timeout_ms": 60000}));
    let mut client = server.client();
    let mut head = b"GET /health HTTP/1.1\r\nX-Endless: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 2000));
    client.send(&head);
    let reason = expect_error_and_close(&mut client, 431);
    assert!(reason.contains("too large"), "{reason}");
}

#[test]
fn content_length_over_max_body_bytes_is_a_413_before_the_body() {
    let server = limits(json!({"max_body_bytes": 1024}));
    let mut client = server.client();
    // Only the head is sent: the refusal must not wait for the body.
    client.send(b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n");
    assert_eq!(
        expect_error_and_close(&mut client, 413),
        "request body too large"
    );
    // At the cap, the body is read (and here refused as bad JSON, which proves it was read).
    let body = vec![b' '; 1024];
    let r = server
        .client()
        .request("POST", "/stream/publish", &[], &body);
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn chunked_body_over_max_body_bytes_is_a_413() {
    let server = limits(json!({"max_body_bytes": 1024}));
    let mut client = server.client();
    let mut raw =
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend(std::iter::repeat_n(b' ', 0x200));
        raw.extend_from_slice(b"\r\n");
    }
    client.send(&raw);
    assert_eq!(
        expect_error_and_close(&mut client, 413),
        "request body too large"
    );
}

#[test]
fn chunked_publish_body_is_decoded() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=chunky");
    sse.read_opening();
    let body = json!({"topic": "chunky", "data": "x".repeat(100)}).to_string();
    let (a, b) = body.split_at(37);
    let mut raw =
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes());
    raw.extend_from_slice(format!("{:X};ext=1\r\n{b}\r\n", b.len()).as_bytes());
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let mut client = server.client();
    // In pieces, to cross reads.
    for piece in raw.chunks(29) {
        client.send(piece);
    }
    let r = client.read_response();
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["ids"][0].as_str().unwrap().to_string();
    let block = sse.next_event();
    assert_eq!(block.id.as_deref(), Some(id.as_str()));
    assert_eq!(block.json()["data"], "x".repeat(100));
    // The connection stays usable after a chunked body.
    assert_eq!(client.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn invalid_chunk_size_is_a_400() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    );
    expect_error_and_close(&mut client, 400);
}

#[test]
fn expect_100_continue_gets_an_interim_response_before_the_body() {
    let server = TestServer::start();
    let body = json!({"topic": "t"}).to_string();
    let mut client = server.client();
    client.send(
        format!(
            "POST /stream/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = client.read_head();
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.headers.is_empty(), "{interim:?}");
    client.send(body.as_bytes());
    let r = client.read_response();
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn expect_100_continue_with_a_body_too_large_gets_413_not_continue() {
    let server = limits(json!({"max_body_bytes": 1024}));
    let mut client = server.client();
    client.send(
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(
        expect_error_and_close(&mut client, 413),
        "request body too large"
    );
}

#[test]
fn pipelined_requests_in_one_write_get_responses_in_order() {
    let server = TestServer::start();
    let publish = json!({"topic": "p"}).to_string();
    let mut raw = request_bytes("GET", "/health", &[], b"");
    raw.extend(request_bytes(
        "POST",
        "/stream/publish",
        &[],
        publish.as_bytes(),
    ));
    raw.extend(request_bytes("GET", "/missing", &[], b""));
    raw.extend(request_bytes("POST", "/health", &[], b""));
    raw.extend(request_bytes(
        "GET",
        "/health",
        &[("Connection", "close")],
        b"",
    ));
    let mut client = server.client();
    client.send(&raw);
    let statuses: Vec<u16> = (0..5).map(|_| client.read_response().status).collect();
    assert_eq!(statuses, vec![200, 202, 404, 405, 200]);
    client.expect_eof();
}

#[test]
fn requests_after_connection_close_in_a_pipeline_are_not_served() {
    let server = TestServer::start();
    let mut raw = request_bytes("GET", "/health", &[("Connection", "close")], b"");
    raw.extend(request_bytes("GET", "/missing", &[], b""));
    let mut client = server.client();
    client.send(&raw);
    assert_eq!(client.read_response().status, 200);
    client.expect_eof();
}

/// A client sending its head one byte every 100 ms.
struct Slowloris {
    client: Client,
    pending: Vec<u8>,
}

impl Slowloris {
    fn new(server: &TestServer) -> Slowloris {
        let mut head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
        head.extend(std::iter::repeat_n(b'z', 400));
        head.extend_from_slice(b"\r\n\r\n");
        head.reverse();
        Slowloris {
            client: server.client(),
            pending: head,
        }
    }

    /// Sends the next byte, then waits up to 100 ms for the server to say something; true when
    /// it did.
    fn step(&mut self) -> bool {
        let byte = self.pending.pop().expect("the whole head went out");
        self.client.send(&[byte]);
        let stream = &self.client.stream;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut probe = [0u8; 1];
        let answered = match stream.peek(&mut probe) {
            Ok(_) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("slowloris read: {e}"),
        };
        stream.set_read_timeout(Some(WAIT)).unwrap();
        answered
    }
}

#[test]
fn slowloris_head_gets_408_after_head_timeout_while_others_are_served() {
    let server = limits(json!({"head_timeout_ms": 500}));
    let started = Instant::now();
    let mut slow = Slowloris::new(&server);
    let mut steps = 0;
    while !slow.step() {
        steps += 1;
        assert!(steps < 100, "no answer to a head trickling for 10 s");
        if steps == 2 {
            // Meanwhile another client is served at once.
            assert_eq!(server.get("/health").status, 200);
            let mut keep = server.client();
            assert_eq!(keep.request("GET", "/health", &[], b"").status, 200);
        }
    }
    // The deadline is for the whole head, not per byte: bytes kept arriving every 100 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "408 came before the head timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        expect_error_and_close(&mut slow.client, 408),
        "request head too slow"
    );
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_connection_that_sends_nothing_is_closed_quietly_after_head_timeout() {
    let server = limits(json!({"head_timeout_ms": 300}));
    let mut client = server.client();
    // No 408 for a connection that never started a request: just the end of the stream.
    client.expect_eof();
}

#[test]
fn a_body_that_stops_gets_408_after_body_timeout() {
    let server = limits(json!({"body_timeout_ms": 400}));
    let mut client = server.client();
    // Taken before the head is sent: the server's deadline can only be later.
    let started = Instant::now();
    client.send(
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"topic\":",
    );
    assert_eq!(
        expect_error_and_close(&mut client, 408),
        "request body too slow"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "408 came before the body timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let server = limits(json!({"idle_timeout_secs": 1}));
    let mut client = server.client();
    assert_eq!(client.request("GET", "/health", &[], b"").status, 200);
    client.expect_eof();
}

fn reset_on_drop(stream: &Socket) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
}

#[test]
fn clients_resetting_mid_request_do_not_disturb_others() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=t");
    sse.read_opening();
    let mut keep = server.client();
    assert_eq!(keep.request("GET", "/health", &[], b"").status, 200);
    for partial in [
        &b"GET /hea"[..],
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"to",
        b"POST /stream/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ] {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        reset_on_drop(&socket);
        let mut stream: TcpStream = socket.into();
        stream.write_all(partial).unwrap();
        drop(stream); // RST
    }
    // Everyone else carries on.
    assert_eq!(keep.request("GET", "/health", &[], b"").status, 200);
    let ids = server.publish(&json!({"topic": "t"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(ids[0].as_str()));
}

#[test]
fn a_subscriber_resetting_while_events_are_written_does_not_disturb_others() {
    let server = TestServer::start();
    let mut good = server.sse("topic=t");
    good.read_opening();
    let mut doomed = Vec::new();
    for _ in 0..4 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        reset_on_drop(&socket);
        let mut sse = common::Sse::try_open(Client::from_stream(socket.into()), "topic=t", &[])
            .expect("stream");
        sse.read_opening();
        doomed.push(sse);
    }
    let mut publisher = server.client();
    let payload = "p".repeat(2000);
    for i in 0..40 {
        if i == 10 {
            // Reset them with unread data on both sides, while the server is writing to them.
            for sse in doomed.drain(..) {
                let _ = sse.client.stream.shutdown(Shutdown::Read);
                drop(sse);
            }
        }
        let ids = common::publish_on(&mut publisher, &json!({"topic": "t", "data": payload}));
        // Keep the good subscriber in step so that it never queues much.
        let block = good.next_event();
        assert_eq!(block.id.as_deref(), Some(ids[0].as_str()));
    }
    assert_eq!(publisher.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn max_connections_refuses_extra_connections_with_503_and_retry_after() {
    let server = TestServer::with_config(json!({"max_connections": 2}));
    let mut a = server.client();
    let mut b = server.client();
    // Both are served, so both have been accepted and count.
    assert_eq!(a.request("GET", "/health", &[], b"").status, 200);
    assert_eq!(b.request("GET", "/health", &[], b"").status, 200);
    // The third is told 503 without even sending a request.
    let mut c = server.client();
    let r = c.read_response();
    let reason = r.assert_error(503);
    assert_eq!(reason, "server at capacity");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_eof();
    // The two accepted connections are unaffected.
    assert_eq!(a.request("GET", "/health", &[], b"").status, 200);
    // Closing one frees a place (the server notices asynchronously: poll, with a bound).
    drop(b);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut d = server.client();
        d.send(&request_bytes("GET", "/health", &[], b""));
        let r = d.read_response();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        std::thread::sleep(Duration::from_millis(20)); // condition poll
    }
}

#[test]
fn every_error_body_is_a_json_error_object() {
    // One round of the refusals above, on one server with small limits, each answer checked
    // to be exactly {"error": "<non-empty string>"} with Content-Type application/json.
    let server =
        limits(json!({"max_head_bytes": 512, "max_body_bytes": 64, "max_header_count": 8}));
    let big = "h".repeat(600);
    let many: Vec<(String, String)> = (0..9).map(|i| (format!("X-{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let body = vec![b'x'; 65];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"NOT HTTP\r\n\r\n".to_vec(), 400),
        (request_bytes("GET", "/x", &[], b""), 404),
        (request_bytes("PUT", "/health", &[], b""), 405),
        (
            request_bytes("GET", "/health", &[("X-Big", &big)], b""),
            431,
        ),
        (request_bytes("GET", "/health", &many, b""), 431),
        (request_bytes("POST", "/stream/publish", &[], &body), 413),
        (request_bytes("POST", "/stream/publish", &[], b"{]"), 400),
        (request_bytes("GET", "/stream/sse", &[], b""), 400),
    ];
    for (raw, status) in cases {
        let mut client = server.client();
        client.send(&raw);
        let r = client.read_response();
        let reason = r.assert_error(status);
        assert!(!reason.is_empty());
    }
}

#[test]
fn a_keep_alive_request_followed_at_once_by_the_clients_fin_gets_its_response() {
    let server = TestServer::start();
    for _ in 0..20 {
        let mut client = server.client();
        client.send(&request_bytes("GET", "/health", &[], b""));
        client.shutdown_write();
        let got = client.read_to_end();
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn a_closing_response_is_sent_even_when_the_clients_fin_follows_the_request_at_once() {
    // A client that writes its whole request and half-closes (HTTP/1.0 tools, `nc -N`, scripts)
    // must still get the answer. The server reads the request and the end of stream in one
    // wake-up; a response that ends the connection (Connection: close, HTTP/1.0, any error) is
    // then queued in the Closing phase and must still be flushed. (Regression: all of these were
    // lost before commit 6c242a8.)
    let server = TestServer::start();
    let cases: [(&str, Vec<u8>, &[u8]); 3] = [
        (
            "Connection: close",
            request_bytes("GET", "/health", &[("Connection", "close")], b""),
            b"HTTP/1.1 200 OK\r\n",
        ),
        (
            "HTTP/1.0",
            b"GET /health HTTP/1.0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\n",
        ),
        (
            "malformed",
            b"GARBAGE\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\n",
        ),
    ];
    for (name, raw, want) in cases {
        let mut lost = 0;
        for _ in 0..20 {
            let mut client = server.client();
            client.send(&raw);
            client.shutdown_write();
            if !client.read_to_end().starts_with(want) {
                lost += 1;
            }
        }
        assert_eq!(lost, 0, "{name}: {lost} of 20 responses were never sent");
    }
}
