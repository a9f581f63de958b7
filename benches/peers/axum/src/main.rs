//! A tokio + axum broadcast server with mcp-stream's streaming interface, for side-by-side
//! latency runs with `mcp-stream bench`:
//!
//! - `GET /stream/sse?topic=T`: Server-Sent Events, one block per event
//!   (`id:`, `event:`, `data: <envelope>`).
//! - `GET /stream/ws`: WebSocket; `{"type":"join","room":T}` → `{"type":"joined","room":T}`, then
//!   every event of T as its envelope; `{"type":"publish","topic":T,"event":E,"data":X}` →
//!   `{"type":"published","topic":T,"id":ID}`; `{"type":"ping"}` → `{"type":"pong"}`.
//! - `POST /stream/publish` with one event or an array → `202 {"ids":[...]}`.
//!
//! The envelope is `{"type":"event","topic":T,"event":E,"id":ID,"data":X}`, serialized once per
//! publish. Each topic is a `tokio::sync::broadcast` channel of 1024 events; a subscriber that
//! lags further loses the oldest and is told (`event: dropped` / `{"type":"dropped"}`), like
//! mcp-stream's `drop_oldest`. Written the way the crates' docs show, with no tuning beyond that.
//!
//! `peer-axum [--listen ADDR]` (default 127.0.0.1:8080) prints `listening on http://ADDR`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt, StreamMap};

/// One published event, encoded once.
struct Event {
    id: String,
    name: String,
    envelope: Utf8Bytes,
}

struct Hub {
    epoch: String,
    seq: AtomicU64,
    topics: Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>,
}

impl Hub {
    fn channel(&self, topic: &str) -> broadcast::Sender<Arc<Event>> {
        let mut topics = self.topics.lock().unwrap();
        topics
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    fn publish(&self, topic: &str, name: &str, data: &Value) -> String {
        let id = format!(
            "{}-{}",
            self.epoch,
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        );
        let envelope =
            json!({"type": "event", "topic": topic, "event": name, "id": id, "data": data});
        let event = Arc::new(Event {
            id: id.clone(),
            name: name.to_string(),
            envelope: envelope.to_string().into(),
        });
        let _ = self.channel(topic).send(event); // no subscriber is fine
        id
    }
}

type Shared = Arc<Hub>;

fn valid_topic(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

async fn sse(State(hub): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(topic) = q.get("topic").filter(|t| valid_topic(t)) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "missing or invalid topic"})),
        )
            .into_response();
    };
    let rx = hub.channel(topic).subscribe();
    let opening = tokio_stream::once(Ok::<_, std::convert::Infallible>(
        SseEvent::default()
            .event("connected")
            .data(r#"{"status":"connected"}"#),
    ));
    let events = BroadcastStream::new(rx).map(|item| {
        Ok(match item {
            Ok(e) => SseEvent::default()
                .id(&e.id)
                .event(&e.name)
                .data(e.envelope.as_str()),
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("dropped")
                .data(format!(r#"{{"dropped":{n}}}"#)),
        })
    });
    Sse::new(opening.chain(events)).into_response()
}

async fn publish(State(hub): State<Shared>, Json(body): Json<Value>) -> Response {
    let items = match body {
        Value::Array(items) => items,
        one => vec![one],
    };
    for item in &items {
        let ok = item["topic"].as_str().is_some_and(valid_topic)
            && item
                .get("event")
                .is_none_or(|e| e.as_str().is_some_and(|e| !e.is_empty()));
        if !ok {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid event"})),
            )
                .into_response();
        }
    }
    let ids: Vec<String> = items
        .iter()
        .map(|item| {
            let topic = item["topic"].as_str().unwrap_or_default();
            let name = item["event"].as_str().unwrap_or("message");
            hub.publish(topic, name, item.get("data").unwrap_or(&Value::Null))
        })
        .collect();
    (StatusCode::ACCEPTED, Json(json!({"ids": ids}))).into_response()
}

async fn ws(State(hub): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| session(hub, socket))
}

type Room =
    std::pin::Pin<Box<dyn Stream<Item = Result<Arc<Event>, BroadcastStreamRecvError>> + Send>>;

async fn session(hub: Shared, mut socket: WebSocket) {
    let welcome = json!({"type": "welcome", "data": "Connected", "id": "0"}).to_string();
    if socket.send(Message::Text(welcome.into())).await.is_err() {
        return;
    }
    let mut rooms: StreamMap<String, Room> = StreamMap::new();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { return };
                let Message::Text(text) = msg else { continue };
                let reply = match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(m) => handle(&hub, &mut rooms, &m),
                    Err(_) => json!({"type": "error", "error": "not JSON"}),
                };
                if socket.send(Message::Text(reply.to_string().into())).await.is_err() {
                    return;
                }
            }
            Some((_, item)) = rooms.next(), if !rooms.is_empty() => {
                let text = match item {
                    Ok(e) => e.envelope.clone(),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        json!({"type": "dropped", "count": n}).to_string().into()
                    }
                };
                if socket.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn handle(hub: &Hub, rooms: &mut StreamMap<String, Room>, m: &Value) -> Value {
    match m["type"].as_str() {
        Some("join") => match m["room"].as_str().filter(|r| valid_topic(r)) {
            Some(room) => {
                let rx = hub.channel(room).subscribe();
                rooms.insert(room.to_string(), Box::pin(BroadcastStream::new(rx)));
                json!({"type": "joined", "room": room})
            }
            None => json!({"type": "error", "error": "invalid room"}),
        },
        Some("leave") => {
            let room = m["room"].as_str().unwrap_or_default();
            rooms.remove(room);
            json!({"type": "left", "room": room})
        }
        Some("publish") => match m["topic"].as_str().filter(|t| valid_topic(t)) {
            Some(topic) => {
                let name = m["event"].as_str().unwrap_or("message");
                let id = hub.publish(topic, name, m.get("data").unwrap_or(&Value::Null));
                json!({"type": "published", "topic": topic, "id": id})
            }
            None => json!({"type": "error", "error": "invalid topic"}),
        },
        Some("ping") => json!({"type": "pong"}),
        _ => json!({"type": "error", "error": "unknown type"}),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = match args.iter().position(|a| a == "--listen") {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => "127.0.0.1:8080".to_string(),
    };
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u32)
        .unwrap_or(0);
    let hub = Arc::new(Hub {
        epoch: format!("{epoch:08x}"),
        seq: AtomicU64::new(0),
        topics: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/stream/sse", get(sse))
        .route("/stream/ws", get(ws))
        .route("/stream/publish", post(publish))
        .with_state(hub);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("peer-axum: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("bound address");
    // As in axum's docs: small event writes must not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{addr}").and_then(|()| stdout.flush());
    axum::serve(listener, app).await.expect("serve");
}
