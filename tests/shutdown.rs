//! Graceful shutdown on SIGTERM: streams end after what they have queued, idle connections
//! close, new connections are refused, and the process exits 0 within the drain timeout.
//!
//! Before each SIGTERM the test completes a request, which proves the server is inside its
//! event loop (where the signal handler is installed) rather than still starting up.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;

use common::{Client, Sse, TestServer, WAIT};
use serde_json::json;
use socket2::{Domain, Socket, Type};

fn assert_refused(server: &TestServer) {
    match TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted during shutdown"),
    }
}

#[test]
fn sigterm_ends_open_streams_refuses_new_connections_and_exits_0() {
    let mut server = TestServer::start();
    let mut a = server.sse("topic=t");
    let mut b = server.sse("topic=u,t");
    a.read_opening();
    b.read_opening();
    let ids = server.publish(&json!({"topic": "t"}));
    assert_eq!(a.next_event().id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(b.next_event().id.as_deref(), Some(ids[0].as_str()));

    server.sigterm();
    a.expect_end();
    b.expect_end();
    // The listener closed before the streams were ended.
    assert_refused(&server);
    drop(a);
    drop(b);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_closes_idle_keep_alive_connections() {
    let mut server = TestServer::start();
    let mut idle = server.client();
    assert_eq!(idle.request("GET", "/health", &[], b"").status, 200);
    server.sigterm();
    idle.expect_eof();
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_with_no_connections_exits_0() {
    let mut server = TestServer::start();
    assert_eq!(server.get("/health").status, 200);
    server.sigterm();
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn events_queued_for_a_stream_are_delivered_before_it_ends() {
    // A queue bound large enough to hold more than the kernel can buffer for a peer that does
    // not read: some of what is published must still be in the server's own queue at SIGTERM.
    let mut server = TestServer::with_config(json!({"streaming": {"backpressure": {
        "max_queue_bytes": 32 << 20,
    }}}));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut sse =
        Sse::try_open(Client::from_stream(socket.into()), "topic=t", &[]).expect("stream");
    sse.read_opening();
    // More than the kernel can hold between the server and this client (its send buffer is
    // at most the autotuning maximum; the receive buffer is a few KiB): at least ~0.5 MB must
    // still wait in the server's queue when the signal comes.
    const PAYLOAD: usize = 3000;
    let count = (common::kernel_send_buffer_max() + (512 << 10)) / PAYLOAD;
    let payload = "q".repeat(PAYLOAD);
    let mut publisher = server.client();
    let mut ids = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(200) {
        let items: Vec<_> = batch
            .iter()
            .map(|i| json!({"topic": "t", "data": {"i": i, "pad": payload}}))
            .collect();
        ids.extend(common::publish_on(
            &mut publisher,
            &serde_json::Value::Array(items),
        ));
    }
    drop(publisher);

    server.sigterm();
    for (i, id) in ids.iter().enumerate() {
        let block = sse.next_event();
        assert_eq!(
            block.id.as_deref(),
            Some(id.as_str()),
            "event {i} lost in the drain"
        );
    }
    sse.expect_end();
    drop(sse);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_client_that_never_reads_does_not_hold_shutdown_past_the_drain_timeout() {
    let mut server =
        TestServer::with_config(json!({"streaming": {"limits": {"drain_timeout_ms": 300}}}));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stuck =
        Sse::try_open(Client::from_stream(socket.into()), "topic=t", &[]).expect("stream");
    stuck.read_opening();
    let payload = "s".repeat(3000);
    let items: Vec<_> = (0..60)
        .map(|i| json!({"topic": "t", "data": {"i": i, "pad": payload}}))
        .collect();
    server.publish(&serde_json::Value::Array(items));

    server.sigterm();
    // The stuck client neither reads nor closes; the server still exits, cleanly.
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
    drop(stuck);
}

#[test]
fn a_second_sigterm_during_the_drain_still_exits_0() {
    let mut server =
        TestServer::with_config(json!({"streaming": {"limits": {"drain_timeout_ms": 60000}}}));
    let mut sse = server.sse("topic=t");
    sse.read_opening();
    server.sigterm();
    // The stream ends, but this client keeps its side open: the drain waits for it.
    sse.expect_end();
    server.sigterm();
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
    drop(sse);
}

#[test]
fn a_slow_but_reading_stream_is_drained_until_the_drain_timeout() {
    // drain_timeout_ms is 30 s: a client that keeps reading, if slowly, must get everything
    // queued for it before its stream ends (CONTRACT: "flush what is queued (bounded by a drain
    // timeout)"). The engine gives every closing connection a fixed 2 s LINGER deadline when
    // the drain starts, and drops it then with its queue.
    let mut server = TestServer::with_config(json!({"streaming": {
        "backpressure": {"max_queue_bytes": 32 << 20},
        "limits": {"drain_timeout_ms": 30000},
    }}));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut sse =
        Sse::try_open(Client::from_stream(socket.into()), "topic=t", &[]).expect("stream");
    sse.read_opening();
    // At least ~1 MB left in the server's queue at the signal.
    const PAYLOAD: usize = 3000;
    let count = (common::kernel_send_buffer_max() + (1 << 20)) / PAYLOAD;
    let payload = "q".repeat(PAYLOAD);
    let mut publisher = server.client();
    let mut ids = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(200) {
        let items: Vec<_> = batch
            .iter()
            .map(|i| json!({"topic": "t", "data": {"i": i, "pad": payload}}))
            .collect();
        ids.extend(common::publish_on(
            &mut publisher,
            &serde_json::Value::Array(items),
        ));
    }
    drop(publisher);

    server.sigterm();
    // Read slowly for 2.5 s (4 KiB every 50 ms, ~200 KB in all: far less than what is queued),
    // then at full speed.
    let slow_until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < slow_until {
        if sse.client.read_some(4096) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50)); // the client's pace, not a wait
    }
    let mut received = 0;
    while let Some(block) = sse.try_next_block_lenient() {
        if block.is_comment() {
            continue;
        }
        assert_eq!(block.id.as_deref(), Some(ids[received].as_str()));
        received += 1;
    }
    assert_eq!(
        received,
        ids.len(),
        "the stream ended with {} queued events never sent",
        ids.len() - received
    );
    drop(sse);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}
