//! Load sizing and slow-consumer setup shared by the backpressure tests of every transport
//! (SSE in `backpressure.rs`, WebSocket in `websocket.rs`).

use serde_json::json;
use socket2::{Domain, Socket, Type};

use super::{kernel_send_buffer_max, Client, TestServer};

/// Bytes of data per event (each SSE block or WebSocket frame is a little larger).
pub const PAYLOAD: usize = 3000;
/// The slow consumer's receive buffer (the kernel doubles it).
pub const SLOW_RCVBUF: usize = 4096;
/// The server's queue bound in these tests.
pub const MAX_QUEUE: usize = 65536;

/// How many events to publish so that they cannot all fit in what lies between the server and a
/// consumer that does not read: the server's send buffer (autotuned, at most `tcp_wmem`'s
/// maximum), the consumer's fixed receive buffer and the server's queue; with a margin.
pub fn events_to_overflow() -> usize {
    let buffered = kernel_send_buffer_max() + 2 * SLOW_RCVBUF + MAX_QUEUE;
    (buffered / PAYLOAD * 5 / 4).max(1000)
}

/// A server whose queues are bounded by [`MAX_QUEUE`] and whose slow consumers get `policy`.
pub fn backpressure_server(policy: &str) -> TestServer {
    TestServer::with_config(json!({"streaming": {"backpressure": {
        "max_queue_bytes": MAX_QUEUE,
        "slow_consumer": policy,
    }}}))
}

/// A raw client of `server` whose socket has a receive buffer of `rcvbuf` bytes.
pub fn client_with_small_rcvbuf(server: &TestServer, rcvbuf: usize) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    // Before connect, so that the window it advertises stays small.
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    Client::from_stream(socket.into())
}
