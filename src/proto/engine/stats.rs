//! The operational figures (CONTRACT "Operations"): `GET /metrics` in the Prometheus text
//! format, `GET /stats` with the same figures as JSON, `/health`, and the performance monitor
//! (`stream-monitoring`) that judges them every `streaming.monitoring.interval_secs`.
//!
//! Counters are kept as traffic flows (see [`super::Counters`]); what describes state (queued
//! bytes, history, sessions) is gathered when a figure is asked for, in time linear in
//! connections and topics.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::Engine;
use crate::features::Feature;
use crate::proto::metrics::{ErrorKind, Exposition, LatencyHistogram};

/// The figures that describe state, gathered at the time they are asked for.
struct Gauges {
    /// Connections by transport, in the order of [`TRANSPORTS`].
    connections: [usize; 4],
    queued_bytes: usize,
    largest_queue: usize,
    topics: usize,
    history_events: usize,
    mcp_sessions: usize,
    mcp_requests_in_flight: usize,
}

/// The transports connections are counted by: HTTP between requests or answering one, SSE
/// streams, WebSocket pub/sub, and MCP streams and WebSockets.
const TRANSPORTS: [&str; 4] = ["http", "sse", "websocket", "mcp"];

impl Engine {
    fn gauges(&self) -> Gauges {
        let c = &self.counters;
        let websocket = c.websockets.saturating_sub(c.mcp_websockets);
        let mcp = c.mcp_streams + c.mcp_websockets;
        let http = c
            .connections
            .saturating_sub(c.sse_streams + c.websockets + c.mcp_streams);
        let (mut queued_bytes, mut largest_queue) = (0, 0);
        for (_, conn) in &self.conns {
            queued_bytes += conn.out.len();
            largest_queue = largest_queue.max(conn.out.len());
        }
        Gauges {
            connections: [http, c.sse_streams, websocket, mcp],
            queued_bytes,
            largest_queue,
            topics: self.hub.topic_count(),
            history_events: self.hub.retained_events(),
            mcp_sessions: self.mcp_session_count(),
            mcp_requests_in_flight: self.mcp_calls_in_progress(),
        }
    }

    /// Why the server is degraded: the monitor's reasons while `stream-monitoring` is on.
    fn degraded_reasons(&self) -> &[String] {
        if self.features.is_enabled(Feature::StreamMonitoring) {
            self.monitor.reasons()
        } else {
            &[]
        }
    }

    /// The body of `/health`: `{"status":"ok"}`, or `{"status":"degraded","reasons":[...]}`.
    pub(super) fn health_json(&self) -> String {
        health(self.degraded_reasons()).to_string()
    }

    /// The body of `GET /metrics`: Prometheus text format 0.0.4.
    pub(super) fn metrics_text(&self) -> String {
        let c = &self.counters;
        let g = self.gauges();
        let mut e = Exposition::default();
        e.labelled(
            "mcp_stream_connections",
            "gauge",
            "Connections open now, by transport.",
            "transport",
            TRANSPORTS.into_iter().zip(g.connections),
        );
        e.single(
            "mcp_stream_connections_refused_total",
            "counter",
            "Connections refused with 503 or 429 at accept (max_connections, max_connections_per_ip).",
            c.connections_refused,
        );
        e.single(
            "mcp_stream_http_requests_total",
            "counter",
            "HTTP requests parsed.",
            c.requests,
        );
        e.single(
            "mcp_stream_messages_received_total",
            "counter",
            "Messages received: WebSocket messages, MCP JSON-RPC messages, published events in POST bodies.",
            c.messages_received,
        );
        e.single(
            "mcp_stream_messages_sent_total",
            "counter",
            "Messages sent: event copies once written, WebSocket replies and MCP messages once queued.",
            c.messages_sent,
        );
        e.single(
            "mcp_stream_events_published_total",
            "counter",
            "Events published on the hub.",
            c.events_published,
        );
        e.single(
            "mcp_stream_received_bytes_total",
            "counter",
            "Bytes read from clients (after TLS).",
            c.bytes_received,
        );
        e.single(
            "mcp_stream_sent_bytes_total",
            "counter",
            "Bytes written to clients (before TLS).",
            c.bytes_sent,
        );
        e.labelled(
            "mcp_stream_errors_total",
            "counter",
            "Errors, by kind: HTTP error answers by status, WebSocket and JSON-RPC errors, gateway children lost, socket errors.",
            "kind",
            ErrorKind::ALL.map(|k| (k.name(), c.errors.get(k))),
        );
        e.labelled(
            "mcp_stream_dropped_total",
            "counter",
            "Drops, by reason: slow consumers disconnected, events dropped from full queues (drop_oldest), requests and messages refused by rate limits.",
            "reason",
            dropped(c),
        );
        e.single(
            "mcp_stream_keepalive_timeouts_total",
            "counter",
            "WebSocket peers closed for not answering pings.",
            c.keepalive_timeouts,
        );
        e.single(
            "mcp_stream_queued_bytes",
            "gauge",
            "Bytes waiting in write queues, over every connection.",
            g.queued_bytes,
        );
        e.single(
            "mcp_stream_queued_bytes_max",
            "gauge",
            "Bytes waiting in the fullest write queue.",
            g.largest_queue,
        );
        e.single("mcp_stream_topics", "gauge", "Topics held.", g.topics);
        e.single(
            "mcp_stream_history_events",
            "gauge",
            "Events retained in topic histories.",
            g.history_events,
        );
        e.single(
            "mcp_stream_mcp_sessions",
            "gauge",
            "MCP sessions open.",
            g.mcp_sessions,
        );
        e.single(
            "mcp_stream_mcp_tool_calls_total",
            "counter",
            "tools/call requests from MCP clients.",
            c.mcp_tool_calls,
        );
        e.single(
            "mcp_stream_mcp_requests_in_flight",
            "gauge",
            "MCP requests answering later (streamed tool calls, requests to gateway children).",
            g.mcp_requests_in_flight,
        );
        e.single(
            "mcp_stream_mcp_children",
            "gauge",
            "Gateway child processes (mcp.stdio) running or ending.",
            c.mcp_children,
        );
        e.histogram(
            "mcp_stream_delivery_latency_seconds",
            "Time from an event's publish to the socket write of its last byte, per copy (replays excluded).",
            &self.delivery,
        );
        e.labelled(
            "mcp_stream_feature_enabled",
            "gauge",
            "Feature toggles: 1 on, 0 off.",
            "feature",
            self.features.iter().map(|(f, on)| (f.name(), u8::from(on))),
        );
        e.single(
            "mcp_stream_degraded",
            "gauge",
            "1 while the performance monitor finds the server degraded.",
            u8::from(!self.degraded_reasons().is_empty()),
        );
        e.finish()
    }

    /// The body of `GET /stats`: the figures of `/metrics` as JSON.
    pub(super) fn stats_json(&self) -> String {
        let c = &self.counters;
        let g = self.gauges();
        let mut connections = Map::new();
        connections.insert("total".into(), c.connections.into());
        for (name, n) in TRANSPORTS.into_iter().zip(g.connections) {
            connections.insert(name.into(), n.into());
        }
        let by_kind: Map<String, Value> = ErrorKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), c.errors.get(*k).into()))
            .collect();
        let dropped: Map<String, Value> = dropped(c)
            .into_iter()
            .map(|(reason, n)| (reason.to_string(), n.into()))
            .collect();
        let features: Map<String, Value> = self
            .features
            .iter()
            .map(|(f, on)| (f.name().to_string(), on.into()))
            .collect();
        json!({
            "connections": connections,
            "connections_refused": c.connections_refused,
            "requests_total": c.requests,
            "messages": {
                "received": c.messages_received,
                "sent": c.messages_sent,
                "published": c.events_published,
            },
            "bytes": {"received": c.bytes_received, "sent": c.bytes_sent},
            "errors": {"total": c.errors.total(), "by_kind": by_kind},
            "dropped": dropped,
            "keepalive_timeouts": c.keepalive_timeouts,
            "queues": {"bytes": g.queued_bytes, "largest_bytes": g.largest_queue},
            "history": {"topics": g.topics, "events": g.history_events},
            "mcp": {
                "sessions": g.mcp_sessions,
                "calls_total": c.mcp_tool_calls,
                "calls_in_flight": g.mcp_requests_in_flight,
                "children": c.mcp_children,
            },
            "delivery_latency": latency_json(&self.delivery),
            "features": features,
            "health": health(self.degraded_reasons()),
        })
        .to_string()
    }

    /// Starts the monitor's clock if it is on and not running.
    pub(super) fn arm_monitor(&mut self, now: Instant) {
        if self.monitor_due.is_none() && self.features.is_enabled(Feature::StreamMonitoring) {
            self.monitor_due = now.checked_add(self.config.monitoring.interval());
        }
    }

    /// `stream-monitoring` was turned on or off. Turned on, its first period starts now: what
    /// happened while it was off is not judged.
    pub(super) fn monitoring_switched(&mut self, now: Instant, on: bool) {
        if on {
            if self.monitor_due.is_none() {
                let (errors, operations) = self.monitored_totals();
                self.monitor.restart(&self.delivery, errors, operations);
            }
            self.arm_monitor(now);
        } else {
            self.monitor_due = None;
            self.monitor.reset();
        }
    }

    /// What the monitor's error rate is made of: errors that are the server's fault, and
    /// operations (requests, and WebSocket messages: a message in an HTTP body is part of its
    /// request).
    fn monitored_totals(&self) -> (u64, u64) {
        let c = &self.counters;
        (c.errors.server_side(), c.requests + c.websocket_messages)
    }

    /// The monitor's check, when it is due.
    pub(super) fn monitor_due_check(&mut self, now: Instant) {
        if self.monitor_due.is_none_or(|due| due > now) {
            return;
        }
        let (errors, operations) = self.monitored_totals();
        let thresholds = self.config.monitoring.thresholds();
        self.monitor
            .check(&self.delivery, errors, operations, thresholds);
        self.monitor_due = now.checked_add(self.config.monitoring.interval());
    }

    /// The monitor's next check.
    pub(super) fn monitor_next(&self) -> Option<Instant> {
        self.monitor_due
    }
}

/// The drop counts by reason.
fn dropped(c: &super::Counters) -> [(&'static str, u64); 3] {
    [
        ("slow_consumer", c.slow_consumers_disconnected),
        ("queue_overflow", c.events_dropped),
        ("rate_limit", c.rate_limited),
    ]
}

fn health(reasons: &[String]) -> Value {
    if reasons.is_empty() {
        json!({"status": "ok"})
    } else {
        json!({"status": "degraded", "reasons": reasons})
    }
}

fn latency_json(h: &LatencyHistogram) -> Value {
    // Microseconds are the histogram's unit: shown as milliseconds with three decimals.
    let ms = |d: std::time::Duration| d.as_micros() as f64 / 1000.0;
    let buckets: Vec<Value> = h
        .cumulative_buckets()
        .map(|(bound, count)| {
            // Seconds as a number; the last bound stays the string "+Inf".
            let le = match bound.parse::<f64>() {
                Ok(seconds) if seconds.is_finite() => json!(seconds),
                _ => json!(bound),
            };
            json!({"le": le, "count": count})
        })
        .collect();
    json!({
        "count": h.count(),
        "sum_seconds": h.sum().as_secs_f64(),
        "p50_ms": h.quantile(0.5).map(ms),
        "p90_ms": h.quantile(0.9).map(ms),
        "p99_ms": h.quantile(0.99).map(ms),
        "p999_ms": h.quantile(0.999).map(ms),
        "max_ms": (h.count() > 0).then(|| ms(h.max())),
        "buckets": buckets,
    })
}
