//! The engine: every connection's state machine, request routing and the fan-out of published
//! events into subscriber queues — sans IO. The WebSocket message protocol is in the `websocket` submodule.
//!
//! # How a driver uses it
//!
//! The driver owns the sockets and the clock and calls, in this order:
//!
//! 1. [`Engine::accept`] for every new connection; keep the socket at the returned index.
//! 2. [`Engine::handle_input`] with the bytes read, [`Engine::handle_read_closed`] on end of
//!    stream, [`Engine::handle_closed`] when the driver itself drops a socket (an I/O error).
//! 3. [`Engine::publish`] for events published by the host.
//! 4. After any of these, [`Engine::poll_action`] until `None`: [`Action::Write`] means the
//!    connection has output — write what [`Engine::output`] gives, report it with
//!    [`Engine::consume_output`], and once the queue is empty ask [`Engine::on_drained`] whether
//!    to shut the write side; [`Action::Close`] means drop the socket (the engine has forgotten
//!    the connection already).
//! 5. Sleep until [`Engine::poll_timeout`], then call [`Engine::handle_timeout`].
//!
//! # DoS notes
//!
//! Every buffer a peer can grow has a cap from the config: the head (`max_head_bytes`, 431), the
//! body (`max_body_bytes`, 413), the write queue (`max_queue_bytes`, slow-consumer policy). Every
//! phase of a connection has a deadline: head, body, idle and linger. The work of one
//! `handle_input` call is bounded by the bytes given, which the driver bounds per wake-up.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use slab::Slab;

use super::auth::{Authenticator, Grant};
use super::http::{self, BodyDecoder, HttpError, Request};
use super::hub::{self, Event, EventId, Hub, HubError, Subscription};
use super::metrics::{ErrorCounts, ErrorKind, LatencyHistogram, Monitor};
use super::queue::{Encoding, Origin, Overflow, Policy, WriteQueue};
use super::rate::RateLimiter;
use super::sse;
use super::timers::{TimerSlot, Timers};
use super::ws;
use super::ConnId;
use crate::config::{Config, SlowConsumer};
use crate::features::{Feature, FeatureSet};

mod admin;
mod mcp;
mod stats;
mod websocket;

use mcp::{Mcp, McpStream};
use std::sync::Arc;
use websocket::WsConn;

pub use mcp::{
    CallId, ChildAction, ChildId, Resource, ResourceReader, Tool, ToolHandler, ToolReply,
    PROTOCOL_VERSIONS,
};

/// The reason of a `403` (or an error message) for a topic the credential does not grant.
pub(super) const FORBIDDEN_TOPIC: &str = "topic not allowed by the credential";
/// How long a closing connection may take to send its last bytes, and then to send its end of
/// stream after ours, before it is dropped. During a shutdown the drain deadline bounds the
/// first part instead.
const LINGER: Duration = Duration::from_secs(2);
/// Connections accepted beyond `max_connections` only to be told `503`.
const REFUSAL_RESERVE: usize = 64;
/// The most topics one SSE request may subscribe to.
const MAX_TOPICS_PER_STREAM: usize = 64;
/// The most event names one SSE request may filter on.
const MAX_EVENT_FILTERS: usize = 64;
/// Stale timer entries tolerated beyond twice the connections open before the heap is compacted.
const TIMER_SLACK: usize = 1024;
/// An input buffer larger than this is freed once empty; smaller ones are kept for the next
/// request of a keep-alive connection.
const IDLE_BUFFER_CAPACITY: usize = 4096;

/// What the driver must do for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It has output: write it.
    Write,
    /// Drop its socket; the engine has forgotten it.
    Close,
}

/// What to do once a connection's queue is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing: wait for input.
    Open,
    /// Shut the write side (the response or stream is over); the engine closes the connection
    /// when the peer's end of stream arrives or the linger deadline passes.
    ShutdownWrite,
}

/// Running totals, for tests, logs and the figures of `GET /metrics` and `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections open now, refused ones included.
    pub connections: usize,
    /// SSE streams open now.
    pub sse_streams: usize,
    /// WebSocket connections open now (MCP ones included).
    pub websockets: usize,
    /// WebSocket connections that carry an MCP session, open now.
    pub mcp_websockets: usize,
    /// WebSocket peers closed for not answering pings.
    pub keepalive_timeouts: u64,
    /// MCP SSE streams open now (streamed answers and session streams).
    pub mcp_streams: usize,
    /// Gateway children the engine has asked for and not yet let go (`mcp.stdio`).
    pub mcp_children: usize,
    /// Requests parsed.
    pub requests: u64,
    /// Messages received from clients: WebSocket messages, MCP JSON-RPC messages (each one of a
    /// batch), and events in `POST /stream/publish` bodies.
    pub messages_received: u64,
    /// WebSocket data messages received (pub/sub and MCP alike).
    pub websocket_messages: u64,
    /// Messages sent to clients: event copies once written, WebSocket replies and MCP
    /// JSON-RPC messages once queued.
    pub messages_sent: u64,
    /// Bytes read from clients (after TLS).
    pub bytes_received: u64,
    /// Bytes of output that left the engine for the socket (or for TLS).
    pub bytes_sent: u64,
    /// Errors, by kind.
    pub errors: ErrorCounts,
    /// `tools/call` requests from MCP clients.
    pub mcp_tool_calls: u64,
    /// Events published.
    pub events_published: u64,
    /// Event copies whose last byte was written to a socket.
    pub events_sent: u64,
    /// Event copies dropped from slow consumers' queues (`drop_oldest`).
    pub events_dropped: u64,
    /// Slow consumers disconnected (`disconnect`).
    pub slow_consumers_disconnected: u64,
    /// Connections refused with 503 (`max_connections`) or 429 (`max_connections_per_ip`).
    pub connections_refused: u64,
    /// Requests refused with 429, and WebSocket messages refused, by the rate limits.
    pub rate_limited: u64,
}

/// What a connection is doing.
#[derive(Debug)]
enum Phase {
    /// Between requests on a keep-alive connection (deadline: idle).
    Idle,
    /// Reading a request head (deadline: head).
    Head,
    /// Reading a request body (deadline: body).
    Body(Box<BodyPhase>),
    /// Streaming Server-Sent Events (deadline: heartbeat).
    Sse(Box<SseStream>),
    /// A WebSocket session (deadline: the next ping, or the pong it waits for).
    Ws(Box<WsConn>),
    /// An MCP SSE stream (deadline: the next countdown step, or a heartbeat).
    Mcp(Box<McpStream>),
    /// Sending its last bytes, then shutting the write side and waiting for the peer's end of
    /// stream (deadline: linger). Input is discarded.
    Closing,
}

#[derive(Debug)]
struct BodyPhase {
    request: Request,
    decoder: BodyDecoder,
    body: Vec<u8>,
}

#[derive(Debug)]
struct SseStream {
    subscriptions: Vec<Subscription>,
    /// The event names it wants; all when `None`.
    events: Option<Box<[Box<str>]>>,
    /// When it was last sent anything, for heartbeats.
    last_write: Instant,
}

impl SseStream {
    fn wants(&self, name: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| **n == *name))
    }
}

#[derive(Debug)]
struct Conn {
    generation: u32,
    /// The id clients see (`connected` event).
    public_id: u64,
    phase: Phase,
    /// Input not yet parsed.
    inbuf: Vec<u8>,
    /// How much of a partial head in `inbuf` is known to hold no end of head.
    head_searched: usize,
    /// The peer has ended its side.
    peer_closed: bool,
    out: WriteQueue,
    timer: TimerSlot,
    /// A [`Action::Write`] for it is waiting in the action queue.
    write_pending: bool,
    /// Its write side has been shut.
    write_shut: bool,
    /// It counts towards `max_connections` (refused connections do not).
    counted: bool,
    /// The peer's address, for `max_connections_per_ip`.
    ip: IpAddr,
}

/// All connections, the hub and the feature toggles.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    features: FeatureSet,
    hub: Hub,
    conns: Slab<Conn>,
    timers: Timers,
    actions: VecDeque<(ConnId, Action)>,
    counters: Counters,
    next_generation: u32,
    next_public_id: u64,
    counted_connections: usize,
    /// Counted connections by peer address, when `max_connections_per_ip` is set.
    per_ip: HashMap<IpAddr, usize>,
    drain_deadline: Option<Instant>,
    /// Every WebSocket connection, for broadcasts to all.
    websockets: Slab<ConnId>,
    mcp: Mcp,
    /// Fills buffers with random bytes (MCP session ids); the driver gives a secure one.
    random: RandomSource,
    /// The wall clock at an instant, as the driver last told it: for JWT `exp` and `nbf`.
    unix_at: Option<(Instant, Duration)>,
    /// Checks credentials (`stream-authentication`).
    auth: Authenticator,
    /// What a request gets while authentication is off: every topic.
    open_grant: Arc<Grant>,
    /// Request rates by client address (`stream-rate-limiting`).
    rate: RateLimiter,
    /// The CORS headers of the request being dispatched (empty: none), for its response or
    /// stream head.
    cors: String,
    /// How long live events took from publish to their socket write.
    delivery: LatencyHistogram,
    /// The performance monitor (`stream-monitoring`) and its next check.
    monitor: Monitor,
    monitor_due: Option<Instant>,
}

/// Fills a buffer with random bytes; returns whether it could.
type Fill = dyn FnMut(&mut [u8]) -> bool + Send;

/// A source of random bytes, given by the driver (the core reads no device).
pub struct RandomSource(Box<Fill>);

impl RandomSource {
    /// A source that calls `fill` for every buffer; `fill` returns whether it could.
    pub fn new(fill: impl FnMut(&mut [u8]) -> bool + Send + 'static) -> RandomSource {
        RandomSource(Box::new(fill))
    }

    /// A predictable source (splitmix64 from `seed`), for tests and benchmarks only.
    pub fn predictable(seed: u64) -> RandomSource {
        let mut state = seed;
        RandomSource::new(move |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(8) {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
            }
            true
        })
    }
}

impl std::fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RandomSource")
    }
}

impl Engine {
    /// An engine serving `config`, whose event ids carry `epoch`.
    pub fn new(config: Config, epoch: u32) -> Engine {
        let hub = Hub::new(
            epoch,
            config.websocket.message_history,
            config.limits.max_topics,
            config.backpressure.max_queue_bytes,
        );
        Engine {
            features: config.effective_features(),
            hub,
            conns: Slab::new(),
            timers: Timers::default(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            next_generation: 0,
            next_public_id: 0,
            counted_connections: 0,
            per_ip: HashMap::new(),
            drain_deadline: None,
            websockets: Slab::new(),
            mcp: Mcp::default(),
            random: RandomSource::predictable(u64::from(epoch)),
            unix_at: None,
            auth: Authenticator::new(
                &config.security.tokens,
                config.security.jwt_secret.as_deref(),
                config.security.admin_token.as_deref(),
            ),
            open_grant: Arc::new(Grant::all()),
            rate: RateLimiter::default(),
            cors: String::new(),
            delivery: LatencyHistogram::default(),
            monitor: Monitor::default(),
            monitor_due: None,
            config,
        }
    }

    /// Sets where MCP session ids come from: the driver gives a cryptographically secure
    /// source; without one, ids are predictable (fine for tests, not for a server).
    pub fn set_random_source(&mut self, random: RandomSource) {
        self.random = random;
    }

    /// Tells the engine the wall clock (time since the Unix epoch) at `now`; it reads no
    /// clock itself. The driver does this at every wake-up.
    pub fn set_unix_time(&mut self, now: Instant, since_epoch: Duration) {
        self.unix_at = Some((now, since_epoch));
    }

    /// The wall clock at `now`, in whole seconds since the Unix epoch (`None` until the driver
    /// has told it).
    fn unix_secs(&self, now: Instant) -> Option<u64> {
        let (at, since_epoch) = self.unix_at?;
        let elapsed = now.saturating_duration_since(at);
        Some((since_epoch + elapsed).as_secs())
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The most connections open at once, refused ones included: slot indices stay below it.
    pub fn max_slots(&self) -> usize {
        self.config.max_connections.saturating_add(REFUSAL_RESERVE)
    }

    /// The running totals.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The pub/sub hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The feature toggles in force.
    pub fn features(&self) -> FeatureSet {
        self.features
    }

    /// Whether the request's `Origin` (if any) may open a WebSocket or use MCP: one of
    /// `allowed_origins` when that list is set; otherwise, for a loopback listener, an origin on
    /// a loopback host; otherwise one of `cors_origins` (`*` allows any). A request without an
    /// `Origin` (not from a browser) is allowed.
    fn origin_allowed(&self, request: &Request) -> bool {
        let Some(origin) = request.header("origin") else {
            return true;
        };
        let security = &self.config.security;
        let listed = |list: &[String]| list.iter().any(|a| a == origin || a == "*");
        if !security.allowed_origins.is_empty() {
            return listed(&security.allowed_origins);
        }
        if !self.config.listen.ip().is_loopback() {
            return listed(&security.cors_origins);
        }
        let host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("");
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        matches!(host, "localhost" | "127.0.0.1" | "::1")
    }

    /// Turns a feature on or off. Turning off a transport ends its open streams cleanly; nothing
    /// else is disturbed.
    pub fn set_feature(&mut self, now: Instant, feature: Feature, on: bool) {
        self.features.set(feature, on);
        if feature == Feature::StreamMonitoring {
            self.monitoring_switched(now, on);
        }
        if on {
            return;
        }
        match feature {
            Feature::SseStreaming => {
                let streams: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| matches!(c.phase, Phase::Sse(_)))
                    .map(|(i, c)| id_of(i, c))
                    .collect();
                for id in streams {
                    self.start_closing(now, id);
                }
            }
            Feature::WebsocketStreaming => {
                let sockets: Vec<ConnId> = self.websockets.iter().map(|(_, id)| *id).collect();
                for id in sockets {
                    self.ws_close(now, id, 1001, "WebSocket streaming disabled");
                }
            }
            Feature::McpTransport => {
                let (streams, sockets): (Vec<_>, Vec<_>) = self
                    .conns
                    .iter()
                    .filter_map(|(i, c)| match &c.phase {
                        Phase::Mcp(_) => Some((id_of(i, c), false)),
                        Phase::Ws(socket) if socket.mcp_session.is_some() => {
                            Some((id_of(i, c), true))
                        }
                        _ => None,
                    })
                    .partition(|(_, socket)| !socket);
                for (id, _) in streams {
                    self.start_closing(now, id);
                }
                for (id, _) in sockets {
                    self.ws_close(now, id, 1001, "MCP transport disabled");
                }
            }
            _ => {}
        }
    }

    /// Whether the engine is draining for shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// A new connection from `peer`. `None`: refuse it outright (drop the socket), because the
    /// engine is shutting down or even the refusal reserve is full. Beyond `max_connections` a
    /// connection is accepted only to be answered `503` and closed; beyond
    /// `max_connections_per_ip` from its address, `429`.
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> Option<ConnId> {
        if self.is_shutting_down() || self.conns.len() >= self.max_slots() {
            return None;
        }
        self.arm_monitor(now);
        if self.timers.len() > 2 * self.conns.len() + TIMER_SLACK {
            // Churn leaves entries of closed connections behind: drop them, and their memory.
            let conns = &self.conns;
            self.timers.compact(|id| {
                conns
                    .get(id.index as usize)
                    .filter(|c| c.generation == id.generation)
                    .map(|c| &c.timer)
            });
        }
        let ip = peer.ip();
        let per_ip = self.config.limits.max_connections_per_ip;
        let over_ip = per_ip > 0 && self.per_ip.get(&ip).is_some_and(|&n| n >= per_ip);
        let counted = !over_ip && self.counted_connections < self.config.max_connections;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_public_id += 1;
        let index = self.conns.insert(Conn {
            generation: self.next_generation,
            public_id: self.next_public_id,
            phase: Phase::Head,
            inbuf: Vec::new(),
            head_searched: 0,
            peer_closed: false,
            out: WriteQueue::default(),
            timer: TimerSlot::default(),
            write_pending: false,
            write_shut: false,
            counted,
            ip,
        });
        let id = id_of(index, &self.conns[index]);
        self.counters.connections += 1;
        if counted {
            self.counted_connections += 1;
            if per_ip > 0 {
                *self.per_ip.entry(ip).or_default() += 1;
            }
            self.set_deadline(id, now.checked_add(self.config.limits.head_timeout()));
        } else {
            self.counters.connections_refused += 1;
            let error = if over_ip {
                HttpError {
                    status: 429,
                    reason: "too many connections from this address",
                }
            } else {
                HttpError {
                    status: 503,
                    reason: "server at capacity",
                }
            };
            self.fail(now, id, error);
        }
        Some(id)
    }

    /// Bytes read from `id`.
    pub fn handle_input(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.counters.bytes_received += data.len() as u64;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        match conn.phase {
            // Nothing is read on a stream or while closing: what comes is dropped.
            Phase::Sse(_) | Phase::Mcp(_) | Phase::Closing => return,
            Phase::Ws(_) => return self.ws_input(now, id, data),
            Phase::Idle | Phase::Head | Phase::Body(_) => conn.inbuf.extend_from_slice(data),
        }
        self.advance(now, id);
    }

    /// The peer ended its side of `id`.
    pub fn handle_read_closed(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.peer_closed = true;
        match conn.phase {
            Phase::Sse(_) | Phase::Ws(_) | Phase::Mcp(_) => self.close(id),
            _ if conn.out.is_empty() => self.close(id),
            // What it is owed still goes out (a client may half-close after a request); the
            // connection closes once that is written.
            Phase::Closing => {}
            _ => self.start_closing(now, id),
        }
    }

    /// The driver dropped `id` on its own (an I/O error): forget it.
    pub fn handle_closed(&mut self, id: ConnId) {
        if self.forget(id) {
            self.counters.errors.add(ErrorKind::Io);
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<(ConnId, Action)> {
        while let Some((id, action)) = self.actions.pop_front() {
            if action == Action::Close {
                return Some((id, action));
            }
            if let Some(conn) = self.conn_mut(id) {
                conn.write_pending = false;
                return Some((id, action));
            }
        }
        None
    }

    /// Fills `out` with the next pending output slices of `id`; returns how many.
    pub fn output<'a>(&'a self, id: ConnId, out: &mut [IoSlice<'a>]) -> usize {
        self.conn(id).map_or(0, |c| c.out.fill_slices(out))
    }

    /// Whether `id` has output pending.
    pub fn has_output(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| !c.out.is_empty())
    }

    /// `written` bytes of `id`'s output reached the socket at `now`.
    pub fn consume_output(&mut self, now: Instant, id: ConnId, written: usize) {
        let Some(index) = self.index_of(id) else {
            return;
        };
        let (counters, delivery) = (&mut self.counters, &mut self.delivery);
        counters.bytes_sent += written as u64;
        self.conns[index].out.consume(written, |event, origin| {
            counters.events_sent += 1;
            counters.messages_sent += 1;
            if origin == Origin::Live {
                delivery.observe(now.saturating_duration_since(event.published_at));
            }
        });
    }

    /// `id`'s queue is empty: what now. `now` starts the linger time of a connection whose
    /// write side is shut.
    pub fn on_drained(&mut self, now: Instant, id: ConnId) -> Drained {
        let Some(conn) = self.conn_mut(id) else {
            return Drained::Open;
        };
        if !matches!(conn.phase, Phase::Closing) || conn.write_shut {
            return Drained::Open;
        }
        if conn.peer_closed {
            // Both sides are done: nothing to linger for.
            self.close(id);
            return Drained::Open;
        }
        conn.write_shut = true;
        self.set_deadline(id, now.checked_add(LINGER));
        Drained::ShutdownWrite
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.drain_deadline,
            self.mcp_next_reap(),
            self.mcp_next_call(),
            self.rate.next_sweep(),
            self.monitor_next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Acts on every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(index) = self.index_of(id) else {
                continue;
            };
            if self.timers.fire(&mut self.conns[index].timer, id, at, now) {
                self.on_deadline(now, id);
            }
        }
        self.mcp_calls_due(now);
        self.mcp_reap(now);
        self.monitor_due_check(now);
        if self.rate.next_sweep().is_some_and(|due| due <= now) {
            let per_minute = self.config.security.max_requests_per_minute;
            self.rate.sweep(per_minute, now);
        }
        if self.drain_deadline.is_some_and(|d| d <= now) {
            let all: Vec<ConnId> = self.conns.iter().map(|(i, c)| id_of(i, c)).collect();
            for id in all {
                self.close(id);
            }
        }
    }

    /// Starts a graceful shutdown: streams end after what they have queued, idle connections
    /// close, and at `now + drain_timeout` whatever is left is dropped.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.is_shutting_down() {
            return;
        }
        self.drain_deadline = Some(
            now.checked_add(self.config.limits.drain_timeout())
                .unwrap_or(now),
        );
        self.mcp_end_gateway_sessions(now);
        let all: Vec<ConnId> = self.conns.iter().map(|(i, c)| id_of(i, c)).collect();
        for id in all {
            let Some(conn) = self.conn(id) else { continue };
            match conn.phase {
                Phase::Closing => {}
                Phase::Sse(_) | Phase::Mcp(_) => self.start_closing(now, id),
                Phase::Ws(_) => self.ws_close(now, id, 1001, "server shutting down"),
                _ if !conn.out.is_empty() => self.start_closing(now, id),
                _ => self.close(id),
            }
        }
    }

    /// Publishes an event on `topic` named `event` (`"message"` when `None`) and queues it for
    /// every subscriber. Returns its id.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        event: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<EventId, HubError> {
        self.publish_handed_over(now, now, topic, event, data)
    }

    /// Like [`Engine::publish`], for an event another thread handed over at `handed_over`
    /// (at or before `now`): its delivery latency counts from then.
    pub fn publish_handed_over(
        &mut self,
        now: Instant,
        handed_over: Instant,
        topic: &str,
        event: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<EventId, HubError> {
        let name = event.unwrap_or("message");
        self.publish_json(now, handed_over, topic, name, &data.to_string())
    }

    /// Publishes an event whose data is already compact JSON text, published (for its
    /// delivery latency) at `published_at`.
    fn publish_json(
        &mut self,
        now: Instant,
        published_at: Instant,
        topic: &str,
        name: &str,
        data: &str,
    ) -> Result<EventId, HubError> {
        let at = published_at.min(now);
        let (event, topic_index) = self.hub.publish(at, topic, name, data, None)?;
        self.counters.events_published += 1;
        self.arm_monitor(now);
        self.fan_out(now, &event, Some(topic_index), None);
        Ok(event.id)
    }

    /// Queues `event` for every subscriber of the topic at `topic_index` (every WebSocket
    /// client when `None`), except `exclude`; applies the slow-consumer policy.
    fn fan_out(
        &mut self,
        now: Instant,
        event: &Arc<Event>,
        topic_index: Option<usize>,
        exclude: Option<ConnId>,
    ) {
        let mut delivery = Delivery {
            conns: &mut self.conns,
            actions: &mut self.actions,
            counters: &mut self.counters,
            limit: self.config.backpressure.max_queue_bytes,
            policy: policy(&self.config),
            now,
            overflowed: Vec::new(),
        };
        match topic_index {
            Some(index) => {
                for id in self.hub.subscribers(index) {
                    if Some(id) != exclude {
                        delivery.deliver(id, event);
                    }
                }
            }
            None => {
                for (_, &id) in &self.websockets {
                    if Some(id) != exclude {
                        delivery.deliver(id, event);
                    }
                }
            }
        }
        let overflowed = std::mem::take(&mut delivery.overflowed);
        if topic_index.is_some() {
            self.mcp_topic_updated(&event.topic);
        }
        for id in overflowed {
            self.counters.slow_consumers_disconnected += 1;
            log::debug!("connection {id}: slow consumer disconnected");
            if matches!(self.conn(id).map(|c| &c.phase), Some(Phase::Ws(_))) {
                if let Some(conn) = self.conn_mut(id) {
                    // What has started to leave must finish for the close frame to be read.
                    conn.out.truncate_to_started();
                }
                self.ws_close(now, id, 1008, "slow consumer: queue full");
            } else {
                self.close(id);
            }
        }
    }

    // ---- connection plumbing ----

    fn index_of(&self, id: ConnId) -> Option<usize> {
        let index = id.index as usize;
        self.conns
            .get(index)
            .filter(|c| c.generation == id.generation)
            .map(|_| index)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.index_of(id).map(|i| &self.conns[i])
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.index_of(id).map(|i| &mut self.conns[i])
    }

    fn set_deadline(&mut self, id: ConnId, at: Option<Instant>) {
        if let Some(index) = self.index_of(id) {
            self.timers.set(&mut self.conns[index].timer, id, at);
        }
    }

    /// Asks the driver to write `id`'s output.
    fn want_write(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if !conn.write_pending {
                conn.write_pending = true;
                self.actions.push_back((id, Action::Write));
            }
        }
    }

    /// Drops `id` now and tells the driver to drop its socket.
    fn close(&mut self, id: ConnId) {
        if self.forget(id) {
            self.actions.push_back((id, Action::Close));
        }
    }

    /// Removes `id` and everything it holds in the hub. Returns whether it was there.
    fn forget(&mut self, id: ConnId) -> bool {
        let Some(index) = self.index_of(id) else {
            return false;
        };
        let conn = self.conns.remove(index);
        self.counters.connections -= 1;
        if conn.counted {
            self.counted_connections -= 1;
            if let Some(n) = self.per_ip.get_mut(&conn.ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&conn.ip);
                }
            }
        }
        self.release(id, conn.phase);
        true
    }

    /// Gives back what a stream held in the hub (or its MCP session) when it ends.
    fn release(&mut self, id: ConnId, phase: Phase) {
        match phase {
            Phase::Sse(stream) => {
                self.counters.sse_streams -= 1;
                for sub in stream.subscriptions {
                    self.hub.unsubscribe(sub);
                }
            }
            Phase::Ws(socket) => {
                self.counters.websockets -= 1;
                if let Some(key) = socket.everyone_key {
                    self.websockets.try_remove(key);
                }
                if let Some(session) = &socket.mcp_session {
                    self.counters.mcp_websockets -= 1;
                    self.mcp_forget_session(session);
                }
                for (_, sub) in socket.rooms {
                    self.hub.unsubscribe(sub);
                }
            }
            Phase::Mcp(stream) => self.mcp_release(id, *stream),
            _ => {}
        }
    }

    /// Ends `id` gracefully: what is queued goes out, then the write side is shut; the
    /// connection goes when the peer ends too or the linger deadline passes.
    fn start_closing(&mut self, now: Instant, id: ConnId) {
        let Some(index) = self.index_of(id) else {
            return;
        };
        let conn = &mut self.conns[index];
        let previous = std::mem::replace(&mut conn.phase, Phase::Closing);
        conn.inbuf = Vec::new();
        self.release(id, previous);
        // While draining for shutdown the drain deadline bounds the flush; otherwise a client
        // that does not take its last bytes gets the linger time.
        let deadline = if self.is_shutting_down() {
            None
        } else {
            now.checked_add(LINGER)
        };
        self.set_deadline(id, deadline);
        self.want_write(id);
    }

    /// Answers `id` with an error and closes it.
    fn fail(&mut self, now: Instant, id: ConnId, error: HttpError) {
        self.count_status(error.status);
        if let Some(conn) = self.conn_mut(id) {
            conn.out
                .push_owned(http::error_response(error.status, error.reason, "", false));
        }
        self.start_closing(now, id);
    }

    /// Counts an error answer.
    fn count_status(&mut self, status: u16) {
        if let Some(kind) = ErrorKind::of_status(status) {
            self.counters.errors.add(kind);
        }
    }

    /// Queues a complete response and moves `id` to its next request (or closes it).
    fn respond(&mut self, now: Instant, id: ConnId, response: Vec<u8>, keep_alive: bool) {
        if let Some(status) = http::response_status(&response) {
            self.count_status(status);
        }
        let response = if self.cors.is_empty() {
            response
        } else {
            http::insert_headers(response, &self.cors)
        };
        let limit = self.config.backpressure.max_queue_bytes;
        let keep_alive = keep_alive && !self.is_shutting_down();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        // A client pipelining requests without reading the answers is a slow consumer.
        if !conn.out.is_empty() && conn.out.len() + response.len() > limit {
            self.counters.slow_consumers_disconnected += 1;
            self.close(id);
            return;
        }
        conn.out.push_owned(response);
        if keep_alive {
            conn.phase = Phase::Idle;
            let idle = self.config.limits.idle_timeout();
            self.set_deadline(id, now.checked_add(idle));
            self.want_write(id);
        } else {
            self.start_closing(now, id);
        }
    }

    fn on_deadline(&mut self, now: Instant, id: ConnId) {
        let heartbeat = self.config.sse.heartbeat();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        match &mut conn.phase {
            Phase::Idle | Phase::Closing => self.close(id),
            // A connection that never sent a byte goes quietly; a partial head gets a 408.
            Phase::Head if conn.inbuf.is_empty() => self.close(id),
            Phase::Head => self.fail(
                now,
                id,
                HttpError {
                    status: 408,
                    reason: "request head too slow",
                },
            ),
            Phase::Body(_) => self.fail(
                now,
                id,
                HttpError {
                    status: 408,
                    reason: "request body too slow",
                },
            ),
            Phase::Sse(stream) => {
                // A queue that is not empty says the stream is not idle (or the client is not
                // reading, which its bound deals with): no ping then.
                let idle = now.saturating_duration_since(stream.last_write) >= heartbeat
                    && conn.out.is_empty();
                if idle {
                    conn.out.push_static(sse::HEARTBEAT);
                    stream.last_write = now;
                }
                let next = stream
                    .last_write
                    .checked_add(heartbeat)
                    .filter(|due| *due > now)
                    .or_else(|| now.checked_add(heartbeat));
                if idle {
                    self.want_write(id);
                }
                self.set_deadline(id, next);
            }
            Phase::Ws(_) => self.ws_keepalive(now, id),
            Phase::Mcp(_) => self.mcp_heartbeat(now, id),
        }
    }

    // ---- HTTP ----

    /// Parses and serves every complete request in `id`'s input.
    ///
    /// Linear in the input: a head is parsed only once its terminator has arrived (the bytes
    /// already searched are not searched again), and what was used is removed from the buffer
    /// once, at the end, however many pipelined requests it held.
    fn advance(&mut self, now: Instant, id: ConnId) {
        let limits = &self.config.limits;
        let (max_head, max_body, max_headers) = (
            limits.max_head_bytes,
            limits.max_body_bytes,
            limits.max_header_count,
        );
        let mut used = 0;
        while let Some(index) = self.index_of(id) {
            let conn = &mut self.conns[index];
            // Empty once a phase change has taken the buffer (a stream, a close).
            let input = conn.inbuf.get(used..).unwrap_or_default();
            match &mut conn.phase {
                Phase::Idle | Phase::Head => {
                    // Blank lines before a request line are skipped (RFC 9112 section 2.2).
                    let blank = input
                        .iter()
                        .take_while(|b| matches!(b, b'\r' | b'\n'))
                        .count();
                    if blank > 0 {
                        used += blank;
                        conn.head_searched = 0;
                        continue;
                    }
                    if input.is_empty() {
                        break;
                    }
                    let searched = conn.head_searched.saturating_sub(3).min(input.len());
                    let complete = has_head_end(&input[searched..]);
                    let parsed = if complete {
                        http::parse_head(input, max_headers, max_head)
                    } else {
                        Ok(None)
                    };
                    match parsed {
                        Err(e) => return self.fail(now, id, e),
                        Ok(None) if input.len() > max_head => {
                            return self.fail(
                                now,
                                id,
                                HttpError {
                                    status: 431,
                                    reason: "request head too large",
                                },
                            )
                        }
                        Ok(None) => {
                            conn.head_searched = input.len();
                            if matches!(conn.phase, Phase::Idle) {
                                conn.phase = Phase::Head;
                                let head = self.config.limits.head_timeout();
                                self.set_deadline(id, now.checked_add(head));
                            }
                            break;
                        }
                        Ok(Some((request, n))) => {
                            used += n;
                            conn.head_searched = 0;
                            self.counters.requests += 1;
                            let body_waiting = conn.inbuf.len() > used;
                            if let Err(e) = self.start_body(now, id, request, body_waiting) {
                                return self.fail(now, id, e);
                            }
                        }
                    }
                }
                Phase::Body(b) => match b.decoder.decode(input, &mut b.body, max_body, max_head) {
                    Err(e) => return self.fail(now, id, e),
                    Ok(d) => {
                        used += d.consumed;
                        if !d.done {
                            break;
                        }
                        let Phase::Body(b) = std::mem::replace(&mut conn.phase, Phase::Head) else {
                            break;
                        };
                        self.dispatch(now, id, b.request, b.body);
                    }
                },
                // Frames that came with the upgrade request are the session's.
                Phase::Ws(_) => {
                    let rest = conn.inbuf.split_off(used.min(conn.inbuf.len()));
                    conn.inbuf = Vec::new();
                    if !rest.is_empty() {
                        self.ws_input(now, id, &rest);
                    }
                    return;
                }
                // The buffer went with the phase change.
                Phase::Sse(_) | Phase::Mcp(_) | Phase::Closing => return,
            }
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.inbuf.drain(..used.min(conn.inbuf.len()));
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > IDLE_BUFFER_CAPACITY {
                conn.inbuf = Vec::new();
            }
        }
    }

    /// After a head: serves a request without a body at once, or starts reading its body.
    fn start_body(
        &mut self,
        now: Instant,
        id: ConnId,
        request: Request,
        body_waiting: bool,
    ) -> Result<(), HttpError> {
        let kind = request.body_kind()?;
        if let http::BodyKind::Length(n) = kind {
            if n > self.config.limits.max_body_bytes as u64 {
                return Err(HttpError {
                    status: 413,
                    reason: "request body too large",
                });
            }
        }
        let Some(decoder) = BodyDecoder::new(kind) else {
            self.dispatch(now, id, request, Vec::new());
            return Ok(());
        };
        let body_timeout = self.config.limits.body_timeout();
        if let Some(conn) = self.conn_mut(id) {
            if request.expects_continue() && !body_waiting {
                conn.out.push_static(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            conn.phase = Phase::Body(Box::new(BodyPhase {
                request,
                decoder,
                body: Vec::new(),
            }));
        }
        self.set_deadline(id, now.checked_add(body_timeout));
        self.want_write(id);
        Ok(())
    }

    /// Routes a complete request.
    fn dispatch(&mut self, now: Instant, id: ConnId, request: Request, body: Vec<u8>) {
        self.cors = self.cors_headers(&request);
        self.route(now, id, request, body);
        self.cors.clear();
    }

    /// The CORS headers for `request`: with `cors_enabled` and an `Origin` that
    /// `cors_origins` allows, `Access-Control-Allow-Origin` (`*`, or the origin itself with
    /// credentials allowed) and the headers a page may read.
    fn cors_headers(&self, request: &Request) -> String {
        let security = &self.config.security;
        let Some(origin) = request.header("origin").filter(|_| security.cors_enabled) else {
            return String::new();
        };
        let expose =
            "Access-Control-Expose-Headers: Mcp-Session-Id, Retry-After, WWW-Authenticate\r\n";
        if security.cors_origins.iter().any(|o| o == "*") {
            format!("Access-Control-Allow-Origin: *\r\n{expose}")
        } else if security.cors_origins.iter().any(|o| o == origin)
            && !origin.contains(['\r', '\n'])
        {
            format!(
                "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n\
                 Access-Control-Allow-Credentials: true\r\n{expose}"
            )
        } else {
            String::new()
        }
    }

    /// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`):
    /// `204` with what may be sent, or `403` for an origin `cors_origins` does not allow.
    fn preflight(&self, request: &Request) -> Vec<u8> {
        let keep_alive = request.keep_alive();
        if self.cors.is_empty() {
            return http::error_response(403, "origin not allowed", "", keep_alive);
        }
        // The headers asked for, if they are plain header names; else the ones the API reads.
        let asked = request
            .header("access-control-request-headers")
            .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b)))
            .unwrap_or("Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID");
        let headers = format!(
            "{}Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS\r\n\
             Access-Control-Allow-Headers: {asked}\r\nAccess-Control-Max-Age: 600\r\n",
            self.cors
        );
        http::response(204, "text/plain", b"", &headers, keep_alive)
    }

    fn route(&mut self, now: Instant, id: ConnId, request: Request, body: Vec<u8>) {
        let keep_alive = request.keep_alive();
        let method = request.method.as_str();
        if method == "OPTIONS"
            && self.config.security.cors_enabled
            && request.header("origin").is_some()
            && request.header("access-control-request-method").is_some()
        {
            let response = self.preflight(&request);
            self.cors.clear();
            return self.respond(now, id, response, keep_alive);
        }
        if request.path != "/health" && self.features.is_enabled(Feature::StreamRateLimiting) {
            let per_minute = self.config.security.max_requests_per_minute;
            let ip = self.conn(id).map(|c| c.ip);
            if let Some(Err(wait)) = ip.map(|ip| self.rate.check(ip, per_minute, now)) {
                self.counters.rate_limited += 1;
                let retry = format!("Retry-After: {wait}\r\n");
                let response = http::error_response(429, "rate limited", &retry, keep_alive);
                return self.respond(now, id, response, keep_alive);
            }
        }
        let mcp_endpoint = request.path == self.config.mcp.path;
        let mcp_path = mcp_endpoint || matches!(request.path.as_str(), "/sse" | "/messages");
        let admin = request.path.starts_with("/admin/");
        if admin {
            if let Err((status, reason)) = self.admin_access(id, &request) {
                let challenge = if status == 401 {
                    "WWW-Authenticate: Bearer realm=\"mcp-stream admin\"\r\n"
                } else {
                    ""
                };
                let response = http::error_response(status, reason, challenge, keep_alive);
                return self.respond(now, id, response, keep_alive);
            }
        }
        let protected = mcp_path
            || matches!(
                request.path.as_str(),
                "/stream/sse" | "/stream/ws" | "/stream/publish"
            )
            || (request.path == "/" && ws::wants_upgrade(&request))
            // With an admin token, the admin API takes that token instead.
            || (admin && !self.auth.has_admin_token());
        let grant = match self.authenticate(now, &request, protected) {
            Ok(grant) => grant,
            Err(reason) => {
                let challenge = "WWW-Authenticate: Bearer realm=\"mcp-stream\"\r\n";
                let response = http::error_response(401, reason, challenge, keep_alive);
                let response = if method == "HEAD" {
                    strip_body(response)
                } else {
                    response
                };
                return self.respond(now, id, response, keep_alive);
            }
        };
        if mcp_path {
            // Every MCP path, on every transport, is refused alike.
            if let Some((status, reason)) = self.mcp_refusal(&request) {
                let response = http::error_response(status, reason, "", keep_alive);
                let response = if method == "HEAD" {
                    strip_body(response)
                } else {
                    response
                };
                return self.respond(now, id, response, keep_alive);
            }
            return match request.path.as_str() {
                _ if mcp_endpoint && ws::wants_upgrade(&request) => {
                    self.open_websocket(now, id, &request, true, grant)
                }
                _ if mcp_endpoint => self.mcp_request(now, id, &request, &body, grant),
                "/sse" => self.mcp_legacy_open(now, id, &request, grant),
                _ => self.mcp_legacy_post(now, id, &request, &body),
            };
        }
        let response = match request.path.as_str() {
            "/health" => match method {
                "GET" | "HEAD" => http::json_response(200, &self.health_json(), "", keep_alive),
                _ => method_not_allowed("GET, HEAD", keep_alive),
            },
            "/stats" => match method {
                "GET" | "HEAD" => http::json_response(200, &self.stats_json(), "", keep_alive),
                _ => method_not_allowed("GET, HEAD", keep_alive),
            },
            "/metrics" => match method {
                "GET" | "HEAD" => http::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics_text().as_bytes(),
                    "",
                    keep_alive,
                ),
                _ => method_not_allowed("GET, HEAD", keep_alive),
            },
            "/stream/ws" => match method {
                "GET" => return self.open_websocket(now, id, &request, false, grant),
                _ => method_not_allowed("GET", keep_alive),
            },
            "/" if ws::wants_upgrade(&request) => {
                return self.open_websocket(now, id, &request, false, grant)
            }
            "/" => match method {
                "GET" | "HEAD" => http::response(
                    200,
                    "text/html; charset=utf-8",
                    DASHBOARD_PAGE.as_bytes(),
                    "",
                    keep_alive,
                ),
                _ => method_not_allowed("GET, HEAD", keep_alive),
            },
            "/stream/sse" => match method {
                "GET" => return self.open_sse(now, id, &request, &grant),
                _ => method_not_allowed("GET", keep_alive),
            },
            _ if admin => self.admin_request(now, &request, &body),
            "/stream/publish" => match method {
                "POST" => self.publish_request(now, &body, keep_alive, &grant),
                _ => method_not_allowed("POST", keep_alive),
            },
            _ => http::error_response(404, "not found", "", keep_alive),
        };
        let response = if method == "HEAD" {
            strip_body(response)
        } else {
            response
        };
        self.respond(now, id, response, keep_alive);
    }

    /// The grant of a request to a `protected` path: with `stream-authentication` on, what
    /// its credential allows, or why it gets `401`.
    fn authenticate(
        &self,
        now: Instant,
        request: &Request,
        protected: bool,
    ) -> Result<Arc<Grant>, &'static str> {
        if !protected || !self.features.is_enabled(Feature::StreamAuthentication) {
            return Ok(self.open_grant.clone());
        }
        match self.auth.check(request, self.unix_secs(now)) {
            Ok(grant) if grant == Grant::all() => Ok(self.open_grant.clone()),
            Ok(grant) => Ok(Arc::new(grant)),
            Err(unauthorized) => Err(unauthorized.0),
        }
    }

    /// `POST /stream/publish`: one `{"topic","event","data"}` or an array of them.
    fn publish_request(
        &mut self,
        now: Instant,
        body: &[u8],
        keep_alive: bool,
        grant: &Grant,
    ) -> Vec<u8> {
        let bad = |reason: &str| http::error_response(400, reason, "", keep_alive);
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(&format!("invalid JSON: {e}")),
        };
        let items = match &value {
            serde_json::Value::Array(items) => items.iter().collect::<Vec<_>>(),
            one => vec![one],
        };
        self.counters.messages_received += items.len() as u64;
        // All of the batch or none of it: every item is checked before any is published, so a
        // client told to retry never duplicates a part.
        let mut checked = Vec::with_capacity(items.len());
        for item in items {
            let (topic, event, data) = match publication(item) {
                Ok(p) => p,
                Err(reason) => return bad(reason),
            };
            if !grant.may_publish(topic) {
                return http::error_response(403, FORBIDDEN_TOPIC, "", keep_alive);
            }
            let event = event.unwrap_or("message");
            let data = data.to_string();
            match self.hub.check(topic, event, &data) {
                Ok(()) => checked.push((topic, event, data)),
                Err(HubError::TooLarge) => {
                    return http::error_response(413, HubError::TooLarge.reason(), "", keep_alive)
                }
                Err(e) => return bad(e.reason()),
            }
        }
        let topics = || checked.iter().map(|(topic, _, _)| *topic);
        if !self.hub.has_room_for(topics()) {
            return http::error_response(503, HubError::TooManyTopics.reason(), "", keep_alive);
        }
        // Room for new topics is made from topics outside the batch.
        self.hub.touch(topics());
        let mut ids = Vec::with_capacity(checked.len());
        for (topic, event, data) in &checked {
            match self.publish_json(now, now, topic, event, data) {
                Ok(id) => ids.push(serde_json::Value::String(id.to_string())),
                Err(e) => return bad(e.reason()),
            }
        }
        let body = serde_json::json!({ "ids": ids }).to_string();
        http::json_response(202, &body, "", keep_alive)
    }

    /// `GET /stream/sse`: subscribes and turns the connection into a stream.
    fn open_sse(&mut self, now: Instant, id: ConnId, request: &Request, grant: &Grant) {
        let keep_alive = request.keep_alive();
        if let Err((status, reason)) = self.subscribe_sse(now, id, request, grant) {
            let response = http::error_response(status, reason, "", keep_alive);
            self.respond(now, id, response, keep_alive);
        }
    }

    fn subscribe_sse(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        grant: &Grant,
    ) -> Result<(), (u16, &'static str)> {
        if !self.features.is_enabled(Feature::SseStreaming) {
            return Err((501, "SSE streaming not enabled"));
        }
        if self.counters.sse_streams >= self.config.sse.max_connections {
            return Err((503, "too many SSE streams"));
        }
        let mut topics: Vec<String> = Vec::new();
        let mut events: Vec<Box<str>> = Vec::new();
        let mut cursor = request.header("last-event-id").map(str::to_string);
        for (key, value) in http::query_pairs(&request.query) {
            match key.as_str() {
                "topic" => {
                    for t in value.split(',').filter(|t| !t.is_empty()) {
                        if !hub::valid_topic(t) {
                            return Err((400, HubError::InvalidTopic.reason()));
                        }
                        if !grant.may_subscribe(t) {
                            return Err((403, FORBIDDEN_TOPIC));
                        }
                        if !topics.iter().any(|have| have == t) {
                            if topics.len() == MAX_TOPICS_PER_STREAM {
                                return Err((400, "too many topics: at most 64 per stream"));
                            }
                            topics.push(t.to_string());
                        }
                    }
                }
                "event" => {
                    for e in value.split(',').filter(|e| !e.is_empty()) {
                        if !events.iter().any(|have| **have == *e) {
                            if events.len() == MAX_EVENT_FILTERS {
                                return Err((400, "too many event names: at most 64 per stream"));
                            }
                            events.push(e.into());
                        }
                    }
                }
                "lastEventId" if cursor.is_none() => cursor = Some(value),
                _ => {}
            }
        }
        if topics.is_empty() {
            return Err((400, "missing topic"));
        }
        self.hub.touch(topics.iter().map(String::as_str));
        let mut subscriptions = Vec::with_capacity(topics.len());
        for t in &topics {
            match self.hub.subscribe(id, t) {
                Ok(sub) => subscriptions.push(sub),
                Err(e) => {
                    for sub in subscriptions {
                        self.hub.unsubscribe(sub);
                    }
                    return Err(match e {
                        HubError::TooManyTopics => (503, e.reason()),
                        _ => (400, e.reason()),
                    });
                }
            }
        }
        let limit = self.config.backpressure.max_queue_bytes;
        let replay = cursor.map(|c| {
            let mut replay = self.hub.replay(&subscriptions, &c);
            replay
                .events
                .retain(|e| events.is_empty() || events.iter().any(|n| **n == *e.name));
            // Room is left for the opening and the recovery event.
            fit_replay(replay, limit.saturating_sub(1024), Encoding::Sse)
        });
        let stream = SseStream {
            subscriptions,
            events: (!events.is_empty()).then(|| events.into_boxed_slice()),
            last_write: now,
        };
        let policy = policy(&self.config);
        let retry_ms = self.config.sse.retry_ms;
        let heartbeat = self.config.sse.heartbeat();
        let cors = std::mem::take(&mut self.cors);
        let Some(conn) = self.conn_mut(id) else {
            return Ok(());
        };
        conn.inbuf = Vec::new();
        conn.out.push_owned(sse::stream_opening(
            retry_ms,
            &conn.public_id.to_string(),
            &cors,
        ));
        let mut overflow = false;
        let mut dropped = 0;
        if let Some(replay) = replay {
            for event in replay.events {
                match conn.out.push_event(
                    event,
                    Encoding::Sse,
                    Origin::Replay,
                    limit,
                    policy,
                    sse::dropped,
                ) {
                    Ok(n) => dropped += n,
                    Err(Overflow::Disconnect) => {
                        overflow = true;
                        break;
                    }
                }
            }
            conn.out.push_owned(sse::recovery(replay.complete));
        }
        conn.phase = Phase::Sse(Box::new(stream));
        self.counters.sse_streams += 1;
        self.counters.events_dropped += dropped;
        if overflow {
            self.counters.slow_consumers_disconnected += 1;
            self.close(id);
            return Ok(());
        }
        self.set_deadline(id, now.checked_add(heartbeat));
        self.want_write(id);
        Ok(())
    }
}

/// A replay that fits in `budget` bytes of a queue in `encoding`, or an incomplete one: a client
/// must never be told `recovered:true` after part of its replay was dropped, and a replay that
/// could never fit must not close the stream that asked for it.
fn fit_replay(replay: hub::Replay, budget: usize, encoding: Encoding) -> hub::Replay {
    let bytes: usize = replay
        .events
        .iter()
        .map(|e| match encoding {
            Encoding::Sse => e.sse_bytes().len(),
            Encoding::WebSocket => e.ws_frame().len(),
        })
        .sum();
    if bytes <= budget {
        return replay;
    }
    hub::Replay {
        complete: false,
        events: Vec::new(),
    }
}

/// The dashboard served at `/`: one self-contained page (no CDN, no build step) that shows
/// the server's figures, switches its features and tries its streams from a browser.
const DASHBOARD_PAGE: &str = include_str!("../dashboard.html");

/// The fan-out of one event: the parts of the engine it touches, borrowed apart from the hub
/// whose subscriber list it walks.
struct Delivery<'a> {
    conns: &'a mut Slab<Conn>,
    actions: &'a mut VecDeque<(ConnId, Action)>,
    counters: &'a mut Counters,
    limit: usize,
    policy: Policy,
    now: Instant,
    /// Connections whose queue overflowed under [`Policy::Disconnect`].
    overflowed: Vec<ConnId>,
}

impl Delivery<'_> {
    /// Queues `event` for `id` in the encoding of its transport.
    fn deliver(&mut self, id: ConnId, event: &Arc<Event>) {
        let Some(conn) = self
            .conns
            .get_mut(id.index as usize)
            .filter(|c| c.generation == id.generation)
        else {
            return;
        };
        let pushed = match &mut conn.phase {
            Phase::Sse(stream) => {
                if !stream.wants(&event.name) {
                    return;
                }
                stream.last_write = self.now;
                conn.out.push_event(
                    event.clone(),
                    Encoding::Sse,
                    Origin::Live,
                    self.limit,
                    self.policy,
                    sse::dropped,
                )
            }
            Phase::Ws(_) => conn.out.push_event(
                event.clone(),
                Encoding::WebSocket,
                Origin::Live,
                self.limit,
                self.policy,
                ws::dropped,
            ),
            _ => return,
        };
        match pushed {
            Ok(dropped) => {
                self.counters.events_dropped += dropped;
                if !conn.write_pending {
                    conn.write_pending = true;
                    self.actions.push_back((id, Action::Write));
                }
            }
            Err(Overflow::Disconnect) => self.overflowed.push(id),
        }
    }
}

/// Whether `bytes` hold the blank line that ends a request head.
fn has_head_end(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\r\n" && i > 0 && bytes[i - 1] == b'\n'))
}

fn id_of(index: usize, conn: &Conn) -> ConnId {
    ConnId {
        index: index as u32,
        generation: conn.generation,
    }
}

fn policy(config: &Config) -> Policy {
    match config.backpressure.slow_consumer {
        SlowConsumer::Disconnect => Policy::Disconnect,
        SlowConsumer::DropOldest => Policy::DropOldest,
    }
}

fn method_not_allowed(allow: &str, keep_alive: bool) -> Vec<u8> {
    http::error_response(
        405,
        "method not allowed",
        &format!("Allow: {allow}\r\n"),
        keep_alive,
    )
}

/// A response to `HEAD`: the head alone.
fn strip_body(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

/// One item of a publish request: `(topic, event, data)`.
fn publication(
    item: &serde_json::Value,
) -> Result<(&str, Option<&str>, &serde_json::Value), &'static str> {
    let serde_json::Value::Object(fields) = item else {
        return Err("expected an object or an array of objects");
    };
    let topic = match fields.get("topic") {
        Some(serde_json::Value::String(t)) if hub::valid_topic(t) => t.as_str(),
        Some(serde_json::Value::String(_)) => return Err(HubError::InvalidTopic.reason()),
        _ => return Err("missing topic"),
    };
    let event = match fields.get("event") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(e)) if hub::valid_event_name(e) => Some(e.as_str()),
        Some(_) => return Err(HubError::InvalidEventName.reason()),
    };
    const NULL: serde_json::Value = serde_json::Value::Null;
    Ok((topic, event, fields.get("data").unwrap_or(&NULL)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const PEER: &str = "127.0.0.1:1";

    pub(super) fn engine(config: Config) -> Engine {
        Engine::new(config, 0xabc)
    }

    /// Runs the actions as a driver whose sockets take everything: returns what each
    /// connection was sent, and which were closed or had their write side shut.
    #[derive(Default)]
    pub(super) struct Wire {
        pub(super) sent: std::collections::HashMap<ConnId, Vec<u8>>,
        pub(super) closed: Vec<ConnId>,
        pub(super) shut: Vec<ConnId>,
    }

    impl Wire {
        pub(super) fn run(&mut self, engine: &mut Engine) {
            while let Some((id, action)) = engine.poll_action() {
                if action == Action::Close {
                    self.closed.push(id);
                    continue;
                }
                loop {
                    let mut slices = [IoSlice::new(&[]); 8];
                    let n = engine.output(id, &mut slices);
                    if n == 0 {
                        break;
                    }
                    let out = self.sent.entry(id).or_default();
                    let mut bytes = 0;
                    for s in &slices[..n] {
                        out.extend_from_slice(s);
                        bytes += s.len();
                    }
                    engine.consume_output(Instant::now(), id, bytes);
                }
                if engine.on_drained(Instant::now(), id) == Drained::ShutdownWrite {
                    self.shut.push(id);
                }
            }
        }

        pub(super) fn text(&self, id: ConnId) -> String {
            String::from_utf8_lossy(self.sent.get(&id).map_or(&[][..], |v| v)).into_owned()
        }
    }

    #[test]
    fn a_head_sent_one_byte_at_a_time_is_served() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        let mut wire = Wire::default();
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" {
            e.handle_input(now, id, &[*b]);
            wire.run(&mut e);
        }
        assert!(wire.text(id).starts_with("HTTP/1.1 200 OK\r\n"));
        assert_eq!(e.counters().requests, 1);
    }

    #[test]
    fn a_half_closed_client_still_gets_its_error() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        // The bad request and the end of stream arrive before the driver writes anything.
        e.handle_input(now, id, b"NOT HTTP\r\n\r\n");
        e.handle_read_closed(now, id);
        let mut wire = Wire::default();
        wire.run(&mut e);
        assert!(
            wire.text(id).starts_with("HTTP/1.1 400 "),
            "{}",
            wire.text(id)
        );
        // Both sides are done: it closes without lingering.
        assert_eq!(wire.closed, vec![id]);
        assert_eq!(e.connection_count(), 0);
    }

    #[test]
    fn an_sse_request_with_bytes_after_it_opens_the_stream() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        e.handle_input(
            now,
            id,
            b"GET /stream/sse?topic=t HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
        );
        e.handle_input(now, id, b"more");
        let mut wire = Wire::default();
        wire.run(&mut e);
        assert!(wire.text(id).contains("event: connected"));
        assert!(!wire.text(id).contains("\"status\":\"ok\""));
        assert_eq!(e.counters().sse_streams, 1);
    }

    const UPGRADE: &[u8] = b"GET /stream/ws HTTP/1.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    /// A WebSocket upgrade at the MCP endpoint.
    pub(super) const MCP_UPGRADE: &[u8] = b"GET /mcp HTTP/1.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: mcp\r\n\r\n";

    /// A masked client text frame (payload under 64 KiB; the mask is zero).
    pub(super) fn client_text(text: &str) -> Vec<u8> {
        let mut out = vec![0x81];
        match u8::try_from(text.len()) {
            Ok(len) if len < 126 => out.push(0x80 | len),
            _ => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(text.as_bytes());
        out
    }

    #[test]
    fn frames_sent_with_the_upgrade_request_are_answered_at_once() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        let mut input = UPGRADE.to_vec();
        input.extend(client_text(r#"{"type":"ping"}"#));
        e.handle_input(now, id, &input);
        let mut wire = Wire::default();
        wire.run(&mut e);
        let text = wire.text(id);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains(r#""type":"welcome""#));
        assert!(text.ends_with(r#"{"type":"pong"}"#), "{text}");
        assert_eq!(e.counters().websockets, 1);
    }

    #[test]
    fn turning_websocket_streaming_off_closes_websockets_with_1001_and_spares_sse() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let socket = subscriber(&mut e, now, std::str::from_utf8(UPGRADE).unwrap());
        let stream = subscriber(&mut e, now, "GET /stream/sse?topic=t HTTP/1.1\r\n\r\n");
        let mut wire = Wire::default();
        wire.run(&mut e);
        e.set_feature(now, Feature::WebsocketStreaming, false);
        wire.run(&mut e);
        let sent = &wire.sent[&socket];
        let close = sent
            .iter()
            .rposition(|&b| b == 0x88)
            .expect("a close frame");
        assert_eq!(&sent[close + 2..close + 4], &1001u16.to_be_bytes());
        assert_eq!(wire.shut, vec![socket]);
        assert_eq!(e.counters().websockets, 0);
        assert_eq!(e.counters().sse_streams, 1);
        assert!(!wire.shut.contains(&stream));
        // New upgrades get 501.
        let late = subscriber(&mut e, now, std::str::from_utf8(UPGRADE).unwrap());
        wire.run(&mut e);
        assert!(wire.text(late).starts_with("HTTP/1.1 501 "));
    }

    #[test]
    fn a_peer_that_does_not_answer_pings_is_dropped() {
        let mut config = Config::default();
        config.websocket.ping_interval_secs = 30;
        config.websocket.pong_timeout_secs = 10;
        let mut e = engine(config);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let id = e.accept(t0, PEER.parse().unwrap()).unwrap();
        e.handle_input(t0, id, UPGRADE);
        let mut wire = Wire::default();
        wire.run(&mut e);
        // Traffic at 20 s pushes the ping back to 50 s.
        e.handle_input(at(20), id, &client_text(r#"{"type":"ping"}"#));
        e.handle_timeout(at(30));
        wire.run(&mut e);
        assert!(!wire.sent[&id].windows(2).any(|w| w == [0x89, 0]));
        e.handle_timeout(at(50));
        wire.run(&mut e);
        assert!(wire.sent[&id].ends_with(&[0x89, 0]), "a ping went out");
        e.handle_timeout(at(59));
        assert_eq!(e.connection_count(), 1);
        e.handle_timeout(at(60));
        wire.run(&mut e);
        assert_eq!(wire.closed, vec![id]);
        assert_eq!(e.counters().keepalive_timeouts, 1);
        assert_eq!(e.counters().websockets, 0);
    }

    pub(super) fn subscriber(e: &mut Engine, now: Instant, request: &str) -> ConnId {
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        e.handle_input(now, id, request.as_bytes());
        id
    }

    #[test]
    fn an_event_larger_than_a_queue_is_refused_and_nobody_is_disconnected() {
        let mut config = Config::default();
        config.backpressure.max_queue_bytes = 8192;
        let mut e = engine(config);
        let now = Instant::now();
        let sub = subscriber(&mut e, now, "GET /stream/sse?topic=t HTTP/1.1\r\n\r\n");
        let body = format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(8000));
        let publisher = subscriber(
            &mut e,
            now,
            &format!(
                "POST /stream/publish HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        let mut wire = Wire::default();
        wire.run(&mut e);
        assert!(wire.text(publisher).starts_with("HTTP/1.1 413 "));
        assert_eq!(e.counters().events_published, 0);
        assert_eq!(e.counters().slow_consumers_disconnected, 0);
        assert!(!wire.closed.contains(&sub));
    }

    #[test]
    fn a_replay_that_cannot_fit_is_not_attempted_and_the_stream_stays() {
        let mut config = Config::default();
        config.backpressure.max_queue_bytes = 8192;
        let mut e = engine(config);
        let now = Instant::now();
        let data = serde_json::Value::String("y".repeat(1000));
        let first = e.publish(now, "t", None, &data).unwrap();
        for _ in 0..20 {
            e.publish(now, "t", None, &data).unwrap();
        }
        let sub = subscriber(
            &mut e,
            now,
            &format!("GET /stream/sse?topic=t HTTP/1.1\r\nLast-Event-ID: {first}\r\n\r\n"),
        );
        let mut wire = Wire::default();
        wire.run(&mut e);
        let text = wire.text(sub);
        assert!(
            text.ends_with("event: recovery\ndata: {\"recovered\":false}\n\n"),
            "{text}"
        );
        assert!(!text.contains("\nid: "));
        assert_eq!(e.counters().sse_streams, 1);
    }

    #[test]
    fn blank_lines_before_a_request_are_skipped_one_byte_at_a_time() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = e.accept(now, PEER.parse().unwrap()).unwrap();
        for _ in 0..2000 {
            e.handle_input(now, id, b"\r\n");
        }
        e.handle_input(now, id, b"GET /health HTTP/1.1\r\n\r\n");
        let mut wire = Wire::default();
        wire.run(&mut e);
        assert!(
            wire.text(id).starts_with("HTTP/1.1 200 OK"),
            "{}",
            wire.text(id)
        );
    }

    #[test]
    fn a_websocket_path_with_the_wrong_method_is_a_405() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let id = subscriber(&mut e, now, "POST /stream/ws HTTP/1.1\r\n\r\n");
        let mut wire = Wire::default();
        wire.run(&mut e);
        let text = wire.text(id);
        assert!(
            text.starts_with("HTTP/1.1 405 ") && text.contains("Allow: GET\r\n"),
            "{text}"
        );
    }

    pub(super) fn post_mcp(
        e: &mut Engine,
        now: Instant,
        session: Option<&str>,
        body: &str,
    ) -> ConnId {
        let header = session.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
        subscriber(
            e,
            now,
            &format!(
                "POST /mcp HTTP/1.1\r\nAccept: application/json, text/event-stream\r\n{header}\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// An `initialize` with no preferences.
    pub(super) const INITIALIZE: &str =
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;

    /// Initializes an MCP session with `body` and returns its id.
    pub(super) fn open_session(
        e: &mut Engine,
        now: Instant,
        wire: &mut Wire,
        body: &str,
    ) -> String {
        let init = post_mcp(e, now, None, body);
        wire.run(e);
        let text = wire.text(init);
        text.split("Mcp-Session-Id: ").nth(1).unwrap()[..32].to_string()
    }

    #[test]
    fn a_countdown_whose_websocket_is_cut_off_as_a_slow_consumer_just_stops() {
        let mut config = Config::default();
        config.backpressure.max_queue_bytes = 4096;
        let mut e = engine(config);
        let t0 = Instant::now();
        let data = serde_json::json!("y".repeat(3000));
        for _ in 0..2 {
            e.publish(t0, "big", None, &data).unwrap();
        }
        let id = e.accept(t0, PEER.parse().unwrap()).unwrap();
        let mut input = MCP_UPGRADE.to_vec();
        input.extend(client_text(INITIALIZE));
        e.handle_input(t0, id, &input);
        Wire::default().run(&mut e);
        // A countdown, then an answer bigger than the queue's bound that the client leaves
        // unread: the next progress step cuts the client off, and the call goes with it.
        let countdown = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"countdown","arguments":{"n":3,"interval_ms":10},"_meta":{"progressToken":1}}}"#;
        let mut frames = client_text(countdown);
        frames.extend(client_text(
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"stream://topics/big"}}"#,
        ));
        e.handle_input(t0, id, &frames);
        e.handle_timeout(t0 + Duration::from_millis(10));
        e.handle_timeout(t0 + Duration::from_millis(20));
        assert_eq!(e.connection_count(), 0);
        assert_eq!(e.mcp_calls_in_progress(), 0);
    }

    #[test]
    fn a_cancelled_countdown_stops_and_its_stream_ends() {
        let mut e = engine(Config::default());
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut wire = Wire::default();
        let session = open_session(
            &mut e,
            t0,
            &mut wire,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        );
        let call = post_mcp(
            &mut e,
            t0,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"countdown","arguments":{"n":5,"interval_ms":10},"_meta":{"progressToken":"t"}}}"#,
        );
        e.handle_timeout(at(10));
        e.handle_timeout(at(20));
        wire.run(&mut e);
        assert_eq!(wire.text(call).matches("notifications/progress").count(), 2);
        post_mcp(
            &mut e,
            at(25),
            Some(&session),
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#,
        );
        wire.run(&mut e);
        assert!(wire.shut.contains(&call), "the answer stream ends");
        e.handle_timeout(at(100));
        wire.run(&mut e);
        assert_eq!(wire.text(call).matches("notifications/progress").count(), 2);
        assert!(!wire.text(call).contains(r#""id":7"#));
    }

    #[test]
    fn an_embedders_tool_answers_later_and_a_cancelled_call_is_gone() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let tool = |name: &str| Tool {
            name: name.into(),
            description: "d".into(),
            input_schema: serde_json::json!({"type": "object"}),
            handler: Box::new(|_, _| ToolReply::Later),
        };
        assert!(
            e.add_tool(tool("echo")).is_err(),
            "a built-in name is taken"
        );
        e.add_tool(Tool {
            handler: Box::new(move |call, _| {
                seen.lock().unwrap().push(call);
                ToolReply::Later
            }),
            ..tool("later")
        })
        .unwrap();
        assert!(e.add_tool(tool("later")).is_err());
        let mut wire = Wire::default();
        let session = open_session(&mut e, now, &mut wire, INITIALIZE);
        let first = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"later"}}"#,
        );
        let second = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"later"}}"#,
        );
        wire.run(&mut e);
        let handles = calls.lock().unwrap().clone();
        assert_eq!(handles.len(), 2);
        assert!(e.tool_finish(now, handles[0], Ok("one".into())));
        wire.run(&mut e);
        assert!(wire
            .text(first)
            .contains(r#""id":2,"result":{"content":[{"type":"text","text":"one"}]"#));
        assert!(wire.shut.contains(&first));
        assert!(
            !e.tool_finish(now, handles[0], Ok("again".into())),
            "finished once"
        );
        post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
        );
        wire.run(&mut e);
        assert!(!e.tool_progress(handles[1], 1.0, None));
        assert!(!e.tool_finish(now, handles[1], Ok("late".into())));
        assert!(!wire.text(second).contains(r#""id":3"#));
    }

    #[test]
    fn batches_are_served_on_2025_03_26_only() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let mut wire = Wire::default();
        let mut session_of = |e: &mut Engine, version: &str| {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}"}}}}"#
            );
            let init = post_mcp(e, now, None, &body);
            wire.run(e);
            let text = wire.text(init);
            text.split("Mcp-Session-Id: ").nth(1).unwrap()[..32].to_string()
        };
        let old = session_of(&mut e, "2025-03-26");
        let new = session_of(&mut e, "2025-06-18");
        let batch = r#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}]"#;
        let served = post_mcp(&mut e, now, Some(&old), batch);
        let refused = post_mcp(&mut e, now, Some(&new), batch);
        let notes = post_mcp(
            &mut e,
            now,
            Some(&old),
            r#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
        );
        let mut wire = Wire::default();
        wire.run(&mut e);
        let text = wire.text(served);
        assert!(text.contains("text/event-stream"), "{text}");
        assert!(text.contains(r#""id":"a","result":{}"#) && text.contains(r#""id":"b","result""#));
        assert!(
            wire.shut.contains(&served),
            "the stream ends after the last answer"
        );
        assert!(wire.text(refused).starts_with("HTTP/1.1 400 "));
        assert!(wire.text(notes).starts_with("HTTP/1.1 202 "));
    }

    #[test]
    fn log_messages_come_once_the_client_sets_a_level() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let mut wire = Wire::default();
        let session = open_session(&mut e, now, &mut wire, INITIALIZE);
        let countdown = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"countdown","arguments":{"n":0}}}"#;
        let quiet = post_mcp(&mut e, now, Some(&session), countdown);
        let bad = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":3,"method":"logging/setLevel","params":{"level":"loud"}}"#,
        );
        let set = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":4,"method":"logging/setLevel","params":{"level":"info"}}"#,
        );
        let logged = post_mcp(&mut e, now, Some(&session), countdown);
        wire.run(&mut e);
        assert!(!wire.text(quiet).contains("notifications/message"));
        assert!(wire.text(bad).contains("-32602"));
        assert!(wire.text(set).contains(r#""id":4,"result":{}"#));
        assert!(wire.text(logged).contains(
            r#""method":"notifications/message","params":{"level":"info","logger":"countdown""#
        ));
    }

    #[test]
    fn an_embedders_resource_is_read_and_its_subscribers_hear_of_changes() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let resource = |uri: &str| Resource {
            uri: uri.into(),
            name: "n".into(),
            description: "d".into(),
            mime_type: "text/plain".into(),
            read: Box::new(|| "contents".into()),
        };
        e.add_resource(resource("app://state")).unwrap();
        assert!(e.add_resource(resource("app://state")).is_err());
        assert!(e.add_resource(resource("stream://topics/x")).is_err());
        let mut wire = Wire::default();
        let session = open_session(&mut e, now, &mut wire, INITIALIZE);
        let read = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"app://state"}}"#,
        );
        let unknown = post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"app://nope"}}"#,
        );
        post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":4,"method":"resources/subscribe","params":{"uri":"app://state"}}"#,
        );
        let listener = subscriber(
            &mut e,
            now,
            &format!("GET /mcp HTTP/1.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n"),
        );
        wire.run(&mut e);
        e.resource_updated("app://state");
        e.resource_updated("app://other");
        wire.run(&mut e);
        assert!(wire.text(read).contains(r#""text":"contents""#));
        assert!(wire.text(unknown).contains("-32602"));
        let events = wire.text(listener);
        assert_eq!(
            events.matches("notifications/resources/updated").count(),
            1,
            "{events}"
        );
        assert!(events.contains(r#""uri":"app://state""#));
    }

    #[test]
    fn a_session_with_many_open_streams_still_answers_every_request() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let mut wire = Wire::default();
        let session = open_session(&mut e, now, &mut wire, INITIALIZE);
        let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"countdown","arguments":{"n":3,"interval_ms":60000}}}"#;
        let streams: Vec<ConnId> = (0..12)
            .map(|_| post_mcp(&mut e, now, Some(&session), call))
            .collect();
        wire.run(&mut e);
        for id in streams {
            assert!(
                wire.text(id).contains("text/event-stream"),
                "{}",
                wire.text(id)
            );
        }
        // A deleted session takes its calls with it.
        let delete = subscriber(
            &mut e,
            now,
            &format!("DELETE /mcp HTTP/1.1\r\nMcp-Session-Id: {session}\r\n\r\n"),
        );
        wire.run(&mut e);
        assert!(wire.text(delete).starts_with("HTTP/1.1 200 "));
        assert_eq!(e.mcp_calls_in_progress(), 0);
    }

    #[test]
    fn a_session_may_have_64_calls_in_progress_at_most() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let mut wire = Wire::default();
        let stream = subscriber(&mut e, now, "GET /sse HTTP/1.1\r\n\r\n");
        wire.run(&mut e);
        let text = wire.text(stream);
        let path = text.split("event: endpoint\ndata: ").nth(1).unwrap();
        let path = path.split('\n').next().unwrap().to_string();
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"countdown","arguments":{"n":9,"interval_ms":60000}}}"#;
        let post = format!(
            "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        for _ in 0..65 {
            subscriber(&mut e, now, &post);
        }
        wire.run(&mut e);
        let text = wire.text(stream);
        assert_eq!(
            text.matches("too many calls in progress").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn connections_per_address_are_capped_and_counted_back() {
        let mut config = Config::default();
        config.limits.max_connections_per_ip = 2;
        let mut e = engine(config);
        let now = Instant::now();
        let mut wire = Wire::default();
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let first = e.accept(now, a).unwrap();
        e.accept(now, a).unwrap();
        let third = e.accept(now, a).unwrap();
        let other = e.accept(now, b).unwrap();
        wire.run(&mut e);
        assert!(
            wire.text(third).starts_with("HTTP/1.1 429 "),
            "{}",
            wire.text(third)
        );
        assert!(wire.text(third).contains("Retry-After: 1\r\n"));
        assert!(!wire.sent.contains_key(&other));
        e.handle_closed(first);
        let again = e.accept(now, a).unwrap();
        wire.run(&mut e);
        assert!(!wire.sent.contains_key(&again), "a slot came back");
    }

    #[test]
    fn origins_follow_the_contract() {
        let request = |origin: &str| Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            version: 1,
            headers: vec![("origin".into(), origin.as_bytes().to_vec())],
        };
        let loopback = engine(Config::default());
        assert!(loopback.origin_allowed(&request("http://localhost:3000")));
        assert!(loopback.origin_allowed(&request("http://[::1]:8080")));
        assert!(!loopback.origin_allowed(&request("https://evil.example")));
        assert!(!loopback.origin_allowed(&request("http://127.0.0.1.evil.example")));
        let mut config = Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        assert!(engine(config.clone()).origin_allowed(&request("https://any.example")));
        config.security.cors_origins = vec!["https://app.example".into()];
        let restricted = engine(config.clone());
        assert!(restricted.origin_allowed(&request("https://app.example")));
        assert!(!restricted.origin_allowed(&request("https://any.example")));
        config.security.allowed_origins = vec!["https://only.example".into()];
        let allowed = engine(config);
        assert!(allowed.origin_allowed(&request("https://only.example")));
        assert!(!allowed.origin_allowed(&request("https://app.example")));
    }

    #[test]
    fn a_legacy_sse_session_answers_on_its_stream() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        let mut wire = Wire::default();
        let stream = subscriber(&mut e, now, "GET /sse HTTP/1.1\r\n\r\n");
        wire.run(&mut e);
        let text = wire.text(stream);
        let endpoint = text.split("event: endpoint\ndata: ").nth(1).unwrap();
        let path = endpoint.split('\n').next().unwrap().to_string();
        assert!(path.starts_with("/messages?sessionId="), "{path}");
        let body = r#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#;
        let post = subscriber(
            &mut e,
            now,
            &format!(
                "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        wire.run(&mut e);
        assert!(wire.text(post).starts_with("HTTP/1.1 202 "));
        assert!(wire
            .text(stream)
            .ends_with("data: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}\n\n"));
        // The session ends with its stream.
        e.handle_read_closed(now, stream);
        let again = subscriber(
            &mut e,
            now,
            &format!(
                "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        wire.run(&mut e);
        assert!(wire.text(again).starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn connection_churn_does_not_grow_the_timer_heap() {
        let mut e = engine(Config::default());
        let now = Instant::now();
        for _ in 0..10_000 {
            // Each leaves a head deadline 10 s away behind it.
            let id = e.accept(now, PEER.parse().unwrap()).unwrap();
            e.handle_read_closed(now, id);
        }
        assert_eq!(e.connection_count(), 0);
        assert!(e.timers.len() <= TIMER_SLACK + 1, "{}", e.timers.len());
    }

    #[test]
    fn heartbeats_come_only_when_the_stream_is_idle() {
        let mut config = Config::default();
        config.sse.heartbeat_secs = 10;
        // The monitor's deadline would come first.
        config.features.set(Feature::StreamMonitoring, false);
        let mut e = engine(config);
        let t0 = Instant::now();
        let id = e.accept(t0, PEER.parse().unwrap()).unwrap();
        e.handle_input(t0, id, b"GET /stream/sse?topic=t HTTP/1.1\r\n\r\n");
        let mut wire = Wire::default();
        wire.run(&mut e);
        let at = |s| t0 + Duration::from_secs(s);
        e.publish(at(8), "t", None, &serde_json::Value::Null)
            .unwrap();
        wire.run(&mut e);
        // 10 s after the opening the stream is not idle: it sent an event at 8 s.
        e.handle_timeout(at(10));
        wire.run(&mut e);
        assert!(!wire.text(id).contains(": ping"));
        assert_eq!(e.poll_timeout(), Some(at(18)));
        e.handle_timeout(at(18));
        wire.run(&mut e);
        assert_eq!(wire.text(id).matches(": ping\n\n").count(), 1);
        assert_eq!(e.poll_timeout(), Some(at(28)));
    }
}
