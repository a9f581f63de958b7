//! The mio driver: sockets, tokens, timers, signals and the clock around the sans-IO
//! engine ([`crate::proto::engine::Engine`]).
//!
//! Its public face is the embedding API: a host that owns a [`mio::Poll`] registers a [`Server`]
//! with a [`TokenRange`] it chooses, hands it the events of those tokens, and sleeps no longer
//! than [`Server::poll_timeout`]. The standalone [`Server::run`] is a short loop over that same
//! API, with SIGINT/SIGTERM starting a graceful drain.
//!
//! Per wake-up the work is bounded: at most [`READ_BUDGET`] bytes read from one connection and
//! [`ACCEPT_BUDGET`] connections accepted before the others get their turn; what is left is kept
//! on a ready list, and [`Server::poll_timeout`] says zero until it is done.
//!
//! With `tls.cert` and `tls.key` (and the `tls` feature, on by default) every connection gets a
//! rustls session on the same loop: reads go socket → session → engine, writes engine → session
//! → socket, and a peer that speaks plaintext to the TLS port is answered `400` and closed.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::config::Config;
use crate::features::Feature;
use crate::proto::engine::{
    Action, CallId, ChildAction, ChildId, Counters, Drained, Engine, RandomSource, Resource, Tool,
};
use crate::proto::hub::{self, EventId, HubError};
use crate::proto::ConnId;

mod children;
mod tls;

use children::{Children, Pipe};
use tls::Received;

/// The most bytes read from one connection per wake-up before others get their turn.
pub const READ_BUDGET: usize = 256 * 1024;
/// The most connections accepted per wake-up before others get their turn.
pub const ACCEPT_BUDGET: usize = 256;
/// The most publications taken from other threads per wake-up.
const PUBLICATION_BUDGET: usize = 4096;
/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;
/// How long to wait before accepting again when the process is out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The most output slices handed to one `writev`.
const MAX_SLICES: usize = 64;
/// The size of the one read buffer every connection shares.
const READ_BUFFER: usize = 64 * 1024;

/// The tokens a [`Server`] may use in its host's [`Poll`]: `start` and the `len - 1` after it.
///
/// The listener takes `start`, the waker (if enabled) `start + 1`; with a gateway
/// (`mcp.stdio`), the pipes of its children take the next `3 × max sessions`; connections take
/// the rest. A connection's token carries its slot and, in the bits the range leaves, its
/// generation, so that an event meant for a closed connection does not reach the next one in
/// its slot (a child's pipe events need no generation: a stale one finds a pipe with nothing to
/// do). The range must hold at least `2 + max_connections + 64` tokens, plus the children's;
/// the standalone server uses nearly all of `usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRange {
    /// The first token.
    pub start: usize,
    /// How many tokens.
    pub len: usize,
}

/// Where each kind of token sits in a [`TokenRange`].
#[derive(Clone, Copy, Debug)]
struct Layout {
    start: usize,
    len: usize,
    /// Tokens of children's pipes: `start + 2` up to `conn_base`.
    conn_base: usize,
    index_bits: u32,
    generation_mask: usize,
}

enum TokenKind {
    Listener,
    Waker,
    Child { index: usize, pipe: Pipe },
    Conn { index: usize, generation: usize },
}

impl Layout {
    fn new(range: TokenRange, slots: usize, children: usize) -> io::Result<Layout> {
        let child_tokens = children.saturating_mul(Pipe::COUNT);
        let fixed = child_tokens.saturating_add(2);
        let conn_tokens = range.len.saturating_sub(fixed);
        if conn_tokens < slots || range.start.checked_add(range.len - 1).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "token range too small: needs at least {} tokens",
                    slots.saturating_add(fixed)
                ),
            ));
        }
        let index_bits = usize::BITS - (slots.max(2) - 1).leading_zeros();
        // What the range leaves above the index bits; none at all when it is just large enough.
        let generation_bits = (conn_tokens >> index_bits)
            .checked_ilog2()
            .unwrap_or(0)
            .min(32);
        let generation_mask = if generation_bits == 0 {
            0
        } else {
            usize::MAX >> (usize::BITS - generation_bits)
        };
        Ok(Layout {
            start: range.start,
            len: range.len,
            conn_base: 2 + child_tokens,
            index_bits,
            generation_mask,
        })
    }

    fn listener(&self) -> Token {
        Token(self.start)
    }

    fn waker(&self) -> Token {
        Token(self.start + 1)
    }

    fn conn(&self, id: ConnId) -> Token {
        let generation = id.generation as usize & self.generation_mask;
        Token(self.start + self.conn_base + ((generation << self.index_bits) | id.index as usize))
    }

    fn child(&self, id: ChildId, pipe: Pipe) -> Token {
        Token(self.start + 2 + id.index as usize * Pipe::COUNT + pipe.offset())
    }

    fn kind(&self, token: Token) -> Option<TokenKind> {
        let offset = token.0.checked_sub(self.start).filter(|&o| o < self.len)?;
        Some(match offset {
            0 => TokenKind::Listener,
            1 => TokenKind::Waker,
            n if n < self.conn_base => TokenKind::Child {
                index: (n - 2) / Pipe::COUNT,
                pipe: Pipe::from_offset((n - 2) % Pipe::COUNT)?,
            },
            n => TokenKind::Conn {
                index: (n - self.conn_base) & ((1 << self.index_bits) - 1),
                generation: (n - self.conn_base) >> self.index_bits,
            },
        })
    }
}

/// A connection's socket.
struct Socket {
    id: ConnId,
    stream: TcpStream,
    /// Its TLS session when the listener serves TLS; `None` on the plaintext path.
    tls: Option<Box<tls::Session>>,
    /// Whether it is registered for writability (only while output is pending).
    writable: bool,
    /// Whether it is on the ready list (input left unread when its budget ran out).
    ready: bool,
}

/// An event published from another thread.
struct Publication {
    topic: String,
    event: Option<String>,
    data: serde_json::Value,
    /// When the other thread handed it over: delivery latency counts the wait for the loop.
    sent_at: Instant,
}

/// Why a [`Publisher`] could not hand an event over.
#[derive(Debug, PartialEq, Eq)]
pub enum PublisherError {
    /// The topic or event name is not valid; the reason says which.
    Invalid(&'static str),
    /// The queue to the server (`streaming.real_time.buffer_size` events) is full.
    Full,
    /// The server is gone.
    Closed,
}

impl std::fmt::Display for PublisherError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublisherError::Invalid(reason) => f.write_str(reason),
            PublisherError::Full => f.write_str("publication queue full"),
            PublisherError::Closed => f.write_str("server gone"),
        }
    }
}

impl std::error::Error for PublisherError {}

/// Publishes from any thread into a [`Server`]'s hub. Cheap to clone.
///
/// Publications wait in a queue of `streaming.real_time.buffer_size` events. With a waker
/// ([`Server::enable_waker`]) the server's loop is woken for them at once; without one they are
/// taken at the host's next call to [`Server::on_timeout`].
#[derive(Clone)]
pub struct Publisher {
    sender: SyncSender<Publication>,
    waker: Arc<OnceLock<Waker>>,
}

impl Publisher {
    /// Publishes `data` on `topic` as `event` (`"message"` when `None`), waiting while the
    /// queue is full.
    pub fn publish(
        &self,
        topic: &str,
        event: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), PublisherError> {
        let p = publication(topic, event, data)?;
        self.sender.send(p).map_err(|_| PublisherError::Closed)?;
        self.wake();
        Ok(())
    }

    /// Like [`Publisher::publish`], but fails with [`PublisherError::Full`] instead of waiting.
    pub fn try_publish(
        &self,
        topic: &str,
        event: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), PublisherError> {
        let p = publication(topic, event, data)?;
        self.sender.try_send(p).map_err(|e| match e {
            TrySendError::Full(_) => PublisherError::Full,
            TrySendError::Disconnected(_) => PublisherError::Closed,
        })?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.get() {
            if let Err(e) = waker.wake() {
                log::warn!("cannot wake the server: {e}");
            }
        }
    }
}

fn publication(
    topic: &str,
    event: Option<&str>,
    data: serde_json::Value,
) -> Result<Publication, PublisherError> {
    if !hub::valid_topic(topic) {
        return Err(PublisherError::Invalid(HubError::InvalidTopic.reason()));
    }
    if event.is_some_and(|e| !hub::valid_event_name(e)) {
        return Err(PublisherError::Invalid(HubError::InvalidEventName.reason()));
    }
    Ok(Publication {
        topic: topic.to_string(),
        event: event.map(str::to_string),
        data,
        sent_at: Instant::now(),
    })
}

/// The server: a listener and its connections, driven by a [`Poll`] — its own
/// ([`Server::run`]) or a host's.
pub struct Server {
    engine: Engine,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    registry: Option<Registry>,
    layout: Option<Layout>,
    /// Sockets by the engine's slot index.
    sockets: Vec<Option<Socket>>,
    /// Connections whose input was left unread when their budget ran out.
    ready: VecDeque<ConnId>,
    /// The listener may have connections waiting past the accept budget.
    accept_ready: bool,
    /// When to try accepting again after running out of file descriptors.
    accept_retry_at: Option<Instant>,
    publications: Receiver<Publication>,
    /// Publications may be waiting past the publication budget.
    publications_ready: bool,
    publisher: Publisher,
    read_buffer: Box<[u8]>,
    /// The gateway's child processes.
    children: Children,
    /// The certificate and key when the listener serves TLS (`tls.cert`, `tls.key`).
    tls: Option<tls::Acceptor>,
}

impl Server {
    /// Checks `config` and binds its listen address (with a backlog that survives bursts of
    /// connects). Nothing is served until the server is registered with a [`Poll`] (or
    /// [`Server::run`]). An invalid config is an [`io::ErrorKind::InvalidInput`] error.
    ///
    /// With `tls.cert` and `tls.key` set, the listener serves HTTPS and WSS only. A PEM file
    /// that cannot be read or holds no usable certificate or key (or a build without the `tls`
    /// feature) is an [`io::ErrorKind::InvalidInput`] error that names the file.
    pub fn bind(config: Config) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = tls::Acceptor::new(&config.tls, config.backpressure.max_queue_bytes)?;
        let listener = listen(config.listen)?;
        let local_addr = listener.local_addr()?;
        let (sender, publications) = mpsc::sync_channel(config.real_time.buffer_size.max(1));
        let mut engine = Engine::new(config, random_epoch());
        engine.set_random_source(os_random()?);
        engine.set_unix_time(Instant::now(), unix_time());
        Ok(Server {
            engine,
            listener: Some(listener),
            local_addr,
            registry: None,
            layout: None,
            sockets: Vec::new(),
            ready: VecDeque::new(),
            accept_ready: false,
            accept_retry_at: None,
            publications,
            publications_ready: false,
            publisher: Publisher {
                sender,
                waker: Arc::new(OnceLock::new()),
            },
            read_buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            children: Children::default(),
            tls,
        })
    }

    /// The address it listens on (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers the listener in `registry` with the tokens of `tokens`. Call once.
    pub fn register(&mut self, registry: &Registry, tokens: TokenRange) -> io::Result<()> {
        let layout = Layout::new(tokens, self.engine.max_slots(), self.engine.max_children())?;
        if let Some(listener) = &mut self.listener {
            registry.register(listener, layout.listener(), Interest::READABLE)?;
        }
        self.registry = Some(registry.try_clone()?);
        self.layout = Some(layout);
        Ok(())
    }

    /// Whether `token` is one of this server's.
    pub fn owns(&self, token: Token) -> bool {
        self.layout.is_some_and(|l| l.kind(token).is_some())
    }

    /// Creates a [`Waker`] on the server's waker token so that [`Publisher`]s wake the loop.
    /// The host decides: a `Poll` may hold only one waker.
    pub fn enable_waker(&mut self) -> io::Result<()> {
        let (Some(registry), Some(layout)) = (&self.registry, &self.layout) else {
            return Err(io::Error::other("register the server first"));
        };
        let waker = Waker::new(registry, layout.waker())?;
        // Already set means already enabled: the first waker stays.
        let _ = self.publisher.waker.set(waker);
        Ok(())
    }

    /// A handle to publish from other threads.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Publishes from the loop's own thread. Returns the event's id.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        event: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<EventId, HubError> {
        let id = self.engine.publish(now, topic, event, data);
        self.process_actions(now);
        id
    }

    /// Adds an MCP tool of the embedder, served beside the built-in ones on every MCP
    /// transport. Its handler runs on the loop's thread and must not block: it answers at once
    /// or returns [`ToolReply::Later`](crate::ToolReply::Later) and the host calls [`Server::tool_progress`] and
    /// [`Server::tool_finish`] later. A tool whose name is taken is handed back.
    pub fn add_tool(&mut self, tool: Tool) -> Result<(), Box<Tool>> {
        self.engine.add_tool(tool)
    }

    /// Adds an MCP resource of the embedder (listed, readable, subscribable). A uri that is
    /// taken, or under `stream://topics/`, is handed back.
    pub fn add_resource(&mut self, resource: Resource) -> Result<(), Box<Resource>> {
        self.engine.add_resource(resource)
    }

    /// Tells the MCP sessions subscribed to resource `uri` that it changed.
    pub fn resource_updated(&mut self, now: Instant, uri: &str) {
        self.engine.resource_updated(uri);
        self.process_actions(now);
    }

    /// Reports progress of a tool call that answers later; returns whether it still runs.
    pub fn tool_progress(
        &mut self,
        now: Instant,
        call: CallId,
        progress: f64,
        total: Option<f64>,
    ) -> bool {
        let running = self.engine.tool_progress(call, progress, total);
        self.process_actions(now);
        running
    }

    /// Finishes a tool call that answers later, with text content or an error text; returns
    /// whether it was still running (a cancelled call is gone).
    pub fn tool_finish(
        &mut self,
        now: Instant,
        call: CallId,
        result: Result<String, String>,
    ) -> bool {
        let running = self.engine.tool_finish(now, call, result);
        self.process_actions(now);
        running
    }

    /// Turns a feature on or off at once (see the contract's feature toggles).
    pub fn set_feature(&mut self, now: Instant, feature: Feature, on: bool) {
        self.engine.set_feature(now, feature, on);
        self.process_actions(now);
    }

    /// Running totals.
    pub fn counters(&self) -> &Counters {
        self.engine.counters()
    }

    /// Handles one event of the host's poll; events of tokens that are not the server's are
    /// ignored. Output it causes is written by the [`Server::on_timeout`] that follows the
    /// batch.
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) {
        let Some(kind) = self.layout.and_then(|l| l.kind(event.token())) else {
            return;
        };
        match kind {
            TokenKind::Listener => self.accept(now),
            TokenKind::Waker => self.take_publications(now),
            TokenKind::Child { index, pipe } => {
                let Some(id) = self.children.id_at(index) else {
                    return;
                };
                match pipe {
                    Pipe::Stdin => self.child_flush(now, id),
                    Pipe::Stdout => self.child_read(now, id),
                    Pipe::Stderr => self.child_read_stderr(id),
                }
            }
            TokenKind::Conn { index, generation } => {
                let Some(id) = self.socket_id(index, generation) else {
                    return;
                };
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(now, id);
                }
                if event.is_writable() {
                    self.flush(now, id, true);
                }
            }
        }
        // What the events queued goes out in `on_timeout`, after the whole batch: one write per
        // connection per wake-up however many events touched it.
    }

    /// How long the host may sleep before calling [`Server::on_timeout`]: zero while work is
    /// left over from a budget, `None` when nothing is due.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty()
            || self.accept_ready
            || self.publications_ready
            || self.children.has_ready()
        {
            return Some(Duration::ZERO);
        }
        let next = [
            self.engine.poll_timeout(),
            self.accept_retry_at,
            self.children.next_deadline(now),
        ]
        .into_iter()
        .flatten()
        .min();
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Does what is due: deadlines, work left over from budgets, publications from other
    /// threads. Call it after every poll (it is cheap when nothing is due).
    pub fn on_timeout(&mut self, now: Instant) {
        self.engine.set_unix_time(now, unix_time());
        for _ in 0..self.ready.len() {
            if let Some(id) = self.ready.pop_front() {
                if let Some(socket) = self.socket_mut(id) {
                    socket.ready = false;
                    self.read(now, id);
                }
            }
        }
        if self.accept_ready || self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_retry_at = None;
            self.accept(now);
        }
        self.child_read_ready(now);
        self.take_publications(now);
        self.engine.handle_timeout(now);
        self.process_actions(now);
        self.reap(now);
    }

    /// Starts a graceful shutdown: no more connections are accepted, streams end after what
    /// they have queued, and within `drain_timeout_ms` every connection is closed.
    pub fn shutdown(&mut self, now: Instant) {
        if let (Some(mut listener), Some(registry)) = (self.listener.take(), &self.registry) {
            let _ = registry.deregister(&mut listener);
        }
        self.accept_ready = false;
        self.accept_retry_at = None;
        self.engine.begin_shutdown(now);
        self.process_actions(now);
    }

    /// Whether a shutdown has finished: every connection is closed and every child reaped.
    pub fn is_finished(&self) -> bool {
        self.engine.is_shutting_down()
            && self.engine.connection_count() == 0
            && self.children.is_empty()
    }

    /// Serves on its own [`Poll`] until SIGINT or SIGTERM, then drains and returns. A second
    /// signal during the drain stops at once. `ready` is called with the listen address once
    /// the signal handlers are in place, before the first connection is served.
    pub fn run(mut self, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        const SIGNALS: Token = Token(0);

        let mut poll = Poll::new()?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.register(
            poll.registry(),
            TokenRange {
                start: 1,
                len: usize::MAX - 1,
            },
        )?;
        self.enable_waker()?;
        ready(self.local_addr);
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in &events {
                if event.token() == SIGNALS {
                    if signals.pending().next().is_none() {
                        continue;
                    }
                    if self.engine.is_shutting_down() {
                        log::warn!("second signal: stopping now");
                        return Ok(());
                    }
                    log::info!("signal received: draining");
                    self.shutdown(now);
                } else {
                    self.handle_event(event, now);
                }
            }
            self.on_timeout(Instant::now());
            if self.is_finished() {
                log::info!("drained: exiting");
                return Ok(());
            }
        }
    }

    // ---- sockets ----

    fn socket_id(&self, index: usize, generation: usize) -> Option<ConnId> {
        let mask = self.layout?.generation_mask;
        let socket = self.sockets.get(index)?.as_ref()?;
        (socket.id.generation as usize & mask == generation).then_some(socket.id)
    }

    fn socket_mut(&mut self, id: ConnId) -> Option<&mut Socket> {
        socket_in(&mut self.sockets, id)
    }

    fn tls_session(&mut self, id: ConnId) -> Option<&mut tls::Session> {
        self.socket_mut(id)?.tls.as_deref_mut()
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.open(now, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if out_of_resources(&e) => {
                    // The edge has passed: without a retry the listener would stall.
                    log::warn!("accept: {e}; retrying in {ACCEPT_RETRY:?}");
                    self.accept_ready = false;
                    self.accept_retry_at = Some(now + ACCEPT_RETRY);
                    return;
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        self.accept_ready = true;
    }

    fn open(&mut self, now: Instant, mut stream: TcpStream, peer: SocketAddr) {
        let (Some(registry), Some(layout)) = (&self.registry, self.layout) else {
            return;
        };
        let Some(id) = self.engine.accept(now, peer) else {
            return;
        };
        let tls = match self.tls.as_ref().map(tls::Acceptor::session).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                log::warn!("TLS session for {peer}: {e}");
                self.engine.handle_closed(id);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = registry.register(&mut stream, layout.conn(id), Interest::READABLE) {
            log::warn!("register {peer}: {e}");
            self.engine.handle_closed(id);
            return;
        }
        let index = id.index as usize;
        if self.sockets.len() <= index {
            self.sockets.resize_with(index + 1, || None);
        }
        self.sockets[index] = Some(Socket {
            id,
            stream,
            tls,
            writable: false,
            ready: false,
        });
        self.process_actions(now);
    }

    fn read(&mut self, now: Instant, id: ConnId) {
        if self.tls.is_some() {
            return self.read_tls(now, id);
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(socket) = socket_in(&mut self.sockets, id) else {
                return;
            };
            match socket.stream.read(&mut self.read_buffer) {
                Ok(0) => return self.engine.handle_read_closed(now, id),
                Ok(n) => {
                    self.engine.handle_input(now, id, &self.read_buffer[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return self.mark_ready(id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("connection {id}: read: {e}");
                    return self.drop_socket(id, true);
                }
            }
        }
    }

    /// Puts `id` on the ready list (once): its read budget ran out with input left.
    fn mark_ready(&mut self, id: ConnId) {
        if let Some(socket) = self.socket_mut(id) {
            if !socket.ready {
                socket.ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Reads from a TLS socket what its budget allows: the ciphertext goes through the
    /// connection's session and the plaintext to the engine. Output of the session's own
    /// (handshake messages, alerts, and plaintext held back during the handshake) is written
    /// before returning.
    fn read_tls(&mut self, now: Instant, id: ConnId) {
        let mut budget = READ_BUDGET;
        let Some(was_handshaking) = self.tls_session(id).map(|s| s.is_handshaking()) else {
            return;
        };
        loop {
            let Some(socket) = socket_in(&mut self.sockets, id) else {
                return;
            };
            let Some(session) = socket.tls.as_deref_mut() else {
                return;
            };
            match socket.stream.read(&mut self.read_buffer) {
                Ok(0) => {
                    self.engine.handle_read_closed(now, id);
                    break;
                }
                Ok(n) => {
                    let engine = &mut self.engine;
                    let received = session.receive(&self.read_buffer[..n], |plaintext| {
                        engine.handle_input(now, id, plaintext)
                    });
                    match received {
                        Received::Open => {}
                        Received::PeerClosed => {
                            self.engine.handle_read_closed(now, id);
                            break;
                        }
                        Received::NotTls => {
                            // A fresh socket takes these few bytes at once; if it does not,
                            // the peer gets the end of stream without them.
                            log::debug!("connection {id}: plaintext on the TLS port: refused");
                            let _ = socket.stream.write_all(&tls::refusal());
                            let _ = socket.stream.shutdown(Shutdown::Write);
                            // What it sends from now on is dropped; its end of stream (or
                            // the engine's head deadline) closes the connection.
                        }
                        Received::Failed(reason) => {
                            log::debug!("connection {id}: TLS: {reason}");
                            // Best effort: the alert the session queued, if the socket takes it.
                            let _ = session.write_to(&mut socket.stream);
                            return self.drop_socket(id, true);
                        }
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.mark_ready(id);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("connection {id}: read: {e}");
                    return self.drop_socket(id, true);
                }
            }
        }
        let Some(session) = self.tls_session(id) else {
            return;
        };
        if session.wants_write() || (was_handshaking && !session.is_handshaking()) {
            self.flush(now, id, false);
        }
    }

    /// Writes `id`'s output until it is all written or the socket is full. A socket known to
    /// be full is left alone until its writable event (`writable_event`).
    fn flush(&mut self, now: Instant, id: ConnId, writable_event: bool) {
        if !writable_event && self.socket_mut(id).is_some_and(|s| s.writable) {
            return;
        }
        if self.tls.is_some() {
            return self.flush_tls(now, id);
        }
        loop {
            let Some(socket) = socket_in(&mut self.sockets, id) else {
                return;
            };
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.engine.output(id, &mut slices);
            if n == 0 {
                break;
            }
            match socket.stream.write_vectored(&slices[..n]) {
                Ok(0) => return self.drop_socket(id, true),
                // The write's own time, not the wake-up's: delivery latency ends here.
                Ok(written) => self.engine.consume_output(Instant::now(), id, written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.set_writable(id, true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("connection {id}: write: {e}");
                    return self.drop_socket(id, true);
                }
            }
        }
        self.set_writable(id, false);
        if self.engine.on_drained(now, id) == Drained::ShutdownWrite {
            if let Some(socket) = self.socket_mut(id) {
                let _ = socket.stream.shutdown(Shutdown::Write);
            }
        }
    }

    /// [`Server::flush`] through the TLS session: what the session holds is written first; then
    /// the engine's output goes into the session, as much as its buffer limit takes, and out
    /// again, until both are empty or the socket is full. Write interest stays on while
    /// either holds output. The engine hears `on_drained` only once the handshake is over and
    /// both are empty; its `ShutdownWrite` sends `close_notify` before the write side is shut.
    fn flush_tls(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(socket) = socket_in(&mut self.sockets, id) else {
                return;
            };
            let Some(session) = socket.tls.as_deref_mut() else {
                return;
            };
            if session.is_refused() {
                // The peer was told in plaintext; what the engine says is not for it.
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = self.engine.output(id, &mut slices);
                let queued = slices[..n].iter().map(|s| s.len()).sum();
                if queued > 0 {
                    self.engine.consume_output(now, id, queued);
                    continue;
                }
                self.set_writable(id, false);
                let _ = self.engine.on_drained(now, id);
                return;
            }
            if session.wants_write() {
                match session.write_to(&mut socket.stream) {
                    Ok(0) => return self.drop_socket(id, true),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return self.set_writable(id, true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("connection {id}: write: {e}");
                        return self.drop_socket(id, true);
                    }
                }
                continue;
            }
            if session.take_shutdown() {
                let _ = socket.stream.shutdown(Shutdown::Write);
                return self.set_writable(id, false);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.engine.output(id, &mut slices);
            let taken = if n == 0 {
                0
            } else {
                session.push(&slices[..n])
            };
            if taken > 0 {
                self.engine.consume_output(Instant::now(), id, taken);
                continue;
            }
            // Nothing is left, or the rest waits for the handshake to end (which flushes).
            let handshaking = session.is_handshaking();
            self.set_writable(id, false);
            if n > 0 || handshaking {
                return;
            }
            if self.engine.on_drained(now, id) != Drained::ShutdownWrite {
                return;
            }
            let Some(session) = self.tls_session(id) else {
                return;
            };
            session.close_notify();
        }
    }

    /// Derives write interest from whether output is pending; reregisters only on a change.
    fn set_writable(&mut self, id: ConnId, writable: bool) {
        let (Some(registry), Some(layout)) = (&self.registry, self.layout) else {
            return;
        };
        let Some(socket) = socket_in(&mut self.sockets, id) else {
            return;
        };
        if socket.writable == writable {
            return;
        }
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match registry.reregister(&mut socket.stream, layout.conn(id), interest) {
            Ok(()) => socket.writable = writable,
            Err(e) => {
                log::debug!("connection {id}: reregister: {e}");
                self.drop_socket(id, true);
            }
        }
    }

    /// Drops `id`'s socket; with `tell_engine`, the engine forgets the connection too.
    fn drop_socket(&mut self, id: ConnId, tell_engine: bool) {
        let Some(slot) = self.sockets.get_mut(id.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|s| s.id != id) {
            return;
        }
        if let (Some(mut socket), Some(registry)) = (slot.take(), &self.registry) {
            let _ = registry.deregister(&mut socket.stream);
        }
        if tell_engine {
            self.engine.handle_closed(id);
        }
    }

    /// Does what the engine asks, for connections and children, until it asks nothing more.
    fn process_actions(&mut self, now: Instant) {
        loop {
            if let Some((id, action)) = self.engine.poll_action() {
                match action {
                    Action::Write => self.flush(now, id, false),
                    Action::Close => self.drop_socket(id, false),
                }
            } else if let Some((id, action)) = self.engine.poll_child_action() {
                match action {
                    ChildAction::Spawn => self.child_spawn(now, id),
                    ChildAction::Write => self.child_flush(now, id),
                    ChildAction::End => self.child_end(now, id),
                }
            } else {
                return;
            }
        }
    }

    fn take_publications(&mut self, now: Instant) {
        self.publications_ready = false;
        for _ in 0..PUBLICATION_BUDGET {
            let Ok(p) = self.publications.try_recv() else {
                return;
            };
            let (topic, event) = (&p.topic, p.event.as_deref());
            if let Err(e) = self
                .engine
                .publish_handed_over(now, p.sent_at, topic, event, &p.data)
            {
                log::warn!("publication on {:?} refused: {}", p.topic, e.reason());
            }
        }
        self.publications_ready = true;
    }
}

/// The socket of `id`, if it is still open: a free function so that a caller can hold it while
/// using the engine and the read buffer, which are other fields of the server.
fn socket_in(sockets: &mut [Option<Socket>], id: ConnId) -> Option<&mut Socket> {
    sockets
        .get_mut(id.index as usize)?
        .as_mut()
        .filter(|s| s.id == id)
}

/// A non-blocking listener with a deep backlog.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Whether an accept error means the process or system is out of something (descriptors,
/// buffers) rather than the one connection having failed.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The kernel's random bytes, for MCP session ids.
fn os_random() -> io::Result<RandomSource> {
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    Ok(RandomSource::new(move |buf: &mut [u8]| {
        match urandom.read_exact(buf) {
            Ok(()) => true,
            Err(e) => {
                log::error!("reading /dev/urandom: {e}");
                false
            }
        }
    }))
}

/// The wall clock, for what the engine checks against it (a JWT's `exp` and `nbf`).
fn unix_time() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// An epoch for this run's event ids: random, so that ids of an earlier run never pass for ours.
fn random_epoch() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_slot_and_generation_and_stay_in_range() {
        let layout = Layout::new(
            TokenRange {
                start: 10,
                len: 2 + 1100 * 8,
            },
            1100,
            0,
        )
        .unwrap();
        assert_eq!(layout.index_bits, 11);
        assert_eq!(layout.generation_mask, 0b11);
        let id = ConnId {
            index: 1099,
            generation: 7,
        };
        let token = layout.conn(id);
        assert!(token.0 >= 12 && token.0 < 10 + 2 + 1100 * 8);
        match layout.kind(token) {
            Some(TokenKind::Conn { index, generation }) => {
                assert_eq!((index, generation), (1099, 3));
            }
            _ => panic!("not a connection token"),
        }
        assert!(matches!(layout.kind(Token(10)), Some(TokenKind::Listener)));
        assert!(matches!(layout.kind(Token(11)), Some(TokenKind::Waker)));
        assert!(layout.kind(Token(9)).is_none());
        assert!(layout.kind(Token(10 + 2 + 1100 * 8)).is_none());
    }

    #[test]
    fn the_smallest_range_allowed_works() {
        let layout = Layout::new(
            TokenRange {
                start: 10,
                len: 1066,
            },
            1064,
            0,
        )
        .unwrap();
        assert_eq!(layout.generation_mask, 0);
        let last = ConnId {
            index: 1063,
            generation: 99,
        };
        let token = layout.conn(last);
        assert!(token.0 < 10 + 1066);
        assert!(matches!(
            layout.kind(token),
            Some(TokenKind::Conn {
                index: 1063,
                generation: 0
            })
        ));
    }

    #[test]
    fn children_pipes_sit_between_the_waker_and_the_connections() {
        let layout = Layout::new(
            TokenRange {
                start: 5,
                len: 4096,
            },
            1000,
            10,
        )
        .unwrap();
        let child = ChildId {
            index: 9,
            generation: 77,
        };
        let tokens = [Pipe::Stdin, Pipe::Stdout, Pipe::Stderr].map(|p| layout.child(child, p));
        assert_eq!(tokens.map(|t| t.0), [5 + 2 + 27, 5 + 2 + 28, 5 + 2 + 29]);
        for (token, pipe) in tokens.iter().zip([Pipe::Stdin, Pipe::Stdout, Pipe::Stderr]) {
            assert!(matches!(
                layout.kind(*token),
                Some(TokenKind::Child { index: 9, pipe: p }) if p == pipe
            ));
        }
        let first = ConnId {
            index: 0,
            generation: 0,
        };
        assert_eq!(layout.conn(first).0, 5 + 2 + 30);
        assert!(matches!(
            layout.kind(layout.conn(first)),
            Some(TokenKind::Conn { index: 0, .. })
        ));
        let needed = Layout::new(
            TokenRange {
                start: 0,
                len: 1031,
            },
            1000,
            10,
        );
        assert!(needed.is_err(), "2 + 30 + 1000 tokens are needed");
    }

    #[test]
    fn a_range_too_small_is_refused() {
        assert!(Layout::new(TokenRange { start: 0, len: 100 }, 1064, 0).is_err());
        let full = Layout::new(
            TokenRange {
                start: 1,
                len: usize::MAX - 1,
            },
            1064,
            64,
        )
        .unwrap();
        assert_eq!(full.generation_mask, u32::MAX as usize);
    }
}
