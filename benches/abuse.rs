//! The server's memory under abuse: the release binary on 127.0.0.1 (port 0) gets the 10,000
//! malformed requests of `tests/abuse.rs` (the same seed, so the same bytes) four times, and
//! its resident memory is printed before, after each replay, and once every connection has
//! closed; with the default config, then with everything the requests can make it keep held
//! small (topics, history, MCP sessions), then with short connection deadlines too. Growth that
//! goes on replay after replay in the last would be a leak.
//!
//! `cargo bench --bench abuse`

#[allow(dead_code)] // the test file's helpers that only its tests use
#[path = "../tests/abuse.rs"]
mod abuse;
mod common;

use std::time::Instant;

use abuse::{cases, health, publish, replay, Binary};

/// Client threads: enough to keep many connections open at once on 2 cores.
const THREADS: usize = 8;
/// Replays of the same requests: growth that goes on round after round would be a leak.
const ROUNDS: usize = 4;

/// Everything the requests can make the server keep (topics and their history, MCP sessions)
/// held small.
const SMALL_STATE: &str = r#"{"streaming":{"websocket":{"message_history":4},"limits":{"max_topics":16}},"mcp":{"max_sessions":16,"session_idle_secs":1}}"#;
/// The same with short connection deadlines, so that nothing a closed connection leaves behind
/// (a timer entry until its deadline, at most until the heap is compacted) outlives a replay:
/// what grows past the first replays would be a leak.
const SMALL_STATE_SHORT_DEADLINES: &str = r#"{"streaming":{"websocket":{"message_history":4},"limits":{"max_topics":16,"head_timeout_ms":100,"body_timeout_ms":100,"idle_timeout_secs":1}},"mcp":{"max_sessions":16,"session_idle_secs":1}}"#;

fn main() {
    run("defaults (as tests/abuse.rs)", None);
    run(
        &format!("state held small: {SMALL_STATE}"),
        Some(SMALL_STATE),
    );
    run(
        &format!("state held small, short deadlines: {SMALL_STATE_SHORT_DEADLINES}"),
        Some(SMALL_STATE_SHORT_DEADLINES),
    );
}

fn run(label: &str, config: Option<&str>) {
    println!("server with {label}");
    let server = Binary::start_with(config);
    let pid = server.child.id();
    let fds = server.open_fds();
    let before = common::rss_kib(pid);
    let connections = cases::connections().len();
    println!(
        "abuse: {} malformed requests over {connections} connections (seed {:#x}), {THREADS} client threads",
        cases::COUNT,
        cases::SEED
    );
    println!("  RSS before               {before:>8} KiB   ({fds} descriptors open)");
    let mut last = before;
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let answered = replay(server.addr, THREADS);
        let elapsed = started.elapsed();
        let rss = common::rss_kib(pid);
        let open = server.wait_fds_at_most(fds);
        let settled = common::rss_kib(pid);
        println!(
            "  RSS after replay {round}       {rss:>8} KiB   ({:+} KiB; {answered} connections answered, {:.2} s, {:.0} requests/s)",
            rss as i64 - last as i64,
            elapsed.as_secs_f64(),
            cases::COUNT as f64 / elapsed.as_secs_f64(),
        );
        println!("  RSS once all closed      {settled:>8} KiB   ({open} descriptors open)");
        last = settled;
    }
    let status = health(server.addr);
    println!(
        "  then: /health {:?}, publish {:?}",
        status.lines().next().unwrap_or(""),
        publish(server.addr)
    );
}
