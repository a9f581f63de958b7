//! The command line: `--version`, `--help`, bad flags and bad configuration (exit 2 with one
//! line on stderr naming the problem), and the precedence defaults < file < environment < flags.

mod common;

use common::{run_to_exit, RunOutput, Sse, TempFile, TestServer};
use serde_json::json;

/// Asserts exit code 2, nothing on stdout, and exactly one line on stderr; returns that line.
fn assert_usage_error(out: &RunOutput) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {:?}", out.stderr);
    assert!(out.stderr.ends_with('\n'));
    lines[0].to_string()
}

/// Runs `serve --listen 127.0.0.1:0` (so that a config accepted by mistake cannot take a real
/// port) with `config` as the file and `env`.
fn serve_with(config: &str, env: &[(&str, &str)]) -> RunOutput {
    let file = TempFile::new("config.json", config);
    let path = file.arg();
    run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--config", &path],
        env,
    )
}

#[test]
fn version_prints_name_and_version_and_exits_0() {
    for flag in ["--version", "-V"] {
        let out = run_to_exit(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, "mcp-stream 0.1.0\n");
        assert!(out.stderr.is_empty(), "{out:?}");
    }
}

#[test]
fn help_prints_usage_and_exits_0() {
    for args in [&["--help"][..], &["-h"], &["serve", "--help"]] {
        let out = run_to_exit(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        for word in ["USAGE", "--config", "--listen", "--log-level", "features"] {
            assert!(
                out.stdout.contains(word),
                "{args:?}: no {word} in {}",
                out.stdout
            );
        }
        assert!(out.stderr.is_empty(), "{out:?}");
    }
}

#[test]
fn unknown_flag_exits_2_with_one_line_naming_it() {
    let line = assert_usage_error(&run_to_exit(&["--bogus"], &[]));
    assert!(line.contains("--bogus"), "{line}");
    let line = assert_usage_error(&run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--frobnicate=1"],
        &[],
    ));
    assert!(line.contains("--frobnicate"), "{line}");
}

#[test]
fn bad_flag_values_exit_2() {
    for (args, needle) in [
        (&["--listen", "not-an-address"][..], "not-an-address"),
        (&["--listen", "127.0.0.1:0", "--log-level", "loud"], "loud"),
        (&["--config"], "--config"),
        (&["start"], "start"),
    ] {
        let line = assert_usage_error(&run_to_exit(args, &[]));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}

#[test]
fn unknown_config_key_exits_2_naming_the_full_key() {
    let out = serve_with(
        r#"{"streaming":{"sse":{"heartbeat_secs":1,"foo":true}}}"#,
        &[],
    );
    let line = assert_usage_error(&out);
    assert!(line.contains("streaming.sse.foo"), "{line}");
    let out = serve_with(r#"{"bogus_top":1}"#, &[]);
    assert!(assert_usage_error(&out).contains("bogus_top"));
    let out = serve_with(r#"{"streaming":{"limits":{"max_head_byte":1024}}}"#, &[]);
    assert!(assert_usage_error(&out).contains("streaming.limits.max_head_byte"));
}

#[test]
fn wrong_types_and_out_of_range_values_exit_2_naming_the_key() {
    for (config, key) in [
        (
            r#"{"streaming":{"sse":{"heartbeat_secs":"1"}}}"#,
            "streaming.sse.heartbeat_secs",
        ),
        (
            r#"{"streaming":{"sse":{"heartbeat_secs":0}}}"#,
            "streaming.sse.heartbeat_secs",
        ),
        (
            r#"{"streaming":{"limits":{"max_header_count":4}}}"#,
            "streaming.limits.max_header_count",
        ),
        (
            r#"{"streaming":{"backpressure":{"slow_consumer":"explode"}}}"#,
            "streaming.backpressure.slow_consumer",
        ),
        (r#"{"max_connections":-1}"#, "max_connections"),
        (r#"{"features":{"warp-drive":true}}"#, "features.warp-drive"),
    ] {
        let line = assert_usage_error(&serve_with(config, &[]));
        assert!(line.contains(key), "{config}: {line}");
    }
}

#[test]
fn invalid_json_and_missing_config_files_exit_2() {
    let line = assert_usage_error(&serve_with("{\"streaming\": ", &[]));
    assert!(line.contains("invalid JSON"), "{line}");
    assert!(line.contains("line 1"), "{line}");
    let line = assert_usage_error(&run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/mcp-stream-it.json",
        ],
        &[],
    ));
    assert!(line.contains("/nonexistent/mcp-stream-it.json"), "{line}");
}

#[test]
fn bad_environment_values_exit_2_naming_the_variable() {
    for (var, value) in [
        ("SSE_ENABLED", "maybe"),
        ("MAX_CONNECTIONS", "lots"),
        ("MCP_STREAM_LISTEN", "nowhere"),
    ] {
        let out = run_to_exit(&["serve", "--listen", "127.0.0.1:0"], &[(var, value)]);
        let line = assert_usage_error(&out);
        assert!(line.contains(var), "{var}: {line}");
    }
}

#[test]
fn stdout_holds_exactly_the_listening_line_with_the_real_port() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let mut cmd = Command::new(common::BIN);
    for var in common::CONFIG_ENV {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Killed if anything below panics.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut child = Reap(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on http://")
        .and_then(|a| a.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    // The address is the real one: it serves.
    let r = common::Client::connect(addr).request("GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Nothing else was ever written to stdout (read to its end, which comes with the exit).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    let rest = rx
        .recv_timeout(common::WAIT)
        .expect("stdout did not end after SIGTERM");
    assert_eq!(rest, "", "more than one line on stdout");
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[test]
fn the_listen_flag_beats_the_environment_and_the_file() {
    // A server that used either would listen on port 1 (or, unprivileged, fail to start).
    let server = TestServer::start_with(
        Some(json!({"listen": "127.0.0.1:1"})),
        &[("MCP_STREAM_LISTEN", "127.0.0.1:1")],
    );
    assert_ne!(server.addr.port(), 1);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn the_environment_beats_the_config_file() {
    let server = TestServer::start_with(
        Some(json!({"streaming": {"sse": {"enabled": true}}})),
        &[("SSE_ENABLED", "0")],
    );
    let r = Sse::try_open(server.client(), "topic=t", &[])
        .err()
        .expect("SSE_ENABLED=0 did not win over the file");
    assert_eq!(r.assert_error(501), "SSE streaming not enabled");

    let server = TestServer::start_with(
        Some(json!({"streaming": {"sse": {"enabled": false}}})),
        &[("SSE_ENABLED", "true")],
    );
    let mut sse = server.sse("topic=t");
    sse.read_opening();
}

#[test]
fn the_config_file_beats_the_defaults() {
    let server = TestServer::with_config(json!({"streaming": {"sse": {"retry_ms": 1234}}}));
    let mut sse = server.sse("topic=t");
    assert_eq!(sse.read_opening().retry, Some(1234));
}

#[test]
fn the_max_connections_environment_variable_is_applied() {
    let server = TestServer::start_with(None, &[("MAX_CONNECTIONS", "1")]);
    let mut first = server.client();
    assert_eq!(first.request("GET", "/health", &[], b"").status, 200);
    let r = server.client().read_response();
    assert_eq!(r.assert_error(503), "server at capacity");
}
