//! Micro-benchmarks of the hot paths of the sans-IO core: request-head parsing, the SSE and
//! WebSocket encodings of a published event, flushing a write queue of shared events, and the
//! fan-out of one publish to N in-process subscribers (queueing and "writing" every copy, with
//! no sockets).
//!
//! `cargo bench --bench hot_paths`; compare a change with `-- --save-baseline before` and
//! `-- --baseline before`.

use std::hint::black_box;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_stream::config::Config;
use mcp_stream::proto::engine::{Action, Engine};
use mcp_stream::proto::http::parse_head;
use mcp_stream::proto::hub::{Event, EventId};
use mcp_stream::proto::queue::{Encoding, Origin, Policy, WriteQueue};
use mcp_stream::proto::ConnId;

const REQUEST: &[u8] =
    b"GET /stream/sse?topic=news&event=update HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
User-Agent: bench/1.0\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\
Last-Event-ID: 5f3a9c1e-42\r\n\r\n";

fn payload() -> serde_json::Value {
    // About 200 bytes of JSON, as in the latency matrix.
    serde_json::json!({ "seq": 12345, "sent_ns": 1_700_000_000_000_000_000u64, "pad": "x".repeat(150) })
}

fn http_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    group.bench_function("parse_head", |b| {
        b.iter(|| parse_head(black_box(REQUEST), 64, 16384).unwrap().unwrap())
    });
    group.finish();
}

fn event(data: &str, now: Instant) -> Event {
    Event::new(
        EventId { epoch: 1, seq: 2 },
        "news".into(),
        "update",
        data,
        None,
        now,
    )
}

fn encode(c: &mut Criterion) {
    let data = payload().to_string();
    let now = Instant::now();
    c.bench_function("sse/encode_event", |b| {
        b.iter(|| event(black_box(&data), now).sse_bytes().len())
    });
    c.bench_function("ws/encode_event", |b| {
        b.iter(|| event(black_box(&data), now).ws_frame().len())
    });
}

/// Queues 64 shared events and writes them all out, as a socket that takes 64 slices a write.
fn queue_flush(c: &mut Criterion) {
    const EVENTS: u64 = 64;
    let shared = std::sync::Arc::new(event(&payload().to_string(), Instant::now()));
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("push_and_flush_64", |b| {
        let mut queue = WriteQueue::default();
        b.iter(|| {
            for _ in 0..EVENTS {
                let pushed = queue.push_event(
                    shared.clone(),
                    Encoding::Sse,
                    Origin::Live,
                    1 << 20,
                    Policy::Disconnect,
                    |_| Vec::new(),
                );
                black_box(pushed.is_ok());
            }
            while !queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = queue.fill_slices(&mut slices);
                let bytes: usize = slices[..n].iter().map(|s| s.len()).sum();
                queue.consume(bytes, |event, _| {
                    black_box(event);
                });
            }
        })
    });
    group.finish();
}

/// Writes every pending byte of every connection with output, as a socket that takes all, at
/// `now` (the driver reads the clock after each write; that read is not the core's cost).
fn drain(engine: &mut Engine, now: Instant) -> usize {
    let mut written = 0;
    while let Some((id, action)) = engine.poll_action() {
        if action != Action::Write {
            continue;
        }
        loop {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = engine.output(id, &mut slices);
            if n == 0 {
                break;
            }
            let bytes: usize = slices[..n].iter().map(|s| s.len()).sum();
            engine.consume_output(now, id, bytes);
            written += bytes;
        }
    }
    written
}

fn subscribed_engine(subscribers: usize) -> Engine {
    let mut config = Config {
        max_connections: subscribers + 1,
        ..Config::default()
    };
    config.sse.max_connections = subscribers + 1;
    let mut engine = Engine::new(config, 1);
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let request = b"GET /stream/sse?topic=news HTTP/1.1\r\nHost: x\r\n\r\n";
    let ids: Vec<ConnId> = (0..subscribers)
        .map(|_| engine.accept(now, peer).expect("room for the subscriber"))
        .collect();
    for id in ids {
        engine.handle_input(now, id, request);
    }
    drain(&mut engine, now);
    assert_eq!(engine.counters().sse_streams, subscribers);
    engine
}

fn fan_out(c: &mut Criterion) {
    let data = payload();
    let mut group = c.benchmark_group("fan_out");
    for subscribers in [1usize, 100, 1000, 10_000] {
        let mut engine = subscribed_engine(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("publish_and_write", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let now = Instant::now();
                    engine.publish(now, "news", None, black_box(&data)).unwrap();
                    drain(&mut engine, now)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, http_parse, encode, queue_flush, fan_out);
criterion_main!(benches);
