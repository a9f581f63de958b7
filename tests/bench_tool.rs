//! `mcp-stream bench` measured against our own server (the real binary on 127.0.0.1, a port the
//! kernel picks): exact delivered counts on every transport and publisher, loss detected when
//! the server drops for a slow consumer, sane latency figures, the JSON and SVG outputs, the
//! baseline, and one-line option errors. Nothing here asserts speed.

mod common;

use common::load::{backpressure_server, events_to_overflow, PAYLOAD};
use common::{run_to_exit, TempFile, TestServer};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every run's hard stop, below the harness's bound on the process.
const DURATION: &str = "8";

/// Runs `bench --json` with `args` against `server`; asserts exit 0 and returns the report.
fn bench(server: &TestServer, args: &[&str]) -> Value {
    let url = format!("http://{}", server.addr);
    let mut all = vec!["bench", "--url", &url, "--json", "--duration", DURATION];
    all.extend_from_slice(args);
    bench_raw(&all)
}

fn bench_raw(args: &[&str]) -> Value {
    let out = run_to_exit(args, &[]);
    assert!(
        out.status.success(),
        "bench {args:?} failed ({:?}): {}",
        out.status,
        out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}): {:?}", out.stdout))
}

fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// Every copy arrived once, in order, and the latency figures make sense.
fn assert_exact(report: &Value, subscribers: u64, messages: u64) {
    assert_eq!(u(report, "connected"), subscribers, "{report}");
    assert_eq!(u(report, "connect_failures"), 0, "{report}");
    assert_eq!(u(report, "sent"), messages, "{report}");
    assert_eq!(u(report, "expected"), subscribers * messages, "{report}");
    assert_eq!(u(report, "delivered"), subscribers * messages, "{report}");
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "duplicates"), 0, "{report}");
    assert_eq!(u(report, "reordered"), 0, "{report}");
    assert_eq!(u(report, "publish_failures"), 0, "{report}");
    assert!(report["stopped_early"].is_null(), "{report}");
    assert_sane_latency(report);
}

/// Latencies a loopback server can give: at least a microsecond (no copy arrives before it is
/// sent), a p50 under a second; the tool's own load is reported.
fn assert_sane_latency(report: &Value) {
    for key in ["latency_ms", "latency_from_send_ms"] {
        let l = &report[key];
        let min = l["min"]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {report}"));
        let p50 = l["p50"].as_f64().unwrap();
        assert!(min >= 0.001, "{key}: a copy before its send? {l}");
        assert!(p50 < 1000.0, "{key}: p50 {p50} ms on loopback: {l}");
    }
    let curve = report["percentiles"].as_array().unwrap();
    assert!(curve.len() >= 2, "{report}");
    let busy = report["tool_busy_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&busy), "{report}");
}

#[test]
fn every_copy_arrives_exactly_once_over_sse() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "-n",
            "20",
            "--messages",
            "50",
            "--rate",
            "500",
            "--warmup",
            "0.1",
        ],
    );
    assert_exact(&r, 20, 50);
    assert_eq!(u(&r, "warmup_messages"), 50);
    assert_eq!(u(&r, "acknowledged"), 100);
    assert_eq!(r["transport"], "sse");
}

#[test]
fn every_copy_arrives_exactly_once_over_websocket_with_a_websocket_publisher() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "-n",
            "20",
            "--transport",
            "ws",
            "--publisher",
            "ws",
            "--messages",
            "50",
            "--rate",
            "500",
            "--warmup",
            "0",
        ],
    );
    assert_exact(&r, 20, 50);
    assert_eq!(u(&r, "acknowledged"), 50);
}

#[test]
fn a_mix_of_transports_with_the_pid_and_a_plot() {
    let server = TestServer::start();
    let plot = TempFile::new("plot.svg", "");
    let pid = server.pid().to_string();
    let r = bench(
        &server,
        &[
            "-n",
            "30",
            "--transport",
            "mix",
            "--messages",
            "40",
            "--rate",
            "400",
            "--warmup",
            "0",
            "--pid",
            &pid,
            "--plot",
            &plot.arg(),
        ],
    );
    assert_exact(&r, 30, 40);
    let rss = &r["rss_kib"];
    for k in ["before", "connected", "end"] {
        assert!(rss[k].as_u64().unwrap() > 0, "{r}");
    }
    assert!(rss["per_connection_bytes"].is_number(), "{r}");
    let svg = std::fs::read_to_string(&plot.path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("<path d=\"M"), "{svg}");

    // `bench plot` draws the curves of saved --json runs together.
    let saved = TempFile::new("run.json", &r.to_string());
    let combined = TempFile::new("combined.svg", "");
    let one = format!("one={}", saved.arg());
    let two = format!("two={}", saved.arg());
    let out = run_to_exit(&["bench", "plot", &combined.arg(), &one, &two], &[]);
    assert!(out.status.success(), "{out:?}");
    let svg = std::fs::read_to_string(&combined.path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">two<"), "{svg}");
    assert_eq!(svg.matches("<path ").count(), 2, "{svg}");
}

/// One subscriber reading and one stalled (it reads nothing while the messages go out) on a
/// server whose slow consumers get `policy`; enough messages to overflow the stalled one's kernel
/// buffers and server queue, at a rate the reading one keeps up with.
fn slow_consumer_run(policy: &str, transport: &str) -> Value {
    let server = backpressure_server(policy);
    let messages = events_to_overflow().to_string();
    let payload = PAYLOAD.to_string();
    let r = bench(
        &server,
        &[
            "-n",
            "2",
            "--transport",
            transport,
            "--stalled",
            "1",
            "--messages",
            &messages,
            "--payload",
            &payload,
            "--rate",
            "2000",
            "--warmup",
            "0",
        ],
    );
    assert!(u(&r, "lost") > 0, "nothing lost: {r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "reordered"), 0, "{r}");
    r
}

#[test]
fn loss_is_counted_when_the_server_drops_for_a_stalled_subscriber() {
    let r = slow_consumer_run("drop_oldest", "sse");
    // drop_oldest announces every gap: the loss we count is the loss the server reports.
    assert_eq!(u(&r, "lost"), u(&r, "server_dropped"), "{r}");
    assert_eq!(u(&r, "disconnected"), 0, "{r}");
}

#[test]
fn a_disconnected_slow_consumer_counts_as_loss() {
    let r = slow_consumer_run("disconnect", "ws");
    // The stalled one is disconnected; on a loaded machine the reading one may be too.
    assert!(u(&r, "disconnected") >= 1, "{r}");
    assert_eq!(u(&r, "stalled_disconnected"), 1, "{r}");
    assert_eq!(u(&r, "server_dropped"), 0, "{r}");
}

#[test]
fn the_baseline_needs_no_server() {
    let r = bench_raw(&[
        "bench",
        "--baseline",
        "--json",
        "--duration",
        DURATION,
        "-n",
        "10",
        "--transport",
        "mix",
        "--messages",
        "30",
        "--rate",
        "300",
        "--warmup",
        "0",
    ]);
    assert_eq!(r["target"], "baseline");
    assert_exact(&r, 10, 30);
}

#[test]
fn the_baseline_needs_about_n_descriptors_per_process() {
    // 40 subscribers and the 40 sockets writing to them would not fit under 64 in one process.
    let script = format!(
        "ulimit -n 64 && exec {} bench --baseline --json -n 40 --messages 10 --rate 200 --warmup 0 --duration 8",
        common::BIN
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&r, "connected"), 40, "{r}");
    assert_eq!(u(&r, "delivered"), 400, "{r}");
}

#[test]
fn the_human_summary_names_the_figures() {
    let server = TestServer::start();
    let url = format!("http://{}", server.addr);
    let out = run_to_exit(
        &[
            "bench",
            "--url",
            &url,
            "-n",
            "5",
            "--messages",
            "20",
            "--rate",
            "200",
            "--warmup",
            "0",
            "--duration",
            DURATION,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", out.stderr);
    for needle in [
        "100 delivered of 100 expected",
        "lost 0",
        "p99.9",
        "publisher slip",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} not in {}",
            out.stdout
        );
    }
    // stderr is not a terminal here: no progress line.
    assert_eq!(out.stderr, "");
}

#[test]
fn no_server_is_a_one_line_failure() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let out = run_to_exit(&["bench", "--url", &url, "-n", "2", "--duration", "5"], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("publisher"), "{out:?}");
}

#[test]
fn running_out_of_file_descriptors_says_what_to_do() {
    let server = TestServer::start();
    // A shell lowers the limit for the bench alone; it stops at the first EMFILE.
    let script = format!(
        "ulimit -n 64 && exec {} bench --url http://{} -n 200 --duration 8",
        common::BIN,
        server.addr
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("warning: the open-file limit is 64"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("out of file descriptors"), "{stderr}");
    assert!(last.contains("ulimit -n"), "{stderr}");
}

#[test]
fn bad_options_exit_2_with_one_line() {
    for args in [
        &["bench", "--rate", "0"][..],
        &["bench", "--transport", "udp"],
        &["bench", "--url", "ftp://x"],
        &["bench", "--nope"],
    ] {
        let out = run_to_exit(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("mcp-stream: bench: "), "{out:?}");
    }
    let help = run_to_exit(&["bench", "--help"], &[]);
    assert!(help.status.success());
    assert!(help.stdout.contains("--baseline") && help.stdout.contains("--plot"));
}

// ---------------------------------------------------------------------------------------------
// Misbehaving servers: std threads in this process, one per connection.

/// How a [`fake_server`] treats subscribers (publishes always get `202`).
#[derive(Clone, Copy)]
enum Fake {
    /// WebSocket: answers the `join` with `joined` and a close frame in one write.
    JoinedThenClose,
    /// SSE: a `200` head, then comment blocks as fast as the socket takes them; publishes:
    /// `202` answers the same way.
    Flood,
    /// SSE: relays each publish body as `data:`, `delay` after it arrived.
    Delay(Duration),
}

/// Reads until the end of a request head; the head, and any bytes after it.
fn read_head(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = c.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers pipelined publishes with 202 and hands each body to `on_body`.
fn serve_publishes(mut c: TcpStream, head: String, mut buf: Vec<u8>, on_body: impl Fn(Vec<u8>)) {
    let mut head = Some(head);
    let mut chunk = [0u8; 65536];
    loop {
        let h = match head.take() {
            Some(h) => h,
            None => match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(at) => {
                    let rest = buf.split_off(at + 4);
                    String::from_utf8_lossy(&std::mem::replace(&mut buf, rest)).into_owned()
                }
                None => match c.read(&mut chunk) {
                    Ok(n) if n > 0 => {
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                    _ => return,
                },
            },
        };
        let len: usize = h
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < len {
            match c.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let rest = buf.split_off(len);
        on_body(std::mem::replace(&mut buf, rest));
        if c.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// A server on 127.0.0.1 that behaves as `mode` says; its URL.
fn fake_server(mode: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let subs: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let delivery = subs.clone();
    thread::spawn(move || {
        for (at, block) in rx {
            thread::sleep(at.saturating_duration_since(Instant::now()));
            for s in delivery.lock().unwrap().iter_mut() {
                let _ = s.write_all(&block);
            }
        }
    });
    thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let (subs, tx) = (subs.clone(), tx.clone());
            thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let Some((head, rest)) = read_head(&mut c) else {
                    return;
                };
                if head.starts_with("POST") && matches!(mode, Fake::Flood) {
                    // Answers, more of them than anyone asked for, as fast as they go.
                    let blob = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".repeat(20_000);
                    while c.write_all(&blob).is_ok() {}
                    return;
                }
                if head.starts_with("POST") {
                    return serve_publishes(c, head, rest, |body| {
                        if let Fake::Delay(d) = mode {
                            let mut block = b"data: ".to_vec();
                            block.extend(body);
                            block.extend(b"\n\n");
                            let _ = tx.send((Instant::now() + d, block));
                        }
                    });
                }
                match mode {
                    Fake::JoinedThenClose => {
                        let _ = c.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        );
                        let _ = c.read(&mut [0u8; 1024]); // the join
                        let joined = br#"{"type":"joined","room":"bench"}"#;
                        let mut out = vec![0x81, joined.len() as u8];
                        out.extend_from_slice(joined);
                        out.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]); // close 1000
                        let _ = c.write_all(&out);
                        thread::sleep(Duration::from_secs(2));
                    }
                    Fake::Flood => {
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
                        );
                        let blob = b": x\n\n".repeat(100_000);
                        while c.write_all(&blob).is_ok() {}
                    }
                    Fake::Delay(_) => {
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
                        );
                        subs.lock().unwrap().push(c);
                    }
                }
            });
        }
    });
    url
}

fn bench_at(url: &str, args: &[&str]) -> common::RunOutput {
    let mut all = vec!["bench", "--url", url, "--json"];
    all.extend_from_slice(args);
    run_to_exit(&all, &[])
}

#[test]
fn a_subscriber_that_joins_and_is_closed_in_one_read_ends_the_connecting_stage() {
    let url = fake_server(Fake::JoinedThenClose);
    let out = bench_at(
        &url,
        &[
            "-n",
            "3",
            "--transport",
            "ws",
            "--messages",
            "5",
            "--rate",
            "100",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(u(&r, "connected"), 3, "{r}");
    assert_eq!(u(&r, "disconnected"), 3, "{r}");
    assert_eq!(u(&r, "subscribers_counted"), 0, "{r}");
    assert!(r["stopped_early"].is_null(), "{r}");
}

#[test]
fn a_server_flooding_bytes_cannot_hold_the_tool_past_its_duration() {
    let url = fake_server(Fake::Flood);
    let started = Instant::now();
    let out = bench_at(
        &url,
        &[
            "-n",
            "2",
            "--messages",
            "5",
            "--rate",
            "100",
            "--warmup",
            "0",
            "--drain",
            "1",
            "--duration",
            "4",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "{out:?}");
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(u(&r, "expected"), 10, "{r}");
    assert_eq!(u(&r, "delivered"), 0, "{r}");
}

#[test]
fn a_run_stopped_before_its_first_message_exits_1_with_the_reason() {
    // A listener nobody accepts from: connects complete in the backlog, no answer ever comes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let out = bench_at(&url, &["-n", "2", "--duration", "1.5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("reached while connecting"), "{out:?}");
}

#[test]
fn latency_is_the_servers_delay() {
    const D: f64 = 50.0; // ms
    let url = fake_server(Fake::Delay(Duration::from_millis(50)));
    let out = bench_at(
        &url,
        &[
            "-n",
            "3",
            "--messages",
            "40",
            "--rate",
            "100",
            "--warmup",
            "0",
            "--duration",
            "8",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(u(&r, "delivered"), 120, "{r}");
    for key in ["latency_ms", "latency_from_send_ms"] {
        let l = &r[key];
        let (min, p50) = (l["min"].as_f64().unwrap(), l["p50"].as_f64().unwrap());
        assert!(min >= D, "{key}: {l}");
        assert!(p50 <= D + 30.0, "{key}: {l}");
    }
}
