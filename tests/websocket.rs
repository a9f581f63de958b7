//! The WebSocket transport over loopback: the upgrade (and its refusals), the JSON message
//! protocol (welcome, rooms with replay, broadcast, publish, ping), errors and close codes,
//! keep-alive, slow consumers and shutdown.
//!
//! Two clients are used: tungstenite ([`Ws`]), a strict real client that answers pings by
//! itself, and a raw one ([`RawWs`]) that writes exactly the bytes a test wants and never
//! answers anything. Absence is shown with a barrier: a client's `{"type":"ping"}` is answered
//! after everything the server queued for it before; if the pong comes next, nothing else came.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::load::{
    backpressure_server, client_with_small_rcvbuf, events_to_overflow, PAYLOAD, SLOW_RCVBUF,
};
use common::ws::{
    self, RawWs, Ws, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use common::{parse_id, publish_on, seq_of, TestServer, WAIT};
use serde_json::{json, Value};
use tungstenite::Message;

/// Data that must survive every hop unchanged: quotes, backslashes, control characters,
/// non-ASCII (two, three and four byte UTF-8), a line break, nesting.
fn tricky_data() -> Value {
    json!({
        "text": "she said \"hi\" \\ back\\slash \u{1} tab\t nl\n",
        "unicode": "héllo — 日本語 🎉",
        "nested": [1, 2.5, null, true, {"k": "\"v\""}],
        "big": 12345678901234567i64,
    })
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// Asserts an error reply and returns its reason.
fn assert_error_reply(v: &Value) -> String {
    assert_eq!(keys(v), ["error", "type"], "{v}");
    assert_eq!(v["type"], "error", "{v}");
    let reason = v["error"].as_str().expect("string reason");
    assert!(!reason.is_empty(), "{v}");
    reason.to_string()
}

/// Asserts the event envelope of `id` on `topic`.
fn assert_envelope(v: &Value, topic: &str, event: &str, id: &str, data: &Value) {
    assert_eq!(keys(v), ["data", "event", "id", "topic", "type"], "{v}");
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["topic"], topic, "{v}");
    assert_eq!(v["event"], event, "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(&v["data"], data, "{v}");
}

/// Asserts a broadcast frame from `from` carrying `data`; returns its id.
fn assert_broadcast(v: &Value, from: &str, data: &Value) -> String {
    assert_eq!(keys(v), ["data", "from", "id", "type"], "{v}");
    assert_eq!(v["type"], "broadcast", "{v}");
    assert_eq!(v["from"], from, "{v}");
    assert_eq!(&v["data"], data, "{v}");
    let id = v["id"].as_str().expect("string id");
    parse_id(id);
    id.to_string()
}

// ---------------------------------------------------------------------------------------------
// The upgrade

#[test]
fn upgrade_at_stream_ws_switches_protocols_and_welcomes_with_the_connection_id() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&ws::upgrade_request("/stream/ws", &ws::upgrade_headers()));
    let head = client.read_head();
    ws::assert_switched(&head);
    assert_eq!(head.header("content-length"), None, "{head:?}");
    let mut raw = RawWs::upgraded(client);
    let welcome = raw.next_frame();
    assert_eq!(welcome.opcode, OP_TEXT);
    assert!(welcome.fin);
    assert_eq!(welcome.rsv, 0, "no extension was negotiated");
    let id = ws::assert_welcome(&welcome.json());
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "id {id:?}");

    // Every connection has its own id, and a broadcast names its sender by it.
    let mut other = Ws::connect(server.addr);
    assert_ne!(other.id, id);
    raw.send_json(&json!({"type": "broadcast", "data": 1}));
    assert_broadcast(&raw.next_json(), &id, &json!(1));
    assert_broadcast(&other.next_json(), &id, &json!(1));
}

#[test]
fn upgrade_at_root_with_an_upgrade_header_is_a_websocket_and_without_one_the_page() {
    let server = TestServer::start();
    let mut ws = Ws::connect_path(server.addr, "/");
    ws.barrier();

    let page = server.get("/");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
}

#[test]
fn a_browser_style_connection_header_with_several_tokens_is_accepted() {
    // Firefox sends `Connection: keep-alive, Upgrade`; header names and values in any case.
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&ws::upgrade_request(
        "/stream/ws",
        &[
            ("upgrade", "WebSocket"),
            ("CONNECTION", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("sec-websocket-key", ws::KEY),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    ));
    let head = client.read_head();
    ws::assert_switched(&head);
    // permessage-deflate is not supported: not negotiated, so frames are plain.
    assert_eq!(head.header("sec-websocket-extensions"), None, "{head:?}");
    let mut raw = RawWs::upgraded(client);
    ws::assert_welcome(&raw.next_json());
    raw.barrier();
}

#[test]
fn frames_sent_in_the_same_write_as_the_upgrade_request_are_processed_at_once() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut bytes = ws::upgrade_request("/stream/ws", &ws::upgrade_headers());
    bytes.extend(ws::text(r#"{"type":"ping"}"#));
    bytes.extend(ws::text(r#"{"type":"join","room":"early"}"#));
    bytes.extend(ws::frame(true, OP_PING, b"p1", true));
    // One write: if the server waited for more bytes before looking at these frames, nothing
    // below would arrive (the client sends nothing else).
    client.send(&bytes);
    ws::assert_switched(&client.read_head());
    let mut raw = RawWs::upgraded(client);
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(raw.next_frame());
    }
    ws::assert_welcome(&got[0].json());
    // The control pong may come before or after the replies; the replies keep their order.
    let data: Vec<Value> = got
        .iter()
        .filter(|f| f.opcode == OP_TEXT)
        .skip(1)
        .map(ws::Frame::json)
        .collect();
    assert_eq!(
        data,
        vec![
            json!({"type": "pong"}),
            json!({"type": "joined", "room": "early"})
        ]
    );
    let pong = got.iter().find(|f| f.opcode == OP_PONG).expect("a pong");
    assert_eq!(pong.payload, b"p1");
    let ids = server.publish(&json!({"topic": "early", "data": "x"}));
    assert_envelope(&raw.next_json(), "early", "message", &ids[0], &json!("x"));
}

#[test]
fn an_upgrade_pipelined_after_a_plain_request_is_served_in_order() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut bytes = common::request_bytes("GET", "/health", &[], b"");
    bytes.extend(ws::upgrade_request("/stream/ws", &ws::upgrade_headers()));
    bytes.extend(ws::text(r#"{"type":"ping"}"#));
    client.send(&bytes);
    let health = client.read_response();
    assert_eq!(health.status, 200, "{health:?}");
    ws::assert_switched(&client.read_head());
    let mut raw = RawWs::upgraded(client);
    ws::assert_welcome(&raw.next_json());
    assert_eq!(raw.next_json(), json!({"type": "pong"}));
}

#[test]
fn a_message_written_one_byte_at_a_time_is_understood() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    let mut stream = raw.client.stream.try_clone().unwrap();
    let mut bytes = ws::text(r#"{"type":"join","room":"slowly"}"#);
    // A frame of more than 125 bytes, with the 16-bit length.
    let pad = "p".repeat(300);
    bytes.extend(ws::text(&format!(r#"{{"type":"ping","pad":"{pad}"}}"#)));
    ws::write_bytewise(&mut stream, &bytes);
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": "slowly"}));
    assert_eq!(raw.next_json(), json!({"type": "pong"}));
}

/// An upgrade request with `drop` left out of the valid headers and `extra` added.
fn upgrade_with(drop: &str, extra: &[(&'static str, &'static str)]) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = ws::upgrade_headers()
        .into_iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(drop))
        .collect();
    headers.extend_from_slice(extra);
    ws::upgrade_request("/stream/ws", &headers)
}

#[test]
fn bad_upgrades_get_400_with_a_json_reason() {
    let server = TestServer::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no Upgrade", upgrade_with("Upgrade", &[])),
        (
            "Upgrade: h2c",
            upgrade_with("Upgrade", &[("Upgrade", "h2c")]),
        ),
        ("no Connection", upgrade_with("Connection", &[])),
        (
            "Connection: keep-alive",
            upgrade_with("Connection", &[("Connection", "keep-alive")]),
        ),
        ("no key", upgrade_with("Sec-WebSocket-Key", &[])),
        (
            "short key",
            upgrade_with("Sec-WebSocket-Key", &[("Sec-WebSocket-Key", "c2hvcnQ=")]),
        ),
        (
            "key of 17 bytes",
            upgrade_with(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA=")],
            ),
        ),
        (
            "key not base64",
            upgrade_with(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!==")],
            ),
        ),
        (
            "HTTP/1.0",
            String::from_utf8(ws::upgrade_request("/stream/ws", &ws::upgrade_headers()))
                .unwrap()
                .replacen("HTTP/1.1", "HTTP/1.0", 1)
                .into_bytes(),
        ),
    ];
    for (what, request) in cases {
        let mut client = server.client();
        client.send(&request);
        let r = client.read_response();
        let reason = r.assert_error(400);
        assert!(!reason.is_empty(), "{what}: {r:?}");
        assert_eq!(r.header("sec-websocket-accept"), None, "{what}: {r:?}");
    }
}

#[test]
fn a_version_other_than_13_gets_400_naming_version_13() {
    let server = TestServer::start();
    for version in [Some("8"), Some("14"), Some("13, 8"), None] {
        let extra: Vec<(&str, &str)> = version
            .map(|v| ("Sec-WebSocket-Version", v))
            .into_iter()
            .collect();
        let mut client = server.client();
        client.send(&upgrade_with("Sec-WebSocket-Version", &extra));
        let r = client.read_response();
        r.assert_error(400);
        assert_eq!(
            r.header("sec-websocket-version"),
            Some("13"),
            "version {version:?}: {r:?}"
        );
    }
}

#[test]
fn a_refused_upgrade_leaves_the_connection_usable_for_a_good_one() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&upgrade_with("Sec-WebSocket-Key", &[]));
    client.read_response().assert_error(400);
    client.send(&ws::upgrade_request("/stream/ws", &ws::upgrade_headers()));
    ws::assert_switched(&client.read_head());
    let mut raw = RawWs::upgraded(client);
    ws::assert_welcome(&raw.next_json());
    raw.barrier();
}

#[test]
fn a_wrong_method_on_the_websocket_path_is_a_405_allowing_get() {
    let server = TestServer::start();
    let mut client = server.client();
    let r = client.request("POST", "/stream/ws", &ws::upgrade_headers(), b"{}");
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("GET"), "{r:?}");
}

#[test]
fn websocket_disabled_by_the_environment_is_a_501() {
    let server = TestServer::start_with(None, &[("WEBSOCKET_ENABLED", "false")]);
    for path in ["/stream/ws", "/"] {
        let mut client = server.client();
        client.send(&ws::upgrade_request(path, &ws::upgrade_headers()));
        let r = client.read_response();
        assert_eq!(
            r.assert_error(501),
            "WebSocket streaming not enabled",
            "{path}"
        );
    }
    // SSE is not affected.
    let mut sse = server.sse("topic=t");
    sse.read_opening();
}

#[test]
fn websocket_disabled_by_the_config_file_is_a_501() {
    let server = TestServer::with_config(json!({"streaming": {"websocket": {"enabled": false}}}));
    let mut client = server.client();
    client.send(&ws::upgrade_request("/stream/ws", &ws::upgrade_headers()));
    let r = client.read_response();
    assert_eq!(r.assert_error(501), "WebSocket streaming not enabled");
}

#[test]
fn an_upgrade_from_a_foreign_origin_is_refused_with_403() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut headers = ws::upgrade_headers();
    headers.push(("Origin", "https://evil.example"));
    client.send(&ws::upgrade_request("/stream/ws", &headers));
    client.read_response().assert_error(403);
    // A loopback origin is fine.
    let mut client = server.client();
    let mut headers = ws::upgrade_headers();
    headers.push(("Origin", "http://127.0.0.1:3000"));
    client.send(&ws::upgrade_request("/stream/ws", &headers));
    ws::assert_switched(&client.read_head());
}

// ---------------------------------------------------------------------------------------------
// Rooms

#[test]
fn join_and_leave_are_acknowledged_and_membership_decides_what_arrives() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    a.join("news");
    let data = tricky_data();
    let ids = server.publish(&json!({"topic": "news", "event": "update", "data": data}));
    assert_envelope(&a.next_json(), "news", "update", &ids[0], &data);
    // Without an event name it is "message"; without data, null.
    let ids = server.publish(&json!({"topic": "news"}));
    assert_envelope(&a.next_json(), "news", "message", &ids[0], &Value::Null);
    // Another topic does not arrive.
    server.publish(&json!({"topic": "sport", "data": 1}));
    a.barrier();

    // Joining twice is harmless: still one copy of each event.
    a.join("news");
    let ids = server.publish(&json!({"topic": "news", "data": 2}));
    assert_envelope(&a.next_json(), "news", "message", &ids[0], &json!(2));
    a.barrier();

    a.send_json(&json!({"type": "leave", "room": "news"}));
    assert_eq!(a.next_json(), json!({"type": "left", "room": "news"}));
    server.publish(&json!({"topic": "news", "data": 3}));
    a.barrier();
    // Leaving a room one is not in is acknowledged too.
    a.send_json(&json!({"type": "leave", "room": "never"}));
    assert_eq!(a.next_json(), json!({"type": "left", "room": "never"}));
}

#[test]
fn http_publish_of_a_batch_reaches_room_members_in_order_with_increasing_ids() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    a.join("t1");
    a.join("t2");
    b.join("t2");
    let ids = server.publish(&json!([
        {"topic": "t1", "data": 0},
        {"topic": "t2", "event": "e", "data": 1},
        {"topic": "t1", "data": 2},
    ]));
    assert_eq!(ids.len(), 3);
    assert_eq!(seq_of(&ids[1]), seq_of(&ids[0]) + 1);
    assert_eq!(seq_of(&ids[2]), seq_of(&ids[1]) + 1);
    assert_envelope(&a.next_json(), "t1", "message", &ids[0], &json!(0));
    assert_envelope(&a.next_json(), "t2", "e", &ids[1], &json!(1));
    assert_envelope(&a.next_json(), "t1", "message", &ids[2], &json!(2));
    assert_envelope(&b.next_json(), "t2", "e", &ids[1], &json!(1));
    b.barrier();
}

/// Publishes `n` events on `topic` over HTTP; returns their ids.
fn publish_n(server: &TestServer, topic: &str, n: usize) -> Vec<String> {
    let items: Vec<Value> = (0..n).map(|i| json!({"topic": topic, "data": i})).collect();
    server.publish(&Value::Array(items))
}

/// Joins `room` since `since`: asserts `joined`, then returns the replayed event ids and the
/// `recovered` flag.
fn join_since(ws: &mut Ws, room: &str, since: &str) -> (Vec<String>, bool) {
    ws.send_json(&json!({"type": "join", "room": room, "since": since}));
    assert_eq!(ws.next_json(), json!({"type": "joined", "room": room}));
    let mut replayed = Vec::new();
    loop {
        let v = ws.next_json();
        if v["type"] == "recovery" {
            assert_eq!(keys(&v), ["recovered", "room", "type"], "{v}");
            assert_eq!(v["room"], room, "{v}");
            let recovered = v["recovered"].as_bool().expect("boolean recovered");
            return (replayed, recovered);
        }
        assert_eq!(v["type"], "event", "{v}");
        assert_eq!(v["topic"], room, "{v}");
        replayed.push(v["id"].as_str().expect("id").to_string());
    }
}

#[test]
fn join_since_replays_the_retained_events_after_the_id_then_recovery_true() {
    let server = TestServer::start();
    let ids = publish_n(&server, "r", 4);
    server.publish(&json!({"topic": "other", "data": "not in r"}));
    let mut a = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut a, "r", &ids[1]);
    assert_eq!(replayed, ids[2..]);
    assert!(recovered);
    // Then live events, none repeated.
    let live = server.publish(&json!({"topic": "r", "data": "live"}));
    assert_envelope(&a.next_json(), "r", "message", &live[0], &json!("live"));
    a.barrier();

    // From the newest id: nothing to replay, and nothing is missing.
    let mut b = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut b, "r", &live[0]);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert!(recovered);
}

#[test]
fn join_since_replays_room_broadcasts_as_broadcasts() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    a.join("hall");
    let before = publish_n(&server, "hall", 1);
    a.next_json();
    let data = tricky_data();
    a.send_json(&json!({"type": "broadcast", "room": "hall", "data": data}));
    let id = assert_broadcast(&a.next_json(), &a.id, &data);

    let mut b = Ws::connect(server.addr);
    b.send_json(&json!({"type": "join", "room": "hall", "since": before[0]}));
    assert_eq!(b.next_json(), json!({"type": "joined", "room": "hall"}));
    assert_eq!(assert_broadcast(&b.next_json(), &a.id, &data), id);
    assert_eq!(
        b.next_json(),
        json!({"type": "recovery", "room": "hall", "recovered": true})
    );
}

#[test]
fn join_since_an_evicted_id_recovers_false_and_replays_nothing() {
    let server =
        TestServer::with_config(json!({"streaming": {"websocket": {"message_history": 3}}}));
    let ids = publish_n(&server, "r", 5);
    // ids[0] and ids[1] are gone: after ids[0], ids[1] is missing.
    let mut a = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut a, "r", &ids[0]);
    assert!(
        replayed.is_empty(),
        "a partial replay was sent: {replayed:?}"
    );
    assert!(!recovered);
    // The client is a member all the same.
    let live = server.publish(&json!({"topic": "r", "data": "live"}));
    assert_envelope(&a.next_json(), "r", "message", &live[0], &json!("live"));

    // After ids[1] every event is still held (ids[2..]): the boundary case.
    let mut b = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut b, "r", &ids[2]);
    assert_eq!(replayed, [ids[3].clone(), ids[4].clone(), live[0].clone()]);
    assert!(recovered);
    let mut c = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut c, "r", &ids[1]);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert!(!recovered, "ids[2] was evicted by the live event");
}

#[test]
fn join_since_an_id_of_another_epoch_or_garbage_recovers_false() {
    let server = TestServer::start();
    let ids = publish_n(&server, "r", 2);
    let (epoch, _) = parse_id(&ids[0]);
    let foreign = format!("{:08x}-1", epoch ^ 0x8000_0001);
    let mut a = Ws::connect(server.addr);
    for since in [foreign.as_str(), "garbage", "", "-", "0-", "zz-1"] {
        let (replayed, recovered) = join_since(&mut a, "r", since);
        assert!(replayed.is_empty(), "since {since:?}: {replayed:?}");
        assert!(!recovered, "since {since:?}");
    }
    // A cursor ahead of anything published is not something the hub gave: not recovered.
    let ahead = format!("{:08x}-{}", epoch, seq_of(&ids[1]) + 1000);
    let (replayed, recovered) = join_since(&mut a, "r", &ahead);
    assert!(replayed.is_empty());
    assert!(!recovered);
}

#[test]
fn room_management_off_refuses_join_with_an_error() {
    let server =
        TestServer::with_config(json!({"streaming": {"websocket": {"room_management": false}}}));
    let mut a = Ws::connect(server.addr);
    a.send_json(&json!({"type": "join", "room": "r"}));
    assert_error_reply(&a.next_json());
    server.publish(&json!({"topic": "r"}));
    a.barrier();
    // Broadcasts to everyone still work.
    a.send_json(&json!({"type": "broadcast", "data": "x"}));
    assert_broadcast(&a.next_json(), &a.id, &json!("x"));
}

#[test]
fn a_connection_may_be_in_64_rooms_and_no_more() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    for i in 0..64 {
        a.join(&format!("room-{i}"));
    }
    a.send_json(&json!({"type": "join", "room": "room-64"}));
    assert_error_reply(&a.next_json());
    // Leaving one makes room for another.
    a.send_json(&json!({"type": "leave", "room": "room-0"}));
    assert_eq!(a.next_json(), json!({"type": "left", "room": "room-0"}));
    a.join("room-64");
    let ids = server.publish(&json!([{"topic": "room-63"}, {"topic": "room-64"}]));
    assert_eq!(a.next_json()["id"], ids[0]);
    assert_eq!(a.next_json()["id"], ids[1]);
}

#[test]
fn a_closed_member_leaves_its_rooms_and_the_others_carry_on() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    a.join("r");
    b.join("r");
    drop(a); // no close frame: the TCP connection just ends
    for i in 0..3 {
        let ids = server.publish(&json!({"topic": "r", "data": i}));
        assert_envelope(&b.next_json(), "r", "message", &ids[0], &json!(i));
    }
    b.send_json(&json!({"type": "broadcast", "data": "still here"}));
    assert_broadcast(&b.next_json(), &b.id, &json!("still here"));
}

// ---------------------------------------------------------------------------------------------
// Broadcast and publish

#[test]
fn a_broadcast_reaches_every_client_sender_included_with_its_data_intact() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    let mut c = RawWs::connect(server.addr);
    // An SSE stream is not a WebSocket client: a broadcast to all does not reach it.
    let mut sse = server.sse("topic=r");
    sse.read_opening();
    b.join("r"); // room membership does not matter to a broadcast to all
    let data = tricky_data();
    a.send_json(&json!({"type": "broadcast", "data": data}));
    let id = assert_broadcast(&a.next_json(), &a.id, &data);
    assert_eq!(assert_broadcast(&b.next_json(), &a.id, &data), id);
    assert_eq!(assert_broadcast(&c.next_json(), &a.id, &data), id);

    // Ids come from the same counter as published events.
    let published = server.publish(&json!({"topic": "r"}));
    assert_eq!(seq_of(&published[0]), seq_of(&id) + 1);
    assert_eq!(sse.next_event().id.as_deref(), Some(published[0].as_str()));

    // A broadcast with no data carries null; any JSON value goes through.
    c.send_json(&json!({"type": "broadcast"}));
    assert_broadcast(&c.next_json(), &c.id, &Value::Null);
    c.send_json(&json!({"type": "broadcast", "data": "plain \"string\""}));
    assert_broadcast(&c.next_json(), &c.id, &json!("plain \"string\""));
    assert_broadcast(&a.next_json(), &c.id, &Value::Null);
    assert_broadcast(&a.next_json(), &c.id, &json!("plain \"string\""));
}

#[test]
fn exclude_self_skips_only_the_sender() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    a.send_json(&json!({"type": "broadcast", "data": "to others", "exclude_self": true}));
    assert_broadcast(&b.next_json(), &a.id, &json!("to others"));
    a.barrier();
    // false is the default.
    a.send_json(&json!({"type": "broadcast", "data": 2, "exclude_self": false}));
    assert_broadcast(&a.next_json(), &a.id, &json!(2));
    assert_broadcast(&b.next_json(), &a.id, &json!(2));
    // Within a room too.
    a.join("r");
    b.join("r");
    a.send_json(&json!({"type": "broadcast", "room": "r", "data": 3, "exclude_self": true}));
    assert_broadcast(&b.next_json(), &a.id, &json!(3));
    a.barrier();
    // Not a boolean: an error, and nothing is sent.
    a.send_json(&json!({"type": "broadcast", "data": 4, "exclude_self": "yes"}));
    assert_error_reply(&a.next_json());
    b.barrier();
}

#[test]
fn a_room_broadcast_reaches_its_members_and_its_sse_subscribers_only() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    let mut outsider = Ws::connect(server.addr);
    let mut sender = Ws::connect(server.addr); // not a member itself
    a.join("room");
    b.join("room");
    outsider.join("elsewhere");
    let mut sse = server.sse("topic=room");
    sse.read_opening();
    let mut sse_other = server.sse("topic=elsewhere");
    sse_other.read_opening();

    let data = tricky_data();
    sender.send_json(&json!({"type": "broadcast", "room": "room", "data": data}));
    let id = assert_broadcast(&a.next_json(), &sender.id, &data);
    assert_eq!(assert_broadcast(&b.next_json(), &sender.id, &data), id);
    let block = sse.next_event();
    assert_eq!(block.id.as_deref(), Some(id.as_str()));
    assert_eq!(block.event.as_deref(), Some("broadcast"));
    assert_envelope(&block.json(), "room", "broadcast", &id, &data);
    sender.barrier();
    outsider.barrier();
    // The SSE stream of another topic got nothing: the next thing it gets is this event.
    let later = server.publish(&json!({"topic": "elsewhere"}));
    assert_eq!(
        sse_other.next_event().id.as_deref(),
        Some(later[0].as_str())
    );
    assert_eq!(outsider.next_json()["id"], later[0]);

    // An invalid room name is an error, not a broadcast to all.
    sender.send_json(&json!({"type": "broadcast", "room": "bad room!", "data": 1}));
    assert_error_reply(&sender.next_json());
    sender.send_json(&json!({"type": "broadcast", "room": 7, "data": 1}));
    assert_error_reply(&sender.next_json());
    a.barrier();
}

#[test]
fn publish_from_a_websocket_is_acknowledged_and_reaches_members_and_sse() {
    let server = TestServer::start();
    let mut publisher = Ws::connect(server.addr);
    let mut member = Ws::connect(server.addr);
    member.join("news");
    let mut sse = server.sse("topic=news");
    sse.read_opening();
    let data = tricky_data();
    publisher
        .send_json(&json!({"type": "publish", "topic": "news", "event": "update", "data": data}));
    let ack = publisher.next_json();
    assert_eq!(keys(&ack), ["id", "topic", "type"], "{ack}");
    assert_eq!(ack["type"], "published");
    assert_eq!(ack["topic"], "news");
    let id = ack["id"].as_str().unwrap().to_string();
    parse_id(&id);
    assert_envelope(&member.next_json(), "news", "update", &id, &data);
    let block = sse.next_event();
    assert_eq!(block.id.as_deref(), Some(id.as_str()));
    assert_eq!(block.event.as_deref(), Some("update"));
    assert_envelope(&block.json(), "news", "update", &id, &data);
    // The publisher is not a member: it gets the ack alone.
    publisher.barrier();

    // No event name: "message"; no data: null. A member that publishes gets its own event and
    // the ack, in either order.
    member.send_json(&json!({"type": "publish", "topic": "news"}));
    let mut got = [member.next_json(), member.next_json()];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[1]["type"], "published", "{got:?}");
    let id2 = got[1]["id"].as_str().unwrap();
    assert_envelope(&got[0], "news", "message", id2, &Value::Null);
    assert_eq!(seq_of(id2), seq_of(&id) + 1);
    let block = sse.next_event();
    assert_eq!(block.id.as_deref(), Some(id2));
    assert_eq!(block.event, None);
}

#[test]
fn bad_publish_messages_get_errors_and_publish_nothing() {
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let mut member = Ws::connect(server.addr);
    member.join("t");
    for bad in [
        json!({"type": "publish", "data": 1}),
        json!({"type": "publish", "topic": "", "data": 1}),
        json!({"type": "publish", "topic": "has space", "data": 1}),
        json!({"type": "publish", "topic": "x".repeat(129), "data": 1}),
        json!({"type": "publish", "topic": 5, "data": 1}),
        json!({"type": "publish", "topic": "t", "event": "", "data": 1}),
        json!({"type": "publish", "topic": "t", "event": "a\nb", "data": 1}),
        json!({"type": "publish", "topic": "t", "event": 3, "data": 1}),
    ] {
        a.send_json(&bad);
        assert_error_reply(&a.next_json());
    }
    member.barrier();
    // A topic of exactly 128 bytes of every allowed character class is fine.
    let topic = format!("{}{}", "Az09_.:/-", "x".repeat(128 - 9));
    a.send_json(&json!({"type": "publish", "topic": topic, "data": 1}));
    assert_eq!(a.next_json()["type"], "published");
}

// ---------------------------------------------------------------------------------------------
// Errors and close codes

#[test]
fn bad_messages_get_an_error_reply_and_the_connection_stays_usable() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    let bad_texts = [
        "not json",
        "{\"type\":\"ping\"",
        "",
        "[1,2]",
        "\"ping\"",
        "{}",
        "{\"type\":null}",
        "{\"type\":7}",
        "{\"type\":\"nope\"}",
        "{\"type\":\"PING\"}",
        "{\"type\":\"join\"}",
        "{\"type\":\"join\",\"room\":\"bad room\"}",
        "{\"type\":\"join\",\"room\":\"\"}",
        "{\"type\":\"leave\",\"room\":3}",
    ];
    for text in bad_texts {
        raw.send_raw(&ws::text(text));
        let v = raw.next_json();
        let reason = assert_error_reply(&v);
        eprintln!("{text:?} -> {reason:?}");
    }
    // A binary message is not part of the protocol.
    raw.send_raw(&ws::frame(true, OP_BINARY, b"{\"type\":\"ping\"}", true));
    assert_error_reply(&raw.next_json());
    // Still fully usable.
    raw.barrier();
    raw.send_json(&json!({"type": "join", "room": "ok"}));
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": "ok"}));
}

#[test]
fn an_unknown_type_with_a_long_escaped_name_still_gets_an_error_reply() {
    // The error reply quotes the type: with quotes and backslashes it is about twice the size
    // of the message, and may not be lost for that.
    let server = TestServer::start();
    let mut a = Ws::connect(server.addr);
    let kind = "\"\\".repeat(15_000); // 30 kB of characters, 60 kB as JSON
    let message = json!({"type": kind}).to_string();
    assert!(message.len() < 65_536);
    a.socket.send(Message::text(message)).unwrap();
    // A ping right after it: its pong must not be the first reply.
    a.send_json(&json!({"type": "ping"}));
    let v = a.next_json();
    assert_error_reply(&v);
    assert_eq!(a.next_json(), json!({"type": "pong"}));
}

#[test]
fn control_frames_are_answered_and_fragmented_messages_reassembled() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    raw.send_raw(&ws::frame(true, OP_PING, b"hello", true));
    let pong = raw.next_frame();
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"hello");
    // An unsolicited pong is ignored.
    raw.send_raw(&ws::frame(true, OP_PONG, b"x", true));
    // A message in three fragments with a ping between them.
    let mut bytes = ws::frame(false, OP_TEXT, br#"{"type":"jo"#, true);
    bytes.extend(ws::frame(false, OP_CONTINUATION, br#"in","room":"#, true));
    bytes.extend(ws::frame(true, OP_PING, b"mid", true));
    bytes.extend(ws::frame(true, OP_CONTINUATION, br#""frag"}"#, true));
    raw.send_raw(&bytes);
    let pong = raw.next_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"mid"[..])
    );
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": "frag"}));
    // A multi-byte character split between two fragments.
    let text = "{\"type\":\"join\",\"room\":\"x\",\"pad\":\"é\"}".as_bytes();
    let cut = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let mut bytes = ws::frame(false, OP_TEXT, &text[..cut], true);
    bytes.extend(ws::frame(true, OP_CONTINUATION, &text[cut..], true));
    raw.send_raw(&bytes);
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": "x"}));
}

#[test]
fn a_broadcast_too_big_for_any_queue_is_refused_with_an_error_and_disconnects_no_one() {
    // The queue bound may equal max_message_bytes: a message that fits can still make a frame
    // (with "from" and "id") that no queue can hold.
    let server = TestServer::with_config(json!({"streaming": {
        "websocket": {"max_message_bytes": 4096},
        "backpressure": {"max_queue_bytes": 4096},
    }}));
    let mut a = Ws::connect(server.addr);
    let mut b = Ws::connect(server.addr);
    b.join("r");
    let data = "d".repeat(4096 - r#"{"type":"broadcast","data":""}"#.len());
    let message = json!({"type": "broadcast", "data": data}).to_string();
    assert_eq!(message.len(), 4096);
    a.socket.send(Message::text(message)).unwrap();
    assert_error_reply(&a.next_json());
    // The same to a room (the frame would also go to SSE subscribers).
    let data = "d".repeat(4096 - r#"{"type":"broadcast","room":"r","data":""}"#.len());
    let message = json!({"type": "broadcast", "room": "r", "data": data}).to_string();
    assert_eq!(message.len(), 4096);
    a.socket.send(Message::text(message)).unwrap();
    assert_error_reply(&a.next_json());
    // Nobody was disconnected and nothing was sent.
    b.barrier();
    a.barrier();
    a.send_json(&json!({"type": "broadcast", "data": "small"}));
    assert_broadcast(&b.next_json(), &a.id, &json!("small"));
}

fn small_message_server() -> TestServer {
    TestServer::with_config(json!({"streaming": {"websocket": {"max_message_bytes": 1024}}}))
}

/// A ping message of exactly `len` bytes.
fn ping_of_len(len: usize) -> String {
    let base = r#"{"type":"ping","pad":""}"#.len();
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(len - base));
    assert_eq!(text.len(), len);
    text
}

/// Expects a close frame with `code`, then the end of the stream.
fn expect_close_then_eof(raw: &mut RawWs, code: u16) -> String {
    let (got, reason) = raw.next_close();
    assert_eq!(got, code, "reason {reason:?}");
    raw.expect_eof();
    reason
}

#[test]
fn a_message_of_max_message_bytes_is_served_and_one_byte_more_closes_with_1009() {
    let server = small_message_server();
    let mut raw = RawWs::connect(server.addr);
    raw.send_raw(&ws::text(&ping_of_len(1024)));
    assert_eq!(raw.next_json(), json!({"type": "pong"}));
    raw.send_raw(&ws::text(&ping_of_len(1025)));
    let reason = expect_close_then_eof(&mut raw, 1009);
    eprintln!("1009 reason: {reason:?}");
    // The server is fine.
    let mut other = Ws::connect(server.addr);
    other.barrier();
}

#[test]
fn a_fragmented_message_over_the_limit_closes_with_1009() {
    let server = small_message_server();
    let mut raw = RawWs::connect(server.addr);
    let mut bytes = ws::frame(false, OP_TEXT, &[b' '; 600], true);
    bytes.extend(ws::frame(true, OP_CONTINUATION, &[b' '; 600], true));
    raw.send_raw(&bytes);
    expect_close_then_eof(&mut raw, 1009);
}

#[test]
fn a_frame_header_announcing_a_huge_payload_closes_with_1009_without_waiting_for_it() {
    let server = small_message_server();
    let mut raw = RawWs::connect(server.addr);
    // A masked text frame header of 2^40 bytes, and no payload: the answer must not wait for
    // (or make room for) a payload it will refuse.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_raw(&header);
    expect_close_then_eof(&mut raw, 1009);
}

#[test]
fn the_tungstenite_client_sees_1009_for_an_oversized_message() {
    let server = small_message_server();
    let mut a = Ws::connect(server.addr);
    a.socket
        .send(Message::text(ping_of_len(2000)))
        .expect("send");
    match a.socket.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[test]
fn invalid_utf8_in_a_text_message_closes_with_1007() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    raw.barrier();
    raw.send_raw(&ws::frame(true, OP_TEXT, b"{\"type\":\"\xff\xfe\"}", true));
    expect_close_then_eof(&mut raw, 1007);

    // Split across fragments, and an overlong encoding.
    let mut raw = RawWs::connect(server.addr);
    let mut bytes = ws::frame(false, OP_TEXT, b"{\"a\":\"\xe6\x97", true);
    bytes.extend(ws::frame(true, OP_CONTINUATION, b"x\"}", true));
    raw.send_raw(&bytes);
    expect_close_then_eof(&mut raw, 1007);
    let mut raw = RawWs::connect(server.addr);
    raw.send_raw(&ws::frame(true, OP_TEXT, b"\xc0\xaf", true));
    expect_close_then_eof(&mut raw, 1007);
}

#[test]
fn protocol_violations_close_with_1002() {
    let server = TestServer::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unmasked frame",
            ws::frame(true, OP_TEXT, br#"{"type":"ping"}"#, false),
        ),
        (
            "continuation without a start",
            ws::frame(true, OP_CONTINUATION, b"x", true),
        ),
        ("reserved opcode", ws::frame(true, 0x3, b"x", true)),
        ("fragmented ping", ws::frame(false, OP_PING, b"x", true)),
        ("control frame over 125 bytes", {
            ws::frame(true, OP_PING, &[b'x'; 126], true)
        }),
        ("RSV1 without an extension", {
            let mut f = ws::text(r#"{"type":"ping"}"#);
            f[0] |= 0x40;
            f
        }),
        ("new message inside a fragmented one", {
            let mut f = ws::frame(false, OP_TEXT, b"{", true);
            f.extend(ws::text("{}"));
            f
        }),
    ];
    for (what, bytes) in cases {
        let mut raw = RawWs::connect(server.addr);
        raw.send_raw(&bytes);
        let (code, reason) = raw.next_close();
        assert_eq!(code, 1002, "{what}: reason {reason:?}");
        raw.expect_eof();
    }
}

#[test]
fn a_client_close_is_answered_with_a_close_frame_then_the_connection_ends() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    raw.send_raw(&ws::frame(
        true,
        OP_CLOSE,
        &ws::close_payload(1000, "bye"),
        true,
    ));
    let (code, _) = raw.next_close();
    assert_eq!(code, 1000, "the close code is echoed");
    raw.expect_eof();

    // Messages after the close frame, in the same write, are not acted on.
    let mut other = Ws::connect(server.addr);
    let mut raw = RawWs::connect(server.addr);
    let mut bytes = ws::frame(true, OP_CLOSE, &ws::close_payload(1000, ""), true);
    bytes.extend(ws::text(r#"{"type":"broadcast","data":"after close"}"#));
    bytes.extend(ws::text(r#"{"type":"ping"}"#));
    raw.send_raw(&bytes);
    assert_eq!(raw.next_close().0, 1000);
    raw.expect_eof();
    other.barrier();

    // With tungstenite: the close handshake completes.
    let mut a = Ws::connect(server.addr);
    a.socket.close(None).expect("close");
    loop {
        match a.socket.read() {
            Ok(Message::Close(_)) => {}
            Ok(m) => panic!("unexpected message after close: {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    // An empty close frame is answered too.
    let mut raw = RawWs::connect(server.addr);
    raw.send_raw(&ws::frame(true, OP_CLOSE, b"", true));
    assert_eq!(raw.next_frame().opcode, OP_CLOSE);
    raw.expect_eof();
}

#[test]
fn many_messages_in_one_write_are_all_answered_in_order() {
    let server = TestServer::start();
    let mut member = Ws::connect(server.addr);
    member.join("burst");
    let mut raw = RawWs::connect(server.addr);
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(ws::text(
            &json!({"type": "publish", "topic": "burst", "data": i}).to_string(),
        ));
    }
    raw.send_raw(&bytes);
    let mut last = 0;
    for i in 0..200 {
        let ack = raw.next_json();
        assert_eq!(ack["type"], "published", "{ack}");
        let seq = seq_of(ack["id"].as_str().unwrap());
        assert!(seq > last);
        last = seq;
        let event = member.next_json();
        assert_eq!(event["data"], i);
        assert_eq!(event["id"], ack["id"]);
    }
    member.barrier();
}

// ---------------------------------------------------------------------------------------------
// Keep-alive

fn keepalive_server() -> TestServer {
    TestServer::with_config(json!({"streaming": {"websocket": {
        "ping_interval_secs": 1,
        "pong_timeout_secs": 1,
    }}}))
}

#[test]
fn a_peer_that_never_answers_pings_is_dropped() {
    let server = keepalive_server();
    let started = Instant::now();
    let mut raw = RawWs::connect(server.addr);
    // Read (never answer) until the server drops the connection.
    let mut pings = 0;
    while let Some(frame) = raw.try_next_frame() {
        assert_eq!(frame.opcode, OP_PING, "{frame:?}");
        pings += 1;
    }
    let elapsed = started.elapsed();
    assert!(pings >= 1, "dropped without being pinged");
    // The server cannot have given up before one interval and one timeout passed.
    assert!(
        elapsed >= Duration::from_secs(2),
        "dropped after {elapsed:?}"
    );
    eprintln!("dropped after {elapsed:?} and {pings} ping(s)");
    // Others are served.
    Ws::connect(server.addr).barrier();
}

#[test]
fn a_client_that_answers_pings_stays_connected_past_several_intervals() {
    let server = keepalive_server();
    let mut a = Ws::connect(server.addr);
    a.join("alive");
    let mut pings = 0;
    while pings < 3 {
        // tungstenite queues the pong and sends it with the next read.
        match a.socket.read() {
            Ok(Message::Ping(_)) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // At least three intervals later it is still a member, and served.
    a.barrier();
    let ids = server.publish(&json!({"topic": "alive", "data": "still"}));
    assert_envelope(&a.next_json(), "alive", "message", &ids[0], &json!("still"));
}

#[test]
fn a_raw_peer_that_answers_pings_by_hand_stays_connected() {
    let server = keepalive_server();
    let mut raw = RawWs::connect(server.addr);
    for _ in 0..3 {
        let ping = raw.next_frame();
        assert_eq!(ping.opcode, OP_PING, "{ping:?}");
        raw.send_raw(&ws::frame(true, OP_PONG, &ping.payload, true));
    }
    raw.barrier();
}

// ---------------------------------------------------------------------------------------------
// Slow consumers

/// A member of `room` with a tiny receive buffer; it reads its welcome and `joined`, then
/// nothing until the test says.
fn slow_member(server: &TestServer, room: &str) -> RawWs {
    let mut raw = RawWs::over(client_with_small_rcvbuf(server, SLOW_RCVBUF));
    raw.send_json(&json!({"type": "join", "room": room}));
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": room}));
    raw
}

/// Publishes `count` events on `room` over HTTP, reading each from `good` before the next;
/// asserts `good` got each one, in order. Returns the ids.
fn publish_in_step(server: &TestServer, good: &mut Ws, room: &str, count: usize) -> Vec<String> {
    let mut publisher = server.client();
    let pad = "x".repeat(PAYLOAD);
    let mut ids: Vec<String> = Vec::with_capacity(count);
    for i in 0..count {
        let id = publish_on(
            &mut publisher,
            &json!({"topic": room, "event": "load", "data": {"i": i, "pad": pad}}),
        )
        .pop()
        .unwrap();
        let v = good.next_json();
        assert_eq!(
            v["id"].as_str(),
            Some(id.as_str()),
            "the reading member missed or reordered event {i}"
        );
        assert_eq!(v["data"]["i"], i);
        if let Some(prev) = ids.last() {
            assert_eq!(seq_of(&id), seq_of(prev) + 1);
        }
        ids.push(id);
    }
    ids
}

#[test]
fn disconnect_policy_closes_a_member_that_stops_reading_with_1008_and_spares_the_reader() {
    let server = backpressure_server("disconnect");
    let mut good = Ws::connect(server.addr);
    good.join("load");
    let mut slow = slow_member(&server, "load");

    let count = events_to_overflow();
    let ids = publish_in_step(&server, &mut good, "load", count);

    // The slow member now reads what reached it: an unbroken run from the first event, then
    // the close frame 1008 (or, if the server gave up on it before it read that far, the end
    // of the stream, possibly in the middle of a frame).
    let mut received = 0;
    let mut close = None;
    while let Some(frame) = slow.try_next_frame_lenient() {
        if frame.opcode == OP_CLOSE {
            close = Some(frame.close());
            break;
        }
        let v = frame.json();
        assert_eq!(
            v["id"].as_str(),
            Some(ids[received].as_str()),
            "the disconnected member got a gap or a foreign frame"
        );
        received += 1;
    }
    assert!(
        received < count,
        "the slow member was never disconnected: it got all {count} events"
    );
    match &close {
        Some((code, reason)) => {
            assert_eq!(*code, 1008, "reason {reason:?}");
            assert_eq!(reason, "slow consumer: queue full");
            slow.expect_eof();
        }
        None => {
            let tail = slow.client.buffered();
            assert!(
                tail.is_empty() || tail[0] == 0x81,
                "the stream was cut in something that is not an event frame"
            );
        }
    }
    eprintln!(
        "slow member got {received} of {count} events, then {}",
        if close.is_some() {
            "close 1008"
        } else {
            "the end of the stream"
        }
    );

    // The reader and the server carry on.
    let next = server.publish(&json!({"topic": "load", "data": "after"}));
    assert_eq!(good.next_json()["id"], next[0]);
    good.barrier();
}

#[test]
fn drop_oldest_policy_tells_a_slow_member_exactly_how_many_events_it_lost() {
    let server = backpressure_server("drop_oldest");
    let mut good = Ws::connect(server.addr);
    good.join("load");
    let mut slow = slow_member(&server, "load");

    let count = events_to_overflow();
    let ids = publish_in_step(&server, &mut good, "load", count);
    let first = seq_of(&ids[0]);

    // A marker published now ends what the slow member must see.
    let marker = server.publish(&json!({"topic": "load", "event": "marker"}));
    let last = seq_of(&marker[0]);
    assert_eq!(last, seq_of(ids.last().unwrap()) + 1);

    let mut expected = first; // the next sequence number not yet accounted for
    let mut pending_dropped = 0u64; // dropped notices since the last event
    let mut total_dropped = 0u64;
    let mut notices = 0;
    let mut events = 0;
    loop {
        let v = slow.next_json();
        match v["type"].as_str() {
            Some("dropped") => {
                assert_eq!(keys(&v), ["count", "type"], "{v}");
                let n = v["count"].as_u64().expect("dropped count");
                assert!(n > 0, "{v}");
                pending_dropped += n;
                total_dropped += n;
                notices += 1;
            }
            Some("event") => {
                let seq = seq_of(v["id"].as_str().expect("event id"));
                assert_eq!(
                    seq,
                    expected + pending_dropped,
                    "the gap before event {seq} is not what the dropped notices say"
                );
                expected = seq + 1;
                pending_dropped = 0;
                events += 1;
                if seq == last {
                    break;
                }
            }
            _ => panic!("unexpected message {v}"),
        }
    }
    assert!(notices > 0, "the slow member was never told of a drop");
    assert_eq!(
        events + total_dropped,
        count as u64 + 1,
        "every event is either received or counted as dropped"
    );
    eprintln!("slow member: {events} events, {total_dropped} dropped in {notices} notices");

    // The slow member is still connected, in its room, and answers to the protocol.
    let live = server.publish(&json!({"topic": "load", "event": "live"}));
    assert_eq!(slow.next_json()["id"], live[0]);
    slow.barrier();
    assert_eq!(good.next_json()["event"], "marker");
    assert_eq!(good.next_json()["id"], live[0]);
}

#[test]
fn a_client_that_keeps_asking_without_reading_the_replies_is_cut_off() {
    // Replies are output too: a client that sends pings and never reads the pongs must not make
    // the server queue without bound. It writes until the server cuts it off (a reset, since
    // its frames are left unread); only that ends the loop.
    let server = backpressure_server("disconnect");
    let mut hog = RawWs::over(client_with_small_rcvbuf(&server, SLOW_RCVBUF));
    let batch: Vec<u8> = ws::text(r#"{"type":"ping"}"#).repeat(2000);
    let started = Instant::now();
    let mut written = 0usize;
    let error = loop {
        assert!(
            started.elapsed() < WAIT,
            "never cut off after {written} bytes of pings"
        );
        match hog.client.stream.write_all(&batch) {
            Ok(()) => written += batch.len(),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "writing to the server: {error}"
    );
    // Whatever it can still read (the reset may discard it) is pongs, never a close frame.
    let mut pongs = 0;
    while let Some(frame) = hog.try_next_frame_lenient() {
        assert_eq!(frame.json(), json!({"type": "pong"}));
        pongs += 1;
    }
    eprintln!("cut off after {written} bytes of pings and {pongs} pongs read");
    // Everyone else is served.
    Ws::connect(server.addr).barrier();
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[test]
fn sigterm_sends_close_1001_to_websocket_clients_and_exits_0() {
    let mut server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    let mut a = Ws::connect(server.addr);
    a.join("r");
    // Both are served: the server is inside its event loop.
    raw.barrier();
    a.barrier();

    server.sigterm();
    let (code, reason) = raw.next_close();
    assert_eq!(code, 1001, "reason {reason:?}");
    // The server ends its side after the close frame.
    raw.expect_eof();
    match a.socket.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(raw);
    drop(a);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_delivers_what_was_queued_for_a_member_before_the_close_frame() {
    let mut server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    raw.send_json(&json!({"type": "join", "room": "r"}));
    assert_eq!(raw.next_json(), json!({"type": "joined", "room": "r"}));
    let ids = publish_n(&server, "r", 50);
    server.sigterm();
    for id in &ids {
        assert_eq!(raw.next_json()["id"], id.as_str());
    }
    assert_eq!(raw.next_close().0, 1001);
    raw.expect_eof();
    drop(raw);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_websocket_client_that_half_closes_is_dropped_quietly() {
    let server = TestServer::start();
    let mut raw = RawWs::connect(server.addr);
    raw.client.shutdown_write();
    raw.expect_eof();
    let mut a = Ws::connect(server.addr);
    a.barrier();
    // A client that sends its last message and half-closes at once: the message is still
    // acted on.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut bytes = ws::upgrade_request("/stream/ws", &ws::upgrade_headers());
    bytes.extend(ws::text(r#"{"type":"broadcast","data":"last words"}"#));
    stream.write_all(&bytes).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let v = a.next_json();
    assert_eq!(v["data"], "last words", "{v}");
}

// ---------------------------------------------------------------------------------------------
// Limits shared with the other transports

#[test]
fn upgrades_count_towards_max_connections_and_beyond_it_get_503() {
    let server = TestServer::with_config(json!({"max_connections": 2}));
    let mut a = Ws::connect(server.addr);
    // A query string does not change the route.
    let mut b = Ws::connect_path(server.addr, "/stream/ws?token=x&room=y");
    let mut client = server.client();
    client.send(&ws::upgrade_request("/stream/ws", &ws::upgrade_headers()));
    let r = client.read_response();
    r.assert_error(503);
    assert!(r.header("retry-after").is_some(), "{r:?}");
    a.barrier();
    b.barrier();
    // A slot comes back when a WebSocket has closed.
    a.socket.close(None).unwrap();
    while a.socket.read().is_ok() {}
    drop(a);
    let deadline = Instant::now() + WAIT;
    let url = format!("ws://{}/stream/ws", server.addr);
    loop {
        let stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client::client(url.as_str(), stream) {
            Ok(_) => break,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)))
                if r.status() == 503 =>
            {
                assert!(Instant::now() < deadline, "the slot never came back");
                std::thread::sleep(Duration::from_millis(20)); // polling a condition, bounded
            }
            Err(e) => panic!("upgrade: {e}"),
        }
    }
}

/// Bytes of data per event in the replay tests: the queue holds only a few such events.
const EVENT_PAD: usize = 1000;

fn small_queue_server(policy: &str) -> TestServer {
    TestServer::with_config(json!({"streaming": {
        "websocket": {"max_message_bytes": 1024, "message_history": 100},
        "backpressure": {"max_queue_bytes": 8192, "slow_consumer": policy},
    }}))
}

/// Publishes 30 events of [`EVENT_PAD`] bytes on `room` (about 30 kB, far more than a queue
/// of 8 KiB); returns the ids.
fn publish_big_history(server: &TestServer, room: &str) -> Vec<String> {
    let pad = "r".repeat(EVENT_PAD);
    let items: Vec<Value> = (0..30)
        .map(|i| json!({"topic": room, "data": {"i": i, "pad": pad}}))
        .collect();
    server.publish(&Value::Array(items))
}

/// Joins `room` since `since` on a new raw client and checks what CONTRACT asks of a replay
/// that may not fit the client's queue: `joined` first, then either every retained event and
/// `recovered:true`, or no event and `recovered:false` (no partial replay is pretended), and
/// the client is still connected and a member. Returns whether it recovered.
fn join_with_a_big_replay(server: &TestServer, room: &str, ids: &[String]) -> bool {
    let mut raw = RawWs::connect(server.addr);
    raw.send_json(&json!({"type": "join", "room": room, "since": ids[0]}));
    let first = raw.next_frame();
    assert_eq!(first.opcode, OP_TEXT, "{first:?}");
    assert_eq!(first.json(), json!({"type": "joined", "room": room}));
    let mut replayed = Vec::new();
    let recovered = loop {
        let v = raw.next_json();
        match v["type"].as_str() {
            Some("recovery") => {
                assert_eq!(keys(&v), ["recovered", "room", "type"], "{v}");
                break v["recovered"].as_bool().expect("boolean recovered");
            }
            Some("event") => replayed.push(v["id"].as_str().unwrap().to_string()),
            _ => panic!("unexpected message in a replay: {v}"),
        }
    };
    if recovered {
        assert_eq!(replayed, ids[1..]);
    } else {
        assert!(replayed.is_empty(), "a partial replay: {replayed:?}");
    }
    let live = server.publish(&json!({"topic": room, "data": "live"}));
    assert_eq!(raw.next_json()["id"], live[0]);
    raw.barrier();
    recovered
}

#[test]
fn a_replay_larger_than_the_queue_is_all_or_nothing_and_keeps_the_client_under_drop_oldest() {
    let server = small_queue_server("drop_oldest");
    let ids = publish_big_history(&server, "big");
    let recovered = join_with_a_big_replay(&server, "big", &ids);
    assert!(
        !recovered,
        "30 kB of replay cannot have fitted an 8 KiB queue"
    );
    // A replay that fits is complete.
    let few = publish_n(&server, "small", 3);
    let mut a = Ws::connect(server.addr);
    let (replayed, recovered) = join_since(&mut a, "small", &few[0]);
    assert_eq!(replayed, few[1..]);
    assert!(recovered);
}

#[test]
fn a_replay_larger_than_the_queue_is_all_or_nothing_and_keeps_the_client_under_disconnect() {
    // Regression: the replay used to overflow the queue of the client that asked for it, which
    // was closed at once with 1008 before it could read anything (not even `joined`), and
    // again on every reconnection with the same cursor.
    let server = small_queue_server("disconnect");
    let ids = publish_big_history(&server, "big");
    let recovered = join_with_a_big_replay(&server, "big", &ids);
    assert!(
        !recovered,
        "30 kB of replay cannot have fitted an 8 KiB queue"
    );
}
