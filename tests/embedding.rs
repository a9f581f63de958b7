//! The embedding example runs the server inside a host loop that serves its own socket: both
//! work side by side, and the host, its timer, HTTP and another thread can all publish.

#[allow(dead_code)]
#[path = "../examples/embedded.rs"]
mod embedded;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use mcp_stream::config::Config;
use mcp_stream::Publisher;

const WAIT: Duration = Duration::from_secs(10);

struct RunningHost {
    http: SocketAddr,
    echo: SocketAddr,
    publisher: Publisher,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_host() -> RunningHost {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let mut host = embedded::Host::new(
            config,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_millis(50),
        )
        .expect("host starts");
        tx.send((
            host.server.local_addr(),
            host.echo_addr().unwrap(),
            host.server.publisher(),
        ))
        .unwrap();
        while !flag.load(Ordering::Relaxed) {
            host.turn().expect("host loop turns");
        }
    });
    let (http, echo, publisher) = rx.recv_timeout(WAIT).expect("host reports its addresses");
    RunningHost {
        http,
        echo,
        publisher,
        stop,
        thread: Some(thread),
    }
}

/// Reads SSE lines until one equals `line`; returns everything read.
fn read_until_line(reader: &mut BufReader<TcpStream>, line: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut next = String::new();
        let n = reader.read_line(&mut next).expect("stream stays open");
        assert!(n > 0, "stream ended before {line:?}; got:\n{seen}");
        seen.push_str(&next);
        if next.trim_end_matches('\n') == line {
            return seen;
        }
    }
}

#[test]
fn the_server_and_the_hosts_own_socket_work_side_by_side() {
    let host = start_host();

    let mut stream = TcpStream::connect(host.http).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /stream/sse?topic=ticks,jobs HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut sse = BufReader::new(stream);
    let opening = read_until_line(&mut sse, "event: connected");
    assert!(opening.starts_with("HTTP/1.1 200 OK\r\n"), "{opening}");

    // The host's timer publishes from the host's own code.
    read_until_line(&mut sse, "event: tick");
    let tick = read_until_line(&mut sse, "");
    assert!(tick.contains(r#""topic":"ticks","event":"tick""#), "{tick}");

    // The host's own socket answers meanwhile.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(WAIT)).unwrap();
    udp.send_to(b"ping", host.echo).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = udp.recv_from(&mut buf).expect("echo answers");
    assert_eq!((&buf[..n], from), (&b"ping"[..], host.echo));

    // Another thread publishes through the waker the host gave the server.
    let publisher = host.publisher.clone();
    std::thread::spawn(move || {
        publisher
            .publish("jobs", Some("done"), serde_json::json!({"job": 7}))
            .unwrap();
    })
    .join()
    .unwrap();
    read_until_line(&mut sse, "event: done");
    let data = read_until_line(&mut sse, "");
    assert!(data.contains(r#""topic":"jobs","event":"done""#), "{data}");
    assert!(data.contains(r#""data":{"job":7}"#), "{data}");

    // And an HTTP publish reaches the same stream.
    let mut http = TcpStream::connect(host.http).unwrap();
    http.set_read_timeout(Some(WAIT)).unwrap();
    let body = r#"{"topic":"jobs","event":"http","data":1}"#;
    write!(
        http,
        "POST /stream/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202 "), "{response}");
    read_until_line(&mut sse, "event: http");
}

#[test]
fn invalid_publications_are_refused_on_the_calling_thread() {
    let host = start_host();
    assert_eq!(
        host.publisher
            .publish("bad topic", None, serde_json::Value::Null),
        Err(mcp_stream::PublisherError::Invalid(
            "invalid topic name: 1-128 bytes of [A-Za-z0-9_.:/-]"
        ))
    );
    assert!(host
        .publisher
        .try_publish("fine", Some("x"), serde_json::Value::Null)
        .is_ok());
}

/// Sends one MCP POST and returns the whole response (the connection is closed after it).
fn mcp_post(addr: SocketAddr, session: Option<&str>, body: &str) -> String {
    let mut http = TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(WAIT)).unwrap();
    let session = session.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
    write!(
        http,
        "POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: application/json, text/event-stream\r\n{session}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_tool_of_the_host_answers_later_with_progress_and_its_resource_is_read() {
    let host = start_host();
    let init = mcp_post(
        host.http,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
    );
    let session = init
        .lines()
        .find_map(|l| l.strip_prefix("Mcp-Session-Id: "))
        .expect("a session id")
        .trim()
        .to_string();
    let tools = mcp_post(
        host.http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert!(tools.contains(r#""name":"wait""#), "{tools}");
    let call = mcp_post(
        host.http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"wait","arguments":{"ms":30},"_meta":{"progressToken":"w"}}}"#,
    );
    assert!(call.contains("Content-Type: text/event-stream"), "{call}");
    let progress = call
        .find(r#""method":"notifications/progress","params":{"progressToken":"w","progress":1.0,"total":1.0}"#)
        .expect("a progress report");
    let answer = call
        .find(r#""id":3,"result":{"content":[{"type":"text","text":"waited"}],"isError":false}"#)
        .expect("the answer");
    assert!(progress < answer);
    // The host's resource is listed and read.
    let list = mcp_post(
        host.http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":5,"method":"resources/list"}"#,
    );
    assert!(list.contains(r#""uri":"host://ticks""#), "{list}");
    let read = mcp_post(
        host.http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"host://ticks"}}"#,
    );
    assert!(
        read.contains(r#""mimeType":"text/plain","text":""#),
        "{read}"
    );
    // A bad argument is answered at once, as an error result.
    let bad = mcp_post(
        host.http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"wait","arguments":{}}}"#,
    );
    assert!(
        bad.contains(r#""isError":true"#) && bad.contains("application/json"),
        "{bad}"
    );
}
