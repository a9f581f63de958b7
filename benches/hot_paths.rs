//! Micro-benchmarks of the hot paths of the sans-IO core: request-head parsing, SSE encoding
//! of a published event, and the fan-out of one publish to N in-process subscribers (queueing
//! and "writing" every copy, with no sockets).
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

fn sse_encode(c: &mut Criterion) {
    let data = payload().to_string();
    let now = Instant::now();
    c.bench_function("sse/encode_event", |b| {
        b.iter(|| {
            Event::new(
                EventId { epoch: 1, seq: 2 },
                "news".into(),
                "update",
                black_box(&data),
                None,
                now,
            )
            .sse_bytes()
            .len()
        })
    });
}

/// Writes every pending byte of every connection with output, as a socket that takes all.
fn drain(engine: &mut Engine) -> usize {
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
            engine.consume_output(Instant::now(), id, bytes);
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
    drain(&mut engine);
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
                    engine
                        .publish(Instant::now(), "news", None, black_box(&data))
                        .unwrap();
                    drain(&mut engine)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, http_parse, sse_encode, fan_out);
criterion_main!(benches);
