//! The stdio gateway, in the core: with `mcp.stdio` set, every MCP session (Streamable HTTP,
//! legacy HTTP+SSE, WebSocket) is served by a child process of its own that speaks MCP over
//! stdio, one JSON-RPC message per line, instead of the built-in tools.
//!
//! The engine decides and routes; the driver owns the processes and their pipes. `initialize`
//! asks for a child ([`ChildAction::Spawn`]); what a client sends goes to the child's input
//! ([`ChildAction::Write`]); the child's lines come back through [`Engine::handle_child_output`]
//! and go where they belong: an answer to the stream of its request, a progress notification to
//! the stream of the request that asked for progress, anything else (logging, resource updates,
//! the child's own requests such as sampling or roots) to the session's server-to-client stream,
//! or while there is none to a stream with a request open. Requests the child never
//! answers time out (`mcp.stdio.request_timeout_secs`, restarted by progress) with an error and
//! a cancellation to the child. When the session ends the child is told to go
//! ([`ChildAction::End`]); when the child goes first, the session ends and its open requests get
//! an error. A line that is not JSON-RPC, or longer than `limits.max_body_bytes`, is logged and
//! skipped.

use std::time::Instant;

use serde_json::{json, Value};

use super::{Answer, CallKind, Target, MAX_CALLS};
use crate::proto::engine::Engine;
use crate::proto::jsonrpc::{self, Message};
use crate::proto::metrics::ErrorKind;
use crate::proto::ndjson::{Line, LineReader};

/// The JSON-RPC error code of a request that timed out (as the MCP SDKs use it).
pub(super) const REQUEST_TIMEOUT: i64 = -32001;

/// A child process's handle: slot and generation, like a connection's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChildId {
    /// The slot, dense from 0 and below [`Engine::max_children`]; the driver keeps the
    /// process at the same index.
    pub index: u32,
    /// Which tenant of the slot this is.
    pub generation: u32,
}

impl std::fmt::Display for ChildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// What the driver must do for a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildAction {
    /// Start it with `mcp.stdio`; if that fails, report it with [`Engine::handle_child_exit`].
    Spawn,
    /// It has input waiting: write what [`Engine::child_input`] gives.
    Write,
    /// Its session is over and the engine has forgotten it: close its input, then SIGTERM,
    /// then SIGKILL, each `mcp.stdio.grace_ms` apart, and reap it.
    End,
}

/// How much a message for a child may pass the bound of its unread input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Urgency {
    /// A request: refused once `max_queue_bytes` wait unread.
    Request,
    /// A notification, or an answer to the child's own request, which the child may be
    /// waiting for: refused only once twice that wait.
    Reply,
}

/// A session's child, as the core sees it.
#[derive(Debug)]
pub(super) struct Upstream {
    generation: u32,
    session: Box<str>,
    /// Lines for its stdin; `stdin_sent` bytes of them are written.
    stdin: Vec<u8>,
    stdin_sent: usize,
    stdout: LineReader,
    /// A [`ChildAction::Write`] for it is waiting.
    write_pending: bool,
}

impl Engine {
    /// Whether MCP sessions are served by child processes (`mcp.stdio`).
    pub(super) fn gateway_on(&self) -> bool {
        self.config.mcp.stdio.is_some()
    }

    /// The driver has reaped a child the engine let go (and every process of its group).
    pub fn handle_child_reaped(&mut self) {
        self.mcp.children_ending = self.mcp.children_ending.saturating_sub(1);
    }

    /// Whether another child may start: children running and ending stay within
    /// `max_sessions`.
    pub(super) fn gateway_has_room(&self) -> bool {
        self.mcp.children.len() + self.mcp.children_ending < self.mcp_session_limit()
    }

    /// The most children at once: child slots stay below it (0 without a gateway).
    pub fn max_children(&self) -> usize {
        if self.gateway_on() {
            self.mcp_session_limit()
        } else {
            0
        }
    }

    /// The next thing the driver must do for a child.
    pub fn poll_child_action(&mut self) -> Option<(ChildId, ChildAction)> {
        while let Some((id, action)) = self.mcp.child_actions.pop_front() {
            if action != ChildAction::Write {
                return Some((id, action));
            }
            if let Some(index) = self.child_index(id) {
                self.mcp.children[index].write_pending = false;
                return Some((id, action));
            }
        }
        None
    }

    /// What is waiting to be written to `id`'s stdin.
    pub fn child_input(&self, id: ChildId) -> &[u8] {
        self.child_index(id).map_or(&[], |index| {
            let child = &self.mcp.children[index];
            &child.stdin[child.stdin_sent..]
        })
    }

    /// `written` bytes of `id`'s input reached its stdin.
    pub fn consume_child_input(&mut self, id: ChildId, written: usize) {
        let Some(index) = self.child_index(id) else {
            return;
        };
        let child = &mut self.mcp.children[index];
        child.stdin_sent = (child.stdin_sent + written).min(child.stdin.len());
        if child.stdin_sent == child.stdin.len() {
            child.stdin.clear();
            child.stdin_sent = 0;
            if child.stdin.capacity() > self.config.backpressure.max_queue_bytes {
                child.stdin = Vec::new();
            }
        } else if child.stdin_sent > child.stdin.len() / 2 {
            // What is written goes, so that a child that reads slowly but never catches up
            // holds no more than its bound (amortized: each byte moves at most once here).
            child.stdin.drain(..child.stdin_sent);
            child.stdin_sent = 0;
        }
    }

    /// Bytes the child `id` wrote on its stdout.
    pub fn handle_child_output(&mut self, now: Instant, id: ChildId, data: &[u8]) {
        let Some(index) = self.child_index(id) else {
            return;
        };
        let mut reader =
            std::mem::replace(&mut self.mcp.children[index].stdout, LineReader::new(0));
        reader.push(data, |line| self.gateway_line(now, id, line));
        if let Some(index) = self.child_index(id) {
            self.mcp.children[index].stdout = reader;
        }
    }

    /// How logs name the session of child `id`: the first 8 characters of its id.
    pub fn child_label(&self, id: ChildId) -> Option<&str> {
        let index = self.child_index(id)?;
        Some(short(&self.mcp.children[index].session))
    }

    /// The child `id` is gone, or could not be started: `reason` ends "the MCP server …" (for
    /// example "exited with status 1"). Its requests in flight get an error and its session ends.
    pub fn handle_child_exit(&mut self, now: Instant, id: ChildId, reason: &str) {
        let Some(index) = self.child_index(id) else {
            return;
        };
        let session = self.mcp.children[index].session.clone();
        self.counters.errors.add(ErrorKind::Gateway);
        log::warn!(
            "MCP server of session {}: {reason}; ending the session",
            short(&session)
        );
        let message = format!("the MCP server {reason}");
        let calls: Vec<usize> = self
            .mcp
            .calls
            .iter()
            .filter(|(_, c)| *c.session == *session)
            .map(|(index, _)| index)
            .collect();
        for index in calls {
            // Delivering an error can end the session (a client cut off as a slow consumer),
            // and its other calls with it.
            let Some(c) = self.mcp.calls.get(index) else {
                continue;
            };
            let error = jsonrpc::error(Some(&c.request), jsonrpc::INTERNAL_ERROR, &message);
            if let Some(target) = c.target {
                self.mcp_deliver(&session, target, &error);
            }
            self.mcp_finish_call(now, index);
        }
        let socket = self
            .mcp
            .sessions
            .get(&session)
            .and_then(|s| s.bound)
            .filter(|&socket| self.mcp_socket_open(socket));
        self.mcp_end(now, &session);
        if let Some(socket) = socket {
            self.ws_close(now, socket, 1011, "MCP server exited");
        }
    }

    /// Gives `session` a child, asked of the driver; `None` when children running and ending
    /// are at `max_sessions` already.
    pub(super) fn gateway_spawn(&mut self, session: &str) -> Option<ChildId> {
        let max_line = self.config.limits.max_body_bytes;
        let room = self.gateway_has_room();
        let s = self.mcp.sessions.get_mut(session)?;
        if let Some(child) = s.child {
            return Some(child);
        }
        if !room {
            return None;
        }
        self.mcp.child_generation = self.mcp.child_generation.wrapping_add(1);
        let generation = self.mcp.child_generation;
        let index = self.mcp.children.insert(Upstream {
            generation,
            session: session.into(),
            stdin: Vec::new(),
            stdin_sent: 0,
            stdout: LineReader::new(max_line),
            write_pending: false,
        });
        let id = ChildId {
            index: index as u32,
            generation,
        };
        s.child = Some(id);
        self.counters.mcp_children += 1;
        self.mcp.child_actions.push_back((id, ChildAction::Spawn));
        Some(id)
    }

    /// Ends every session served by a child (the server is shutting down), so that the
    /// children get their input closed and time to exit.
    pub(in crate::proto::engine) fn mcp_end_gateway_sessions(&mut self, now: Instant) {
        let sessions: Vec<Box<str>> = self
            .mcp
            .children
            .iter()
            .map(|(_, child)| child.session.clone())
            .collect();
        for session in sessions {
            self.mcp_end(now, &session);
        }
    }

    /// The session's child is no longer wanted: the driver ends it.
    pub(super) fn gateway_end(&mut self, id: ChildId) {
        if let Some(index) = self.child_index(id) {
            self.mcp.children.remove(index);
            self.counters.mcp_children -= 1;
            self.mcp.children_ending += 1;
            self.mcp.child_actions.push_back((id, ChildAction::End));
        }
    }

    /// Queues `message` for the child of `session`, as one line. `false` when it has no child,
    /// or its input is not being read (more than `max_queue_bytes` waiting, twice that for
    /// [`Urgency::Reply`]); such a message is dropped, with a warning.
    pub(super) fn gateway_send(
        &mut self,
        session: &str,
        message: &Message,
        urgency: Urgency,
    ) -> bool {
        let limit = match urgency {
            Urgency::Request => self.config.backpressure.max_queue_bytes,
            Urgency::Reply => self.config.backpressure.max_queue_bytes.saturating_mul(2),
        };
        let Some(id) = self.mcp.sessions.get(session).and_then(|s| s.child) else {
            return false;
        };
        let Some(index) = self.child_index(id) else {
            return false;
        };
        let child = &mut self.mcp.children[index];
        if child.stdin.len() - child.stdin_sent >= limit {
            log::warn!(
                "MCP server of session {}: not reading its input; a message for it is dropped",
                short(session)
            );
            return false;
        }
        // `Value`'s compact text has no raw newline: one message, one line.
        let mut line = message.encode().to_string().into_bytes();
        line.push(b'\n');
        child.stdin.extend_from_slice(&line);
        if !child.write_pending {
            child.write_pending = true;
            self.mcp.child_actions.push_back((id, ChildAction::Write));
        }
        true
    }

    /// A request of `session` for its child: forwarded, and answered later by the child. With
    /// no child yet (WebSocket or legacy before `initialize`), or too many requests open, it is
    /// answered at once with an error.
    pub(super) fn gateway_request(
        &mut self,
        session: &str,
        rpc_id: &Value,
        method: &str,
        params: &Value,
        token: Option<Value>,
    ) -> Answer {
        let fail =
            |code: i64, message: &str| Answer::Now(jsonrpc::error(Some(rpc_id), code, message));
        let Some(s) = self.mcp.sessions.get(session) else {
            return fail(jsonrpc::INVALID_REQUEST, "unknown session");
        };
        if s.child.is_none() {
            return fail(
                jsonrpc::INVALID_REQUEST,
                "the session is not initialized: send initialize first",
            );
        }
        if s.calls_open >= MAX_CALLS {
            return fail(
                jsonrpc::INTERNAL_ERROR,
                "too many requests in progress: at most 64 per session",
            );
        }
        let request = Message::Request {
            id: rpc_id.clone(),
            method: method.to_string(),
            params: params.clone(),
        };
        if !self.gateway_send(session, &request, Urgency::Request) {
            return fail(
                jsonrpc::INTERNAL_ERROR,
                "the MCP server is not reading its input",
            );
        }
        let kind = CallKind::Upstream {
            initialize: method == "initialize",
            progress_at: None,
            held: None,
        };
        Answer::Later(self.mcp_new_call(session, rpc_id, token, kind))
    }

    /// A request of the child that was not answered in time: the client gets an error and the
    /// child a cancellation; the session goes on. (Or its answer, held back, is due.)
    pub(super) fn gateway_timeout(&mut self, now: Instant, index: usize) {
        let c = &mut self.mcp.calls[index];
        let (session, request, target) = (c.session.clone(), c.request.clone(), c.target);
        if let CallKind::Upstream {
            held: Some(answer), ..
        } = &mut c.kind
        {
            // Not a timeout: the answer held back after its progress.
            let answer = std::mem::take(answer);
            if let Some(target) = target {
                self.mcp_deliver_text(&session, target, answer.into_string());
            }
            return self.mcp_finish_call(now, index);
        }
        let secs = self
            .config
            .mcp
            .stdio
            .as_ref()
            .map_or(0, |s| s.request_timeout_secs);
        log::warn!(
            "MCP server of session {}: no answer to request {request} within {secs} s",
            short(&session)
        );
        let message = format!("request timed out: the MCP server did not answer within {secs} s");
        if let Some(target) = target {
            let error = jsonrpc::error(Some(&request), REQUEST_TIMEOUT, &message);
            self.mcp_deliver(&session, target, &error);
        }
        let cancel = Message::Notification {
            method: "notifications/cancelled".into(),
            params: json!({"requestId": request, "reason": "timed out"}),
        };
        self.gateway_send(&session, &cancel, Urgency::Reply);
        self.mcp_finish_call(now, index);
    }

    /// One line of a child's stdout.
    fn gateway_line(&mut self, now: Instant, id: ChildId, line: Line<'_>) {
        let Some(index) = self.child_index(id) else {
            return;
        };
        let session = self.mcp.children[index].session.clone();
        let bytes = match line {
            Line::Oversized(n) => {
                return log::warn!(
                    "MCP server of session {}: skipped an output line of {n} bytes \
                     (more than limits.max_body_bytes)",
                    short(&session)
                );
            }
            Line::Complete(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => return,
            Line::Complete(bytes) => bytes,
        };
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(e) => {
                let preview = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
                return log::warn!(
                    "MCP server of session {}: skipped an output line that is not JSON ({e}): {preview}",
                    short(&session)
                );
            }
        };
        let message = match jsonrpc::parse(&value) {
            Ok(message) => message,
            Err(invalid) => {
                return log::warn!(
                    "MCP server of session {}: skipped an output line that is not JSON-RPC: {}",
                    short(&session),
                    invalid.message
                );
            }
        };
        // The child's own text goes on (it parsed as JSON, so it is UTF-8); a carriage return
        // between tokens would break SSE framing, so such a line is written anew.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\r') => text.to_string(),
            _ => value.to_string(),
        };
        self.gateway_route(now, &session, message, text);
    }

    /// Sends a message of the child where it belongs.
    fn gateway_route(&mut self, now: Instant, session: &str, message: Message, text: String) {
        match message {
            Message::Response { id, outcome } => {
                if let Err(error) = &outcome {
                    self.counters.errors.add(super::rpc_error_kind(error));
                }
                let Some(index) = self.gateway_call(session, |c| c.request == id) else {
                    return log::debug!(
                        "MCP server of session {}: an answer to {id}, which no one waits for",
                        short(session)
                    );
                };
                let c = &mut self.mcp.calls[index];
                let (target, initialize) = (c.target, c.kind.is_initialize());
                if let CallKind::Upstream {
                    progress_at: Some(at),
                    held,
                    ..
                } = &mut c.kind
                {
                    if *at == now && target.is_some() {
                        // Its last progress goes out in this turn's write; the answer a
                        // millisecond later, in a write of its own (PITFALLS: an SDK drops a
                        // progress notification it reads together with the answer).
                        *held = Some(text.into());
                        let call = super::CallId {
                            index: index as u32,
                            generation: c.generation,
                        };
                        let at = now.checked_add(std::time::Duration::from_millis(1));
                        return self.mcp.call_timers.set(&mut c.timer, call, at);
                    }
                }
                if initialize {
                    let version = outcome
                        .as_ref()
                        .ok()
                        .and_then(|r| r.get("protocolVersion"))
                        .and_then(Value::as_str);
                    if let (Some(version), Some(s)) = (version, self.mcp.sessions.get_mut(session))
                    {
                        s.version = version.into();
                    }
                }
                if let Some(target) = target {
                    self.mcp_deliver_text(session, target, text);
                }
                self.mcp_finish_call(now, index);
            }
            Message::Notification { method, params } if method == "notifications/progress" => {
                let Some(token) = params.get("progressToken") else {
                    return;
                };
                let Some(index) = self.gateway_call(session, |c| c.token.as_ref() == Some(token))
                else {
                    return;
                };
                let timeout = self.config.mcp.stdio.as_ref().map(|s| s.request_timeout());
                let mcp = &mut self.mcp;
                let c = &mut mcp.calls[index];
                let call = super::CallId {
                    index: index as u32,
                    generation: c.generation,
                };
                mcp.call_timers
                    .set(&mut c.timer, call, timeout.and_then(|t| now.checked_add(t)));
                if let CallKind::Upstream { progress_at, .. } = &mut c.kind {
                    *progress_at = Some(now);
                }
                if let Some(target) = c.target {
                    self.mcp_deliver_text(session, target, text);
                }
            }
            message => match self.gateway_default_target(session) {
                Some(target) => self.mcp_deliver_text(session, target, text),
                None => {
                    log::debug!(
                        "MCP server of session {}: a message with no stream to go on, dropped",
                        short(session)
                    );
                    // A request of the child would wait for ever: it gets an error instead.
                    if let Message::Request { id, .. } = message {
                        let error = Message::Response {
                            id,
                            outcome: Err(json!({
                                "code": jsonrpc::INTERNAL_ERROR,
                                "message": "no stream to the client is open to carry this request",
                            })),
                        };
                        self.gateway_send(session, &error, Urgency::Reply);
                    }
                }
            },
        }
    }

    /// The call of `session` to its child that `matches`.
    fn gateway_call(&self, session: &str, matches: impl Fn(&super::Call) -> bool) -> Option<usize> {
        self.mcp
            .calls
            .iter()
            .find(|(_, c)| *c.session == *session && c.kind.is_upstream() && matches(c))
            .map(|(index, _)| index)
    }

    /// Where a message of the child that answers no request goes: the session's
    /// server-to-client stream while a connection carries it, its WebSocket, a stream with a
    /// request open, or else the server-to-client stream kept for the client to resume.
    fn gateway_default_target(&self, session: &str) -> Option<Target> {
        let s = self.mcp.sessions.get(session)?;
        let listener = s.listener.filter(|n| s.logs.contains_key(n));
        let attached = |n: &u64| s.logs.get(n).is_some_and(|l| l.attached.is_some());
        if let Some(number) = listener.filter(attached) {
            return Some(Target::Stream(number));
        }
        if let Some(socket) = s.bound {
            return Some(Target::Socket(socket));
        }
        let open_request = self
            .mcp
            .calls
            .iter()
            .filter(|(_, c)| *c.session == *session)
            .filter_map(|(_, c)| c.target)
            .find(|target| match target {
                Target::Stream(n) => attached(n),
                Target::Socket(_) => true,
            });
        open_request.or(listener.map(Target::Stream))
    }

    fn child_index(&self, id: ChildId) -> Option<usize> {
        let index = id.index as usize;
        self.mcp
            .children
            .get(index)
            .filter(|c| c.generation == id.generation)
            .map(|_| index)
    }
}

/// The start of a session id, enough to tell sessions apart in logs without handing out the
/// id itself (which is the session's only credential).
fn short(session: &str) -> &str {
    session.get(..8).unwrap_or(session)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::config::{Config, StdioCommand};
    use crate::proto::engine::tests::{
        client_text, engine, open_session, post_mcp, Wire, INITIALIZE, MCP_UPGRADE,
    };
    use crate::proto::engine::{ChildAction, ChildId, Engine};

    fn gateway() -> Engine {
        let mut config = Config::default();
        config.mcp.stdio = Some(StdioCommand::shell("mcp-server"));
        engine(config)
    }

    /// Takes the child actions: the child asked for, and the lines written to its stdin.
    fn child_side(e: &mut Engine, child: &mut Option<ChildId>, ended: &mut bool) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some((id, action)) = e.poll_child_action() {
            match action {
                ChildAction::Spawn => *child = Some(id),
                ChildAction::Write => {
                    let input = e.child_input(id).to_vec();
                    e.consume_child_input(id, input.len());
                    let text = String::from_utf8(input).unwrap();
                    lines.extend(text.lines().map(str::to_string));
                }
                ChildAction::End => *ended = true,
            }
        }
        lines
    }

    /// A Streamable HTTP session of a gateway and the child it asked for.
    fn session_with_child(e: &mut Engine, now: Instant, wire: &mut Wire) -> (String, ChildId) {
        let session = open_session(e, now, wire, INITIALIZE);
        let mut child = None;
        child_side(e, &mut child, &mut false);
        (session, child.expect("a child is asked for"))
    }

    #[test]
    fn a_session_is_served_by_its_child_and_ends_with_it() {
        let mut e = gateway();
        let t0 = Instant::now();
        let mut wire = Wire::default();
        let (mut child, mut ended) = (None, false);
        let init = post_mcp(&mut e, t0, None, INITIALIZE);
        wire.run(&mut e);
        let forwarded = child_side(&mut e, &mut child, &mut ended);
        let child = child.expect("a child is asked for");
        assert_eq!(forwarded.len(), 1);
        assert!(forwarded[0].contains(r#""method":"initialize""#));
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","serverInfo":{"name":"kid"}}}"#;
        // The answer comes in two pieces, with a line that is not JSON first.
        e.handle_child_output(t0, child, b"starting up\n");
        e.handle_child_output(t0, child, &answer.as_bytes()[..20]);
        e.handle_child_output(t0, child, format!("{}\n", &answer[20..]).as_bytes());
        wire.run(&mut e);
        let text = wire.text(init);
        assert!(text.contains("Mcp-Session-Id: "), "{text}");
        assert!(text.contains(&format!("data: {answer}\n")), "{text}");
        assert!(!text.contains("starting up"));
        assert!(
            wire.shut.contains(&init),
            "the answer stream ends with its answer"
        );
        let session = text.split("Mcp-Session-Id: ").nth(1).unwrap()[..32].to_string();

        // A call with progress: progress, a log message and the answer go on its stream.
        let call = post_mcp(
            &mut e,
            t0,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"p"}}}"#,
        );
        wire.run(&mut e);
        let forwarded = child_side(&mut e, &mut None, &mut ended);
        assert!(
            forwarded[0].contains(r#""id":2"#) && forwarded[0].contains(r#""progressToken":"p""#)
        );
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}"#;
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}"#;
        let result = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;
        e.handle_child_output(
            t0,
            child,
            format!("{progress}\n[1,2]\n{log}\r\n{result}\n").as_bytes(),
        );
        wire.run(&mut e);
        assert!(
            !wire.text(call).contains(result),
            "the answer waits a moment after the progress of the same turn"
        );
        e.handle_timeout(t0 + Duration::from_millis(1));
        wire.run(&mut e);
        let text = wire.text(call);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} in {text}"))
        };
        assert!(at(progress) < at(log) && at(log) < at(result));
        assert!(!text.contains("[1,2]"));

        // A call the child never answers times out; the child is told it is cancelled.
        let slow = post_mcp(
            &mut e,
            t0,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x"}}"#,
        );
        wire.run(&mut e);
        child_side(&mut e, &mut None, &mut ended);
        e.handle_timeout(t0 + Duration::from_secs(121));
        wire.run(&mut e);
        assert!(
            wire.text(slow).contains(r#""id":3,"error":{"code":-32001"#),
            "{}",
            wire.text(slow)
        );
        let forwarded = child_side(&mut e, &mut None, &mut ended);
        assert!(forwarded[0].contains(r#""method":"notifications/cancelled""#));
        assert!(forwarded[0].contains(r#""requestId":3"#));

        // The child exits with a call in flight: the call gets an error, the session ends.
        let last = post_mcp(
            &mut e,
            t0,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x"}}"#,
        );
        wire.run(&mut e);
        child_side(&mut e, &mut None, &mut ended);
        e.handle_child_exit(t0, child, "exited with status 3");
        wire.run(&mut e);
        assert!(wire.text(last).contains(
            r#""id":4,"error":{"code":-32603,"message":"the MCP server exited with status 3"}"#
        ));
        child_side(&mut e, &mut None, &mut ended);
        assert!(ended, "the driver is told to end the child");
        assert_eq!(e.counters().mcp_children, 0);
        let after = post_mcp(
            &mut e,
            t0,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        );
        wire.run(&mut e);
        assert!(wire.text(after).starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn the_childs_own_requests_reach_the_get_stream_and_answers_go_back() {
        let mut e = gateway();
        let now = Instant::now();
        let mut wire = Wire::default();
        let mut ended = false;
        let (session, child) = session_with_child(&mut e, now, &mut wire);
        let get = crate::proto::engine::tests::subscriber(
            &mut e,
            now,
            &format!("GET /mcp HTTP/1.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n"),
        );
        let roots = r#"{"jsonrpc":"2.0","id":"s1","method":"roots/list"}"#;
        e.handle_child_output(now, child, format!("{roots}\n").as_bytes());
        wire.run(&mut e);
        assert!(wire.text(get).contains(roots));
        post_mcp(
            &mut e,
            now,
            Some(&session),
            r#"{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}"#,
        );
        wire.run(&mut e);
        let forwarded = child_side(&mut e, &mut None, &mut ended);
        assert_eq!(
            forwarded,
            [r#"{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}"#]
        );
        // DELETE ends the session, so the child.
        crate::proto::engine::tests::subscriber(
            &mut e,
            now,
            &format!("DELETE /mcp HTTP/1.1\r\nMcp-Session-Id: {session}\r\n\r\n"),
        );
        wire.run(&mut e);
        child_side(&mut e, &mut None, &mut ended);
        assert!(ended);
    }

    #[test]
    fn a_slow_reader_holds_no_more_than_its_bound_and_stray_messages_go_nowhere_harmful() {
        let mut e = gateway();
        let now = Instant::now();
        let mut wire = Wire::default();
        let mut ended = false;
        let (session, child) = session_with_child(&mut e, now, &mut wire);
        e.handle_child_output(
            now,
            child,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n",
        );
        // The child reads 1 KiB of every 2 KiB sent, for ever: what it has read is let go.
        let limit = e.config().backpressure.max_queue_bytes;
        let data = "x".repeat(2000);
        let mut refused = 0;
        for _ in 0..700 {
            let note = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/x","params":{{"d":"{data}"}}}}"#
            );
            let posted = post_mcp(&mut e, now, Some(&session), &note);
            wire.run(&mut e);
            if wire.text(posted).starts_with("HTTP/1.1 503 ") {
                refused += 1;
            }
            let pending = e.child_input(child).len();
            e.consume_child_input(child, pending.min(1024));
            let index = e.child_index(child).unwrap();
            let held = e.mcp.children[index].stdin.len();
            assert!(held <= 2 * (2 * limit + 4096), "{held} bytes held");
        }
        assert!(
            refused > 0,
            "a child that never catches up is refused at last"
        );
        // A progress notification with no token, and a request of the child's with no
        // stream to carry it: the first goes nowhere, the second is answered with an error.
        let pending = e.child_input(child).len();
        e.consume_child_input(child, pending);
        e.handle_child_output(
            now,
            child,
            b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\
              {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"roots/list\"}\n",
        );
        wire.run(&mut e);
        let forwarded = child_side(&mut e, &mut None, &mut ended);
        assert_eq!(forwarded.len(), 1, "{forwarded:?}");
        assert!(
            forwarded[0].contains(r#""id":9,"error":{"code":-32603"#),
            "{forwarded:?}"
        );
    }

    #[test]
    fn a_child_exit_that_cuts_off_a_slow_websocket_fails_its_calls_without_a_panic() {
        let mut config = Config::default();
        config.mcp.stdio = Some(StdioCommand::shell("mcp-server"));
        config.backpressure.max_queue_bytes = 4096;
        let mut e = engine(config);
        let now = Instant::now();
        let id = e.accept(now, "127.0.0.1:1".parse().unwrap()).unwrap();
        let mut input = MCP_UPGRADE.to_vec();
        input.extend(client_text(INITIALIZE));
        for n in [2, 3] {
            let call =
                format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{}}}}"#);
            input.extend(client_text(&call));
        }
        e.handle_input(now, id, &input);
        let (mut child, mut ended) = (None, false);
        child_side(&mut e, &mut child, &mut ended);
        let child = child.expect("a child");
        e.handle_child_output(
            now,
            child,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n",
        );
        Wire::default().run(&mut e);
        // A large notification the client does not read fills its queue...
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"data\":\"{}\"}}}}\n",
            "x".repeat(5000)
        );
        e.handle_child_output(now, child, big.as_bytes());
        // ...so the first call's error cuts the client off, and its session (with the other
        // call) goes while the calls are being failed.
        e.handle_child_exit(now, child, "exited with status 1");
        child_side(&mut e, &mut None, &mut ended);
        assert!(ended);
        assert_eq!(e.connection_count(), 0);
        assert_eq!(e.mcp_calls_in_progress(), 0);
    }

    #[test]
    fn sessions_beyond_max_sessions_get_503() {
        let mut config = Config::default();
        config.mcp.stdio = Some(StdioCommand::shell("mcp-server"));
        config.mcp.max_sessions = Some(1);
        let mut e = engine(config);
        let now = Instant::now();
        let mut wire = Wire::default();
        open_session(&mut e, now, &mut wire, INITIALIZE);
        let second = post_mcp(&mut e, now, None, INITIALIZE);
        wire.run(&mut e);
        assert!(wire.text(second).starts_with("HTTP/1.1 503 "));
        assert_eq!(e.max_children(), 1);
    }
}
