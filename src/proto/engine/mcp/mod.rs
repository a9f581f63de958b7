//! MCP sessions and their transports: Streamable HTTP at the MCP endpoint (`mcp.path`, `/mcp`),
//! WebSocket at the same path (subprotocol `mcp`), and the legacy HTTP+SSE transport (the
//! `legacy` submodule); with the topic resources, the embedder's tools and resources, and calls
//! that answer later. The built-in tools are in the `tools` submodule.
//!
//! Over Streamable HTTP a `POST` carries one JSON-RPC message (a batch on 2025-03-26).
//! `initialize` opens a session (`Mcp-Session-Id`, 128 random bits from the driver's source); a
//! notification or response gets `202`; a request is answered as JSON, or on an SSE stream when
//! it carries a progress token or answers later (`countdown`, an embedder's tool). A `GET` opens
//! the session's server-to-client stream, which carries `notifications/resources/updated`;
//! `DELETE` ends the session. Every SSE stream of a session keeps its last messages, so a client
//! whose connection dropped resumes it with `Last-Event-ID`; a call goes on meanwhile. Calls
//! have deadlines of their own, so one stream or socket can carry many at once. Sessions idle
//! past `session_idle_secs` with nothing open are reaped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slab::Slab;

use super::{ConnId, Engine, Phase};
use crate::features::Feature;
use crate::proto::auth::Grant;
use crate::proto::http::{self, Request};
use crate::proto::hub;
use crate::proto::jsonrpc::{self, Message};
use crate::proto::metrics::ErrorKind;
use crate::proto::sse;
use crate::proto::timers::{TimerSlot, Timers};

mod gateway;
mod legacy;
mod tools;

use gateway::Urgency;
pub use gateway::{ChildAction, ChildId};

use tools::{tool_list, tool_result, ToolError};

/// Protocol revisions served, newest first.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The prefix of topic resources.
const RESOURCE_PREFIX: &str = "stream://topics/";
/// The longest a `countdown` may last, in milliseconds.
const MAX_COUNTDOWN_MS: u64 = 600_000;
/// The most progress steps a `countdown` may ask for.
const MAX_COUNTDOWN: u64 = 10_000;
/// The most calls one session may have answering later at once.
const MAX_CALLS: usize = 64;
/// The most topics one session may watch.
const MAX_WATCHED: usize = 256;
/// The syslog levels of `logging/setLevel`, least severe first.
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];
/// The messages a stream keeps for a client that resumes it.
const MAX_KEPT: usize = 64;
/// The finished streams a session keeps for resumption.
const MAX_LOGS: usize = 8;

/// Every MCP session.
#[derive(Debug, Default)]
pub(super) struct Mcp {
    sessions: HashMap<Box<str>, Session>,
    /// Topics subscribed to as resources, with the sessions that did.
    watchers: HashMap<Box<str>, Vec<Box<str>>>,
    /// Sessions by last use, oldest first: the reaping order.
    idle: BTreeMap<(Instant, u64), Box<str>>,
    uses: u64,
    /// Tool calls answered later.
    calls: Slab<Call>,
    /// Tools added by the embedder.
    tools: Vec<Tool>,
    /// Resources added by the embedder.
    resources: Vec<Resource>,
    call_timers: Timers<CallId>,
    call_generation: u32,
    /// The gateway's children, one per session (`mcp.stdio`).
    children: Slab<gateway::Upstream>,
    /// Children let go whose process the driver has not yet reported gone: they count
    /// against `max_sessions` too.
    children_ending: usize,
    child_generation: u32,
    child_actions: std::collections::VecDeque<(ChildId, ChildAction)>,
}

/// A tool call in progress: what an embedder's tool gets to report progress and finish with
/// (slot and generation, like a connection's, so a stale handle never reaches another call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId {
    index: u32,
    generation: u32,
}

/// A tool call answered later: a countdown, or an embedder's tool that has not finished.
#[derive(Debug)]
struct Call {
    generation: u32,
    /// The JSON-RPC id of the request.
    request: Value,
    /// The progress token, if the client asked for progress.
    token: Option<Value>,
    kind: CallKind,
    session: Box<str>,
    /// Where its messages go; `None` until the transport has decided.
    target: Option<Target>,
    timer: TimerSlot,
}

#[derive(Debug)]
enum CallKind {
    /// `countdown`: `done` of `total` steps, `every` apart.
    Countdown {
        done: u64,
        total: u64,
        every: Duration,
    },
    /// A tool of the embedder, which reports progress and finishes through the server.
    Embedded,
    /// A request forwarded to the session's child (gateway); its deadline is the timeout.
    Upstream {
        /// It is the `initialize` request, whose answer says the protocol revision.
        initialize: bool,
        /// When a progress notification of it was last sent.
        progress_at: Option<Instant>,
        /// Its answer, held back a moment when it came in the same turn as its last progress.
        held: Option<Box<str>>,
    },
}

impl CallKind {
    fn is_upstream(&self) -> bool {
        matches!(self, CallKind::Upstream { .. })
    }

    fn is_initialize(&self) -> bool {
        matches!(
            self,
            CallKind::Upstream {
                initialize: true,
                ..
            }
        )
    }
}

/// A tool's handler: called with the call's handle and its arguments.
pub type ToolHandler = dyn FnMut(CallId, &Value) -> ToolReply + Send;

/// A tool an embedder adds: its `tools/list` entry and its handler.
pub struct Tool {
    /// Its name (not one of the built-in tools).
    pub name: String,
    /// What it does, for clients.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub input_schema: Value,
    /// Called on the loop's thread with the call's handle and arguments. It must not block:
    /// it answers at once, or returns [`ToolReply::Later`] and finishes the call afterwards.
    pub handler: Box<ToolHandler>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool").field("name", &self.name).finish()
    }
}

/// Reads a resource's contents, as text.
pub type ResourceReader = dyn FnMut() -> String + Send;

/// A resource an embedder adds: its `resources/list` entry and its reader.
pub struct Resource {
    /// Its uri (not under `stream://topics/`, which the hub's topics use).
    pub uri: String,
    /// A short name.
    pub name: String,
    /// What it is, for clients.
    pub description: String,
    /// The media type of its contents.
    pub mime_type: String,
    /// Called on the loop's thread for `resources/read`; must not block.
    pub read: Box<ResourceReader>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource").field("uri", &self.uri).finish()
    }
}

/// What a tool's handler answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolReply {
    /// The result now: text content, or an error text (a result with `isError`).
    Done(Result<String, String>),
    /// The result comes later, through progress reports and a finish on the call's handle.
    Later,
}

/// Where a call's messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A stream of the call's session, by number: kept for resumption, sent when attached.
    Stream(u64),
    /// A WebSocket carrying the session.
    Socket(ConnId),
}

#[derive(Debug)]
struct Session {
    /// The protocol revision negotiated by `initialize` over Streamable HTTP (by the child,
    /// behind a gateway).
    version: Box<str>,
    /// Its child process (gateway), from `initialize` on.
    child: Option<ChildId>,
    /// The topics the credential that opened it allows.
    grant: Arc<Grant>,
    /// The least severe log level the client wants (`logging/setLevel`); none until it asks.
    log_level: Option<usize>,
    /// The connection it lives on (legacy HTTP+SSE, WebSocket); it ends with that.
    bound: Option<ConnId>,
    /// The number of its server-to-client stream (`GET`, or the legacy stream).
    listener: Option<u64>,
    /// Streamed calls in progress.
    calls_open: usize,
    /// SSE streams opened so far, to number their event ids.
    streams_made: u64,
    /// What its SSE streams sent, for resumption, by stream number.
    logs: BTreeMap<u64, StreamLog>,
    watching: Vec<Box<str>>,
    idle_key: (Instant, u64),
}

impl Session {
    /// Whether something still uses it: a stream, a call, its connection.
    fn busy(&self) -> bool {
        self.bound.is_some()
            || self.calls_open > 0
            || self.logs.values().any(|l| l.attached.is_some())
    }
}

/// An SSE stream of a session, kept so that a client whose connection dropped can resume it
/// with `Last-Event-ID`.
#[derive(Debug)]
struct StreamLog {
    kind: StreamKind,
    /// Messages sent so far; the last is event `<number>-<sent>`.
    sent: u64,
    /// The last [`MAX_KEPT`] messages, with their numbers.
    kept: std::collections::VecDeque<(u64, Box<str>)>,
    /// The connection it is on now, if any.
    attached: Option<ConnId>,
    /// Calls whose messages it carries.
    calls_open: usize,
}

/// An MCP SSE stream on a connection: which stream of which session.
#[derive(Debug)]
pub(super) struct McpStream {
    session: Box<str>,
    /// Its number in the session; event ids are `<number>-<n>`.
    number: u64,
}

/// What an MCP stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    /// The answer to one `POST`: it ends with its call.
    Answer,
    /// The session's `GET` stream.
    Listener,
    /// A legacy HTTP+SSE stream: every answer of the session.
    Legacy,
}

/// What a request is answered with.
enum Answer {
    /// The response, at once.
    Now(Value),
    /// A call that answers later; its transport decides where its messages go.
    Later(CallId),
}

impl Engine {
    /// Why a request to an MCP path is refused before anything else, if it is: the transport
    /// is off (501), or its `Origin` is not allowed (403).
    pub(super) fn mcp_refusal(&self, request: &Request) -> Option<(u16, &'static str)> {
        if !self.features.is_enabled(Feature::McpTransport) {
            Some((501, "MCP transport not enabled"))
        } else if !self.origin_allowed(request) {
            Some((403, "origin not allowed"))
        } else {
            None
        }
    }

    /// A request to the MCP endpoint (not refused by [`Engine::mcp_refusal`]).
    pub(super) fn mcp_request(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        body: &[u8],
        grant: Arc<Grant>,
    ) {
        let keep_alive = request.keep_alive();
        let response = match request.method.as_str() {
            "POST" => match self.mcp_post(now, id, request, body, grant) {
                Some(response) => response,
                None => return,
            },
            "GET" => match self.mcp_get(now, id, request) {
                Some(response) => response,
                None => return,
            },
            "DELETE" => self.mcp_delete(now, request, keep_alive),
            _ => http::error_response(
                405,
                "method not allowed",
                "Allow: GET, POST, DELETE\r\n",
                keep_alive,
            ),
        };
        // A HEAD gets the head alone, so that the connection stays in step.
        let response = if request.method == "HEAD" {
            super::strip_body(response)
        } else {
            response
        };
        self.respond(now, id, response, keep_alive);
    }

    /// `POST`: one JSON-RPC message. `None` when the connection became a stream.
    fn mcp_post(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        body: &[u8],
        grant: Arc<Grant>,
    ) -> Option<Vec<u8>> {
        let keep_alive = request.keep_alive();
        let refuse =
            |status: u16, reason: &str| Some(http::error_response(status, reason, "", keep_alive));
        if !accepts(request, "application/json") || !accepts(request, "text/event-stream") {
            return refuse(
                406,
                "Accept must list application/json and text/event-stream",
            );
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return refuse(400, &format!("invalid JSON: {e}")),
        };
        self.counters.messages_received += match &value {
            Value::Array(items) => items.len() as u64,
            _ => 1,
        };
        if let Value::Array(items) = &value {
            return self.mcp_batch(now, id, request, items);
        }
        let message = match jsonrpc::parse(&value) {
            Ok(m) => m,
            Err(invalid) => return refuse(400, invalid.message),
        };
        if let Message::Request {
            id: rpc_id,
            method,
            params,
        } = &message
        {
            if method == "initialize" {
                return self.mcp_initialize(now, id, rpc_id, params, keep_alive, grant);
            }
        }
        let Some(session) = request.header("mcp-session-id").map(str::to_owned) else {
            if let Message::Request {
                id: rpc_id, method, ..
            } = &message
            {
                if method == "server/discover" {
                    let error =
                        jsonrpc::error(Some(rpc_id), jsonrpc::METHOD_NOT_FOUND, "Method not found");
                    // The answer a probing client expects: not counted as an error.
                    self.counters.messages_sent += 1;
                    return Some(http::json_response(200, &error.to_string(), "", keep_alive));
                }
            }
            return refuse(400, "missing Mcp-Session-Id");
        };
        if let Err(response) = self.mcp_session_check(now, request, &session) {
            return Some(response);
        }
        match message {
            Message::Notification { method, params } => {
                if !self.mcp_notification(now, &session, &method, &params) {
                    return refuse(503, "the MCP server is not reading its input");
                }
                Some(http::response(202, "application/json", b"", "", keep_alive))
            }
            response @ Message::Response { .. } => {
                if self.gateway_on() && !self.gateway_send(&session, &response, Urgency::Reply) {
                    return refuse(503, "the MCP server is not reading its input");
                }
                Some(http::response(202, "application/json", b"", "", keep_alive))
            }
            Message::Request {
                id: rpc_id,
                method,
                params,
            } => {
                let token = progress_token(&params);
                match self.mcp_answer(now, &session, &rpc_id, &method, &params, token) {
                    Answer::Now(response) => {
                        let progress = params.get("_meta").and_then(|m| m.get("progressToken"));
                        if progress.is_none() {
                            self.count_sent_rpc(&response);
                            let extra = format!("Mcp-Session-Id: {session}\r\n");
                            return Some(http::json_response(
                                200,
                                &response.to_string(),
                                &extra,
                                keep_alive,
                            ));
                        }
                        // A request with a progress token is answered as SSE.
                        self.mcp_open_stream(now, id, &session, StreamKind::Answer);
                        self.mcp_send(id, &response);
                        self.start_closing(now, id);
                        None
                    }
                    Answer::Later(call) => {
                        self.mcp_open_stream(now, id, &session, StreamKind::Answer);
                        let target = self.target_of(id);
                        self.mcp_bind_call(now, call, target);
                        None
                    }
                }
            }
        }
    }

    /// The session named by a request is known, and the request's protocol version is served.
    fn mcp_session_check(
        &mut self,
        now: Instant,
        request: &Request,
        session: &str,
    ) -> Result<(), Vec<u8>> {
        let keep_alive = request.keep_alive();
        let Some(negotiated) = self.mcp.sessions.get(session).map(|s| &s.version) else {
            return Err(http::error_response(404, "unknown session", "", keep_alive));
        };
        if let Some(version) = request.header("mcp-protocol-version").map(str::trim) {
            if version != &**negotiated {
                let reason = if PROTOCOL_VERSIONS.contains(&version) {
                    "MCP-Protocol-Version is not the one initialize negotiated"
                } else {
                    "unsupported MCP-Protocol-Version"
                };
                return Err(http::error_response(400, reason, "", keep_alive));
            }
        }
        self.mcp_touch(now, session);
        Ok(())
    }

    /// `initialize` over Streamable HTTP: a new session, answered at once, or behind a
    /// gateway by its new child on an SSE stream (`None`: `id` became that stream).
    fn mcp_initialize(
        &mut self,
        now: Instant,
        id: ConnId,
        rpc_id: &Value,
        params: &Value,
        keep_alive: bool,
        grant: Arc<Grant>,
    ) -> Option<Vec<u8>> {
        let full = self.mcp.sessions.len() >= self.mcp_session_limit()
            || (self.gateway_on() && !self.gateway_has_room());
        if full {
            let reason = "too many MCP sessions";
            return Some(http::error_response(503, reason, "", keep_alive));
        }
        let version = negotiate(params);
        let Some(session) = self.mcp_new_session(now, grant) else {
            let reason = "no random source for a session id";
            return Some(http::error_response(503, reason, "", keep_alive));
        };
        if let Some(s) = self.mcp.sessions.get_mut(session.as_str()) {
            s.version = version.into();
        }
        if self.gateway_on() {
            self.gateway_spawn(&session);
            let token = progress_token(params);
            let answer = self.gateway_request(&session, rpc_id, "initialize", params, token);
            self.mcp_open_stream(now, id, &session, StreamKind::Answer);
            match answer {
                Answer::Later(call) => {
                    let target = self.target_of(id);
                    self.mcp_bind_call(now, call, target);
                }
                Answer::Now(response) => {
                    self.mcp_send(id, &response);
                    self.start_closing(now, id);
                }
            }
            return None;
        }
        let response = jsonrpc::result(rpc_id, initialize_result(version));
        self.count_sent_rpc(&response);
        let response = response.to_string();
        let extra = format!("Mcp-Session-Id: {session}\r\n");
        Some(http::json_response(200, &response, &extra, keep_alive))
    }

    /// The most MCP sessions at once.
    fn mcp_session_limit(&self) -> usize {
        self.config.mcp.session_limit(self.config.max_connections)
    }

    /// A batch (a JSON array), which only revision 2025-03-26 allows: its notifications and
    /// responses are taken; if it holds requests, their answers go out on one SSE stream that
    /// ends with the last of them. `None` when the connection became that stream.
    fn mcp_batch(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        items: &[Value],
    ) -> Option<Vec<u8>> {
        let keep_alive = request.keep_alive();
        let refuse =
            |status: u16, reason: &str| Some(http::error_response(status, reason, "", keep_alive));
        let Some(session) = request.header("mcp-session-id").map(str::to_owned) else {
            return refuse(400, "missing Mcp-Session-Id (initialize cannot be batched)");
        };
        if let Err(response) = self.mcp_session_check(now, request, &session) {
            return Some(response);
        }
        if &*self.mcp.sessions.get(session.as_str())?.version != "2025-03-26" {
            return refuse(400, "batches are not allowed on this protocol revision");
        }
        let mut messages = Vec::with_capacity(items.len());
        for item in items {
            match jsonrpc::parse(item) {
                Ok(Message::Request { method, .. }) if method == "initialize" => {
                    return refuse(400, "initialize cannot be batched")
                }
                Ok(message) => messages.push(message),
                Err(invalid) => return refuse(400, invalid.message),
            }
        }
        if messages.is_empty() {
            return refuse(400, "an empty batch");
        }
        let has_requests = messages
            .iter()
            .any(|m| matches!(m, Message::Request { .. }));
        if has_requests {
            self.mcp_open_stream(now, id, &session, StreamKind::Answer);
        }
        // Requests first: a cancellation in the same batch must not end the stream before the
        // batch's other answers are on it.
        let (requests, others): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| matches!(m, Message::Request { .. }));
        for message in requests.into_iter().chain(others) {
            match message {
                Message::Notification { method, params } => {
                    self.mcp_notification(now, &session, &method, &params);
                }
                response @ Message::Response { .. } => {
                    self.gateway_send(&session, &response, Urgency::Reply);
                }
                Message::Request {
                    id: rpc_id,
                    method,
                    params,
                } => {
                    let token = progress_token(&params);
                    match self.mcp_answer(now, &session, &rpc_id, &method, &params, token) {
                        Answer::Now(response) => self.mcp_send(id, &response),
                        Answer::Later(call) => {
                            let target = self.target_of(id);
                            self.mcp_bind_call(now, call, target);
                        }
                    }
                }
            }
        }
        if !has_requests {
            return Some(http::response(202, "application/json", b"", "", keep_alive));
        }
        let done = match self.conn(id).map(|c| &c.phase) {
            Some(Phase::Mcp(stream)) => self
                .mcp
                .sessions
                .get(session.as_str())
                .and_then(|s| s.logs.get(&stream.number))
                .is_some_and(|log| log.calls_open == 0),
            _ => false,
        };
        if done {
            self.start_closing(now, id);
        }
        None
    }

    /// A new session with a fresh id; `None` when no random bytes could be had.
    fn mcp_new_session(&mut self, now: Instant, grant: Arc<Grant>) -> Option<String> {
        let mut bytes = [0u8; 16];
        if !(self.random.0)(&mut bytes) {
            return None;
        }
        let session: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.mcp.uses += 1;
        let idle_key = (now, self.mcp.uses);
        self.mcp.idle.insert(idle_key, session.clone().into());
        self.mcp.sessions.insert(
            session.clone().into(),
            Session {
                version: PROTOCOL_VERSIONS[0].into(),
                child: None,
                grant,
                log_level: None,
                bound: None,
                listener: None,
                calls_open: 0,
                streams_made: 0,
                logs: BTreeMap::new(),
                watching: Vec::new(),
                idle_key,
            },
        );
        Some(session)
    }

    /// A session living on connection `id` (a WebSocket at the MCP endpoint); `None` when
    /// there are too many sessions or no random bytes.
    pub(super) fn mcp_bound_session(
        &mut self,
        now: Instant,
        id: ConnId,
        grant: Arc<Grant>,
    ) -> Option<String> {
        if self.mcp.sessions.len() >= self.mcp_session_limit() {
            return None;
        }
        let session = self.mcp_new_session(now, grant)?;
        if let Some(s) = self.mcp.sessions.get_mut(session.as_str()) {
            s.bound = Some(id);
        }
        Some(session)
    }

    /// One text frame of a WebSocket carrying MCP: one JSON-RPC message.
    pub(super) fn mcp_ws_message(&mut self, now: Instant, id: ConnId, session: &str, text: &str) {
        let answer = match serde_json::from_str::<Value>(text) {
            Ok(value) => match jsonrpc::parse(&value) {
                Ok(message) => {
                    self.mcp_touch(now, session);
                    self.mcp_message(now, session, id, message);
                    return;
                }
                Err(invalid) => jsonrpc::error(invalid.id.as_ref(), invalid.code, invalid.message),
            },
            Err(_) => jsonrpc::error(None, jsonrpc::PARSE_ERROR, "Parse error"),
        };
        self.mcp_send(id, &answer);
    }

    /// One message of a session whose answers all go on `stream` (legacy SSE, WebSocket).
    fn mcp_message(&mut self, now: Instant, session: &str, stream: ConnId, message: Message) {
        match message {
            Message::Request {
                id: rpc_id,
                method,
                params,
            } => {
                if method == "initialize" && !self.gateway_on() {
                    let result = jsonrpc::result(&rpc_id, initialize_result(negotiate(&params)));
                    self.mcp_send(stream, &result);
                } else {
                    if method == "initialize" && self.gateway_spawn(session).is_none() {
                        let error = jsonrpc::error(
                            Some(&rpc_id),
                            jsonrpc::INTERNAL_ERROR,
                            "too many MCP sessions: max_sessions MCP servers are running or exiting",
                        );
                        return self.mcp_send(stream, &error);
                    }
                    let token = progress_token(&params);
                    match self.mcp_answer(now, session, &rpc_id, &method, &params, token) {
                        Answer::Now(response) => self.mcp_send(stream, &response),
                        Answer::Later(call) => {
                            let target = self.target_of(stream);
                            self.mcp_bind_call(now, call, target)
                        }
                    }
                }
            }
            Message::Notification { method, params } => {
                self.mcp_notification(now, session, &method, &params);
            }
            response @ Message::Response { .. } => {
                self.gateway_send(session, &response, Urgency::Reply);
            }
        }
    }

    /// A notification from a client: behind a gateway it goes to the child. Then
    /// `notifications/cancelled` stops the call it names (no answer is sent for it).
    /// Returns `false` when a gateway's child should have had it and was not reading.
    fn mcp_notification(
        &mut self,
        now: Instant,
        session: &str,
        method: &str,
        params: &Value,
    ) -> bool {
        let notification = Message::Notification {
            method: method.to_string(),
            params: params.clone(),
        };
        let forwarded =
            !self.gateway_on() || self.gateway_send(session, &notification, Urgency::Reply);
        if method != "notifications/cancelled" {
            return forwarded;
        }
        let Some(request) = params.get("requestId") else {
            return forwarded;
        };
        let found = self
            .mcp
            .calls
            .iter()
            .find(|(_, c)| *c.session == *session && c.request == *request)
            .map(|(index, _)| index);
        if let Some(index) = found {
            self.mcp_finish_call(now, index);
        }
        forwarded
    }

    /// Answers one request of `session`.
    fn mcp_answer(
        &mut self,
        now: Instant,
        session: &str,
        rpc_id: &Value,
        method: &str,
        params: &Value,
        token: Option<Value>,
    ) -> Answer {
        if method == "tools/call" {
            self.counters.mcp_tool_calls += 1;
        }
        if self.gateway_on() {
            return self.gateway_request(session, rpc_id, method, params, token);
        }
        let Some(grant) = self.mcp.sessions.get(session).map(|s| s.grant.clone()) else {
            return Answer::Now(jsonrpc::error(
                Some(rpc_id),
                jsonrpc::INVALID_REQUEST,
                "unknown session",
            ));
        };
        let ok = |result: Value| Answer::Now(jsonrpc::result(rpc_id, result));
        let fail =
            |code: i64, message: &str| Answer::Now(jsonrpc::error(Some(rpc_id), code, message));
        match method {
            "ping" => ok(json!({})),
            "logging/setLevel" => {
                let level = params.get("level").and_then(Value::as_str);
                match level.and_then(|l| LOG_LEVELS.iter().position(|known| *known == l)) {
                    Some(level) => {
                        if let Some(s) = self.mcp.sessions.get_mut(session) {
                            s.log_level = Some(level);
                        }
                        ok(json!({}))
                    }
                    None => fail(jsonrpc::INVALID_PARAMS, "level must be a syslog level name"),
                }
            }
            "tools/list" => {
                let mut tools = match tool_list() {
                    Value::Array(tools) => tools,
                    _ => Vec::new(),
                };
                tools.extend(self.mcp.tools.iter().map(|t| {
                    json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema})
                }));
                ok(json!({ "tools": tools }))
            }
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let busy = self
                    .mcp
                    .sessions
                    .get(session)
                    .is_some_and(|s| s.calls_open >= MAX_CALLS);
                if busy {
                    return fail(
                        jsonrpc::INTERNAL_ERROR,
                        "too many calls in progress: at most 64 per session",
                    );
                }
                let arguments = params.get("arguments").cloned().unwrap_or(json!({}));
                if name == "countdown" {
                    let n = arguments.get("n").and_then(Value::as_u64);
                    let every = arguments
                        .get("interval_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(100)
                        .clamp(1, 60_000);
                    // A call keeps its session alive: it may not run for long.
                    let lasts = |n: u64| (n + 1).saturating_mul(every);
                    return match n {
                        Some(n) if n <= MAX_COUNTDOWN && lasts(n) <= MAX_COUNTDOWN_MS => {
                            let kind = CallKind::Countdown {
                                done: 0,
                                total: n,
                                every: Duration::from_millis(every),
                            };
                            Answer::Later(self.mcp_new_call(session, rpc_id, token, kind))
                        }
                        _ => fail(
                            jsonrpc::INVALID_PARAMS,
                            "countdown needs n, a whole number up to 10000, and may last at most \
                             10 minutes ((n + 1) x interval_ms)",
                        ),
                    };
                }
                if let Some(index) = self.mcp.tools.iter().position(|t| t.name == name) {
                    let call = self.mcp_new_call(session, rpc_id, token, CallKind::Embedded);
                    let reply = (self.mcp.tools[index].handler)(call, &arguments);
                    return match reply {
                        ToolReply::Later => Answer::Later(call),
                        ToolReply::Done(result) => {
                            // The handler may have finished the call itself already.
                            let index = call.index as usize;
                            if self
                                .mcp
                                .calls
                                .get(index)
                                .is_some_and(|c| c.generation == call.generation)
                            {
                                self.mcp.calls.remove(index);
                            }
                            Answer::Now(jsonrpc::result(rpc_id, tool_result(result)))
                        }
                    };
                }
                match self.call_tool(now, name, &arguments, &grant) {
                    Ok(text) => ok(tool_result(Ok(text))),
                    Err(ToolError::Unknown) => {
                        fail(jsonrpc::INVALID_PARAMS, &format!("unknown tool {name:?}"))
                    }
                    Err(ToolError::Failed(reason)) => ok(tool_result(Err(reason))),
                }
            }
            "resources/list" => {
                let mut resources: Vec<Value> = self
                    .hub
                    .topic_names()
                    .filter(|t| grant.may_subscribe(t))
                    .map(|t| json!({"uri": format!("{RESOURCE_PREFIX}{t}"), "name": t, "mimeType": "application/json"}))
                    .collect();
                resources.extend(self.mcp.resources.iter().map(|r| {
                    json!({"uri": r.uri, "name": r.name, "description": r.description, "mimeType": r.mime_type})
                }));
                ok(json!({ "resources": resources }))
            }
            "resources/templates/list" => ok(json!({"resourceTemplates": [{
                "uriTemplate": format!("{RESOURCE_PREFIX}{{topic}}"),
                "name": "topic",
                "description": "The retained events of a topic, oldest first",
                "mimeType": "application/json",
            }]})),
            "resources/read" => {
                let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
                if let Some(topic) = topic_of(params) {
                    if !grant.may_subscribe(topic) {
                        return fail(jsonrpc::INVALID_PARAMS, super::FORBIDDEN_TOPIC);
                    }
                    let events = self.hub.history(topic, None, usize::MAX);
                    return ok(json!({"contents": [{
                        "uri": uri,
                        "mimeType": "application/json",
                        "text": hub::envelopes_json(&events),
                    }]}));
                }
                match self.mcp.resources.iter_mut().find(|r| r.uri == uri) {
                    Some(r) => {
                        let text = (r.read)();
                        ok(
                            json!({"contents": [{"uri": uri, "mimeType": r.mime_type, "text": text}]}),
                        )
                    }
                    None => fail(jsonrpc::INVALID_PARAMS, "unknown resource"),
                }
            }
            "resources/subscribe" => {
                let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
                let known =
                    topic_of(params).is_some() || self.mcp.resources.iter().any(|r| r.uri == uri);
                if !known {
                    return fail(jsonrpc::INVALID_PARAMS, "unknown resource");
                }
                if topic_of(params).is_some_and(|topic| !grant.may_subscribe(topic)) {
                    return fail(jsonrpc::INVALID_PARAMS, super::FORBIDDEN_TOPIC);
                }
                match self.mcp_watch(session, uri) {
                    Ok(()) => ok(json!({})),
                    Err(reason) => fail(jsonrpc::INVALID_PARAMS, reason),
                }
            }
            "resources/unsubscribe" => {
                if let Some(uri) = params.get("uri").and_then(Value::as_str) {
                    self.mcp_unwatch(session, uri);
                }
                ok(json!({}))
            }
            _ => fail(jsonrpc::METHOD_NOT_FOUND, "Method not found"),
        }
    }

    /// `GET`: the session's server-to-client stream, or with `Last-Event-ID` a stream of the
    /// session resumed after that event. `None` when the connection became the stream.
    fn mcp_get(&mut self, now: Instant, id: ConnId, request: &Request) -> Option<Vec<u8>> {
        let keep_alive = request.keep_alive();
        let refuse =
            |status: u16, reason: &str| Some(http::error_response(status, reason, "", keep_alive));
        if !accepts(request, "text/event-stream") {
            return refuse(406, "Accept must list text/event-stream");
        }
        let Some(session) = request.header("mcp-session-id").map(str::to_owned) else {
            return refuse(400, "missing Mcp-Session-Id");
        };
        if let Err(response) = self.mcp_session_check(now, request, &session) {
            return Some(response);
        }
        let s = self.mcp.sessions.get(session.as_str())?;
        if let Some(last) = request.header("last-event-id") {
            let cursor = last
                .trim()
                .split_once('-')
                .and_then(|(n, k)| Some((n.parse::<u64>().ok()?, k.parse::<u64>().ok()?)));
            let Some((number, after)) = cursor else {
                return refuse(404, "unknown Last-Event-ID");
            };
            let Some(log) = s.logs.get(&number).filter(|l| l.kind != StreamKind::Legacy) else {
                return refuse(404, "unknown Last-Event-ID: no such stream in this session");
            };
            if log.attached.is_some() {
                return refuse(409, "that stream is open on another connection");
            }
            let oldest = log.sent - log.kept.len() as u64;
            if after > log.sent || after < oldest {
                return refuse(
                    404,
                    "cannot resume from that Last-Event-ID: its events are gone",
                );
            }
            let replay: Vec<(u64, Box<str>)> = log
                .kept
                .iter()
                .filter(|(k, _)| *k > after)
                .cloned()
                .collect();
            let finished = log.kind == StreamKind::Answer && log.calls_open == 0;
            self.mcp_attach(now, id, &session, number);
            for (k, text) in replay {
                self.mcp_write(id, &format!("{number}-{k}"), &text);
            }
            if finished {
                self.start_closing(now, id);
            }
            return None;
        }
        let listening = s
            .listener
            .and_then(|n| s.logs.get(&n))
            .is_some_and(|l| l.attached.is_some());
        if listening {
            return refuse(409, "this session already has a GET stream");
        }
        let number = self.mcp_open_stream(now, id, &session, StreamKind::Listener);
        if let Some(s) = self.mcp.sessions.get_mut(session.as_str()) {
            s.listener = number;
        }
        None
    }

    /// `DELETE`: ends the session.
    fn mcp_delete(&mut self, now: Instant, request: &Request, keep_alive: bool) -> Vec<u8> {
        let Some(session) = request.header("mcp-session-id").map(str::to_owned) else {
            return http::error_response(400, "missing Mcp-Session-Id", "", keep_alive);
        };
        if let Err(response) = self.mcp_session_check(now, request, &session) {
            return response;
        }
        self.mcp_end(now, &session);
        http::json_response(200, "{}", "", keep_alive)
    }

    /// Ends a session: its streams close, its subscriptions go.
    fn mcp_end(&mut self, now: Instant, session: &str) {
        for stream in self.mcp_forget_session(session) {
            self.start_closing(now, stream);
        }
    }

    /// Removes a session and its subscriptions; returns the connections its streams are on.
    pub(super) fn mcp_forget_session(&mut self, session: &str) -> Vec<ConnId> {
        let Some(s) = self.mcp.sessions.remove(session) else {
            return Vec::new();
        };
        self.mcp.idle.remove(&s.idle_key);
        for topic in &s.watching {
            self.unwatch_topic(session, topic);
        }
        if let Some(child) = s.child {
            self.gateway_end(child);
        }
        // Its calls go with it (their heap entries are skipped when they come due).
        self.mcp.calls.retain(|_, c| *c.session != *session);
        s.logs.values().filter_map(|l| l.attached).collect()
    }

    /// Turns `id` into a new MCP SSE stream of `session`; returns its number.
    fn mcp_open_stream(
        &mut self,
        now: Instant,
        id: ConnId,
        session: &str,
        kind: StreamKind,
    ) -> Option<u64> {
        let s = self.mcp.sessions.get_mut(session)?;
        // Finished streams beyond the few kept for resumption go, oldest first; a stream in use
        // (on a connection, carrying calls, or the session's listener) stays.
        while s.logs.len() >= MAX_LOGS {
            let idle = s
                .logs
                .iter()
                .find(|(n, l)| l.attached.is_none() && l.calls_open == 0 && s.listener != Some(**n))
                .map(|(n, _)| *n);
            match idle {
                Some(n) => {
                    s.logs.remove(&n);
                }
                None => break,
            }
        }
        s.streams_made += 1;
        let number = s.streams_made;
        s.logs.insert(
            number,
            StreamLog {
                kind,
                sent: 0,
                kept: Default::default(),
                attached: None,
                calls_open: 0,
            },
        );
        self.mcp_attach(now, id, session, number);
        Some(number)
    }

    /// Puts stream `number` of `session` on connection `id`: the response head, `retry:`, and
    /// from now on what the stream sends.
    fn mcp_attach(&mut self, now: Instant, id: ConnId, session: &str, number: u64) {
        if self.conn(id).is_none() {
            return;
        }
        let Some(log) = self
            .mcp
            .sessions
            .get_mut(session)
            .and_then(|s| s.logs.get_mut(&number))
        else {
            return;
        };
        log.attached = Some(id);
        let retry = self.config.sse.retry_ms;
        let heartbeat = self.config.sse.heartbeat();
        let head = sse::stream_head(&format!("Mcp-Session-Id: {session}\r\n{}", self.cors));
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.inbuf = Vec::new();
        conn.out.push_owned(head);
        conn.out
            .push_owned(format!("retry: {retry}\n\n").into_bytes());
        conn.phase = Phase::Mcp(Box::new(McpStream {
            session: session.into(),
            number,
        }));
        self.counters.mcp_streams += 1;
        self.set_deadline(id, now.checked_add(heartbeat));
        self.want_write(id);
    }

    /// A call of `session` answering request `request`, not yet bound to a transport.
    fn mcp_new_call(
        &mut self,
        session: &str,
        request: &Value,
        token: Option<Value>,
        kind: CallKind,
    ) -> CallId {
        self.mcp.call_generation = self.mcp.call_generation.wrapping_add(1);
        let generation = self.mcp.call_generation;
        let index = self.mcp.calls.insert(Call {
            generation,
            request: request.clone(),
            token,
            kind,
            session: session.into(),
            target: None,
            timer: TimerSlot::default(),
        });
        CallId {
            index: index as u32,
            generation,
        }
    }

    /// Sends `call`'s messages to `target` from now on; a countdown starts counting.
    fn mcp_bind_call(&mut self, now: Instant, call: CallId, target: Target) {
        let mcp = &mut self.mcp;
        let Some(c) = mcp
            .calls
            .get_mut(call.index as usize)
            .filter(|c| c.generation == call.generation)
        else {
            return;
        };
        c.target = Some(target);
        let mut log = None;
        match c.kind {
            CallKind::Countdown { every, total, .. } => {
                mcp.call_timers
                    .set(&mut c.timer, call, now.checked_add(every));
                log = Some(format!(
                    "counting down from {total}, every {} ms",
                    every.as_millis()
                ));
            }
            CallKind::Upstream { .. } => {
                let timeout = self.config.mcp.stdio.as_ref().map(|s| s.request_timeout());
                let at = timeout.and_then(|t| now.checked_add(t));
                mcp.call_timers.set(&mut c.timer, call, at);
            }
            CallKind::Embedded => {}
        }
        let session = c.session.clone();
        if let Some(s) = mcp.sessions.get_mut(&c.session) {
            s.calls_open += 1;
            if let Target::Stream(number) = target {
                if let Some(log) = s.logs.get_mut(&number) {
                    log.calls_open += 1;
                }
            }
        }
        if let Some(text) = log {
            self.mcp_log(&session, target, 1, "countdown", &text);
        }
    }

    /// Sends a `notifications/message` at `level` (an index in [`LOG_LEVELS`]) to `target`, if
    /// the session asked for that level or a less severe one.
    fn mcp_log(&mut self, session: &str, target: Target, level: usize, logger: &str, text: &str) {
        let wanted = self
            .mcp
            .sessions
            .get(session)
            .and_then(|s| s.log_level)
            .is_some_and(|least| level >= least);
        if wanted {
            let message = jsonrpc::notification(
                "notifications/message",
                json!({"level": LOG_LEVELS[level], "logger": logger, "data": text}),
            );
            self.mcp_deliver(session, target, &message);
        }
    }

    /// Adds a tool of the embedder; `tools/list` shows it after the built-in ones. A tool with
    /// the name of another is refused.
    pub fn add_tool(&mut self, tool: Tool) -> Result<(), Box<Tool>> {
        let taken = tool_list()
            .as_array()
            .is_some_and(|tools| tools.iter().any(|t| t["name"] == tool.name.as_str()))
            || self.mcp.tools.iter().any(|t| t.name == tool.name);
        if taken {
            return Err(Box::new(tool));
        }
        self.mcp.tools.push(tool);
        Ok(())
    }

    /// Reports progress of an embedder's tool call (sent only if the client asked for
    /// progress). Returns whether the call is still in progress.
    pub fn tool_progress(&mut self, call: CallId, progress: f64, total: Option<f64>) -> bool {
        let Some(c) = self
            .mcp
            .calls
            .get(call.index as usize)
            .filter(|c| c.generation == call.generation)
        else {
            return false;
        };
        if let (Some(token), Some(target)) = (c.token.clone(), c.target) {
            let mut params = json!({"progressToken": token, "progress": progress});
            if let Some(total) = total {
                params["total"] = json!(total);
            }
            let session = c.session.clone();
            self.mcp_deliver(
                &session,
                target,
                &jsonrpc::notification("notifications/progress", params),
            );
        }
        true
    }

    /// Finishes an embedder's tool call with its result: text content, or an error text.
    /// Returns whether the call was still in progress (a cancelled call is gone).
    pub fn tool_finish(
        &mut self,
        now: Instant,
        call: CallId,
        result: Result<String, String>,
    ) -> bool {
        let index = call.index as usize;
        let Some(c) = self
            .mcp
            .calls
            .get(index)
            .filter(|c| c.generation == call.generation)
        else {
            return false;
        };
        let answer = jsonrpc::result(&c.request, tool_result(result));
        let session = c.session.clone();
        if let Some(target) = c.target {
            self.mcp_deliver(&session, target, &answer);
        }
        self.mcp_finish_call(now, index);
        true
    }

    /// Sends `message` of `session` to `target`.
    fn mcp_deliver(&mut self, session: &str, target: Target, message: &Value) {
        self.count_rpc_error(message);
        self.mcp_deliver_text(session, target, message.to_string());
    }

    /// Counts a JSON-RPC message the engine made that is an error answer: an internal error
    /// or a timeout is the server's failure, anything else an answer to what the client asked.
    fn count_rpc_error(&mut self, message: &Value) {
        if let Some(error) = message.get("error") {
            self.counters.errors.add(rpc_error_kind(error));
        }
    }

    /// Counts a JSON-RPC message sent as the body of an HTTP response.
    fn count_sent_rpc(&mut self, message: &Value) {
        self.counters.messages_sent += 1;
        self.count_rpc_error(message);
    }

    /// Sends a message of `session`, as JSON text, to `target`.
    fn mcp_deliver_text(&mut self, session: &str, target: Target, text: String) {
        match target {
            Target::Stream(number) => self.mcp_emit(session, number, text),
            Target::Socket(socket) => {
                if self.mcp_socket_open(socket) {
                    self.ws_reply_text(socket, text);
                }
            }
        }
    }

    /// Where the messages of a call asked for on connection `id` go.
    fn target_of(&self, id: ConnId) -> Target {
        match self.conn(id).map(|c| &c.phase) {
            Some(Phase::Mcp(stream)) => Target::Stream(stream.number),
            _ => Target::Socket(id),
        }
    }

    /// How many calls are answering later, over every session.
    pub(super) fn mcp_calls_in_progress(&self) -> usize {
        self.mcp.calls.len()
    }

    /// How many sessions are open.
    pub(super) fn mcp_session_count(&self) -> usize {
        self.mcp.sessions.len()
    }

    /// The next deadline of a streamed call.
    pub(super) fn mcp_next_call(&self) -> Option<Instant> {
        self.mcp.call_timers.next()
    }

    /// Takes the steps of every call due at `now`.
    pub(super) fn mcp_calls_due(&mut self, now: Instant) {
        while let Some((at, call)) = self.mcp.call_timers.pop_due(now) {
            let mcp = &mut self.mcp;
            let Some(c) = mcp
                .calls
                .get_mut(call.index as usize)
                .filter(|c| c.generation == call.generation)
            else {
                continue;
            };
            if mcp.call_timers.fire(&mut c.timer, call, at, now) {
                self.mcp_call_step(now, call);
            }
        }
    }

    /// One step of a countdown: a progress notification, or at the end the answer. A call
    /// whose stream is detached goes on: its messages are kept for a client that resumes.
    fn mcp_call_step(&mut self, now: Instant, call: CallId) {
        let index = call.index as usize;
        if self.mcp.calls[index].kind.is_upstream() {
            return self.gateway_timeout(now, index);
        }
        let c = &mut self.mcp.calls[index];
        let (Some(target), CallKind::Countdown { done, total, every }) = (c.target, &mut c.kind)
        else {
            return;
        };
        *done += 1;
        let (done, total, every) = (*done, *total, *every);
        let session = c.session.clone();
        let message = if done <= total {
            c.token.as_ref().map(|token| {
                jsonrpc::notification(
                    "notifications/progress",
                    json!({"progressToken": token, "progress": done, "total": total}),
                )
            })
        } else {
            Some(jsonrpc::result(&c.request, tool_result(Ok("done".into()))))
        };
        let alive = match target {
            Target::Stream(_) => self.mcp.sessions.contains_key(&session),
            Target::Socket(socket) => self.mcp_socket_open(socket),
        };
        if let (true, Some(message)) = (alive, message) {
            self.mcp_deliver(&session, target, &message);
        }
        if done <= total && alive {
            // The answer comes one interval after the last progress step, never in the same
            // write (PITFALLS: one SDK drops a progress notification read with the answer).
            // Delivering can have ended the session (a client cut off as a slow consumer), and
            // the call with it.
            let mcp = &mut self.mcp;
            if let Some(c) = mcp.calls.get_mut(index) {
                mcp.call_timers
                    .set(&mut c.timer, call, now.checked_add(every));
            }
            return;
        }
        // Finished, or nobody is left to hear it.
        self.mcp_finish_call(now, index);
    }

    /// Whether `id` is a WebSocket carrying MCP.
    fn mcp_socket_open(&self, id: ConnId) -> bool {
        matches!(self.conn(id).map(|c| &c.phase), Some(Phase::Ws(socket)) if socket.mcp_session.is_some())
    }

    /// Removes the call at `index`; an answer stream left with no call ends.
    fn mcp_finish_call(&mut self, now: Instant, index: usize) {
        let Some(c) = self.mcp.calls.try_remove(index) else {
            return;
        };
        let Some(s) = self.mcp.sessions.get_mut(&c.session) else {
            return;
        };
        // Only a call bound to a transport was counted.
        if c.target.is_some() {
            s.calls_open = s.calls_open.saturating_sub(1);
        }
        let Some(Target::Stream(number)) = c.target else {
            return;
        };
        let Some(log) = s.logs.get_mut(&number) else {
            return;
        };
        log.calls_open = log.calls_open.saturating_sub(1);
        if log.kind == StreamKind::Answer && log.calls_open == 0 {
            if let Some(stream) = log.attached {
                self.start_closing(now, stream);
            }
        }
    }

    /// Sends one JSON-RPC message on `id`: an MCP SSE stream, or a WebSocket carrying MCP.
    pub(super) fn mcp_send(&mut self, id: ConnId, message: &Value) {
        self.count_rpc_error(message);
        match self.conn(id).map(|c| &c.phase) {
            Some(Phase::Mcp(stream)) => {
                let (session, number) = (stream.session.clone(), stream.number);
                self.mcp_emit(&session, number, message.to_string());
            }
            Some(Phase::Ws(socket)) if socket.mcp_session.is_some() => self.ws_reply(id, message),
            _ => {}
        }
    }

    /// Sends one message on stream `number` of `session`: numbered, kept for resumption, and
    /// written if the stream is on a connection now.
    fn mcp_emit(&mut self, session: &str, number: u64, message: String) {
        let Some(log) = self
            .mcp
            .sessions
            .get_mut(session)
            .and_then(|s| s.logs.get_mut(&number))
        else {
            return;
        };
        log.sent += 1;
        let (sent, attached) = (log.sent, log.attached);
        // Encoded for the connection before the text moves into the log: no copy of it.
        let block =
            attached.map(|_| sse::event_block(&format!("{number}-{sent}"), "message", &message));
        if log.kept.len() == MAX_KEPT {
            log.kept.pop_front();
        }
        log.kept.push_back((sent, message.into_boxed_str()));
        if let (Some(id), Some(block)) = (attached, block) {
            self.mcp_write_block(id, block);
        }
    }

    /// Writes one event on connection `id`; a client that does not read is cut off once its
    /// queue passes the bound (its stream can be resumed). One event larger than the bound
    /// passes an empty queue: a large answer is not a slow consumer.
    fn mcp_write(&mut self, id: ConnId, event_id: &str, text: &str) {
        self.mcp_write_block(id, sse::event_block(event_id, "message", text));
    }

    /// Writes one encoded event on connection `id`, as [`Engine::mcp_write`] says.
    fn mcp_write_block(&mut self, id: ConnId, block: Vec<u8>) {
        let limit = self.config.backpressure.max_queue_bytes;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let queued = conn.out.len();
        conn.out.push_owned(block);
        let over = queued > 0 && conn.out.len() > limit;
        self.counters.messages_sent += 1;
        if over {
            self.counters.slow_consumers_disconnected += 1;
            return self.close(id);
        }
        self.want_write(id);
    }

    /// The deadline of an MCP stream: a heartbeat if it is idle.
    pub(super) fn mcp_heartbeat(&mut self, now: Instant, id: ConnId) {
        let heartbeat = self.config.sse.heartbeat();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.out.is_empty() {
            conn.out.push_static(sse::HEARTBEAT);
            self.want_write(id);
        }
        self.set_deadline(id, now.checked_add(heartbeat));
    }

    /// An MCP stream left its connection: the session keeps it for resumption (a legacy
    /// session ends with its stream).
    pub(super) fn mcp_release(&mut self, id: ConnId, stream: McpStream) {
        self.counters.mcp_streams -= 1;
        let Some(s) = self.mcp.sessions.get_mut(&stream.session) else {
            return;
        };
        if s.bound == Some(id) {
            self.mcp_forget_session(&stream.session);
            return;
        }
        if let Some(log) = s.logs.get_mut(&stream.number) {
            if log.attached == Some(id) {
                log.attached = None;
            }
        }
    }

    /// Tells the sessions watching the resource of `topic` that it changed.
    pub(super) fn mcp_topic_updated(&mut self, topic: &str) {
        if !self.mcp.watchers.is_empty() {
            self.resource_updated(&format!("{RESOURCE_PREFIX}{topic}"));
        }
    }

    /// Tells the sessions that subscribed to resource `uri` that it changed, on their
    /// server-to-client stream (kept for resumption while it is detached) or their WebSocket.
    pub fn resource_updated(&mut self, uri: &str) {
        let Some(sessions) = self.mcp.watchers.get(uri) else {
            return;
        };
        let targets: Vec<(Box<str>, Target)> = sessions
            .iter()
            .filter_map(|name| {
                let s = self.mcp.sessions.get(name)?;
                let target = match (s.listener, s.bound) {
                    (Some(number), _) => Target::Stream(number),
                    (None, Some(socket)) => Target::Socket(socket),
                    (None, None) => return None,
                };
                Some((name.clone(), target))
            })
            .collect();
        let message = jsonrpc::notification("notifications/resources/updated", json!({"uri": uri}));
        for (session, target) in targets {
            self.mcp_deliver(&session, target, &message);
        }
    }

    /// Adds a resource of the embedder: `resources/list` shows it, `resources/read` calls its
    /// reader, and clients may subscribe to it ([`Engine::resource_updated`] tells them of a
    /// change). A uri that is taken, or under `stream://topics/`, is handed back.
    pub fn add_resource(&mut self, resource: Resource) -> Result<(), Box<Resource>> {
        let taken = resource.uri.starts_with(RESOURCE_PREFIX)
            || self.mcp.resources.iter().any(|r| r.uri == resource.uri);
        if taken {
            return Err(Box::new(resource));
        }
        self.mcp.resources.push(resource);
        Ok(())
    }

    fn mcp_watch(&mut self, session: &str, topic: &str) -> Result<(), &'static str> {
        let Some(s) = self.mcp.sessions.get_mut(session) else {
            return Err("unknown session");
        };
        if s.watching.iter().any(|t| **t == *topic) {
            return Ok(());
        }
        if s.watching.len() >= MAX_WATCHED {
            return Err("too many resource subscriptions: at most 256 per session");
        }
        s.watching.push(topic.into());
        self.mcp
            .watchers
            .entry(topic.into())
            .or_default()
            .push(session.into());
        Ok(())
    }

    fn mcp_unwatch(&mut self, session: &str, topic: &str) {
        if let Some(s) = self.mcp.sessions.get_mut(session) {
            s.watching.retain(|t| **t != *topic);
        }
        self.unwatch_topic(session, topic);
    }

    fn unwatch_topic(&mut self, session: &str, topic: &str) {
        if let Some(sessions) = self.mcp.watchers.get_mut(topic) {
            sessions.retain(|s| **s != *session);
            if sessions.is_empty() {
                self.mcp.watchers.remove(topic);
            }
        }
    }

    /// Marks `session` as used now.
    fn mcp_touch(&mut self, now: Instant, session: &str) {
        let Some(s) = self.mcp.sessions.get_mut(session) else {
            return;
        };
        self.mcp.idle.remove(&s.idle_key);
        self.mcp.uses += 1;
        s.idle_key = (now, self.mcp.uses);
        self.mcp.idle.insert(s.idle_key, session.into());
    }

    /// When the next session may be reaped.
    pub(super) fn mcp_next_reap(&self) -> Option<Instant> {
        let (&(last, _), _) = self.mcp.idle.first_key_value()?;
        last.checked_add(self.config.mcp.session_idle())
    }

    /// Ends the sessions idle past `session_idle_secs`; one with a stream open is kept.
    pub(super) fn mcp_reap(&mut self, now: Instant) {
        let idle = self.config.mcp.session_idle();
        while let Some((&(last, _), session)) = self.mcp.idle.first_key_value() {
            if last.checked_add(idle).is_none_or(|due| due > now) {
                return;
            }
            let session = session.clone();
            let busy = self.mcp.sessions.get(&session).is_some_and(Session::busy);
            if busy {
                self.mcp_touch(now, &session);
            } else {
                log::debug!("MCP session {session} reaped after {idle:?} idle");
                self.mcp_end(now, &session);
            }
        }
    }
}

/// The revision for an `initialize`: the client's if it is served, else the newest.
/// The kind of a JSON-RPC error answer's `error` object, by its code.
pub(super) fn rpc_error_kind(error: &Value) -> ErrorKind {
    match error.get("code").and_then(Value::as_i64) {
        Some(jsonrpc::INTERNAL_ERROR | gateway::REQUEST_TIMEOUT) => ErrorKind::Internal,
        _ => ErrorKind::JsonRpc,
    }
}

fn negotiate(params: &Value) -> &'static str {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    PROTOCOL_VERSIONS
        .iter()
        .find(|v| Some(**v) == asked)
        .copied()
        .unwrap_or(PROTOCOL_VERSIONS[0])
}

/// The `initialize` result for `version`.
fn initialize_result(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {"listChanged": false},
            "resources": {"subscribe": true, "listChanged": false},
            "logging": {},
        },
        "serverInfo": {"name": "mcp-stream", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Topics of the mcp-stream hub are resources stream://topics/{topic}; \
                         the tools publish, history and topics work on them.",
    })
}

/// The progress token of a request, if it asked for progress.
fn progress_token(params: &Value) -> Option<Value> {
    params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_number())
        .cloned()
}

/// Whether `Accept` lists `kind` (or a wildcard that covers it) with a quality above zero.
fn accepts(request: &Request, kind: &str) -> bool {
    let Some(accept) = request.header("accept") else {
        return false;
    };
    let major = kind.split('/').next().unwrap_or("");
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused
            && (media.eq_ignore_ascii_case(kind) || media == "*/*" || media == format!("{major}/*"))
    })
}

/// The topic of a `stream://topics/{topic}` resource in `params.uri`.
fn topic_of(params: &Value) -> Option<&str> {
    params
        .get("uri")
        .and_then(Value::as_str)
        .and_then(|uri| uri.strip_prefix(RESOURCE_PREFIX))
        .filter(|t| hub::valid_topic(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_header(value: &str) -> Request {
        Request {
            method: "POST".into(),
            path: "/mcp".into(),
            query: String::new(),
            version: 1,
            headers: vec![("accept".into(), value.as_bytes().to_vec())],
        }
    }

    #[test]
    fn accept_lists_wildcards_and_refusals() {
        let both = accept_header("application/json, text/event-stream");
        assert!(accepts(&both, "application/json") && accepts(&both, "text/event-stream"));
        assert!(accepts(&accept_header("*/*"), "text/event-stream"));
        assert!(accepts(&accept_header("text/*;q=0.5"), "text/event-stream"));
        let refused = accept_header("application/json;q=0, text/event-stream");
        assert!(!accepts(&refused, "application/json"));
        assert!(!accepts(&accept_header("text/html"), "text/event-stream"));
    }
}
