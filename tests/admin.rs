//! The admin API end to end (CONTRACT "Operations", "Feature toggles"): listing the toggles,
//! turning one off and on at runtime with the effect at once (and the open streams of the
//! feature closed cleanly), namespaced names, errors, and the admin token.

mod common;

use common::{Client, Sse, TestServer};
use serde_json::{json, Value};

fn put(server: &TestServer, name: &str, body: &str, token: Option<&str>) -> common::Response {
    let auth;
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(t) = token {
        auth = format!("Bearer {t}");
        headers.push(("Authorization", &auth));
    }
    Client::connect(server.addr).request(
        "PUT",
        &format!("/admin/features/{name}"),
        &headers,
        body.as_bytes(),
    )
}

#[test]
fn features_are_listed_and_toggled_at_once() {
    let server = TestServer::start();
    let list = server.get("/admin/features").json();
    let features = list["features"].as_object().unwrap();
    assert_eq!(features.len(), 11, "{list}");
    assert_eq!(features["sse-streaming"], true);
    let mut open = server.sse("topic=t");
    assert_eq!(open.next_event().event.as_deref(), Some("connected"));
    let r = put(&server, "sse-streaming", r#"{"enabled":false}"#, None);
    assert_eq!(
        r.json(),
        json!({"feature": "sse-streaming", "enabled": false})
    );
    // The open stream ends cleanly; new ones get 501.
    open.client.expect_eof();
    let refused = server.get("/stream/sse?topic=t");
    assert_eq!(refused.assert_error(501), "SSE streaming not enabled");
    assert_eq!(
        server.get("/admin/features/sse-streaming").json()["enabled"],
        false
    );
    // A namespaced name turns it back on.
    let r = put(
        &server,
        "uiforge-mcp.sse-streaming",
        r#"{"enabled":true}"#,
        None,
    );
    assert_eq!(r.json()["enabled"], true);
    let _again = Sse::open(server.addr, "topic=t", &[]);
}

#[test]
fn bad_names_bodies_and_methods_are_refused() {
    let server = TestServer::start();
    assert_eq!(
        put(&server, "warp-drive", r#"{"enabled":true}"#, None).assert_error(404),
        "unknown feature"
    );
    let bad: Value = put(&server, "sse-streaming", r#"{"enabled":"yes"}"#, None).json();
    assert!(bad["error"].as_str().unwrap().contains("enabled"), "{bad}");
    let r =
        Client::connect(server.addr).request("DELETE", "/admin/features/sse-streaming", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT"));
}

#[test]
fn with_an_admin_token_the_api_needs_it() {
    let server = TestServer::start_with(None, &[("MCP_STREAM_ADMIN_TOKEN", "root-token")]);
    let r = server.get("/admin/features");
    assert_eq!(r.assert_error(401), "admin token required");
    assert_eq!(
        put(
            &server,
            "mcp-transport",
            r#"{"enabled":false}"#,
            Some("nope")
        )
        .status,
        401
    );
    let r = put(
        &server,
        "mcp-transport",
        r#"{"enabled":false}"#,
        Some("root-token"),
    );
    assert_eq!(r.json()["enabled"], false);
    let mcp = Client::connect(server.addr).request(
        "POST",
        "/mcp",
        &common::mcp::post_headers(None),
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
    );
    assert_eq!(mcp.assert_error(501), "MCP transport not enabled");
}

#[test]
fn the_features_command_drives_the_admin_api() {
    let server = TestServer::start_with(None, &[("MCP_STREAM_ADMIN_TOKEN", "root-token")]);
    let url = format!("http://{}", server.addr);
    let token = [("MCP_STREAM_ADMIN_TOKEN", "root-token")];
    let list = common::run_to_exit(&["features", "list", "--server", &url], &token);
    assert!(list.status.success(), "{list:?}");
    assert_eq!(list.stdout.lines().count(), 11, "{}", list.stdout);
    assert!(list.stdout.contains("websocket-streaming on\n"));
    let off = common::run_to_exit(
        &[
            "features",
            "disable",
            "uiforge-mcp.websocket-streaming",
            "--server",
            &url,
        ],
        &token,
    );
    assert_eq!(off.stdout, "websocket-streaming off\n", "{off:?}");
    let upgrade = Client::connect(server.addr).request(
        "GET",
        "/stream/ws",
        &common::ws::upgrade_headers(),
        b"",
    );
    assert_eq!(upgrade.status, 501);
    let on = common::run_to_exit(
        &[
            "features",
            "enable",
            "websocket-streaming",
            "--server",
            &url,
            "--token",
            "root-token",
        ],
        &[],
    );
    assert_eq!(on.stdout, "websocket-streaming on\n", "{on:?}");
    // Without the token the server refuses, and the command says so and fails.
    let refused = common::run_to_exit(&["features", "list", "--server", &url], &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("401: admin token required"),
        "{}",
        refused.stderr
    );
}

/// What a client gets from `feature`'s transport now: the status of its opening request, and
/// the error's reason when refused.
fn probe(server: &TestServer, feature: &str) -> (u16, String) {
    let r = match feature {
        "sse-streaming" => server.get("/stream/sse?topic=t"),
        "websocket-streaming" => Client::connect(server.addr).request(
            "GET",
            "/stream/ws",
            &common::ws::upgrade_headers(),
            b"",
        ),
        _ => Client::connect(server.addr).request(
            "POST",
            "/mcp",
            &common::mcp::post_headers(None),
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
        ),
    };
    let reason = match r.status {
        200 | 101 => String::new(),
        status => r.assert_error(status),
    };
    (r.status, reason)
}

#[test]
fn the_features_command_switches_each_transport_off_and_on() {
    let server = TestServer::start();
    let url = format!("http://{}", server.addr);
    for (feature, open, refusal) in [
        ("sse-streaming", 200, "SSE streaming not enabled"),
        (
            "websocket-streaming",
            101,
            "WebSocket streaming not enabled",
        ),
        ("mcp-transport", 200, "MCP transport not enabled"),
    ] {
        assert_eq!(probe(&server, feature), (open, String::new()), "{feature}");
        let off = common::run_to_exit(&["features", "disable", feature, "--server", &url], &[]);
        assert_eq!(off.stdout, format!("{feature} off\n"), "{off:?}");
        assert_eq!(probe(&server, feature), (501, refusal.to_string()));
        let on = common::run_to_exit(
            &[
                "features",
                "enable",
                &format!("global.{feature}"),
                "--server",
                &url,
            ],
            &[],
        );
        assert_eq!(on.stdout, format!("{feature} on\n"), "{on:?}");
        assert_eq!(probe(&server, feature), (open, String::new()), "{feature}");
    }
}
