//! Loopback measurements of the real server binary: resident memory per idle connection, and
//! how long one message takes to reach every one of N clients, over SSE or WebSocket.
//!
//! ```text
//! cargo bench --bench loopback                      # sse and ws, 1,000 and 10,000 clients
//! cargo bench --bench loopback -- ws 1000 10000     # one transport, chosen client counts
//! ```
//!
//! The server runs as a child process; the clients are non-blocking sockets on one mio loop in
//! this process. For SSE a message is a `POST /stream/publish` on a keep-alive connection; for
//! WebSocket it is a `broadcast` sent by one more WebSocket client (with `exclude_self`). Its
//! latency to a client is from just before the message is written to when that client has read
//! it. Raise `ulimit -n` above the client count in the shell that runs this.
//! Both sides share the machine's cores, and reading N sockets in one thread adds to the time to
//! reach the last client: the figures are an upper bound on the server's own cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

mod common;

use common::{rss_kib, show, start_server, ServerProcess};

const PUBLISHES_PER_RUN: usize = 100;

fn start(max: usize) -> ServerProcess {
    start_server(serde_json::json!({
        "max_connections": max + 16,
        "streaming": {
            "sse": { "max_connections": max + 16, "heartbeat_secs": 3600 },
            "limits": { "idle_timeout_secs": 3600 }
        }
    }))
}

struct Client {
    stream: TcpStream,
    /// Bytes read since the last event was found.
    seen: Vec<u8>,
    /// When the current publish reached it.
    arrived: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Sse,
    Ws,
}

const WS_UPGRADE: &[u8] = b"GET /stream/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked client text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let payload = text.as_bytes();
    let mut out = vec![0x81];
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

/// A blocking connection that has opened its stream (SSE `connected`, WebSocket `welcome`).
fn open(addr: SocketAddr, transport: Transport) -> StdStream {
    let mut s = StdStream::connect(addr).expect("connect");
    let (request, opened): (&[u8], &[u8]) = match transport {
        Transport::Sse => (
            b"GET /stream/sse?topic=bench HTTP/1.1\r\nHost: bench\r\n\r\n",
            b"event: connected",
        ),
        Transport::Ws => (WS_UPGRADE, b"\"welcome\""),
    };
    s.write_all(request).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !contains(&got, opened) {
        let k = s.read(&mut buf).expect("stream opens");
        assert!(k > 0, "stream closed while opening");
        got.extend_from_slice(&buf[..k]);
    }
    s
}

/// Opens `n` streams and registers them with `poll`.
fn connect(poll: &Poll, addr: SocketAddr, n: usize, transport: Transport) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let s = open(addr, transport);
        s.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(s);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .unwrap();
        clients.push(Client {
            stream,
            seen: Vec::new(),
            arrived: None,
        });
    }
    clients
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The message of round `seq`: about 200 bytes of data.
fn data(seq: usize) -> String {
    format!(r#"[{seq},"{}"]"#, "x".repeat(150))
}

/// Sends the message of round `seq`: a publish over HTTP, or a WebSocket broadcast.
fn send(publisher: &mut StdStream, transport: Transport, seq: usize) {
    match transport {
        Transport::Sse => {
            let body = format!(r#"{{"topic":"bench","data":{}}}"#, data(seq));
            write!(
                publisher,
                "POST /stream/publish HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        Transport::Ws => {
            let message = format!(
                r#"{{"type":"broadcast","exclude_self":true,"data":{}}}"#,
                data(seq)
            );
            publisher.write_all(&client_frame(&message)).unwrap();
        }
    }
}

/// Reads the 202 of one publish from a keep-alive connection.
fn read_response(http: &mut BufReader<StdStream>) {
    let mut length = 0;
    loop {
        let mut line = String::new();
        http.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    http.read_exact(&mut body).unwrap();
}

fn run(transport: Transport, n: usize) {
    let name = match transport {
        Transport::Sse => "SSE",
        Transport::Ws => "WebSocket",
    };
    let server = start(n);
    let before = rss_kib(server.child.id());
    let mut poll = Poll::new().unwrap();
    let mut clients = connect(&poll, server.addr, n, transport);
    // Let the server settle (it has answered every client already).
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(server.child.id());
    println!(
        "{n} idle {name} connections: server RSS {before} KiB -> {after} KiB, {:.0} bytes per connection",
        (after.saturating_sub(before) * 1024) as f64 / n as f64
    );

    let publisher = match transport {
        Transport::Sse => StdStream::connect(server.addr).unwrap(),
        Transport::Ws => open(server.addr, transport),
    };
    publisher.set_nodelay(true).unwrap();
    let mut writer = publisher.try_clone().unwrap();
    let mut reader = BufReader::new(publisher);
    let mut events = Events::with_capacity(4096);
    let mut per_delivery = Vec::with_capacity(PUBLISHES_PER_RUN * n);
    let mut to_last = Vec::with_capacity(PUBLISHES_PER_RUN);
    let mut buf = vec![0u8; 64 * 1024];
    for seq in 0..PUBLISHES_PER_RUN + 5 {
        let marker = format!("\"data\":[{seq},");
        let sent = Instant::now();
        send(&mut writer, transport, seq);
        let mut waiting = n;
        while waiting > 0 {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(
                !events.is_empty(),
                "publish {seq} did not reach {waiting} clients"
            );
            for event in &events {
                let c = &mut clients[event.token().0];
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => panic!("server closed a stream"),
                        Ok(k) => c.seen.extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                if c.arrived.is_none() && contains(&c.seen, marker.as_bytes()) {
                    c.arrived = Some(Instant::now());
                    c.seen.clear();
                    waiting -= 1;
                }
            }
        }
        if transport == Transport::Sse {
            read_response(&mut reader);
        }
        // The first few warm up caches and connections.
        let warm = seq >= 5;
        let mut last = Duration::ZERO;
        for c in &mut clients {
            let d = c.arrived.take().unwrap() - sent;
            last = last.max(d);
            if warm {
                per_delivery.push(d);
            }
        }
        if warm {
            to_last.push(last);
        }
    }
    println!("one message to {n} {name} clients, {PUBLISHES_PER_RUN} messages:");
    show("delivery to each client", per_delivery);
    show("until the last client has it", to_last);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut transports: Vec<Transport> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "sse" => Some(Transport::Sse),
            "ws" => Some(Transport::Ws),
            _ => None,
        })
        .collect();
    if transports.is_empty() {
        transports = vec![Transport::Sse, Transport::Ws];
    }
    let mut counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![1000, 10_000];
    }
    for &transport in &transports {
        for &n in &counts {
            run(transport, n);
        }
    }
}
