//! `GET /stream/sse`: the response head, the opening, the event encoding, topic and event
//! filters, heartbeats, resume with `Last-Event-ID` / `lastEventId`, and the refusals.

mod common;

use common::{seq_of, Client, Sse, TestServer};
use serde_json::{json, Value};

#[test]
fn stream_opens_with_headers_retry_and_connected_event() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"retry_ms": 1500}}}));
    let mut sse = server.sse("topic=news");
    assert_eq!(sse.head.status, 200);
    assert_eq!(
        sse.head.header("content-type"),
        Some("text/event-stream"),
        "{:?}",
        sse.head
    );
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
    assert!(
        sse.head.header("content-length").is_none(),
        "a stream has no length: {:?}",
        sse.head
    );
    let opening = sse.next_block();
    assert!(
        opening
            .raw
            .starts_with("retry: 1500\nevent: connected\ndata: "),
        "{:?}",
        opening.raw
    );
    assert_eq!(opening.retry, Some(1500));
    let data = opening.json();
    assert_eq!(data["status"], "connected");
    let id = data["id"].as_str().expect("connection id is a string");
    assert!(!id.is_empty());
    assert_eq!(data.as_object().unwrap().len(), 2, "{data}");
}

#[test]
fn default_retry_is_3000_ms_and_connection_ids_differ() {
    let server = TestServer::start();
    let mut a = server.sse("topic=t");
    let mut b = server.sse("topic=t");
    let a = a.read_opening();
    let b = b.read_opening();
    assert_eq!(a.retry, Some(3000));
    assert_ne!(a.json()["id"], b.json()["id"]);
}

#[test]
fn event_block_carries_id_name_and_the_exact_envelope() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=news");
    sse.read_opening();
    let ids = server.publish(&json!({"topic": "news", "event": "update", "data": {"any": "json"}}));
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    let block = sse.next_event();
    let envelope = format!(
        r#"{{"type":"event","topic":"news","event":"update","id":"{id}","data":{{"any":"json"}}}}"#
    );
    assert_eq!(
        block.raw,
        format!("id: {id}\nevent: update\ndata: {envelope}\n\n")
    );
    assert_eq!(block.id.as_deref(), Some(id.as_str()));
    assert_eq!(block.data.as_deref(), Some(envelope.as_str()));
}

#[test]
fn message_events_have_no_event_line_and_missing_data_is_null() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=t");
    sse.read_opening();
    let ids = server.publish(&json!([
        {"topic": "t"},
        {"topic": "t", "event": "message", "data": "text\nwith a line break"},
        {"topic": "t", "event": null, "data": [1, 2]},
    ]));
    let first = sse.next_event();
    assert_eq!(
        first.raw,
        format!(
            "id: {}\ndata: {{\"type\":\"event\",\"topic\":\"t\",\"event\":\"message\",\"id\":\"{}\",\"data\":null}}\n\n",
            ids[0], ids[0]
        )
    );
    assert_eq!(first.event, None);
    // A line break in the data stays inside the one JSON line.
    let second = sse.next_event();
    assert_eq!(second.event, None);
    assert_eq!(second.raw.matches('\n').count(), 3, "{:?}", second.raw);
    assert_eq!(second.json()["data"], "text\nwith a line break");
    let third = sse.next_event();
    assert_eq!(third.json()["event"], "message");
    assert_eq!(third.json()["data"], json!([1, 2]));
    assert_eq!(third.id.as_deref(), Some(ids[2].as_str()));
}

#[test]
fn repeated_and_comma_separated_topics_all_subscribe_and_others_do_not_arrive() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=a&topic=b,c");
    sse.read_opening();
    let mut client = server.client();
    let mut expected = Vec::new();
    for topic in ["a", "d", "b", "zz", "c", "a"] {
        let ids = common::publish_on(&mut client, &json!({"topic": topic, "data": topic}));
        if ["a", "b", "c"].contains(&topic) {
            expected.push((ids[0].clone(), topic));
        }
    }
    for (id, topic) in expected {
        let block = sse.next_event();
        let v = block.json();
        assert_eq!(block.id.as_deref(), Some(id.as_str()), "{v}");
        assert_eq!(v["topic"], topic);
        assert_eq!(v["data"], topic);
    }
}

#[test]
fn percent_encoded_topics_are_decoded() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=news%2Fsports%3Alive");
    sse.read_opening();
    let ids = server.publish(&json!({"topic": "news/sports:live"}));
    let block = sse.next_event();
    assert_eq!(block.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(block.json()["topic"], "news/sports:live");
}

#[test]
fn event_filter_passes_only_the_named_events() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=t&event=x&event=y");
    sse.read_opening();
    let ids = server.publish(&json!([
        {"topic": "t", "event": "z", "data": 0},
        {"topic": "t", "event": "x", "data": 1},
        {"topic": "t", "data": 2},
        {"topic": "t", "event": "y", "data": 3},
        {"topic": "t", "event": "x", "data": 4},
    ]));
    for (i, name) in [(1, "x"), (3, "y"), (4, "x")] {
        let block = sse.next_event();
        assert_eq!(block.id.as_deref(), Some(ids[i].as_str()));
        assert_eq!(block.event.as_deref(), Some(name));
        assert_eq!(block.json()["data"], i);
    }
}

#[test]
fn idle_stream_gets_ping_comments_every_heartbeat() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"heartbeat_secs": 1}}}));
    let mut sse = server.sse("topic=quiet");
    sse.read_opening();
    for _ in 0..2 {
        let block = sse.next_block();
        assert_eq!(block.raw, ": ping\n\n");
        assert_eq!(block.comments, vec!["ping".to_string()]);
    }
    // Still a live stream after the pings.
    let ids = server.publish(&json!({"topic": "quiet"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(ids[0].as_str()));
}

fn publish_n(server: &TestServer, topic: &str, n: usize) -> Vec<String> {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topic, "event": "e", "data": i}))
        .collect();
    server.publish(&Value::Array(items))
}

/// Reads `expected` replayed ids, then the `recovery` event, and returns its `recovered`.
fn read_replay(sse: &mut Sse, expected: &[String]) -> bool {
    for id in expected {
        let block = sse.next_event();
        assert_eq!(
            block.id.as_deref(),
            Some(id.as_str()),
            "replay out of order: {:?}",
            block.raw
        );
    }
    let recovery = sse.next_event();
    assert_eq!(
        recovery.event.as_deref(),
        Some("recovery"),
        "expected the recovery event, got {:?}",
        recovery.raw
    );
    assert_eq!(recovery.id, None, "{:?}", recovery.raw);
    let v = recovery.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    v["recovered"].as_bool().expect("recovered is a bool")
}

#[test]
fn last_event_id_header_replays_retained_events_in_order_then_recovery_true() {
    let server = TestServer::start();
    let ids = publish_n(&server, "t", 5);
    let mut sse = Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &ids[1])]);
    sse.read_opening();
    assert!(read_replay(&mut sse, &ids[2..]));
    // Then live events, none repeated.
    let live = server.publish(&json!({"topic": "t", "event": "e"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(live[0].as_str()));
}

#[test]
fn last_event_id_query_parameter_resumes_too() {
    let server = TestServer::start();
    let ids = publish_n(&server, "t", 4);
    let mut sse = server.sse(&format!("topic=t&lastEventId={}", ids[0]));
    sse.read_opening();
    assert!(read_replay(&mut sse, &ids[1..]));
}

#[test]
fn last_event_id_header_wins_over_the_query_parameter() {
    let server = TestServer::start();
    let ids = publish_n(&server, "t", 5);
    let mut sse = Sse::open(
        server.addr,
        &format!("topic=t&lastEventId={}", ids[3]),
        &[("Last-Event-ID", &ids[1])],
    );
    sse.read_opening();
    assert!(read_replay(&mut sse, &ids[2..]));
}

#[test]
fn replay_merges_several_topics_in_id_order_and_skips_other_topics() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut all = Vec::new();
    for topic in ["a", "b", "other", "a", "b", "b", "other", "a"] {
        let id = common::publish_on(&mut client, &json!({"topic": topic}))
            .pop()
            .unwrap();
        all.push((id, topic));
    }
    let cursor = all[0].0.clone();
    let expected: Vec<String> = all[1..]
        .iter()
        .filter(|(_, t)| *t != "other")
        .map(|(id, _)| id.clone())
        .collect();
    let mut sse = Sse::open(server.addr, "topic=a,b", &[("Last-Event-ID", &cursor)]);
    sse.read_opening();
    assert!(read_replay(&mut sse, &expected));
}

#[test]
fn replay_respects_the_event_filter() {
    let server = TestServer::start();
    let ids = server.publish(&json!([
        {"topic": "t", "event": "keep"},
        {"topic": "t", "event": "skip"},
        {"topic": "t", "event": "keep"},
        {"topic": "t", "event": "skip"},
        {"topic": "t", "event": "keep"},
    ]));
    let mut sse = Sse::open(
        server.addr,
        "topic=t&event=keep",
        &[("Last-Event-ID", &ids[0])],
    );
    sse.read_opening();
    assert!(read_replay(&mut sse, &[ids[2].clone(), ids[4].clone()]));
}

#[test]
fn resume_from_the_newest_id_recovers_with_nothing_to_replay() {
    let server = TestServer::start();
    let ids = publish_n(&server, "t", 3);
    let mut sse = Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &ids[2])]);
    sse.read_opening();
    assert!(read_replay(&mut sse, &[]));
}

#[test]
fn resume_past_evicted_history_says_recovered_false_and_replays_nothing() {
    let server =
        TestServer::with_config(json!({"streaming": {"websocket": {"message_history": 3}}}));
    let ids = publish_n(&server, "t", 6);
    // Events 2..6 follow the cursor; only 4..6 are retained: no partial replay.
    let mut sse = Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &ids[0])]);
    sse.read_opening();
    assert!(!read_replay(&mut sse, &[]));
    // The next thing on the stream is a live event, not a retained one.
    let live = server.publish(&json!({"topic": "t", "event": "e"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(live[0].as_str()));
}

#[test]
fn resume_within_retained_history_still_recovers_with_a_small_history() {
    let server =
        TestServer::with_config(json!({"streaming": {"websocket": {"message_history": 3}}}));
    let ids = publish_n(&server, "t", 6);
    // Events 4..6 follow the cursor 3 and are all retained.
    let mut sse = Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &ids[2])]);
    sse.read_opening();
    assert!(read_replay(&mut sse, &ids[3..]));
}

#[test]
fn resume_with_an_id_of_another_epoch_says_recovered_false_and_replays_nothing() {
    let server = TestServer::start();
    let ids = publish_n(&server, "t", 3);
    let (epoch, _) = common::parse_id(&ids[0]);
    let foreign = format!("{:08x}-1", epoch ^ 1);
    let mut sse = Sse::open(server.addr, "topic=t", &[("Last-Event-ID", &foreign)]);
    sse.read_opening();
    assert!(!read_replay(&mut sse, &[]));
    let live = server.publish(&json!({"topic": "t"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(live[0].as_str()));
}

#[test]
fn resume_with_a_garbage_id_says_recovered_false() {
    let server = TestServer::start();
    publish_n(&server, "t", 2);
    let mut sse = server.sse("topic=t&lastEventId=not-an-id");
    sse.read_opening();
    assert!(!read_replay(&mut sse, &[]));
}

#[test]
fn without_a_cursor_there_is_no_replay_and_no_recovery_event() {
    let server = TestServer::start();
    publish_n(&server, "t", 3);
    let mut sse = server.sse("topic=t");
    sse.read_opening();
    let live = server.publish(&json!({"topic": "t"}));
    let block = sse.next_event();
    assert_eq!(
        block.id.as_deref(),
        Some(live[0].as_str()),
        "{:?}",
        block.raw
    );
}

#[test]
fn live_event_ids_increase_by_one_across_topics() {
    let server = TestServer::start();
    let mut sse = server.sse("topic=a,b");
    sse.read_opening();
    let ids = server.publish(&json!([{"topic": "a"}, {"topic": "b"}, {"topic": "a"}]));
    let mut last = None;
    for id in &ids {
        let block = sse.next_event();
        assert_eq!(block.id.as_deref(), Some(id.as_str()));
        let seq = seq_of(id);
        if let Some(prev) = last {
            assert_eq!(seq, prev + 1);
        }
        last = Some(seq);
    }
}

#[test]
fn missing_topic_is_a_400() {
    let server = TestServer::start();
    for query in ["", "event=x", "topic=", "topic=,,"] {
        let r = Sse::try_open(server.client(), query, &[])
            .err()
            .unwrap_or_else(|| panic!("query {query:?} opened a stream"));
        assert_eq!(r.assert_error(400), "missing topic", "{query:?}");
    }
}

#[test]
fn invalid_topic_in_the_query_is_a_400() {
    let server = TestServer::start();
    let long = "a".repeat(129);
    for query in ["topic=a%20b", "topic=ok,b%C3%A9d", &format!("topic={long}")] {
        let r = Sse::try_open(server.client(), query, &[])
            .err()
            .unwrap_or_else(|| panic!("query {query:?} opened a stream"));
        let reason = r.assert_error(400);
        assert!(reason.contains("invalid topic"), "{query:?}: {reason}");
    }
    // 128 bytes is still a topic.
    let mut sse = server.sse(&format!("topic={}", "a".repeat(128)));
    sse.read_opening();
}

#[test]
fn sse_disabled_by_environment_is_a_501() {
    let server = TestServer::start_with(None, &[("SSE_ENABLED", "false")]);
    let r = Sse::try_open(server.client(), "topic=t", &[])
        .err()
        .expect("a stream opened with SSE disabled");
    assert_eq!(r.assert_error(501), "SSE streaming not enabled");
    // The rest of the server is unaffected.
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sse_disabled_by_config_file_is_a_501() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"enabled": false}}}));
    let r = Sse::try_open(server.client(), "topic=t", &[])
        .err()
        .expect("a stream opened with SSE disabled");
    assert_eq!(r.assert_error(501), "SSE streaming not enabled");
}

#[test]
fn sse_disabled_by_the_feature_toggle_is_a_501() {
    let server = TestServer::with_config(json!({"features": {"sse-streaming": false}}));
    let r = Sse::try_open(server.client(), "topic=t", &[])
        .err()
        .expect("a stream opened with SSE disabled");
    assert_eq!(r.assert_error(501), "SSE streaming not enabled");
}

#[test]
fn sse_stream_limit_answers_503_with_retry_after_and_frees_on_close() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"max_connections": 1}}}));
    let mut first = server.sse("topic=t");
    first.read_opening();
    let r = Sse::try_open(server.client(), "topic=t", &[])
        .err()
        .expect("a second stream opened past the limit");
    let reason = r.assert_error(503);
    assert!(!reason.is_empty());
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    // Plain requests are not streams: still served.
    assert_eq!(server.get("/health").status, 200);
    // Once the first stream is gone, a new one is accepted (the server notices the close
    // asynchronously: poll, with a bound).
    drop(first);
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        match Sse::try_open(server.client(), "topic=t", &[]) {
            Ok(mut sse) => {
                sse.read_opening();
                break;
            }
            Err(r) => {
                assert_eq!(r.status, 503, "{r:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the stream slot was never freed"
                );
                std::thread::sleep(std::time::Duration::from_millis(20)); // condition poll
            }
        }
    }
}

#[test]
fn sse_with_a_wrong_method_is_a_405_allowing_get() {
    let server = TestServer::start();
    let r = server
        .client()
        .request("POST", "/stream/sse?topic=t", &[], b"{}");
    assert_eq!(r.assert_error(405), "method not allowed");
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn a_stream_request_after_keep_alive_requests_on_one_connection_works() {
    let server = TestServer::start();
    let mut client: Client = server.client();
    assert_eq!(client.request("GET", "/health", &[], b"").status, 200);
    let mut sse = Sse::try_open(client, "topic=t", &[]).expect("stream");
    sse.read_opening();
    let ids = server.publish(&json!({"topic": "t"}));
    assert_eq!(sse.next_event().id.as_deref(), Some(ids[0].as_str()));
}
