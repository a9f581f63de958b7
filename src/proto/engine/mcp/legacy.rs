//! The legacy HTTP+SSE transport (revision 2024-11-05): `GET /sse` opens a session living on
//! that stream, whose first event, `endpoint`, names `/messages?sessionId=…`; what is posted
//! there gets `202`, and its answers go out on the stream.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::StreamKind;
use crate::proto::auth::Grant;
use crate::proto::engine::{ConnId, Engine};
use crate::proto::http::{self, Request};
use crate::proto::jsonrpc;

impl Engine {
    /// `GET /sse` (legacy HTTP+SSE): a session living on this stream.
    pub(in crate::proto::engine) fn mcp_legacy_open(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        grant: Arc<Grant>,
    ) {
        let keep_alive = request.keep_alive();
        let refuse =
            |status: u16, reason: &str| http::error_response(status, reason, "", keep_alive);
        let response = if request.method != "GET" {
            http::error_response(405, "method not allowed", "Allow: GET\r\n", keep_alive)
        } else if self.mcp.sessions.len() >= self.mcp_session_limit() {
            http::error_response(503, "too many MCP sessions", "", keep_alive)
        } else {
            match self.mcp_new_session(now, grant) {
                Some(session) => {
                    let number = self.mcp_open_stream(now, id, &session, StreamKind::Legacy);
                    if let Some(s) = self.mcp.sessions.get_mut(session.as_str()) {
                        s.bound = Some(id);
                        s.listener = number;
                    }
                    let endpoint =
                        format!("event: endpoint\ndata: /messages?sessionId={session}\n\n");
                    if let Some(conn) = self.conn_mut(id) {
                        conn.out.push_owned(endpoint.into_bytes());
                    }
                    return;
                }
                None => refuse(503, "no random source for a session id"),
            }
        };
        self.respond(now, id, response, keep_alive);
    }

    /// `POST /messages?sessionId=…` (legacy HTTP+SSE): `202`, the answer goes on the stream.
    pub(in crate::proto::engine) fn mcp_legacy_post(
        &mut self,
        now: Instant,
        id: ConnId,
        request: &Request,
        body: &[u8],
    ) {
        let keep_alive = request.keep_alive();
        let refuse =
            |status: u16, reason: &str| http::error_response(status, reason, "", keep_alive);
        let session = http::query_pairs(&request.query)
            .find(|(k, _)| k == "sessionId")
            .map(|(_, v)| v);
        let response = if request.method != "POST" {
            http::error_response(405, "method not allowed", "Allow: POST\r\n", keep_alive)
        } else {
            match session {
                None => refuse(400, "missing sessionId"),
                Some(session) => {
                    let stream = self
                        .mcp
                        .sessions
                        .get(session.as_str())
                        .filter(|s| s.listener.is_some())
                        .and_then(|s| s.bound);
                    match stream {
                        None => refuse(404, "unknown session"),
                        Some(stream) => {
                            self.mcp_legacy_message(now, &session, stream, body, keep_alive)
                        }
                    }
                }
            }
        };
        self.respond(now, id, response, keep_alive);
    }

    fn mcp_legacy_message(
        &mut self,
        now: Instant,
        session: &str,
        stream: ConnId,
        body: &[u8],
        keep_alive: bool,
    ) -> Vec<u8> {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return http::error_response(400, &format!("invalid JSON: {e}"), "", keep_alive)
            }
        };
        self.counters.messages_received += 1;
        let message = match jsonrpc::parse(&value) {
            Ok(m) => m,
            Err(invalid) => return http::error_response(400, invalid.message, "", keep_alive),
        };
        self.mcp_touch(now, session);
        self.mcp_message(now, session, stream, message);
        http::response(
            202,
            "text/plain; charset=utf-8",
            b"Accepted",
            "",
            keep_alive,
        )
    }
}
