//! The config layers over arbitrary input: the JSON file layer (`Config::apply_json`) on
//! arbitrary text, then the environment layer (`Config::apply_env`) with values from the input,
//! then `Config::validate` and `Config::effective_features`, the steps of `Config::load_with`
//! after it has read the file. No panic, errors are one line that names something, and a
//! config that validates serves a request on an engine.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mcp_stream::config::Config;
use mcp_stream::proto::engine::{Action, Engine};

/// The variables the environment layer reads.
const VARS: &[&str] = mcp_stream::config::ENV_VARS;

fuzz_target!(|data: &[u8]| {
    // The JSON text, then (after a NUL) `NAME=value` lines for the environment.
    let (json, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                VARS.iter()
                    .find(|n| n.eq_ignore_ascii_case(k))
                    .copied()
                    .unwrap_or(k),
                v,
            )
        })
        .collect();
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut config = Config::default();
    let result = config
        .apply_json(json)
        .and_then(|()| config.apply_env(lookup))
        .and_then(|()| config.validate());
    match result {
        Err(e) => {
            assert!(!e.message().is_empty());
            assert!(!e.message().contains('\n'), "a multi-line error: {e}");
        }
        Ok(()) => {
            let _ = config.effective_features();
            // Serve one request with it: limits from the input must not break the engine.
            let now = Instant::now();
            let mut engine = Engine::new(config, 1);
            let Some(id) = engine.accept(now, "127.0.0.1:9".parse().unwrap()) else {
                return;
            };
            engine.handle_input(now, id, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut wrote = false;
            while let Some((_, action)) = engine.poll_action() {
                wrote |= action == Action::Write;
            }
            assert!(wrote || engine.connection_count() == 0);
            engine.handle_closed(id);
            assert_eq!(engine.counters().connections, 0);
        }
    }
});
