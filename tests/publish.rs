//! `POST /stream/publish` and the plain HTTP routes: ids, batches, validation (a bad batch
//! publishes nothing), the topic limit, `/health`, 404, 405, keep-alive and `Connection: close`.

mod common;

use common::{parse_id, publish_on, seq_of, Client, TestServer};
use serde_json::json;

#[test]
fn health_is_200_ok_json() {
    let server = TestServer::start();
    let r = server.get("/health");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
}

#[test]
fn head_health_sends_the_head_without_a_body() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&common::request_bytes("HEAD", "/health", &[], b""));
    let head = client.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("15"));
    // The next response starts right after the head: no body bytes in between.
    let r = client.request("GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
}

#[test]
fn unknown_path_is_404_json() {
    let server = TestServer::start();
    for path in ["/nope", "/stream", "/health/x", "/stream/publish/extra"] {
        let r = server.get(path);
        assert_eq!(r.assert_error(404), "not found", "{path}");
    }
}

#[test]
fn wrong_method_is_405_with_allow() {
    let server = TestServer::start();
    let cases = [
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("GET", "/stream/publish", "POST"),
        ("PUT", "/stream/publish", "POST"),
        ("DELETE", "/stream/sse?topic=t", "GET"),
    ];
    for (method, path, allow) in cases {
        let r = server.client().request(method, path, &[], b"");
        assert_eq!(r.assert_error(405), "method not allowed", "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: {r:?}");
    }
}

#[test]
fn connections_are_kept_alive_by_default_on_http_1_1() {
    let server = TestServer::start();
    let mut client = server.client();
    for _ in 0..3 {
        let r = client.request("GET", "/health", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{r:?}");
    }
    let r = client.request("GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
    // Errors that leave the framing intact keep the connection too.
    assert_eq!(client.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let server = TestServer::start();
    let mut client = server.client();
    let r = client.request("GET", "/health", &[("Connection", "close")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    client.expect_eof();
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = client.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    client.expect_eof();

    let mut client = server.client();
    client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
}

#[test]
fn publish_returns_202_with_an_epoch_seq_id() {
    let server = TestServer::start();
    let r = server.publish_raw(r#"{"topic":"news","event":"update","data":{"a":1}}"#);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let ids = v["ids"].as_array().expect("ids array");
    assert_eq!(ids.len(), 1);
    let id = ids[0].as_str().unwrap();
    // parse_id checks: 8 hex digits, '-', decimal.
    let (_, seq) = parse_id(id);
    assert!(seq >= 1);
}

#[test]
fn ids_share_one_epoch_and_increase_across_topics_and_requests() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut ids = Vec::new();
    for topic in ["a", "b", "a", "c/d", "b"] {
        ids.extend(publish_on(&mut client, &json!({"topic": topic})));
    }
    ids.extend(publish_on(
        &mut client,
        &json!([{"topic": "x"}, {"topic": "y"}, {"topic": "x"}]),
    ));
    let parsed: Vec<(u32, u64)> = ids.iter().map(|id| parse_id(id)).collect();
    let epoch = parsed[0].0;
    for (i, (e, seq)) in parsed.iter().enumerate() {
        assert_eq!(*e, epoch, "{ids:?}");
        if i > 0 {
            assert_eq!(*seq, parsed[i - 1].1 + 1, "{ids:?}");
        }
    }
}

#[test]
fn a_batch_returns_one_id_per_event_in_order_and_delivers_them_in_order() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=t,u");
    sse.read_opening();
    let ids = server.publish(&json!([
        {"topic": "t", "data": 0},
        {"topic": "u", "event": "e", "data": 1},
        {"topic": "t", "data": 2},
    ]));
    assert_eq!(ids.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let block = sse.next_event();
        assert_eq!(block.id.as_deref(), Some(id.as_str()));
        assert_eq!(block.json()["data"], i);
    }
}

#[test]
fn an_empty_batch_publishes_nothing_and_returns_no_ids() {
    let server = TestServer::start();
    let r = server.publish_raw("[]");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json(), json!({"ids": []}));
}

/// Sends `body`, expects a 400 JSON error, and checks that nothing was published: the next
/// good publish on a subscribed topic is the next event the subscriber gets and its sequence
/// follows the last good one directly. Returns the reason.
fn assert_rejected(server: &TestServer, body: &str) -> String {
    let mut sse = server.sse("topic=good,bad,other");
    sse.read_opening();
    let before = server.publish(&json!({"topic": "good", "data": "before"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(before[0].as_str()));

    let r = server.publish_raw(body);
    let reason = r.assert_error(400);

    let after = server.publish(&json!({"topic": "good", "data": "after"}));
    assert_eq!(
        seq_of(&after[0]),
        seq_of(&before[0]) + 1,
        "{body} consumed ids"
    );
    let block = sse.next_event();
    assert_eq!(
        block.id.as_deref(),
        Some(after[0].as_str()),
        "{body} delivered {:?}",
        block.raw
    );
    reason
}

#[test]
fn invalid_json_is_a_400_and_publishes_nothing() {
    let server = TestServer::start();
    for body in ["", "{", "not json", r#"{"topic":"good"} trailing"#] {
        let reason = assert_rejected(&server, body);
        assert!(reason.starts_with("invalid JSON"), "{body:?}: {reason}");
    }
}

#[test]
fn missing_topic_is_a_400() {
    let server = TestServer::start();
    for body in [r#"{"data":1}"#, r#"{"topic":null}"#, r#"{"topic":7}"#] {
        assert_eq!(assert_rejected(&server, body), "missing topic", "{body}");
    }
}

#[test]
fn non_object_items_are_a_400() {
    let server = TestServer::start();
    for body in ["1", r#""good""#, r#"[{"topic":"good"}, 5]"#, "null"] {
        let reason = assert_rejected(&server, body);
        assert!(reason.contains("object"), "{body}: {reason}");
    }
}

#[test]
fn invalid_topic_names_are_a_400() {
    let server = TestServer::start();
    let long = "a".repeat(129);
    for topic in [
        "",
        "a b",
        "naïve",
        "new\nline",
        "semi;colon",
        "q?x",
        long.as_str(),
    ] {
        let body = json!({"topic": topic}).to_string();
        let reason = assert_rejected(&server, &body);
        assert!(reason.contains("invalid topic"), "{topic:?}: {reason}");
    }
}

#[test]
fn every_allowed_topic_character_and_128_bytes_are_accepted() {
    let server = TestServer::start();
    let topics = ["AZaz09_.:/-".to_string(), "a".repeat(128), "x".to_string()];
    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let mut sse = server.sse(&query.join("&"));
    sse.read_opening();
    for topic in &topics {
        let ids = server.publish(&json!({"topic": topic}));
        let block = sse.next_event();
        assert_eq!(block.id.as_deref(), Some(ids[0].as_str()));
        assert_eq!(block.json()["topic"], topic.as_str());
    }
}

#[test]
fn invalid_event_names_are_a_400() {
    let server = TestServer::start();
    let long = "e".repeat(129);
    for event in [
        json!(""),
        json!("a\nb"),
        json!("tab\there"),
        json!(5),
        json!(long),
    ] {
        let body = json!({"topic": "good", "event": event}).to_string();
        let reason = assert_rejected(&server, &body);
        assert!(reason.contains("invalid event name"), "{event}: {reason}");
    }
}

#[test]
fn a_batch_with_one_bad_item_publishes_none_of_it() {
    let server = TestServer::start();
    let bodies = [
        r#"[{"topic":"good"},{"topic":"bad topic"}]"#,
        r#"[{"topic":"good"},{"topic":"other","event":""}]"#,
        r#"[{"topic":"good"},{"topic":"other"},{"data":1}]"#,
    ];
    for body in bodies {
        assert_rejected(&server, body);
    }
}

#[test]
fn max_topics_refuses_a_new_topic_with_503_when_every_topic_is_watched() {
    let server = TestServer::with_config(json!({"streaming": {"limits": {"max_topics": 2}}}));
    let mut sse = server.sse("topic=a,b");
    sse.read_opening();
    let r = server.publish_raw(r#"{"topic":"c"}"#);
    assert_eq!(r.assert_error(503), "topic limit reached");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    // A stream asking for a new topic is refused the same way.
    let r = common::Sse::try_open(server.client(), "topic=c", &[])
        .err()
        .expect("a stream on a third topic opened");
    assert_eq!(r.assert_error(503), "topic limit reached");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Watched topics still work.
    let ids = server.publish(&json!({"topic": "a"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(ids[0].as_str()));
}

#[test]
fn max_topics_evicts_unwatched_topics_instead_of_refusing() {
    let server = TestServer::with_config(json!({"streaming": {"limits": {"max_topics": 2}}}));
    let mut client = server.client();
    for topic in ["a", "b", "c", "d", "a", "e"] {
        publish_on(&mut client, &json!({"topic": topic}));
    }
}

#[test]
fn a_batch_refused_for_the_topic_limit_publishes_none_of_it() {
    // (Regression: before commit e351cc7 the items before the refused one went out.)
    let server = TestServer::with_config(json!({"streaming": {"limits": {"max_topics": 2}}}));
    let mut sse = server.sse("topic=a,b");
    sse.read_opening();
    let r = server.publish_raw(r#"[{"topic":"a","data":"first"},{"topic":"c"}]"#);
    assert_eq!(r.assert_error(503), "topic limit reached");
    // The client got no ids and is told to retry; nothing of the batch may have gone out,
    // or the retry duplicates it.
    let marker = server.publish(&json!({"topic": "a", "data": "marker"}));
    let block = sse.next_event();
    assert_eq!(
        block.id.as_deref(),
        Some(marker[0].as_str()),
        "an item of the refused batch was delivered: {:?}",
        block.raw
    );
}

#[test]
fn publish_without_subscribers_is_still_retained_for_resume() {
    let server = TestServer::start();
    let ids = server.publish(&json!([{"topic": "t"}, {"topic": "t"}]));
    let mut sse = common::Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &ids[0])]);
    sse.read_opening();
    assert_eq!(sse.next_event().id.as_deref(), Some(ids[1].as_str()));
    assert_eq!(sse.next_event().event.as_deref(), Some("recovery"));
}

#[test]
fn publishing_on_a_keep_alive_connection_many_times_works() {
    let server = TestServer::start();
    let mut client: Client = server.client();
    let mut last = 0;
    for i in 0..50 {
        let ids = publish_on(&mut client, &json!({"topic": "t", "data": i}));
        let seq = seq_of(&ids[0]);
        assert!(seq > last);
        last = seq;
    }
}
