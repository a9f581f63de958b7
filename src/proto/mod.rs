//! The sans-IO core: everything mcp-stream knows about its protocols, with no sockets and no clock.
//!
//! Bytes and `now` go in; bytes, actions and deadlines come out. The layers, each owning one thing:
//!
//! - [`http`]: HTTP/1.1 request heads and bodies (httparse with caps), responses and JSON errors.
//! - [`sse`]: the Server-Sent Events encoding of everything a stream carries.
//! - [`hub`]: topics, per-topic history rings, event ids, subscriber sets, resume look-ups.
//! - [`queue`]: byte-bounded write queues of shared slices and the slow-consumer policy.
//! - [`timers`]: the one deadline structure for every connection timer.
//! - [`auth`]: credentials, static tokens and HS256 JWTs, and the topics they grant.
//! - [`rate`]: token buckets for request and message rates.
//! - [`jsonrpc`], [`ndjson`]: JSON-RPC messages, and the line framing of MCP's stdio transport.
//! - [`metrics`]: error kinds, the delivery-latency histogram, the performance monitor and the
//!   Prometheus text format.
//! - [`engine`]: the connection state machines, routing and fan-out that tie the others together.
//!
//! The driver (`crate::driver`) owns the sockets and reads the clock; nothing here does.

pub mod auth;
pub mod engine;
pub mod http;
pub mod hub;
pub mod jsonrpc;
pub mod metrics;
pub mod ndjson;
pub mod queue;
pub mod rate;
pub mod sse;
pub mod timers;
pub mod ws;

use std::fmt;

/// A connection's handle inside the [`engine::Engine`]: a slot index and the generation of its
/// tenant, so that a stale handle never reaches the next connection to use the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The slot, dense from 0; the driver keeps its socket at the same index.
    pub index: u32,
    /// Which tenant of the slot this is; increases for every connection the engine opens.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}
