//! Slow consumers: a subscriber that stops reading fills the kernel buffers, then its bounded
//! queue (`streaming.backpressure.max_queue_bytes`), and is then disconnected (`disconnect`) or
//! loses its oldest queued events with an `event: dropped` notice (`drop_oldest`), while a
//! subscriber that reads on the same topic gets every event, in order, with no gap.
//!
//! The reading subscriber is kept in step with the publisher (each event is read before the next
//! is published), so its own queue never holds more than one event: whatever happens to it can
//! only come from the server, never from the test machine being slow.

mod common;

use common::load::{
    backpressure_server, client_with_small_rcvbuf, events_to_overflow, PAYLOAD, SLOW_RCVBUF,
};
use common::{publish_on, seq_of, Sse, TestServer};
use serde_json::json;

/// A subscriber with a tiny receive buffer that reads its opening and then stops reading.
fn slow_subscriber(server: &TestServer, topic: &str) -> Sse {
    let mut sse = Sse::try_open(
        client_with_small_rcvbuf(server, SLOW_RCVBUF),
        &format!("topic={topic}"),
        &[],
    )
    .expect("slow stream");
    sse.read_opening();
    sse
}

/// Publishes `count` events on `topic`, reading each from `good` before the next; asserts
/// `good` got each one, in order. Returns the ids.
fn publish_in_step(server: &TestServer, good: &mut Sse, topic: &str, count: usize) -> Vec<String> {
    let mut publisher = server.client();
    let payload = "x".repeat(PAYLOAD);
    let mut ids: Vec<String> = Vec::with_capacity(count);
    for i in 0..count {
        let id = publish_on(
            &mut publisher,
            &json!({"topic": topic, "event": "load", "data": {"i": i, "pad": payload}}),
        )
        .pop()
        .unwrap();
        let block = good.next_event();
        assert_eq!(
            block.id.as_deref(),
            Some(id.as_str()),
            "the reading subscriber missed or reordered event {i}"
        );
        assert_eq!(block.json()["data"]["i"], i);
        if let Some(prev) = ids.last() {
            assert_eq!(seq_of(&id), seq_of(prev) + 1);
        }
        ids.push(id);
    }
    ids
}

#[test]
fn disconnect_policy_closes_a_subscriber_that_stops_reading_and_spares_the_reader() {
    let server = backpressure_server("disconnect");
    let mut good = server.sse("topic=load");
    good.read_opening();
    let mut slow = slow_subscriber(&server, "load");

    let count = events_to_overflow();
    let ids = publish_in_step(&server, &mut good, "load", count);

    // The slow subscriber now reads what the kernel kept for it, then the end of the stream:
    // an unbroken run from the first event, cut short (the last block may be cut in the
    // middle, where the server stopped writing; a browser discards such a block).
    let mut received = 0;
    while let Some(block) = slow.try_next_block_lenient() {
        if block.is_comment() {
            continue;
        }
        assert_eq!(
            block.id.as_deref(),
            Some(ids[received].as_str()),
            "the disconnected subscriber got a gap or a foreign block: {:?}",
            &block.raw[..block.raw.len().min(120)]
        );
        received += 1;
    }
    assert!(
        received < count,
        "the slow subscriber was never disconnected: it got all {count} events"
    );
    let tail = slow.client.buffered();
    let next = format!("id: {}\n", ids[received]);
    assert!(
        tail.is_empty() || next.as_bytes().starts_with(tail) || tail.starts_with(next.as_bytes()),
        "the cut block is not the next event: {:?}",
        String::from_utf8_lossy(&tail[..tail.len().min(80)])
    );
    eprintln!("slow subscriber got {received} of {count} events before the disconnect");

    // The reader and the server carry on.
    let next = server.publish(&json!({"topic": "load", "data": "after"}));
    assert_eq!(good.next_event().id.as_deref(), Some(next[0].as_str()));
    assert_eq!(server.get("/health").status, 200);
    // The metrics say who was dropped, and why.
    let metrics = server.metrics();
    assert_eq!(metrics.dropped("slow_consumer"), 1.0);
    assert_eq!(metrics.dropped("queue_overflow"), 0.0);
    assert_eq!(
        metrics.get(r#"mcp_stream_connections{transport="sse"}"#),
        1.0
    );
}

#[test]
fn drop_oldest_policy_tells_a_slow_subscriber_exactly_how_many_events_it_lost() {
    let server = backpressure_server("drop_oldest");
    let mut good = server.sse("topic=load");
    good.read_opening();
    let mut slow = slow_subscriber(&server, "load");

    let count = events_to_overflow();
    let ids = publish_in_step(&server, &mut good, "load", count);
    let first = seq_of(&ids[0]);

    // The slow subscriber starts reading; a marker published now ends what it must see.
    let marker = server.publish(&json!({"topic": "load", "event": "marker"}));
    let last = seq_of(&marker[0]);
    assert_eq!(last, seq_of(ids.last().unwrap()) + 1);

    let mut expected = first; // the next sequence number not yet accounted for
    let mut pending_dropped = 0u64; // dropped notices since the last event
    let mut total_dropped = 0u64;
    let mut notices = 0;
    let mut events = 0;
    loop {
        let block = slow.next_event();
        match block.event.as_deref() {
            Some("dropped") => {
                assert_eq!(block.id, None, "{:?}", block.raw);
                let v = block.json();
                assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
                let n = v["dropped"].as_u64().expect("dropped count");
                assert!(n > 0, "{v}");
                pending_dropped += n;
                total_dropped += n;
                notices += 1;
            }
            Some("load") | Some("marker") => {
                let seq = seq_of(block.id.as_deref().expect("event id"));
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
            other => panic!("unexpected block {other:?}: {:?}", block.raw),
        }
    }
    assert_eq!(pending_dropped, 0);
    assert!(notices > 0, "the slow subscriber was never told of a drop");
    assert!(total_dropped > 0);
    assert_eq!(
        events + total_dropped,
        count as u64 + 1,
        "every event is either received or counted as dropped"
    );
    eprintln!("slow subscriber: {events} events, {total_dropped} dropped in {notices} notices");

    // The slow subscriber is still connected and now gets live events without loss.
    let live = server.publish(&json!({"topic": "load", "event": "live"}));
    let block = slow.next_event();
    assert_eq!(
        block.id.as_deref(),
        Some(live[0].as_str()),
        "{:?}",
        block.raw
    );
    assert_eq!(good.next_event().event.as_deref(), Some("marker"));
    assert_eq!(good.next_event().id.as_deref(), Some(live[0].as_str()));
    // The metrics count the same drops the subscriber was told of.
    let metrics = server.metrics();
    assert_eq!(metrics.dropped("queue_overflow"), total_dropped as f64);
    assert_eq!(metrics.dropped("slow_consumer"), 0.0);
}

#[test]
fn a_pipelining_client_that_never_reads_its_answers_is_cut_off() {
    // Responses are output too: a client that keeps sending requests without reading the
    // answers must not make the server queue without bound. It keeps writing until the server
    // cuts it off (a reset, since its requests are left unread); only that ends the loop.
    let server = backpressure_server("disconnect");
    let mut hog = client_with_small_rcvbuf(&server, SLOW_RCVBUF);
    let one = common::request_bytes("GET", "/", &[], b"");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 200).collect();
    let started = std::time::Instant::now();
    let mut written = 0usize;
    let error = loop {
        assert!(
            started.elapsed() < common::WAIT,
            "never cut off after {written} bytes of requests"
        );
        match std::io::Write::write_all(&mut hog.stream, &batch) {
            Ok(()) => written += batch.len(),
            Err(e) => break e,
        }
    };
    // A reset, not a write timeout: the server cut it off rather than stopped reading.
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "writing to the server: {error}"
    );
    // Everyone else is served.
    assert_eq!(server.get("/health").status, 200);
}
