//! The stdio gateway (`mcp.stdio`) end to end: the real binary on 127.0.0.1, and as the MCP
//! server behind it `tests/fixtures/gateway_child.py`, a stdio MCP server in plain Python
//! whose tools make it do what a test needs (progress, its own requests, garbage, crashes,
//! silence, stubbornness).
//!
//! - every transport: `initialize` and calls are answered by the session's child, progress goes
//!   on the request's stream in order, the child's other messages on the session's
//!   server-to-client stream, and its own requests reach the client whose answers go back;
//! - a child that exits, is killed or closes its output fails the requests in flight and ends
//!   the session; one that cannot be started fails `initialize` with the command's name;
//! - lines that are not JSON-RPC or are too long are skipped and logged;
//! - a request never answered times out, the child is told, the session goes on;
//! - the session's end (DELETE, the client leaving, idleness, SIGTERM to the server) ends the
//!   child: input closed, then SIGTERM, then SIGKILL, and every child is reaped;
//! - `mcp.max_sessions`, and one child per session.
//!
//! Processes are watched in `/proc`: a child is gone when its entry is (it was reaped). Every
//! wait is bounded by [`WAIT`].

mod common;

use std::time::{Duration, Instant};

use common::gateway::{
    call, children_of, error_response, expect_end, expect_message, initialize_message, pid_of,
    proc_info, progress, python, read_to_end, stdio, text_of, text_result, wait_gone, Gateway,
    Http, Legacy, McpWs, Records,
};
use common::mcp::TRICKY;
use common::{Client, WAIT};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

/// A config whose MCP sessions are served by `stdio`, with more `mcp` keys.
fn config(stdio: Value, mcp: Value) -> Value {
    let mut m = json!({"stdio": stdio});
    if let Value::Object(extra) = mcp {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    json!({"mcp": m})
}

/// The first eight characters of a session id: how the log names a session.
fn short(session: &str) -> &str {
    &session[..8]
}

/// The answer text of a tool that answers JSON, parsed.
fn json_text(v: &Value) -> Value {
    let text = text_of(v);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The fixture's `pid` over a transport that answers in order.
fn pid_from(answer: &Value) -> u32 {
    pid_of(answer)["pid"].as_u64().expect("pid") as u32
}

/// Asserts that `pid` is the server's own child, leading its own process group.
fn assert_child_of(server: &Gateway, pid: u32) {
    let p = proc_info(pid).unwrap_or_else(|| panic!("no process {pid}"));
    assert_eq!(p.ppid, server.pid(), "{p:?}");
    assert_eq!(
        p.pgrp, pid,
        "a child leads a process group of its own: {p:?}"
    );
}

/// Kills a process on drop if it is still there (for a test that fails while a process of
/// ours runs where the server would no longer reap it).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let (Some(_), Some(pid)) = (proc_info(self.0), Pid::from_raw(self.0 as i32)) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

const NOT_INITIALIZED: &str = "the session is not initialized: send initialize first";

// ---------------------------------------------------------------------------------------------
// Happy paths

#[test]
fn streamable_http_initialize_calls_progress_and_notifications_are_the_childs() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env()})),
        json!({}),
    ));
    let s = Http::initialize(server.addr);
    assert!(
        s.session.len() == 32 && s.session.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        s.session
    );
    let init = &s.init["result"];
    assert_eq!(
        init["serverInfo"],
        json!({"name": "gateway-fixture", "version": "1.2.3"}),
        "{init}"
    );
    // The child chose the revision (the client asked for 2025-11-25): it is the session's.
    assert_eq!(init["protocolVersion"], "2025-06-18", "{init}");
    let pid = s.child_pid(json!(1));
    assert_eq!(init["instructions"], format!("mode=basic pid={pid}"));
    assert_child_of(&server, pid);
    assert_eq!(
        s.post_with(
            &call(json!(2), "echo", json!({"text": "v"}), None),
            &[("MCP-Protocol-Version", "2025-06-18")]
        )
        .status,
        200
    );
    let r = s.post_with(
        &call(json!(2), "echo", json!({"text": "v"}), None),
        &[("MCP-Protocol-Version", "2025-11-25")],
    );
    assert_eq!(
        r.assert_error(400),
        "MCP-Protocol-Version is not the one initialize negotiated"
    );

    let tools = s.answer(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ask") && names.contains(&"garbage"),
        "{names:?}"
    );

    // Escapes, control characters and non-ASCII go both ways intact.
    let v = s.answer(&call(json!(4), "echo", json!({"text": TRICKY}), None));
    assert_eq!(v, text_result(&json!(4), TRICKY));

    let mut listener = s.listen();
    // Progress goes on the request's stream, in order, before the answer; then it ends.
    let token = json!("tok-5");
    let got = s.request(&call(
        json!(5),
        "progress",
        json!({"n": 4}),
        Some(token.clone()),
    ));
    let mut want: Vec<Value> = (1..=4).map(|k| progress(&token, k, 4)).collect();
    want.push(text_result(&json!(5), "done 4"));
    assert_eq!(got, want);

    // A message of the child that answers no request goes on the GET stream.
    let v = s.answer(&call(json!(6), "notify", json!({"text": "hello"}), None));
    assert_eq!(v, text_result(&json!(6), "notified"));
    assert_eq!(
        expect_message(&mut listener),
        json!({"jsonrpc": "2.0", "method": "notifications/message",
               "params": {"level": "info", "logger": "fixture", "data": "hello"}})
    );

    // The child's stderr is logged, by line, with the session.
    server.wait_log(&[
        "INFO",
        &format!(
            "MCP server of session {}: fixture basic started as pid {pid}",
            short(&s.session)
        ),
    ]);
    assert_eq!(records.of(pid), ["start"]);
}

#[test]
fn legacy_sse_initialize_calls_progress_and_the_childs_requests_go_through_the_child() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let mut l = Legacy::open(server.addr);
    // No child before initialize: a request is refused.
    let v = l.answer(&call(json!(1), "echo", json!({"text": "x"}), None));
    assert_eq!(v, error_response(&json!(1), -32600, NOT_INITIALIZED));
    assert!(server.children().is_empty(), "{:?}", server.children());

    let init = l.initialize();
    assert_eq!(
        init["result"]["serverInfo"]["name"], "gateway-fixture",
        "{init}"
    );
    let pid = pid_from(&l.answer(&call(json!(2), "pid", json!({}), None)));
    assert_child_of(&server, pid);

    l.send(&call(json!(3), "progress", json!({"n": 3}), Some(json!(7))));
    for k in 1..=3 {
        assert_eq!(l.next(), progress(&json!(7), k, 3));
    }
    assert_eq!(l.next(), text_result(&json!(3), "done 3"));

    // The child's notification and then its answer, on the one stream, in its order.
    l.send(&call(json!(4), "notify", json!({"text": "legacy"}), None));
    assert_eq!(l.next()["params"]["data"], "legacy");
    assert_eq!(l.next(), text_result(&json!(4), "notified"));

    // The child's own request reaches the client; the client's answer reaches the child.
    l.send(&call(json!(5), "ask", json!({}), None));
    assert_eq!(
        l.next(),
        json!({"jsonrpc": "2.0", "id": "ask-1", "method": "roots/list"})
    );
    let answer = json!({"jsonrpc": "2.0", "id": "ask-1",
                        "result": {"roots": [{"uri": "file:///legacy", "name": "legacy"}]}});
    l.send(&answer);
    assert_eq!(json_text(&l.next()), answer);
}

#[test]
fn websocket_initialize_calls_progress_and_the_childs_requests_go_through_the_child() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let mut ws = McpWs::connect(server.addr);
    let v = ws.answer(&call(json!(1), "echo", json!({"text": "x"}), None));
    assert_eq!(v, error_response(&json!(1), -32600, NOT_INITIALIZED));
    assert!(server.children().is_empty(), "{:?}", server.children());

    let init = ws.initialize();
    assert_eq!(
        init["result"]["serverInfo"]["name"], "gateway-fixture",
        "{init}"
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    let pid = pid_from(&ws.answer(&call(json!(2), "pid", json!({}), None)));
    assert_child_of(&server, pid);

    ws.send(&call(
        json!(3),
        "progress",
        json!({"n": 3}),
        Some(json!("w")),
    ));
    for k in 1..=3 {
        assert_eq!(ws.next(), progress(&json!("w"), k, 3));
    }
    assert_eq!(ws.next(), text_result(&json!(3), "done 3"));

    ws.send(&call(json!(4), "notify", json!({"text": "ws"}), None));
    assert_eq!(ws.next()["params"]["data"], "ws");
    assert_eq!(ws.next(), text_result(&json!(4), "notified"));

    ws.send(&call(
        json!(5),
        "ask",
        json!({"method": "sampling/createMessage", "params": {"maxTokens": 5, "messages": []}}),
        None,
    ));
    assert_eq!(
        ws.next(),
        json!({"jsonrpc": "2.0", "id": "ask-1", "method": "sampling/createMessage",
               "params": {"maxTokens": 5, "messages": []}})
    );
    let answer = json!({"jsonrpc": "2.0", "id": "ask-1",
                        "result": {"role": "assistant", "content": {"type": "text", "text": "hi"},
                                   "model": "m"}});
    ws.send(&answer);
    assert_eq!(json_text(&ws.next()), answer);
    // Still the same child, and it kept the answer.
    let kept = json_text(&ws.answer(&call(json!(6), "responses", json!({}), None)));
    assert_eq!(kept, json!([answer]));
    assert_eq!(
        pid_from(&ws.answer(&call(json!(7), "pid", json!({}), None))),
        pid
    );
}

#[test]
fn streamable_http_the_childs_requests_reach_the_get_stream_and_answers_go_back() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let s = Http::initialize(server.addr);
    let mut listener = s.listen();

    let mut asking = s.open(&call(json!(1), "ask", json!({}), None));
    assert_eq!(
        expect_message(&mut listener),
        json!({"jsonrpc": "2.0", "id": "ask-1", "method": "roots/list"})
    );
    let roots = json!({"jsonrpc": "2.0", "id": "ask-1",
                       "result": {"roots": [{"uri": "file:///work", "name": "work"}]}});
    let r = s.post(&roots);
    assert_eq!(r.status, 202, "{r:?}");
    let got = read_to_end(&mut asking);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], 1, "{got:?}");
    assert_eq!(json_text(&got[0]), roots);

    // An error answer goes back as well.
    let mut asking = s.open(&call(
        json!(2),
        "ask",
        json!({"method": "sampling/createMessage", "params": {"maxTokens": 1, "messages": []}}),
        None,
    ));
    let request = expect_message(&mut listener);
    assert_eq!(request["id"], "ask-2", "{request}");
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    let refusal = json!({"jsonrpc": "2.0", "id": "ask-2",
                         "error": {"code": -1, "message": "the user declined"}});
    assert_eq!(s.post(&refusal).status, 202);
    let got = read_to_end(&mut asking);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(json_text(&got[0]), refusal);

    // A later call shows the child holds both answers.
    let kept = json_text(&s.answer(&call(json!(3), "responses", json!({}), None)));
    assert_eq!(kept, json!([roots, refusal]));

    // In a session with no GET stream, the child's request goes on the stream of the request
    // that is open.
    let t = Http::initialize(server.addr);
    let mut asking = t.open(&call(json!(1), "ask", json!({}), None));
    assert_eq!(
        expect_message(&mut asking),
        json!({"jsonrpc": "2.0", "id": "ask-1", "method": "roots/list"})
    );
    let roots = json!({"jsonrpc": "2.0", "id": "ask-1", "result": {"roots": []}});
    assert_eq!(t.post(&roots).status, 202);
    let got = read_to_end(&mut asking);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(json_text(&got[0]), roots);
}

#[test]
fn streamable_http_with_its_get_stream_gone_the_childs_request_goes_on_an_open_request_stream() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let s = Http::initialize(server.addr);
    // The client opens the GET stream, gets no event on it, and goes: it has no event id to
    // resume that stream with.
    drop(s.listen());
    // The server has seen that connection end before the child can ask anything: the child
    // asks only once it has read the request below, which comes on a connection made after.
    let mut asking = s.open(&call(json!(1), "ask", json!({}), None));
    assert_eq!(
        expect_message(&mut asking),
        json!({"jsonrpc": "2.0", "id": "ask-1", "method": "roots/list"}),
        "the child's request must reach the client on a stream that is open"
    );
    let roots = json!({"jsonrpc": "2.0", "id": "ask-1", "result": {"roots": []}});
    assert_eq!(s.post(&roots).status, 202);
    let got = read_to_end(&mut asking);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(json_text(&got[0]), roots);
}

// ---------------------------------------------------------------------------------------------
// Children that go away

#[test]
fn a_child_that_exits_mid_call_fails_the_call_and_ends_the_session() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let s = Http::initialize(server.addr);
    let pid = s.child_pid(json!(1));
    let mut listener = s.listen();
    let token = json!("c");
    let got = s.request(&call(
        json!(2),
        "crash",
        json!({"status": 3}),
        Some(token.clone()),
    ));
    assert_eq!(
        got,
        [
            progress(&token, 1, 2),
            error_response(&json!(2), -32603, "the MCP server exited with status 3"),
        ]
    );
    expect_end(&mut listener);
    let r = s.post(&call(json!(3), "echo", json!({"text": "x"}), None));
    assert_eq!(r.assert_error(404), "unknown session");
    wait_gone(pid);
    server.wait_no_zombies();
    server.wait_no_children();
    server.wait_log(&[
        "WARN",
        &format!(
            "MCP server of session {}: exited with status 3; ending the session",
            short(&s.session)
        ),
    ]);
    // The server goes on.
    let t = Http::initialize(server.addr);
    assert_ne!(t.child_pid(json!(1)), pid);
}

#[test]
fn every_crash_is_reported_with_its_exit_status_and_its_last_words_on_stderr() {
    // The same crash, many times: how the server learns of an exit must not depend on which of
    // the child's pipes it happens to read first.
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let mut wrong = Vec::new();
    let mut sessions = Vec::new();
    for status in 1..=50 {
        let s = Http::initialize(server.addr);
        let got = s.request(&call(
            json!(1),
            "crash",
            json!({"status": status}),
            Some(json!(status)),
        ));
        let want = error_response(
            &json!(1),
            -32603,
            &format!("the MCP server exited with status {status}"),
        );
        if got != [progress(&json!(status), 1, 2), want] {
            wrong.push(format!("status {status}: {got:?}"));
        }
        sessions.push((status, s.session));
    }
    // What a child wrote on stderr just before it exited is logged: often why it crashed.
    let said = |status: i32, session: &str| {
        let line = format!(
            "MCP server of session {}: last words: exiting with status {status}",
            short(session)
        );
        server.log().contains(&line)
    };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !sessions.iter().all(|(k, s)| said(*k, s)) {
        std::thread::sleep(Duration::from_millis(20)); // polling a condition, with a bound
    }
    let unsaid: Vec<i32> = sessions
        .iter()
        .filter(|(k, s)| !said(*k, s))
        .map(|(k, _)| *k)
        .collect();
    server.wait_no_children();
    assert!(
        wrong.is_empty() && unsaid.is_empty(),
        "{} of 50 crashes got another error: {wrong:#?}\n\
         {} of 50 children's last stderr line was not logged: statuses {unsaid:?}",
        wrong.len(),
        unsaid.len()
    );
}

#[test]
fn websocket_a_child_killed_by_a_signal_fails_the_call_and_closes_with_1011() {
    let server = Gateway::start(config(stdio("basic", json!({})), json!({})));
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let pid = pid_from(&ws.answer(&call(json!(1), "pid", json!({}), None)));
    ws.send(&call(json!(2), "kill", json!({}), Some(json!(0))));
    assert_eq!(ws.next(), progress(&json!(0), 1, 2));
    assert_eq!(
        ws.next(),
        error_response(&json!(2), -32603, "the MCP server was killed by signal 9")
    );
    assert_eq!(ws.expect_close(), (1011, "MCP server exited".to_string()));
    wait_gone(pid);
    server.wait_no_zombies();
    server.wait_no_children();
}

#[test]
fn legacy_sse_a_child_that_closes_its_output_fails_the_call_and_ends_the_stream() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env()})),
        json!({}),
    ));
    let mut l = Legacy::open(server.addr);
    l.initialize();
    let pid = pid_from(&l.answer(&call(json!(1), "pid", json!({}), None)));
    l.send(&call(json!(2), "close_stdout", json!({}), None));
    assert_eq!(
        l.next(),
        error_response(&json!(2), -32603, "the MCP server closed its output")
    );
    assert_eq!(l.try_next(), None, "the stream ends with the session");
    let r = l.post(&call(json!(3), "echo", json!({"text": "x"}), None));
    assert_eq!(r.assert_error(404), "unknown session");
    // It was still running: ending the session closed its input, and it left on that.
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof"]);
    server.wait_no_children();
}

#[test]
fn a_child_that_cannot_start_fails_initialize_naming_the_command() {
    let server = Gateway::start(config(
        json!({"command": "/nonexistent/mcp-server", "args": ["--flag", "x y"]}),
        json!({}),
    ));
    let want = error_response(
        &json!(0),
        -32603,
        "the MCP server could not be started (`/nonexistent/mcp-server --flag x y`): \
         No such file or directory (os error 2)",
    );
    // Streamable HTTP: the error on the initialize stream, and the session is gone.
    let (session, got) = Http::try_initialize(server.addr).expect("a stream");
    assert_eq!(got, std::slice::from_ref(&want));
    let s = Http {
        addr: server.addr,
        session,
        init: Value::Null,
    };
    let r = s.post(&call(json!(1), "echo", json!({}), None));
    assert_eq!(r.assert_error(404), "unknown session");
    // WebSocket: the error, then the socket closes.
    let mut ws = McpWs::connect(server.addr);
    ws.send(&initialize_message(json!(0), "2025-11-25"));
    assert_eq!(ws.next(), want);
    assert_eq!(ws.expect_close(), (1011, "MCP server exited".to_string()));
    // Legacy: the error, then the stream ends.
    let mut l = Legacy::open(server.addr);
    l.send(&initialize_message(json!(0), "2024-11-05"));
    assert_eq!(l.next(), want);
    assert_eq!(l.try_next(), None);

    server.wait_log(&[
        "WARN",
        "could not be started (`/nonexistent/mcp-server --flag x y`)",
    ]);
    assert!(server.children().is_empty(), "{:?}", server.children());
    assert_eq!(
        Client::connect(server.addr)
            .request("GET", "/health", &[], b"")
            .status,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// What the child writes

#[test]
fn lines_that_are_not_json_rpc_or_too_long_are_skipped_and_logged() {
    let server = Gateway::start(json!({
        "streaming": {"limits": {"max_body_bytes": 4096}},
        "mcp": {"stdio": stdio("noisy", json!({}))},
    }));
    // Garbage around the answer to initialize is skipped too.
    let s = Http::initialize(server.addr);
    assert_eq!(s.init["result"]["serverInfo"]["name"], "gateway-fixture");
    let token = json!("g");
    let got = s.request(&call(
        json!(1),
        "garbage",
        json!({"size": 100_000}),
        Some(token.clone()),
    ));
    // Exactly the valid messages (the one with a carriage return among its tokens too), in
    // order; not the oversized progress 99.
    assert_eq!(
        got,
        [
            progress(&token, 1, 3),
            progress(&token, 2, 3),
            progress(&token, 3, 3),
            text_result(&json!(1), "survived"),
        ]
    );
    let session = format!("MCP server of session {}:", short(&s.session));
    for what in [
        "skipped an output line that is not JSON (",
        "this line is not JSON",
        "not UTF-8",
        "skipped an output line that is not JSON-RPC: a JSON-RPC message must be an object",
        "skipped an output line that is not JSON-RPC: \"jsonrpc\" must be \"2.0\"",
        "skipped an output line of 100000 bytes (more than limits.max_body_bytes)",
        "starting up...",
        "ready!",
    ] {
        server.wait_log(&["WARN", &session, what]);
    }
    server.wait_log(&["INFO", &session, "(a stderr line of 10000 bytes)"]);
    server.wait_log(&["INFO", &session, "garbage written"]);
    // The session and the server go on.
    let v = s.answer(&call(json!(2), "echo", json!({"text": "after"}), None));
    assert_eq!(v, text_result(&json!(2), "after"));
    assert_eq!(
        Client::connect(server.addr)
            .request("GET", "/health", &[], b"")
            .status,
        200
    );
}

#[test]
fn a_line_of_exactly_max_body_bytes_is_taken_and_one_byte_more_is_not() {
    let server = Gateway::start(json!({
        "streaming": {"limits": {"max_body_bytes": 4096}},
        "mcp": {"stdio": stdio("basic", json!({}))},
    }));
    let s = Http::initialize(server.addr);
    for (id, size, taken) in [(1, 4096, true), (2, 4097, false)] {
        let got = s.request(&call(
            json!(id),
            "sized",
            json!({"size": size}),
            Some(json!(id)),
        ));
        let answer = text_result(&json!(id), &format!("sent {size}"));
        if taken {
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[0]["params"]["progress"], 1, "{}", got[0]);
            assert_eq!(got[0].to_string().len(), size, "{}", got[0]);
            assert_eq!(got[1], answer);
        } else {
            assert_eq!(got, [answer]);
        }
    }
    server.wait_log(&["WARN", "skipped an output line of 4097 bytes"]);
}

// ---------------------------------------------------------------------------------------------
// Requests never answered

#[test]
fn a_request_the_child_never_answers_times_out_and_the_child_is_told() {
    let server = Gateway::start(config(
        stdio("basic", json!({"request_timeout_secs": 1})),
        json!({}),
    ));
    let s = Http::initialize(server.addr);
    let asked = Instant::now();
    let got = s.request(&call(json!(7), "hang", json!({}), None));
    let waited = asked.elapsed();
    assert_eq!(
        got,
        [error_response(
            &json!(7),
            -32001,
            "request timed out: the MCP server did not answer within 1 s"
        )]
    );
    assert!(
        waited >= Duration::from_secs(1),
        "timed out after {waited:?}"
    );
    server.wait_log(&[
        "WARN",
        short(&s.session),
        "no answer to request 7 within 1 s",
    ]);
    // The child was told, before anything the client sent next.
    let told = json_text(&s.answer(&call(json!(8), "cancelled", json!({}), None)));
    assert_eq!(told, json!([{"requestId": 7, "reason": "timed out"}]));

    // Progress starts the wait again: 1.5 s in all, never 1 s without news.
    let token = json!("slow");
    let got = s.request(&call(
        json!(9),
        "progress",
        json!({"n": 3, "delay_ms": 500}),
        Some(token.clone()),
    ));
    let mut want: Vec<Value> = (1..=3).map(|k| progress(&token, k, 3)).collect();
    want.push(text_result(&json!(9), "done 3"));
    assert_eq!(got, want);

    // A cancellation from the client goes to the child too, and ends the request's stream.
    let mut hanging = s.open(&call(json!(10), "hang", json!({}), None));
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": 10, "reason": "changed my mind"}});
    assert_eq!(s.post(&cancel).status, 202);
    expect_end(&mut hanging);
    let told = json_text(&s.answer(&call(json!(11), "cancelled", json!({}), None)));
    assert_eq!(
        told,
        json!([{"requestId": 7, "reason": "timed out"},
               {"requestId": 10, "reason": "changed my mind"}])
    );
    let pong = s.answer(&json!({"jsonrpc": "2.0", "id": 12, "method": "ping"}));
    assert_eq!(pong, json!({"jsonrpc": "2.0", "id": 12, "result": {}}));
}

// ---------------------------------------------------------------------------------------------
// The end of a session ends its child

#[test]
fn delete_ends_the_session_and_its_child() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env()})),
        json!({}),
    ));
    let s = Http::initialize(server.addr);
    let pid = s.child_pid(json!(1));
    let mut listener = s.listen();
    let r = s.delete();
    assert_eq!(r.status, 200, "{r:?}");
    expect_end(&mut listener);
    wait_gone(pid);
    // It left when its input closed: no SIGTERM was needed.
    assert_eq!(records.of(pid), ["start", "eof"]);
    server.wait_no_children();
    let r = s.post(&call(json!(2), "echo", json!({}), None));
    assert_eq!(r.assert_error(404), "unknown session");
    assert_eq!(s.delete().assert_error(404), "unknown session");
}

#[test]
fn closing_a_legacy_stream_ends_its_child() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env(), "grace_ms": 1000})),
        json!({}),
    ));
    let mut l = Legacy::open(server.addr);
    l.initialize();
    let pid = pid_from(&l.answer(&call(json!(1), "pid", json!({}), None)));
    let endpoint = l.endpoint.clone();
    drop(l);
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof"]);
    server.wait_no_children();
    let r = Client::connect(server.addr).request(
        "POST",
        &endpoint,
        &[("Content-Type", "application/json")],
        call(json!(2), "echo", json!({}), None)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn closing_a_websocket_ends_its_child() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env(), "grace_ms": 1000})),
        json!({}),
    ));
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let pid = pid_from(&ws.answer(&call(json!(1), "pid", json!({}), None)));
    ws.close();
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof"]);
    server.wait_no_children();
}

#[test]
fn a_child_that_ignores_eof_and_sigterm_is_killed_after_twice_the_grace() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("stubborn", json!({"env": records.env(), "grace_ms": 200})),
        json!({}),
    ));
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let pid = pid_from(&ws.answer(&call(json!(1), "pid", json!({}), None)));
    let _guard = KillOnDrop(pid);
    let closed = Instant::now();
    ws.close();
    wait_gone(pid);
    let took = closed.elapsed();
    // Input closed, then SIGTERM after 200 ms, then SIGKILL after 200 ms more.
    assert_eq!(records.of(pid), ["start", "eof", "term"]);
    assert!(took >= Duration::from_millis(400), "gone after {took:?}");
    server.wait_log(&[
        "INFO",
        &format!("child {pid}: its process group still runs"),
        "sending SIGTERM",
    ]);
    server.wait_log(&[
        "INFO",
        &format!("child {pid}: its process group still runs"),
        "sending SIGKILL",
    ]);
    server.wait_no_children();
}

#[test]
fn an_idle_session_ends_and_so_does_its_child() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("basic", json!({"env": records.env()})),
        json!({"session_idle_secs": 1}),
    ));
    let s = Http::initialize(server.addr);
    let pid = s.child_pid(json!(1));
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof"]);
    let r = s.post(&call(json!(2), "echo", json!({}), None));
    assert_eq!(r.assert_error(404), "unknown session");
}

// ---------------------------------------------------------------------------------------------
// Sessions and children

#[test]
fn max_sessions_bounds_sessions_and_children_on_every_transport() {
    let server = Gateway::start(config(
        stdio("basic", json!({})),
        json!({"max_sessions": 2}),
    ));
    let a = Http::initialize(server.addr);
    let a_pid = a.child_pid(json!(1));
    // A legacy stream is a session, with no child until it initializes.
    let _l = Legacy::open(server.addr);
    assert_eq!(server.children().len(), 1, "{:?}", server.children());

    match Http::try_initialize(server.addr) {
        Err(r) => assert_eq!(r.assert_error(503), "too many MCP sessions"),
        Ok(got) => panic!("a third session: {got:?}"),
    }
    match Legacy::try_open(server.addr) {
        Err(r) => assert_eq!(r.assert_error(503), "too many MCP sessions"),
        Ok(_) => panic!("a third session over legacy SSE"),
    }
    match McpWs::try_connect(server.addr) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503, "{r:?}"),
        Err(e) => panic!("expected a 503, got {e}"),
        Ok(_) => panic!("a third session over WebSocket"),
    }
    assert_eq!(server.children().len(), 1, "{:?}", server.children());

    // Ending one makes room, once its child is gone.
    assert_eq!(a.delete().status, 200);
    wait_gone(a_pid);
    let b = Http::initialize(server.addr);
    let b_pid = b.child_pid(json!(1));
    let children: Vec<u32> = server.children().iter().map(|p| p.pid).collect();
    assert_eq!(children, [b_pid]);
}

#[test]
fn children_still_ending_count_against_max_sessions() {
    let records = Records::new();
    let server = Gateway::start(config(
        stdio("stubborn", json!({"env": records.env(), "grace_ms": 300})),
        json!({"max_sessions": 1}),
    ));
    let a = Http::initialize(server.addr);
    let a_pid = a.child_pid(json!(1));
    let _guard = KillOnDrop(a_pid);
    assert_eq!(a.delete().status, 200);
    // Its session is over, but its process is not: no new one may start yet, on any transport.
    match Http::try_initialize(server.addr) {
        Err(r) => assert_eq!(r.assert_error(503), "too many MCP sessions"),
        Ok(got) => panic!("a second child while the first is ending: {got:?}"),
    }
    let mut ws = McpWs::connect(server.addr);
    let refused = ws.answer(&initialize_message(json!(1), "2025-06-18"));
    assert_eq!(refused["error"]["code"], -32603, "{refused}");
    assert!(proc_info(a_pid).is_some(), "the first child still runs");
    ws.close();
    wait_gone(a_pid);
    let b = Http::initialize(server.addr);
    let b_pid = b.child_pid(json!(1));
    let _guard_b = KillOnDrop(b_pid);
    assert_ne!(a_pid, b_pid);
}

#[test]
fn concurrent_sessions_each_have_a_child_of_their_own() {
    let server = Gateway::start(config(stdio("basic", json!({"grace_ms": 100})), json!({})));
    let http: Vec<Http> = (0..3).map(|_| Http::initialize(server.addr)).collect();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let mut l = Legacy::open(server.addr);
    l.initialize();
    let mut pids: Vec<u32> = http
        .iter()
        .enumerate()
        .map(|(k, s)| s.child_pid(json!(k)))
        .collect();
    pids.push(pid_from(&ws.answer(&call(
        json!(1),
        "pid",
        json!({}),
        None,
    ))));
    pids.push(pid_from(&l.answer(&call(json!(1), "pid", json!({}), None))));
    for &pid in &pids {
        assert_child_of(&server, pid);
    }
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), pids.len(), "pids {pids:?}");
    let children: Vec<u32> = server.children().iter().map(|p| p.pid).collect();
    assert_eq!(children, sorted);

    // Each child has its own state.
    let count = |s: &Http, id: u64| text_of(&s.answer(&call(json!(id), "count", json!({}), None)));
    assert_eq!(count(&http[0], 10), "1");
    assert_eq!(count(&http[0], 11), "2");
    assert_eq!(count(&http[1], 10), "1");
    assert_eq!(
        text_of(&ws.answer(&call(json!(10), "count", json!({}), None))),
        "1"
    );
    assert_eq!(
        text_of(&l.answer(&call(json!(10), "count", json!({}), None))),
        "1"
    );

    // A child busy for a minute holds up no other session.
    let token = json!("busy");
    let mut busy = http[0].open(&call(
        json!(20),
        "progress",
        json!({"n": 1, "delay_ms": 60_000}),
        Some(token.clone()),
    ));
    assert_eq!(expect_message(&mut busy), progress(&token, 1, 1));
    let v = http[1].answer(&call(json!(20), "echo", json!({"text": "free"}), None));
    assert_eq!(v, text_result(&json!(20), "free"));
    assert_eq!(
        text_of(&ws.answer(&call(json!(20), "echo", json!({"text": "free"}), None))),
        "free"
    );
    // Its session ends; it is still asleep: SIGTERM ends it.
    assert_eq!(http[0].delete().status, 200);
    expect_end(&mut busy);
    wait_gone(pids[0]);
    for &pid in &pids[1..] {
        assert!(
            proc_info(pid).is_some(),
            "child {pid} of another session is gone"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The shell form and SIGTERM

#[test]
fn the_mcp_stdio_flag_runs_a_shell_command_whose_process_group_is_ended() {
    let records = Records::new();
    let command = format!(
        "cd '{dir}' && GATEWAY_RECORD_DIR='{dir}' '{python}' '{fixture}' basic",
        dir = records.path(),
        python = python(),
        fixture = common::gateway::fixture(),
    );
    let server = Gateway::start_with(None, &["--mcp-stdio", &command]);
    server.wait_log(&[
        "INFO",
        &format!("MCP gateway: every session is served by `{command}`"),
    ]);
    let s = Http::initialize(server.addr);
    let info = pid_of(&s.answer(&call(json!(1), "pid", json!({}), None)));
    let pid = info["pid"].as_u64().unwrap() as u32;
    let _guard = KillOnDrop(pid);
    assert_eq!(info["cwd"], records.path(), "{info}");
    // The shell is the server's child and leads the group the server runs in.
    let shell = proc_info(info["pgid"].as_u64().unwrap() as u32).expect("the group leader");
    assert_eq!(shell.ppid, server.pid(), "{shell:?} {info}");
    assert_eq!(proc_info(pid).unwrap().pgrp, shell.pid);
    assert_eq!(s.delete().status, 200);
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof"]);
    server.wait_no_children();
}

#[test]
fn a_stubborn_grandchild_behind_a_shell_is_killed_with_its_process_group() {
    let records = Records::new();
    let command = format!(
        "GATEWAY_RECORD_DIR='{dir}' '{python}' '{fixture}' stubborn; echo never reached",
        dir = records.path(),
        python = python(),
        fixture = common::gateway::fixture(),
    );
    let server = Gateway::start(config(
        json!({"command": "/bin/sh", "args": ["-c", command], "grace_ms": 200}),
        json!({}),
    ));
    let s = Http::initialize(server.addr);
    let info = pid_of(&s.answer(&call(json!(1), "pid", json!({}), None)));
    let pid = info["pid"].as_u64().unwrap() as u32;
    let _guard = KillOnDrop(pid);
    assert_ne!(
        info["ppid"],
        server.pid(),
        "the shell is in between: {info}"
    );
    assert_eq!(s.delete().status, 200);
    // The shell dies of SIGTERM; the fixture ignores it and must get SIGKILL.
    wait_gone(pid);
    assert_eq!(records.of(pid), ["start", "eof", "term"]);
    server.wait_no_children();
}

#[test]
fn sigterm_ends_every_child_and_exits_0_once_they_are_reaped() {
    let records = Records::new();
    let mut server = Gateway::start(config(
        stdio("stubborn", json!({"env": records.env(), "grace_ms": 200})),
        json!({}),
    ));
    let s = Http::initialize(server.addr);
    let mut listener = s.listen();
    let mut ws = McpWs::connect(server.addr);
    ws.initialize();
    let mut l = Legacy::open(server.addr);
    l.initialize();
    let pids = [
        s.child_pid(json!(1)),
        pid_from(&ws.answer(&call(json!(1), "pid", json!({}), None))),
        pid_from(&l.answer(&call(json!(1), "pid", json!({}), None))),
    ];
    let _guards = pids.map(KillOnDrop);
    let server_pid = server.pid();
    let signalled = Instant::now();
    server.sigterm();
    expect_end(&mut listener);
    assert_eq!(ws.expect_close().0, 1001);
    assert_eq!(l.try_next(), None);
    // (A drained connection is closed once the client closes it too.)
    drop((listener, ws, l));
    let status = server.wait_exit(WAIT);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    // It waited for its children, which needed SIGKILL, and reaped them all.
    assert!(took >= Duration::from_millis(400), "exited after {took:?}");
    for pid in pids {
        assert_eq!(proc_info(pid), None, "child {pid} outlived the server");
        assert_eq!(records.of(pid), ["start", "eof", "term"], "child {pid}");
    }
    assert!(children_of(server_pid).is_empty());
}

#[test]
fn sigterm_with_children_that_leave_at_eof_exits_0_without_signalling_them() {
    let records = Records::new();
    let mut server = Gateway::start(config(
        stdio("basic", json!({"env": records.env(), "grace_ms": 5000})),
        json!({}),
    ));
    let a = Http::initialize(server.addr);
    let b = Http::initialize(server.addr);
    let pids = [a.child_pid(json!(1)), b.child_pid(json!(1))];
    server.sigterm();
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
    for pid in pids {
        assert_eq!(proc_info(pid), None, "child {pid} outlived the server");
        assert_eq!(records.of(pid), ["start", "eof"], "child {pid}");
    }
    let log = server.log();
    assert!(!log.contains("sending SIGTERM"), "{log}");
}

#[test]
fn a_pending_request_of_a_session_ended_by_sigterm_is_not_left_hanging() {
    let mut server = Gateway::start(config(stdio("basic", json!({"grace_ms": 100})), json!({})));
    let s = Http::initialize(server.addr);
    let mut hanging = s.open(&call(json!(1), "hang", json!({}), None));
    server.sigterm();
    // The stream ends (with no answer: the session is gone), within the drain.
    expect_end(&mut hanging);
    drop(hanging);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status}");
}
