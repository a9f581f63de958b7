//! `mcp-stream bench` measured against our own server (the real binary on 127.0.0.1, a port the
//! kernel picks): exact delivered counts on every transport and publisher, loss detected when
//! the server drops for a slow consumer, sane latency figures, the JSON and SVG outputs, the
//! baseline, and one-line option errors. Nothing here asserts speed.

mod common;

use common::load::{backpressure_server, events_to_overflow, PAYLOAD};
use common::{run_to_exit, TempFile, TestServer};
use serde_json::Value;

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

/// 0 < min ≤ p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max < the run's duration, in both latency figures.
fn assert_sane_latency(report: &Value) {
    let elapsed_ms = report["elapsed_secs"].as_f64().unwrap() * 1000.0;
    for key in ["latency_ms", "latency_from_send_ms"] {
        let l = &report[key];
        let q: Vec<f64> = ["min", "p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|k| {
                l[k].as_f64()
                    .unwrap_or_else(|| panic!("{key}.{k} in {report}"))
            })
            .collect();
        assert!(q[0] > 0.0, "{key}: {l}");
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{key} not rising: {l}");
        assert!(
            q[5] < elapsed_ms,
            "{key}: max {} ≥ the run's {elapsed_ms} ms",
            q[5]
        );
    }
    // Measured from the intended send time, a copy can only look later than from the send.
    let (intended, sent) = (&report["latency_ms"], &report["latency_from_send_ms"]);
    assert!(intended["max"].as_f64() >= sent["max"].as_f64(), "{report}");
    let curve = report["percentiles"].as_array().unwrap();
    assert!(curve.len() >= 2, "{report}");
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
    assert_eq!(u(&r, "delivered") + u(&r, "lost"), u(&r, "expected"), "{r}");
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
    assert_eq!(u(&r, "disconnected"), 1, "{r}");
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
