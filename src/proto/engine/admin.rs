//! The admin API (CONTRACT "Operations"): `GET /admin/features` lists the feature toggles,
//! `GET`/`PUT /admin/features/{name}` reads or sets one (`{"enabled":bool}`); a change applies at
//! once, with the close behaviour of [`Engine::set_feature`], and is logged. A name may carry a
//! namespace prefix (`uiforge-mcp.sse-streaming`).
//!
//! Who may call it: with `admin_token` set, a request bearing that token (`401` otherwise);
//! without one, loopback peers only (`403` otherwise), which also need a credential while
//! `stream-authentication` is on.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::{ConnId, Engine};
use crate::features::Feature;
use crate::proto::http::{self, Request};

impl Engine {
    /// Whether a request to the admin API is let through: `Err` with its status and reason.
    pub(super) fn admin_access(
        &self,
        id: ConnId,
        request: &Request,
    ) -> Result<(), (u16, &'static str)> {
        if self.auth.has_admin_token() {
            return match crate::proto::auth::credential(request) {
                Some(token) if self.auth.is_admin_token(&token) => Ok(()),
                _ => Err((401, "admin token required")),
            };
        }
        match self.conn(id).map(|c| c.ip.is_loopback()) {
            Some(true) => Ok(()),
            _ => Err((
                403,
                "the admin API takes loopback peers only when no admin token is set",
            )),
        }
    }

    /// A request under `/admin/`, let through by [`Engine::admin_access`].
    pub(super) fn admin_request(
        &mut self,
        now: Instant,
        request: &Request,
        body: &[u8],
    ) -> Vec<u8> {
        let keep_alive = request.keep_alive();
        let fail = |status: u16, reason: &str| http::error_response(status, reason, "", keep_alive);
        let method = request.method.as_str();
        let Some(rest) = request.path.strip_prefix("/admin/features") else {
            return fail(404, "not found");
        };
        if rest.is_empty() {
            if !matches!(method, "GET" | "HEAD") {
                return fail(405, "method not allowed");
            }
            let features: Map<String, Value> = self
                .features
                .iter()
                .map(|(f, on)| (f.name().to_string(), Value::Bool(on)))
                .collect();
            let body = json!({ "features": features }).to_string();
            return http::json_response(200, &body, "", keep_alive);
        }
        let Some(feature) = rest.strip_prefix('/').and_then(Feature::from_name) else {
            return fail(404, "unknown feature");
        };
        let on = match method {
            "GET" | "HEAD" => self.features.is_enabled(feature),
            "PUT" => {
                let enabled = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("enabled").and_then(Value::as_bool));
                let Some(on) = enabled else {
                    return fail(
                        400,
                        "the body must be {\"enabled\":true} or {\"enabled\":false}",
                    );
                };
                if self.features.is_enabled(feature) != on {
                    log::info!(
                        "feature {} turned {} by the admin API",
                        feature.name(),
                        if on { "on" } else { "off" }
                    );
                }
                self.set_feature(now, feature, on);
                on
            }
            _ => {
                let allow = "Allow: GET, PUT\r\n";
                return http::error_response(405, "method not allowed", allow, keep_alive);
            }
        };
        let body = json!({"feature": feature.name(), "enabled": on}).to_string();
        http::json_response(200, &body, "", keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::config::Config;
    use crate::proto::engine::tests::{engine, Wire};

    fn get_features_from(peer: &str, config: Config, headers: &str) -> String {
        let mut e = engine(config);
        let now = Instant::now();
        let id = e.accept(now, peer.parse().unwrap()).unwrap();
        let request = format!("GET /admin/features HTTP/1.1\r\n{headers}\r\n");
        e.handle_input(now, id, request.as_bytes());
        let mut wire = Wire::default();
        wire.run(&mut e);
        wire.text(id)
    }

    #[test]
    fn without_an_admin_token_only_loopback_peers_get_in() {
        let local = get_features_from("127.0.0.1:9", Config::default(), "");
        assert!(local.starts_with("HTTP/1.1 200 "), "{local}");
        assert!(local.contains(r#""sse-streaming":true"#));
        let remote = get_features_from("10.1.2.3:9", Config::default(), "");
        assert!(remote.starts_with("HTTP/1.1 403 "), "{remote}");
    }

    #[test]
    fn with_an_admin_token_any_peer_bearing_it_gets_in() {
        let mut config = Config::default();
        config.security.admin_token = Some("root-token".into());
        let bearing = "Authorization: Bearer root-token\r\n";
        let remote = get_features_from("10.1.2.3:9", config.clone(), bearing);
        assert!(remote.starts_with("HTTP/1.1 200 "), "{remote}");
        let without = get_features_from("127.0.0.1:9", config.clone(), "");
        assert!(without.starts_with("HTTP/1.1 401 "), "{without}");
        let wrong = get_features_from("127.0.0.1:9", config, "Authorization: Bearer root\r\n");
        assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
    }
}
