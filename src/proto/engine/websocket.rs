//! The WebSocket side of the engine: the upgrade, the JSON message protocol (welcome,
//! join/leave with replay, broadcast, publish, ping), keep-alive pings and closes.
//!
//! Rooms are hub topics, so an event published over HTTP reaches room members and SSE
//! subscribers alike. Replies to one client go through its tungstenite session; events and
//! broadcasts are shared frames queued by the engine's fan-out.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::{Conn, ConnId, Engine, Phase};
use crate::features::Feature;
use crate::proto::auth::Grant;
use crate::proto::http::{self, Request};
use crate::proto::hub::{self, HubError, Subscription};
use crate::proto::jsonrpc;
use crate::proto::metrics::ErrorKind;
use crate::proto::queue::{Encoding, Origin};
use crate::proto::rate::Bucket;
use crate::proto::ws::{self, Incoming, Session};

/// The most rooms one connection may be in.
const MAX_ROOMS_PER_CONNECTION: usize = 64;

/// Messages refused by the rate limit in a row before the connection is closed (1008).
const MAX_STRIKES: u32 = 10;

/// A WebSocket connection's state.
#[derive(Debug)]
pub(super) struct WsConn {
    session: Session,
    /// The rooms it is in, by name.
    pub(super) rooms: Vec<(Box<str>, Subscription)>,
    /// Its key in the engine's list of WebSocket connections that get broadcasts to all;
    /// `None` for an MCP connection.
    pub(super) everyone_key: Option<usize>,
    /// The MCP session it carries (WebSocket at the MCP endpoint, subprotocol `mcp`).
    pub(super) mcp_session: Option<Box<str>>,
    /// The topics its credential allows.
    grant: Arc<Grant>,
    /// Its publishes and broadcasts (`stream-rate-limiting`), from the first one.
    rate: Option<Bucket>,
    /// Messages refused by the rate in a row.
    strikes: u32,
    /// When it last sent anything.
    last_seen: Instant,
    /// When the ping it has not yet answered was sent.
    ping_sent: Option<Instant>,
}

impl Engine {
    /// `GET /stream/ws` (or `/` with `Upgrade: websocket`): upgrades `id`. With `mcp`, the
    /// upgrade is at the MCP endpoint: the connection carries one MCP session, one JSON-RPC
    /// message per text frame, and needs the `mcp` subprotocol.
    pub(super) fn open_websocket(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        mcp: bool,
        grant: Arc<Grant>,
    ) {
        let keep_alive = request.keep_alive();
        // An MCP upgrade has passed the MCP gate already.
        let refused = if mcp {
            None
        } else if !self.features.is_enabled(Feature::WebsocketStreaming) {
            Some((501, "WebSocket streaming not enabled"))
        } else if !self.origin_allowed(request) {
            Some((403, "origin not allowed"))
        } else {
            None
        };
        if let Some((status, reason)) = refused {
            let response = http::error_response(status, reason, "", keep_alive);
            return self.respond(now, id, response, keep_alive);
        }
        let head = match ws::accept(request, mcp.then_some("mcp")) {
            Ok(head) => head,
            Err(e) => {
                let extra = if e.reason.starts_with("unsupported Sec-WebSocket-Version") {
                    "Sec-WebSocket-Version: 13\r\n"
                } else {
                    ""
                };
                let response = http::error_response(e.status, e.reason, extra, keep_alive);
                return self.respond(now, id, response, keep_alive);
            }
        };
        let mcp_session = if mcp {
            match self.mcp_bound_session(now, id, grant.clone()) {
                Some(session) => Some(session),
                None => {
                    let response =
                        http::error_response(503, "too many MCP sessions", "", keep_alive);
                    return self.respond(now, id, response, keep_alive);
                }
            }
        } else {
            None
        };
        let everyone_key = (!mcp).then(|| self.websockets.insert(id));
        let session = Session::new(self.config.websocket.max_message_bytes);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.out.push_owned(head);
        let public_id = conn.public_id;
        conn.phase = Phase::Ws(Box::new(WsConn {
            session,
            rooms: Vec::new(),
            everyone_key,
            mcp_session: mcp_session.map(Into::into),
            grant,
            rate: None,
            strikes: 0,
            last_seen: now,
            ping_sent: None,
        }));
        self.counters.websockets += 1;
        if mcp {
            self.counters.mcp_websockets += 1;
        } else {
            let welcome = json!({
                "type": "welcome",
                "data": "Connected to MCP server",
                "id": public_id.to_string(),
            });
            self.ws_reply(id, &welcome);
        }
        self.want_write(id);
        let interval = self.config.websocket.ping_interval();
        self.set_deadline(id, now.checked_add(interval));
    }

    /// Bytes from a WebSocket client.
    pub(super) fn ws_input(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(socket) = self.ws_mut(id) else {
            return;
        };
        socket.last_seen = now;
        socket.ping_sent = None;
        let (incoming, failure) = socket.session.receive(data);
        self.ws_flush(id);
        for message in incoming {
            // A message before this one may have ended the session.
            if self.ws_mut(id).is_none() {
                return;
            }
            if matches!(message, Incoming::Text(_) | Incoming::Binary) {
                self.counters.messages_received += 1;
                self.counters.websocket_messages += 1;
            }
            match message {
                Incoming::Text(text) => match self.ws_mut(id).and_then(|s| s.mcp_session.clone()) {
                    Some(session) => self.mcp_ws_message(now, id, &session, &text),
                    None => self.ws_message(now, id, &text),
                },
                Incoming::Binary => {
                    if self.ws_mut(id).is_some_and(|s| s.mcp_session.is_some()) {
                        let error = jsonrpc::error(
                            None,
                            jsonrpc::INVALID_REQUEST,
                            "binary frames are not JSON-RPC messages: send text",
                        );
                        self.mcp_send(id, &error);
                    } else {
                        self.ws_error(id, "binary messages are not supported: send JSON text")
                    }
                }
                Incoming::Pong => {}
                Incoming::Closed => {
                    // tungstenite has answered the close frame: send it, then shut down.
                    self.start_closing(now, id);
                    return;
                }
            }
        }
        if let Some(failure) = failure {
            if self.ws_mut(id).is_some() {
                self.counters.errors.add(ErrorKind::WebSocket);
                self.ws_close(now, id, failure.code, failure.reason);
            }
        }
    }

    /// One text message of the protocol.
    fn ws_message(&mut self, now: Instant, id: ConnId, text: &str) {
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.ws_error(id, &format!("invalid JSON: {e}")),
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return self.ws_error(id, "missing \"type\"");
        };
        match kind {
            "ping" => self.ws_reply(id, &json!({"type": "pong"})),
            "join" => self.ws_join(now, id, &message),
            "leave" => self.ws_leave(id, &message),
            "broadcast" | "publish" if !self.ws_rate_allows(now, id) => {}
            "broadcast" => self.ws_broadcast(now, id, &message),
            "publish" => self.ws_publish(now, id, &message),
            other => {
                // Quote a bounded part of what the client sent: the reply must stay small.
                let shown: String = other.chars().take(64).collect();
                self.ws_error(id, &format!("unknown message type {shown:?}"));
            }
        }
    }

    /// Whether `id` may publish or broadcast now (`stream-rate-limiting`:
    /// `max_requests_per_minute` messages a minute per connection). A refused message gets an
    /// error; [`MAX_STRIKES`] refused in a row close the connection with 1008.
    fn ws_rate_allows(&mut self, now: Instant, id: ConnId) -> bool {
        if !self.features.is_enabled(Feature::StreamRateLimiting) {
            return true;
        }
        let per_minute = self.config.security.max_requests_per_minute;
        let Some(socket) = self.ws_mut(id) else {
            return false;
        };
        let bucket = socket
            .rate
            .get_or_insert_with(|| Bucket::full(per_minute, now));
        if bucket.take(per_minute, now).is_ok() {
            socket.strikes = 0;
            return true;
        }
        socket.strikes += 1;
        let strikes = socket.strikes;
        self.counters.rate_limited += 1;
        if strikes >= MAX_STRIKES {
            self.ws_close(now, id, 1008, "rate limited");
        } else {
            let reason = format!("rate limited: at most {per_minute} messages a minute");
            self.ws_error(id, &reason);
        }
        false
    }

    fn ws_join(&mut self, now: Instant, id: ConnId, message: &Value) {
        if !self.config.websocket.room_management {
            return self.ws_error(id, "rooms are disabled");
        }
        let Some(room) = room_of(message) else {
            return self.ws_error(id, HubError::InvalidTopic.reason());
        };
        if !self.ws_mut(id).is_some_and(|s| s.grant.may_subscribe(room)) {
            return self.ws_error(id, super::FORBIDDEN_TOPIC);
        }
        let since = match message.get("since") {
            None | Some(Value::Null) => None,
            Some(Value::String(since)) => Some(since.as_str()),
            Some(_) => return self.ws_error(id, "\"since\" must be an event id string"),
        };
        let Some(socket) = self.ws_mut(id) else {
            return;
        };
        let existing = socket
            .rooms
            .iter()
            .find(|(name, _)| **name == *room)
            .map(|(_, sub)| *sub);
        let sub = match existing {
            Some(sub) => sub,
            None if socket.rooms.len() >= MAX_ROOMS_PER_CONNECTION => {
                return self.ws_error(id, "too many rooms: at most 64 per connection")
            }
            None => match self.hub.subscribe(id, room) {
                Ok(sub) => {
                    if let Some(socket) = self.ws_mut(id) {
                        socket.rooms.push((room.into(), sub));
                    }
                    sub
                }
                Err(e) => return self.ws_error(id, e.reason()),
            },
        };
        self.ws_reply(id, &json!({"type": "joined", "room": room}));
        let Some(since) = since else {
            return;
        };
        let limit = self.config.backpressure.max_queue_bytes;
        let queued = self.conn(id).map_or(0, |c| c.out.len());
        let replay = super::fit_replay(
            self.hub.replay(&[sub], since),
            limit.saturating_sub(queued + 1024),
            Encoding::WebSocket,
        );
        let policy = super::policy(&self.config);
        let mut overflow = false;
        let mut dropped = 0;
        if let Some(conn) = self.conn_mut(id) {
            for event in replay.events {
                match conn.out.push_event(
                    event,
                    Encoding::WebSocket,
                    Origin::Replay,
                    limit,
                    policy,
                    ws::dropped,
                ) {
                    Ok(n) => dropped += n,
                    Err(_) => {
                        overflow = true;
                        break;
                    }
                }
            }
        }
        self.counters.events_dropped += dropped;
        if overflow {
            self.counters.slow_consumers_disconnected += 1;
            if let Some(conn) = self.conn_mut(id) {
                conn.out.truncate_to_started();
            }
            return self.ws_close(now, id, 1008, "slow consumer: queue full");
        }
        let recovery = json!({"type": "recovery", "room": room, "recovered": replay.complete});
        self.ws_reply(id, &recovery);
    }

    fn ws_leave(&mut self, id: ConnId, message: &Value) {
        let Some(room) = room_of(message) else {
            return self.ws_error(id, HubError::InvalidTopic.reason());
        };
        let Some(socket) = self.ws_mut(id) else {
            return;
        };
        if let Some(at) = socket.rooms.iter().position(|(name, _)| **name == *room) {
            let (_, sub) = socket.rooms.swap_remove(at);
            self.hub.unsubscribe(sub);
        }
        self.ws_reply(id, &json!({"type": "left", "room": room}));
    }

    fn ws_broadcast(&mut self, now: Instant, id: ConnId, message: &Value) {
        let data = message.get("data").unwrap_or(&Value::Null).to_string();
        let exclude = match message.get("exclude_self") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(id),
            Some(_) => return self.ws_error(id, "\"exclude_self\" must be a boolean"),
        };
        let Some(from) = self.conn(id).map(|c| c.public_id.to_string()) else {
            return;
        };
        let Some(grant) = self.ws_mut(id).map(|s| s.grant.clone()) else {
            return;
        };
        match message.get("room") {
            None | Some(Value::Null) if !grant.may_publish_everywhere() => {
                self.ws_error(id, super::FORBIDDEN_TOPIC)
            }
            None | Some(Value::Null) => match self.hub.broadcast_to_all(now, &data, &from) {
                Ok(event) => {
                    self.counters.events_published += 1;
                    self.fan_out(now, &event, None, exclude);
                }
                Err(e) => self.ws_error(id, e.reason()),
            },
            Some(_) => {
                let Some(room) = room_of(message) else {
                    return self.ws_error(id, HubError::InvalidTopic.reason());
                };
                if !grant.may_publish(room) {
                    return self.ws_error(id, super::FORBIDDEN_TOPIC);
                }
                match self.hub.publish(now, room, "broadcast", &data, Some(&from)) {
                    Ok((event, index)) => {
                        self.counters.events_published += 1;
                        self.fan_out(now, &event, Some(index), exclude);
                    }
                    Err(e) => self.ws_error(id, e.reason()),
                }
            }
        }
    }

    fn ws_publish(&mut self, now: Instant, id: ConnId, message: &Value) {
        let Some(topic) = message.get("topic").and_then(Value::as_str) else {
            return self.ws_error(id, "missing topic");
        };
        if !self.ws_mut(id).is_some_and(|s| s.grant.may_publish(topic)) {
            return self.ws_error(id, super::FORBIDDEN_TOPIC);
        }
        let event = match message.get("event") {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) if hub::valid_event_name(e) => Some(e.as_str()),
            Some(_) => return self.ws_error(id, HubError::InvalidEventName.reason()),
        };
        let data = message.get("data").unwrap_or(&Value::Null);
        match self.publish(now, topic, event, data) {
            Ok(event_id) => self.ws_reply(
                id,
                &json!({"type": "published", "topic": topic, "id": event_id.to_string()}),
            ),
            Err(e) => self.ws_error(id, e.reason()),
        }
    }

    /// The keep-alive deadline of `id` passed: ping it, or close it if the last ping went
    /// unanswered.
    pub(super) fn ws_keepalive(&mut self, now: Instant, id: ConnId) {
        let interval = self.config.websocket.ping_interval();
        let timeout = self.config.websocket.pong_timeout();
        let Some(socket) = self.ws_mut(id) else {
            return;
        };
        if let Some(sent) = socket.ping_sent {
            if now.saturating_duration_since(sent) >= timeout {
                self.counters.keepalive_timeouts += 1;
                log::debug!("connection {id}: no pong within {timeout:?}");
                return self.close(id);
            }
            return self.set_deadline(id, sent.checked_add(timeout));
        }
        let due = socket.last_seen.checked_add(interval);
        if due.is_some_and(|due| due > now) {
            return self.set_deadline(id, due);
        }
        socket.session.ping();
        socket.ping_sent = Some(now);
        self.ws_flush(id);
        self.set_deadline(id, now.checked_add(timeout));
    }

    /// Sends a close frame with `code` and `reason`, then ends the connection gracefully.
    pub(super) fn ws_close(&mut self, now: Instant, id: ConnId, code: u16, reason: &str) {
        if let Some(socket) = self.ws_mut(id) {
            socket.session.close(code, reason);
            self.ws_flush(id);
        }
        self.start_closing(now, id);
    }

    /// Sends `message` to `id` alone.
    pub(super) fn ws_reply(&mut self, id: ConnId, message: &Value) {
        self.ws_reply_text(id, message.to_string());
    }

    /// Sends one text frame.
    pub(super) fn ws_reply_text(&mut self, id: ConnId, text: String) {
        if let Some(socket) = self.ws_mut(id) {
            socket.session.send_text(text);
            self.counters.messages_sent += 1;
            self.ws_flush(id);
        }
    }

    /// Sends `{"type":"error","error":reason}`; the connection stays up.
    fn ws_error(&mut self, id: ConnId, reason: &str) {
        self.counters.errors.add(ErrorKind::WebSocket);
        self.ws_reply(id, &json!({"type": "error", "error": reason}));
    }

    /// Moves what the session wrote into the write queue. A client that keeps asking for
    /// replies without reading them is a slow consumer once the queue passes its bound (one
    /// message larger than the bound passes an empty queue).
    fn ws_flush(&mut self, id: ConnId) {
        let limit = self.config.backpressure.max_queue_bytes;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Phase::Ws(socket) = &mut conn.phase else {
            return;
        };
        let output = socket.session.take_output();
        if output.is_empty() {
            return;
        }
        let queued = conn.out.len();
        conn.out.push_owned(output);
        if queued > 0 && conn.out.len() > limit {
            self.counters.slow_consumers_disconnected += 1;
            return self.close(id);
        }
        self.want_write(id);
    }

    fn ws_mut(&mut self, id: ConnId) -> Option<&mut WsConn> {
        match self.conn_mut(id) {
            Some(Conn {
                phase: Phase::Ws(socket),
                ..
            }) => Some(socket),
            _ => None,
        }
    }
}

/// The `room` of a message, if it is a valid topic name.
fn room_of(message: &Value) -> Option<&str> {
    message
        .get("room")
        .and_then(Value::as_str)
        .filter(|r| hub::valid_topic(r))
}
